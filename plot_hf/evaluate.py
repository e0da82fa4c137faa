"""Evaluate a trained model on a recipe's data: ``python -m plot_hf.evaluate MODEL RECIPE.yaml [--split test]``.

``MODEL`` is a local folder or a Hub id (loaded with ``AutoModelForImageClassification`` after ``import
plot_hf``). The recipe's ``data:`` section rebuilds exactly the training run's splits; the split's images go
through the eval transform; the metrics (top-1, top-5, many/medium/few, per class, NLL, ECE) are written to
``OUTPUT/metrics_<split>.json`` with a per-class accuracy plot. Extra ``--key value`` flags override recipe keys.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .data.builder import build_datasets
from .data.transforms import collate_fn, with_transforms
from .metrics import lt_metrics
from .models.hf import load_image_classifier
from .plots import plot_per_class_accuracy
from .recipe import load_recipe
from .train import eval_transform_of


@torch.no_grad()
def predict_logits(model: torch.nn.Module, dataset: Any, batch_size: int = 256, device: str = "cpu") -> tuple:
    """Logits and labels of ``dataset`` (rows with ``pixel_values``, ``labels``) in order."""
    model.eval().to(device)
    logits, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn):
        logits.append(model(pixel_values=batch["pixel_values"].to(device)).logits.float().cpu())
        labels.append(batch["labels"])
    return torch.cat(logits), torch.cat(labels)


def evaluate_model(model_path: str, recipe_path: str | None, split: str = "test",
                   overrides: list[str] | None = None, output_dir: str | None = None) -> dict[str, Any]:
    recipe = load_recipe(recipe_path, overrides or [])
    data = build_datasets(recipe.data)
    dataset = {"test": data.test, "validation": data.validation, "train": data.train}.get(split)
    if dataset is None:
        raise ValueError(f"`--split {split}`: the recipe's data has no such split (choose test, validation or train).")
    model = load_image_classifier(model_path)
    if model.config.num_labels != data.num_classes:
        raise ValueError(f"Model {model_path!r} has {model.config.num_labels} labels; the data {data.num_classes}.")
    eval_tf = eval_transform_of(recipe.data, model)  # a fine-tuned checkpoint's own preprocessing
    device = "cuda" if torch.cuda.is_available() and not recipe.training.use_cpu else "cpu"
    logits, labels = predict_logits(model, with_transforms(dataset, eval_tf),
                                    recipe.training.per_device_eval_batch_size, device)
    metrics = lt_metrics(
        logits, labels, list(data.stats.counts), many_threshold=data.stats.many_shot_threshold,
        few_threshold=data.stats.few_shot_threshold, rule=data.stats.shot_rule,
    )
    out = Path(output_dir or (model_path if Path(model_path).is_dir() else recipe.training.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"metrics_{split}.json").write_text(json.dumps(metrics, indent=2))
    plot_per_class_accuracy(metrics["per_class_accuracy"], data.stats.counts, out / f"per_class_accuracy_{split}.png")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m plot_hf.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="local folder or Hub id of a trained model")
    parser.add_argument("recipe", help="the recipe YAML the model was trained with")
    parser.add_argument("--split", default="test", choices=["test", "validation", "train"])
    parser.add_argument("--output_dir", default=None, help="where to write metrics_<split>.json (default: MODEL)")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    metrics = evaluate_model(args.model, args.recipe, args.split, overrides, args.output_dir)
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_class_accuracy"}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
