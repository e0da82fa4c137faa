"""Tests of plot_hf.moo.solvers, each against an independent reference (SciPy SLSQP / linprog, brute force)."""

from __future__ import annotations

import itertools
import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog, minimize

from plot_hf.moo.solvers import (
    SOLVERS,
    DegenerateGramianWarning,
    UnknownSolverError,
    cagrad,
    cagrad_objective,
    epo,
    epo_lp,
    get_solver,
    mgda,
    project_simplex,
    register_solver,
)
from plot_hf.moo.solvers import _cagrad as cagrad_module
from plot_hf.moo.solvers._cagrad import _solve_dual
from plot_hf.moo.solvers._epo import _adjustments

DEVICE = torch.device(os.environ.get("PLOT_HF_TEST_DEVICE", "cpu"))


def tensor(x, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=DEVICE)


def random_g(k: int, rank: int, scale: float, seed: int, p: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((k, rank)) @ rng.standard_normal((rank, p)) * math.sqrt(scale / rank)


def call(name: str, gramian: torch.Tensor, **kwargs) -> torch.Tensor:
    k = gramian.shape[0]
    if name == "epo" and "losses" not in kwargs:
        kwargs["losses"] = torch.linspace(1.0, 2.0, k, dtype=gramian.dtype, device=gramian.device)
    return SOLVERS[name](gramian, **kwargs)


# ---------------------------------------------------------------- references
def scipy_cagrad(
    a: np.ndarray, b: np.ndarray, c: float, n_random: int, seed: int = 0
) -> tuple[float, np.ndarray]:
    """Multi-start SLSQP (analytic gradient, tight ftol) on the CAGrad dual, solved on A / max diag(A)."""
    s = float(np.diag(a).max())
    a_n, c_n, eps = a / s, c / math.sqrt(s), 1e-8 / s  # f(w) = s * f_n(w) exactly
    k = len(b)

    def f(x):
        return x @ a_n @ b + c_n * math.sqrt(max(x @ a_n @ x, 0.0) + eps)

    def jac(x):
        return a_n @ b + c_n * (a_n @ x) / math.sqrt(max(x @ a_n @ x, 0.0) + eps)

    rng = np.random.default_rng(seed)
    vertices = np.eye(k)[: 3 if k <= 30 else 0]  # SLSQP costs O(K^3) per iteration: fewer starts at K = 100
    starts = [b, np.full(k, 1.0 / k), *vertices, *rng.dirichlet(np.ones(k), n_random)]
    cons = {"type": "eq", "fun": lambda x: 1.0 - x.sum(), "jac": lambda x: -np.ones(k)}
    best = (math.inf, None)
    for x0 in starts:
        res = minimize(
            f,
            x0,
            jac=jac,
            bounds=[(0, 1)] * k,
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 200 if k > 30 else 500},
        )
        x = np.clip(res.x, 0, None)
        x /= x.sum()
        best = min(best, (f(x) * s, x), key=lambda t: t[0])
    return best


def brute_force_min_norm(a: np.ndarray) -> float:
    """min w^T A w on the simplex: KKT system on every support, feasible best."""
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


def cagrad_c(a: np.ndarray, alpha: float = 0.5) -> float:
    return alpha * math.sqrt(a.mean() + 1e-8) + 1e-8


