"""Per-class statistics of the training split: counts, prior, and many/medium/few-shot groups.

Groups are always computed from the TRAINING counts ``n_c`` (never from the test split):

* ``shot_rule="strict"`` (default; Kang et al.'s classifier-balancing line): many if ``n_c > many``,
  few if ``n_c < few``, medium otherwise; with the defaults many = 100, few = 20.
* ``shot_rule="inclusive"`` (OLTR, Liu et al.; the PLOT reference's evaluation): many if ``n_c >= many``, few
  if ``n_c <= few``.

The rule names and their implementation are :mod:`plot_hf.metrics`' (:func:`~plot_hf.metrics.shot_groups`), so
the data statistics, the metrics, the model cards and the recipes share one vocabulary.

Empty groups are left out of :attr:`ClassStats.groups` (CIFAR-10-LT at IF 100 has no few-shot class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..metrics import GROUPS as GROUP_NAMES
from ..metrics import SHOT_RULES, ShotRule, check_shot_rule, shot_groups

__all__ = ["GROUP_NAMES", "SHOT_RULES", "ClassStats", "ShotRule"]


@dataclass(frozen=True)
class ClassStats:
    """Training-split class counts with derived prior and shot groups.

    Args:
        counts (`tuple[int, ...]`): training images per class, class 0 first.
        many_shot_threshold (`int`, defaults to 100): see the module docstring for the rule.
        few_shot_threshold (`int`, defaults to 20): see the module docstring for the rule.
        shot_rule (`"strict"` or `"inclusive"`, defaults to `"strict"`): ``> / <`` or OLTR's ``>= / <=``.
    """

    counts: tuple[int, ...]
    many_shot_threshold: int = 100
    few_shot_threshold: int = 20
    shot_rule: ShotRule = "strict"
    _group_of: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", tuple(int(n) for n in self.counts))
        try:
            check_shot_rule(self.shot_rule, self.many_shot_threshold, self.few_shot_threshold)
        except ValueError as error:
            raise ValueError(f"`shot_rule` / `*_shot_threshold`: {error}") from None
        if any(n < 0 for n in self.counts):
            raise ValueError("Class counts must be non-negative.")
        groups = shot_groups(self.counts, self.many_shot_threshold, self.few_shot_threshold, self.shot_rule)
        group_of = {c: name for name, classes in groups.items() for c in classes}
        object.__setattr__(self, "_group_of", tuple(group_of[c] for c in range(len(self.counts))))

    @classmethod
    def from_labels(cls, labels: Sequence[int] | np.ndarray, num_classes: int, **kwargs: Any) -> ClassStats:
        """Count ``labels`` (ints in ``[0, num_classes)``) and build the statistics."""
        labels = np.asarray(labels, dtype=np.int64)
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise ValueError(f"Label(s) {sorted(set(bad.tolist()))[:5]} outside [0, {num_classes}).")
        return cls(tuple(np.bincount(labels, minlength=num_classes).tolist()), **kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def prior(self) -> np.ndarray:
        """``pi_c = n_c / N`` as float64."""
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / counts.sum()

    @property
    def group_of(self) -> tuple[str, ...]:
        """The group name (``"many"``, ``"medium"`` or ``"few"``) of each class."""
        return self._group_of

    @property
    def groups(self) -> dict[str, list[int]]:
        """``{group: [class, ...]}`` in the order many, medium, few; empty groups are left out."""
        out = {g: [c for c, gc in enumerate(self._group_of) if gc == g] for g in GROUP_NAMES}
        return {g: cs for g, cs in out.items() if cs}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (counts, prior, groups and the rule that made them)."""
        return {
            "counts": list(self.counts),
            "total": self.total,
            "prior": self.prior.tolist(),
            "groups": self.groups,
            "many_shot_threshold": self.many_shot_threshold,
            "few_shot_threshold": self.few_shot_threshold,
            "shot_rule": self.shot_rule,
        }
