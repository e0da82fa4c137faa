"""Numerical faults: skip optimizer steps whose loss or gradients are not finite, stop after too many in a row.

:class:`NonFiniteGuard` wraps the (inner, torch) optimizer's ``step``. A step is *bad* when a micro-batch of
it returned a non-finite loss (:meth:`NonFiniteGuard.mark_loss`) or any gradient is NaN/inf when the optimizer
is about to step. A bad step is skipped: the gradients are zeroed, ``optimizer.step`` is not called (so the
parameters and the optimizer state, momentum included, are untouched), batch-norm running statistics are
restored by the trainer, and the step is counted. The learning-rate schedule still advances with
``global_step``. After ``max_consecutive`` bad steps in a row, :class:`NonFiniteTrainingError` is raised:
nothing is saved, so the last checkpoint stays the last good one.

Under fp16 with a ``GradScaler`` the scaler skips overflowing steps itself, before this guard is reached.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Training produced ``max_consecutive_bad_steps`` optimizer steps in a row with a NaN/inf loss or gradient."""


def grads_are_finite(params: Iterable[torch.Tensor]) -> bool:
    """True when every existing ``.grad`` is finite (one synchronisation)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


class NonFiniteGuard(TrainerCallback):
    """Counts and skips bad optimizer steps; see the module docstring. As a callback, it forgets a bad loss
    at the end of each optimizer step (a step that a GradScaler skipped never reaches the guard)."""

    def __init__(self, max_consecutive: int, describe: Callable[[], str] = lambda: "") -> None:
        self.max_consecutive = max_consecutive
        self.describe = describe
        self.skipped = 0
        self.consecutive = 0
        self._bad_loss = False
        self._installed: set[int] = set()

    def mark_loss(self, loss: torch.Tensor | float) -> bool:
        """Record a micro-batch loss; returns whether it is finite."""
        finite = bool(torch.isfinite(torch.as_tensor(loss)).all())
        if not finite:
            self._bad_loss = True
        return finite

    def on_step_end(self, args, state, control, **kwargs):
        self._bad_loss = False

    def install(self, optimizer: torch.optim.Optimizer) -> None:
        """Wrap ``optimizer.step`` (once per optimizer)."""
        if id(optimizer) in self._installed:
            return
        original = optimizer.step

        @functools.wraps(original)
        def guarded_step(*args, **kwargs):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if self._bad_loss or not grads_are_finite(params):
                self._skip(params)
                return None
            self.consecutive = 0
            return original(*args, **kwargs)

        optimizer.step = guarded_step  # type: ignore[method-assign]
        self._installed.add(id(optimizer))

    def _skip(self, params: list[torch.Tensor]) -> None:
        reason = "loss" if self._bad_loss else "gradient"
        self._bad_loss = False
        for p in params:
            p.grad = None
        self.skipped += 1
        self.consecutive += 1
        where = self.describe()
        logger.warning("Non-finite %s%s: optimizer step skipped (%d skipped in all, %d in a row).",
                       reason, f" at {where}" if where else "", self.skipped, self.consecutive)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"{self.consecutive} consecutive optimizer steps had a NaN/inf {reason}{f' (at {where})' if where else ''};"
                f" training stopped (`max_consecutive_bad_steps`={self.max_consecutive}). Nothing was saved after "
                "the last good checkpoint. Lower the learning rate, check the inputs for NaN/inf, or use bf16/fp32."
            )
