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
gradient norm). It converges in 10-25 iterations whatever the conditioning, also when the hull nearly
contains the origin (``f* ~ 0``), where first-order methods need thousands.

Departures from the reference code. The PLOT reference calls ``MinNormSolver.find_min_norm_element``
(Frank-Wolfe with exact 2-D line searches, at most 250 iterations, on the CPU; its MGDA branch crashes in
the released code). Here: the interior-point method above, float64, on the Gramian's device, without host
reads on accelerators (a fixed number of iterations; converged iterations change nothing).
Degenerate Gramians give ``ones(K)`` (with a warning where values may be read on the host).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._cagrad import _check_accuracy
from ._registry import finish, prepare, register_solver
from ._simplex import host_sync_allowed

__all__ = ["mgda", "min_norm_weights"]

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


def min_norm_weights(
    a: Tensor, *, max_iter: int | None = None, tol: float = 1e-10, early_exit: bool | None = None
) -> Tensor:
    """The simplex weights ``w*`` of the min-norm point for a float64 PSD ``a`` (no argument checks).

    ``max_iter``: interior-point iterations (default 60 when the loop stops at convergence, 40 as the
    fixed budget of the sync-free mode); ``early_exit`` as in :func:`plot_hf.moo.solvers.cagrad`.
    """
    k, dtype, device = a.shape[0], a.dtype, a.device
    sync = host_sync_allowed(a, early_exit)
    max_iter = max_iter if max_iter is not None else (60 if sync else 40)
    scale = a.diagonal().mean().clamp_min(torch.finfo(dtype).tiny)
    q = (2.0 / scale) * a
    w = torch.full((k,), 1.0 / k, dtype=dtype, device=device)
    grad = q @ w
    y = grad.min() - 1.0  # dual feasible start: z = Q w - y 1 >= 1
    z = grad - y
    done = torch.zeros((), dtype=torch.bool, device=device)
    for _ in range(max_iter):
        qw = q @ w
        r_dual = qw - y - z
        r_primal = w.sum() - 1.0
        gap = w @ z
        done = done | (gap <= tol * (0.5 * (w @ qw)).abs() + 1e-15)
        if sync and bool(done):
            break
        mu = gap / k
        h = q.clone()
        h.diagonal().add_(z / w + _REGULARISATION)
        chol, info = torch.linalg.cholesky_ex(h)

        state = (chol, w, z, r_dual, r_primal)
        dw, dy, dz = _newton(state, -w * z)  # predictor (affine scaling)
        step = torch.minimum(_step_to_boundary(w, dw), _step_to_boundary(z, dz))
        sigma = ((((w + step * dw) @ (z + step * dz)) / k) / mu).clamp(0.0, 1.0) ** 3
        dw, dy, dz = _newton(state, sigma * mu - w * z - dw * dz)  # corrector
        step = _FRACTION_TO_BOUNDARY * torch.minimum(_step_to_boundary(w, dw), _step_to_boundary(z, dz))
        step = torch.where((info == 0) & torch.isfinite(step) & ~done, step, torch.zeros_like(step))
        w, y, z = w + step * dw, y + step * dy, z + step * dz
    w = w.clamp_min(0.0)
    return w / w.sum()


@register_solver("mgda")
def mgda(
    gramian: Tensor,
    *,
    losses: Tensor | None = None,
    anchor: Tensor | None = None,
    max_iter: int | None = None,
    tol: float = 1e-10,
    early_exit: bool | None = None,
) -> Tensor:
    """MGDA coefficients ``K * w*`` (K,); ``losses`` and ``anchor`` are accepted and unused.

    Example:
        >>> import torch
        >>> from plot_hf.moo.solvers import mgda
        >>> mgda(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        tensor([0.4000, 1.6000])
    """
    _check_accuracy(max_iter, tol)
    sync = host_sync_allowed(gramian, early_exit)
    problem = prepare(gramian, anchor=anchor, losses=losses, check_values=sync)
    if problem.fallback is not None:
        return problem.fallback
    w = min_norm_weights(problem.gramian, max_iter=max_iter, tol=tol, early_exit=sync)
    return finish(gramian.shape[0] * w, gramian, problem.degenerate)
