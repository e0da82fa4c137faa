"""Balanced Softmax and logit adjustment (loss and post-hoc)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import LOSSES, ClassCounts, LongTailedLoss, as_class_counts, check_inputs


def log_prior(class_counts: ClassCounts) -> Tensor:
    """``log pi_j = log(n_j / N)`` (float64 ``[C]``)."""
    counts = as_class_counts(class_counts)
    return (counts / counts.sum()).log()


def posthoc_logit_adjustment(logits: Tensor, class_counts: ClassCounts, tau: float = 1.0) -> Tensor:
    """Post-hoc logit adjustment, Menon et al. 2021, "Long-tail learning via logit adjustment" (ICLR):
    ``z - tau * log pi``; predict with its argmax. Keeps the logits' device and dtype."""
    shift = log_prior(class_counts).to(device=logits.device, dtype=logits.dtype)
    return logits - tau * shift


class _LogitShiftLoss(LongTailedLoss):
    """``l_i = CE(z_i + shift, y_i)`` for a fixed per-class ``shift`` buffer ``[C]``."""

    shift: Tensor

    def logit_adjustment(self, logits: Tensor) -> Tensor:
        return logits + self.shift.to(device=logits.device, dtype=logits.dtype)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = check_inputs(logits, labels, self.num_classes)
        return F.cross_entropy(self.logit_adjustment(logits), labels, reduction="none")


@LOSSES.register("balanced_softmax")
class BalancedSoftmaxLoss(_LogitShiftLoss):
    """Balanced Softmax, Ren et al. 2020, "Balanced Meta-Softmax for Long-Tailed Visual Recognition"
    (NeurIPS): ``l_i = CE(z_i + log n, y_i) = -log(n_y e^{z_y} / sum_j n_j e^{z_j})``.

    Equal to :class:`LogitAdjustedLoss` with ``tau = 1`` (``log n`` and ``log pi`` differ by a constant).
    Predictions use the raw logits.
    """

    def __init__(self, class_counts: ClassCounts) -> None:
        super().__init__(class_counts)
        self.register_buffer("shift", self.class_counts.double().log().float())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


@LOSSES.register("logit_adjustment")
class LogitAdjustedLoss(_LogitShiftLoss):
    """Logit-adjusted loss, Menon et al. 2021, "Long-tail learning via logit adjustment" (ICLR):
    ``l_i = CE(z_i + tau * log pi, y_i)``. Predictions use the raw logits.

    Args:
        tau (float, *optional*, defaults to 1.0): temperature of the prior shift; 1 gives Balanced Softmax.
    """

    def __init__(self, class_counts: ClassCounts, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = float(tau)
        self.register_buffer("shift", (self.tau * log_prior(self.class_counts.double())).to(torch.float32))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, tau={self.tau}"
