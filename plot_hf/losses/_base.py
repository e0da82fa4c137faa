"""The loss interface shared by every long-tailed baseline, the class-balanced weights, and mixup.

Notation: ``z`` logits ``[B, C]``, ``y`` integer labels ``[B]``, ``n_j`` training count of class ``j``,
``pi_j = n_j / N`` the training prior, ``C`` the number of classes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import Registry

ClassCounts = Sequence[int] | Tensor
"""Training count of every class, in class-index order (all positive)."""

LOSSES = Registry("loss")


def as_class_counts(class_counts: ClassCounts) -> Tensor:
    """Validate ``class_counts`` and return it as a float64 CPU tensor ``[C]``."""
    counts = torch.as_tensor(
        class_counts.detach().cpu() if isinstance(class_counts, Tensor) else list(class_counts),
        dtype=torch.float64,
    )
    if counts.ndim != 1 or counts.numel() < 1:
        raise ValueError(f"`class_counts` must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}.")
    if not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
        raise ValueError(
            f"`class_counts` must be finite and positive (every class needs a training sample), got "
            f"{counts.tolist()}."
        )
    return counts


def class_balanced_weights(class_counts: ClassCounts, beta: float = 0.9999) -> Tensor:
    """Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples" (CVPR); returns float64 ``[C]``.

    ``w_j = (1 - beta) / (1 - beta^n_j)``, normalised so that ``sum_j w_j = C``. ``beta = 0`` gives all ones;
    ``beta -> 1`` approaches inverse-frequency weights.
    """
    counts = as_class_counts(class_counts)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"`beta` must be in [0, 1), got {beta}.")
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return weights * (counts.numel() / weights.sum())


def check_inputs(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Validate shapes; return the logits in at least float32 (losses of half-precision logits are
    computed in float32, as autocast does for ``cross_entropy``)."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"`logits` must have shape [B, {num_classes}], got {tuple(logits.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0] or labels.is_floating_point():
        raise ValueError(
            f"`labels` must be an integer tensor of shape [{logits.shape[0]}], got {tuple(labels.shape)} "
            f"({labels.dtype})."
        )
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


class LongTailedLoss(nn.Module):
    """Base class of every long-tailed loss: ``forward(logits, labels) -> per-sample losses [B]``.

    The reduction is always "none": PLOT groups the per-sample losses by class to form its objectives, and
    the trainer takes their mean for the plain step. Subclasses are built from the training class counts
    (kept as the buffer ``class_counts``, so ``.to(device)`` moves everything) and may use:

    * ``set_epoch(epoch)``: the trainer calls it with the (fractional) number of epochs done, before each
      step; schedules such as deferred re-weighting (DRW) read ``self.epoch``.
    * ``logit_adjustment(logits)``: the label-independent shift the loss applies to the logits before its
      cross-entropy (identity by default; ``z + log n`` for Balanced Softmax). Predictions are always taken
      from the raw logits; for post-hoc adjustment see :func:`posthoc_logit_adjustment`.
    * ``requires_normed_classifier``: True when the loss expects cosine logits from a
      :class:`~plot_hf.losses.NormedLinear` head (LDAM, GCL); the model builder reads it.

    Mixup is applied outside the loss, with :func:`mixup_loss`.
    """

    requires_normed_classifier: ClassVar[bool] = False

    def __init__(self, class_counts: ClassCounts) -> None:
        super().__init__()
        counts = as_class_counts(class_counts)
        self.register_buffer("class_counts", counts.to(torch.float32))
        self.epoch = 0.0

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    def set_epoch(self, epoch: float) -> None:
        """Record the number of epochs done (may be fractional); schedules read ``self.epoch``."""
        epoch = float(epoch)
        if not math.isfinite(epoch) or epoch < 0:
            raise ValueError(f"`epoch` must be a finite number >= 0, got {epoch}.")
        self.epoch = epoch

    def logit_adjustment(self, logits: Tensor) -> Tensor:
        """Label-independent shift applied to the logits inside the loss (identity here)."""
        return logits

    def class_weights(self) -> Tensor | None:
        """Per-class loss weights ``[C]`` in effect now, or ``None`` for unweighted."""
        return None

    def _reweight(self, losses: Tensor, labels: Tensor) -> Tensor:
        weights = self.class_weights()
        if weights is None:
            return losses
        return losses * weights.to(device=losses.device, dtype=losses.dtype)[labels]

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract: each loss returns per-sample losses [B]


def mixup_loss(
    loss_fn: nn.Module, logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float | Tensor
) -> Tensor:
    """Mixup criterion (Zhang et al. 2018), per sample: ``lam * loss(z, y_a) + (1 - lam) * loss(z, y_b)``.

    ``logits`` are the model's outputs on the mixed inputs ``lam * x_a + (1 - lam) * x_b``; ``lam`` is a
    float or a tensor broadcastable to ``[B]``. Works with any loss returning per-sample losses; a loss
    with random noise in training mode (GCL) draws independent noise for the two terms, as the reference
    code does.
    """
    return lam * loss_fn(logits, labels_a) + (1 - lam) * loss_fn(logits, labels_b)


def build_loss(name: str, class_counts: ClassCounts, **kwargs: Any) -> LongTailedLoss:
    """Build the loss registered as ``name`` (see ``LOSSES``) from the training class counts.

    Raises ``ValueError`` for an unknown name (listing the valid names) and ``TypeError`` for a keyword
    the loss does not accept (listing the accepted ones).
    """
    cls = LOSSES[name]
    signature = inspect.signature(cls)
    try:
        signature.bind(class_counts, **kwargs)
    except TypeError as error:
        accepted = [p for p in signature.parameters if p != "class_counts"]
        raise TypeError(
            f"Loss `{name}` got bad arguments {sorted(kwargs)} ({error}); it accepts: {', '.join(accepted)}."
        ) from None
    return cls(class_counts, **kwargs)
