"""Test-only references for the solvers, independent of plot_hf's: multi-start SciPy SLSQP on CAGrad's dual,
brute force over the supports for MGDA's min-norm point, brute force over the vertices for EPO's LPs (Clarabel
references, shared with the solver table, are in ``benchmarks/references.py``); and the test problems."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.optimize import minimize


def random_g(k: int, rank: int, scale: float, seed: int, p: int = 50) -> np.ndarray:
    """K x p class gradients of the given rank, with mean squared norm about ``scale``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((k, rank)) @ rng.standard_normal((rank, p)) * math.sqrt(scale / rank)


def cagrad_c(a: np.ndarray, alpha: float = 0.5) -> float:
    """CAGrad's radius ``c = alpha * sqrt(mean(A) + 1e-8) + 1e-8`` (``alpha ||g0||``)."""
    return alpha * math.sqrt(max(a.mean(), 0.0) + 1e-8) + 1e-8


def cagrad_dual_value(w: np.ndarray, a: np.ndarray, b: np.ndarray, c: float) -> float:
    return float(w @ a @ b + c * math.sqrt(max(float(w @ a @ w), 0.0) + 1e-8))


def cagrad_weights(lam: np.ndarray, alpha: float = 0.5, rescale: int = 1) -> np.ndarray:
    """The dual weights ``w`` from CAGrad's coefficients ``lambda = (1 + K c / ||G^T w|| w) / s``."""
    s = {0: 1.0, 1: 1.0 + alpha**2, 2: 1.0 + alpha}[rescale]
    scaled = np.clip(lam * s - 1.0, 0.0, None)
    return scaled / scaled.sum()


def scipy_cagrad(a: np.ndarray, b: np.ndarray, c: float, n_random: int, seed: int = 0) -> float:
    """Best value of multi-start SLSQP (analytic gradient, tight ftol) on CAGrad's dual, solved on A / max diag A."""
    s = float(np.diag(a).max())
    a_n, c_n, eps = a / s, c / math.sqrt(s), 1e-8 / s  # f(w) = s * f_n(w) exactly
    k = len(b)

    def f(x):
        return x @ a_n @ b + c_n * math.sqrt(max(x @ a_n @ x, 0.0) + eps)

    def jac(x):
        return a_n @ b + c_n * (a_n @ x) / math.sqrt(max(x @ a_n @ x, 0.0) + eps)

    rng = np.random.default_rng(seed)
    vertices = np.eye(k)[: 3 if k <= 30 else 0]
    starts = [b, np.full(k, 1.0 / k), *vertices, *rng.dirichlet(np.ones(k), n_random)]
    cons = {"type": "eq", "fun": lambda x: 1.0 - x.sum(), "jac": lambda x: -np.ones(k)}
    best = math.inf
    for x0 in starts:
        res = minimize(f, x0, jac=jac, bounds=[(0, 1)] * k, constraints=cons, method="SLSQP",
                       options={"ftol": 1e-15, "maxiter": 200 if k > 30 else 500})
        x = np.clip(res.x, 0, None)
        best = min(best, f(x / x.sum()) * s)
    return best


def brute_force_min_norm(a: np.ndarray) -> float:
    """``min w^T A w`` on the simplex: the KKT system on every support, the best feasible one."""
    k = a.shape[0]
    best = math.inf
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            idx = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = a[np.ix_(idx, idx)]
            kkt[:size, size] = -1.0
            kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
            if (sol >= -1e-12).all() and abs(sol.sum() - 1) < 1e-9:
                w = np.zeros(k)
                w[idx] = np.clip(sol, 0, None)
                best = min(best, float(w @ a @ w))
    return best


def brute_force_lp(cost: np.ndarray, mat: np.ndarray, rhs: np.ndarray, tol: float = 1e-9) -> float | None:
    """``max cost^T x`` over ``{x >= 0, sum x = 1, mat x >= rhs}`` by enumerating the vertices (small K and m):
    each vertex is the solution of ``sum x = 1``, ``x_i = 0`` off a support S and |S| - 1 tight rows. None if no
    vertex is feasible (rows scaled to unit max-norm; feasibility to ``tol``)."""
    k, m = cost.shape[0], mat.shape[0]
    size = np.maximum(np.abs(mat).max(axis=1, initial=0.0), np.abs(rhs)) if m else np.ones(0)
    size = np.where(size > 0, size, 1.0)
    mat, rhs = mat / size[:, None], rhs / size
    best = None
    for s in range(1, k + 1):
        for support in itertools.combinations(range(k), s):
            for tight in itertools.combinations(range(m), s - 1):
                system = np.vstack([np.ones((1, s)), mat[np.ix_(list(tight), list(support))]])
                target = np.concatenate([[1.0], rhs[list(tight)]])
                if abs(np.linalg.det(system)) < 1e-12:
                    continue
                x = np.zeros(k)
                x[list(support)] = np.linalg.solve(system, target)
                if x.min() >= -tol and (m == 0 or (mat @ x - rhs).min() >= -tol):
                    value = float(cost @ x)
                    best = value if best is None else max(best, value)
    return best


def epo_problem(k: int, seed: int, balanced: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(C, losses, preference)``: a Gramian with a shared direction; ``balanced``: ``r l`` uniform (mu = 0)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((k, 30))
    g[:, 0] += 1.0
    pref = rng.dirichlet(np.ones(k))
    losses = 1.0 / pref if balanced else rng.uniform(0.5, 3.0, k)
    return g @ g.T, losses, pref
