"""The whole PLOT step against a hand-written reference step (the reference code's order of operations:
full re-forward at the perturbed point, one backward per class, gradients written into .grad)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import plot_hf  # noqa: F401
from plot_hf.distributed import SingleProcess
from plot_hf.models.introspection import class_prior_anchor
from plot_hf.moo.class_groups import frequency_groups, group_anchor_table
from plot_hf.moo.gramian_sources import OnePassSplit, PerClassVJPs, SketchedGramian
from plot_hf.moo.policies import Amortised, SolveEveryStep
from plot_hf.moo.solvers import CAGrad
from plot_hf.step import Solve

from .helpers import Wrapper, forbid_host_reads
from .step_helpers import build_step, run_step

RHO, VC = 0.05, 0.1


def _reference_step(model, x, y, counts, keep_fraction, stage="layer3"):
    """Expected gradient per parameter name, and the clean loss; ``stage`` holds the MOO parameters."""
    named = dict(model.named_parameters())
    stage_names = [n for n in named if n.startswith(f"timm_model.{stage}.")]
    other_names = [n for n in named if n not in stage_names]
    stage_params = [named[n] for n in stage_names]
    # 1. SAM direction at the clean point.
    clean = F.cross_entropy(model(x), y, reduction="none").mean()
    grads = torch.autograd.grad(clean, stage_params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    epsilon = [RHO * g / norm for g in grads]
    saved = [p.detach().clone() for p in stage_params]
    with torch.no_grad():
        for p, e in zip(stage_params, epsilon, strict=True):
            p.add_(e)
    # 2. Full forward at the perturbed point; the total loss gives the other parameters' gradients.
    losses = F.cross_entropy(model(x), y, reduction="none")
    classes = y.unique()
    stds = [losses[y == c].std() for c in classes if (y == c).sum() >= 2]
    total = losses.mean() + VC * torch.stack(stds).mean()
    other_grads = torch.autograd.grad(total, [named[n] for n in other_names], retain_graph=True)
    # 3. One backward call per class; CAGrad; the direction replaces the stage's gradient.
    rows = []
    for c in classes:
        g = torch.autograd.grad(losses[y == c].sum() / len(y), stage_params, retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    G = torch.stack(rows)
    anchor = class_prior_anchor(counts)[classes].double()
    coefficients = CAGrad(alpha=0.5, rescale=1)((G @ G.T).double(), anchor=anchor / anchor.sum()).coefficients
    direction = torch.split(coefficients.float() @ G, [p.numel() for p in stage_params])
    with torch.no_grad():
        for p, s, e in zip(stage_params, saved, epsilon, strict=True):
            p.copy_(s + keep_fraction * e)
    expected = {n: d.view_as(named[n]) for n, d in zip(stage_names, direction, strict=True)}
    expected.update(dict(zip(other_names, other_grads, strict=True)))
    return expected, clean.detach()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@contextlib.contextmanager
def _reads_only_classes_and_the_solve(monkeypatch, host_reads: bool):
    """Without ``host_reads``: every host read is an error but the classes present (``torch.unique``) and the
    solve phase (:class:`plot_hf.step.Solve`: one copy of the Gramian, solved on the host)."""
    if host_reads:
        yield
        return
    with forbid_host_reads(allow=("unique",)) as ban:
        real = Solve.__call__

        def solve(*args, **kwargs):
            with ban.lifted():
                return real(*args, **kwargs)

        monkeypatch.setattr(Solve, "__call__", solve)
        yield



@pytest.mark.parametrize(
    ("keep_fraction", "host_reads", "stage"),
    [(0.0, True, None), (0.5, True, None), (0.5, False, None), (0.0, True, "layer3.4")],
)
def test_plot_step_equals_reference_step(device, keep_fraction, host_reads, stage, monkeypatch):
    """Also in the accelerators' mode (``host_reads=False``): the only value read on the host is the set of
    classes present (``torch.unique``); the solver, the finiteness gates and the diagnostics stay on the device.
    ``stage="layer3.4"``: the MOO parameters are the last block of the last stage (a module nested in it); the
    blocks before it are replayed from the recorded forward and get the total loss's gradient."""
    torch.manual_seed(0)
    counts = [50, 30, 20, 12, 8, 5]
    model = Wrapper(timm.create_model("resnet32_cifar", num_classes=6)).to(device).train()
    reference_model = copy.deepcopy(model)
    one_forward_model = copy.deepcopy(model)
    x = torch.randn(32, 3, 16, 16, device=device)
    y = torch.randint(0, 6, (32,), device=device)
    expected, expected_clean = _reference_step(reference_model, x, y, counts, keep_fraction, stage or "layer3")

    step = build_step(model, counts, host_reads=host_reads, moo_modules=None if stage is None else [stage],
                      moo_gradient_method="loop", moo_solver="cagrad", cagrad_alpha=0.5, cagrad_rescale=1,
                      sam_rho=RHO, sam_keep_fraction=keep_fraction, vc_weight=VC)
    assert step.moo.stage_name == f"timm_model.{stage or 'layer3'}"
    assert isinstance(step.gramian_source, PerClassVJPs) and isinstance(step.policy, SolveEveryStep)
    with _reads_only_classes_and_the_solve(monkeypatch, host_reads):
        clean, diagnostics = run_step(step, model, x, y)
    torch.testing.assert_close(clean, expected_clean)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=2e-4, atol=1e-6, msg=name)
    for (name, p), q in zip(model.named_parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), msg=name)
    # Running statistics are updated once, by the clean forward (the reference updates them twice).
    one_forward_model(x)
    for (name, b), b1 in zip(model.named_buffers(), one_forward_model.buffers(), strict=True):
        torch.testing.assert_close(b, b1, msg=name)
    assert diagnostics.num_classes == len(y.unique())
    assert 0.0 <= diagnostics.conflict_fraction <= 1.0


