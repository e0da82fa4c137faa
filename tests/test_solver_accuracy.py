"""Each solver against an independent reference: multi-start SciPy SLSQP and Clarabel's interior-point method
(CAGrad's dual), brute force over the supports and Clarabel (MGDA's min-norm point), Clarabel on EPO's linear
programs; and the optimality (KKT) conditions of each problem. Tested through the public seam (the solver's
coefficients), the dual weights recovered from them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.references import clarabel_cagrad, clarabel_epo, clarabel_min_norm, gramian, scaled_gramian
from plot_hf.moo.solvers import EPO, MGDA, CAGrad

from .solver_references import (
    brute_force_min_norm,
    cagrad_c,
    cagrad_dual_value,
    cagrad_weights,
    epo_problem,
    random_g,
    scipy_cagrad,
)


def family(name: str, k: int, seed: int) -> np.ndarray:
    a = scaled_gramian(k, seed=seed) if name == "scaled" else gramian(k, float(name == "common"), seed=seed)
    return a.numpy()


def cagrad_w(a: np.ndarray, b: np.ndarray, alpha: float = 0.5, rescale: int = 1) -> np.ndarray:
    result = CAGrad(alpha=alpha, rescale=rescale)(torch.as_tensor(a), anchor=torch.as_tensor(b))
    assert not result.degenerate
    return cagrad_weights(result.coefficients.numpy(), alpha, rescale)


# ---------------------------------------------------------------- CAGrad
@pytest.mark.parametrize("k", [2, 5, 10, 30, 100])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("rank", ["one", "half", "full"])
def test_cagrad_no_worse_than_multistart_slsqp(k, scale, rank):
    r = {"one": 1, "half": max(1, k // 2), "full": k}[rank]
    g = random_g(k, r, scale, seed=k * 7 + r)
    a = g @ g.T
    b = np.random.default_rng(k).dirichlet(np.ones(k))
    c = cagrad_c(a)
    ours = cagrad_dual_value(cagrad_w(a, b), a, b, c)
    ref = scipy_cagrad(a, b, c, n_random=5 if k <= 30 else 0)
    assert ours <= ref + 1e-6 * max(abs(ref), c * math.sqrt(np.diag(a).mean())), (ours, ref)


@pytest.mark.parametrize("name", ["common", "random", "scaled"])
@pytest.mark.parametrize("k", [10, 100, 300])
def test_cagrad_matches_clarabel(name, k):
    a = family(name, k, seed=k + 1)
    b = np.random.default_rng(k).dirichlet(np.ones(k))
    c = cagrad_c(a)
    ours = cagrad_dual_value(cagrad_w(a, b), a, b, c)
    ref = clarabel_cagrad(a, b, c)
    assert ours <= ref + 1e-5 * abs(ref) + 1e-8 * floor(a, c), (ours, ref)


def floor(a: np.ndarray, c: float) -> float:
    """``c sqrt(mean diag A)`` (``c ||g_k||``): the size of the dual's terms. Where ``F*`` is far smaller (the
    "scaled" family: ``F*`` ~ 1e-5 of it), Clarabel's optimum itself is accurate to ~1e-5 of ``F*`` only, and
    the tolerances are absolute, at a fraction of this size (the certificate's floor)."""
    return c * math.sqrt(float(np.diag(a).mean()))


@pytest.mark.parametrize("name", ["common", "scaled"])
def test_cagrad_satisfies_the_kkt_conditions(name):
    """On the simplex, ``grad F(w) = A b + c A w / sqrt(w^T A w + 1e-8)`` is minimal (to the certificate's
    accuracy) on the support of ``w`` and no smaller elsewhere."""
    k = 40
    a = family(name, k, seed=3)
    b = np.random.default_rng(1).dirichlet(np.ones(k))
    c = cagrad_c(a)
    w = cagrad_w(a, b)
    grad = a @ b + c * (a @ w) / math.sqrt(w @ a @ w + 1e-8)
    support = w > 1e-6 * w.max()
    size = np.abs(grad).max()
    assert grad.min() >= grad[support].max() - 1e-4 * size, (grad[support], grad.min())


@pytest.mark.parametrize("alpha, rescale", [(0.5, 1), (0.5, 0), (0.4, 2), (1.3, 1)])
def test_cagrad_direction_is_the_reference_formula(alpha, rescale):
    """``G^T lambda = K (g0 + c / ||G^T w|| G^T w) / s`` for the dual optimum ``w`` (Liu et al., eq. 4 / the
    reference ``cagrad``), with ``w`` from Clarabel: the directions agree to the accuracy of the optimum."""
    k = 7
    g = random_g(k, k, 1.0, seed=11)
    a = g @ g.T
    b = np.random.default_rng(2).dirichlet(np.ones(k))
    c = cagrad_c(a, alpha)
    lam = CAGrad(alpha=alpha, rescale=rescale)(torch.as_tensor(a), anchor=torch.as_tensor(b)).coefficients.numpy()
    w = cagrad_weights(lam, alpha, rescale)
    ref = clarabel_cagrad(a, b, c)
    assert cagrad_dual_value(w, a, b, c) <= ref + 1e-7 * abs(ref) + 1e-12
    gw = g.T @ w
    direction = k * (g.mean(0) + c / (np.linalg.norm(gw) + 1e-8) * gw) / {0: 1.0, 1: 1 + alpha**2, 2: 1 + alpha}[rescale]
    np.testing.assert_allclose(g.T @ lam, direction, rtol=1e-9, atol=1e-9 * np.abs(direction).max())


def _kink_gramian(kind: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    if kind == "zero_rows":  # absent classes: zero gradients, so 0 is in the hull
        g = rng.standard_normal((40, 30))
        g[::2] = 0.0
    else:  # collinear gradients of both signs plus 1e-7 noise: the hull is a needle through 0
        g = rng.standard_normal((40, 1)) @ rng.standard_normal((1, 30)) + 1e-7 * rng.standard_normal((40, 30))
    return g @ g.T


@pytest.mark.parametrize("kind", ["zero_rows", "needle"])
@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_cagrad_at_the_kink_matches_clarabel(kind, alpha):
    """0 in the hull and a large ``c``: the optimum sits next to ``G^T w = 0``, at the kink of the norm."""
    a = _kink_gramian(kind)
    b = np.random.default_rng(3).dirichlet(np.ones(40))
    c = cagrad_c(a, alpha)
    ours = cagrad_dual_value(cagrad_w(a, b, alpha), a, b, c)
    ref = clarabel_cagrad(a, b, c)
    assert ours <= ref + 1e-5 * abs(ref) + 1e-8 * floor(a, c), (ours, ref)


def test_cagrad_zero_alpha_is_plain():
    g = random_g(5, 5, 1.0, seed=4)
    lam = CAGrad(alpha=0.0)(torch.as_tensor(g @ g.T)).coefficients
    torch.testing.assert_close(lam, torch.ones(5, dtype=torch.float64))


# ---------------------------------------------------------------- MGDA
@pytest.mark.parametrize("k, rank, scale", [(2, 2, 1.0), (3, 1, 1e-6), (4, 2, 1.0), (5, 5, 1e6), (7, 7, 1.0), (7, 2, 1e3)])
def test_mgda_matches_brute_force(k, rank, scale):
    for seed in range(3):
        g = random_g(k, rank, scale, seed=seed)
        a = g @ g.T
        w = MGDA()(torch.as_tensor(a)).coefficients.numpy() / k
        assert abs(w.sum() - 1) < 1e-9 and w.min() >= 0
        assert w @ a @ w <= brute_force_min_norm(a) + 1e-9 * np.diag(a).mean()


@pytest.mark.parametrize("name", ["common", "random", "scaled"])
@pytest.mark.parametrize("k", [10, 100, 300])
def test_mgda_matches_clarabel(name, k):
    a = family(name, k, seed=k)
    w = MGDA()(torch.as_tensor(a)).coefficients.numpy() / k
    ours, ref = float(w @ a @ w), clarabel_min_norm(a)
    assert ours <= ref * (1 + 1e-5) + 1e-12 * np.diag(a).mean(), (ours, ref)


def test_mgda_kkt_common_descent():
    """``d = G^T w*``: every class decreases to first order, ``g_k^T d >= ||d||^2`` (Desideri 2012)."""
    g = random_g(20, 20, 1.0, seed=5)
    g[:, 0] += 3.0
    a = g @ g.T
    d = g.T @ (MGDA()(torch.as_tensor(a)).coefficients.numpy() / 20)
    assert (g @ d >= d @ d - 1e-8 * np.diag(a).max()).all()


# ---------------------------------------------------------------- EPO
def non_uniformity(rl: torch.Tensor) -> torch.Tensor:
    p = rl / rl.sum()
    return (p * torch.log(p * rl.numel())).sum()


@pytest.mark.parametrize("k", [3, 10, 40, 100])
@pytest.mark.parametrize("balanced", [False, True])
def test_epo_solves_the_lp_that_clarabel_picks(k, balanced):
    """EPO's weights are optimal (1e-7) and feasible (1e-8) in the first feasible LP of its chain of modes."""
    c, losses, pref = epo_problem(k, seed=k, balanced=balanced)
    alpha = EPO()(torch.as_tensor(c), losses=torch.as_tensor(losses), anchor=torch.as_tensor(pref)).coefficients.numpy() / k
    ref, cost, mat, rhs = clarabel_epo(c, losses, pref)
    scale = np.maximum(np.abs(mat).max(axis=1), np.abs(rhs))
    scale = np.maximum(scale, 1e-8 * scale.max())  # rows of rounding noise (C a at r l uniform): absolute
    assert alpha.min() >= 0 and abs(alpha.sum() - 1) < 1e-9
    assert ((rhs - mat @ alpha) / scale).max() <= 1e-8
    assert cost @ alpha >= ref - 1e-7 * max(abs(ref), np.abs(cost).max())


@pytest.mark.parametrize("k", [3, 10, 40])
def test_epo_balance_mode_decreases_the_non_uniformity(k):
    c, losses, pref = epo_problem(k, seed=k)
    alpha = EPO()(torch.as_tensor(c), losses=torch.as_tensor(losses), anchor=torch.as_tensor(pref)).coefficients / k
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    rl = torch.as_tensor(pref) * (torch.as_tensor(losses) - t * (torch.as_tensor(c) @ alpha))
    (slope,) = torch.autograd.grad(non_uniformity(rl), t)
    assert slope < 0


@pytest.mark.parametrize("k", [3, 10, 40])
def test_epo_descent_mode_increases_no_loss(k):
    c, losses, pref = epo_problem(k, seed=k, balanced=True)
    alpha = EPO()(torch.as_tensor(c), losses=torch.as_tensor(losses), anchor=torch.as_tensor(pref)).coefficients.numpy() / k
    assert (c @ alpha >= -1e-9 * np.abs(c).max()).all()


def test_epo_opposed_classes_fall_back_to_the_one_feasible_point():
    """Two exactly opposed classes: ``C alpha >= 0`` only at ``(1/2, 1/2)`` (``d = 0``)."""
    c = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    for relax in (False, True):
        lam = EPO(relax=relax)(c, losses=torch.tensor([1.0, 1.0], dtype=torch.float64)).coefficients
        torch.testing.assert_close(lam, torch.tensor([1.0, 1.0], dtype=torch.float64), atol=1e-9, rtol=0)
    lam = EPO()(c, losses=torch.tensor([3.0, 1.0], dtype=torch.float64)).coefficients
    assert bool(torch.isfinite(lam).all()) and abs(float(lam.sum()) - 2) < 1e-9


def test_solver_table_runs_every_solver_against_its_reference(capsys):
    """``benchmarks/solver_table.py`` at tiny sizes: a row per registered solver and family, small gaps."""
    from benchmarks import solver_table

    solver_table.main(["--ks", "6", "--reps", "1", "--epo-highs"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| common")
            or line.startswith("| random") or line.startswith("| scaled")]
    assert sorted({row[2] for row in rows}) == sorted([*solver_table.SOLVERS, "epo-highs"])
    assert len(rows) == 3 * (len(solver_table.SOLVERS) + 1)
    for row in rows:
        gap, violation = float(row[4]), float(row[5].rstrip(" |"))
        assert gap <= 1e-5 and violation <= 1e-8, row
