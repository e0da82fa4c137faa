"""The sharpness-aware (SAM) perturbation of Foret et al. (2021), restricted to a parameter set.

Given the gradient ``g`` of the batch loss w.r.t. parameters ``theta``, SAM evaluates the loss at

    theta + eps,   eps = rho * g / ||g||_2   (norm over all the parameters of the set together),

and restores ``theta`` afterwards. The released PLOT CIFAR-10 configs keep a fraction ``r`` of the
perturbation (``theta <- theta + r * eps``, their ``perturb_radius``); plain SAM restores fully (``r = 0``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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


@contextmanager
def perturbed(
    params: Sequence[torch.Tensor], epsilon: Sequence[torch.Tensor], keep_fraction: float = 0.0
) -> Iterator[None]:
    """Add ``epsilon`` to ``params`` in place; on exit restore them exactly (``copy_`` of a saved copy).

    With ``keep_fraction = r > 0`` the parameters end at ``saved + r * epsilon`` instead.
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"`keep_fraction` must be in [0, 1], got {keep_fraction}.")
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, e in zip(params, epsilon, strict=True):
            p.add_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s, e in zip(params, saved, epsilon, strict=True):
                p.copy_(s)
                if keep_fraction:
                    p.add_(e, alpha=keep_fraction)
