"""Label-aware smoothing (MiSLAS stage 2)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import LOSSES, ClassCounts, LongTailedLoss, as_class_counts, check_inputs

SmoothingShape = Literal["concave", "linear", "convex", "exp"]


def label_aware_epsilons(
    class_counts: ClassCounts,
    smooth_head: float = 0.4,
    smooth_tail: float = 0.1,
    shape: SmoothingShape = "concave",
    power: float | None = None,
) -> Tensor:
    """Per-class smoothing ``eps_j`` of Zhong et al. 2021, "Improving Calibration for Long-Tailed Recognition"
    (CVPR), as in dvlab-research/MiSLAS (float64 ``[C]``). With ``x_j = (n_j - n_min) / (n_max - n_min)``:

    * ``concave``: ``eps_tail + (eps_head - eps_tail) * sin(pi x_j / 2)`` (MiSLAS's default),
    * ``linear``:  ``eps_tail + (eps_head - eps_tail) * x_j``,
    * ``convex``:  ``eps_head - (eps_head - eps_tail) * cos(pi x_j / 2)``,
    * ``exp``:     ``eps_tail + (eps_head - eps_tail) * x_j^power``.

    The most frequent class gets ``smooth_head``, the rarest ``smooth_tail``. Departure: with all counts
    equal (MiSLAS divides by zero) every class gets ``smooth_head``.
    """
    counts = as_class_counts(class_counts)
    for key, value in (("smooth_head", smooth_head), ("smooth_tail", smooth_tail)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`{key}` must be in [0, 1), got {value}.")
    if shape not in ("concave", "linear", "convex", "exp"):
        raise ValueError(f"`shape` must be one of 'concave', 'linear', 'convex', 'exp', got {shape!r}.")
    if shape == "exp" and (power is None or not power > 0):
        raise ValueError(f"`power` must be > 0 when `shape` is 'exp', got {power}.")
    span = counts.max() - counts.min()
    if span == 0:
        return torch.full_like(counts, smooth_head)
    x = (counts - counts.min()) / span
    if shape == "concave":
        profile = torch.sin(x * math.pi / 2)
    elif shape == "linear":
        profile = x
    elif shape == "convex":
        profile = 1.0 - torch.cos(x * math.pi / 2)
    else:
        profile = x.pow(power)
    return smooth_tail + (smooth_head - smooth_tail) * profile


@LOSSES.register("label_aware_smoothing")
class LabelAwareSmoothingLoss(LongTailedLoss):
    """Label-aware smoothing, Zhong et al. 2021 (MiSLAS), as in dvlab-research/MiSLAS:

    ``l_i = (1 - eps_{y_i}) * (-log p_{i,y_i}) + eps_{y_i} * mean_j(-log p_{ij})``, ``p = softmax(z)``,
    ``eps`` from :func:`label_aware_epsilons` (head classes are smoothed more).

    Args:
        smooth_head (float, *optional*, defaults to 0.4): ``eps`` of the most frequent class (MiSLAS,
            CIFAR-100-LT; their CIFAR-10-LT configs use 0.3).
        smooth_tail (float, *optional*, defaults to 0.1): ``eps`` of the rarest class (CIFAR-10-LT: 0.0).
        shape (`"concave"`, `"linear"`, `"convex"` or `"exp"`, *optional*, defaults to `"concave"`): profile.
        power (float, *optional*): exponent for ``shape="exp"``.
    """

    def __init__(
        self,
        class_counts: ClassCounts,
        smooth_head: float = 0.4,
        smooth_tail: float = 0.1,
        shape: SmoothingShape = "concave",
        power: float | None = None,
    ) -> None:
        super().__init__(class_counts)
        eps = label_aware_epsilons(self.class_counts.double(), smooth_head, smooth_tail, shape, power)
        self.smooth_head, self.smooth_tail, self.shape, self.power = smooth_head, smooth_tail, shape, power
        self.register_buffer("epsilons", eps.float())

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = check_inputs(logits, labels, self.num_classes)
        log_p = F.log_softmax(logits, dim=-1)
        eps = self.epsilons.to(device=logits.device, dtype=logits.dtype)[labels]
        nll = -log_p.gather(1, labels[:, None]).squeeze(1)
        return (1.0 - eps) * nll + eps * (-log_p.mean(dim=-1))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, smooth_head={self.smooth_head}, smooth_tail={self.smooth_tail}, "
            f"shape={self.shape!r}, power={self.power}"
        )
