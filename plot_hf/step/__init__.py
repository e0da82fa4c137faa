"""The PLOT step: :class:`PLOTStep` (its phases), :func:`build_plot_step` (from a :class:`plot_hf.PLOTConfig`),
and the solve phase, the one place the step calls a solver (:mod:`plot_hf.step._solve`)."""

from ._build import build_plot_step
from ._solve import Solve, Solved
from ._step import MOOParameters, PLOTStep, StepDiagnostics, TrainingLoopHooks, logits_of

__all__ = [
    "MOOParameters",
    "PLOTStep",
    "Solve",
    "Solved",
    "StepDiagnostics",
    "TrainingLoopHooks",
    "build_plot_step",
    "logits_of",
]
