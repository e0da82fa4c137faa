"""The host-read-free LP solver ``solve_simplex_lp_ipm`` against HiGHS (``scipy.optimize.linprog``).

The LPs: ``argmax cost^T x`` over ``{x >= 0, sum x = 1, M x >= h}``. Every call runs inside
``forbid_host_reads`` (no ``item``, ``bool(tensor)``, mask indexing, ... anywhere in the solver). A feasible
LP must give ``feasible`` True and an ``x`` whose objective is within 1e-6 (relative; absolute floor 1e-9
max|cost|) of the HiGHS optimum and that satisfies every row to 1e-8 of its scale ``max(max_j |M_kj|,
|h_k|)``. An LP infeasible by a margin (``min over the simplex of max_k (h_k - M_k x) / scale_k > 1e-6``)
must give ``feasible`` False; in between, either answer is right. In every case ``x`` is a finite point of
the simplex. SciPy is a test-only reference.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from plot_hf.moo.solvers import _epo as epo_module
from plot_hf.moo.solvers import epo_lp
from plot_hf.moo.solvers._epo import _adjustments
from plot_hf.moo.solvers._lp_ipm import solve_simplex_lp_ipm, solve_simplex_lps_ipm

from .helpers import forbid_host_reads
from .test_epo_lp import (
    benchmark_problem,
    class_gradients,
    epo_lps,
    highs,
    infeasible_lps,
    tie_lps,
    zero_and_duplicate_row_lps,
)

DEVICE = torch.device(os.environ.get("PLOT_HF_TEST_DEVICE", "cpu"))
ROW_TOLERANCE = 1e-8  # scaled units
CLEAR_MARGIN = 1e-6  # an LP infeasible by more than this (scaled units) must be reported infeasible


def solve(cost: np.ndarray, m: np.ndarray, h: np.ndarray, **kwargs) -> tuple[np.ndarray, bool]:
    """Run the solver without host reads; check the simplex invariants; return ``(x, feasible)``."""
    as_t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64), device=DEVICE)  # noqa: E731
    cost_t, m_t, h_t = as_t(cost), as_t(m).reshape(-1, cost.size), as_t(h).reshape(-1)
    with forbid_host_reads():
        x, feasible = solve_simplex_lp_ipm(cost_t, m_t, h_t, **kwargs)
    assert x.shape == cost.shape and x.dtype == torch.float64 and x.device == cost_t.device
    assert feasible.shape == () and feasible.dtype == torch.bool and feasible.device == cost_t.device
    x_np = x.cpu().numpy()
    assert np.isfinite(x_np).all() and x_np.min() >= 0.0 and abs(x_np.sum() - 1.0) < 1e-12
    return x_np, bool(feasible)


def row_scale(m: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(np.abs(m).max(axis=1), np.abs(h)), 1e-300)


def infeasibility_margin(m: np.ndarray, h: np.ndarray) -> float:
    """``min over the simplex of max_k (h_k - M_k x) / scale_k`` by HiGHS (a phase-1 LP); <= 0: feasible."""
    k = m.shape[1]
    scaled_m, scaled_h = m / row_scale(m, h)[:, None], h / row_scale(m, h)
    res = linprog(
        np.r_[np.zeros(k), 1.0],
        A_ub=np.hstack([-scaled_m, -np.ones((m.shape[0], 1))]),
        b_ub=-scaled_h,
        A_eq=np.r_[np.ones(k), 0.0][None],
        b_eq=[1.0],
        bounds=[(0, None)] * k + [(None, None)],
        method="highs",
    )
    assert res.status == 0
    return float(res.fun)


def assert_matches_highs(cost: np.ndarray, m: np.ndarray, h: np.ndarray, **kwargs) -> np.ndarray:
    """Feasible and optimal: the HiGHS optimum (1e-6 relative, floor 1e-9 max|cost|), rows to 1e-8."""
    status, ref = highs(cost, m, h)
    assert status == 0, "the reference finds the LP infeasible or fails"
    x, feasible = solve(cost, m, h, **kwargs)
    assert feasible, "feasible LP reported infeasible"
    if m.size:
        assert ((h - m @ x) / row_scale(m, h)).max() <= ROW_TOLERANCE
    objective = float(cost @ x)
    assert abs(objective - ref) <= 1e-6 * abs(ref) + 1e-9 * np.abs(cost).max(), (objective, ref)
    return x


def assert_infeasible(cost: np.ndarray, m: np.ndarray, h: np.ndarray) -> None:
    assert infeasibility_margin(m, h) > CLEAR_MARGIN, "not infeasible by a clear margin"
    _, feasible = solve(cost, m, h)
    assert not feasible


def assert_agrees_with_highs(cost: np.ndarray, m: np.ndarray, h: np.ndarray) -> None:
    """Feasible or not as HiGHS finds it; within ``CLEAR_MARGIN`` of infeasibility: only the invariants."""
    margin = infeasibility_margin(m, h) if m.size else -1.0
    if margin <= 1e-10 and highs(cost, m, h)[0] == 0:
        assert_matches_highs(cost, m, h)
    elif margin > CLEAR_MARGIN:
        assert_infeasible(cost, m, h)
    else:
        solve(cost, m, h)


# ---------------------------------------------------------------- the LPs of EPO
@pytest.mark.parametrize("lp", ["balance", "descent", "relaxed"])
@pytest.mark.parametrize("kind", ["low_rank", "common", "plain", "rank_8"])
@pytest.mark.parametrize("k", [2, 3, 10, 50, 200])
def test_epo_lps_match_highs(k: int, kind: str, lp: str) -> None:
    rng = np.random.default_rng(1000 * k + len(kind))
    if kind == "rank_8":  # a rank-limited Gramian: at most 8 independent rows
        g = rng.standard_normal((k, min(k, 8))) @ rng.standard_normal((min(k, 8), 64))
    else:
        g = class_gradients(k, kind, rng)
    assert_agrees_with_highs(*epo_lps(g @ g.T, rng)[lp])


def lps_of_epo(
    monkeypatch: pytest.MonkeyPatch, c: np.ndarray, losses: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The LPs that ``epo_lp`` solves for Gramian ``c`` (uniform preference), recorded from its calls to
    ``solve_simplex_lp``; each call answers "infeasible", so that it goes on to the next one (balance, if
    ``mu > eps``, then restricted descent, then relaxed descent, then the MGDA fallback)."""
    recorded = []

    def record(cost: torch.Tensor, m: torch.Tensor, h: torch.Tensor, **kwargs) -> None:
        recorded.append(tuple(t.cpu().numpy() for t in (cost, m, h)))

    k = c.shape[0]
    monkeypatch.setattr(epo_module, "solve_simplex_lp", record)
    as_t = lambda v: torch.as_tensor(v, dtype=torch.float64, device=DEVICE)  # noqa: E731
    epo_lp(as_t(c), as_t(losses), as_t(np.full(k, 1.0 / k)))
    monkeypatch.undo()
    return recorded


