"""The sharpness-aware (SAM) perturbation of Foret et al. (2021), restricted to a parameter set.

Given the gradient ``g`` of the batch loss w.r.t. parameters ``theta``, SAM evaluates the loss at

    theta + eps,   eps = rho * g / ||g||_2   (norm over all the parameters of the set together),

and restores ``theta`` afterwards. The released PLOT CIFAR-10 configs keep a fraction ``r`` of the
perturbation (``theta <- theta + r * eps``, their ``perturb_radius``); plain SAM restores fully (``r = 0``).
The PLOT step never moves ``theta`` in place: it evaluates the loss at the tensor ``theta + eps``
(:mod:`plot_hf.step`), so the restore is exact by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sam_epsilon(grads: Sequence[torch.Tensor], rho: float, eps: float = 1e-12) -> list[torch.Tensor]:
    """``rho * g / (||g|| + eps)`` for each tensor of ``g``; all zeros when the gradient is zero."""
    if rho < 0:
        raise ValueError(f"`rho` must be >= 0, got {rho}.")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = rho / (norm + eps)
    return [g * scale.to(g.dtype) for g in grads]


def all_finite(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d boolean tensor (no host read): every entry of every tensor is finite."""
    return torch.stack([torch.isfinite(g).all() for g in grads]).all()


def gradient_is_finite(grads: Sequence[torch.Tensor]) -> bool:
    """True when every entry of every tensor is finite (one synchronisation)."""
    return bool(all_finite(grads))


def finite_sam_epsilon(grads: Sequence[torch.Tensor], rho: float, *, host_reads: bool) -> list[torch.Tensor]:
    """:func:`sam_epsilon`, or zeros when the ascent gradient is not finite (an fp16 overflow): no perturbation
    rather than poisoned weights. ``host_reads``: one host read decides; otherwise the choice stays on the device
    (a non-finite gradient is replaced by zeros, whose epsilon is zero)."""
    if not host_reads:
        finite = all_finite(grads)
        return sam_epsilon([torch.where(finite, g, torch.zeros_like(g)) for g in grads], rho)
    if gradient_is_finite(grads):
        return sam_epsilon(grads, rho)
    return [torch.zeros_like(g) for g in grads]
