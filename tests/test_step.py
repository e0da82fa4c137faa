"""The whole PLOT step against a hand-written reference step (the reference code's order of operations:
full re-forward at the perturbed point, one backward per class, gradients written into .grad)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import plot_hf  # noqa: F401
from plot_hf.models.introspection import class_prior_anchor, resolve_moo_parameters
from plot_hf.moo import get_solver
from plot_hf.step import PLOTStep

from .helpers import Wrapper, forbid_host_reads

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
    coefficients = get_solver("cagrad")((G @ G.T).double(), anchor=anchor / anchor.sum(), alpha=0.5, rescale=1)
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


@pytest.mark.parametrize(
    ("keep_fraction", "host_reads", "stage"),
    [(0.0, True, None), (0.5, True, None), (0.5, False, None), (0.0, True, "layer3.4")],
)
def test_plot_step_equals_reference_step(device, keep_fraction, host_reads, stage):
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

    moo = resolve_moo_parameters(model, None if stage is None else [stage])
    assert moo.stage_name == f"timm_model.{stage or 'layer3'}"
    step = PLOTStep(moo=moo, solver_name="cagrad", solver_kwargs={"alpha": 0.5, "rescale": 1}, rho=RHO,
                    keep_fraction=keep_fraction, vc_weight=VC, host_reads=host_reads)
    table = class_prior_anchor(counts)

    def anchor_for(classes):
        a = table.to(classes.device)[classes].double()
        return a / a.sum()

    with _Null() if host_reads else forbid_host_reads(allow=("unique",)):
        clean, diagnostics = step.run(
            model=model, unwrapped=model, pixel_values=x, group_labels=y,
            per_sample_loss=lambda logits: F.cross_entropy(logits, y, reduction="none"),
            anchor_for=anchor_for, backward=lambda loss: loss.backward(), loss_scale=1.0,
            autocast=_Null, forward_context=_Null,
        )
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


def test_amortised_steps_without_host_reads_equal_those_with(device):
    """Amortised solving (``solve_every=2``: solve, reuse, solve) in the accelerators' mode reads nothing but
    the classes present and gives the gradients of the host-reading mode."""
    torch.manual_seed(0)
    models = [Wrapper(timm.create_model("resnet32_cifar", num_classes=6)).to(device).train()]
    models.append(copy.deepcopy(models[0]))
    steps = [
        PLOTStep(moo=resolve_moo_parameters(m, None), solver_name="mgda", solver_kwargs={}, rho=RHO,
                 keep_fraction=0.0, vc_weight=VC, solve_every=2, host_reads=host_reads)
        for m, host_reads in zip(models, (True, False), strict=True)
    ]
    for i in range(3):
        x = torch.randn(24, 3, 16, 16, device=device, generator=None)
        y = torch.tensor([i % 3, 1, 2, 3, 4, 5] * 4, device=device)
        for model, step, host_reads in zip(models, steps, (True, False), strict=True):
            model.zero_grad()
            with _Null() if host_reads else forbid_host_reads(allow=("unique",)):
                step.run(
                    model=model, unwrapped=model, pixel_values=x, group_labels=y,
                    per_sample_loss=lambda logits, y=y: F.cross_entropy(logits, y, reduction="none"),
                    anchor_for=lambda classes: None, backward=lambda loss: loss.backward(), loss_scale=1.0,
                    autocast=_Null, forward_context=_Null,
                )
        for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=f"step {i}: {name}")


def test_epo_step_without_host_reads_equals_with(device):
    """EPO in the accelerators' mode (its LPs by the interior-point method on the device, the fallback chain by
    ``torch.where``) reads nothing but the classes present and gives the host mode's gradients."""
    torch.manual_seed(1)
    models = [Wrapper(timm.create_model("resnet32_cifar", num_classes=6)).to(device).train()]
    models.append(copy.deepcopy(models[0]))
    x = torch.randn(24, 3, 16, 16, device=device)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 0, 1] * 2, device=device)
    for model, host_reads in zip(models, (True, False), strict=True):
        step = PLOTStep(moo=resolve_moo_parameters(model, None), solver_name="epo", solver_kwargs={}, rho=RHO,
                        keep_fraction=0.0, vc_weight=VC, host_reads=host_reads)
        with _Null() if host_reads else forbid_host_reads(allow=("unique",)):
            step.run(
                model=model, unwrapped=model, pixel_values=x, group_labels=y,
                per_sample_loss=lambda logits: F.cross_entropy(logits, y, reduction="none"),
                anchor_for=lambda classes: None, backward=lambda loss: loss.backward(), loss_scale=1.0,
                autocast=_Null, forward_context=_Null,
            )
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
