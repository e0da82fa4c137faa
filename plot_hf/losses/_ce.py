"""Cross-entropy, focal and class-balanced losses."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from ._base import LOSSES, ClassCounts, LongTailedLoss, check_inputs, class_balanced_weights
from ._drw import DRWLoss


def focal_term(log_p_y: Tensor, gamma: float) -> Tensor:
    """``-(1 - p_y)^gamma * log p_y`` from ``log p_y`` (Lin et al. 2017, Eq. 4, without alpha)."""
    if gamma == 0:
        return -log_p_y
    return -((1.0 - log_p_y.exp()).clamp_min(0.0) ** gamma) * log_p_y


def _log_p_y(logits: Tensor, labels: Tensor) -> Tensor:
    return F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)


@LOSSES.register("ce")
class CELoss(DRWLoss):
    """Plain softmax cross-entropy, ``l_i = -log softmax(z_i)_{y_i}``, optionally with deferred re-weighting.

    Args:
        class_counts: training count of every class.
        drw_epoch (float, *optional*, defaults to None): epoch from which the DRW class weights apply
            (Cao et al. 2019; "CE-DRW" in their Table 2); None: never.
        drw_beta (float, *optional*, defaults to 0.9999): beta of the DRW class-balanced weights.
    """

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = check_inputs(logits, labels, self.num_classes)
        return self._reweight(F.cross_entropy(logits, labels, reduction="none"), labels)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, {self._drw_repr()}"


@LOSSES.register("focal")
class FocalLoss(LongTailedLoss):
    """Focal loss, Lin et al. 2017, "Focal Loss for Dense Object Detection" (ICCV), softmax form:
    ``l_i = -(1 - p_{y_i})^gamma log p_{y_i}``, ``p = softmax(z)``. ``gamma = 0`` is cross-entropy.

    Args:
        gamma (float, *optional*, defaults to 2.0): focusing parameter (Lin et al.'s default; the LDAM-DRW
            CIFAR runs use 1.0). The modulating factor is differentiated (not detached), as in the formula.
    """

    def __init__(self, class_counts: ClassCounts, gamma: float = 2.0) -> None:
        super().__init__(class_counts)
        if not gamma >= 0:
            raise ValueError(f"`gamma` must be >= 0, got {gamma}.")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = check_inputs(logits, labels, self.num_classes)
        return focal_term(_log_p_y(logits, labels), self.gamma)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self.gamma}"


@LOSSES.register("class_balanced")
class ClassBalancedLoss(LongTailedLoss):
    """Class-balanced loss, Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples"
    (CVPR): ``l_i = w_{y_i} * base(z_i, y_i)`` with ``w_j = (1 - beta) / (1 - beta^n_j)`` normalised
    to ``sum_j w_j = C``, and ``base`` softmax cross-entropy or softmax focal loss.

    Args:
        beta (float, *optional*, defaults to 0.9999): effective-number hyperparameter, in [0, 1).
        base (`"ce"` or `"focal"`, *optional*, defaults to `"ce"`): the loss that is re-weighted.
        gamma (float, *optional*, defaults to 2.0): focal gamma, used when ``base="focal"``.

    Departures: the softmax form only (the paper's best CIFAR results use sigmoid focal loss); the batch
    mean of the per-sample losses divides by ``B``, not by ``sum_i w_{y_i}``.
    """

    def __init__(
        self,
        class_counts: ClassCounts,
        beta: float = 0.9999,
        base: Literal["ce", "focal"] = "ce",
        gamma: float = 2.0,
    ) -> None:
        super().__init__(class_counts)
        if base not in ("ce", "focal"):
            raise ValueError(f"`base` must be one of 'ce', 'focal', got {base!r}.")
        if not gamma >= 0:
            raise ValueError(f"`gamma` must be >= 0, got {gamma}.")
        self.beta, self.base, self.gamma = float(beta), base, float(gamma)
        weights = class_balanced_weights(self.class_counts.double(), self.beta)
        self.register_buffer("weights", weights.to(self.class_counts.dtype))

    def class_weights(self) -> Tensor:
        return self.weights

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = check_inputs(logits, labels, self.num_classes)
        gamma = self.gamma if self.base == "focal" else 0.0
        return self._reweight(focal_term(_log_p_y(logits, labels), gamma), labels)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, beta={self.beta}, base={self.base!r}, gamma={self.gamma}"
