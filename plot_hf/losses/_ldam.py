"""LDAM loss with optional deferred re-weighting (LDAM-DRW)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._base import LOSSES, ClassCounts, as_class_counts, check_inputs
from ._drw import DRWLoss


def ldam_margins(class_counts: ClassCounts, max_m: float = 0.5) -> Tensor:
    """LDAM margins (Cao et al. 2019): ``m_j = K / n_j^(1/4)`` with ``K`` such that ``max_j m_j = max_m``,
    i.e. ``m_j = max_m * (n_min / n_j)^(1/4)`` (float64 ``[C]``)."""
    counts = as_class_counts(class_counts)
    if not max_m > 0:
        raise ValueError(f"`max_m` must be > 0, got {max_m}.")
    margins = counts.pow(-0.25)
    return margins * (max_m / margins.max())


@LOSSES.register("ldam")
class LDAMLoss(DRWLoss):
    """Label-distribution-aware margin loss, Cao et al. 2019, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss" (NeurIPS), as released in kaidic/LDAM-DRW:

    ``l_i = w_{y_i} * CE(s * (z_i - m_{y_i} e_{y_i}), y_i)``, margins from :func:`ldam_margins`, ``w`` the DRW
    weights (all ones before ``drw_epoch``; see :class:`~plot_hf.losses._drw.DRWLoss`).

    The logits must be cosine similarities from a :class:`~plot_hf.losses.NormedLinear` classifier
    (``requires_normed_classifier``); the scale ``s`` makes them a usable softmax input.

    Args:
        max_m (float, *optional*, defaults to 0.5): the largest margin (that of the rarest class).
        s (float, *optional*, defaults to 30.0): logit scale.
        drw_epoch (float, *optional*, defaults to None): deferral epoch (160 of 200 in the paper); None: LDAM
            alone.
        drw_beta (float, *optional*, defaults to 0.9999): beta of the DRW class-balanced weights.
    """

    requires_normed_classifier = True

    def __init__(
        self,
        class_counts: ClassCounts,
        max_m: float = 0.5,
        s: float = 30.0,
        drw_epoch: float | None = None,
        drw_beta: float = 0.9999,
    ) -> None:
        super().__init__(class_counts, drw_epoch=drw_epoch, drw_beta=drw_beta)
        if not s > 0:
            raise ValueError(f"`s` must be > 0, got {s}.")
        self.max_m, self.s = float(max_m), float(s)
        self.register_buffer("margins", ldam_margins(self.class_counts.double(), self.max_m).float())

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = check_inputs(logits, labels, self.num_classes)
        margin = self.margins.to(device=logits.device, dtype=logits.dtype)[labels]
        shifted = logits - F.one_hot(labels, self.num_classes).to(logits.dtype) * margin[:, None]
        return self._reweight(F.cross_entropy(self.s * shifted, labels, reduction="none"), labels)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, max_m={self.max_m}, s={self.s}, {self._drw_repr()}"
