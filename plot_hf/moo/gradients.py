"""Per-class gradients restricted to a set of parameters, and their Gramian.

For objectives ``L_1..L_K`` and the flattened parameters ``theta`` (the "MOO parameters"), the per-class
gradient matrix is ``G = [grad L_1; ...; grad L_K]`` (K x P) and its Gramian is ``G G^T`` (K x K). The CAGrad,
MGDA and EPO solvers need only the Gramian; the direction ``G^T lambda`` is applied by one backward pass.

Two implementations that must agree: ``method="loop"`` (one ``torch.autograd.grad`` call per class, the
reference) and ``method="batched"`` (vector-Jacobian products batched with ``is_grads_batched``, in chunks).
Both read the graph without touching ``.grad``, so they fire no DDP hooks and stay local to the rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

GradientMethod = Literal["loop", "batched"]


def flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one vector; ``None`` (an unused parameter) becomes zeros shaped like ``like``."""
    return torch.cat(
        [(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, like, strict=True)]
    )


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped like ``like`` (the inverse of :func:`flatten`)."""
    pieces = torch.split(vector, [p.numel() for p in like])
    return [piece.view_as(p) for piece, p in zip(pieces, like, strict=True)]


def per_class_gradients(
    objectives: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    method: GradientMethod = "loop",
    chunk_size: int | None = None,
    retain_graph: bool = True,
) -> torch.Tensor:
    """Return the K x P matrix of gradients of each objective w.r.t. ``params`` (flattened and concatenated).

    ``chunk_size`` bounds how many classes one batched call handles (memory ~ chunk_size x (P + activations),
    see :mod:`plot_hf.moo.chunking`); ``None`` means all at once. With ``retain_graph`` (default) the graph is
    kept after the last call, so that a final backward can follow; without it, the last call frees it.
    """
    if objectives.ndim != 1:
        raise ValueError(f"`objectives` must be a 1-D tensor of K class losses, got shape {tuple(objectives.shape)}.")
    num_objectives = objectives.numel()
    if method not in ("loop", "batched"):
        raise ValueError(f"Unknown per-class gradient `method` {method!r}; choose 'loop' or 'batched'.")
    # Rows are written into one preallocated K x P matrix: no list of rows concatenated at the end (which
    # would hold the K x P numbers twice at the peak).
    first = params[0]
    out = torch.empty(num_objectives, sum(p.numel() for p in params), dtype=first.dtype, device=first.device)
    if method == "loop":
        for k in range(num_objectives):
            last = k == num_objectives - 1
            grads = torch.autograd.grad(objectives[k], params, retain_graph=retain_graph or not last, allow_unused=True)
            _write_columns(out[k : k + 1], grads, params)
        return out
    step = chunk_size or num_objectives
    eye = torch.eye(num_objectives, dtype=objectives.dtype, device=objectives.device)
    for start in range(0, num_objectives, step):
        grads = torch.autograd.grad(
            objectives,
            params,
            grad_outputs=eye[start : start + step],
            retain_graph=retain_graph or start + step < num_objectives,
            allow_unused=True,
            is_grads_batched=True,
        )
        _write_columns(out[start : start + step], grads, params)
    return out


def _write_columns(block: torch.Tensor, grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> None:
    """Write each parameter's (batched) gradient into its columns of ``block`` (rows x P); ``None`` (an unused
    parameter) writes zeros."""
    offset = 0
    for g, p in zip(grads, params, strict=True):
        columns = block[:, offset : offset + p.numel()]
        if g is None:
            columns.zero_()
        else:
            columns.copy_(g.reshape(block.shape[0], -1))
        offset += p.numel()


def gramian(gradient_matrix: torch.Tensor) -> torch.Tensor:
    """``G G^T`` in float64-safe form: computed in the matrix's dtype, symmetrised."""
    product = gradient_matrix @ gradient_matrix.T
    return (product + product.T) / 2


def conflict_fraction(gram: torch.Tensor) -> torch.Tensor:
    """Fraction of class pairs ``i < j`` whose gradients conflict (negative cosine, i.e. ``gram[i, j] < 0``)."""
    k = gram.shape[0]
    if k < 2:
        return gram.new_zeros(())
    upper = torch.triu(torch.ones_like(gram, dtype=torch.bool), diagonal=1)
    return ((gram < 0) & upper).sum().to(gram.dtype) / (k * (k - 1) // 2)  # no boolean indexing: no host read
