"""The solve phase of the PLOT step: coefficients ``lambda`` from the Gramian. The ONLY place the step calls a
solver (:func:`plot_hf.moo.solvers.solve`).

For the K objective ids present, with Gramian ``A = G G^T`` (K x K), objective values ``L`` and the preference
``b`` (the anchor: the class prior ``b_k ~ log(n_max / n_k + 0.01) / 2`` restricted to the ids present and
normalised to sum 1, or None for the uniform preference), the solver built from the config returns ``lambda``
(K,) and a degenerate flag; degenerate solves (``ones(K)``) are counted in ``Solved.degenerate``.

The Gramian is copied once to the host and solved there in float64. Non-finite input (an fp16 overflow in
``G``, or a NaN/inf loss) gives NaN coefficients, so that the fp16 loss scaler skips the optimizer step and
lowers its scale, or :mod:`plot_hf.guard` skips it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..moo.solvers import Solver, solve


@dataclass
class Solved:
    """The coefficients (float32, one per objective id present) and the number of degenerate solves."""

    coefficients: torch.Tensor
    degenerate: float = 0.0


@dataclass
class Solve:
    """``solver`` (built once from the config); ``anchor_table`` the unnormalised preference of every
    objective id (None: uniform)."""

    solver: Solver
    anchor_table: torch.Tensor | None = field(default=None, repr=False)

    def anchor(self, ids: torch.Tensor) -> torch.Tensor | None:
        """The preference of the ids present, normalised to sum 1 (float64); None for the uniform preference."""
        if self.anchor_table is None:
            return None
        anchor = self.anchor_table.to(ids.device)[ids].double()
        return anchor / anchor.sum()

    def __call__(self, gram: torch.Tensor, losses: torch.Tensor, ids: torch.Tensor) -> Solved:
        """Solve for the ids ``ids`` present, their Gramian ``gram`` and objective values ``losses``."""
        result = solve(self.solver, gram, losses=losses, anchor=self.anchor(ids))
        return Solved(result.coefficients.float(), float(result.degenerate))