def test_amortised_steps_without_host_reads_equal_those_with(device, monkeypatch):
    """Amortised solving (``solve_every=2``: solve, reuse, solve) in the accelerators' mode reads nothing but
    the classes present and gives the gradients of the host-reading mode."""
    torch.manual_seed(0)
    models = [Wrapper(timm.create_model("resnet32_cifar", num_classes=6)).to(device).train()]
    models.append(copy.deepcopy(models[0]))
    steps = [
        build_step(m, [1] * 6, host_reads=host_reads, moo_solver="mgda", moo_anchor="uniform",
                   moo_gradient_method="loop", sam_rho=RHO, vc_weight=VC, moo_solve_every=2)
        for m, host_reads in zip(models, (True, False), strict=True)
    ]
    assert all(isinstance(step.policy, Amortised) for step in steps)
    for i in range(3):
        x = torch.randn(24, 3, 16, 16, device=device, generator=None)
        y = torch.tensor([i % 3, 1, 2, 3, 4, 5] * 4, device=device)
        for model, step, host_reads in zip(models, steps, (True, False), strict=True):
            model.zero_grad()
            with _reads_only_classes_and_the_solve(monkeypatch, host_reads):
                run_step(step, model, x, y)
        for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=f"step {i}: {name}")


def test_epo_step_without_host_reads_equals_with(device, monkeypatch):
    """EPO in the accelerators' mode (its LPs by the interior-point method on the device, the fallback chain by
    ``torch.where``) reads nothing but the classes present and gives the host mode's gradients."""
    torch.manual_seed(1)
    models = [Wrapper(timm.create_model("resnet32_cifar", num_classes=6)).to(device).train()]
    models.append(copy.deepcopy(models[0]))
    x = torch.randn(24, 3, 16, 16, device=device)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 0, 1] * 2, device=device)
    for model, host_reads in zip(models, (True, False), strict=True):
        step = build_step(model, [1] * 6, host_reads=host_reads, moo_solver="epo", moo_anchor="uniform",
                          moo_gradient_method="loop", sam_rho=RHO, vc_weight=VC)
        with _reads_only_classes_and_the_solve(monkeypatch, host_reads):
            run_step(step, model, x, y)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_solve_phase_counts_degenerate_solves_and_gives_nan_for_non_finite_input():
    """The solve phase: a zero Gramian is a degenerate solve (counted through the solver's flag); a non-finite
    Gramian gives NaN coefficients (so the optimizer step is skipped); the anchor is the prior of the ids present."""
    solve = Solve(CAGrad(alpha=0.5, rescale=1), class_prior_anchor([10, 5, 2]))
    ids, losses = torch.tensor([0, 2]), torch.tensor([0.3, 0.1])
    torch.testing.assert_close(solve.anchor(ids), (lambda a: a / a.sum())(class_prior_anchor([10, 5, 2])[ids]))
    solved = solve(torch.zeros(2, 2), losses, ids)
    assert solved.degenerate == 1 and solved.coefficients.dtype == torch.float32
    torch.testing.assert_close(solved.coefficients, torch.ones(2))
    bad = solve(torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]), losses, ids)
    assert bool(torch.isnan(bad.coefficients).all())
    good = solve(torch.tensor([[2.0, -0.5], [-0.5, 1.0]]), losses, ids)
    assert good.degenerate == 0 and bool(torch.isfinite(good.coefficients).all())


