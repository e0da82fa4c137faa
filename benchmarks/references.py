"""High-accuracy references for the solver tests and the solver table: Clarabel's interior-point method on the
conic form of each problem (independent of the project's solvers: nothing here imports them), and the Gramian
families they are run on."""

from __future__ import annotations

import clarabel
import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "cagrad_dual_objective",
    "clarabel_cagrad",
    "clarabel_epo",
    "clarabel_lp",
    "clarabel_min_norm",
    "epo_linear_programs",
    "gramian",
    "scaled_gramian",
]


def gramian(k: int, common: float, seed: int) -> torch.Tensor:
    """``G G^T`` for K class gradients in 512 dimensions: a rank-64 part plus noise, plus (``common > 0``) a
    shared direction as in real per-class gradients. Without it, for K >~ 300 the hull nearly contains 0."""
    gen = torch.Generator().manual_seed(seed)
    r = min(k, 64)
    g = torch.randn(k, r, generator=gen, dtype=torch.float64) @ torch.randn(r, 512, generator=gen, dtype=torch.float64)
    g = g + 0.3 * torch.randn(k, 512, generator=gen, dtype=torch.float64)
    g = g + common * 8.0 * torch.randn(512, generator=gen, dtype=torch.float64)
    return g @ g.T


def scaled_gramian(k: int, seed: int, decades: float = 4.5) -> torch.Tensor:
    """``G G^T`` for K nearly orthogonal class gradients in 512 dimensions (unit random directions) with
    norms ``10^(-decades * U)``, ``U ~ uniform(0, 1)``: squared norms over ``2 * decades`` decades, as in
    real per-class Gramians late in training (ResNet-32, 76 classes present: squared norms 5e-10 to 0.13,
    condition number 3e8). The hull of such gradients nearly contains 0 and the CAGrad dual is badly
    conditioned: after 300 FISTA iterations the relative objective gap is still 1-20% (2 decades) and
    100-400% (4.5 decades), K = 76-300."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(k, 512, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    norms = 10.0 ** (-decades * torch.rand(k, generator=gen, dtype=torch.float64))
    g = norms[:, None] * u
    return g @ g.T


def _settings() -> clarabel.DefaultSettings:
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-9  # 1e-10: "AlmostSolved"
    settings.max_iter = 500
    return settings


def clarabel_min_norm(a: np.ndarray) -> float:
    """``min w^T A w`` over the simplex, as a QP: ``1/2 w^T (2A) w`` s.t. ``1^T w = 1`` (zero cone), ``w >= 0``."""
    k = a.shape[0]
    constraints = sp.vstack([sp.csc_matrix(np.ones((1, k))), -sp.identity(k, format="csc")]).tocsc()
    b = np.concatenate([[1.0], np.zeros(k)])
    cones = [clarabel.ZeroConeT(1), clarabel.NonnegativeConeT(k)]
    solution = clarabel.DefaultSolver(sp.csc_matrix(np.triu(2 * a)), np.zeros(k), constraints, b, cones, _settings()).solve()
    assert str(solution.status) == "Solved", solution.status
    w = np.clip(np.asarray(solution.x), 0, None)
    w /= w.sum()
    return float(w @ a @ w)


def clarabel_cagrad(a: np.ndarray, anchor: np.ndarray, c: float) -> float:
    """``min (A b)^T w + c sqrt(w^T A w + 1e-8)`` over the simplex, as a second-order cone program in
    ``(w, t)``: minimise ``(A b)^T w + c t`` s.t. ``t >= ||(R w, 1e-4)||`` with ``R^T R = A``."""
    k = a.shape[0]
    eigenvalues, vectors = np.linalg.eigh(a)
    root = (vectors * np.sqrt(np.clip(eigenvalues, 0, None))).T  # R with R^T R = A
    q = np.concatenate([a @ anchor, [c]])
    rows = [
        np.concatenate([np.ones(k), [0.0]])[None],  # 1^T w = 1
        -np.hstack([np.eye(k), np.zeros((k, 1))]),  # w >= 0
        np.concatenate([np.zeros(k), [-1.0]])[None],  # SOC head: t
        -np.hstack([root, np.zeros((k, 1))]),  # SOC body: R w
        np.zeros((1, k + 1)),  # SOC body: the constant 1e-4 = sqrt(1e-8)
    ]
    b = np.concatenate([[1.0], np.zeros(k), [0.0], np.zeros(k), [1e-4]])
    cones = [clarabel.ZeroConeT(1), clarabel.NonnegativeConeT(k), clarabel.SecondOrderConeT(k + 2)]
    p = sp.csc_matrix((k + 1, k + 1))
    solution = clarabel.DefaultSolver(p, q, sp.csc_matrix(np.vstack(rows)), b, cones, _settings()).solve()
    assert str(solution.status) == "Solved", solution.status
    w = np.clip(np.asarray(solution.x)[:k], 0, None)
    w /= w.sum()
    return cagrad_dual_objective(w, a, anchor, c)


def cagrad_dual_objective(w: np.ndarray, a: np.ndarray, anchor: np.ndarray, c: float) -> float:
    """CAGrad's dual objective ``w^T A b + c sqrt(w^T A w + 1e-8)`` (Liu et al., NeurIPS 2021, eq. 4)."""
    return float(w @ a @ anchor + c * np.sqrt(max(float(w @ a @ w), 0.0) + 1e-8))


