"""The solvers against an independent high-accuracy reference (Clarabel's interior-point method on the conic
form of each problem), and their sync-free mode (no host read of any tensor value, as on an accelerator)
against the early-exit mode."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from benchmarks.references import clarabel_cagrad, clarabel_min_norm, gramian
from plot_hf.moo.solvers import SOLVERS, DegenerateGramianWarning, cagrad_objective, epo_lp, min_norm_weights
from plot_hf.moo.solvers._cagrad import _solve_dual
from plot_hf.moo.solvers._epo import _adjustments

from .helpers import HostReadError, forbid_host_reads

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


def _epo_lp_value(name: str, alpha: torch.Tensor, a: torch.Tensor, losses: torch.Tensor) -> tuple[float, float]:
    """(objective, largest violation relative to the row scale) of ``alpha`` in the LP that ``name`` solves."""
    rl, _, adj = _adjustments(losses, torch.full_like(losses, 1.0 / losses.numel()))
    ca = a @ adj
    if name == "balance":
        positive, worst = ca > 0, rl >= rl.max()
        rows = (~positive | worst) if bool(positive.any()) else torch.ones_like(positive)
        m, h, cost = a[rows], torch.where(worst, torch.zeros_like(ca), ca)[rows], ca
    elif name == "descent":
        m = torch.cat([ca[None], a])
        h = torch.cat([torch.clamp(ca.max(), max=0.0).reshape(1), torch.zeros_like(ca)])
        cost = a.sum(dim=0)
    else:
        m, h, cost = a, torch.zeros_like(ca), a.sum(dim=0)
    scale = torch.maximum(m.abs().amax(dim=1), h.abs()).clamp_min(1e-300)
    return float(cost @ alpha), float(((h - m @ alpha) / scale).max())


@pytest.mark.parametrize("k", [2, 10, 100, 300])
@pytest.mark.parametrize("common", [0.0, 1.0])
@pytest.mark.parametrize("scale", [1.0, 1e-14])
def test_epo_sync_free_mode_reads_nothing_and_solves_the_same_lp(k: int, common: float, scale: float) -> None:
    """EPO on the device (interior point, no host read) picks the mode the host's simplex method picks and
    reaches the same LP optimum (the weights may differ only where the optimum is not unique), also for a
    Gramian of tiny scale (late in training)."""
    a = gramian(k, common, seed=k + 5) * scale
    losses = torch.rand(k, generator=torch.Generator().manual_seed(k), dtype=torch.float64) + 0.5
    alpha_host, mode = epo_lp(a, losses, torch.full((k,), 1.0 / k, dtype=torch.float64))
    with forbid_host_reads():
        got = SOLVERS["epo"](a, losses=losses, early_exit=False)
    alpha = got / k
    assert abs(float(alpha.sum()) - 1) < 1e-9 and float(alpha.min()) >= 0
    ours, violation = _epo_lp_value(mode, alpha, a, losses)
    ref, _ = _epo_lp_value(mode, alpha_host, a, losses)
    assert violation <= 1e-8, (mode, violation)
    assert abs(ours - ref) <= 1e-6 * abs(ref) + 1e-9 * float(a.abs().max()), (mode, ours, ref)


def test_epo_sync_free_mode_falls_back_like_the_host_mode() -> None:
    """Losses already balanced (mu <= eps): descent mode on both paths; ``relax=True``: the relaxed LP."""
    k = 12
    a = gramian(k, 0.0, seed=2)
    losses = torch.ones(k, dtype=torch.float64)
    for relax, mode in ((False, "descent"), (True, "relaxed")):
        alpha_host, host_mode = epo_lp(a, losses, torch.full((k,), 1.0 / k, dtype=torch.float64), relax=relax)
        assert host_mode == mode
        with forbid_host_reads():
            alpha = SOLVERS["epo"](a, losses=losses, relax=relax, early_exit=False) / k
        ours, violation = _epo_lp_value(mode, alpha, a, losses)
        ref, _ = _epo_lp_value(mode, alpha_host, a, losses)
        assert violation <= 1e-8 and abs(ours - ref) <= 1e-6 * abs(ref) + 1e-12, (mode, ours, ref)


@pytest.mark.parametrize("bad", ["zero", "nan", "inf"])
def test_epo_sync_free_mode_degenerate_gives_plain_silently(bad: str) -> None:
    a = gramian(6, 1.0, seed=1)
    a = {"zero": torch.zeros_like(a), "nan": a.fill_diagonal_(float("nan")), "inf": a * float("inf")}[bad]
    losses = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateGramianWarning)
        with forbid_host_reads():
            got = SOLVERS["epo"](a, losses=losses, early_exit=False)
    torch.testing.assert_close(got, torch.ones(6, dtype=a.dtype))
