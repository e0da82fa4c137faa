"""Training samplers of the baselines, with a deferred start (``PLOTConfig.train_sampler``).

The samplers themselves and their names live in one registry, :data:`plot_hf.losses.samplers.SAMPLERS`
(``random``, ``class_balanced``, ``square_root``), built by :func:`plot_hf.losses.samplers.build_sampler`.

:class:`DeferredSampler` draws uniformly before ``start_epoch`` and from the chosen sampler from it on: deferred re-sampling (DRS, Cao et al., NeurIPS 2019) and M2m's over-sampling schedule (Kim et al., CVPR
2020, re-sampling from its generation epoch). The Trainer calls :meth:`DeferredSampler.set_epoch` at the
start of every epoch. The epoch length is always ``num_samples`` (default: the dataset size), so the number
of optimisation steps does not depend on the sampler. Departure from cRT: its epoch holds ``n_max * C``
draws; here it holds the dataset size (set ``num_samples`` to change it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from ..losses.samplers import SAMPLERS, build_sampler


class DeferredSampler(Sampler[int]):
    """Uniform random order for epochs ``< start_epoch``, then ``kind`` (``class_balanced`` or ``square_root``).

    Args:
        labels: the label of every training row.
        kind: a name of :data:`~plot_hf.losses.samplers.SAMPLERS` (``"class_balanced"``, ``"square_root"``, ...).
        start_epoch: first epoch (0-based, as the Trainer counts) that uses ``kind``.
        num_samples: draws per epoch (default: ``len(labels)``).
        seed: base seed; epoch ``e`` draws from ``seed + e`` (reproducible, independent of the global RNG).
    """

    def __init__(
        self,
        labels: Sequence[int] | Tensor,
        kind: str = "class_balanced",
        start_epoch: float = 0.0,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        SAMPLERS[kind]  # ValueError naming the valid samplers
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.kind, self.start_epoch, self.seed = kind, float(start_epoch), int(seed)
        self.num_samples = int(num_samples or len(self.labels))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def active_kind(self) -> str:
        """The sampler in use this epoch."""
        return self.kind if self.epoch >= self.start_epoch else "random"

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from build_sampler(self.active_kind, self.labels, self.num_samples, generator)

    def __len__(self) -> int:
        return self.num_samples


def dataset_labels(dataset: Any) -> np.ndarray:
    """The ``labels`` (or ``label``) column of a 🤗 dataset as integers, without applying its transforms."""
    columns = getattr(dataset, "column_names", None) or []
    column = next((c for c in ("labels", "label") if c in columns), None)
    if column is None:
        raise ValueError(f"A class-aware sampler needs a `labels` column; the train dataset has {columns}.")
    return np.asarray(dataset.with_format("numpy")[column]).astype(np.int64)


def build_train_sampler(dataset: Any, kind: str, start_epoch: float = 0.0, seed: int = 0) -> Sampler | None:
    """The sampler for ``PLOTConfig.train_sampler`` (None for plain ``random`` from epoch 0: the Trainer's own)."""
    if kind == "random":
        return None
    return DeferredSampler(dataset_labels(dataset), kind=kind, start_epoch=start_epoch, seed=seed)