@pytest.mark.parametrize(
    ("config", "source", "expected"),
    [
        ({"moo_gradient_method": "auto"}, PerClassVJPs, {"name": "loop"}),  # batch norm, on a CPU
        ({"moo_gradient_method": "batched", "moo_chunk_size": 3}, PerClassVJPs, {"name": "batched", "chunk_size": 3}),
        ({"moo_gradient_method": "batched", "moo_chunk_memory_mb": 8.0}, PerClassVJPs, {"chunk_memory_mb": 8.0}),
        ({"moo_gradient_method": "sketch", "moo_sketch_dim": 5}, SketchedGramian, {"name": "sketch", "dim": 5}),
        ({"moo_gradient_method": "auto", "architecture": "resnet20_cifar_gn"}, OnePassSplit, {"name": "per_sample_split"}),
    ],
)
def test_build_plot_step_chooses_the_gramian_source_from_the_config(config, source, expected):
    config = dict(config)
    norm = "group" if config.pop("architecture", "") == "resnet20_cifar_gn" else "batch"
    model = Wrapper(timm.create_model("resnet20_cifar", num_classes=4, norm=norm))
    step = build_step(model, [8, 4, 2, 1], **config)
    assert isinstance(step.gramian_source, source) and step.gradient_method == step.gramian_source.name
    for key, value in expected.items():
        assert getattr(step.gramian_source, key) == value, key
    assert isinstance(step.reducer, SingleProcess) and step.moo.stage_name == "timm_model.layer3"
    assert repr(step.gramian_source) in repr(step) and "SingleProcess()" in repr(step)


def test_build_plot_step_chooses_policy_objectives_and_solve_from_the_config():
    counts = [40, 20, 10, 5, 2, 1]
    model = Wrapper(timm.create_model("resnet20_cifar", num_classes=6))
    plain = build_step(model, counts, moo_solver="cagrad", cagrad_alpha=0.3, cagrad_rescale=2, sam_rho=0.01,
                       sam_keep_fraction=0.5, vc_weight=0.2)
    assert isinstance(plain.policy, SolveEveryStep) and plain.objective_ids.are_classes
    assert plain.objective_ids.num_ids == 6 and (plain.rho, plain.keep_fraction, plain.vc_weight) == (0.01, 0.5, 0.2)
    assert isinstance(plain.solve.solver, CAGrad) and (plain.solve.solver.alpha, plain.solve.solver.rescale) == (0.3, 2)
    torch.testing.assert_close(plain.solve.anchor_table, class_prior_anchor(counts))
    grouped = build_step(model, counts, moo_solver="mgda", moo_class_groups=3, moo_solve_every=4, moo_anchor="uniform")
    assert isinstance(grouped.policy, Amortised) and grouped.policy.cache.every == 4
    assert grouped.objective_ids.num_ids == 3 and grouped.policy.cache.table.numel() == 3
    assert grouped.objective_ids(torch.tensor([0, 1, 2, 3, 4, 5])).tolist() == [0, 0, 1, 1, 2, 2]
    assert grouped.solve.anchor_table is None and repr(grouped.solve.solver).startswith("MGDA(")
    with_prior = build_step(model, counts, moo_class_groups=3)
    torch.testing.assert_close(with_prior.solve.anchor_table, group_anchor_table(class_prior_anchor(counts),
                                                                                  frequency_groups(counts, 3)))


def test_one_group_per_class_gives_the_per_class_step(device):
    """Class groups with as many groups as classes: each group is one class (ordered by count, so the objectives
    are a permutation of the classes, and so is the anchor); CAGrad is invariant to that order, so the step's
    gradients equal those of the per-class step."""
    torch.manual_seed(0)
    counts = [5, 50, 8, 30, 12, 20]  # not sorted: the groups permute the classes
    models = [Wrapper(timm.create_model("resnet32_cifar", num_classes=6)).to(device).train()]
    models.append(copy.deepcopy(models[0]))
    x = torch.randn(24, 3, 16, 16, device=device)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5, 5] * 2, device=device)
    for model, groups in zip(models, (None, 6), strict=True):
        step = build_step(model, counts, moo_gradient_method="loop", moo_class_groups=groups, sam_rho=RHO, vc_weight=VC)
        run_step(step, model, x, y)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
