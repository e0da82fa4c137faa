"""The solve phase of the PLOT step: coefficients ``lambda`` from the Gramian. The ONLY place the step calls a
solver (:func:`plot_hf.moo.solvers.get_solver`).

For the K objective ids present, with Gramian ``A = G G^T`` (K x K), objective values ``L`` and the preference
``b`` (the anchor: the class prior ``b_k ~ log(n_max / n_k + 0.01) / 2`` restricted to the ids present and
normalised to sum 1, or None for the uniform preference), the registered solver returns ``lambda`` (K,). Its
degenerate-input fallbacks are counted (``degenerate``) rather than shown as warnings.

Non-finite input (an fp16 overflow in ``G``, or a NaN/inf loss) gives NaN coefficients, so that the fp16 loss
scaler skips the optimizer step and lowers its scale, or :mod:`plot_hf.guard` skips it.

``host_reads``: may the step read values on the host? With it, the finiteness check is one host read and the
solver stops at convergence; without it (accelerators), the solver runs its fixed budget with no host read
(``early_exit=False``) and the checks stay on the device (a registered solver without that mode is called as is).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass, field

import torch

from ..moo import all_finite, gradient_is_finite
from ..moo.solvers import DegenerateGramianWarning, degenerate_gramian, get_solver


@dataclass
class Solved:
    """The coefficients (float32, one per objective id present) and the number of degenerate fallbacks (a
    device tensor when counted without a host read)."""

    coefficients: torch.Tensor
    degenerate: float | torch.Tensor = 0.0


@dataclass
class Solve:
    """``solver_name`` from the solver registry with ``solver_kwargs``; ``anchor_table`` the unnormalised
    preference of every objective id (None: uniform)."""

    solver_name: str
    solver_kwargs: dict = field(default_factory=dict)
    anchor_table: torch.Tensor | None = field(default=None, repr=False)

    def anchor(self, ids: torch.Tensor) -> torch.Tensor | None:
        """The preference of the ids present, normalised to sum 1 (float64); None for the uniform preference."""
        if self.anchor_table is None:
            return None
        anchor = self.anchor_table.to(ids.device)[ids].double()
        return anchor / anchor.sum()

    def __call__(self, gram: torch.Tensor, losses: torch.Tensor, ids: torch.Tensor, *, host_reads: bool) -> Solved:
        """Solve for the ids ``ids`` present, their Gramian ``gram`` and objective values ``losses``."""
        solver = get_solver(self.solver_name)
        arguments = dict(losses=losses.double(), anchor=self.anchor(ids), **self.solver_kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DegenerateGramianWarning)
            if host_reads or not _takes_early_exit(self.solver_name):
                finite = gradient_is_finite([gram, losses])
                coefficients = solver(gram.double(), **arguments) if finite else _nan(gram)
                degenerate: float | torch.Tensor = 0
            else:
                coefficients = solver(gram.double(), early_exit=False, **arguments)
                coefficients = torch.where(all_finite([gram, losses]), coefficients, _nan(coefficients))
                degenerate = degenerate_gramian(gram).float()  # read when the trainer logs
            coefficients = coefficients.float()
        return Solved(coefficients, degenerate + _count_degenerate(caught))


def _count_degenerate(caught: list[warnings.WarningMessage]) -> int:
    """The number of degenerate-Gramian warnings among ``caught``; every other warning is shown again."""
    for w in caught:
        if not issubclass(w.category, DegenerateGramianWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return sum(issubclass(w.category, DegenerateGramianWarning) for w in caught)


def _nan(like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), float("nan"), dtype=torch.float64, device=like.device)


@functools.cache
def _takes_early_exit(solver_name: str) -> bool:
    """Whether the solver has a mode without host reads (an ``early_exit`` argument): the built-in ones do; a
    solver registered without it is called as is (it may read values on the host)."""
    return "early_exit" in inspect.signature(get_solver(solver_name)).parameters
