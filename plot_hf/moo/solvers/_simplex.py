"""Shared numerics on the probability simplex: Euclidean projection and an accelerated projected-gradient
solver (FISTA with backtracking and adaptive restart) with a certified stopping rule.

Everything is vectorised torch on the caller's device; no NumPy or SciPy. The iteration never reads a
tensor value on the host: backtracking tries a ladder of step sizes at once and picks the first that passes
with tensor operations, and convergence freezes the state instead of branching. On a CPU the loop still
stops as soon as it has converged (reading a flag is free there); on an accelerator it runs its fixed
budget of iterations with no host synchronisation (see :func:`host_sync_allowed`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ValueGrad", "host_sync_allowed", "largest_eigenvalue", "minimize_on_simplex", "project_simplex"]

# value_grad(X, X @ A) -> (f, grad f, magnitude) for a batch of points X (rows): "magnitude" is a
# non-negative size of the terms of f at each point, used to make the stopping tolerance relative.
ValueGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]

_LADDER = 6  # step sizes tried at once per iteration: 1 / (L * 2^j), j = -1 .. 4


def host_sync_allowed(tensor: Tensor, early_exit: bool | None = None) -> bool:
    """Whether a solver may read values on the host: ``early_exit`` if given, else only for CPU tensors.

    On a CPU a host read costs nothing; on an accelerator it stalls the queue of kernels, so the solvers run
    a fixed budget of iterations there and report degenerate input through their output instead.
    """
    return tensor.device.type == "cpu" if early_exit is None else bool(early_exit)


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` (shape ``(..., K)``) onto ``{x >= 0, sum x = 1}``.

    Sort-based algorithm of Held, Wolfe & Crowder (1974), see Duchi et al. (ICML 2008), O(K log K).
    """
    k = v.shape[-1]
    u = torch.sort(v, dim=-1, descending=True).values
    css = u.cumsum(dim=-1) - 1.0
    idx = torch.arange(1, k + 1, dtype=v.dtype, device=v.device)
    rho = (u - css / idx > 0).sum(dim=-1, keepdim=True).clamp_min(1)  # >= 1: the first entry qualifies
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
    lipschitz: Tensor | float,
    max_iter: int,
    tol: float,
    floor: Tensor | float = 0.0,
    early_exit: bool | None = None,
    return_gap: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Minimise a smooth convex ``f(x)`` that depends on ``x`` through ``x`` and ``A x`` over the simplex.

    FISTA (Beck & Teboulle 2009) with gradient-based adaptive restart (O'Donoghue & Candes 2015). Each
    iteration tries the steps ``1 / (L 2^j)``, ``j = -1..4``, from the extrapolated point ``y`` at once and
    keeps the longest that satisfies ``(g(x+) - g(y))^T d <= L_j / 2 ||d||^2`` (which implies the descent
    lemma ``f(x+) <= f(y) + g^T d + L_j / 2 ||d||^2`` for convex ``f`` and, unlike it, is free of
    cancellation near the optimum); its ``L_j`` becomes the next ``L`` (``L`` adapts in both directions). ``A y`` is obtained by
    linearity, so each iteration costs one ``K x K x 6`` matrix product. Converged when the Frank-Wolfe gap
    ``g^T x - min_k g_k`` (an upper bound on ``f(x) - f*`` for convex ``f``) is at most
    ``tol * max(|f(x)|, magnitude(x), floor)``; from then on the state is frozen. Returns the best iterate.
    ``early_exit``: stop the loop at convergence (a host read per iteration; default: on a CPU only).
    ``return_gap``: also return ``f(best) - max_i (f(x_i) - gap(x_i))``, an upper bound on ``f(best) - f*``
    (each ``f(x_i) - gap(x_i)`` is a lower bound on ``f*``).
    """
    dtype, device = a.dtype, a.device
    ladder = torch.tensor([2.0**j for j in range(-1, _LADDER - 1)], dtype=dtype, device=device)
    lip = torch.as_tensor(lipschitz, dtype=dtype, device=device).clamp_min(1e-300)
    floor = torch.as_tensor(floor, dtype=dtype, device=device)
    stop_early = host_sync_allowed(a, early_exit)

    x = project_simplex(x0)
    ax = a @ x
    _, g, _ = (t[0] for t in value_grad(x[None], ax[None]))
    y, ay, gy = x, ax, g
    t = torch.ones((), dtype=dtype, device=device)
    best_x, best_f = x, torch.full((), torch.inf, dtype=dtype, device=device)
    lower = torch.full((), -torch.inf, dtype=dtype, device=device)
    done = torch.zeros((), dtype=torch.bool, device=device)
    for _ in range(max_iter):
        lips = lip * ladder  # (J,)
        cand = project_simplex(y[None] - gy[None] / lips[:, None])  # (J, K)
        a_cand = cand @ a  # A symmetric: rows are A x_j
        f_c, g_c, mag_c = value_grad(cand, a_cand)
        d = cand - y[None]
        # Sufficient decrease without cancellation: for convex f, f(y+d) - f(y) - g(y)^T d
        # <= (g(y+d) - g(y))^T d, so (g(y+d) - g(y))^T d <= L/2 ||d||^2 implies the descent lemma.
        curvature = ((g_c - gy[None]) * d).sum(dim=1)
        passed = (curvature <= 0.5 * lips * (d * d).sum(dim=1)) | (d.abs().amax(dim=1) == 0)
        passed[-1] = True  # the shortest step: accepted if nothing else passes
        j = torch.argmax(passed.to(torch.int8)).reshape(1)  # the first (longest step) that passes
        # index_select, not cand[j]: indexing with a 0-d tensor would read it on the host
        x_new, ax_new, g_new = (t.index_select(0, j)[0] for t in (cand, a_cand, g_c))
        f_new, mag, lip_new = (t.index_select(0, j)[0] for t in (f_c, mag_c, lips))
        gap = g_new @ x_new - g_new.min()

        improved = (f_new < best_f) & ~done
        best_x = torch.where(improved, x_new, best_x)
        best_f = torch.where(improved, f_new, best_f)
        lower = torch.where(done, lower, torch.maximum(lower, f_new - gap))
        done = done | ~torch.isfinite(f_new) | (gap <= tol * torch.maximum(f_new.abs(), torch.maximum(mag, floor)))
        if stop_early and bool(done):
            break
        restart = (y - x_new) @ (x_new - x) > 0  # momentum points uphill
        t = torch.where(restart, torch.ones_like(t), t)
        t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_new
        y_next, ay_next = x_new + beta * (x_new - x), ax_new + beta * (ax_new - ax)
        gy_next = value_grad(y_next[None], ay_next[None])[1][0]
        keep = done  # frozen once converged: the remaining iterations change nothing
        y, ay = torch.where(keep, y, y_next), torch.where(keep, ay, ay_next)
        gy = torch.where(keep, gy, gy_next)
        x, ax = torch.where(keep, x, x_new), torch.where(keep, ax, ax_new)
        t = torch.where(keep, t, t_new)
        lip = torch.where(keep, lip, lip_new)
    return (best_x, best_f - lower) if return_gap else best_x
