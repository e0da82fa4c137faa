"""Per-class objectives and the variability-collapse loss.

With per-sample losses ``l_i``, labels ``y_i`` and batch size ``B``, PLOT's objective for a class ``k`` present
in the batch is

    L_k = (1 / B) * sum_{i : y_i = k} l_i,

so that ``sum_k L_k`` is the batch-mean loss. Classes absent from the batch are left out.
"""

from __future__ import annotations

import torch


def per_class_objectives(
    per_sample_losses: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(classes, objectives)``: the sorted classes present and ``L_k`` for each of them.

    ``batch_size`` defaults to ``len(per_sample_losses)``; pass the global batch size when the batch is split.
    """
    if per_sample_losses.ndim != 1 or per_sample_losses.shape != labels.shape:
        raise ValueError(
            f"`per_sample_losses` and `labels` must be 1-D of the same length, got {tuple(per_sample_losses.shape)} "
            f"and {tuple(labels.shape)}."
        )
    classes, position = torch.unique(labels, sorted=True, return_inverse=True)
    denominator = float(batch_size if batch_size is not None else per_sample_losses.numel())
    sums = per_sample_losses.new_zeros(classes.numel()).index_add(0, position, per_sample_losses)
    return classes, sums / denominator


def variability_collapse_loss(per_sample_losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PLOT's variability-collapse penalty: the mean over classes with >= 2 samples of the std of their losses.

        L_vc = (1 / |K2|) * sum_{k in K2} std({l_i : y_i = k}),   K2 = {k : n_k >= 2},

    with the unbiased std (``torch.std``'s default, as in the reference code). It is 0 when no class has two
    samples. Unlike ``torch.std``, a class whose losses are all equal contributes 0 with a finite (zero) gradient.
    """
    classes, position = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(position, minlength=classes.numel()).to(per_sample_losses.dtype)
    sums = per_sample_losses.new_zeros(classes.numel()).index_add(0, position, per_sample_losses)
    means = sums / counts
    centred = per_sample_losses - means[position]
    squares = per_sample_losses.new_zeros(classes.numel()).index_add(0, position, centred * centred)
    eligible = counts >= 2
    variance = squares / (counts - 1).clamp_min(1)
    positive = eligible & (variance > 0)
    std = torch.where(positive, variance.clamp_min(torch.finfo(variance.dtype).tiny).sqrt(), variance.new_zeros(()))
    num_eligible = eligible.sum()
    return std.sum() / num_eligible.clamp_min(1).to(std.dtype)


class ObjectiveIds:
    """Which objective each sample's loss belongs to: its class, or its class's group.

    With ``class_to_group`` (a LongTensor of length C, see :func:`plot_hf.moo.class_groups.frequency_groups`)
    the objectives are the groups ``L_m = (1 / B) * sum_{i : group(y_i) = m} l_i``; without it, the classes.
    ``num_ids`` is the number of possible ids (C, or the number of groups).
    """

    def __init__(self, num_classes: int, class_to_group: torch.Tensor | None = None):
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
        if class_to_group is not None and class_to_group.numel() != num_classes:
            raise ValueError(
                f"`class_to_group` has {class_to_group.numel()} entries but there are {num_classes} classes."
            )
        self.num_classes = num_classes
        self.class_to_group = class_to_group
        self.num_ids = num_classes if class_to_group is None else int(class_to_group.max()) + 1

    def __repr__(self) -> str:
        return f"ObjectiveIds(num_classes={self.num_classes}, num_ids={self.num_ids})"

    @property
    def are_classes(self) -> bool:
        return self.class_to_group is None

    def __call__(self, class_labels: torch.Tensor) -> torch.Tensor:
        if self.class_to_group is None:
            return class_labels
        return self.class_to_group.to(class_labels.device)[class_labels]
