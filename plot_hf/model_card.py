"""Model cards for PLOT runs: ``huggingface_hub.ModelCard`` rendered from ``plot_hf/templates/model_card.md``.

The card's metadata carries a model-index (``EvalResult``s for top-1, top-5 when known, and many / medium /
few-shot accuracy of the last-epoch model, in %, rounded to 2 decimals), so the Hub shows the numbers and
``ModelCard.load(...).data.eval_results`` reads them back.

Metric dicts are those of :func:`plot_hf.metrics.lt_metrics` (accuracies as fractions in ``[0, 1]``);
Trainer-style prefixes (``eval_``, ``test_``) are stripped. A dict may also be ``{"last": {...},
"best_on_validation": {...}}``; a flat dict counts as ``last``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .metrics import describe_shot_rule

__all__ = [
    "CITATION", "TAGS", "TEMPLATE_PATH", "build_model_card", "departures_section", "normalize_results",
    "reference_departures",
]

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
TAGS: tuple[str, ...] = ("plot", "long-tailed", "timm", "image-classification")
CITATION = """@inproceedings{zhou2024pareto,
  title     = {Pareto Deep Long-Tailed Recognition: A Conflict-Averse Solution},
  author    = {Zhou, Zhipeng and Liu, Liu and Zhao, Peilin and Gong, Wei},
  booktitle = {The Twelfth International Conference on Learning Representations (ICLR)},
  year      = {2024},
  url       = {https://github.com/zzpustc/PLOT}
}"""

# (key, row label, unit): "%" values are fractions shown x100; "" values are shown as they are.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "Top-1 accuracy", "%"),
    ("top5_accuracy", "Top-5 accuracy", "%"),
    ("many_shot_accuracy", "Many-shot accuracy", "%"),
    ("medium_shot_accuracy", "Medium-shot accuracy", "%"),
    ("few_shot_accuracy", "Few-shot accuracy", "%"),
    ("macro_accuracy", "Macro accuracy (mean per-class)", "%"),
    ("ece", "ECE (15 bins)", "%"),
    ("nll", "NLL", ""),
)
# (key, model-index metric type, metric name) of the EvalResults.
INDEX_METRICS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "accuracy", "Top-1 accuracy"),
    ("top5_accuracy", "top_5_accuracy", "Top-5 accuracy"),
    ("many_shot_accuracy", "many_shot_accuracy", "Many-shot accuracy"),
    ("medium_shot_accuracy", "medium_shot_accuracy", "Medium-shot accuracy"),
    ("few_shot_accuracy", "few_shot_accuracy", "Few-shot accuracy"),
)
_KNOWN = frozenset({key for key, _, _ in ROWS} | {"loss", "epoch", "step"})
_RESULT_SETS = ("last", "best_on_validation")


def _strip_prefix(key: str) -> str:
    """``eval_accuracy`` / ``test_many_shot_accuracy`` -> the bare metric name when it is a known one."""
    if key in _KNOWN:
        return key
    head, _, rest = key.partition("_")
    return rest if head and rest in _KNOWN else key


def _flat(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {_strip_prefix(k): v for k, v in metrics.items()}


def normalize_results(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"last": {...}, "best_on_validation": {...}}`` (sets present only) from a flat or nested metrics dict."""
    if not metrics:
        return {}
    if any(isinstance(metrics.get(name), Mapping) for name in _RESULT_SETS):
        return {name: _flat(metrics[name]) for name in _RESULT_SETS if isinstance(metrics.get(name), Mapping)}
    return {"last": _flat(metrics)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _shown(value: Any, unit: str) -> float | None:
    """The value as printed: fractions x100 rounded to 2 decimals, others to 3."""
    number = _number(value)
    if number is None:
        return None
    return round(100.0 * number, 2) if unit == "%" else round(number, 3)


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if unit == "%" else f"{value:.3f}"


def _escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _set_title(name: str, result: Mapping[str, Any]) -> str:
    title = {"last": "Last epoch", "best_on_validation": "Best on validation"}[name]
    for key in ("epoch", "step"):
        number = _number(result.get(key))
        if number is not None and name == "best_on_validation":
            return f"{title} ({key} {number:g})"
    return title


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table: one row per metric present, one column per result set (last, best on validation)."""
    names = [name for name in _RESULT_SETS if name in results]
    rows = []
    for key, label, unit in ROWS:
        shown = [_shown(results[name].get(key), unit) for name in names]
        if any(v is not None for v in shown):
            rows.append([f"{label}{' (%)' if unit == '%' else ''}"] + [_cell(v, unit) for v in shown])
    if not rows:
        return "_No results were given._"
    return _table(["Metric"] + [_set_title(name, results[name]) for name in names], rows)


def _marker(plot: float, base: float) -> str:
    return "▲" if plot > base else "▼" if plot < base else ""


def comparison_table(
    plot_results: Mapping[str, Any], baseline_results: Mapping[str, Any], baseline_name: str
) -> str:
    """Poster format: ``| metric | baseline | w/ PLOT | Δ |`` with ▲ / ▼ on the PLOT value (higher / lower)."""
    rows = []
    for key, label, unit in ROWS:
        base, plot = _shown(baseline_results.get(key), unit), _shown(plot_results.get(key), unit)
        if base is None or plot is None:
            continue
        delta = plot - base
        rows.append([
            f"{label}{' (%)' if unit == '%' else ''}",
            _cell(base, unit),
            _cell(plot, unit) + _marker(plot, base),
            f"{delta:+.2f}" if unit == "%" else f"{delta:+.3f}",
        ])
    if not rows:
        return ""
    return _table(["Metric", _escape(baseline_name), "w/ PLOT", "Δ"], rows)


def _code_block(text: str, language: str) -> str:
    """Fence ``text`` with more backticks than its longest run, so any YAML survives intact."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def hparams_table(plot_hparams: Mapping[str, Any]) -> str:
    """``| hyperparameter | value |`` rows in the given order; an empty dict says so."""
    if not plot_hparams:
        return "_PLOT was off (no PLOT hyperparameters)._"
    rows = [[f"`{_escape(k)}`", _escape(v)] for k, v in plot_hparams.items()]
    return _table(["Hyperparameter", "Value"], rows)


def _parameters_text(num_parameters: int | None) -> str:
    if not num_parameters:
        return "not given"
    return f"{num_parameters / 1e6:.2f}M ({num_parameters:,})"


def _imbalance_text(imbalance_factor: float | None) -> str:
    if imbalance_factor is None:
        return ""
    return f"{imbalance_factor:g} (n_max / n_min)"


def _shot_rule_text(rule: str, many_threshold: int, few_threshold: int) -> str:
    return describe_shot_rule(rule, many_threshold, few_threshold)  # type: ignore[arg-type]


def eval_results(
    last: Mapping[str, Any],
    *,
    dataset_name: str,
    dataset_id: str,
    dataset_split: str,
    dataset_args: dict[str, Any] | None,
    metric_args: dict[str, Any],
) -> list[EvalResult]:
    """``EvalResult``s (values in %, 2 decimals) for top-1, top-5 and the non-empty shot groups."""
    out = []
    for key, metric_type, metric_name in INDEX_METRICS:
        value = _shown(last.get(key), "%")
        if value is None:
            continue
        out.append(EvalResult(
            task_type="image-classification",
            task_name="Long-tailed image classification",
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            dataset_args=dataset_args,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=value,
            metric_args=metric_args if "shot" in key else None,
        ))
    return out


def _how_to_use(backbone: str, remote_code: bool | None) -> dict[str, Any]:
    """Template values of the "How to use" section: ``remote_code`` and the code files the folder carries."""
    from .models.remote_code import SHIPPED_MODULES, needs_remote_code

    if remote_code is None:
        remote_code = needs_remote_code({"architecture": backbone})
    return {"remote_code": remote_code, "code_files": ", ".join(f"`{name}`" for name in SHIPPED_MODULES.values())}
# ------------------------------------------------------------------------------------ departures from the reference
def reference_departures(args: Any, model_name: str | None = None, model_args: Mapping[str, Any] | None = None) -> list[str]:
    """The departures from the PLOT reference code (``zzpustc/PLOT``, ``train_cifar.py``) that applied to a run
    with training arguments ``args`` (a :class:`~plot_hf.PLOTConfig`, or any object with its attributes), one
    sentence each; ``docs/fidelity.md`` has the full table with their measured effects.

    Only the PLOT step and the stage-1 optimiser are covered (data selection, stage 2 and evaluation are stated
    by the recipe). An empty list when PLOT was off (``moo_until_epoch == 0``): the run is then the baseline.
    """
    if not getattr(args, "moo_until_epoch", 0) > 0:
        return []
    out = ["Batch-norm running statistics of the MOO stage are updated once per PLOT step (the reference "
           "updates them a second time in its re-forward at the perturbed point)."]
    if getattr(args, "moo_solver", "cagrad") == "cagrad":
        out.append("CAGrad's dual is solved by an interior-point method to a certified gap (the reference: "
                   "SciPy SLSQP with finite differences); the same optimum to solver tolerance.")
    elif getattr(args, "moo_solver", None) in ("mgda", "epo"):
        out.append(f"Solver `{args.moo_solver}`: the released code has no working implementation of it.")
    if getattr(args, "mixup_alpha", 0) > 0 and getattr(args, "moo_loss", "first_label") == "mixup":
        out.append("`moo_loss=mixup`: the mixup loss at the perturbed point (the reference: cross-entropy on the "
                   "first label of each mixed pair).")
    if getattr(args, "weight_decay", 0) > 0 and not getattr(args, "weight_decay_all_parameters", False):
        out.append("No weight decay on biases (Trainer's rule; the reference decays every parameter).")
    if getattr(args, "lr_milestones", None) is None:
        out.append(f"Learning-rate schedule `{getattr(args, 'lr_scheduler_type', '?')}` (the reference: linear "
                   "warm-up over 5 epochs, then x0.1 at 160 and 180).")
    elif getattr(args, "lr_schedule_timing", "epoch_end") == "epoch_end":
        out.append("The warm-up schedule runs one epoch later than the reference's (`lr_schedule_timing=epoch_end`).")
    if not (getattr(args, "train_drop_last", False) or getattr(args, "dataloader_drop_last", False)):
        out.append("The last, smaller batch of each epoch is kept (the reference drops it).")
    if (getattr(args, "max_grad_norm", 0) or 0) > 0:
        out.append(f"Gradients clipped to norm {args.max_grad_norm:g} (the reference does not clip).")
    if getattr(args, "moo_anchor", "class_prior") != "class_prior":
        out.append("CAGrad's anchor is uniform (the released configs use the class prior).")
    if getattr(args, "moo_gradient_method", "auto") == "sketch":
        out.append("The Gramian is a random sketch (`moo_gradient_method=sketch`; the reference: exact per-class gradients).")
    if getattr(args, "moo_framework", "plot") == "plain":
        out.append("`moo_framework=plain`: the solver at every step without SAM or variability collapse (not PLOT).")
    for key, default, text in _APPROXIMATIONS:
        if getattr(args, key, default) != default:
            out.append(text.format(value=getattr(args, key)))
    if model_name in ("resnet32_cifar", "resnet20_cifar", "resnet56_cifar"):
        if (model_args or {}).get("classifier_init", "kaiming_normal") != "torch_default":
            out.append("Kaiming-normal classifier initialisation (the reference keeps `nn.Linear`'s own).")
        if model_name == "resnet32_cifar":
            out.append("Standard ResNet-32 (5/5/5 blocks); the reference's copy has 4 blocks in its last stage.")
    return out


_APPROXIMATIONS: tuple[tuple[str, Any, str], ...] = (
    ("moo_solve_every", 1, "Coefficients solved every {value} steps and reused in between (amortised)."),
    ("moo_class_groups", None, "{value} frequency-ordered class groups as objectives (the reference: one per class)."),
    ("moo_modules", None, "MOO parameters `{value}` (the reference: `layer3`)."),
)


def departures_section(departures: list[str]) -> str:
    """Markdown bullet list of :func:`reference_departures`, or a sentence when there are none."""
    if not departures:
        return "_None: PLOT was off, or every setting matched the reference code._"
    return "\n".join(f"- {_escape(line)}" for line in departures)


def build_model_card(
    *,
    model_name: str, dataset_name: str, imbalance_factor: float | None, backbone: str, num_parameters: int | None,
    recipe_yaml: str, plot_hparams: Mapping[str, Any], metrics: Mapping[str, Any],
    baseline_metrics: Mapping[str, Any] | None = None, plots: Mapping[str, str | None] | None = None,
    base_model: str | None = None, license: str = "apache-2.0", repo_id: str | None = None,
    dataset_id: str | None = None, dataset_split: str = "test", baseline_name: str = "Baseline",
    shot_rule: str = "strict", many_threshold: int = 100, few_threshold: int = 20, extra_tags: tuple[str, ...] = (),
    remote_code: bool | None = None, departures: list[str] | None = None,
) -> ModelCard:
    """Render the model card of a run (save it with ``card.save(output_dir / "README.md")``).

    Args:
        model_name: the model-index name and the card's title.
        dataset_name, imbalance_factor: e.g. ``"CIFAR-10-LT"``, ``100`` (``n_max / n_min``; ``None`` if balanced).
        backbone, num_parameters: e.g. ``"resnet32_cifar"``, ``464154``.
        recipe_yaml: the full recipe, shown verbatim in a code block.
        plot_hparams: PLOT's hyperparameters, shown as a table in the given order.
        metrics: final metrics, flat (= last epoch) or ``{"last": ..., "best_on_validation": ...}``.
        baseline_metrics: the same for a baseline run; adds the poster's baseline-vs-PLOT table (last epoch).
        plots: ``{title: relative PNG path}``; ``None`` paths (plot skipped) are left out.
        base_model: Hub id of the initial weights, if any.
        license: the card's license.
        repo_id: Hub id used in the loading snippet (defaults to ``model_name``).
        dataset_id: Hub id / identifier of the dataset for the model-index (defaults to ``dataset_name``).
        dataset_split: the split the results were computed on.
        baseline_name: column title of the baseline in the comparison table.
        shot_rule, many_threshold, few_threshold: the shot-group rule used (stated in the card).
        extra_tags: tags added to ``TAGS``.
        remote_code: whether the saved model carries its code (``auto_map``; :mod:`plot_hf.models.remote_code`),
            which decides the "How to use" snippets (plot-hf or ``trust_remote_code=True``, versus plain
            transformers); ``None``: true for the CIFAR ResNets that plot-hf registers with timm.
        departures: the departures from the PLOT reference code that applied (:func:`reference_departures`);
            ``None`` leaves the section out.
    """
    results = normalize_results(metrics)
    card_data = _card_data(
        model_name=model_name, license=license, extra_tags=extra_tags, dataset_id=dataset_id, base_model=base_model,
        eval_results=eval_results(
            _last_results(results), dataset_name=dataset_name, dataset_id=dataset_id or dataset_name,
            dataset_split=dataset_split,
            dataset_args={"imbalance_factor": imbalance_factor} if imbalance_factor is not None else None,
            metric_args={"shot_rule": shot_rule, "many_threshold": many_threshold, "few_threshold": few_threshold},
        ),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        dataset_name=dataset_name,
        dataset_id=dataset_id,
        imbalance_text=_imbalance_text(imbalance_factor),
        backbone=backbone,
        num_parameters_text=_parameters_text(num_parameters),
        base_model=base_model,
        shot_rule_text=_shot_rule_text(shot_rule, many_threshold, few_threshold),
        **_training_values(recipe_yaml, plot_hparams, departures),
        **_results_values(results, baseline_metrics, baseline_name, dataset_split, plots),
        repo_id=repo_id or model_name,
        **_how_to_use(backbone, remote_code),
        citation=CITATION,
    )


def _last_results(results: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """The last-epoch set of :func:`normalize_results`, else the first set present, else ``{}``."""
    return results.get("last") or next(iter(results.values()), {})


def _card_data(
    *, model_name: str, license: str, extra_tags: tuple[str, ...], dataset_id: str | None, base_model: str | None,
    eval_results: list[EvalResult],
) -> ModelCardData:
    """The card's metadata: ``TAGS`` then ``extra_tags`` (without repeats) and the model-index, if any."""
    return ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=list(dict.fromkeys([*TAGS, *extra_tags])),
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        metrics=["accuracy"],
        eval_results=eval_results or None,
    )


def _training_values(
    recipe_yaml: str, plot_hparams: Mapping[str, Any], departures: list[str] | None
) -> dict[str, str]:
    """Template values of the "How it was trained" section: the recipe, PLOT's hyperparameters, the departures."""
    return {
        "recipe_block": _code_block(recipe_yaml, "yaml"),
        "hparams_table": hparams_table(plot_hparams),
        "departures_text": departures_section(departures) if departures is not None else "",
    }


def _results_values(
    results: Mapping[str, Mapping[str, Any]],
    baseline_metrics: Mapping[str, Any] | None,
    baseline_name: str,
    dataset_split: str,
    plots: Mapping[str, str | None] | None,
) -> dict[str, Any]:
    """Template values of the results: the results table, the comparison with the baseline (last epoch) and the
    plots that were drawn."""
    baseline_last = _last_results(normalize_results(baseline_metrics))
    return {
        "results_note": f"split `{dataset_split}`" if dataset_split != "test" else "",
        "results_table": results_table(results),
        "has_best": "best_on_validation" in results,
        "comparison_table": (
            comparison_table(_last_results(results), baseline_last, baseline_name) if baseline_metrics else ""
        ),
        "plots": [{"title": title, "path": path} for title, path in (plots or {}).items() if path],
    }