@pytest.mark.parametrize("kind", ["low_rank", "plain", "rank_one_positive"])
@pytest.mark.parametrize("k", [3, 10, 50])
def test_the_lps_of_epo_lp(monkeypatch: pytest.MonkeyPatch, k: int, kind: str) -> None:
    rng = np.random.default_rng(k + len(kind))
    if kind == "rank_one_positive":  # C a <= 0 everywhere: the balance LP with every row C alpha >= 0
        g = np.outer(rng.uniform(0.5, 1.5, k), rng.standard_normal(8))
    else:
        g = class_gradients(k, kind, rng)
    for losses in (rng.uniform(0.5, 3.0, k), np.ones(k)):  # balance mode, then descent mode
        lps = lps_of_epo(monkeypatch, g @ g.T, losses)
        assert len(lps) == (3 if losses.std() > 0 else 2)
        for lp in lps:
            assert_agrees_with_highs(*lp)


def balance_lp(gram: torch.Tensor, losses: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPO's balance LP at a uniform preference, built as ``epo_lp`` builds it."""
    k = gram.shape[0]
    rl, _, adj = _adjustments(losses, torch.full((k,), 1.0 / k, dtype=torch.float64))
    c, rl = gram.numpy(), rl.numpy()
    ca = c @ adj.numpy()
    worst = rl >= rl.max()
    rows = (ca <= 0) | worst
    return ca, c[rows], np.where(worst, 0.0, ca)[rows]


@pytest.mark.parametrize("k", [100, 300])
def test_benchmark_balance_lps(k: int) -> None:
    assert_matches_highs(*balance_lp(*benchmark_problem(k)))


def test_benchmark_descent_lp_with_a_zero_row() -> None:
    c = benchmark_problem(100)[0].numpy()  # C a = 0 at a uniform point: the row ``0 >= 0``
    assert_matches_highs(c.sum(0), np.vstack([np.zeros((1, 100)), c]), np.zeros(101))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [3, 8, 30])
