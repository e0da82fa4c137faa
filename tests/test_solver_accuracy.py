"""The solvers against an independent high-accuracy reference (Clarabel's interior-point method on the conic
form of each problem), and their sync-free mode (no host read of any tensor value, as on an accelerator)
against the early-exit mode."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.references import clarabel_cagrad, clarabel_min_norm, gramian, scaled_gramian
from plot_hf.moo.solvers import SOLVERS, DegenerateGramianWarning, cagrad_objective, epo_lp, min_norm_weights
from plot_hf.moo.solvers import _cagrad as cagrad_module
from plot_hf.moo.solvers import _cagrad_working_set as cagrad_working_set_module
from plot_hf.moo.solvers import _working_set as working_set_module
from plot_hf.moo.solvers._cagrad import _solve_dual
from plot_hf.moo.solvers._cagrad_ipm import cagrad_dual_ipm
from plot_hf.moo.solvers._cagrad_working_set import cagrad_dual_working_set
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


def _cagrad_dual_both_modes(a: torch.Tensor, anchor: torch.Tensor, c: float) -> dict[str, float]:
    """The dual objective reached with the default budgets: stopping at convergence (host reads), and the
    fixed budget of the sync-free mode (run without any host read)."""
    w_host = _solve_dual(a, anchor, c, max_iter=cagrad_module._MAX_ITER_EARLY_EXIT, tol=1e-9, early_exit=True)
    with forbid_host_reads():
        w_device = _solve_dual(a, anchor, c, max_iter=cagrad_module._MAX_ITER_SYNC_FREE, tol=1e-9, early_exit=False)
    for w in (w_host, w_device):
        assert abs(float(w.sum()) - 1) < 1e-12 and float(w.min()) >= 0
    return {mode: float(cagrad_objective(w, a, anchor, c)) for mode, w in (("early exit", w_host), ("sync-free", w_device))}


@pytest.mark.parametrize(("k", "common"), CASES)
def test_cagrad_dual_default_budgets_match_clarabel(k: int, common: float) -> None:
    """Both modes, with their default iteration budgets, reach Clarabel's objective to 1e-5 (relative)."""
    a = gramian(k, common, seed=k + 2)
    anchor = torch.as_tensor(np.random.default_rng(k + 1).dirichlet(np.ones(k)))
    c = 0.5 * math.sqrt(float(a.mean()) + 1e-8) + 1e-8
    ref = clarabel_cagrad(a.numpy(), anchor.numpy(), c)
    for mode, ours in _cagrad_dual_both_modes(a, anchor, c).items():
        assert ours <= ref + 1e-5 * abs(ref), (mode, ours, ref)


HARD_CASES = [(k, decades, seed) for k in (10, 76, 100, 300) for decades in (2.0, 4.5) for seed in (0, 1)]


@pytest.mark.parametrize(("k", "decades", "seed"), HARD_CASES)
def test_cagrad_dual_on_ill_conditioned_gramians_matches_clarabel(k: int, decades: float, seed: int) -> None:
    """Nearly orthogonal gradients with norms over ``decades`` decades (``scaled_gramian``: condition numbers
    up to 1e9, the hull nearly contains 0), as late in training: where 300 FISTA iterations left relative gaps
    of up to 400%, both modes reach Clarabel's objective to 1e-5 (relative)."""
    a = scaled_gramian(k, seed, decades)
    anchor = torch.as_tensor(np.random.default_rng(k + seed).dirichlet(np.ones(k)))
    if seed == 0:
        anchor = torch.full((k,), 1.0 / k, dtype=torch.float64)
    c = 0.5 * math.sqrt(float(a.mean()) + 1e-8) + 1e-8
    ref = clarabel_cagrad(a.numpy(), anchor.numpy(), c)
    for mode, ours in _cagrad_dual_both_modes(a, anchor, c).items():
        assert ours <= ref + 1e-5 * abs(ref), (mode, ours, ref)


def _spy_on_whole_problem_solves(monkeypatch) -> list[bool]:
    """The ``early_exit`` flag of each whole-problem interior-point solve made by ``_solve_dual``."""
    calls: list[bool] = []
    ipm = cagrad_module.cagrad_dual_ipm

    def spy(*args, **kwargs):
        calls.append(kwargs["early_exit"])
        return ipm(*args, **kwargs)

    monkeypatch.setattr(cagrad_module, "cagrad_dual_ipm", spy)
    return calls


@pytest.mark.parametrize("family", ["random", "common", "scaled"])
def test_cagrad_dual_on_working_sets_matches_clarabel(family: str, monkeypatch) -> None:
    """From K = 400 on, the early-exit mode solves restricted problems on working sets of classes and
    certifies the result on the whole problem: at K = 600 no whole-problem solve is needed (sparse optima),
    and both modes match Clarabel to 1e-5 (relative)."""
    k = 600
    a = scaled_gramian(k, 4, 4.5) if family == "scaled" else gramian(k, float(family == "common"), seed=4)
    anchor = torch.as_tensor(np.random.default_rng(k).dirichlet(np.ones(k)))
    c = 0.5 * math.sqrt(float(a.mean()) + 1e-8) + 1e-8
    ref = clarabel_cagrad(a.numpy(), anchor.numpy(), c)
    calls = _spy_on_whole_problem_solves(monkeypatch)
    for mode, ours in _cagrad_dual_both_modes(a, anchor, c).items():
        assert ours <= ref + 1e-5 * abs(ref), (mode, ours, ref)
    assert calls == [False]  # the sync-free mode only


