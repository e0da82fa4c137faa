"""Train a recipe: ``python -m plot_hf.train RECIPE.yaml [--key value ...]`` (also under ``accelerate launch``).

parse the recipe -> check the Hub (before any work) -> build the long-tailed data -> build the model ->
PLOTTrainer.train (validation split for model selection) -> test metrics of the last and the best-on-validation
model -> metrics JSON, plots, model card -> push to the Hub when asked.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from .checkpoint import latest_valid_checkpoint
from .config import PLOTConfig
from .data.builder import DataConfig, LTData, build_datasets
from .data.transforms import build_transforms, collate_fn, with_transforms
from .hub import HubUnavailableError, check_hub_access
from .m2m import M2mTrainer
from .metrics import LTMetrics, make_preprocess_logits_for_metrics
from .models import count_parameters, create_image_classifier
from .models.hf import load_image_classifier, use_normed_classifier
from .models.param_groups import fine_tuning_optimizer
from .models.pretrained import (
    PREPROCESSING_KEYS,
    Checkpoint,
    checkpoint_preprocessing,
    is_checkpoint_name,
    load_pretrained_classifier,
    resolve_checkpoint,
)
from .preprocessing import eval_preprocessing
from .recipe import ModelArguments, Recipe, load_recipe
from .report import write_report
from .stage2 import run_stage2
from .trainer import PLOTTrainer

logger = logging.getLogger("plot_hf.train")


def preprocessing_of(data: DataConfig, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Input size, mean, std and crop fraction of the eval transform (for the card, ``AutoImageProcessor`` and
    ``pipeline``): the data config's transform defaults, or, given a ``model`` fine-tuned from a pretrained
    checkpoint, the values stored in its ``config.pretrained_cfg`` (see :mod:`plot_hf.models.pretrained`)."""
    found = eval_preprocessing(data.transform, data.image_size)
    stored = getattr(getattr(model, "config", None), "pretrained_cfg", None) or {}
    if getattr(getattr(model, "config", None), "fine_tuned_from", None):
        found.update({key: stored[key] for key in PREPROCESSING_KEYS if stored.get(key) is not None})
    return {key: tuple(value) if isinstance(value, list) else value for key, value in found.items()}


def eval_transform_of(data: DataConfig, model: torch.nn.Module | None = None) -> Any:
    """The deterministic eval transform of ``data`` for ``model`` (its stored preprocessing when fine-tuned from a
    pretrained checkpoint, see :func:`preprocessing_of`)."""
    found = preprocessing_of(data, model)
    _, eval_tf = build_transforms(data.transform, found["input_size"][-1], found["mean"], found["std"],
                                  crop_pct=found["crop_pct"])
    return eval_tf


def recipe_preprocessing(model_args: ModelArguments, data_config: DataConfig,
                         checkpoint: Checkpoint | None) -> dict[str, Any]:
    """Preprocessing of a run: the data config's defaults for a model trained from scratch; for a pretrained
    checkpoint, the checkpoint's own (input size, mean, std, crop fraction), with what the recipe sets on top
    (``data.image_size``, ``image_mean``, ``image_std``, ``crop_pct``)."""
    found = preprocessing_of(data_config)
    size = data_config.image_size
    overrides = {
        "input_size": (3, size, size) if size else None,
        "mean": model_args.image_mean, "std": model_args.image_std, "crop_pct": model_args.crop_pct,
    }
    if checkpoint is None:
        found.update({key: value for key, value in overrides.items() if value is not None})
        return {key: tuple(value) if isinstance(value, list) else value for key, value in found.items()}
    return {**found, **checkpoint_preprocessing(checkpoint, overrides)}


