"""MGDA, the min-norm point of the convex hull of the per-class gradients (Sener & Koltun, "Multi-Task
Learning as Multi-Objective Optimization", NeurIPS 2018, eq. 3; Desideri 2012).

Problem. With ``A = G G^T`` the K x K Gramian::

    w* = argmin_{w in simplex}  w^T A w        (= ||G^T w||^2)

and the coefficients are ``lambda = K * w*`` (scale convention: ``ones(K)`` is the plain sum of the K class
gradients, whose simplex weights are ``1/K``). ``d = G^T w*`` is a common descent direction: ``g_k^T d >=
||d||^2`` for every class k (the KKT conditions), or ``d = 0`` at a Pareto-stationary point.

Departures from the reference code. The PLOT reference calls ``MinNormSolver.find_min_norm_element``
(Frank-Wolfe with exact 2-D line searches, at most 250 iterations, on the CPU; its MGDA branch crashes in
the released code). Here: FISTA on the simplex (float64, on the Gramian's device) stopped by a certified
Frank-Wolfe gap, then an exact polish: the KKT system restricted to the identified support is solved and
kept if it is feasible and better. Degenerate Gramians give ``ones(K)`` with a warning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._cagrad import _check_accuracy
from ._registry import finish, prepare, register_solver
from ._simplex import largest_eigenvalue, minimize_on_simplex

__all__ = ["mgda", "min_norm_weights"]


def _polish(a: Tensor, w: Tensor) -> Tensor:
    """Solve ``A_SS w_S = nu 1, 1^T w_S = 1`` on the support S of ``w``; keep it if feasible and better."""
    support = w > 1e-9 * w.max()
    s = int(support.sum())
    kkt = torch.zeros(s + 1, s + 1, dtype=a.dtype, device=a.device)
    kkt[:s, :s] = a[support][:, support]
    kkt[:s, s] = -1.0
    kkt[s, :s] = 1.0
    rhs = torch.zeros(s + 1, dtype=a.dtype, device=a.device)
    rhs[s] = 1.0
    sol = torch.linalg.lstsq(kkt, rhs.unsqueeze(1), driver="gelsd" if a.device.type == "cpu" else None)
    candidate = torch.zeros_like(w)
    candidate[support] = sol.solution[:s, 0]
    feasible = bool(torch.isfinite(candidate).all()) and bool((candidate >= 0).all())
    feasible = feasible and abs(float(candidate.sum()) - 1.0) < 1e-9
    if feasible and float(candidate @ a @ candidate) <= float(w @ a @ w):
        return candidate
    return w


def min_norm_weights(a: Tensor, *, max_iter: int = 5000, tol: float = 1e-10) -> Tensor:
    """The simplex weights ``w*`` of the min-norm point for a float64 PSD ``a`` (no checks)."""

    def value_grad(x: Tensor, ax: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = x @ ax
        return f, 2.0 * ax, f

    k = a.shape[0]
    x0 = torch.full((k,), 1.0 / k, dtype=a.dtype, device=a.device)
    floor = float(a.diagonal().mean())
    lip = 2.0 * float(largest_eigenvalue(a))
    w = minimize_on_simplex(a, value_grad, x0, lipschitz=lip, max_iter=max_iter, tol=tol, floor=floor)
    return _polish(a, w)


@register_solver("mgda")
def mgda(
    gramian: Tensor,
    *,
    losses: Tensor | None = None,
    anchor: Tensor | None = None,
    max_iter: int = 5000,
    tol: float = 1e-10,
) -> Tensor:
    """MGDA coefficients ``K * w*`` (K,); ``losses`` and ``anchor`` are accepted and unused.

    Example:
        >>> import torch
        >>> from plot_hf.moo.solvers import mgda
        >>> mgda(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        tensor([0.4000, 1.6000])
    """
    _check_accuracy(max_iter, tol)
    problem = prepare(gramian, anchor=anchor, losses=losses)
    if problem.fallback is not None:
        return problem.fallback
    w = min_norm_weights(problem.gramian, max_iter=max_iter, tol=tol)
    return finish(gramian.shape[0] * w, gramian)
