"""Measure gradient conflict, head-class preference and representation variability of a trained model.

``python -m plot_hf.analyze MODEL_OR_CHECKPOINT_DIR RECIPE.yaml [--num_batches N] [--output_dir DIR]
[--compare OTHER_RUN_DIR] [--key value ...]``

On ``N`` fixed batches of the recipe's training split (eval transform, seeded order): the per-class gradients of
the MOO parameters (``moo_modules``, default the last stage), their cosine matrix and conflicting pairs, each
class's gradient norm and projection on the mean gradient, the NC1 variability of the penultimate features and
the per-class loss std, all against class frequency (:mod:`plot_hf.analysis.measures`). Writes to
``DIR`` (default ``MODEL/analysis``): ``analysis.json``, ``conflict_heatmap.png``, ``against_frequency.png``,
and, when the run logged ``analysis/*`` measures (``analysis_every_steps``), ``analysis_history.png`` (overlaid
with ``--compare``'s run, e.g. the baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .analysis.measures import (
    class_gradients,
    conflict_measures,
    fixed_batches,
    penultimate_features,
    preference_measures,
    representation_measures,
    summary_measures,
)
from .analysis.plots import plot_against_frequency, plot_analysis_history, plot_conflict_heatmap
from .checkpoint import list_checkpoints
from .data.builder import build_datasets
from .data.transforms import collate_fn, with_transforms
from .losses import build_loss
from .models.hf import load_image_classifier
from .models.introspection import resolve_moo_parameters
from .recipe import load_recipe
from .train import eval_transform_of


def log_history_of(run_dir: str | Path) -> list[dict[str, Any]]:
    """``log_history`` of a run folder or checkpoint (its ``trainer_state.json``, else its newest checkpoint's)."""
    run_dir = Path(run_dir)
    for folder in [run_dir, *list_checkpoints(run_dir)]:
        state = folder / "trainer_state.json"
        if state.is_file():
            return list(json.loads(state.read_text()).get("log_history", []))
    return []


def compare_runs(runs: Mapping[str, str | Path], path: str | Path) -> str | None:
    """Overlay the ``analysis/*`` measures of several run folders (label -> folder) on one figure."""
    return plot_analysis_history({label: log_history_of(d) for label, d in runs.items()}, path)


def analyze(
    model_path: str,
    recipe_path: str | None,
    *,
    num_batches: int = 8,
    output_dir: str | None = None,
    compare: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every measure; write ``analysis.json`` and the plots; return the numbers."""
    recipe = load_recipe(recipe_path, list(overrides))
    data = build_datasets(recipe.data)
    model = load_image_classifier(model_path)
    if model.config.num_labels != data.num_classes:
        raise ValueError(f"Model {model_path!r} has {model.config.num_labels} labels; the data {data.num_classes}.")
    device = "cuda" if torch.cuda.is_available() and not recipe.training.use_cpu else "cpu"
    model.to(device)
    counts = list(data.stats.counts)
    eval_tf = eval_transform_of(recipe.data, model)  # a fine-tuned checkpoint's own preprocessing
    train = with_transforms(data.train, eval_tf)
    batches = fixed_batches(train, collate_fn, num_batches, recipe.training.per_device_train_batch_size,
                            seed=recipe.training.seed)
    loss_fn = build_loss(recipe.training.loss_type, counts, **(recipe.training.loss_kwargs or {})).to(device)

    def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return loss_fn(logits, labels)

    moo = resolve_moo_parameters(model, recipe.training.moo_modules)
    grads = class_gradients(model, moo.params, batches, per_sample_loss, method=recipe.training.moo_gradient_method,
                            chunk_size=recipe.training.moo_chunk_size,
                            chunk_memory_mb=recipe.training.moo_chunk_memory_mb, device=device)
    results: dict[str, Any] = {
        "model": str(model_path),
        "moo_parameters": moo.names,
        "num_batches": len(batches),
        "classes_seen": int(len(grads.classes)),
        "conflict": conflict_measures(grads, counts),
        "preference": preference_measures(grads, counts),
        "representation": representation_measures(penultimate_features(model, batches, per_sample_loss, device),
                                                  counts),
    }
    results["summary"] = summary_measures(results["conflict"], results["preference"], results["representation"])
    out = Path(output_dir) if output_dir else (Path(model_path) / "analysis" if Path(model_path).is_dir()
                                               else Path(recipe.training.output_dir) / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "conflict_heatmap": plot_conflict_heatmap(results["conflict"], out / "conflict_heatmap.png"),
        "against_frequency": plot_against_frequency(results, out / "against_frequency.png"),
    }
    runs = {Path(model_path).name or "run": model_path, **{Path(c).name or f"run{i}": c for i, c in enumerate(compare)}}
    history = compare_runs(runs, out / "analysis_history.png") if Path(model_path).is_dir() else None
    if history:
        plots["analysis_history"] = history
    results["plots"] = {k: Path(v).name for k, v in plots.items()}
    (out / "analysis.json").write_text(json.dumps(results, indent=1, default=float))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m plot_hf.analyze", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained model or checkpoint folder (or Hub id)")
    parser.add_argument("recipe", help="the recipe YAML the model was trained with")
    parser.add_argument("--num_batches", type=int, default=8, help="fixed training batches (0: the whole split)")
    parser.add_argument("--output_dir", default=None, help="where to write (default: MODEL/analysis)")
    parser.add_argument("--compare", action="append", default=[], help="another run folder to overlay")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    results = analyze(args.model, args.recipe, num_batches=args.num_batches, output_dir=args.output_dir,
                      compare=args.compare, overrides=overrides)
    print(json.dumps(results["summary"], indent=2))
    return results


if __name__ == "__main__":
    main()
