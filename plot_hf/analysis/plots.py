"""PNG plots of the analysis (matplotlib Agg, no pyplot): each function writes ``path`` and returns it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import _figure, _save, _series

HISTORY_KEYS: tuple[tuple[str, str], ...] = (
    ("analysis/conflict_fraction", "conflicting class pairs"),
    ("analysis/head_tail_preference", "head / tail projection on mean gradient"),
    ("analysis/nc1", "NC1 = tr(Sw Sb^+)/C"),
    ("analysis/mean_loss_std", "mean per-class loss std"),
)


def plot_conflict_heatmap(conflict: Mapping[str, Any], path: str | Path) -> str:
    """Class-by-class cosine of the per-class gradients, classes by decreasing frequency."""
    cosine = np.asarray(conflict["cosine"])
    labels = [f"{c}\n({n})" for c, n in zip(conflict["classes_by_frequency"], conflict["class_counts"], strict=True)]
    size = min(4 + 0.35 * len(labels), 14)
    fig, axes = _figure(1, 1, (size + 1, size))
    ax = axes[0, 0]
    image = ax.imshow(cosine, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax, label="cosine of class gradients")
    if len(labels) <= 40:
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("class (training count), most frequent first")
    ax.set_title(f"Gradient conflict: {conflict['conflict_fraction']:.1%} of pairs negative")
    return _save(fig, path)


def plot_against_frequency(analysis: Mapping[str, Any], path: str | Path) -> str:
    """Conflict rate, projection on the mean gradient, NC1 and loss std of each class against its frequency."""
    panels = (
        ("conflict", "per_class_conflict", "fraction of classes in conflict"),
        ("preference", "projection_on_mean", "projection on mean gradient"),
        ("preference", "gradient_norm", "class gradient norm"),
        ("representation", "per_class_nc1", "per-class NC1"),
        ("representation", "per_class_loss_std", "per-class loss std"),
    )
    fig, axes = _figure(1, len(panels), (3.4 * len(panels), 3.2))
    for ax, (section, key, label) in zip(axes[0], panels, strict=True):
        counts = analysis[section]["class_counts"]
        ax.scatter(counts, analysis[section][key], s=18)
        ax.set_xscale("log")
        ax.set_xlabel("training count")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_analysis_history(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> str | None:
    """Overlay the ``analysis/*`` measures logged over several runs (label -> ``trainer.state.log_history``), e.g.
    ``{"PLOT": plot_log, "baseline": ce_log}``; ``None`` when no run logged them."""
    keys = [(k, t) for k, t in HISTORY_KEYS if any(_series(log, k)[1] for log in runs.values())]
    if not keys:
        return None
    fig, axes = _figure(1, len(keys), (3.6 * len(keys), 3.2))
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        for label, log in runs.items():
            x, y, x_label = _series(log, key)
            if y:
                ax.plot(x, y, marker="o", ms=3, label=label)
                ax.set_xlabel(x_label)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
