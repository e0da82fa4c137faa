"""CAGrad, the conflict-averse direction (Liu et al., "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021), in the form used by PLOT (Zhou et al., ICLR 2024, reference code
``zzpustc/PLOT``, ``utils/pareto.py``, function ``cagrad``).

Problem. With ``A = G G^T`` the K x K Gramian of the per-class gradients, ``b`` the anchor (a probability
vector over the K classes; uniform by default) and ``c = alpha * sqrt(mean(A) + 1e-8) + 1e-8``
(``alpha * ||g0||`` with ``g0`` the mean gradient), solve the dual of CAGrad (Liu et al., eq. 4)::

    w* = argmin_{w in simplex}  w^T A b + c * sqrt(w^T A w + 1e-8)

and return ``lambda = (1 + K * c / (||G^T w*|| + 1e-8) * w*) / s`` with ``||G^T w*|| = sqrt(w*^T A w*)``
and ``s = 1 + alpha^2`` (``rescale=1``, default), ``1 + alpha`` (``rescale=2``) or ``1`` (``rescale=0``).
Then ``G^T lambda = K * (g0 + c / ||G^T w*|| * G^T w*) / s``: the reference direction, multiplied by K
as the reference does before writing it into ``.grad``.

Departures from the reference code.
- The reference solves with SciPy SLSQP (finite-difference gradients, default tolerance ``ftol=1e-6``
  absolute) on the CPU. Here: a primal-dual interior-point method on the second-order cone form of the
  dual (Mehrotra predictor-corrector with Nesterov-Todd scaling, one Cholesky factorisation per iteration;
  see :mod:`plot_hf.moo.solvers._cagrad_ipm`), float64, on the Gramian's device, stopped by a certified
  duality gap (relative ``tol``). Its speed does not depend on the conditioning of ``A``: per-class
  Gramians late in training (gradient norms over several decades, condition numbers ~1e9, where 300
  FISTA iterations left objective gaps of up to 400%) take 10-17 iterations, as well-conditioned ones do.
  The result is at least as good as a multi-start SLSQP solve and matches Clarabel's interior-point
  solution of the conic form (see the tests). On a CPU, from K = 400 on, it runs on working sets of
  classes (see :func:`_solve_dual`): the optimum is sparse (22-140 of 1000 classes on the benchmark Gramians).
- The reference starts SLSQP from the anchor (``x_start = per_weight``) and also uses it as ``b``; we
  start from the uniform weights (an interior point), which only affects speed: the problem is convex.
- Degenerate Gramians (K = 1, zero, non-finite) give ``ones(K)`` and a ``DegenerateGramianWarning``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._cagrad_ipm import _EPS, cagrad_dual_ipm
from ._cagrad_working_set import cagrad_dual_working_set
from ._registry import finish, prepare, register_solver
from ._simplex import host_sync_allowed
from ._working_set import WORKING_SET_MIN_K

__all__ = ["cagrad", "cagrad_objective"]

# interior-point iterations: stopping at convergence (9-17 at tol = 1e-9 on the benchmark families, up to
# ~35 on near-degenerate inputs), and the fixed budget of the sync-free mode (1e-5 relative accuracy takes
# at most 18 on the benchmark families and 20 on harder ones; ~8,000 torch operations per call)
_MAX_ITER_EARLY_EXIT = 60
_MAX_ITER_SYNC_FREE = 24


def cagrad_objective(w: Tensor, gramian: Tensor, anchor: Tensor, c: float | Tensor) -> Tensor:
    """The dual objective ``w^T A b + c * sqrt(w^T A w + 1e-8)`` (for checks and tests)."""
    return w @ gramian @ anchor + c * torch.sqrt((w @ gramian @ w).clamp_min(0.0) + _EPS)


def _solve_dual(
    a: Tensor, anchor: Tensor, c: Tensor | float, max_iter: int, tol: float, early_exit: bool | None = None
) -> Tensor:
    """The dual weights ``w*`` (on the simplex) for a float64 PSD ``a``: at most ``max_iter`` interior-point
    iterations, stopped (where ``early_exit``, default on a CPU) once ``F(w) - F* <= tol * scale`` is
    certified (see :func:`~plot_hf.moo.solvers._cagrad_ipm.cagrad_dual_ipm`).

    Where host reads are allowed and ``K >= 400`` (one Cholesky factorisation per interior-point iteration
    costs ~7 ms at K = 1000 on a CPU core), the method runs on a working set of classes, grown by pricing
    the others with the restricted dual and certified on the whole problem
    (:func:`~plot_hf.moo.solvers._cagrad_working_set.cagrad_dual_working_set`); on the whole problem when
    that set would exceed half of the classes.
    """
    if a.shape[0] >= WORKING_SET_MIN_K and host_sync_allowed(a, early_exit):
        w = cagrad_dual_working_set(a, anchor, c, max_iter=max_iter, tol=tol)
        if w is not None:
            return w
    return cagrad_dual_ipm(a, anchor, c, max_iter=max_iter, tol=tol, early_exit=early_exit)


@register_solver("cagrad")
def cagrad(
    gramian: Tensor,
    *,
    losses: Tensor | None = None,
    anchor: Tensor | None = None,
    alpha: float = 0.5,
    rescale: int = 1,
    max_iter: int | None = None,
    tol: float = 1e-9,
    early_exit: bool | None = None,
) -> Tensor:
    """CAGrad coefficients ``lambda`` (K,) for the Gramian ``G G^T``; ``losses`` is accepted and unused.

    ``max_iter``: interior-point iterations (default 60 when the loop stops at convergence, which takes
    9-17 on typical and ill-conditioned Gramians alike; 24 as the fixed budget of the sync-free mode, about
    8,000 torch operations whatever K). ``tol``: relative accuracy of the certified objective gap
    (``F(w) - F* <= tol * max(|w^T A b| + c ||G^T w||, c sqrt(mean diag A))``). ``early_exit``: read values
    on the host (argument checks, degenerate-input warnings, stopping at convergence); default: on a CPU
    only, so that on an accelerator the solve is a fixed sequence of kernels with no host synchronisation.

    Example:
        >>> import torch
        >>> from plot_hf.moo.solvers import cagrad
        >>> cagrad(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
        tensor([1.2000, 1.2000])
    """
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"`alpha` must be a finite number >= 0, got {alpha!r}.")
    if rescale not in (0, 1, 2):
        raise ValueError(f"`rescale` must be one of (0, 1, 2), got {rescale!r}.")
    sync = host_sync_allowed(gramian, early_exit)
    max_iter = max_iter if max_iter is not None else (_MAX_ITER_EARLY_EXIT if sync else _MAX_ITER_SYNC_FREE)
    _check_accuracy(max_iter, tol)
    problem = prepare(gramian, anchor=anchor, losses=losses, check_values=sync)
    if problem.fallback is not None:
        return problem.fallback
    a, k = problem.gramian, gramian.shape[0]
    c = alpha * torch.sqrt(a.mean() + _EPS) + _EPS
    w = _solve_dual(a, problem.anchor, c, max_iter, tol, sync)
    gw_norm = torch.sqrt((w @ a @ w).clamp_min(0.0))
    scale = {0: 1.0, 1: 1.0 + alpha**2, 2: 1.0 + alpha}[rescale]
    return finish((1.0 + k * c / (gw_norm + _EPS) * w) / scale, gramian, problem.degenerate)


def _check_accuracy(max_iter: int | None, tol: float) -> None:
    if max_iter is not None and not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"`max_iter` must be an integer >= 1, got {max_iter!r}.")
    if not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"`tol` must be a number > 0, got {tol!r}.")