def build_model(
    model_args: ModelArguments, data: LTData, data_config: DataConfig, checkpoint: Checkpoint | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A fresh timm architecture, or a pretrained checkpoint (local folder / Hub id, resolved beforehand by
    :func:`plot_hf.models.pretrained.resolve_checkpoint`) with its head sized to the data's classes."""
    preprocessing = preprocessing or recipe_preprocessing(model_args, data_config, checkpoint)
    if checkpoint is None and is_checkpoint_name(model_args.model_name):
        checkpoint = resolve_checkpoint(model_args.model_name)
    if checkpoint is not None:
        model = load_pretrained_classifier(
            checkpoint, data.label_names, preprocessing=preprocessing, model_args=model_args.model_args
        )
        model.config.fine_tuned_from = checkpoint.name
        if model_args.classifier == "normed":
            use_normed_classifier(model, keep_weight=getattr(model.config, "normed_classifier", False))
        return model
    return create_image_classifier(
        model_args.model_name, data.label_names, model_args=model_args.model_args,
        classifier=model_args.classifier, **preprocessing,
    )


def model_and_transforms(recipe: Recipe, data: LTData, checkpoint: Checkpoint | None) -> tuple[torch.nn.Module, Any, Any]:
    """The run's model (:func:`build_model`) and its train / eval transforms, with the run's preprocessing (the
    checkpoint's when fine-tuning, see :func:`recipe_preprocessing`)."""
    preprocessing = recipe_preprocessing(recipe.model, recipe.data, checkpoint)
    model = build_model(recipe.model, data, recipe.data, checkpoint, preprocessing)
    train_tf, eval_tf = build_transforms(
        recipe.data.transform, preprocessing["input_size"][-1], preprocessing["mean"], preprocessing["std"],
        crop_pct=preprocessing["crop_pct"],
    )
    return model, train_tf, eval_tf


def layerwise_optimizer(model_args: ModelArguments, model: torch.nn.Module, args: PLOTConfig) -> Any:
    """The optimizer with per-layer rates when the recipe sets ``head_lr_scale`` or ``layer_decay``
    (:mod:`plot_hf.models.param_groups`); ``None`` (``Trainer`` builds its own) otherwise."""
    if model_args.head_lr_scale == 1.0 and model_args.layer_decay is None:
        return None
    return fine_tuning_optimizer(model, args, model_args.head_lr_scale, model_args.layer_decay)


def resume_argument(value: str | None, output_dir: str) -> str | bool | None:
    """``resume_from_checkpoint`` of a recipe: ``last`` / ``auto`` / ``true`` -> the newest checkpoint of
    ``output_dir`` that verifies (``auto``: start afresh when there is none), a path -> that checkpoint (verified:
    :class:`plot_hf.checkpoint.CheckpointError` when it is incomplete or corrupted)."""
    if value is None or value is False:
        return None
    text = str(value).strip().lower()
    if text == "auto":
        return True if latest_valid_checkpoint(output_dir) is not None else None
    if text in ("last", "true", "latest"):
        return True
    return str(value)


def _check_hub_upload(args: PLOTConfig) -> None:
    """With ``push_to_hub``, check the Hub before any work; offline, fail, or (``hub_allow_offline``) train
    without the upload."""
    if not args.push_to_hub:
        return
    try:
        check_hub_access(args.hub_model_id or Path(args.output_dir).name)
    except HubUnavailableError as error:
        if not args.hub_allow_offline:
            raise
        logger.warning("%s Training without the upload (`hub_allow_offline`).", error)
        args.push_to_hub = False


def _test_results(trainer: PLOTTrainer, test: Any) -> dict[str, Any]:
    """Test metrics of the last model (``last``) and, when a best checkpoint on the validation split exists, of
    that one (``best_on_validation``); the trainer's model is left as the last one."""
    results: dict[str, Any] = {"last": trainer.predict(test, metric_key_prefix="test").metrics}
    best = trainer.state.best_model_checkpoint
    if best and Path(best).is_dir():
        best_model = load_image_classifier(best).to(trainer.args.device)
        last_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        trainer.model.load_state_dict(best_model.state_dict())
        results["best_on_validation"] = {
            **trainer.predict(test, metric_key_prefix="test").metrics,
            "checkpoint": Path(best).name,
        }
        trainer.model.load_state_dict(last_state)
    return results


def run(recipe: Recipe) -> dict[str, Any]:
    """Train and evaluate one recipe; returns the final metrics (also written to ``output_dir``)."""
    args: PLOTConfig = recipe.training
    _check_hub_upload(args)
    name = recipe.model.model_name
    checkpoint = resolve_checkpoint(name) if is_checkpoint_name(name) else None  # before any data is loaded
    set_seed(args.seed)
    data = build_datasets(recipe.data)
    if args.class_counts is None:
        args.class_counts = list(data.stats.counts)
    model, train_tf, eval_tf = model_and_transforms(recipe, data, checkpoint)
    train = with_transforms(data.train, train_tf)
    validation = with_transforms(data.validation, eval_tf) if data.validation is not None else None
    test = with_transforms(data.test, eval_tf) if data.test is not None else None
    if validation is None and args.eval_strategy != "no":
        raise ValueError(
            "`eval_strategy` is set but the data has no validation split: set `data.validation_split` or "
            "`data.validation_per_class` (model selection never uses the test split)."
        )
    metrics_kwargs = {
        "many_threshold": data.stats.many_shot_threshold,
        "few_threshold": data.stats.few_shot_threshold,
        "rule": data.stats.shot_rule,
    }
    trainer_cls = M2mTrainer if args.m2m is not None else PLOTTrainer
    trainer = trainer_cls(
        model=model,
        optimizers=(layerwise_optimizer(recipe.model, model, args), None),
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collate_fn,
        compute_metrics=LTMetrics(data.stats.counts, per_class=False, **metrics_kwargs),
        preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(5),
    )
    trainer.train(resume_from_checkpoint=resume_argument(args.resume_from_checkpoint, args.output_dir))
    if recipe.model.stage2:  # classifier re-training of the two-stage baselines (plot_hf.stage2)
        trainer = run_stage2(trainer, recipe.model.stage2)

    results: dict[str, Any] = {"num_parameters": count_parameters(trainer.model)}
    trainer.compute_metrics = LTMetrics(data.stats.counts, per_class=True, **metrics_kwargs)
    if test is not None:
        results.update(_test_results(trainer, test))
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        write_report(trainer, recipe, data, results)
    if args.push_to_hub:
        trainer.push_to_hub(commit_message="PLOT training run", blocking=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("Usage: python -m plot_hf.train RECIPE.yaml [--key value ...] [--data.key value ...]")
        return {}
    path = argv.pop(0) if argv and not argv[0].startswith("--") else None
    logging.basicConfig(level=os.environ.get("PLOT_HF_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    recipe = load_recipe(path, argv)
    results = run(recipe)
    last = results.get("last", {})
    if last:
        logger.info("test accuracy %.4f  (%s)", last.get("test_accuracy", float("nan")), json.dumps(
            {k: round(v, 4) for k, v in last.items() if k.endswith("shot_accuracy")}))
    return results


if __name__ == "__main__":
    main()