def clarabel_lp(cost: np.ndarray, mat: np.ndarray, rhs: np.ndarray) -> tuple[str, float]:
    """``max cost^T x`` over ``{x >= 0, sum x = 1, mat x >= rhs}``: ``(status, optimal value)``. The cost and
    each row are scaled to unit max-norm first (the LP and its argmax are unchanged)."""
    k = cost.shape[0]
    size = np.maximum(np.abs(mat).max(axis=1, initial=0.0), np.abs(rhs)) if len(rhs) else np.ones(0)
    size = np.where(size > 0, size, 1.0)
    mat, rhs = mat / size[:, None], rhs / size
    top = max(float(np.abs(cost).max()), 1e-300)
    constraints = sp.csc_matrix(np.vstack([np.ones((1, k)), -np.eye(k), -mat]))
    b = np.concatenate([[1.0], np.zeros(k), -rhs])
    cones = [clarabel.ZeroConeT(1), clarabel.NonnegativeConeT(k + len(rhs))]
    solver = clarabel.DefaultSolver(sp.csc_matrix((k, k)), -cost / top, constraints, b, cones, _settings())
    solution = solver.solve()
    return str(solution.status), -float(solution.obj_val) * top


def epo_linear_programs(c: np.ndarray, losses: np.ndarray, pref: np.ndarray, eps: float = 1e-4) -> list:
    """EPO's linear programs in the order of its modes (Mahapatra & Rajan, ICML 2020, eqs. 12-15, with the
    fallback chain of plot_hf's EPO): ``[(cost, mat, rhs), ...]`` for ``max cost^T x, x in simplex, mat x >= rhs``.

    ``rl = r l``, ``l^ = rl / sum rl``, ``mu = sum l^ log(K l^)``, ``a = r (log(K l^) - mu)``. Balance
    (only if ``mu > eps``): maximise ``(C a)^T x`` with ``(C x)_j >= (C a)_j`` where ``(C a)_j <= 0`` and
    ``(C x)_j >= 0`` on ``argmax rl`` (all ``j`` with ``(C x)_j >= 0`` if no ``(C a)_j > 0``). Restricted
    descent: maximise ``1^T C x`` with ``C x >= 0`` and ``(C a)^T x >= min(max_j (C a)_j, 0)``. Relaxed
    descent: the same without the last row."""
    k = c.shape[0]
    rl = pref * losses
    l_hat = np.maximum(rl / rl.sum(), np.finfo(float).tiny)
    mu = float((l_hat * np.log(k * l_hat)).sum())
    ca = c @ (pref * (np.log(k * l_hat) - mu))
    total = c.sum(axis=0)
    programs = []
    if mu > eps:
        if (ca > 0).any():
            worst = rl >= rl.max()
            rows = (ca <= 0) | worst
            programs.append((ca, c[rows], np.where(worst, 0.0, ca)[rows]))
        else:
            programs.append((ca, c, np.zeros(k)))
    programs.append((total, np.vstack([ca[None], c]), np.concatenate([[min(float(ca.max()), 0.0)], np.zeros(k)])))
    programs.append((total, c, np.zeros(k)))
    return programs


def clarabel_epo(c: np.ndarray, losses: np.ndarray, pref: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The first feasible LP of :func:`epo_linear_programs` (Clarabel's status "Solved"; "PrimalInfeasible"
    moves on): ``(optimal value, cost, mat, rhs)``."""
    for cost, mat, rhs in epo_linear_programs(c, losses, pref):
        status, value = clarabel_lp(cost, mat, rhs)
        if status == "Solved":
            return value, cost, mat, rhs
        assert status == "PrimalInfeasible", status
    raise AssertionError("no EPO linear program is feasible (the relaxed one always is)")
