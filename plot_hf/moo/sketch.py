"""A random-projection sketch of the Gramian by forward-mode JVPs (cost independent of the number of classes).

For the K objectives ``L(theta)`` (K,) and ``d`` Gaussian directions ``v_j ~ N(0, I_P)`` in the parameter space
of the MOO stage, one JVP gives ``G v_j = d/dt L(theta + t v_j)`` (K,), so ``d`` JVPs give ``S = G V`` (K x d)
and

    A_hat = S S^T / d,    E[A_hat] = G E[V V^T] G^T / d = G G^T,

an unbiased estimate of the Gramian whose relative error shrinks like ``1 / sqrt(d)``. The JVPs run through
the MOO stage and the head only (the forward is replayed from the stage input), batched over directions with
``torch.func.vmap``. They are correct under batch norm in train mode (the batch statistics are part of the
function being differentiated); running statistics are not updated (:func:`frozen_batch_stats`). The update
direction ``G^T lambda`` is still applied exactly, by one backward of ``sum_k lambda_k L_k``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import jvp, vmap

__all__ = ["frozen_batch_stats", "sketch_gramian"]


@contextmanager
def frozen_batch_stats(module: nn.Module) -> Iterator[None]:
    """Train-mode batch norms of ``module`` use batch statistics without updating their running statistics."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in zip(norms, saved, strict=True):
            m.track_running_stats = flag


def sketch_gramian(
    objectives_of: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    params: Sequence[torch.Tensor],
    dim: int,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(A_hat, S)``: the sketched K x K Gramian ``S S^T / dim`` and ``S = G V`` (K x dim).

    ``objectives_of(values)`` maps values of ``params`` to the K objectives; ``chunk_size`` bounds how many
    directions one vectorised JVP handles (memory ~ chunk_size x activations of the stage); None: all.
    """
    if dim < 1:
        raise ValueError(f"`dim` must be >= 1, got {dim}.")
    primals = tuple(p.detach() for p in params)
    directions = [
        torch.randn((dim, *p.shape), generator=generator, dtype=torch.float32, device="cpu").to(p.device, p.dtype)
        if generator is not None and generator.device.type == "cpu" and p.device.type != "cpu"
        else torch.randn((dim, *p.shape), generator=generator, dtype=p.dtype, device=p.device)
        for p in primals
    ]

    def one(*tangents: torch.Tensor) -> torch.Tensor:
        return jvp(lambda *values: objectives_of(values), primals, tangents)[1]

    step = chunk_size or dim
    blocks = [
        vmap(one)(*(v[start : start + step] for v in directions)) for start in range(0, dim, step)
    ]
    sketch = torch.cat(blocks).T.detach()  # K x dim
    gram = sketch @ sketch.T / dim
    return (gram + gram.T) / 2, sketch
