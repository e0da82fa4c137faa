"""The per-class objectives, gradients, Gramian, SAM, variability collapse and gradient replacement,
each against an independent reference (hand counts, separate backward calls, hand-written updates)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import plot_hf  # noqa: F401  (registers resnet32_cifar)
from plot_hf.moo import (
    DirectionSlot,
    conflict_fraction,
    finite_sam_epsilon,
    flatten,
    gramian,
    per_class_gradients,
    per_class_objectives,
    replace_gradient,
    sam_epsilon,
    unflatten,
    variability_collapse_loss,
)


def test_per_class_objectives_hand_counted(device):
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], device=device)
    labels = torch.tensor([2, 0, 2, 7, 0], device=device)
    classes, objectives = per_class_objectives(losses, labels)
    assert classes.tolist() == [0, 2, 7]
    torch.testing.assert_close(objectives, torch.tensor([7 / 5, 4 / 5, 4 / 5], device=device))
    torch.testing.assert_close(objectives.sum(), losses.mean())
    _, halved = per_class_objectives(losses, labels, batch_size=10)
    torch.testing.assert_close(halved, objectives / 2)


def test_per_class_objectives_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same length"):
        per_class_objectives(torch.ones(3), torch.zeros(4, dtype=torch.long))


def test_variability_collapse_matches_torch_std_loop(device):
    generator = torch.Generator().manual_seed(0)
    losses = torch.rand(40, generator=generator).to(device)
    labels = torch.randint(0, 6, (40,), generator=generator).to(device)
    labels[0] = 9  # a singleton class: left out
    stds = [losses[labels == c].std() for c in labels.unique() if (labels == c).sum() >= 2]
    torch.testing.assert_close(variability_collapse_loss(losses, labels), torch.stack(stds).mean())


def test_variability_collapse_degenerate_cases_are_finite(device):
    singletons = torch.arange(4, device=device)
    assert variability_collapse_loss(torch.rand(4, device=device), singletons).item() == 0.0
    equal = torch.full((4,), 0.7, device=device, requires_grad=True)
    penalty = variability_collapse_loss(equal, torch.zeros(4, dtype=torch.long, device=device))
    penalty.backward()
    assert penalty.item() == 0.0 and torch.isfinite(equal.grad).all()


def _resnet_batch(device, num_classes=10, batch=24, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model("resnet32_cifar", num_classes=num_classes).to(device).train()
    x = torch.randn(batch, 3, 16, 16, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    return model, x, y


def _reference_class_gradients(model, x, y, params):
    """One fresh forward and one ordinary backward into .grad per class (batch norm in train mode)."""
    rows = []
    for c in y.unique():
        model.zero_grad(set_to_none=True)
        losses = F.cross_entropy(model(x), y, reduction="none")
        (losses[y == c].sum() / len(y)).backward()
        rows.append(torch.cat([p.grad.reshape(-1).clone() for p in params]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_per_class_gradients_match_separate_backward_calls(device, method):
    model, x, y = _resnet_batch(device)
    params = list(model.layer3.parameters())
    expected = _reference_class_gradients(model, x, y, params)
    losses = F.cross_entropy(model(x), y, reduction="none")
    _, objectives = per_class_objectives(losses, y)
    grads = per_class_gradients(objectives, params, method=method, chunk_size=3)
    torch.testing.assert_close(grads, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gramian(grads), expected @ expected.T, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_per_class_gradients_free_the_graph_only_when_told(method):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x, y = torch.randn(9, 4), torch.arange(9) % 3
    results = []
    for retain in (True, False):
        _, objectives = per_class_objectives(F.cross_entropy(layer(x), y, reduction="none"), y)
        results.append(per_class_gradients(objectives, list(layer.parameters()), method=method, chunk_size=2,
                                           retain_graph=retain))
        if retain:
            objectives.sum().backward()  # the graph is still there for the final backward
        else:
            with pytest.raises(RuntimeError, match="backward through the graph a second time"):
                objectives.sum().backward()
    torch.testing.assert_close(results[0], results[1])


def test_batch_norm_couples_classes_so_per_sample_split_is_not_exact(device):
    """The reason exact per-class gradients are needed: with train-mode BN, class gradients are not sums of
    per-sample gradients computed on single samples (here: on the class's own sub-batch)."""
    model, x, y = _resnet_batch(device)
    params = list(model.layer3.parameters())
    exact = _reference_class_gradients(model, x, y, params)
    c = y.unique()[0]
    model.zero_grad()
    sub = F.cross_entropy(model(x[y == c]), y[y == c], reduction="sum") / len(y)
    sub.backward()
    alone = torch.cat([p.grad.reshape(-1) for p in params])
    assert (alone - exact[0]).norm() > 1e-3 * exact[0].norm()


def test_gramian_conflict_fraction():
    gram = torch.tensor([[1.0, -0.5, 0.2], [-0.5, 1.0, -0.1], [0.2, -0.1, 1.0]])
    assert conflict_fraction(gram).item() == pytest.approx(2 / 3)
    assert conflict_fraction(torch.ones(1, 1)).item() == 0.0


def test_flatten_unflatten_round_trip():
    like = [torch.zeros(2, 3), torch.zeros(4)]
    vector = torch.arange(10.0)
    pieces = unflatten(vector, like)
    assert [p.shape for p in pieces] == [torch.Size([2, 3]), torch.Size([4])]
    torch.testing.assert_close(flatten(pieces, like), vector)
    torch.testing.assert_close(flatten([None, pieces[1]], like)[:6], torch.zeros(6))


def test_sam_step_matches_hand_written_two_pass_update(device):
    torch.manual_seed(1)
    w = torch.randn(5, 3, device=device, requires_grad=True)
    b = torch.randn(3, device=device, requires_grad=True)
    x, target = torch.randn(8, 5, device=device), torch.randn(8, 3, device=device)

    def loss_fn():
        return ((x @ w + b - target) ** 2).mean()

    rho = 0.05
    gw, gb = torch.autograd.grad(loss_fn(), [w, b])
    norm = torch.sqrt((gw**2).sum() + (gb**2).sum())
    w_hand, b_hand = w.detach() + rho * gw / norm, b.detach() + rho * gb / norm
    expected = torch.autograd.grad(((x @ w_hand.requires_grad_() + b_hand - target) ** 2).mean(), [w_hand])[0]

    w0, b0 = w.detach().clone(), b.detach().clone()
    epsilon = sam_epsilon([gw, gb], rho)
    w_eps, b_eps = w + epsilon[0], b + epsilon[1]  # the perturbed point as tensors, as the PLOT step evaluates it
    torch.testing.assert_close(w_eps.detach(), w_hand)
    got = torch.autograd.grad(((x @ w_eps + b_eps - target) ** 2).mean(), [w])[0]
    torch.testing.assert_close(got, expected)
    assert torch.equal(w.detach(), w0) and torch.equal(b.detach(), b0)  # nothing moved in place


@pytest.mark.parametrize("host_reads", [True, False])
def test_finite_sam_epsilon_is_zero_for_a_non_finite_gradient(host_reads):
    """An fp16 overflow in the ascent gradient: no perturbation at all, decided with or without a host read."""
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.0])]
    torch.testing.assert_close(finite_sam_epsilon(grads, 0.5, host_reads=host_reads), sam_epsilon(grads, 0.5))
    bad = [torch.tensor([3.0, float("inf")]), torch.tensor([float("nan")])]
    for e, g in zip(finite_sam_epsilon(bad, 0.5, host_reads=host_reads), bad, strict=True):
        assert torch.equal(e, torch.zeros_like(g))


