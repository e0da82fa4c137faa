"""Multi-objective solvers: each maps the K x K Gramian of per-class gradients to K coefficients.

A solver is a small object built from its hyperparameters; ``solver(gramian, *, losses=None, anchor=None)``
returns a :class:`SolverResult` ``(coefficients, degenerate)``: ``lambda`` (K,) in the Gramian's dtype and on
its device (the update direction is ``G^T lambda``; ``ones(K)`` is the plain gradient) and whether the input
was degenerate (then ``lambda = ones(K)``). Each call copies the Gramian once to the host and solves in
float64 there, stopping at convergence. The PLOT step calls :func:`solve`.

- :class:`CAGrad` (``"cagrad"``): CAGrad's dual by a primal-dual interior-point method on its cone form,
  certified by the duality gap;
- :class:`MGDA` (``"mgda"``): the min-norm point by a primal-dual interior-point method;
- :class:`EPO` (``"epo"``): EPO's linear programs by a dense dual simplex method.

:data:`SOLVERS` maps the names to the classes; :func:`register_solver` adds one, :func:`build_solver` builds
one by name with hyperparameters checked.
"""

from ._base import SOLVERS, HostProblem, Solver, SolverResult, build_solver, register_solver, solve, to_host
from ._cagrad import CAGrad, cagrad_objective
from ._epo import EPO, epo_lp
from ._mgda import MGDA, min_norm_weights
from ._simplex_lp import solve_simplex_lp

__all__ = [
    "EPO",
    "MGDA",
    "SOLVERS",
    "CAGrad",
    "HostProblem",
    "Solver",
    "SolverResult",
    "build_solver",
    "cagrad_objective",
    "epo_lp",
    "min_norm_weights",
    "register_solver",
    "solve",
    "solve_simplex_lp",
    "to_host",
]
