"""Per-class statistics of the training split: counts, prior, and many/medium/few-shot groups.

Groups are always computed from the TRAINING counts ``n_c`` (never from the test split):

* ``shot_rule="strict"`` (default; Kang et al.'s classifier-balancing line): many if ``n_c > many``,
  few if ``n_c < few``, medium otherwise; with the defaults many = 100, few = 20.
* ``shot_rule="inclusive"`` (OLTR, Liu et al.): many if ``n_c >= many``, few if ``n_c <= few``.

Empty groups are left out of :attr:`ClassStats.groups` (CIFAR-10-LT at IF 100 has no few-shot class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

ShotRule = Literal["strict", "inclusive"]
SHOT_RULES: tuple[str, ...] = ("strict", "inclusive")
GROUP_NAMES: tuple[str, ...] = ("many", "medium", "few")


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
        if self.shot_rule not in SHOT_RULES:
            raise ValueError(f"Unknown `shot_rule` {self.shot_rule!r}; choose one of {SHOT_RULES}.")
        if self.few_shot_threshold > self.many_shot_threshold:
            raise ValueError(
                f"`few_shot_threshold` ({self.few_shot_threshold}) must not exceed "
                f"`many_shot_threshold` ({self.many_shot_threshold})."
            )
        if any(n < 0 for n in self.counts):
            raise ValueError("Class counts must be non-negative.")
        object.__setattr__(self, "_group_of", tuple(self._classify(n) for n in self.counts))

    def _classify(self, n: int) -> str:
        if self.shot_rule == "strict":
            many, few = n > self.many_shot_threshold, n < self.few_shot_threshold
        else:
            many, few = n >= self.many_shot_threshold, n <= self.few_shot_threshold
        return "many" if many else "few" if few else "medium"

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
