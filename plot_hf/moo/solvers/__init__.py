"""Multi-objective solvers: each maps the K x K Gramian of per-class gradients to K coefficients.

``SOLVERS[name](gramian, *, losses=None, anchor=None, **hyperparameters)`` returns ``lambda`` (K,) in the
Gramian's dtype and device; the update direction is ``G^T lambda`` and ``ones(K)`` is the plain gradient.

- ``cagrad``: CAGrad's dual by a primal-dual interior-point method on its cone form, certified by the
  duality gap (on a CPU for K >= 400, on working sets of classes, certified on the whole problem);
- ``mgda``: the min-norm point by a primal-dual interior-point method;
- ``epo``: EPO's linear programs by a dual simplex method on the host, or an interior-point method on the
  device.

All run in float64, without SciPy. All three take ``early_exit``: where
host reads are allowed (default: CPU tensors) they check their arguments, warn about degenerate input and stop at
convergence; elsewhere (default on accelerators) they run a fixed budget of iterations with no host read at all
and return ``ones(K)`` for degenerate input through ``torch.where`` (``epo`` then solves its LPs by the
interior-point method, on the Gramian's device; with host reads, by the dual simplex method on the host).
"""

from ._cagrad import cagrad, cagrad_objective
from ._epo import epo, epo_lp, epo_lp_on_device, solve_simplex_lp
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
    "epo_lp_on_device",
    "get_solver",
    "mgda",
    "min_norm_weights",
    "project_simplex",
    "register_solver",
    "solve_simplex_lp",
]
