"""The one sampler factory: every training sampler is built by name from the registry, by the trainer's deferred
sampler and by stage 2 alike; unknown names fail with the valid ones listed."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import Sampler

from plot_hf.baselines import DeferredSampler
from plot_hf.losses import ClassBalancedSampler, SquareRootSampler
from plot_hf.losses.samplers import SAMPLERS, RandomOrderSampler, build_sampler

LABELS = [0] * 60 + [1] * 30 + [2] * 10


def test_registry_holds_every_sampler_by_name():
    assert SAMPLERS.names() == ("class_balanced", "random", "square_root")
    assert SAMPLERS["class_balanced"] is ClassBalancedSampler and SAMPLERS["square_root"] is SquareRootSampler
    with pytest.raises(ValueError, match="Unknown sampler 'uniform'; valid names are: class_balanced, random"):
        build_sampler("uniform", LABELS)
    with pytest.raises(ValueError, match="Unknown sampler"):
        DeferredSampler(LABELS, kind="uniform")


def test_random_order_is_a_permutation_per_pass():
    sampler = build_sampler("random", LABELS, num_samples=250, generator=torch.Generator().manual_seed(0))
    assert isinstance(sampler, RandomOrderSampler) and len(sampler) == 250
    order = list(sampler)
    assert sorted(order[:100]) == list(range(100)) and sorted(order[100:200]) == list(range(100))
    assert order[:100] != list(range(100))


def test_default_epoch_lengths_and_explicit_draws():
    assert len(build_sampler("class_balanced", LABELS)) == 60 * 3  # cRT's n_max * C
    assert len(build_sampler("square_root", LABELS)) == len(build_sampler("random", LABELS)) == 100
    balanced = build_sampler("class_balanced", LABELS, num_samples=100, generator=torch.Generator().manual_seed(1))
    assert len(balanced) == 100
    draws = Counter(LABELS[i] for _ in range(60) for i in balanced)
    assert all(abs(draws[c] / 6000 - 1 / 3) < 0.03 for c in range(3)), draws


def test_deferred_sampler_draws_what_the_factory_draws():
    deferred = DeferredSampler(LABELS, kind="square_root", start_epoch=1, num_samples=80, seed=4)
    for epoch, kind in ((0, "random"), (1, "square_root")):
        deferred.set_epoch(epoch)
        direct = build_sampler(kind, LABELS, 80, torch.Generator().manual_seed(4 + epoch))
        assert list(deferred) == list(direct)


def test_a_registered_sampler_becomes_usable_by_name():
    class HeadFirst(Sampler[int]):
        def __init__(self, labels, num_samples=None, generator=None):
            self.rows = sorted(range(len(labels)), key=lambda i: labels[i])[: num_samples or len(labels)]

        def __iter__(self):
            return iter(self.rows)

        def __len__(self):
            return len(self.rows)

    SAMPLERS.add("head_first_test_only", HeadFirst)
    try:
        assert list(build_sampler("head_first_test_only", [2, 0, 1], 2)) == [1, 2]
    finally:
        SAMPLERS._entries.pop("head_first_test_only")