def test_random_lps_agree_with_highs(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((int(rng.integers(1, 2 * k + 1)), k))
    h = m @ rng.dirichlet(np.full(k, 0.3)) + rng.normal(0.0, 0.3, m.shape[0])  # feasible or not
    assert_agrees_with_highs(rng.standard_normal(k), m, h)


# ---------------------------------------------------------------- degenerate LPs
@pytest.mark.parametrize("k", [4, 25])
def test_ties_in_the_cost(k: int) -> None:
    for lp in tie_lps(k):
        assert_matches_highs(*lp)


@pytest.mark.parametrize("k", [6, 40])
def test_zero_and_duplicate_rows(k: int) -> None:
    lps, feasible = zero_and_duplicate_row_lps(k)
    for lp in lps:
        assert_agrees_with_highs(*lp)
    for lp in feasible:
        assert_matches_highs(*lp)


@pytest.mark.parametrize("seed", range(3))
def test_integer_lps_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.integers(-3, 4, size=(15, 12)).astype(float)
    h = rng.integers(-3, 2, size=15).astype(float)
    assert_agrees_with_highs(rng.integers(-2, 3, size=12).astype(float), m, h)


def test_single_feasible_point() -> None:
    c = np.array([[1.0, -1.0], [-1.0, 1.0]])  # C x >= 0 only at x = (1/2, 1/2)
    x = assert_matches_highs(c.sum(0), c, np.zeros(2))
    np.testing.assert_allclose(x, [0.5, 0.5], atol=1e-8)


def test_no_rows_one_and_two_variables() -> None:
    x, feasible = solve(np.array([0.3, 2.0, -1.0]), np.zeros((0, 3)), np.zeros(0))
    assert feasible and x[1] >= 1.0 - 1e-9
    x, feasible = solve(np.array([1.0]), np.array([[2.0]]), np.array([1.0]))
    assert feasible and x.tolist() == [1.0]
    assert_infeasible(np.array([1.0]), np.array([[2.0]]), np.array([3.0]))
    assert_matches_highs(np.array([1.0, -1.0]), np.array([[-1.0, 1.0]]), np.array([0.2]))  # x[1] >= 0.6
    assert_matches_highs(np.array([2.0, 2.0]), np.zeros((1, 2)), np.zeros(1))  # tie, a zero row 0 >= 0
    assert_matches_highs(np.zeros(2), np.zeros((0, 2)), np.zeros(0))


# ---------------------------------------------------------------- infeasible LPs
def test_infeasible_lps() -> None:
    for lp in infeasible_lps():
        assert_infeasible(*lp)


@pytest.mark.parametrize("margin", [1e-2, 1e-4])
def test_infeasible_epo_shaped_lp_at_k200(margin: float) -> None:
    rng = np.random.default_rng(7)
    c = (lambda g: g @ g.T)(class_gradients(200, "low_rank", rng, p=128))
    t = float(np.median(c[0]))
    m = np.vstack([c, -c[:1]])  # c_0 x >= t and c_0 x <= t - margin max|c_0|; the other rows are inactive
    h = np.concatenate([[t], np.full(199, -np.abs(c).max()), [-t + margin * np.abs(c[0]).max()]])
    assert_infeasible(c.sum(0), m, h)


# ---------------------------------------------------------------- batches
def lps_of_one_shape() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """LPs with n = 20 and 21 rows (the shorter ones padded with zero rows ``0^T x >= 0``): first the four of
    ``infeasible_lps()``, then feasible ones, certified after different numbers of iterations (EPO's
    balance, restricted descent and relaxed descent LPs: 11, 12, 12; a random LP: 11; one without rows: 6)."""
    k, rows = 20, 21
    rng = np.random.default_rng(11)
    g = class_gradients(k, "low_rank", rng)
    m = rng.standard_normal((12, k))
    lps = [
        *infeasible_lps(),
        *epo_lps(g @ g.T, rng).values(),
        (rng.standard_normal(k), m, m @ rng.dirichlet(np.ones(k)) + rng.normal(0.0, 0.3, 12)),
        (rng.standard_normal(k), np.zeros((0, k)), np.zeros(0)),
    ]
    extra = [rows - len(m) for _, m, _ in lps]
    return [
        (cost, np.vstack([m, np.zeros((more, k))]), np.r_[h, np.zeros(more)])
        for (cost, m, h), more in zip(lps, extra, strict=True)
    ]


@pytest.mark.parametrize("max_iter", [7, 50])
def test_a_batch_gives_each_lp_its_own_result(max_iter: int) -> None:
    """Each LP of a batch follows its own iteration (its own step lengths and regularisation, frozen when it
    is done): LP by LP, the batch gives what solving it alone gives, without a host read; after 7 iterations
    some LPs of the batch are certified and others not yet. ``x`` is compared where the LP is feasible: that
    of an infeasible one is only some point of the simplex (polishing it on contradictory rows amplifies the
    rounding of the batched products)."""
    lps = lps_of_one_shape()
    as_t = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64), device=DEVICE)  # noqa: E731
    cost, m, h = (torch.stack([as_t(lp[part]) for lp in lps]) for part in range(3))
    with forbid_host_reads():
        x, feasible = solve_simplex_lps_ipm(cost, m, h, max_iter=max_iter)
    assert x.shape == cost.shape and x.dtype == torch.float64 and x.device == cost.device
    assert feasible.shape == (len(lps),) and feasible.dtype == torch.bool and feasible.device == cost.device
    x_np = x.cpu().numpy()
    assert np.isfinite(x_np).all() and x_np.min() >= 0.0 and np.abs(x_np.sum(axis=1) - 1.0).max() < 1e-12
    alone = [solve(*lp, max_iter=max_iter) for lp in lps]
    assert feasible.tolist() == [ok for _, ok in alone]
    infeasible = len(infeasible_lps())
    certified = feasible.tolist()[infeasible:]
    assert not any(feasible.tolist()[:infeasible])
    assert all(certified) if max_iter == 50 else 0 < sum(certified) < len(certified)
    for i, (x_alone, _) in enumerate(alone[infeasible:], start=infeasible):
        np.testing.assert_allclose(x_np[i], x_alone, rtol=0.0, atol=1e-12, err_msg=f"LP {i}")


