"""Drop-in use: transformers' image-classification script structure, with Trainer -> PLOTTrainer and
TrainingArguments -> PLOTConfig only, on a local long-tailed imagefolder, for a transformers-native ResNet and
a timm model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

from plot_hf.models import create_image_classifier
from plot_hf.models.introspection import default_moo_stage

SCRIPT = Path(__file__).parent / "scripts" / "run_image_classification.py"
COUNTS = {"cat": 12, "dog": 6, "fox": 3}  # long-tailed, 3 classes


def _write_imagefolder(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for split, scale in (("train", 1), ("validation", 0)):
        for k, (name, count) in enumerate(COUNTS.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count * scale + 2 * (1 - scale)):
                pixels = np.clip(rng.normal(60 + 60 * k, 30, size=(36, 36, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root / "train", root / "validation"


def _run_script(argv: list[str]):
    spec = importlib.util.spec_from_file_location("run_image_classification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main(argv)


def _save_transformers_resnet(path: Path) -> None:
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)
    ResNetForImageClassification(config).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(path)


def _save_timm_resnet(path: Path) -> None:
    torch.manual_seed(0)
    create_image_classifier("resnet32_cifar", ["a", "b"], input_size=(3, 32, 32)).save_pretrained(path)


@pytest.mark.parametrize("backbone", ["transformers_resnet", "timm_resnet32_cifar"])
def test_unmodified_image_classification_script(tmp_path, backbone):
    train_dir, val_dir = _write_imagefolder(tmp_path / "data")
    model_dir = tmp_path / "model"
    (_save_transformers_resnet if backbone == "transformers_resnet" else _save_timm_resnet)(model_dir)
    out = tmp_path / "out"
    trainer = _run_script([
        "--model_name_or_path", str(model_dir), "--ignore_mismatched_sizes", "true",
        "--train_dir", str(train_dir), "--validation_dir", str(val_dir), "--output_dir", str(out),
        "--do_train", "--do_eval", "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--learning_rate", "0.05", "--use_cpu", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--seed", "0", "--disable_tqdm", "true",
        "--moo_until_epoch", "10",
    ])
    assert trainer.class_counts == list(COUNTS.values())  # inferred from the `label` column
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all("plot/num_classes" in h and np.isfinite(h["loss"]) for h in logged)
    expected_stage = "resnet.encoder.stages.1" if backbone == "transformers_resnet" else "timm_model.layer3"
    assert trainer._plot_step.moo.stage_name == expected_stage
    eval_metrics = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= eval_metrics["eval_accuracy"] <= 1.0
    assert (out / "model.safetensors").exists()


def test_default_stage_error_names_the_model():
    with pytest.raises(ValueError, match="Sequential"):
        default_moo_stage(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
