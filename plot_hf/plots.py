"""PNG plots for reports and model cards (matplotlib Agg canvas, no pyplot; no display needed).

Every function takes the output ``path``, writes a PNG there (creating parent folders) and returns the path
as a string; when its inputs hold nothing to draw (missing log keys, no class with test samples) it writes
nothing and returns ``None``, so callers can pass the result straight into ``build_model_card(plots=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import ShotRule

__all__ = ["plot_conflict", "plot_per_class_accuracy", "plot_training_curves"]

CONFLICT_KEYS: tuple[str, ...] = ("plot/conflict_fraction", "plot/num_classes", "plot/coef_std")
GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def _figure(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure on the Agg canvas (no global backend switch, safe in threads) and its axes grid."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _save(fig: Figure, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    return str(path)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _series(log_history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float], str]:
    """``(x, y, x_label)`` of the finite values logged under ``key``; x is the step, else the epoch, else
    the entry's position."""
    rows = [row for row in log_history if _finite(row.get(key))]
    y = [float(row[key]) for row in rows]
    for x_key in ("step", "epoch"):
        if rows and all(_finite(row.get(x_key)) for row in rows):
            return [float(row[x_key]) for row in rows], y, x_key
    return [float(i) for i in range(len(rows))], y, "logged entry"


def _x_label(series: Any) -> str:
    """The shared x label of several ``_series`` results (``"step / epoch"`` when they differ)."""
    return " / ".join(sorted({label for _, _, label in series}))


def _group_spans(
    many_threshold: int, few_threshold: int, rule: ShotRule, lo: float, hi: float
) -> dict[str, tuple[float, float]]:
    """Training-count intervals of the shot groups on a log axis (boundaries at the thresholds, +-0.5 per rule)."""
    few_edge = few_threshold - 0.5 if rule == "strict" else few_threshold + 0.5
    many_edge = many_threshold + 0.5 if rule == "strict" else many_threshold - 0.5
    return {"few": (lo, few_edge), "medium": (few_edge, many_edge), "many": (many_edge, hi)}


def plot_per_class_accuracy(
    per_class_acc: Sequence[float | None],
    train_counts: Sequence[int] | np.ndarray,
    path: str | Path,
    *,
    many_threshold: int = 100,
    few_threshold: int = 20,
    rule: ShotRule = "strict",
    title: str | None = None,
) -> str | None:
    """Scatter of per-class test accuracy against training count ``n_j`` (log x), shot groups shaded.

    Classes whose accuracy is ``None`` (no test sample) are skipped; accuracies are fractions, drawn as %.
    """
    counts = np.asarray(train_counts, dtype=np.float64).reshape(-1)
    if len(per_class_acc) != counts.size:
        raise ValueError(
            f"`per_class_acc` has {len(per_class_acc)} entries but `train_counts` has {counts.size}."
        )
    keep = [j for j, a in enumerate(per_class_acc) if a is not None and counts[j] > 0]
    if not keep:
        return None
    x = counts[keep]
    y = 100.0 * np.asarray([per_class_acc[j] for j in keep], dtype=np.float64)
    fig, axes = _figure(1, 1, (7, 4))
    ax = axes[0, 0]
    lo, hi = x.min() / 1.5, x.max() * 1.5
    for name, (a, b) in _group_spans(many_threshold, few_threshold, rule, lo, hi).items():
        a, b = max(a, lo), min(b, hi)
        if a < b:
            ax.axvspan(a, b, color=GROUP_COLOURS[name], alpha=0.08, lw=0)
            members = (x > a) & (x <= b)
            label = f"{name}-shot"
            if members.any():
                ax.hlines(y[members].mean(), a, b, colors=GROUP_COLOURS[name], linestyles="--", lw=1.2)
                label += f" (mean {y[members].mean():.1f}%)"
            ax.plot([], [], color=GROUP_COLOURS[name], lw=6, alpha=0.3, label=label)
    ax.scatter(x, y, s=12, color="black", alpha=0.7, zorder=3)
    ax.set(xscale="log", xlim=(lo, hi), ylim=(-2, 102), xlabel="training images per class (log scale)",
           ylabel="test accuracy (%)", title=title or "Per-class accuracy vs training frequency")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_training_curves(
    log_history: Sequence[Mapping[str, Any]], path: str | Path, *, prefix: str = "eval_"
) -> str | None:
    """Training/eval loss and eval top-1 / many / medium / few-shot accuracy from ``Trainer.state.log_history``.

    Reads ``loss``, ``{prefix}loss``, ``{prefix}accuracy`` and ``{prefix}{many,medium,few}_shot_accuracy``
    against ``step`` (or ``epoch``); panels without data are dropped, ``None`` when no key is present.
    """
    loss_keys = {"train loss": "loss", "eval loss": f"{prefix}loss"}
    acc_keys = {"top-1": f"{prefix}accuracy"} | {
        f"{g}-shot": f"{prefix}{g}_shot_accuracy" for g in ("many", "medium", "few")
    }
    panels = []
    for ylabel, keys, scale in (("loss", loss_keys, 1.0), ("accuracy (%)", acc_keys, 100.0)):
        lines = {name: _series(log_history, key) for name, key in keys.items()}
        lines = {name: s for name, s in lines.items() if s[0]}
        if lines:
            panels.append((ylabel, lines, scale))
    if not panels:
        return None
    fig, axes = _figure(1, len(panels), (6 * len(panels), 4))
    for ax, (ylabel, lines, scale) in zip(axes[0], panels, strict=True):
        for name, (x, y, _) in lines.items():
            ax.plot(x, [scale * v for v in y], marker="o" if len(x) < 30 else None, ms=3, label=name)
        ax.set(xlabel=_x_label(lines.values()), ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Training curves")
    return _save(fig, path)


def plot_conflict(log_history: Sequence[Mapping[str, Any]], path: str | Path) -> str | None:
    """PLOT diagnostics over training: ``plot/conflict_fraction`` (fraction of class-gradient pairs with a
    negative inner product), ``plot/num_classes`` (classes in the MOO step) and ``plot/coef_std`` (spread of
    the solver's class weights), one panel per key present; ``None`` when none is logged.
    """
    series = {key: _series(log_history, key) for key in CONFLICT_KEYS}
    series = {key: s for key, s in series.items() if s[0]}
    if not series:
        return None
    fig, axes = _figure(len(series), 1, (7, 2.6 * len(series)), sharex=True)
    for ax, (key, (x, y, _)) in zip(axes[:, 0], series.items(), strict=True):
        ax.plot(x, y, lw=1.2)
        ax.set(ylabel=key.removeprefix("plot/"))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(_x_label(series.values()))
    fig.suptitle("Per-class gradient conflict (PLOT diagnostics)")
    return _save(fig, path)
