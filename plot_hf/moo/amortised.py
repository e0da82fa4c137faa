"""Amortised solving: re-solve the coefficients every ``k`` steps and reuse them in between.

The solver's coefficients ``lambda`` are stored by objective id (class, or class group). On a step without a
solve, the classes present get their last stored coefficient (1.0, the plain-gradient value, for a class never
solved for) and the direction is

    d = G^T lambda = grad_theta sum_k lambda_k L_k,

ONE backward of the weighted sum of the objectives w.r.t. the MOO parameters (:func:`weighted_gradient`): no
per-class gradient and no Gramian is needed. The same backward applies directions whose coefficients were
solved from a Gramian without ``G`` (the sketch mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .gradients import flatten

__all__ = ["CoefficientCache", "weighted_gradient"]


def weighted_gradient(
    objectives: torch.Tensor, coefficients: torch.Tensor, params: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``G^T lambda`` (flattened over ``params``) by one backward of ``sum_k lambda_k L_k``; keeps the graph."""
    weighted = (coefficients.detach().to(objectives.dtype) * objectives).sum()
    grads = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True)
    return flatten(grads, params)


class CoefficientCache:
    """The last solved coefficient of every objective id, and when to solve again.

    ``should_solve()`` is True on the first call and then every ``every``-th call (one call per step).
    ``size``: the number of objective ids, when known: the table is then allocated once and :meth:`store`
    reads nothing on the host (else it grows to the largest id stored, read on the host).
    """

    def __init__(self, every: int = 1, size: int | None = None):
        if every < 1:
            raise ValueError(f"`every` must be >= 1, got {every}.")
        if size is not None and size < 1:
            raise ValueError(f"`size` must be >= 1, got {size}.")
        self.every = every
        self.steps = 0
        self.size = size
        self.table: torch.Tensor | None = None

    def should_solve(self) -> bool:
        solve = self.steps % self.every == 0
        self.steps += 1
        return solve

    def store(self, ids: torch.Tensor, coefficients: torch.Tensor) -> None:
        if self.size is not None:
            if self.table is None or self.table.device != coefficients.device:
                old = self.table
                self.table = torch.full((self.size,), float("nan"), dtype=torch.float64, device=coefficients.device)
                if old is not None:
                    self.table.copy_(old)
            self.table[ids] = coefficients.detach().to(torch.float64)
            return
        size = int(ids.max()) + 1
        if self.table is None or self.table.numel() < size or self.table.device != coefficients.device:
            table = torch.full((size,), float("nan"), dtype=torch.float64, device=coefficients.device)
            if self.table is not None:
                old = self.table.to(coefficients.device)[: min(size, self.table.numel())]
                table[: old.numel()] = old
                if self.table.numel() > size:
                    table = torch.cat([table, self.table.to(coefficients.device)[size:]])
            self.table = table
        self.table[ids] = coefficients.detach().to(torch.float64)

    def lookup(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The stored coefficients of ``ids`` (1.0 where none is stored)."""
        out = torch.ones(ids.shape, dtype=torch.float64, device=ids.device)
        if self.table is not None:
            table = self.table.to(ids.device)
            inside = ids < table.numel()
            values = table[ids.clamp_max(table.numel() - 1)]
            known = inside & ~torch.isnan(values)
            out = torch.where(known, values, out)
        return out.to(dtype)
