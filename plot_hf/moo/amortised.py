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
    """The last solved coefficient of each of ``size`` objective ids, and when to solve again.

    ``should_solve()`` is True on the first call and then every ``every``-th call (one call per step).
    Storing and looking up read nothing on the host (the table is allocated once, ``size`` entries).
    """

    def __init__(self, every: int, size: int):
        if every < 1:
            raise ValueError(f"`every` must be >= 1, got {every}.")
        if size < 1:
            raise ValueError(f"`size` must be >= 1, got {size}.")
        self.every = every
        self.steps = 0
        self.table = torch.full((size,), float("nan"), dtype=torch.float64)

    def should_solve(self) -> bool:
        solve = self.steps % self.every == 0
        self.steps += 1
        return solve

    def store(self, ids: torch.Tensor, coefficients: torch.Tensor) -> None:
        """Store the coefficients of ``ids``; a non-finite coefficient (a failed solve) keeps the old value."""
        self.table = self.table.to(coefficients.device)
        values = coefficients.detach().to(torch.float64)
        self.table[ids] = torch.where(torch.isfinite(values), values, self.table[ids])

    def lookup(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The stored coefficients of ``ids`` (1.0 where none is stored)."""
        values = self.table.to(ids.device)[ids]
        return torch.where(torch.isnan(values), torch.ones_like(values), values).to(dtype)