def test_cagrad_dual_dense_optimum_falls_back_to_the_whole_problem(monkeypatch) -> None:
    """Orthogonal gradients of similar norms put every class in the optimum: the working set would pass half
    of the classes, and the whole problem is solved instead (same result)."""
    k = 450
    a = torch.diag(1.0 + torch.rand(k, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    anchor = torch.full((k,), 1.0 / k, dtype=torch.float64)
    c = 0.5 * math.sqrt(float(a.mean()) + 1e-8) + 1e-8
    assert cagrad_dual_working_set(a, anchor, c, max_iter=60, tol=1e-9) is None
    calls = _spy_on_whole_problem_solves(monkeypatch)
    w = _solve_dual(a, anchor, c, max_iter=60, tol=1e-9, early_exit=True)
    assert calls == [True]
    expected = cagrad_dual_ipm(a, anchor, c, max_iter=60, tol=1e-9, early_exit=True)
    torch.testing.assert_close(w, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("family", "k"), [("common", 100), ("scaled", 80), ("random", 300)])
def test_cagrad_dual_working_set_grown_from_one_class_matches_clarabel(family: str, k: int, monkeypatch) -> None:
    """Started from a single class and grown only by the classes the restricted dual prices as improving,
    the working set reaches Clarabel's objective (to 1e-5 relative) over several rounds: the certificate never
    accepts a restricted optimum that is not the whole problem's."""
    a = scaled_gramian(k, 6, 2.0) if family == "scaled" else gramian(k, float(family == "common"), seed=6)
    anchor = torch.as_tensor(np.random.default_rng(k + 6).dirichlet(np.ones(k)))
    c = 0.5 * math.sqrt(float(a.mean()) + 1e-8) + 1e-8
    _start_working_sets_from_one_class(monkeypatch)
    sizes: list[int] = []
    restricted = cagrad_working_set_module.solve_cagrad_dual

    def spy(a_s, *args, **kwargs):
        sizes.append(a_s.shape[0])
        return restricted(a_s, *args, **kwargs)

    monkeypatch.setattr(cagrad_working_set_module, "solve_cagrad_dual", spy)
    w = cagrad_dual_working_set(a, anchor, c, max_iter=60, tol=1e-9)
    assert w is not None and abs(float(w.sum()) - 1) < 1e-12 and float(w.min()) >= 0
    ours = float(cagrad_objective(w, a, anchor, c))
    ref = clarabel_cagrad(a.numpy(), anchor.numpy(), c)
    assert ours <= ref + 1e-5 * abs(ref), (ours, ref)
    assert len(sizes) >= 3 and sizes[0] == 1 and sizes == sorted(sizes), sizes


def _start_working_sets_from_one_class(monkeypatch) -> None:
    """Working sets that start with one class, grow by one or by doubling, and never give up for size."""
    monkeypatch.setattr(working_set_module, "_FIRST_SIZE", 1)
    monkeypatch.setattr(working_set_module, "_FIRST_FRACTION", 10**9)
    monkeypatch.setattr(working_set_module, "_MIN_GROWTH", 1)
    monkeypatch.setattr(working_set_module, "_MAX_FRACTION", 1.0)


def _kink_gramian(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    if kind == "zero_rows":  # absent classes: zero gradients, so 0 is in the hull
        g = torch.randn(40, 30, generator=gen, dtype=torch.float64)
        g[::2] = 0.0
    else:  # collinear gradients of both signs plus 1e-7 noise: the hull is a needle through 0
        g = torch.randn(40, 1, generator=gen, dtype=torch.float64) * torch.randn(1, 30, generator=gen, dtype=torch.float64)
        g = g + 1e-7 * torch.randn(40, 30, generator=gen, dtype=torch.float64)
    return g @ g.T


@pytest.mark.parametrize("kind", ["zero_rows", "needle"])
@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_cagrad_dual_at_the_kink_matches_clarabel(kind: str, alpha: float) -> None:
    """0 in the hull of the gradients; with a large ``c`` the optimum sits next to ``G^T w = 0``, at the kink
    of ``sqrt(w^T A w + 1e-8)`` (curvature ~1e4 c there), where Newton's method on the dual itself stalls;
    the interior-point method on the conic form does not, in both modes."""
    a = _kink_gramian(kind)
    k = a.shape[0]
    anchor = torch.as_tensor(np.random.default_rng(3).dirichlet(np.ones(k)))
    c = alpha * math.sqrt(float(a.mean()) + 1e-8) + 1e-8
    ref = clarabel_cagrad(a.numpy(), anchor.numpy(), c)
    for mode, ours in _cagrad_dual_both_modes(a, anchor, c).items():
        assert ours <= ref + 1e-5 * abs(ref), (mode, ours, ref)


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_cagrad_sync_free_mode_issues_few_operations() -> None:
    """On an accelerator every torch operation is a kernel launch: the sync-free solve (fixed budget of 24
    interior-point iterations) issues about 7,900 of them, whatever K (FISTA's 300 iterations: about 40,700)."""
    a = scaled_gramian(100, 0, 4.5)
    with _CountOps() as ops:
        SOLVERS["cagrad"](a, early_exit=False)
    assert ops.count <= 8000, ops.count


def test_epo_sync_free_mode_issues_few_operations() -> None:
    """EPO's three LPs are solved as one batch by the interior-point method (50 iterations): the sync-free
    solve issues about 28,350 torch operations at K = 100 (and K = 1000), against 71,934 when the three LPs
    were solved one after the other."""
    k = 100
    a = gramian(k, 1.0, seed=k)
    losses = torch.rand(k, generator=torch.Generator().manual_seed(k), dtype=torch.float64) + 0.5
    with _CountOps() as ops:
        SOLVERS["epo"](a, losses=losses, early_exit=False)
    assert ops.count <= 29000, ops.count


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
