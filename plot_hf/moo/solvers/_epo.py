"""EPO, Exact Pareto Optimal search (Mahapatra & Rajan, "Multi-Task Learning with User Preferences:
Gradient Descent with Controlled Ascent in Pareto Optimization", ICML 2020, Sec. 4, eqs. 12-15).

Problem. Inputs: ``C = G G^T`` (the Gramian), the K class losses ``l > 0`` and a preference ``r`` (the
anchor; uniform by default). With ``rl = r * l``, ``l_hat = rl / sum(rl)``, the non-uniformity
``mu(rl) = sum_k l_hat_k log(K l_hat_k)`` (a KL divergence to uniform) and ``a = r * (log(K l_hat) - mu)``
(so that ``d mu / d l`` is proportional to ``a``), EPO picks ``alpha`` on the simplex by a linear program:

- balance mode (``mu(rl) > eps``): maximise ``alpha^T C a`` (the first-order decrease of ``mu`` along
  ``-G^T alpha``) subject to ``(C alpha)_j >= (C a)_j`` for ``j`` with ``(C a)_j <= 0``, and
  ``(C alpha)_j >= 0`` for ``j`` in ``J* = argmax rl`` (the worst relative loss must not increase);
  when no ``(C a)_j`` is positive, ``C alpha >= 0`` for all j;
- descent mode (``mu(rl) <= eps``): maximise ``1^T C alpha`` (total first-order decrease) subject to
  ``C alpha >= 0`` (no loss increases) and ``alpha^T C a >= min(max_j (C a)_j, 0)`` (the "restricted"
  LP; ``relax=True`` drops that row).

The coefficients are ``lambda = K * alpha`` (``ones(K)`` is the plain sum of the class gradients).

Departures from the reference code (``dbmptr/EPOSearch`` and its copy in ``zzpustc/PLOT``, never called
there). The LPs are solved by a dense two-phase simplex method in torch (float64, on the Gramian's device)
instead of cvxpy + GLPK on the CPU. ``l_hat`` is clamped away from 0 before the logarithm (the reference
gives ``-inf``). An infeasible LP (the reference returns ``None`` and crashes) falls back to the next mode:
balance -> restricted descent -> relaxed descent (always feasible: the MGDA weights satisfy it) -> the MGDA
weights themselves. Degenerate Gramians give ``ones(K)`` with a warning.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._registry import finish, prepare, register_solver

__all__ = ["epo", "epo_lp", "solve_simplex_lp"]

_TOL = 1e-10


def _pivot(tab: Tensor, row: int, col: int) -> None:
    tab[row] /= tab[row, col].clone()
    factor = tab[:, col].clone()
    factor[row] = 0.0
    tab -= factor[:, None] * tab[row][None, :]


def _run_simplex(tab: Tensor, basis: list[int], n_cols: int, max_pivots: int) -> bool:
    """Minimise the objective in the last row of ``tab`` over columns ``< n_cols``; False on failure."""
    degenerate = 0
    for _ in range(max_pivots):
        reduced = tab[-1, :n_cols]
        if degenerate > 50:  # Bland's rule: first improving column, guaranteed to terminate
            candidates = torch.nonzero(reduced < -_TOL)
            if candidates.numel() == 0:
                return True
            col = int(candidates[0, 0])
        else:  # Dantzig's rule: most negative reduced cost
            col = int(torch.argmin(reduced))
            if float(reduced[col]) >= -_TOL:
                return True
        column = tab[:-1, col]
        ratios = torch.where(column > _TOL, tab[:-1, -1] / column, torch.full_like(column, math.inf))
        best = ratios.min()
        if not bool(torch.isfinite(best)):
            return False  # unbounded (cannot happen on the simplex unless numerically broken)
        ties = torch.nonzero(ratios <= best + _TOL * (1.0 + best.abs())).flatten().tolist()
        row = min(ties, key=lambda i: basis[i])
        degenerate = degenerate + 1 if float(best) <= _TOL else 0
        _pivot(tab, row, col)
        basis[row] = col
    return False


def solve_simplex_lp(
    cost: Tensor, m_ge: Tensor, h: Tensor, *, max_pivots: int | None = None
) -> Tensor | None:
    """``argmax cost^T x`` over ``{x >= 0, sum x = 1, m_ge x >= h}`` (two-phase tableau simplex method).

    Returns ``None`` if the LP is infeasible (or the method fails). Entries below 1e-11 of the largest are
    treated as 0 (rounding noise, e.g. ``C a`` at a uniform point); rows are scaled to unit max-norm.
    """
    n, m = cost.numel(), m_ge.shape[0]
    if m:  # entries below 1e-11 of the largest are rounding noise: zero them; then rows to unit max-norm
        noise = 1e-11 * float(torch.maximum(m_ge.abs().max(), h.abs().max()))
        m_ge = torch.where(m_ge.abs() > noise, m_ge, torch.zeros_like(m_ge))
        h = torch.where(h.abs() > noise, h, torch.zeros_like(h))
        scale = torch.maximum(m_ge.abs().amax(dim=1), h.abs()).clamp_min(noise + 1e-300)
        mat, rhs = m_ge / scale[:, None], h / scale
    else:
        mat, rhs = m_ge, h
    art_rows = [i for i in range(m) if float(rhs[i]) > 0] + [m]  # the sum row always needs one
    n_art = len(art_rows)
    width = n + m + n_art
    tab = torch.zeros(m + 2, width + 1, dtype=cost.dtype, device=cost.device)
    sign = torch.where(rhs > 0, 1.0, -1.0).to(cost.dtype)
    tab[:m, :n] = sign[:, None] * mat  # sign * (M x - s) = sign * h >= 0
    tab[:m, n : n + m] = -torch.diag(sign)
    tab[:m, -1] = sign * rhs
    tab[m, :n] = 1.0
    tab[m, -1] = 1.0
    basis = [n + i for i in range(m)] + [0]
    for j, i in enumerate(art_rows):
        tab[i, n + m + j] = 1.0
        basis[i] = n + m + j
    tab[-1] = -tab[art_rows].sum(dim=0)  # phase 1: minimise the sum of the artificials
    tab[-1, n + m : width] = 0.0
    pivots = max_pivots or 4 * (n + m + 2)  # a simplex run needs ~2-3 (n + m) pivots; beyond: fall back
    if not _run_simplex(tab, basis, width, pivots) or float(-tab[-1, -1]) > 1e-9:
        return None
    keep = []
    for i in range(m + 1):
        if basis[i] >= n + m:  # drive a zero-level artificial out of the basis, or drop a redundant row
            nonzero = torch.nonzero(tab[i, : n + m].abs() > 1e-9).flatten()
            if nonzero.numel() == 0:
                continue
            _pivot(tab, i, int(nonzero[0]))
            basis[i] = int(nonzero[0])
        keep.append(i)
    tab = torch.cat([tab[keep][:, : n + m], tab[keep][:, -1:]], dim=1)
    basis = [basis[i] for i in keep]
    costs = torch.zeros(n + m, dtype=cost.dtype, device=cost.device)
    costs[:n] = -cost / cost.abs().max().clamp_min(1e-300)  # phase 2: minimise -cost
    objective = torch.cat([costs, costs.new_zeros(1)]) - costs[basis] @ tab
    tab = torch.cat([tab, objective[None]], dim=0)
    if not _run_simplex(tab, basis, n + m, pivots):
        return None
    x = torch.zeros(n + m, dtype=cost.dtype, device=cost.device)
    x[basis] = tab[:-1, -1]
    x = x[:n].clamp_min(0.0)
    return x / x.sum()


def _adjustments(losses: Tensor, pref: Tensor) -> tuple[Tensor, float, Tensor]:
    k = losses.numel()
    rl = pref * losses
    l_hat = (rl / rl.sum()).clamp_min(torch.finfo(rl.dtype).tiny)
    mu = float((l_hat * torch.log(l_hat * k)).sum())
    return rl, mu, pref * (torch.log(l_hat * k) - mu)


def epo_lp(c: Tensor, losses: Tensor, pref: Tensor, *, eps: float = 1e-4, relax: bool = False):
    """The EPO LP solution ``(alpha, mode)`` with mode in {"balance", "descent", "relaxed", "mgda"}."""
    rl, mu, adj = _adjustments(losses, pref)
    ca = c @ adj
    if mu > eps:
        positive = ca > 0
        if bool(positive.any()):
            worst = rl >= rl.max()
            rows = ~positive | worst
            h = torch.where(worst, torch.zeros_like(ca), ca)[rows]
            alpha = solve_simplex_lp(ca, c[rows], h)
        else:
            alpha = solve_simplex_lp(ca, c, torch.zeros_like(ca))
        if alpha is not None:
            return alpha, "balance"
    total = c.sum(dim=0)
    if not relax:
        bound = torch.clamp(ca.max(), max=0.0).reshape(1)
        alpha = solve_simplex_lp(total, torch.cat([ca[None], c]), torch.cat([bound, torch.zeros_like(ca)]))
        if alpha is not None:
            return alpha, "descent"
    alpha = solve_simplex_lp(total, c, torch.zeros_like(ca))
    if alpha is not None:
        return alpha, "relaxed"
    from ._mgda import min_norm_weights

    return min_norm_weights(c), "mgda"


@register_solver("epo")
def epo(
    gramian: Tensor,
    *,
    losses: Tensor | None = None,
    anchor: Tensor | None = None,
    eps: float = 1e-4,
    relax: bool = False,
) -> Tensor:
    """EPO coefficients ``K * alpha`` (K,); needs the K class ``losses``; ``anchor`` is the preference r.

    Example:
        >>> import torch
        >>> from plot_hf.moo.solvers import epo
        >>> epo(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), losses=torch.tensor([2.0, 1.0]))
        tensor([2., 0.])
    """
    if not (isinstance(eps, int | float) and eps >= 0):
        raise ValueError(f"`eps` must be a number >= 0, got {eps!r}.")
    problem = prepare(gramian, anchor=anchor, losses=losses, needs_losses=True)
    if problem.fallback is not None:
        return problem.fallback
    alpha, _ = epo_lp(problem.gramian, problem.losses, problem.anchor, eps=eps, relax=relax)
    return finish(gramian.shape[0] * alpha, gramian)
