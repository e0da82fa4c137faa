"""The reference learning-rate schedule: linear warm-up, then step decay at milestone epochs."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_multistep_factor(
    epoch: int, warmup_epochs: float, milestones: Sequence[float], decay: float, warmup_start: float = 1 / 3
) -> float:
    """Learning-rate factor at integer ``epoch`` (as the reference's ``WarmupMultiStepLR``, stepped per epoch).

    ``factor = w(epoch) * decay ** #{m in milestones : m <= epoch}`` with the linear warm-up
    ``w(e) = warmup_start * (1 - e / warmup_epochs) + e / warmup_epochs`` for ``e < warmup_epochs``, else 1.
    """
    warm = 1.0
    if epoch < warmup_epochs:
        progress = epoch / warmup_epochs
        warm = warmup_start * (1 - progress) + progress
    return warm * decay ** bisect_right(list(milestones), epoch)


def warmup_multistep_schedule(
    optimizer: Optimizer, *, steps_per_epoch: int, warmup_epochs: float, milestones: Sequence[float], decay: float
) -> LambdaLR:
    """A per-step ``LambdaLR`` whose factor changes once per epoch, following :func:`warmup_multistep_factor`."""
    return LambdaLR(
        optimizer,
        lambda step: warmup_multistep_factor(step // steps_per_epoch, warmup_epochs, milestones, decay),
    )
