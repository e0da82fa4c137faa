"""Apply a precomputed direction to some parameters inside an ordinary backward pass.

PLOT gives the MOO parameters the direction ``d = G^T lambda`` and every other parameter the gradient of the
total loss. Doing both with ONE backward keeps gradient accumulation, loss scaling, clipping and DDP's
gradient hooks working unchanged. :func:`replace_gradient` is the identity in the forward pass; in the
backward pass it discards the incoming gradient and returns ``scale * d`` instead, where ``scale`` is the
factor the caller applied to the loss (``1 / gradient_accumulation_steps`` times the loss-scaler's scale).
Since ``d`` is linear in the class losses, this equals a backward of ``sum_k lambda_k L_k`` restricted to
those parameters.
"""

from __future__ import annotations

import torch


class DirectionSlot:
    """Holds the direction for one tensor until the backward pass reads it."""

    __slots__ = ("direction", "scale")

    def __init__(self) -> None:
        self.direction: torch.Tensor | None = None
        self.scale: float | torch.Tensor = 1.0

    def fill(self, direction: torch.Tensor, scale: float | torch.Tensor = 1.0) -> None:
        self.direction = direction
        self.scale = scale


class _ReplaceGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, slot: DirectionSlot) -> torch.Tensor:  # type: ignore[override]
        ctx.slot = slot
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        slot: DirectionSlot = ctx.slot
        if slot.direction is None:
            raise RuntimeError("replace_gradient: the backward pass ran before the direction was filled in.")
        return (slot.direction * slot.scale).to(grad_output.dtype), None


def replace_gradient(tensor: torch.Tensor, slot: DirectionSlot) -> torch.Tensor:
    """Identity whose backward returns ``slot.scale * slot.direction`` instead of the incoming gradient."""
    return _ReplaceGradient.apply(tensor, slot)
