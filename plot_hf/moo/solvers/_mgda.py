"""MGDA, the min-norm point of the convex hull of the per-class gradients (Sener & Koltun, "Multi-Task
Learning as Multi-Objective Optimization", NeurIPS 2018, eq. 3; Desideri 2012).

Problem. With ``A = G G^T`` the K x K Gramian::

    w* = argmin_{w in simplex}  w^T A w        (= ||G^T w||^2)

and the coefficients are ``lambda = K * w*`` (scale convention: ``ones(K)`` is the plain sum of the K class
gradients, whose simplex weights are ``1/K``). ``d = G^T w*`` is a common descent direction: ``g_k^T d >=
||d||^2`` for every class k (the KKT conditions), or ``d = 0`` at a Pareto-stationary point.

Method. A primal-dual interior-point method (Mehrotra's predictor-corrector) on the KKT system of this
quadratic program: with ``Q = 2 A / mean(diag A)``, multipliers ``y`` (for ``1^T w = 1``) and ``z >= 0``
(for ``w >= 0``)::

    Q w - y 1 - z = 0,    1^T w = 1,    w_i z_i = sigma mu,    mu = w^T z / K.

Each iteration factors ``H = Q + diag(z / w)`` once (Cholesky) and solves it for the predictor and the
corrector; the equality row is eliminated through ``1^T H^{-1} 1``. The duality gap ``w^T z`` bounds
``f(w) - f*`` (the iterates stay primal and dual feasible from the start chosen here), and the method stops
when it is at most ``tol * f(w) + 1e-15`` (relative, with an absolute floor in units of the mean squared
gradient norm). Its number of iterations does not grow with the conditioning of ``A``, also when the hull
nearly contains the origin (``f* ~ 0``), where the rate of first-order methods (Frank-Wolfe, projected
gradient) degrades with it.

Departures from the reference code. The PLOT reference calls ``MinNormSolver.find_min_norm_element``
(Frank-Wolfe with exact 2-D line searches, at most 250 iterations, on the CPU; its MGDA branch crashes in
the released code). Here: the interior-point method above, float64 on the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import Solver, register_solver
from ._checks import check_number

__all__ = ["MGDA", "min_norm_weights"]

_REGULARISATION = 1e-11  # added to the diagonal of H (units of the mean squared gradient norm): A may be singular
_FRACTION_TO_BOUNDARY = 0.99


def _step_to_boundary(x: Tensor, dx: Tensor) -> Tensor:
    """The largest ``t <= 1`` with ``x + t dx >= 0`` (for ``x > 0``)."""
    ratio = torch.where(dx < 0, x / (-dx).clamp_min(torch.finfo(x.dtype).tiny), torch.full_like(x, torch.inf))
    return ratio.amin().clamp(max=1.0)


def _newton(state: tuple[Tensor, ...], r_comp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Solve ``Q dw - dy 1 - dz = -r_dual, 1^T dw = -r_primal, Z dw + W dz = r_comp`` given the Cholesky
    factor of ``H = Q + Z / W``: ``dw = H^{-1} (r_comp / w - r_dual + dy 1)`` with ``dy`` from the sum row."""
    chol, w, z, r_dual, r_primal = state
    rhs = torch.stack([r_comp / w - r_dual, torch.ones_like(w)], dim=1)
    sol = torch.linalg.solve_triangular(chol.mT, torch.linalg.solve_triangular(chol, rhs, upper=False), upper=True)
    u, v = sol[:, 0], sol[:, 1]
    dy = (-r_primal - u.sum()) / v.sum()
    dw = u + dy * v
    return dw, dy, (r_comp - z * dw) / w


def min_norm_weights(a: Tensor, *, max_iter: int = 60, tol: float = 1e-10) -> Tensor:
    """The simplex weights ``w*`` of the min-norm point for a float64 PSD ``a`` (no argument checks):
    at most ``max_iter`` interior-point iterations, stopped once ``w^T z <= tol * f(w) + 1e-15``."""
    k, dtype = a.shape[0], a.dtype
    scale = a.diagonal().mean().clamp_min(torch.finfo(dtype).tiny)
    q = (2.0 / scale) * a
    w = torch.full((k,), 1.0 / k, dtype=dtype)
    grad = q @ w
    y = grad.min() - 1.0  # dual feasible start: z = Q w - y 1 >= 1
    z = grad - y
    for _ in range(max_iter):
        qw = q @ w
        r_dual = qw - y - z
        r_primal = w.sum() - 1.0
        gap = w @ z
        if float(gap) <= tol * abs(0.5 * float(w @ qw)) + 1e-15:
            break
        mu = gap / k
        h = q.clone()
        h.diagonal().add_(z / w + _REGULARISATION)
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:
            break
        state = (chol, w, z, r_dual, r_primal)
        dw, dy, dz = _newton(state, -w * z)  # predictor (affine scaling)
        step = torch.minimum(_step_to_boundary(w, dw), _step_to_boundary(z, dz))
        sigma = ((((w + step * dw) @ (z + step * dz)) / k) / mu).clamp(0.0, 1.0) ** 3
        dw, dy, dz = _newton(state, sigma * mu - w * z - dw * dz)  # corrector
        step = _FRACTION_TO_BOUNDARY * torch.minimum(_step_to_boundary(w, dw), _step_to_boundary(z, dz))
        if not math.isfinite(float(step)):
            break
        w, y, z = w + step * dw, y + step * dy, z + step * dz
    w = w.clamp_min(0.0)
    return w / w.sum()


@register_solver("mgda")
class MGDA(Solver):
    """MGDA's coefficients ``K * w*`` (see the module); reads neither the anchor nor the losses.

    Args:
        tol: relative accuracy of the duality gap (> 0).
        max_iter: interior-point iterations at most (>= 1; the count needed does not grow with the
            conditioning of the Gramian).

    Example:
        >>> import torch
        >>> from plot_hf.moo.solvers import MGDA
        >>> MGDA()(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        SolverResult(coefficients=tensor([0.4000, 1.6000]), degenerate=False)
    """

    def __init__(self, tol: float = 1e-10, max_iter: int = 60):
        self.tol = check_number("tol", tol, minimum=0.0, strict=True)
        self.max_iter = check_number("max_iter", max_iter, minimum=1, integer=True)

    def weights(self, gramian: Tensor, anchor: Tensor, losses: Tensor | None) -> Tensor:
        return gramian.shape[0] * min_norm_weights(gramian, max_iter=self.max_iter, tol=self.tol)
