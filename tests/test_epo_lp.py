"""EPO's LP solver ``solve_simplex_lp`` (a dual simplex method on the host) against HiGHS
(``scipy.optimize.linprog``) on LPs of the EPO shape.

The LPs: ``argmax cost^T x`` over ``{x >= 0, sum x = 1, M x >= h}``. A feasible LP must give a vertex whose
objective is within 1e-6 (relative; with an absolute floor of 1e-9 max|cost| for optima at 0) of the HiGHS
optimum and that satisfies every row to 1e-9 of its scale ``max(max_j |M_kj|, |h_k|)``; an infeasible LP
must give None. SciPy is a test-only reference: the solver itself never imports it. These functions take
float64 CPU tensors (the solvers copy the Gramian to the host first).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from plot_hf.moo.solvers import _simplex_lp as lp_module
from plot_hf.moo.solvers import epo_lp, solve_simplex_lp
from plot_hf.moo.solvers._epo import _adjustments

DEVICE = torch.device("cpu")


def highs(cost: np.ndarray, m: np.ndarray, h: np.ndarray) -> tuple[int, float]:
    """HiGHS's status (0 optimal, 2 infeasible) and optimal value of the LP."""
    k = cost.size
    res = linprog(
        -cost,
        A_ub=-m if m.size else None,
        b_ub=-h if m.size else None,
        A_eq=np.ones((1, k)),
        b_eq=[1.0],
        bounds=(0, None),
        method="highs",
    )
    return res.status, (-res.fun if res.status == 0 else float("nan"))


def solve(cost: np.ndarray, m: np.ndarray, h: np.ndarray, **kwargs) -> np.ndarray | None:
    as_t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64), device=DEVICE)  # noqa: E731
    x = solve_simplex_lp(as_t(cost), as_t(m).reshape(-1, cost.size), as_t(h), **kwargs)
    return None if x is None else x.cpu().numpy()


