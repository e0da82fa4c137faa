"""Shared numerics on the probability simplex: Euclidean projection and an accelerated projected-gradient
solver (FISTA with backtracking and adaptive restart) with a certified stopping rule.

Everything is vectorised torch on the caller's device; no NumPy or SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ValueGrad", "largest_eigenvalue", "minimize_on_simplex", "project_simplex"]

# value_grad(x, A @ x) -> (f(x), grad f(x), magnitude): "magnitude" is a non-negative size of the terms of f
# at x, used to make the stopping tolerance relative.
ValueGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` (shape ``(..., K)``) onto ``{x >= 0, sum x = 1}``.

    Sort-based algorithm of Held, Wolfe & Crowder (1974), see Duchi et al. (ICML 2008), O(K log K).
    """
    k = v.shape[-1]
    u = torch.sort(v, dim=-1, descending=True).values
    css = u.cumsum(dim=-1) - 1.0
    idx = torch.arange(1, k + 1, dtype=v.dtype, device=v.device)
    rho = (u - css / idx > 0).sum(dim=-1, keepdim=True)  # >= 1: the first entry always qualifies
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0.0)


def largest_eigenvalue(a: Tensor, iters: int = 12) -> Tensor:
    """An estimate (from below, typically within a few percent) of the largest eigenvalue of a PSD ``a``."""
    x = a.diagonal().clone() + a.abs().sum(dim=0) / a.shape[0]
    for _ in range(iters):
        x = a @ x
        x = x / x.norm().clamp_min(torch.finfo(a.dtype).tiny)
    return (x @ (a @ x)).clamp_min(a.diagonal().max())


def minimize_on_simplex(
    a: Tensor,
    value_grad: ValueGrad,
    x0: Tensor,
    *,
    lipschitz: float,
    max_iter: int,
    tol: float,
    floor: float = 0.0,
) -> Tensor:
    """Minimise a smooth convex ``f(x)`` that depends on ``x`` through ``x`` and ``A x`` over the simplex.

    FISTA (Beck & Teboulle 2009) with backtracking on the Lipschitz constant (starting from ``lipschitz``,
    halved growth-free decrease after successful steps) and gradient-based adaptive restart (O'Donoghue &
    Candes 2015). ``A y`` at the extrapolated point is obtained by linearity, so each iteration costs one
    matrix-vector product. Stops when the Frank-Wolfe gap ``g^T x - min_k g_k`` (an upper bound on
    ``f(x) - f*`` for convex ``f``) is at most ``tol * max(|f(x)|, magnitude(x), floor)``. Returns the best iterate.
    """
    x = project_simplex(x0)
    ax = a @ x
    f, g, _ = value_grad(x, ax)
    y, ay, fy, gy = x, ax, f, g
    t, lip = 1.0, max(float(lipschitz), 1e-300)
    best_x, best_f = x, math.inf
    for _ in range(max_iter):
        for _ in range(60):  # backtracking
            x_new = project_simplex(y - gy / lip)
            ax_new = a @ x_new
            f_new, g_new, mag = value_grad(x_new, ax_new)
            d = x_new - y
            bound = fy + gy @ d + 0.5 * lip * (d @ d)
            gap = g_new @ x_new - g_new.min()
            stats = torch.stack([f_new, bound, gap, mag, d.abs().max()]).tolist()
            f_val, bound_val, gap_val, mag_val, step = stats
            # rounding allowance: f is a sum of terms of size ~ max(mag, floor)
            if f_val <= bound_val + 1e-12 * max(abs(bound_val), mag_val, floor) or step == 0.0:
                break
            lip *= 2.0
        if f_val < best_f:
            best_x, best_f = x_new, f_val
        if not math.isfinite(f_val) or gap_val <= tol * max(abs(f_val), mag_val, floor):
            break
        if float((y - x_new) @ (x_new - x)) > 0:  # restart: momentum points uphill
            t = 1.0
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_new
        y = x_new + beta * (x_new - x)
        ay = ax_new + beta * (ax_new - ax)
        fy, gy, _ = value_grad(y, ay)
        x, ax, t = x_new, ax_new, t_new
        lip *= 0.9
    return best_x
