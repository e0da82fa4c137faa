"""Training samplers for long-tailed training (torch ``Sampler``s of dataset indices), and the one factory that
builds them by name (:data:`SAMPLERS`, :func:`build_sampler`).

* ``random``: uniform shuffling, each epoch a fresh permutation of the rows (``RandomSampler``'s order).
* ``class_balanced`` / ``square_root``: class-aware sampling. A draw picks a class ``j`` with probability
  ``p_j``, then a sample of that class uniformly; draws are i.i.d. (with replacement).

Seeded with a ``torch.Generator``: given one, successive epochs continue its stream; without one, each epoch
draws a seed from torch's global generator (as ``RandomSampler`` does), so ``torch.manual_seed`` makes the
order reproducible. Every trainer, the deferred sampler (:mod:`plot_hf.baselines.sampling`) and stage 2
(:mod:`plot_hf.stage2`) build their samplers with :func:`build_sampler`; a sampler class registered in
:data:`SAMPLERS` (constructor ``(labels, num_samples=None, generator=None)``) becomes usable by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ..registry import Registry

SAMPLERS: Registry[type[Sampler[int]]] = Registry("sampler")
"""``name -> sampler class``; every class takes ``(labels, num_samples=None, generator=None)``."""


def _as_labels(labels: Sequence[int] | Tensor) -> Tensor:
    labels = torch.as_tensor(labels.cpu() if isinstance(labels, Tensor) else list(labels))
    if labels.ndim != 1 or labels.numel() == 0 or labels.is_floating_point():
        raise ValueError(
            f"`labels` must be a non-empty 1-D sequence of integers, got shape {tuple(labels.shape)}."
        )
    return labels


def _check_num_samples(num_samples: int | None) -> None:
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"`num_samples` must be None or a positive integer, got {num_samples!r}.")


def _generator_or_fresh(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a new one seeded from torch's global generator (``RandomSampler``'s rule)."""
    if generator is not None:
        return generator
    fresh = torch.Generator()
    fresh.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
    return fresh


@SAMPLERS.register("random")
class RandomOrderSampler(Sampler[int]):
    """Uniform shuffling: each epoch yields ``num_samples`` rows (default: all of them) from successive random
    permutations of the rows, so every row appears once per ``len(labels)`` draws."""

    def __init__(
        self,
        labels: Sequence[int] | Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.num_rows = int(_as_labels(labels).numel())
        _check_num_samples(num_samples)
        self.num_samples = num_samples if num_samples is not None else self.num_rows
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        generator = _generator_or_fresh(self.generator)
        rounds = -(-self.num_samples // self.num_rows)
        order = torch.cat([torch.randperm(self.num_rows, generator=generator) for _ in range(rounds)])
        yield from order[: self.num_samples].tolist()

    def __len__(self) -> int:
        return self.num_samples


class _ClassWiseSampler(Sampler[int]):
    """``p_j proportional to n_j^q`` over the classes present in ``labels``, then uniform within the class."""

    power: float = 0.0

    def __init__(
        self,
        labels: Sequence[int] | Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        labels = _as_labels(labels)
        _check_num_samples(num_samples)
        self.classes, counts = torch.unique(labels, return_counts=True)
        self.indices_by_class = torch.argsort(labels, stable=True)  # indices grouped by class, classes sorted
        self.offsets = torch.cumsum(counts, 0) - counts
        self.counts = counts
        weights = counts.double().pow(self.power)
        self.class_probs = weights / weights.sum()
        self.num_samples = num_samples if num_samples is not None else self._default_num_samples()
        self.generator = generator

    def _default_num_samples(self) -> int:
        return int(self.counts.sum())

    def __iter__(self) -> Iterator[int]:
        generator = _generator_or_fresh(self.generator)
        classes = torch.multinomial(self.class_probs, self.num_samples, replacement=True, generator=generator)
        within = torch.rand(self.num_samples, generator=generator, dtype=torch.float64) * self.counts[classes]
        positions = self.offsets[classes] + within.long().clamp_max(self.counts[classes] - 1)
        yield from self.indices_by_class[positions].tolist()

    def __len__(self) -> int:
        return self.num_samples


@SAMPLERS.register("class_balanced")
class ClassBalancedSampler(_ClassWiseSampler):
    """Class-aware sampling of cRT (Kang et al. 2020, "Decoupling Representation and Classifier for
    Long-Tailed Recognition", ICLR; Shen et al. 2016): every class present is equally likely
    (``p_j = 1 / C``), then a sample uniformly within the class.

    ``num_samples`` defaults to ``n_max * C``, the epoch length of cRT's ``ClassAwareSampler``. Departure:
    draws are i.i.d.; the reference cycles through shuffled class and sample lists.
    """

    power = 0.0

    def _default_num_samples(self) -> int:
        return int(self.counts.max()) * int(self.counts.numel())


@SAMPLERS.register("square_root")
class SquareRootSampler(_ClassWiseSampler):
    """Square-root sampling (Mahajan et al. 2018; Kang et al. 2020): ``p_j proportional to sqrt(n_j)``, then
    a sample uniformly within the class. ``num_samples`` defaults to the dataset size."""

    power = 0.5


def build_sampler(
    name: str,
    labels: Sequence[int] | Tensor,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> Sampler[int]:
    """The sampler registered as ``name`` over ``labels`` (``ValueError`` naming the valid names otherwise).

    ``num_samples`` is the number of draws per epoch; ``None`` keeps the sampler's own default (the dataset
    size; ``n_max * C`` for ``class_balanced``, cRT's epoch).
    """
    return SAMPLERS[name](labels, num_samples=num_samples, generator=generator)