def assert_matches_highs(cost: np.ndarray, m: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Solve, check against HiGHS (optimal value, feasibility to 1e-9), return the vertex."""
    status, ref = highs(cost, m, h)
    assert status == 0, "the reference finds the LP infeasible or fails"
    x = solve(cost, m, h)
    assert x is not None, "feasible LP reported infeasible"
    assert x.shape == cost.shape and np.isfinite(x).all()
    assert x.min() >= 0.0 and abs(x.sum() - 1.0) < 1e-12
    if m.size:
        scale = np.maximum(np.abs(m).max(axis=1), np.abs(h))
        scale = np.maximum(scale, 1e-300)
        assert ((h - m @ x) / scale).max() <= 1e-9
    objective = float(cost @ x)
    assert abs(objective - ref) <= 1e-6 * abs(ref) + 1e-9 * np.abs(cost).max(), (objective, ref)
    return x


def assert_infeasible(cost: np.ndarray, m: np.ndarray, h: np.ndarray) -> None:
    assert highs(cost, m, h)[0] == 2, "the reference does not find the LP infeasible"
    assert solve(cost, m, h) is None


def assert_agrees_with_highs(cost: np.ndarray, m: np.ndarray, h: np.ndarray) -> None:
    """Feasible or not, as HiGHS finds it (for LPs whose feasibility is not known by construction)."""
    status, _ = highs(cost, m, h)
    assert status in (0, 2)
    if status == 0:
        assert_matches_highs(cost, m, h)
    else:
        assert_infeasible(cost, m, h)


# ---------------------------------------------------------------- problems of the EPO shape
def class_gradients(k: int, kind: str, rng: np.random.Generator, p: int = 64) -> np.ndarray:
    """K per-class gradients: low rank plus noise, or a shared direction plus class-specific parts."""
    if kind == "low_rank":
        rank = min(k, 16)
        low_rank = rng.standard_normal((k, rank)) @ rng.standard_normal((rank, p))
        return low_rank + 0.3 * rng.standard_normal((k, p))
    if kind == "common":
        return rng.standard_normal(p)[None, :] + 0.5 * rng.standard_normal((k, p))
    return rng.standard_normal((k, p))


def epo_lps(c: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The three LPs of :func:`epo_lp` (balance, restricted descent, relaxed descent) for Gramian ``c``."""
    k = c.shape[0]
    losses, pref = rng.uniform(0.5, 3.0, k), rng.dirichlet(np.ones(k))
    rl, _, adj = _adjustments(torch.tensor(losses), torch.tensor(pref))
    ca, rl = c @ adj.numpy(), rl.numpy()
    worst = rl >= rl.max()
    rows = (ca <= 0) | worst
    bound = np.array([min(ca.max(), 0.0)])
    return {
        "balance": (ca, c[rows], np.where(worst, 0.0, ca)[rows]),
        "descent": (c.sum(0), np.vstack([ca[None], c]), np.concatenate([bound, np.zeros(k)])),
        "relaxed": (c.sum(0), c, np.zeros(k)),
    }


@pytest.mark.parametrize("lp", ["balance", "descent", "relaxed"])
@pytest.mark.parametrize("kind", ["low_rank", "common", "plain"])
@pytest.mark.parametrize("k", [2, 3, 10, 40, 100])
def test_epo_lps_match_highs(k: int, kind: str, lp: str) -> None:
    rng = np.random.default_rng(1000 * k + len(kind))
    g = class_gradients(k, kind, rng)
    assert_agrees_with_highs(*epo_lps(g @ g.T, rng)[lp])


@pytest.mark.parametrize("lp", ["balance", "descent"])
def test_epo_lps_match_highs_k300(lp: str) -> None:
    rng = np.random.default_rng(300)
    g = class_gradients(300, "low_rank", rng, p=128)
    assert_agrees_with_highs(*epo_lps(g @ g.T, rng)[lp])


def benchmark_problem(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gramian and losses of the solver benchmark (low-rank class gradients plus noise)."""
    gen = torch.Generator().manual_seed(k)
    basis = torch.randn(min(k, 64), 512, generator=gen, dtype=torch.float64)
    g = torch.randn(k, min(k, 64), generator=gen, dtype=torch.float64) @ basis
    g = g + 0.3 * torch.randn(k, 512, generator=gen, dtype=torch.float64)
    losses = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
    return g @ g.T, losses


@pytest.mark.parametrize("k", [100, 300, 1000])
def test_benchmark_balance_lp_is_solved(k: int) -> None:
    # K = 300 used to hit the pivot cap of the former primal simplex code and fall back to MGDA
    a, losses = benchmark_problem(k)
    alpha, mode = epo_lp(a.to(DEVICE), losses.to(DEVICE), uniform(k))
    assert mode == "balance"
    c = a.numpy()
    rl, _, adj = _adjustments(losses, uniform(k).cpu())
    ca, rl = c @ adj.numpy(), rl.numpy()
    worst = rl >= rl.max()
    rows = (ca <= 0) | worst
    x = assert_matches_highs(ca, c[rows], np.where(worst, 0.0, ca)[rows])
    np.testing.assert_allclose(alpha.cpu().numpy() @ ca, x @ ca, rtol=1e-12)


def test_benchmark_descent_lp_is_solved() -> None:
    # equal r * l: descent mode; the former code declared this LP infeasible (degenerate phase 1)
    a, _ = benchmark_problem(100)
    alpha, mode = epo_lp(a.to(DEVICE), torch.ones(100, dtype=torch.float64, device=DEVICE), uniform(100))
    assert mode == "descent"
    c = a.numpy()
    m, h = np.vstack([np.zeros((1, 100)), c]), np.zeros(101)  # C a = 0 at a uniform point: a row 0 >= 0
    x = assert_matches_highs(c.sum(0), m, h)
    np.testing.assert_allclose(alpha.cpu().numpy() @ c.sum(0), x @ c.sum(0), rtol=1e-9)


def uniform(k: int) -> torch.Tensor:
    return torch.full((k,), 1.0 / k, dtype=torch.float64, device=DEVICE)


# ---------------------------------------------------------------- general random LPs, feasible or not
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("k", [3, 8, 30])
def test_random_lps_agree_with_highs(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((int(rng.integers(1, 2 * k + 1)), k))
    x0 = rng.dirichlet(np.full(k, 0.3))
    h = m @ x0 + rng.normal(0.0, 0.3, m.shape[0])  # around a point of the simplex: feasible or not
    cost = rng.standard_normal(k)
    assert_agrees_with_highs(cost, m, h)


@pytest.mark.parametrize("k", [5, 50])
def test_strictly_feasible_random_lps(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(5):
        m = rng.standard_normal((2 * k, k))
        h = m @ rng.dirichlet(np.ones(k)) - 0.05  # a point of the simplex satisfies every row by 0.05
        assert_matches_highs(rng.standard_normal(k), m, h)


def infeasible_lps() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(cost, M, h)`` of LPs infeasible by a clear margin."""
    rng = np.random.default_rng(0)
    k = 20
    m = rng.standard_normal((10, k))
    cost = rng.standard_normal(k)
    h = np.zeros(10)
    h[3] = m[3].max() + 0.1  # row 3 exceeds its largest value on the simplex
    t = float(m[0].mean())  # m_0 x >= t and m_0 x <= t - 0.01
    g = rng.standard_normal((k, 4))  # C x >= 1 with a Gramian scaled so that C x <= max C_ij < 1
    c = g @ g.T
    return [
        (cost, m, h),
        (cost, np.vstack([m[0], -m[0]]), np.array([t, -t + 0.01])),
        (cost, np.zeros((2, k)), np.array([0.0, 1e-3])),  # a zero row with h > 0
        (c.sum(0), c / (2 * np.abs(c).max()), np.ones(k)),
    ]


def test_infeasible_lps_give_none() -> None:
    for lp in infeasible_lps():
        assert_infeasible(*lp)


def test_infeasible_at_k300() -> None:
    rng = np.random.default_rng(7)
    g = class_gradients(300, "low_rank", rng, p=128)
    c = g @ g.T
    t, margin = float(np.median(c[0])), 1e-3 * np.abs(c[0]).max()
    m = np.vstack([c, -c[:1]])  # c_0 x >= t and c_0 x <= t - margin; the other rows are inactive
    h = np.concatenate([[t], np.full(299, -np.abs(c).max()), [-t + margin]])
    assert_infeasible(c.sum(0), m, h)


# ---------------------------------------------------------------- degenerate LPs
def tie_lps(k: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """LPs ``C x >= 0`` with ties in the cost: all equal (every feasible point is optimal), all zero, and
    pairs of equal costs."""
    rng = np.random.default_rng(k)
    g = class_gradients(k, "plain", rng)
    c = g @ g.T
    pairs = np.repeat(rng.standard_normal((k + 1) // 2), 2)[:k]
    return [(cost, c, np.zeros(k)) for cost in (np.ones(k), np.zeros(k), pairs)]


@pytest.mark.parametrize("k", [4, 25])
def test_ties_in_the_cost(k: int) -> None:
    for lp in tie_lps(k):
        assert_matches_highs(*lp)


def zero_and_duplicate_row_lps(k: int) -> tuple[list, list]:
    """``(lps, feasible)``: EPO's LPs for a Gramian with zero rows and columns (zero gradients), and the
    relaxed one with every row repeated 3 times or with zero rows appended."""
    rng = np.random.default_rng(k + 1)
    g = class_gradients(k, "common", rng)
    g[rng.random(k) < 0.3] = 0.0  # zero gradients: zero rows and columns of C
    lps = epo_lps(g @ g.T, rng)
    cost, m, h = lps["relaxed"]
    feasible = [
        (cost, np.repeat(m, 3, axis=0), np.repeat(h, 3)),
        (cost, np.vstack([m, np.zeros((3, k))]), np.concatenate([h, [0.0, -1.0, 0.0]])),
    ]
    return list(lps.values()), feasible


@pytest.mark.parametrize("k", [6, 40])
def test_zero_and_duplicate_rows(k: int) -> None:
    lps, feasible = zero_and_duplicate_row_lps(k)
    for lp in lps:
        assert_agrees_with_highs(*lp)
    for lp in feasible:
        assert_matches_highs(*lp)


@pytest.mark.parametrize("k", [5, 30])
def test_duplicate_classes_and_rank_one(k: int) -> None:
    rng = np.random.default_rng(k + 2)
    g = class_gradients(k, "plain", rng)[rng.integers(0, 3, size=k)]  # three distinct gradients
    for lp in epo_lps(g @ g.T, rng).values():
        assert_agrees_with_highs(*lp)
    g1 = np.outer(rng.standard_normal(k), rng.standard_normal(16))  # rank one: +-parallel gradients
    for lp in epo_lps(g1 @ g1.T, rng).values():
        assert_agrees_with_highs(*lp)


@pytest.mark.parametrize("seed", range(6))
def test_integer_lps_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 12
    m = rng.integers(-3, 4, size=(15, k)).astype(float)
    h = rng.integers(-3, 2, size=15).astype(float)
    cost = rng.integers(-2, 3, size=k).astype(float)
    assert_agrees_with_highs(cost, m, h)


def test_opposed_classes_single_feasible_point() -> None:
    c = np.array([[1.0, -1.0], [-1.0, 1.0]])  # C x >= 0 only at x = (1/2, 1/2)
    x = assert_matches_highs(c.sum(0), c, np.zeros(2))
    np.testing.assert_allclose(x, [0.5, 0.5], atol=1e-12)


def test_no_rows_and_one_variable() -> None:
    cost = np.array([0.3, 2.0, -1.0])
    np.testing.assert_array_equal(solve(cost, np.zeros((0, 3)), np.zeros(0)), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(solve(np.array([1.0]), np.array([[2.0]]), np.array([1.0])), [1.0])
    assert solve(np.array([1.0]), np.array([[2.0]]), np.array([3.0])) is None


def test_pivot_cap_reports_failure() -> None:
    rng = np.random.default_rng(3)
    g = class_gradients(40, "low_rank", rng)
    cost, m, h = epo_lps(g @ g.T, rng)["balance"]
    assert solve(cost, m, h) is not None
    assert solve(cost, m, h, max_pivots=1) is None


def test_float32_inputs() -> None:
    rng = np.random.default_rng(5)
    g = class_gradients(20, "common", rng)
    cost, m, h = epo_lps(g @ g.T, rng)["balance"]
    as32 = lambda v: torch.as_tensor(v, dtype=torch.float32, device=DEVICE)  # noqa: E731
    x = solve_simplex_lp(as32(cost), as32(m), as32(h))
    assert x is not None and x.dtype == torch.float32
    rounded = [v.astype(np.float32).astype(np.float64) for v in (cost, m, h)]
    status, ref = highs(*rounded)
    assert status == 0
    assert abs(float(as32(cost).double() @ x.double()) - ref) <= 1e-5 * abs(ref) + 1e-6 * np.abs(cost).max()


# ---------------------------------------------------------------- internals: rebuilt tableau, certificate
def scaled_lp(k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An EPO balance LP already in the solver's scaling (rows and cost of unit max-norm)."""
    rng = np.random.default_rng(seed)
    g = class_gradients(k, "low_rank", rng)
    cost, m, h = epo_lps(g @ g.T, rng)["balance"]
    scale = np.maximum(np.abs(m).max(axis=1), np.abs(h))
    as_t = lambda v: torch.as_tensor(v, dtype=torch.float64, device=DEVICE)  # noqa: E731
    return as_t(cost / np.abs(cost).max()), as_t(m / scale[:, None]), as_t(h / scale)


def test_rebuilt_tableau_matches_the_pivoted_one(monkeypatch: pytest.MonkeyPatch) -> None:
    cost, mat, rhs = scaled_lp(30, 1)
    seen = {}
    run = lp_module._dual_simplex

    def spy(tab, rows, cols, max_pivots, certify):
        seen["start"] = (tab.clone(), list(rows), list(cols))
        result = run(tab, rows, cols, max_pivots, certify)
        seen["end"] = (tab, rows, cols)
        return result

    monkeypatch.setattr(lp_module, "_dual_simplex", spy)
    assert solve_simplex_lp(cost, mat, rhs) is not None
    for tab, rows, cols in seen.values():
        rebuilt = lp_module._tableau(mat, rhs, cost, rows, cols)
        torch.testing.assert_close(rebuilt[:, :-1], tab[:, :-1], atol=1e-9, rtol=0)  # T and d
        torch.testing.assert_close(rebuilt[:-1, -1], tab[:-1, -1], atol=1e-9, rtol=0)  # beta


def test_infeasibility_is_certified_from_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    cost, mat, rhs = scaled_lp(20, 2)
    verdicts = []
    certify = lp_module._certifies_infeasibility

    def spy(*args):
        verdicts.append(certify(*args))
        return verdicts[-1]

    monkeypatch.setattr(lp_module, "_certifies_infeasibility", spy)
    impossible = torch.cat([mat, mat[:1]]), torch.cat([rhs, mat[0].max().reshape(1) + 0.5])
    assert solve_simplex_lp(cost, *impossible) is None
    assert verdicts == [True]
    # an unconfirmed claim (as after rounding errors) rebuilds the tableau, then gives up: None, no crash
    monkeypatch.setattr(lp_module, "_certifies_infeasibility", lambda *args: False)
    assert solve_simplex_lp(cost, *impossible) is None
    assert solve_simplex_lp(cost, mat, rhs) is not None  # a feasible LP never asks
