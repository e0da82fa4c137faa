"""Class groups as objectives: frequency-ordered bins of classes.

With training counts ``n_1..n_C`` and ``M`` groups, the classes are sorted by decreasing count (ties by class
id) and cut into ``M`` contiguous bins of ``ceil(C / M)`` or ``floor(C / M)`` classes: bin 0 holds the head
classes, bin ``M - 1`` the tail. A group's objective is the sum of its classes' objectives,

    L_m = sum_{k in bin m} L_k = (1 / B) * sum_{i : bin(y_i) = m} l_i,

so the group objectives still add up to the batch-mean loss, and the solver sees at most ``M`` objectives
(its Gramian is ``M x M`` and the exact per-group gradients cost ``M`` partial backward passes instead of K).
A group's preference (the CAGrad anchor) is the mean of its classes' preferences.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["frequency_groups", "group_anchor_table"]


def frequency_groups(class_counts: Sequence[int], num_groups: int) -> torch.Tensor:
    """The bin of every class (a LongTensor of length C, values in ``[0, min(num_groups, C))``)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    num_classes = counts.numel()
    if num_groups < 1:
        raise ValueError(f"`num_groups` must be >= 1, got {num_groups}.")
    groups = min(int(num_groups), num_classes)
    order = sorted(range(num_classes), key=lambda c: (-float(counts[c]), c))
    bins = torch.empty(num_classes, dtype=torch.long)
    for rank, cls in enumerate(order):
        bins[cls] = rank * groups // num_classes
    return bins


def group_anchor_table(class_table: torch.Tensor, class_to_group: torch.Tensor) -> torch.Tensor:
    """Per-group preference: the mean of ``class_table`` over each group's classes."""
    groups = int(class_to_group.max()) + 1
    sums = torch.zeros(groups, dtype=class_table.dtype).index_add(0, class_to_group, class_table)
    sizes = torch.bincount(class_to_group, minlength=groups).to(class_table.dtype)
    return sums / sizes
