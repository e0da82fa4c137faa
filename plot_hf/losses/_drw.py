"""Deferred re-weighting (DRW), Cao et al. 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware
Margin Loss" (NeurIPS), Algorithm 1, as released in kaidic/LDAM-DRW."""

from __future__ import annotations

from torch import Tensor

from ._base import ClassCounts, LongTailedLoss, class_balanced_weights


class DRWLoss(LongTailedLoss):
    """A loss with an optional deferred re-weighting schedule.

    Before ``drw_epoch`` every class weighs 1; from it on (``self.epoch >= drw_epoch``, ``self.epoch`` being
    the number of epochs done, set by :meth:`set_epoch`) class ``j`` weighs
    ``w_j = (1 - beta) / (1 - beta^n_j)``, normalised to ``sum_j w_j = C`` (``beta = drw_beta = 0.9999``). The
    reference code switches at the start of 0-indexed epoch 160 of 200, i.e. ``drw_epoch = 160``.
    ``drw_epoch=None`` disables the schedule.

    Departure: the per-sample loss returned is ``w_y * l_i``, so its batch mean is ``sum_i w_{y_i} l_i / B``;
    the reference's ``F.cross_entropy(weight=w)`` divides by ``sum_i w_{y_i}`` instead.
    """

    def __init__(
        self, class_counts: ClassCounts, drw_epoch: float | None = None, drw_beta: float = 0.9999
    ) -> None:
        super().__init__(class_counts)
        if drw_epoch is not None and not drw_epoch >= 0:
            raise ValueError(f"`drw_epoch` must be None or >= 0, got {drw_epoch}.")
        self.drw_epoch = None if drw_epoch is None else float(drw_epoch)
        self.drw_beta = float(drw_beta)
        weights = class_balanced_weights(self.class_counts.double(), self.drw_beta)
        self.register_buffer("drw_weights", weights.to(self.class_counts.dtype))

    def class_weights(self) -> Tensor | None:
        if self.drw_epoch is None or self.epoch < self.drw_epoch:
            return None
        return self.drw_weights

    def _drw_repr(self) -> str:
        return f"drw_epoch={self.drw_epoch}, drw_beta={self.drw_beta}"
