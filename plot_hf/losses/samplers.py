"""Class-aware samplers for long-tailed training (torch ``Sampler``s of dataset indices).

A draw picks a class ``j`` with probability ``p_j``, then a sample of that class uniformly; draws are
i.i.d. (with replacement). Seeded with a ``torch.Generator``: given one, successive epochs continue its
stream; without one, each epoch draws a seed from torch's global generator (as ``RandomSampler`` does),
so ``torch.manual_seed`` makes the order reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Sampler


class _ClassWiseSampler(Sampler[int]):
    """``p_j proportional to n_j^q`` over the classes present in ``labels``, then uniform within the class."""

    power: float = 0.0

    def __init__(
        self,
        labels: Sequence[int] | Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        labels = torch.as_tensor(labels.cpu() if isinstance(labels, Tensor) else list(labels))
        if labels.ndim != 1 or labels.numel() == 0 or labels.is_floating_point():
            raise ValueError(
                f"`labels` must be a non-empty 1-D sequence of integers, got shape {tuple(labels.shape)}."
            )
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"`num_samples` must be None or a positive integer, got {num_samples!r}.")
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
        generator = self.generator
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        classes = torch.multinomial(self.class_probs, self.num_samples, replacement=True, generator=generator)
        within = torch.rand(self.num_samples, generator=generator, dtype=torch.float64) * self.counts[classes]
        positions = self.offsets[classes] + within.long().clamp_max(self.counts[classes] - 1)
        yield from self.indices_by_class[positions].tolist()

    def __len__(self) -> int:
        return self.num_samples


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


class SquareRootSampler(_ClassWiseSampler):
    """Square-root sampling (Mahajan et al. 2018; Kang et al. 2020): ``p_j proportional to sqrt(n_j)``, then
    a sample uniformly within the class. ``num_samples`` defaults to the dataset size."""

    power = 0.5
