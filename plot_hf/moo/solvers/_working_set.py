"""Solving a problem over the simplex on a working set of classes (column generation), for large K on a CPU.

Problems ``min_{w in simplex} F(w)`` with ``F`` convex and depending on ``w`` through ``A w`` may have sparse
optima when K is large: CAGrad's dual puts 22-140 of 1000 classes in the support on the benchmark Gramians
(used by :mod:`plot_hf.moo.solvers._cagrad_working_set`). MGDA's min-norm point does not on two of the three
families (about 400 of 600 classes: the hull nearly contains 0), so MGDA solves the whole problem.
Restricting ``w`` to a set ``S`` (``w_k = 0`` elsewhere) gives the same kind of problem on ``A_SS``, whose
interior-point solve costs ``O(|S|^3)`` per iteration instead of ``O(K^3)`` (one Cholesky factorisation of a
K x K matrix: ~7 ms at K = 1000 on a CPU core).

Each solver supplies a ``restricted`` callback: given the indices ``S`` it solves the restricted problem and
returns ``(w, prices, certified)``: ``w`` on the whole simplex (zero outside ``S``), a price per class (a
class outside ``S`` whose price is below the minimum over ``S`` would improve the solution: a negative
reduced cost) and whether ``w`` is certified optimal for the WHOLE problem (a bound over all K classes, so a
restricted optimum is never accepted wrongly). The driver starts from the ``first`` classes of an order,
adds the classes priced below ``S``'s minimum (the lowest first, at most ``max(32, |S|)`` per round, so ``S``
at most doubles), and gives up (None: the caller solves the whole problem) when ``S`` would pass half of the
classes, or when nothing prices below ``S`` but the certificate still fails (the restricted solve itself
did not converge). Each round adds at least one class and none leaves, so the rounds end.

Host reads decide the rounds: CPU (early-exit) mode only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["WORKING_SET_MIN_K", "solve_on_working_sets"]

WORKING_SET_MIN_K = 400  # below this the whole problem is cheaper (measured: K = 300 is faster whole)
_FIRST_SIZE, _FIRST_FRACTION = 64, 8  # the first working set: max(64, K / 8) classes
_MIN_GROWTH = 32  # classes added per round: the lowest-priced ones, at most max(this, |S|)
_MAX_FRACTION = 0.5  # give up once S would exceed this fraction of the classes

Restricted = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def solve_on_working_sets(order: Tensor, restricted: Restricted) -> Tensor | None:
    """The certified solution found on working sets (see the module), or None. ``order``: the classes, the
    most promising first (the first working set is its head)."""
    k = order.numel()
    members = torch.zeros(k, dtype=torch.bool, device=order.device)
    members[order[: min(k, max(_FIRST_SIZE, k // _FIRST_FRACTION))]] = True
    while True:
        index = members.nonzero().squeeze(1)
        w, prices, certified = restricted(index)
        if bool(certified):
            return w
        improving = (~members) & (prices < prices[index].min())
        count, size = int(improving.sum()), int(index.numel())
        grow = min(count, max(_MIN_GROWTH, size))
        if count == 0 or size + grow > _MAX_FRACTION * k:
            return None
        members[torch.topk(torch.where(members, torch.inf, prices), grow, largest=False).indices] = True
