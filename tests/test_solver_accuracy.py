"""The solvers against an independent high-accuracy reference (Clarabel's interior-point method on the conic
form of each problem), and their sync-free mode (no host read of any tensor value, as on an accelerator)
against the early-exit mode."""

from __future__ import annotations

import math
import warnings

import clarabel
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from plot_hf.moo.solvers import SOLVERS, DegenerateGramianWarning, cagrad_objective, min_norm_weights
from plot_hf.moo.solvers._cagrad import _solve_dual

from .helpers import HostReadError, forbid_host_reads


def gramian(k: int, common: float, seed: int) -> torch.Tensor:
    """``G G^T`` for K class gradients in 512 dimensions: a rank-64 part plus noise, plus (``common > 0``) a
    shared direction as in real per-class gradients. Without it, for K >~ 300 the hull nearly contains 0."""
    gen = torch.Generator().manual_seed(seed)
    r = min(k, 64)
    g = torch.randn(k, r, generator=gen, dtype=torch.float64) @ torch.randn(r, 512, generator=gen, dtype=torch.float64)
    g = g + 0.3 * torch.randn(k, 512, generator=gen, dtype=torch.float64)
    g = g + common * 8.0 * torch.randn(512, generator=gen, dtype=torch.float64)
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
    return float(cagrad_objective(torch.as_tensor(w), torch.as_tensor(a), torch.as_tensor(anchor), c))


CASES = [(k, common) for k in (10, 100, 300) for common in (0.0, 1.0)]


@pytest.mark.parametrize(("k", "common"), CASES)
def test_mgda_matches_clarabel(k: int, common: float) -> None:
    a = gramian(k, common, seed=k)
    w = min_norm_weights(a)
    ours, ref = float(w @ a @ w), clarabel_min_norm(a.numpy())
    scale = float(a.diagonal().mean())
    assert abs(float(w.sum()) - 1) < 1e-12 and float(w.min()) >= 0
    assert ours <= ref * (1 + 1e-5) + 1e-12 * scale, (ours, ref)


@pytest.mark.parametrize(("k", "common"), CASES)
def test_cagrad_dual_matches_clarabel(k: int, common: float) -> None:
    a = gramian(k, common, seed=k + 1)
    anchor = torch.as_tensor(np.random.default_rng(k).dirichlet(np.ones(k)))
    c = 0.5 * math.sqrt(float(a.mean()) + 1e-8) + 1e-8
    w = _solve_dual(a, anchor, c, max_iter=2000, tol=1e-9)
    ours = float(cagrad_objective(w, a, anchor, c))
    ref = clarabel_cagrad(a.numpy(), anchor.numpy(), c)
    assert ours <= ref + 1e-5 * abs(ref), (ours, ref)


def test_mgda_at_k_1000_matches_clarabel() -> None:
    a = gramian(1000, 0.0, seed=7)  # the hard case: the hull nearly contains the origin
    w = min_norm_weights(a)
    ours, ref = float(w @ a @ w), clarabel_min_norm(a.numpy())
    assert ours <= ref * (1 + 1e-5) + 1e-12 * float(a.diagonal().mean()), (ours, ref)


@pytest.mark.parametrize("name", ["cagrad", "mgda"])
@pytest.mark.parametrize("k", [2, 10, 100])
def test_sync_free_mode_reads_nothing_and_agrees(name: str, k: int) -> None:
    a = gramian(k, 1.0, seed=3)
    anchor = torch.as_tensor(np.random.default_rng(k).dirichlet(np.ones(k)))
    kwargs = {"anchor": anchor} if name == "cagrad" else {}
    expected = SOLVERS[name](a, **kwargs)
    with forbid_host_reads():
        got = SOLVERS[name](a, early_exit=False, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_forbid_host_reads_catches_a_read() -> None:
    with forbid_host_reads(), pytest.raises(HostReadError):
        SOLVERS["cagrad"](gramian(5, 1.0, seed=0), early_exit=True)


@pytest.mark.parametrize("name", ["cagrad", "mgda"])
@pytest.mark.parametrize("bad", ["zero", "nan", "inf"])
def test_sync_free_mode_degenerate_gives_plain_silently(name: str, bad: str) -> None:
    a = gramian(6, 1.0, seed=1)
    a = {"zero": torch.zeros_like(a), "nan": a.fill_diagonal_(float("nan")), "inf": a * float("inf")}[bad]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateGramianWarning)
        with forbid_host_reads():
            got = SOLVERS[name](a, early_exit=False)
    torch.testing.assert_close(got, torch.ones(6, dtype=a.dtype))
