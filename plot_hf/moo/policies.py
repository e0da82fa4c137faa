"""Coefficient policies: on which steps the solver runs, and which coefficients the other steps use.

A policy is asked once per step whether to solve (:meth:`should_solve`). After a solve it is given the
coefficients ``lambda`` of the objective ids present (:meth:`remember`); on a step without a solve it gives
the coefficients to use for the ids present (:meth:`recall`), and the direction is then
``G^T lambda = grad sum_k lambda_k L_k`` (one backward, :func:`plot_hf.moo.amortised.weighted_gradient`).

* :class:`SolveEveryStep`: the reference; every step solves.
* :class:`Amortised`: solve every ``k``-th step; in between, each id's last solved coefficient (1.0, the
  plain-gradient value, for an id never solved for). See :mod:`plot_hf.moo.amortised`.
"""

from __future__ import annotations

import torch

from .amortised import CoefficientCache

__all__ = ["Amortised", "CoefficientPolicy", "SolveEveryStep", "coefficient_policy"]


class SolveEveryStep:
    """Solve at every step (nothing to remember)."""

    def should_solve(self) -> bool:
        return True

    def remember(self, ids: torch.Tensor, coefficients: torch.Tensor) -> None:
        pass

    def recall(self, ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("SolveEveryStep solves at every step; it has no coefficients to recall.")

    def __repr__(self) -> str:
        return "SolveEveryStep()"


class Amortised:
    """Solve every ``every``-th step (the first included); reuse the last coefficients of each of ``num_ids`` ids."""

    def __init__(self, every: int, num_ids: int):
        self.cache = CoefficientCache(every, size=num_ids)

    def should_solve(self) -> bool:
        return self.cache.should_solve()

    def remember(self, ids: torch.Tensor, coefficients: torch.Tensor) -> None:
        """Store the coefficients; a non-finite one (a failed solve) keeps the old value."""
        self.cache.store(ids, coefficients)

    def recall(self, ids: torch.Tensor) -> torch.Tensor:
        """The stored coefficients of ``ids`` in float32 (1.0 where none is stored)."""
        return self.cache.lookup(ids, torch.float32)

    def __repr__(self) -> str:
        return f"Amortised(every={self.cache.every}, num_ids={self.cache.table.numel()})"


CoefficientPolicy = SolveEveryStep | Amortised


def coefficient_policy(solve_every: int, num_ids: int) -> CoefficientPolicy:
    """:class:`SolveEveryStep` for ``solve_every == 1``, else :class:`Amortised`."""
    if solve_every < 1:
        raise ValueError(f"`moo_solve_every` must be >= 1, got {solve_every}.")
    return SolveEveryStep() if solve_every == 1 else Amortised(solve_every, num_ids)
