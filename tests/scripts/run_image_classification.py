"""Fine-tune an image classifier: the structure of transformers' ``examples/pytorch/image-classification/
run_image_classification.py`` with exactly two changes, ``Trainer`` -> ``PLOTTrainer`` and ``TrainingArguments``
-> ``PLOTConfig`` (used by tests/test_drop_in.py to show that PLOT is a drop-in replacement).

    python run_image_classification.py --model_name_or_path DIR --train_dir DIR --validation_dir DIR \
        --output_dir out --do_train --do_eval
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import load_dataset
from torchvision.transforms import (
    CenterCrop,
    Compose,
    Lambda,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    set_seed,
)

from plot_hf import PLOTConfig, PLOTTrainer


@dataclass
class DataTrainingArguments:
    """Arguments pertaining to what data we are going to input our model for training and eval."""

    train_dir: str | None = field(default=None, metadata={"help": "A folder containing the training data."})
    validation_dir: str | None = field(default=None, metadata={"help": "A folder containing the validation data."})
    image_column_name: str = field(default="image", metadata={"help": "The name of the image column."})
    label_column_name: str = field(default="label", metadata={"help": "The name of the label column."})


@dataclass
class ModelArguments:
    """Arguments pertaining to which model/config/image processor we are going to fine-tune from."""

    model_name_or_path: str = field(metadata={"help": "Path to pretrained model or model identifier."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "Allow a new classification head."})


def collate_fn(examples):
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixel_values, "labels": labels}


def main(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, PLOTConfig))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    set_seed(training_args.seed)

    data_files = {"train": f"{data_args.train_dir}/**", "validation": f"{data_args.validation_dir}/**"}
    dataset = load_dataset("imagefolder", data_files=data_files)

    labels = dataset["train"].features[data_args.label_column_name].names
    label2id, id2label = {}, {}
    for i, label in enumerate(labels):
        label2id[label] = str(i)
        id2label[str(i)] = label

    def compute_metrics(p):
        """Computes accuracy on a batch of predictions."""
        return {"accuracy": float(np.mean(np.argmax(p.predictions, axis=1) == p.label_ids))}

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path, num_labels=len(labels), label2id=label2id, id2label=id2label,
        finetuning_task="image-classification",
    )
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes
    )
    image_processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)

    size = getattr(image_processor, "size", None) or {"shortest_edge": 32}
    size = size["shortest_edge"] if "shortest_edge" in size else (size["height"], size["width"])
    normalize = (
        Normalize(mean=image_processor.image_mean, std=image_processor.image_std)
        if hasattr(image_processor, "image_mean") and hasattr(image_processor, "image_std")
        else Lambda(lambda x: x)
    )
    _train_transforms = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), normalize])
    _val_transforms = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def train_transforms(example_batch):
        example_batch["pixel_values"] = [
            _train_transforms(pil_img.convert("RGB")) for pil_img in example_batch[data_args.image_column_name]
        ]
        return example_batch

    def val_transforms(example_batch):
        example_batch["pixel_values"] = [
            _val_transforms(pil_img.convert("RGB")) for pil_img in example_batch[data_args.image_column_name]
        ]
        return example_batch

    dataset["train"].set_transform(train_transforms)
    dataset["validation"].set_transform(val_transforms)

    trainer = PLOTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"] if training_args.do_eval else None,
        compute_metrics=compute_metrics,
        processing_class=image_processor,
        data_collator=collate_fn,
    )

    if training_args.do_train:
        train_result = trainer.train()
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