def test_sam_rejects_negative_rho_and_zero_gradient_is_safe():
    with pytest.raises(ValueError, match="rho"):
        sam_epsilon([torch.ones(2)], -1.0)
    assert torch.equal(sam_epsilon([torch.zeros(3)], 0.1)[0], torch.zeros(3))


def test_surrogate_backward_equals_writing_direction_into_grad(device):
    """One backward with the replacement gives theta the direction G^T lambda (scaled), every other parameter
    its ordinary gradient."""
    model, x, y = _resnet_batch(device, batch=16)
    stage = [p for p in model.layer3.parameters()]
    names = [f"layer3.{n}" for n, _ in model.layer3.named_parameters()]
    others = [p for n, p in model.named_parameters() if not n.startswith("layer3.")]
    direction = [torch.randn_like(p) for p in stage]
    scale = 0.25

    slots = [DirectionSlot() for _ in stage]
    replaced = {n: replace_gradient(p, s) for n, p, s in zip(names, stage, slots, strict=True)}
    for s, d in zip(slots, direction, strict=True):
        s.fill(d, scale)
    logits = torch.func.functional_call(model, replaced, (x,))
    loss = F.cross_entropy(logits, y)
    model.zero_grad(set_to_none=True)
    (scale * loss).backward()
    for p, d in zip(stage, direction, strict=True):
        torch.testing.assert_close(p.grad, scale * d)
    expected = torch.autograd.grad(scale * F.cross_entropy(model(x), y), others)
    for p, e in zip(others, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)


def test_replacement_without_direction_fails_clearly():
    p = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="direction"):
        replace_gradient(p, DirectionSlot()).sum().backward()
