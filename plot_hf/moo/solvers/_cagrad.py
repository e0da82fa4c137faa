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
  absolute). Here: a primal-dual interior-point method on the second-order cone form of the dual
  (:mod:`plot_hf.moo.solvers._cagrad_ipm`), float64 on the host, stopped by a certified duality gap
  (relative ``tol``). Its iteration count does not depend on the conditioning of ``A``: per-class Gramians
  late in training (gradient norms over several decades) take as few iterations as well-conditioned ones.
- The reference starts SLSQP from the anchor (``x_start = per_weight``) and also uses it as ``b``; we
  start from the uniform weights (an interior point), which only affects speed: the problem is convex.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import Solver, register_solver
from ._cagrad_ipm import _EPS, cagrad_dual
from ._checks import check_number

__all__ = ["CAGrad", "cagrad_objective"]


def cagrad_objective(w: Tensor, gramian: Tensor, anchor: Tensor, c: float | Tensor) -> Tensor:
    """The dual objective ``w^T A b + c * sqrt(w^T A w + 1e-8)``."""
    return w @ gramian @ anchor + c * torch.sqrt((w @ gramian @ w).clamp_min(0.0) + _EPS)


@register_solver("cagrad")
class CAGrad(Solver):
    """CAGrad's coefficients (see the module); reads the anchor, not the losses.

    Args:
        alpha: the conflict-aversion radius, ``c = alpha * ||g0||`` (>= 0; 0 gives the plain ``ones(K)``).
        rescale: division of the direction: 0 none, 1 ``1 + alpha^2`` (reference), 2 ``1 + alpha``.
        tol: relative accuracy of the certified objective gap of the dual (> 0).
        max_iter: interior-point iterations at most (>= 1; the count needed does not grow with the
            conditioning of the Gramian).

    Example:
        >>> import torch
        >>> from plot_hf.moo.solvers import CAGrad
        >>> solver = CAGrad(alpha=0.5)
        >>> solver
        CAGrad(alpha=0.5, rescale=1, tol=1e-09, max_iter=60)
        >>> solver(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
        SolverResult(coefficients=tensor([1.2000, 1.2000]), degenerate=False)
    """

    config_keys = {"alpha": "cagrad_alpha", "rescale": "cagrad_rescale"}

    def __init__(self, alpha: float = 0.5, rescale: int = 1, tol: float = 1e-9, max_iter: int = 60):
        self.alpha = check_number("alpha", alpha, minimum=0.0)
        if rescale not in (0, 1, 2) or isinstance(rescale, bool):
            raise ValueError(f"`rescale` must be one of (0, 1, 2), got {rescale!r}.")
        self.rescale = rescale
        self.tol = check_number("tol", tol, minimum=0.0, strict=True)
        self.max_iter = check_number("max_iter", max_iter, minimum=1, integer=True)

    def weights(self, gramian: Tensor, anchor: Tensor, losses: Tensor | None) -> Tensor:
        k = gramian.shape[0]
        c = self.alpha * math.sqrt(max(float(gramian.mean()), 0.0) + _EPS) + _EPS
        w = cagrad_dual(gramian, anchor, c, max_iter=self.max_iter, tol=self.tol)
        gw_norm = math.sqrt(max(float(w @ gramian @ w), 0.0))
        scale = (1.0, 1.0 + self.alpha**2, 1.0 + self.alpha)[self.rescale]
        return (1.0 + k * c / (gw_norm + _EPS) * w) / scale
