"""The math of PLOT, torch only: per-class objectives and gradients, their Gramian, the MOO solvers, SAM,
the variability-collapse loss, and the gradient replacement that applies a solved direction in one backward."""

from .gradients import conflict_fraction, flatten, gramian, per_class_gradients, unflatten
from .objectives import per_class_objectives, variability_collapse_loss
from .replay import StageReplay
from .sam import all_finite, finite_sam_epsilon, gradient_is_finite, sam_epsilon
from .solvers import SOLVERS, Solver, SolverResult, build_solver, register_solver, solve
from .surrogate import DirectionSlot, replace_gradient

__all__ = [
    "SOLVERS",
    "DirectionSlot",
    "StageReplay",
    "Solver",
    "SolverResult",
    "build_solver",
    "conflict_fraction",
    "flatten",
    "all_finite",
    "finite_sam_epsilon",
    "gradient_is_finite",
    "gramian",
    "per_class_gradients",
    "per_class_objectives",
    "register_solver",
    "replace_gradient",
    "sam_epsilon",
    "solve",
    "unflatten",
    "variability_collapse_loss",
]