def test_a_batch_without_rows() -> None:
    cost = np.random.default_rng(2).standard_normal((3, 6))
    cost_t = torch.as_tensor(cost, device=DEVICE)
    with forbid_host_reads():
        x, feasible = solve_simplex_lps_ipm(cost_t, cost_t.new_zeros(3, 0, 6), cost_t.new_zeros(3, 0))
    assert feasible.tolist() == [True] * 3
    for i in range(3):
        x_alone, _ = solve(cost[i], np.zeros((0, 6)), np.zeros(0))
        np.testing.assert_allclose(x[i].cpu().numpy(), x_alone, rtol=0.0, atol=1e-12)


# ---------------------------------------------------------------- odd input
def test_nonfinite_and_extreme_input_gives_a_finite_point() -> None:
    k = 5
    for cost, m, h in [
        (np.full(k, np.nan), np.ones((2, k)), np.zeros(2)),
        (np.ones(k), np.full((2, k), np.inf), np.zeros(2)),
        (np.ones(k), np.ones((2, k)), np.array([np.nan, 0.0])),
        (np.arange(k) * 1e-300, np.eye(k)[:2] * 1e300, np.array([1e300, 0.0])),
        (np.zeros(k), np.zeros((k + 1, k)), np.zeros(k + 1)),
    ]:
        solve(cost, m, h)  # the invariants: a finite point of the simplex


def test_float32_input() -> None:
    rng = np.random.default_rng(5)
    g = class_gradients(20, "common", rng)
    cost, m, h = epo_lps(g @ g.T, rng)["balance"]
    as32 = lambda v: torch.as_tensor(v, dtype=torch.float32, device=DEVICE)  # noqa: E731
    with forbid_host_reads():
        x, feasible = solve_simplex_lp_ipm(as32(cost), as32(m), as32(h))
    assert x.dtype == torch.float32 and bool(feasible)
    status, ref = highs(*[v.astype(np.float32).astype(np.float64) for v in (cost, m, h)])
    assert status == 0
    objective = float(as32(cost).double() @ x.double())
    assert abs(objective - ref) <= 1e-5 * abs(ref) + 1e-6 * np.abs(cost).max()


def test_fixed_budget_reports_what_it_reached() -> None:
    rng = np.random.default_rng(3)
    g = class_gradients(40, "low_rank", rng)
    cost, m, h = epo_lps(g @ g.T, rng)["balance"]
    assert_matches_highs(cost, m, h)
    _, feasible = solve(cost, m, h, max_iter=2)  # far from converged: not certified
    assert not feasible


# ---------------------------------------------------------------- property test
@st.composite
def small_lps(draw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small LPs, feasible or not: integer data (ties, degenerate vertices) or Gaussian around a point."""
    k = draw(st.integers(1, 7))
    rows = draw(st.integers(0, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        m = rng.integers(-3, 4, size=(rows, k)).astype(float)
        h = rng.integers(-3, 2, size=rows).astype(float)
        cost = rng.integers(-2, 3, size=k).astype(float)
    else:
        m = rng.standard_normal((rows, k))
        h = m @ rng.dirichlet(np.ones(k)) + rng.normal(0.0, 0.3, rows)
        cost = rng.standard_normal(k)
    return cost, m, h


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lp=small_lps())
def test_small_lps_agree_with_highs(lp: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    assert_agrees_with_highs(*lp)
