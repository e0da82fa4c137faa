"""What a run leaves in ``output_dir``: ``metrics.json``, ``recipe.yaml``, plots, and the model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .model_card import build_model_card, reference_departures
from .models.remote_code import needs_remote_code
from .plots import plot_conflict, plot_per_class_accuracy, plot_training_curves

PLOT_KEYS = (
    "moo_until_epoch", "moo_solver", "cagrad_alpha", "moo_anchor", "moo_modules", "sam_rho", "sam_keep_fraction",
    "vc_weight", "mixup_alpha", "loss_type",
)


def _strip(metrics: dict[str, Any], prefix: str = "test_") -> dict[str, Any]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in metrics.items()}


def write_report(trainer: Any, recipe: Any, data: Any, results: dict[str, Any]) -> dict[str, str | None]:
    """Write metrics, recipe, plots and README.md (the model card); return the plot paths."""
    out = Path(trainer.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "recipe.yaml").write_text(recipe.to_yaml())
    last = _strip(results.get("last", {}))
    plots = {
        "per_class_accuracy": plot_per_class_accuracy(
            last["per_class_accuracy"], data.stats.counts, out / "per_class_accuracy.png",
            many_threshold=data.stats.many_shot_threshold, few_threshold=data.stats.few_shot_threshold,
        ) if last.get("per_class_accuracy") else None,
        "training_curves": plot_training_curves(trainer.state.log_history, out / "training_curves.png"),
        "gradient_conflict": plot_conflict(trainer.state.log_history, out / "gradient_conflict.png"),
    }
    plots = {k: Path(v).name if v else None for k, v in plots.items()}
    metrics = {"last": last}
    if "best_on_validation" in results:
        metrics["best_on_validation"] = _strip(results["best_on_validation"])
    baseline = None
    if recipe.model.baseline_metrics:
        baseline_results = json.loads(Path(recipe.model.baseline_metrics).read_text())
        baseline = _strip(baseline_results.get("last", baseline_results))
    card = build_model_card(
        model_name=trainer.args.hub_model_id or out.name,
        dataset_name=_dataset_name(recipe.data),
        imbalance_factor=recipe.data.imbalance_factor if recipe.data.imbalance_profile != "none" else None,
        backbone=recipe.model.model_name,
        num_parameters=results.get("num_parameters"),
        recipe_yaml=recipe.to_yaml(),
        plot_hparams={k: getattr(trainer.args, k) for k in PLOT_KEYS},
        metrics=metrics,
        baseline_metrics=baseline,
        plots=plots,
        repo_id=trainer.args.hub_model_id,
        shot_rule=data.stats.shot_rule,
        many_threshold=data.stats.many_shot_threshold,
        few_threshold=data.stats.few_shot_threshold,
        remote_code=needs_remote_code(trainer.model.config) if hasattr(trainer.model, "config") else None,
        departures=reference_departures(trainer.args, recipe.model.model_name, recipe.model.model_args),
    )
    card.save(out / "README.md")
    trainer.plot_model_card = out / "README.md"
    return plots


def _dataset_name(data_config: Any) -> str:
    name = data_config.path or data_config.source
    return f"{Path(str(name)).name}-LT" if data_config.imbalance_profile != "none" else str(Path(str(name)).name)
