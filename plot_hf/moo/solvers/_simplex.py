"""Shared helpers of the simplex-constrained solvers: whether a solver may read values on the host, and the
Euclidean projection onto the probability simplex."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["host_sync_allowed", "project_simplex"]


def host_sync_allowed(tensor: Tensor, early_exit: bool | None = None) -> bool:
    """Whether a solver may read values on the host: ``early_exit`` if given, else only for CPU tensors.

    On a CPU a host read costs nothing; on an accelerator it stalls the queue of kernels, so the solvers run
    a fixed budget of iterations there and report degenerate input through their output instead.
    """
    return tensor.device.type == "cpu" if early_exit is None else bool(early_exit)


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` (shape ``(..., K)``) onto ``{x >= 0, sum x = 1}``.

    Sort-based algorithm of Held, Wolfe & Crowder (1974), see Duchi et al. (ICML 2008), O(K log K).
    """
    k = v.shape[-1]
    u = torch.sort(v, dim=-1, descending=True).values
    css = u.cumsum(dim=-1) - 1.0
    idx = torch.arange(1, k + 1, dtype=v.dtype, device=v.device)
    rho = (u - css / idx > 0).sum(dim=-1, keepdim=True).clamp_min(1)  # >= 1: the first entry qualifies
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0.0)
