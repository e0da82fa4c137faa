"""The reference learning-rate schedule: linear warm-up, then step decay at milestone epochs.

The factor follows ``WarmupMultiStepLR`` of the reference code (``utils/lr_scheduler.py``) as a function of
its epoch counter ``t``. When that counter advances is a separate choice (``timing``):

- ``"epoch_end"``: PyTorch's convention (the scheduler steps after each epoch): epoch ``e`` (0-based) trains
  with ``f(e)``, so training starts at ``warmup_start`` times the rate.
- ``"epoch_start"``: what the reference's training loop does (it steps the scheduler *before* each epoch):
  epoch ``e`` trains with ``f(e + 1)``. With 5 warm-up epochs and milestones 160 / 180: 0.467, 0.6, 0.733,
  0.867 in epochs 0-3, 1.0 from epoch 4, x0.1 from epoch 159 and again from epoch 179.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

TIMING_OFFSET = {"epoch_end": 0, "epoch_start": 1}


def warmup_multistep_factor(
    epoch: int, warmup_epochs: float, milestones: Sequence[float], decay: float, warmup_start: float = 1 / 3
) -> float:
    """Learning-rate factor ``f(t)`` of ``WarmupMultiStepLR`` at its integer epoch counter ``t = epoch``.

    ``f(t) = w(t) * decay ** #{m in milestones : m <= t}`` with the linear warm-up
    ``w(t) = warmup_start * (1 - t / warmup_epochs) + t / warmup_epochs`` for ``t < warmup_epochs``, else 1.
    Which epoch of training uses ``f(t)`` is :func:`warmup_multistep_schedule`'s ``timing``.
    """
    warm = 1.0
    if epoch < warmup_epochs:
        progress = epoch / warmup_epochs
        warm = warmup_start * (1 - progress) + progress
    return warm * decay ** bisect_right(list(milestones), epoch)


def warmup_multistep_schedule(
    optimizer: Optimizer,
    *,
    steps_per_epoch: int,
    warmup_epochs: float,
    milestones: Sequence[float],
    decay: float,
    timing: Literal["epoch_end", "epoch_start"] = "epoch_end",
) -> LambdaLR:
    """A per-step ``LambdaLR`` whose factor changes once per epoch: epoch ``e`` (step ``s``,
    ``e = s // steps_per_epoch``) trains with ``f(e)`` (``timing="epoch_end"``) or ``f(e + 1)``
    (``"epoch_start"``, the reference's), ``f`` being :func:`warmup_multistep_factor`."""
    if timing not in TIMING_OFFSET:
        raise ValueError(f"`lr_schedule_timing`={timing!r} is invalid: choose one of {tuple(TIMING_OFFSET)}.")
    offset = TIMING_OFFSET[timing]
    return LambdaLR(
        optimizer,
        lambda step: warmup_multistep_factor(step // steps_per_epoch + offset, warmup_epochs, milestones, decay),
    )
