"""Build and run a PLOT step outside a Trainer, as :class:`plot_hf.PLOTTrainer` builds it (from a config)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from plot_hf import PLOTConfig
from plot_hf.step import PLOTStep, StepDiagnostics, TrainingLoopHooks, build_plot_step


def build_step(model: torch.nn.Module, counts: Sequence[int], *, host_reads: bool | None = None, **config) -> PLOTStep:
    """``build_plot_step`` for ``model`` with a ``PLOTConfig`` of ``config`` (CPU, no reports)."""
    args = PLOTConfig(report_to="none", use_cpu=True, **config)
    return build_plot_step(args, model, counts, host_reads=host_reads)


def run_step(
    step: PLOTStep, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, hooks: TrainingLoopHooks | None = None
) -> tuple[torch.Tensor, StepDiagnostics]:
    """One step with plain cross-entropy per-sample losses (``y`` groups the samples), plain backward."""
    return step.run(model, x, y, lambda logits: F.cross_entropy(logits, y, reduction="none"), hooks)
