"""Multi-objective solvers: each maps the K x K Gramian of per-class gradients to K coefficients.

``SOLVERS[name](gramian, *, losses=None, anchor=None, **hyperparameters)`` returns ``lambda`` (K,) in the
Gramian's dtype and device; the update direction is ``G^T lambda`` and ``ones(K)`` is the plain gradient.
"""

from ._cagrad import cagrad, cagrad_objective
from ._epo import epo, epo_lp, solve_simplex_lp
from ._mgda import mgda, min_norm_weights
from ._registry import (
    SOLVERS,
    DegenerateGramianWarning,
    Solver,
    SolverRegistry,
    UnknownSolverError,
    degenerate_gramian,
    get_solver,
    register_solver,
)
from ._simplex import project_simplex

__all__ = [
    "SOLVERS",
    "DegenerateGramianWarning",
    "Solver",
    "SolverRegistry",
    "UnknownSolverError",
    "cagrad",
    "cagrad_objective",
    "degenerate_gramian",
    "epo",
    "epo_lp",
    "get_solver",
    "mgda",
    "min_norm_weights",
    "project_simplex",
    "register_solver",
    "solve_simplex_lp",
]
