"""Tests of plot_hf.losses: each loss against hand-computed values and an independent formula."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils.data import DataLoader

from plot_hf.losses import (
    LOSSES,
    BalancedSoftmaxLoss,
    CELoss,
    ClassBalancedLoss,
    ClassBalancedSampler,
    FocalLoss,
    GCLLoss,
    LabelAwareSmoothingLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    LongTailedLoss,
    NormedLinear,
    SquareRootSampler,
    build_loss,
    class_balanced_weights,
    gcl_amplitudes,
    label_aware_epsilons,
    ldam_margins,
    mixup_loss,
    posthoc_logit_adjustment,
)
from plot_hf.registry import Registry

DEVICE = torch.device(os.environ.get("PLOT_HF_TEST_DEVICE", "cpu"))
COUNTS = [100, 40, 10, 1]
LONG_TAIL = [5000, 2000, 500, 100, 20]


def tensor(data, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(data, dtype=dtype, device=DEVICE)


def labels_of(data) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.long, device=DEVICE)


def cosine_logits(
    batch: int, classes: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, classes, generator=generator, dtype=dtype) * 2 - 1).to(DEVICE)


def manual_ce(row: list[float], label: int) -> float:
    """-log softmax(row)[label] with the math module."""
    top = max(row)
    return top + math.log(sum(math.exp(v - top) for v in row)) - row[label]


def manual_cb_weights(counts: list[int], beta: float) -> list[float]:
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


def build(name: str, counts=COUNTS) -> LongTailedLoss:
    return build_loss(name, counts).to(DEVICE)


# ----- interface, registry ------------------------------------------------------------------------------


def test_registry_holds_every_baseline_loss():
    expected = {"ce", "focal", "class_balanced", "ldam", "balanced_softmax", "logit_adjustment", "gcl"}
    assert set(LOSSES) == expected | {"label_aware_smoothing"}
    assert all(issubclass(cls, LongTailedLoss) for cls in LOSSES.values())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_returns_finite_differentiable_per_sample_losses(name):
    loss_fn = build(name)
    logits = cosine_logits(6, len(COUNTS), dtype=torch.float32).requires_grad_()
    labels = labels_of([0, 1, 2, 3, 3, 0])
    losses = loss_fn(logits, labels)
    assert losses.shape == (6,)
    assert losses.dtype == torch.float32
    assert torch.isfinite(losses).all()
    assert (losses >= 0).all()
    (grad,) = torch.autograd.grad(losses.sum(), logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_gradient_matches_finite_differences(name):
    loss_fn = build(name).double().eval()  # eval: GCL's cloud is random in training mode
    logits = cosine_logits(3, len(COUNTS), seed=1).requires_grad_()
    labels = labels_of([0, 3, 2])
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, labels), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_accepts_half_precision_logits(name):
    logits = cosine_logits(4, len(COUNTS), dtype=torch.float16)
    losses = build(name)(logits, labels_of([0, 1, 2, 3]))
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()


def test_normed_classifier_flags():
    flagged = {name for name, cls in LOSSES.items() if cls.requires_normed_classifier}
    assert flagged == {"ldam", "gcl"}


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown loss 'ldamm'.*balanced_softmax, ce, class_balanced"):
        build_loss("ldamm", COUNTS)


def test_registering_twice_is_an_error():
    registry = Registry("loss")
    registry.register("x")(CELoss)
    with pytest.raises(ValueError, match="`x` is already registered"):
        registry.register("x")(FocalLoss)
    with pytest.raises(ValueError, match="already registered"):
        LOSSES.register("ce")(FocalLoss)


def test_build_loss_rejects_unknown_keyword_listing_accepted_ones():
    with pytest.raises(TypeError, match=r"Loss `ldam`.*max_m, s, drw_epoch, drw_beta"):
        build_loss("ldam", COUNTS, margin=0.3)
    assert build_loss("ldam", COUNTS, max_m=0.3, drw_epoch=160).drw_epoch == 160.0


@pytest.mark.parametrize("counts", [[], [3, 0, 2], [[1, 2]], [1.0, float("nan")]])
def test_bad_class_counts_are_rejected(counts):
    with pytest.raises(ValueError, match="`class_counts`"):
        CELoss(counts)


def test_bad_inputs_and_arguments_are_rejected():
    loss_fn = CELoss(COUNTS)
    with pytest.raises(ValueError, match=r"`logits` must have shape \[B, 4\]"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels`"):
        loss_fn(torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="`epoch`"):
        loss_fn.set_epoch(-1)
    for bad in (
        lambda: FocalLoss(COUNTS, gamma=-1),
        lambda: LDAMLoss(COUNTS, s=0),
        lambda: LDAMLoss(COUNTS, max_m=0),
    ):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="`beta`"):
        class_balanced_weights(COUNTS, beta=1.0)
    with pytest.raises(ValueError, match="`base`"):
        ClassBalancedLoss(COUNTS, base="sigmoid")


def test_repr_echoes_arguments():
    assert "max_m=0.3, s=10.0, drw_epoch=160.0, drw_beta=0.9999" in repr(LDAMLoss(COUNTS, 0.3, 10, 160))
    assert "tau=2.0" in repr(LogitAdjustedLoss(COUNTS, tau=2))


# ----- cross-entropy, focal, class-balanced --------------------------------------------------------------


def test_ce_pinned_values():
    losses = CELoss(COUNTS[:3]).to(DEVICE)(tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), labels_of([2, 0]))
    expected = [math.log(math.e + math.e**2 + math.e**3) - 3, math.log(3)]
    assert_close(losses, tensor(expected))
    assert_close(losses[0], tensor(0.40760596444438013))


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, labels = cosine_logits(8, 4) * 5, labels_of([0, 1, 2, 3, 0, 1, 2, 3])
    assert_close(
        FocalLoss(COUNTS, gamma=0.0)(logits, labels), F.cross_entropy(logits, labels, reduction="none")
    )


def test_focal_pinned_value():
    row = [1.0, 2.0, 3.0]
    p = math.exp(-manual_ce(row, 1))
    loss = FocalLoss(COUNTS[:3], gamma=2.0)(tensor([row]), labels_of([1]))
    assert_close(loss, tensor([-((1 - p) ** 2) * math.log(p)]))


def test_class_balanced_weights_exact_values():
    weights = class_balanced_weights(COUNTS, beta=0.9999)
    assert_close(weights, torch.tensor(manual_cb_weights(COUNTS, 0.9999), dtype=torch.float64))
    assert_close(weights.sum(), torch.tensor(4.0, dtype=torch.float64))
    assert_close(class_balanced_weights(COUNTS, beta=0.0), torch.ones(4, dtype=torch.float64))
    # beta -> 1: effective number -> n, so the weights approach normalised inverse frequency
    inverse = torch.tensor([1 / n for n in COUNTS], dtype=torch.float64)
    assert_close(
        class_balanced_weights(COUNTS, beta=1 - 1e-9), inverse * 4 / inverse.sum(), rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("base, gamma", [("ce", 0.0), ("focal", 2.0)])
def test_class_balanced_loss_is_weighted_base_loss(base, gamma):
    logits, labels = cosine_logits(8, 4) * 3, labels_of([0, 1, 2, 3, 3, 2, 1, 0])
    weights = tensor(manual_cb_weights(COUNTS, 0.999))
    losses = ClassBalancedLoss(COUNTS, beta=0.999, base=base, gamma=2.0).double().to(DEVICE)(logits, labels)
    assert_close(losses, weights[labels] * FocalLoss(COUNTS, gamma=gamma)(logits, labels))


# ----- LDAM, DRW -----------------------------------------------------------------------------------------


def test_ldam_margins_max_and_ratio():
    margins = ldam_margins(COUNTS, max_m=0.5)
    assert_close(margins.max(), torch.tensor(0.5, dtype=torch.float64))
    assert margins.argmax() == 3  # the rarest class has the largest margin
    for i in range(4):
        for j in range(4):
            assert_close(
                margins[i] / margins[j], torch.tensor((COUNTS[i] / COUNTS[j]) ** -0.25, dtype=torch.float64)
            )
    assert_close(margins[0], torch.tensor(0.5 * 100**-0.25, dtype=torch.float64))


def test_ldam_loss_equals_manual_ce_on_shifted_logits():
    logits, labels = cosine_logits(5, 4, seed=3), [0, 1, 2, 3, 1]
    losses = LDAMLoss(COUNTS, max_m=0.5, s=30.0).double().to(DEVICE)(logits, labels_of(labels))
    margins = [0.5 * (1 / n) ** 0.25 / 1.0 for n in COUNTS]
    expected = []
    for row, y in zip(logits.tolist(), labels, strict=True):
        shifted = [30.0 * (v - (margins[y] if j == y else 0.0)) for j, v in enumerate(row)]
        expected.append(manual_ce(shifted, y))
    assert_close(losses, tensor(expected))


@pytest.mark.parametrize("name, kwargs", [("ldam", {}), ("ce", {})])
def test_drw_weights_before_at_and_after_the_deferral_epoch(name, kwargs):
    loss_fn = build_loss(name, COUNTS, drw_epoch=160, **kwargs).double().to(DEVICE)
    plain = build_loss(name, COUNTS, **kwargs).double().to(DEVICE)
    logits, labels = cosine_logits(8, 4, seed=4), labels_of([0, 1, 2, 3, 3, 2, 1, 0])
    expected = tensor(manual_cb_weights(COUNTS, 0.9999))
    for epoch in (0.0, 100.0, 159.99):
        loss_fn.set_epoch(epoch)
        assert loss_fn.class_weights() is None
        assert_close(loss_fn(logits, labels), plain(logits, labels))
    for epoch in (160.0, 160.5, 199.0):
        loss_fn.set_epoch(epoch)
        weights = loss_fn.class_weights().double()
        assert_close(weights, expected, rtol=1e-6, atol=0)
        assert_close(weights.sum(), tensor(4.0))
        assert_close(loss_fn(logits, labels), weights[labels] * plain(logits, labels), rtol=1e-6, atol=1e-12)
    assert plain.class_weights() is None  # no schedule without drw_epoch


# ----- Balanced Softmax, logit adjustment ----------------------------------------------------------------


def test_balanced_softmax_equals_ce_with_log_prior_shift_and_logit_adjustment_tau_one():
    logits, labels = cosine_logits(8, 4, seed=5) * 4, labels_of([0, 1, 2, 3, 3, 2, 1, 0])
    log_n = tensor([math.log(n) for n in COUNTS])
    balanced = BalancedSoftmaxLoss(COUNTS).double().to(DEVICE)(logits, labels)
    assert_close(balanced, F.cross_entropy(logits + log_n, labels, reduction="none"))
    assert_close(balanced, LogitAdjustedLoss(COUNTS, tau=1.0).double().to(DEVICE)(logits, labels))
    # pinned: -log(n_y e^{z_y} / sum_j n_j e^{z_j}) at z = 0
    zero = BalancedSoftmaxLoss(COUNTS).to(DEVICE)(torch.zeros(1, 4, device=DEVICE), labels_of([3]))
    assert_close(zero, torch.tensor([math.log(151.0)], device=DEVICE))


def test_logit_adjustment_tau():
    logits, labels = cosine_logits(6, 4, seed=6) * 4, labels_of([0, 1, 2, 3, 0, 3])
    log_pi = tensor([math.log(n / 151) for n in COUNTS])
    adjusted = LogitAdjustedLoss(COUNTS, tau=2.0).double().to(DEVICE)
    assert_close(adjusted(logits, labels), F.cross_entropy(logits + 2 * log_pi, labels, reduction="none"))
    assert_close(adjusted.logit_adjustment(logits), logits + 2 * log_pi)
    assert_close(LogitAdjustedLoss(COUNTS, tau=0.0)(logits, labels), CELoss(COUNTS)(logits, labels))


def test_posthoc_logit_adjustment():
    logits = tensor([[2.0, 1.0, 0.5, 0.0]])
    adjusted = posthoc_logit_adjustment(logits, COUNTS, tau=1.0)
    assert_close(adjusted, logits - tensor([[math.log(n / 151) for n in COUNTS]]))
    assert adjusted.argmax() == 3  # the prior moves the decision to the rare class
    assert_close(posthoc_logit_adjustment(logits, COUNTS, tau=0.0), logits)
    assert posthoc_logit_adjustment(logits.float(), COUNTS).dtype == torch.float32


# ----- GCL -----------------------------------------------------------------------------------------------


def test_gcl_amplitudes_grow_toward_the_tail():
    amplitudes = gcl_amplitudes(LONG_TAIL)
    expected = [(math.log(5000) - math.log(n)) / (math.log(5000) - math.log(20)) for n in LONG_TAIL]
    assert_close(amplitudes, torch.tensor(expected, dtype=torch.float64))
    assert amplitudes[0] == 0 and amplitudes[-1] == 1 and (amplitudes.diff() > 0).all()
    assert (gcl_amplitudes([7, 7, 7]) == 0).all()


def test_gcl_noise_scales_with_class_rarity():
    # Li et al. 2022: the cloud is larger for rarer classes; the most frequent class gets none.
    loss_fn = GCLLoss(LONG_TAIL, noise_mul=0.5, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    logits = torch.zeros(20000, 5, device=DEVICE)
    drop = (logits - loss_fn.cloud(logits)).double()
    assert (drop >= 0).all() and (drop[:, 0] == 0).all()
    assert (drop.max(dim=0).values <= 0.5 * gcl_amplitudes(LONG_TAIL).to(DEVICE) + 1e-6).all()
    mean = drop.mean(dim=0)
    assert (mean.diff() > 0).all()  # strictly more noise toward the tail
    sigma = 1 / 3  # E[min(|delta|, 1)] for delta ~ N(0, sigma^2)
    abs_mean = sigma * math.sqrt(2 / math.pi) * (1 - math.exp(-1 / (2 * sigma**2))) + math.erfc(
        1 / (sigma * 2**0.5)
    )
    expected = 0.5 * abs_mean * gcl_amplitudes(LONG_TAIL).to(DEVICE)
    assert_close(mean, expected, atol=4e-3, rtol=0)


def test_gcl_is_deterministic_with_a_fixed_generator_and_noise_free_in_eval():
    logits, labels = cosine_logits(16, 5, seed=7, dtype=torch.float32), labels_of([0, 1, 2, 3, 4] * 3 + [4])
    first = GCLLoss(LONG_TAIL, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    second = GCLLoss(LONG_TAIL, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    draw = first(logits, labels)
    assert_close(draw, second(logits, labels), rtol=0, atol=0)
    assert not torch.equal(first(logits, labels), draw)  # the stream moves on
    noise_free = F.cross_entropy(30 * logits, labels, reduction="none")
    assert not torch.allclose(draw, noise_free)
    state = first.generator.get_state()
    first.eval()
    assert_close(first(logits, labels), noise_free)
    assert torch.equal(first.generator.get_state(), state)  # eval draws nothing
    torch.manual_seed(11)
    global_a = GCLLoss(LONG_TAIL).to(DEVICE)(logits, labels)
    torch.manual_seed(11)
    assert_close(GCLLoss(LONG_TAIL).to(DEVICE)(logits, labels), global_a, rtol=0, atol=0)


def test_gcl_margin_and_focal_in_eval():
    logits, labels = cosine_logits(4, 5, seed=8), labels_of([0, 2, 4, 1])
    loss_fn = GCLLoss(LONG_TAIL, m=0.1, s=10.0, gamma=1.0).double().to(DEVICE).eval()
    shifted = 10.0 * (logits - 0.1 * F.one_hot(labels, 5))
    ce = F.cross_entropy(shifted, labels, reduction="none")
    assert_close(loss_fn(logits, labels), (1 - torch.exp(-ce)) * ce)


# ----- label-aware smoothing -----------------------------------------------------------------------------


def test_label_aware_epsilons_values():
    counts = [100, 50, 1]
    x = [1.0, 49 / 99, 0.0]
    concave = label_aware_epsilons(counts, 0.4, 0.1, "concave")
    assert_close(
        concave, torch.tensor([0.1 + 0.3 * math.sin(math.pi / 2 * v) for v in x], dtype=torch.float64)
    )
    assert_close(concave[[0, 2]], torch.tensor([0.4, 0.1], dtype=torch.float64))
    linear = label_aware_epsilons(counts, 0.4, 0.1, "linear")
    assert_close(linear, torch.tensor([0.4, 0.1 + 0.3 * 49 / 99, 0.1], dtype=torch.float64))
    convex = label_aware_epsilons(counts, 0.4, 0.1, "convex")
    assert_close(
        convex, torch.tensor([0.4 - 0.3 * math.cos(math.pi / 2 * v) for v in x], dtype=torch.float64)
    )
    assert_close(
        label_aware_epsilons(counts, 0.4, 0.1, "exp", power=2.0)[1],
        torch.tensor(0.1 + 0.3 * (49 / 99) ** 2, dtype=torch.float64),
    )
    assert_close(label_aware_epsilons([5, 5], 0.3, 0.0), torch.full((2,), 0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="`power`"):
        label_aware_epsilons(counts, shape="exp")


def test_label_aware_smoothing_loss():
    counts, logits, labels = [100, 50, 1], tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]), [0, 2]
    eps = label_aware_epsilons(counts, 0.4, 0.1).tolist()
    expected = []
    for row, y in zip(logits.tolist(), labels, strict=True):
        nll = [manual_ce(row, j) for j in range(3)]
        expected.append((1 - eps[y]) * nll[y] + eps[y] * sum(nll) / 3)
    losses = LabelAwareSmoothingLoss(counts).double().to(DEVICE)(logits, labels_of(labels))
    assert_close(losses, tensor(expected))
    no_smoothing = LabelAwareSmoothingLoss(counts, 0.0, 0.0)(logits, labels_of(labels))
    assert_close(no_smoothing, CELoss(counts)(logits, labels_of(labels)))


# ----- mixup ---------------------------------------------------------------------------------------------


def test_mixup_loss_is_the_per_sample_convex_combination():
    loss_fn = LDAMLoss(COUNTS).double().to(DEVICE)
    logits, a, b = cosine_logits(4, 4, seed=9), labels_of([0, 1, 2, 3]), labels_of([3, 3, 0, 1])
    assert_close(mixup_loss(loss_fn, logits, a, b, 0.3), 0.3 * loss_fn(logits, a) + 0.7 * loss_fn(logits, b))
    assert_close(mixup_loss(loss_fn, logits, a, b, 1.0), loss_fn(logits, a))
    lam = tensor([0.0, 0.25, 0.5, 1.0])
    assert_close(
        mixup_loss(loss_fn, logits, a, b, lam), lam * loss_fn(logits, a) + (1 - lam) * loss_fn(logits, b)
    )


# ----- NormedLinear --------------------------------------------------------------------------------------


def test_normed_linear_outputs_cosines():
    torch.manual_seed(0)
    layer = NormedLinear(6, 3).double().to(DEVICE)
    assert_close(layer.weight.norm(dim=1), tensor([1.0, 1.0, 1.0]))
    x = cosine_logits(5, 6, seed=10) * 7
    out = layer(x)
    assert out.shape == (5, 3) and (out.abs() <= 1 + 1e-12).all()
    expected = F.cosine_similarity(x[:, None, :], layer.weight[None, :, :], dim=-1)
    assert_close(out, expected)
    assert_close(layer(3.5 * x), out)  # invariant to the feature scale
    with torch.no_grad():
        layer.weight.mul_(tensor([[2.0], [0.1], [9.0]]))
    assert_close(layer(x), out)  # and to the class-vector scale
    with pytest.raises(ValueError, match="`out_features`"):
        NormedLinear(4, 0)


# ----- samplers ------------------------------------------------------------------------------------------


def _class_frequencies(labels: torch.Tensor, indices: list[int], num_classes: int) -> torch.Tensor:
    return torch.bincount(labels[indices], minlength=num_classes).double() / len(indices)


def _assert_frequencies(observed: torch.Tensor, expected: torch.Tensor, draws: int) -> None:
    tolerance = 5 * (expected * (1 - expected) / draws).sqrt()  # 5 binomial standard deviations
    assert ((observed - expected).abs() <= tolerance).all(), (observed, expected)


LT_LABELS = torch.repeat_interleave(torch.arange(4), torch.tensor([400, 100, 20, 5]))[
    torch.randperm(525, generator=torch.Generator().manual_seed(0))
]


def test_class_balanced_sampler_frequencies():
    sampler = ClassBalancedSampler(LT_LABELS, num_samples=40000, generator=torch.Generator().manual_seed(0))
    indices = list(sampler)
    assert len(indices) == len(sampler) == 40000
    _assert_frequencies(
        _class_frequencies(LT_LABELS, indices, 4), torch.full((4,), 0.25, dtype=torch.float64), 40000
    )
    rare = [i for i in indices if LT_LABELS[i] == 3]  # uniform within the rarest class
    rare_members = (LT_LABELS == 3).nonzero().squeeze(1)
    counts = torch.tensor([rare.count(int(i)) for i in rare_members], dtype=torch.float64) / len(rare)
    _assert_frequencies(counts, torch.full((5,), 0.2, dtype=torch.float64), len(rare))
    assert len(ClassBalancedSampler(LT_LABELS)) == 400 * 4  # cRT's epoch: n_max * C


def test_square_root_sampler_frequencies():
    sampler = SquareRootSampler(
        LT_LABELS.tolist(), num_samples=40000, generator=torch.Generator().manual_seed(1)
    )
    roots = torch.tensor([400, 100, 20, 5], dtype=torch.float64).sqrt()
    _assert_frequencies(_class_frequencies(LT_LABELS, list(sampler), 4), roots / roots.sum(), 40000)
    assert len(SquareRootSampler(LT_LABELS)) == 525


def test_samplers_are_reproducible_and_work_with_a_dataloader():
    first = list(ClassBalancedSampler(LT_LABELS, generator=torch.Generator().manual_seed(5)))
    assert first == list(ClassBalancedSampler(LT_LABELS, generator=torch.Generator().manual_seed(5)))
    sampler = ClassBalancedSampler(LT_LABELS, generator=torch.Generator().manual_seed(5))
    assert list(sampler) == first and list(sampler) != first  # epochs continue the stream
    torch.manual_seed(2)
    unseeded = list(SquareRootSampler(LT_LABELS))
    torch.manual_seed(2)
    assert list(SquareRootSampler(LT_LABELS)) == unseeded
    loader = DataLoader(
        list(range(525)), batch_size=64, sampler=ClassBalancedSampler(LT_LABELS, num_samples=128)
    )
    assert [len(batch) for batch in loader] == [64, 64]
    with pytest.raises(ValueError, match="`num_samples`"):
        ClassBalancedSampler(LT_LABELS, num_samples=0)
    with pytest.raises(ValueError, match="`labels`"):
        SquareRootSampler(torch.rand(4))