# ---------------------------------------------------------------- CAGrad
@pytest.mark.parametrize("k", [2, 5, 10, 30, 100])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("rank", ["one", "half", "full"])
def test_cagrad_dual_no_worse_than_scipy(k, scale, rank):
    r = {"one": 1, "half": max(1, k // 2), "full": k}[rank]
    g = random_g(k, r, scale, seed=k * 7 + r)
    a = g @ g.T
    b = np.random.default_rng(k).dirichlet(np.ones(k))
    c = cagrad_c(a)
    w = _solve_dual(tensor(a), tensor(b), c, max_iter=5000, tol=1e-9)
    ours = float(cagrad_objective(w, tensor(a), tensor(b), c))
    ref, _ = scipy_cagrad(a, b, c, n_random=5 if k <= 30 else 0)
    size = max(abs(ref), c * math.sqrt(np.diag(a).mean()))  # the size of the terms of the objective
    assert ours <= ref + 1e-6 * size
    assert abs(float(w.sum()) - 1) < 1e-12 and float(w.min()) >= 0


def adversarial_gramians():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((8, 50))
    dup = np.concatenate([g[:4], g[:4]])  # duplicate rows
    collinear = np.outer(rng.uniform(0.5, 2, 8), g[0]) + 1e-7 * rng.standard_normal((8, 50))
    huge = g.copy()
    huge[0] *= 1e3  # one class with a 1e6 larger squared norm
    opposed = np.concatenate([g[:1], -g[:1], g[1:4]])
    return {"duplicate": dup, "near_collinear": collinear, "one_huge": huge, "opposed": opposed}


@pytest.mark.parametrize("case", sorted(adversarial_gramians()))
def test_cagrad_adversarial_no_worse_than_scipy(case):
    g = adversarial_gramians()[case]
    a = g @ g.T
    k = a.shape[0]
    b = np.random.default_rng(1).dirichlet(np.ones(k))
    c = cagrad_c(a)
    w = _solve_dual(tensor(a), tensor(b), c, max_iter=5000, tol=1e-9)
    ours = float(cagrad_objective(w, tensor(a), tensor(b), c))
    ref, _ = scipy_cagrad(a, b, c, n_random=10)
    assert ours <= ref + 1e-6 * max(abs(ref), c * math.sqrt(np.diag(a).mean()))
    lam = cagrad(tensor(a), anchor=tensor(b))
    assert torch.isfinite(lam).all()


@pytest.mark.parametrize("alpha, rescale", [(0.5, 1), (0.5, 0), (0.4, 2), (1.3, 1), (0.0, 1)])
def test_cagrad_coefficients_give_reference_direction(alpha, rescale, monkeypatch):
    k = 7
    g = random_g(k, k, 1.0, seed=11)
    a = g @ g.T
    b = np.random.default_rng(2).dirichlet(np.ones(k))
    seen = []

    def spy(*args, **kwargs):
        seen.append(_solve_dual(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(cagrad_module, "_solve_dual", spy)
    lam = cagrad(tensor(a), anchor=tensor(b), alpha=alpha, rescale=rescale).cpu().numpy()
    c = cagrad_c(a, alpha)
    w = seen[0].cpu().numpy()  # the same w
    gw = g.T @ w
    direction = g.mean(0) + c / (np.linalg.norm(gw) + 1e-8) * gw
    direction = direction / {0: 1.0, 1: 1 + alpha**2, 2: 1 + alpha}[rescale] * k
    np.testing.assert_allclose(g.T @ lam, direction, rtol=1e-10, atol=1e-10 * np.abs(direction).max())


def test_cagrad_pinned_example():
    lam = cagrad(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
    torch.testing.assert_close(lam, torch.tensor([1.2, 1.2]))
    assert lam.dtype == torch.float32


def test_cagrad_zero_alpha_is_plain():
    a = random_g(5, 5, 1.0, seed=4)
    torch.testing.assert_close(
        cagrad(tensor(a @ a.T), alpha=0.0), torch.ones(5, dtype=torch.float64, device=DEVICE)
    )


# ---------------------------------------------------------------- MGDA
@pytest.mark.parametrize(
    "k, rank, scale",
    [(2, 2, 1.0), (3, 1, 1e-6), (4, 2, 1.0), (5, 5, 1e6), (6, 3, 1.0), (7, 7, 1.0), (7, 2, 1e3)],
)
def test_mgda_matches_brute_force(k, rank, scale):
    for seed in range(4):
        g = random_g(k, rank, scale, seed=seed)
        a = g @ g.T
        lam = mgda(tensor(a))
        w = lam.cpu().numpy() / k
        assert abs(w.sum() - 1) < 1e-9 and w.min() >= 0
        assert w @ a @ w <= brute_force_min_norm(a) + 1e-6 * np.diag(a).mean() * 1e-3


def test_mgda_kkt_common_descent():
    g = random_g(20, 20, 1.0, seed=5)
    g[:, 0] += 3.0  # a shared component: the min-norm point is away from 0
    a = g @ g.T
    w = mgda(tensor(a)).cpu().numpy() / 20
    d = g.T @ w
    assert (g @ d >= d @ d - 1e-8 * np.diag(a).max()).all()  # every class decreases to first order


def test_mgda_pinned_example():
    torch.testing.assert_close(mgda(torch.tensor([[4.0, 0.0], [0.0, 1.0]])), torch.tensor([0.4, 1.6]))


# ---------------------------------------------------------------- EPO
def epo_problem(k: int, seed: int, equal: bool = False):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((k, 30))
    g[:, 0] += 1.0
    losses = np.full(k, 1.5) if equal else rng.uniform(0.5, 3.0, k)
    pref = rng.dirichlet(np.ones(k))
    if equal:
        losses = 1.0 / pref  # r * l uniform: non-uniformity 0, descent mode
    return g @ g.T, losses, pref


def non_uniformity(rl: torch.Tensor) -> torch.Tensor:
    p = rl / rl.sum()
    return (p * torch.log(p * rl.numel())).sum()


@pytest.mark.parametrize("k", [3, 10, 40])
@pytest.mark.parametrize("seed", [0, 1])
def test_epo_balance_mode_matches_linprog_and_decreases_non_uniformity(k, seed):
    c, losses, pref = epo_problem(k, seed)
    alpha, mode = epo_lp(tensor(c), tensor(losses), tensor(pref))
    assert mode == "balance"
    alpha = alpha.cpu().numpy()
    assert abs(alpha.sum() - 1) < 1e-9 and alpha.min() >= 0
    rl, _, adj = _adjustments(tensor(losses), tensor(pref))
    ca = c @ adj.cpu().numpy()
    rl = rl.cpu().numpy()
    worst = rl >= rl.max()
    rows = (ca <= 0) | worst
    h = np.where(worst, 0.0, ca)[rows]
    tol = 1e-8 * np.abs(c).max()
    assert (c[rows] @ alpha >= h - tol).all()
    ref = linprog(
        -ca, A_ub=-c[rows], b_ub=-h, A_eq=np.ones((1, k)), b_eq=[1.0], bounds=(0, None), method="highs"
    )
    assert ref.status == 0
    assert alpha @ ca >= -ref.fun - 1e-9 * np.abs(ca).max()
    # first-order change of the non-uniformity along -G^T alpha: losses move by -t C alpha
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    mu = non_uniformity(torch.tensor(pref) * (torch.tensor(losses) - t * torch.tensor(c @ alpha)))
    (slope,) = torch.autograd.grad(mu, t)
    assert slope < 0
    lam = epo(tensor(c), losses=tensor(losses), anchor=tensor(pref))
    np.testing.assert_allclose(lam.cpu().numpy(), k * alpha, atol=1e-9)


@pytest.mark.parametrize("k", [3, 10, 40])
def test_epo_descent_mode_no_objective_increases(k):
    c, losses, pref = epo_problem(k, seed=k, equal=True)
    alpha, mode = epo_lp(tensor(c), tensor(losses), tensor(pref))
    assert mode == "descent"
    alpha = alpha.cpu().numpy()
    assert (c @ alpha >= -1e-9 * np.abs(c).max()).all()
    _, _, adj = _adjustments(tensor(losses), tensor(pref))
    ca = c @ adj.cpu().numpy()
    a_ub = -np.vstack([ca[None], c])
    b_ub = -np.concatenate([[min(ca.max(), 0.0)], np.zeros(k)])
    ref = linprog(
        -c.sum(0), A_ub=a_ub, b_ub=b_ub, A_eq=np.ones((1, k)), b_eq=[1.0], bounds=(0, None), method="highs"
    )
    assert ref.status == 0
    assert c.sum(0) @ alpha >= -ref.fun - 1e-9 * np.abs(c).max() * k


def test_epo_relaxed_and_infeasible_fall_back():
    # two exactly opposed classes: C alpha >= 0 only at alpha = (1/2, 1/2), d = 0
    c = np.array([[1.0, -1.0], [-1.0, 1.0]])
    alpha, mode = epo_lp(tensor(c), tensor([1.0, 1.0]), tensor([0.5, 0.5]), relax=True)
    assert mode == "relaxed"
    np.testing.assert_allclose(alpha.cpu().numpy(), [0.5, 0.5], atol=1e-12)
    lam = epo(tensor(c), losses=tensor([3.0, 1.0]))
    assert torch.isfinite(lam).all() and abs(float(lam.sum()) - 2) < 1e-9


def test_epo_pinned_example():
    lam = epo(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), losses=torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(lam, torch.tensor([2.0, 0.0]))


# ---------------------------------------------------------------- shared helpers
def test_project_simplex_matches_kkt():
    v = torch.randn(6, 9, dtype=torch.float64, device=DEVICE) * 3
    x = project_simplex(v)
    assert torch.allclose(x.sum(-1), torch.ones(6, dtype=torch.float64, device=DEVICE)) and (x >= 0).all()
    # KKT: v - x = theta on the support, <= theta off it
    theta = ((v - x) * (x > 0)).sum(-1) / (x > 0).sum(-1)
    on = x > 0
    assert torch.allclose((v - x)[on], theta.unsqueeze(-1).expand_as(v)[on])
    assert ((v - x)[~on] <= theta.unsqueeze(-1).expand_as(v)[~on] + 1e-12).all()


# ---------------------------------------------------------------- registry and validation
def test_registry():
    assert {"cagrad", "mgda", "epo"} <= set(SOLVERS)
    assert get_solver("cagrad") is cagrad and SOLVERS["mgda"] is mgda
    with pytest.raises(KeyError, match="valid names are .*cagrad.*epo.*mgda"):
        SOLVERS["pcgrad"]
    with pytest.raises(UnknownSolverError, match="pcgrad"):
        get_solver("pcgrad")
    with pytest.raises(ValueError, match="already registered"):
        register_solver("cagrad")(cagrad)


@pytest.mark.parametrize("name", ["cagrad", "mgda", "epo"])
def test_validation_errors(name):
    a = tensor(np.eye(3))
    with pytest.raises(ValueError, match=r"`gramian` must be a square K x K tensor, got \(3, 2\)"):
        call(name, a[:, :2])
    with pytest.raises(ValueError, match=r"`anchor` must have shape \(3,\).*got \(2,\)"):
        call(name, a, anchor=tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"`anchor` must be finite and non-negative, got \[-1.0"):
        call(name, a, anchor=tensor([-1.0, 1.0, 1.0]))


def test_solver_specific_validation():
    a = tensor(np.eye(3))
    with pytest.raises(ValueError, match=r"`alpha` must be a finite number >= 0, got -0.1"):
        cagrad(a, alpha=-0.1)
    with pytest.raises(ValueError, match=r"`rescale` must be one of \(0, 1, 2\), got 3"):
        cagrad(a, rescale=3)
    with pytest.raises(ValueError, match="`losses`.*required.*got None"):
        epo(a)
    with pytest.raises(ValueError, match=r"`losses` must be finite and non-negative"):
        epo(a, losses=tensor([1.0, -1.0, 1.0]))


# ---------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize("name", ["cagrad", "mgda", "epo"])
@pytest.mark.parametrize("case", ["k1", "zero", "nan", "inf"])
def test_degenerate_gives_plain_with_warning(name, case):
    k = 1 if case == "k1" else 4
    a = np.eye(k) if case == "k1" else np.zeros((k, k))
    if case in ("nan", "inf"):
        a = np.eye(k)
        a[1, 2] = a[2, 1] = math.nan if case == "nan" else math.inf
    gramian = tensor(a, dtype=torch.float32)
    with pytest.warns(DegenerateGramianWarning):
        lam = call(name, gramian)
    assert lam.dtype == torch.float32 and lam.device == gramian.device
    torch.testing.assert_close(lam, torch.ones(k, device=DEVICE))


@pytest.mark.parametrize("name", ["cagrad", "mgda", "epo"])
@pytest.mark.parametrize("rank, scale", [(1, 1.0), (1, 1e-12), (3, 1e-12), (3, 1e12), (8, 1e12)])
def test_rank_deficient_and_extreme_scales_are_finite(name, rank, scale):
    g = random_g(8, rank, scale, seed=rank)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateGramianWarning)  # these are solvable: no fallback
        lam = call(name, tensor(g @ g.T))
    assert torch.isfinite(lam).all() and lam.shape == (8,)


@st.composite
def degenerate_gramians(draw):
    k = draw(st.integers(1, 50))
    rank = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((k, rank)) @ rng.standard_normal((rank, 12))
    g *= 10.0 ** rng.uniform(-8, 8, (k, 1)) if draw(st.booleans()) else 1.0  # huge dynamic range
    zero = rng.random(k) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    g[zero] = 0.0
    if draw(st.booleans()) and k > 1:
        g[rng.integers(0, k, k // 2)] = g[0]  # duplicate rows
    return g @ g.T * 10.0 ** draw(st.integers(-12, 12))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=degenerate_gramians(), name=st.sampled_from(["cagrad", "mgda", "epo"]))
def test_fuzz_degenerate_gramians_finite(a, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateGramianWarning)
        lam = call(name, tensor(a))
    assert torch.isfinite(lam).all() and lam.shape == (a.shape[0],)


# ---------------------------------------------------------------- invariances
@pytest.mark.parametrize("name", ["cagrad", "mgda", "epo"])
def test_permutation_invariance(name):
    k = 9
    g = random_g(k, k, 1.0, seed=21)
    a = g @ g.T
    rng = np.random.default_rng(0)
    anchor, losses = rng.dirichlet(np.ones(k)), rng.uniform(0.5, 3, k)
    perm = rng.permutation(k)
    lam = call(name, tensor(a), anchor=tensor(anchor), losses=tensor(losses)).cpu().numpy()
    lam_p = call(
        name, tensor(a[np.ix_(perm, perm)]), anchor=tensor(anchor[perm]), losses=tensor(losses[perm])
    )
    np.testing.assert_allclose(lam_p.cpu().numpy(), lam[perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["cagrad", "mgda", "epo"])
@pytest.mark.parametrize("factor", [1e-3, 1e4])
def test_scale_invariance(name, factor):
    """Weights do not depend on the gradients' scale (CAGrad: up to its 1e-8 regularisers)."""
    k = 6
    g = random_g(k, k, 1.0, seed=8)
    a = g @ g.T
    lam = call(name, tensor(a)).cpu().numpy()
    lam_s = call(name, tensor(a * factor)).cpu().numpy()
    np.testing.assert_allclose(lam_s, lam, rtol=1e-4, atol=1e-4)
