"""A dense dual simplex method for the linear programs of EPO: ``argmax cost^T x`` over
``{x >= 0, sum x = 1, M x >= h}``, float64 on the host.

The vertex ``e_j*`` with ``j* = argmax cost`` is optimal without the rows ``M x >= h``, so the dual simplex
method starts there (no phase 1) and pivots on a compact ``(m + 2) x (K + 1)`` tableau with dual
steepest-edge pricing, Harris' ratio test and a fallback to Bland's rule; the basic weights are recomputed
from the tight rows at the end (see :func:`solve_simplex_lp`). Torch does the passes over the tableau, NumPy
views the pricing. A general-purpose LP solver (HiGHS through ``scipy.optimize.linprog``) reaches the same
optima on these LPs but is much slower on them (each call pays a presolve and a cold start, where this
method needs a few pivots from ``e_j*``): ``benchmarks/solver_table.py --epo-highs`` compares the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["solve_simplex_lp"]

_FEASIBILITY = 1e-11  # a basic variable below -this (scaled units) violates its bound
_CERTIFICATE = 1e-9  # a violation at least this large with no pivot candidate proves infeasibility
_PIVOT = 1e-9  # smallest |entry| accepted as a pivot element
_DUAL = 1e-12  # Harris tolerance on the reduced costs (the cost is scaled to unit max-norm)
_ACCEPT = 1e-8  # largest constraint violation (scaled units) of an accepted solution
_DEGENERATE_RUN = 50  # consecutive dual-degenerate pivots before switching to Bland's rule
_MAX_REFRESHES = 2  # tableau rebuilds (after an unconfirmed infeasibility) before giving up


def _dual_simplex(
    tab: Tensor,
    rows: list[int],
    cols: list[int],
    max_pivots: int,
    certify: Callable[[int, bool], bool | None],
) -> bool | None:
    """Dual simplex method on the compact (Tucker) tableau ``tab``, in place.

    ``tab`` is ``(m + 2) x (n + 1)``: rows ``i <= m`` hold the dictionary ``x_B[i] = beta_i - sum_j T_ij
    x_N[j]`` of the basic variable ``rows[i]`` (``T`` in the first n columns, ``beta`` in the last), row
    ``m + 1`` holds ``z = z_0 - sum_j d_j x_N[j]`` (``d`` first, ``z_0`` last) for the maximised objective
    ``z``; column j is the nonbasic variable ``cols[j]``. The start must be dual feasible (``d >= 0``).

    Each pivot picks the leaving row (:func:`_leaving_row`) and the entering column (:func:`_entering_column`),
    then exchanges ``rows[r]`` and ``cols[q]`` (:func:`_pivot`). After ``_DEGENERATE_RUN`` consecutive pivots
    with ``d_q = 0`` both choices follow Bland's rule (smallest variable index), which cannot cycle.

    A row with ``beta_r < -_CERTIFICATE`` and no entry ``T_rj < -_PIVOT`` says ``x_B[r] <= beta_r < 0``
    for all ``x_N >= 0``: the LP is infeasible if ``certify(r, rebuild)`` confirms it from the original data
    (True); if not (rounding error accumulated in ``tab``), it returns False after rebuilding ``tab`` in
    place, and the pivots go on (``_MAX_REFRESHES`` times at most), or None if it cannot rebuild it. Rows
    with a smaller violation and no candidate are left alone.

    Returns True at an optimum (``beta >= -_FEASIBILITY``, ``d >= 0``), False if the LP is infeasible,
    None if the pivot cap is reached (or the rebuilds do not help).
    """
    m1, n = tab.shape[0] - 1, tab.shape[1] - 1  # m1 = m + 1 basic rows
    body = tab[:m1, :n]
    view = tab.numpy()  # the pricing and the ratio test read NumPy views: no torch dispatch per small step
    beta, cost = view[:m1, n], view[m1, :n]
    noise: list[int] = []  # rows whose violation is below the certificate level and cannot be pivoted on
    degenerate = refreshes = 0
    for pivots in range(max_pivots + 1):
        bland = degenerate > _DEGENERATE_RUN
        r = _leaving_row(body, beta, noise, rows, bland)
        if r is None:
            return True
        if pivots == max_pivots:
            return None
        q = _entering_column(view[r, :n], cost, cols, len(rows), bland)
        if q is None:  # no entering candidate: infeasible, unless rounding error
            if beta[r] >= -_CERTIFICATE:
                noise.append(r)
            elif refreshes == _MAX_REFRESHES:
                return False if certify(r, False) else None
            else:
                verdict = certify(r, True)
                if verdict is not False:
                    return None if verdict is None else False
                refreshes += 1  # ``tab`` holds the tableau rebuilt from the original data: resume from there
                noise.clear()
                degenerate = 0
            continue
        degenerate = degenerate + 1 if float(view[m1, q]) <= _DUAL else 0
        _pivot(tab, r, q, float(view[r, q]))
        np.clip(cost, 0.0, None, out=cost)  # Harris' slack may leave d_j in [-_DUAL, 0): keep d >= 0
        noise.clear()
        rows[r], cols[q] = cols[q], rows[r]
    return None


def _leaving_row(body: Tensor, beta: np.ndarray, noise: list[int], rows: list[int], bland: bool) -> int | None:
    """The leaving row by dual steepest edge, ``argmax beta_r^2 / w_r`` over ``beta_r < -_FEASIBILITY`` (rows in
    ``noise`` excluded), with ``w_i = 1 + ||T_i||^2`` (the squared norm of the row of ``x_B[i]`` in the full
    tableau; recomputed each pivot, one pass like the update itself: the update formula ``w_i - 2 f_i T_i.T_r
    + f_i^2 w_r`` costs as much and loses all accuracy within tens of pivots); by Bland's rule (smallest
    variable index) if ``bland``. ``body`` is ``T`` and ``beta`` a NumPy view of the last column. None if no
    row is violated (an optimum)."""
    violated = beta < -_FEASIBILITY
    violated[noise] = False
    if bland:
        r = int(np.argmin(np.where(violated, rows, len(rows) + body.shape[1])))
    else:
        weights = torch.linalg.vector_norm(body, dim=1).square_().add_(1.0).numpy()
        r = int(np.argmax(np.where(violated, beta * beta / weights, -1.0)))
    return r if violated[r] else None


def _entering_column(
    row: np.ndarray, cost: np.ndarray, cols: list[int], num_rows: int, bland: bool
) -> int | None:
    """The entering column for the leaving row ``T_r`` (``row``) by Harris' two-pass ratio test: ``min d_j /
    -T_rj`` over ``T_rj < -_PIVOT``, with slack ``_DUAL``, then among the near-minimal ratios the largest
    ``|T_rj|`` (by Bland's rule, the smallest variable index, if ``bland``). None if no entry qualifies."""
    step = -row  # -T_rj: x_B[r] grows by step_j per unit of x_N[j]
    candidate = step > _PIVOT
    bound = np.min((cost[candidate] + _DUAL) / step[candidate], initial=math.inf)
    if not math.isfinite(bound):
        return None
    near = candidate & (cost <= bound * step)
    if bland:
        return int(np.argmin(np.where(near, cols, num_rows + len(cost))))
    return int(np.argmax(np.where(near, step, 0.0)))


def _pivot(tab: Tensor, r: int, q: int, pivot: float) -> None:
    """Exchange basic row r and nonbasic column q in place: with ``p = T_rq`` (``pivot``) and ``f_i = T_iq / p``,
    ``T_r <- T_r / p``, ``T_i <- T_i - f_i T_r`` (one rank-1 update of the whole tableau, ``beta``, ``d`` and
    ``z_0`` included) and column q becomes ``(-f_i, 1 / p)``."""
    column = tab[:, q].clone()
    new_row = tab[r] / pivot
    column[r] = 0.0
    tab.addr_(column, new_row, alpha=-1.0)  # the one pass over the tableau (with the norms of the pricing)
    tab[r] = new_row
    column.div_(-pivot)[r] = 1.0 / pivot
    tab[:, q] = column


def solve_simplex_lp(
    cost: Tensor, m_ge: Tensor, h: Tensor, *, max_pivots: int | None = None
) -> Tensor | None:
    """``argmax cost^T x`` over ``{x >= 0, sum x = 1, m_ge x >= h}`` by the dual simplex method.

    Returns an optimal vertex, or ``None`` if the LP is infeasible (or the method fails: more than
    ``max_pivots``, default ``4 (n + m + 2)``, pivots). Entries below 1e-11 of the largest are treated as 0
    (rounding noise, e.g. ``C a`` at a uniform point); rows are scaled to unit max-norm, the cost too.

    The start is the basis ``{x_j*, s}`` of :func:`_start_tableau`, optimal for the LP without the rows
    ``M x >= h`` (dual feasible), so no phase 1 is needed; the dual simplex method then restores ``s >= 0``.
    A row that proves infeasibility is checked against the data (:func:`_certifies_infeasibility`); if
    rounding errors made it up, the tableau is rebuilt from the data (:func:`_tableau`) and the pivots go on.
    The vertex is read off the final tableau by :func:`_vertex`.
    """
    n, m, cost_dtype, device = cost.numel(), m_ge.shape[0], cost.dtype, cost.device
    dtype, host = torch.float64, torch.device("cpu")  # every pivot reads the tableau: keep it on the host
    cost, m_ge, h = (v.to(device=host, dtype=dtype) for v in (cost, m_ge, h))
    mat, rhs = _scaled_rows(m_ge, h) if m else (m_ge, h)
    c = cost / cost.abs().max().clamp_min(1e-300)
    start = int(torch.argmax(c))
    tab, rows, cols = _start_tableau(mat, rhs, c, start)

    def certify(r: int, rebuild: bool) -> bool | None:
        if _certifies_infeasibility(tab, rows, cols, r, mat, rhs, start):
            return True
        fresh = _tableau(mat, rhs, c, rows, cols) if rebuild else None
        if fresh is None:
            return None
        tab.copy_(fresh)
        tab[-1, :n].clamp_(min=0.0)
        return False

    if not _dual_simplex(tab, rows, cols, max_pivots or 4 * (n + m + 2), certify):
        return None
    x = _vertex(tab, rows, cols, mat, rhs)
    return None if x is None else x.to(device=device, dtype=cost_dtype)


def _scaled_rows(m_ge: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``(M, h)`` with the entries below 1e-11 of the largest (of both) zeroed as rounding noise, then each row
    scaled to unit max-norm over ``(M_k, h_k)``."""
    size, h_size = m_ge.abs(), h.abs()
    row_max = size.amax(dim=1)
    noise = 1e-11 * float(torch.maximum(row_max.max(), h_size.max()))
    scale = torch.maximum(row_max, h_size).clamp_min(noise + 1e-300)  # = that of the zeroed rows
    return torch.where(size > noise, m_ge / scale[:, None], 0.0), torch.where(h_size > noise, h / scale, 0.0)


def _start_tableau(mat: Tensor, rhs: Tensor, c: Tensor, start: int) -> tuple[Tensor, list[int], list[int]]:
    """The tableau (see :func:`_dual_simplex`) of the basis ``{x_start, s}`` with slacks ``s = M x - h``, and
    its row and column labels (``x_i`` is ``i < n``, ``s_k`` is ``n + k``).

    ``x_start = 1 - sum_{i != start} x_i``, ``s_k = M_k,start - h_k + sum_{i != start} (M_ki - M_k,start)
    x_i`` and ``c^T x = c_start - sum_{i != start} (c_start - c_i) x_i``: dual feasible when ``start = argmax
    c``. Column ``start`` stays 0 (the slot of no variable, label -1: ``x_start`` is basic in the sum row).
    """
    m, n = mat.shape[0], c.numel()
    tab = torch.empty(m + 2, n + 1, dtype=mat.dtype, device=mat.device)
    torch.sub(mat[:, start : start + 1], mat, out=tab[:m, :n])
    tab[:m, n] = mat[:, start] - rhs
    tab[m, :n] = 1.0
    tab[m, start] = 0.0
    tab[m, n] = 1.0
    tab[m + 1, :n] = c[start] - c
    tab[m + 1, n] = c[start]
    rows = list(range(n, n + m)) + [start]
    cols = list(range(n))
    cols[start] = -1  # no variable
    return tab, rows, cols


def _vertex(tab: Tensor, rows: list[int], cols: list[int], mat: Tensor, rhs: Tensor) -> Tensor | None:
    """The vertex of the optimal tableau, on the simplex, or None if it violates a row by more than
    ``_ACCEPT`` (scaled units).

    The basic ``x`` are recomputed from the tight rows (``M_T x_S = h_T, 1^T x_S = 1``, square) when that
    reduces the constraint violation (rounding error accumulated over the pivots)."""
    m, n = tab.shape[0] - 2, tab.shape[1] - 1
    dtype, host = tab.dtype, tab.device
    values = torch.zeros(n + m, dtype=dtype, device=host)
    values[torch.tensor(rows, device=host)] = tab[: m + 1, n]
    x, worst = values[:n], _violation(mat, rhs, values[:n])
    basic = torch.tensor([v for v in rows if v < n], dtype=torch.long, device=host)
    tight = torch.tensor([v - n for v in cols if v >= n], dtype=torch.long, device=host)
    system = torch.cat([mat[tight][:, basic], torch.ones(1, basic.numel(), dtype=dtype, device=host)])
    solution, info = torch.linalg.solve_ex(system, torch.cat([rhs[tight], rhs.new_ones(1)]))
    if int(info) == 0:
        refined = torch.zeros_like(x).index_copy_(0, basic, solution)
        violation = _violation(mat, rhs, refined)
        if violation <= worst:
            x, worst = refined, violation
    if not worst <= _ACCEPT:  # numerically broken (also NaN): report a failure rather than a wrong vertex
        return None
    x = x.clamp_min(0.0)
    return x / x.sum()


def _tableau(mat: Tensor, rhs: Tensor, c: Tensor, rows: list[int], cols: list[int]) -> Tensor | None:
    """The tableau of the basis ``rows`` computed from the original data (see :func:`_dual_simplex`), or
    None if the basis matrix is numerically singular.

    With ``A = [[M, -I], [1^T, 0]]`` (and a zero column for the label -1), ``b = (h, 1)`` and the basis
    matrix ``B = A[:, rows]``: ``T = B^{-1} A[:, cols]``, ``beta = B^{-1} b``, ``d = c_B^T T - c_N`` and
    ``z_0 = c_B^T beta``.
    """
    m, n = mat.shape
    a = mat.new_zeros(m + 1, n + m + 1)
    a[:m, :n] = mat
    a[:m, n : n + m] = -torch.eye(m, dtype=mat.dtype, device=mat.device)
    a[m, :n] = 1.0
    b = torch.cat([rhs, rhs.new_ones(1)])
    index_b = torch.tensor(rows, device=mat.device)
    index_n = torch.tensor(cols, device=mat.device)
    body, info = torch.linalg.solve_ex(a[:, index_b], torch.cat([a[:, index_n], b[:, None]], dim=1))
    if int(info) != 0 or not bool(torch.isfinite(body).all()):
        return None
    costs = torch.cat([c, c.new_zeros(m + 1)])
    objective = costs[index_b] @ body - torch.cat([costs[index_n], c.new_zeros(1)])
    return torch.cat([body, objective[None]])


def _certifies_infeasibility(
    tab: Tensor, rows: list[int], cols: list[int], r: int, mat: Tensor, rhs: Tensor, start: int
) -> bool:
    """Whether row r of ``tab`` proves ``{x in simplex, M x >= h}`` empty, recomputed from the data.

    The row's entries on the starting basic variables (``s``, ``x_start``) are the multipliers ``y`` that
    combine the starting equations ``x_v + sum_i T0_vi x_i = beta0_v`` into ``sum_u a_u v_u = y^T beta0``
    over all variables ``v`` (``a = y`` on the starting basic ones, ``y^T T0`` on the other ``x``). Each
    ``v_u`` lies in ``[0, u_u]`` on the feasible set (``x_i <= 1``, ``s_k <= max_i M_ki - h_k``), so the LP
    is infeasible if ``y^T beta0 < sum_u min(a_u, 0) u_u``; by a margin of ``_CERTIFICATE (1 + ||y_s||_1)``,
    no ``x`` violates the rows by less than ``_CERTIFICATE`` either (``s_k >= -_CERTIFICATE``).
    """
    m, n = mat.shape
    position = {n + k: k for k in range(m)} | {start: m}  # starting basic variable -> its starting row
    y = mat.new_zeros(m + 1)
    pairs = [(j, position[v]) for j, v in enumerate(cols) if v in position]
    if pairs:
        at_column, at_row = zip(*pairs, strict=True)
        y[torch.tensor(at_row, device=y.device)] = tab[r, torch.tensor(at_column, device=y.device)]
    if rows[r] in position:
        y[position[rows[r]]] = 1.0
    start_body = torch.cat([mat[:, start : start + 1] - mat, mat.new_ones(1, n)])
    start_body[m, start] = 0.0
    start_beta = torch.cat([mat[:, start] - rhs, rhs.new_ones(1)])
    coefficients = y @ start_body  # on x_i, i != start (0 at start: x_start is in y)
    slack_bound = (mat.amax(dim=1) - rhs).clamp_min(0.0) if m else rhs
    lowest = coefficients.clamp(max=0.0).sum() + (y[:m].clamp(max=0.0) * slack_bound).sum()
    lowest = lowest + y[m].clamp(max=0.0)
    return float(y @ start_beta) < float(lowest) - _CERTIFICATE * (1.0 + float(y[:m].abs().sum()))


def _violation(mat: Tensor, rhs: Tensor, x: Tensor) -> float:
    """``max(max_k (rhs - mat x)_k, max_i -x_i, 0)``, the largest violated constraint (scaled units)."""
    return float(torch.cat([rhs - mat @ x, x.neg(), x.new_zeros(1)]).max())

