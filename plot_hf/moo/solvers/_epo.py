"""EPO, Exact Pareto Optimal search (Mahapatra & Rajan, "Multi-Task Learning with User Preferences:
Gradient Descent with Controlled Ascent in Pareto Optimization", ICML 2020, Sec. 4, eqs. 12-15).

Problem. Inputs: ``C = G G^T`` (the Gramian), the K class losses ``l > 0`` and a preference ``r`` (the
anchor; uniform by default). With ``rl = r * l``, ``l_hat = rl / sum(rl)``, the non-uniformity
``mu(rl) = sum_k l_hat_k log(K l_hat_k)`` (a KL divergence to uniform) and ``a = r * (log(K l_hat) - mu)``
(so that ``d mu / d l`` is proportional to ``a``), EPO picks ``alpha`` on the simplex by a linear program:

- balance mode (``mu(rl) > eps``): maximise ``alpha^T C a`` (the first-order decrease of ``mu`` along
  ``-G^T alpha``) subject to ``(C alpha)_j >= (C a)_j`` for ``j`` with ``(C a)_j <= 0``, and
  ``(C alpha)_j >= 0`` for ``j`` in ``J* = argmax rl`` (the worst relative loss must not increase);
  when no ``(C a)_j`` is positive, ``C alpha >= 0`` for all j;
- descent mode (``mu(rl) <= eps``): maximise ``1^T C alpha`` (total first-order decrease) subject to
  ``C alpha >= 0`` (no loss increases) and ``alpha^T C a >= min(max_j (C a)_j, 0)`` (the "restricted"
  LP; ``relax=True`` drops that row).

The coefficients are ``lambda = K * alpha`` (``ones(K)`` is the plain sum of the class gradients).

Departures from the reference code (``dbmptr/EPOSearch`` and its copy in ``zzpustc/PLOT``, never called
there). The LPs are solved by a dense dual simplex method on the host (:mod:`plot_hf.moo.solvers._simplex_lp`)
instead of cvxpy + GLPK, after zeroing the entries below 1e-11 of the largest (rounding noise, e.g. ``C a``
at a uniform point) and scaling each row and the cost to unit max-norm; a vertex that still violates a row
by more than 1e-8 (scaled units) counts as a failure. ``l_hat`` is clamped away from 0
before the logarithm (the reference gives ``-inf``). An infeasible LP (the reference returns ``None`` and
crashes) falls back to the next mode: balance -> restricted descent -> relaxed descent (always feasible:
the MGDA weights satisfy it) -> the MGDA weights themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Solver, register_solver
from ._checks import check_number
from ._mgda import min_norm_weights
from ._simplex_lp import solve_simplex_lp

__all__ = ["EPO", "epo_lp"]


def _adjustments(losses: Tensor, pref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(rl, mu, a)``: the relative losses, their non-uniformity ``mu`` (0-d tensor) and the direction ``a``."""
    k = losses.numel()
    rl = pref * losses
    l_hat = (rl / rl.sum()).clamp_min(torch.finfo(rl.dtype).tiny)
    mu = (l_hat * torch.log(l_hat * k)).sum()
    return rl, mu, pref * (torch.log(l_hat * k) - mu)


def epo_lp(c: Tensor, losses: Tensor, pref: Tensor, *, eps: float = 1e-4, relax: bool = False) -> tuple[Tensor, str]:
    """The EPO LP solution ``(alpha, mode)`` with mode in {"balance", "descent", "relaxed", "mgda"}, for
    float64 CPU tensors."""
    rl, mu, adj = _adjustments(losses, pref)
    ca = c @ adj
    if float(mu) > eps:
        positive = ca > 0
        if bool(positive.any()):
            worst = rl >= rl.max()
            rows = ~positive | worst
            alpha = solve_simplex_lp(ca, c[rows], torch.where(worst, torch.zeros_like(ca), ca)[rows])
        else:
            alpha = solve_simplex_lp(ca, c, torch.zeros_like(ca))
        if alpha is not None:
            return alpha, "balance"
    total = c.sum(dim=0)
    if not relax:
        bound = torch.clamp(ca.max(), max=0.0).reshape(1)
        alpha = solve_simplex_lp(total, torch.cat([ca[None], c]), torch.cat([bound, torch.zeros_like(ca)]))
        if alpha is not None:
            return alpha, "descent"
    alpha = solve_simplex_lp(total, c, torch.zeros_like(ca))
    if alpha is not None:
        return alpha, "relaxed"
    return min_norm_weights(c), "mgda"


@register_solver("epo")
class EPO(Solver):
    """EPO's coefficients ``K * alpha`` (see the module); reads the K class losses, and the anchor as the
    preference ``r``.

    Args:
        eps: the non-uniformity ``mu`` above which EPO balances the relative losses (>= 0).
        relax: drop the restricted descent LP (go from balance straight to the relaxed descent LP).

    Example:
        >>> import torch
        >>> from plot_hf.moo.solvers import EPO
        >>> EPO()(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), losses=torch.tensor([2.0, 1.0]))
        SolverResult(coefficients=tensor([2., 0.]), degenerate=False)
    """

    needs_losses = True

    def __init__(self, eps: float = 1e-4, relax: bool = False):
        self.eps = check_number("eps", eps, minimum=0.0)
        if not isinstance(relax, bool):
            raise ValueError(f"`relax` must be a bool, got {relax!r}.")
        self.relax = relax

    def weights(self, gramian: Tensor, anchor: Tensor, losses: Tensor | None) -> Tensor:
        assert losses is not None  # needs_losses: checked by the caller
        if bool((losses < 0).any()) or float(losses.sum()) <= 0:
            raise ValueError(f"`losses` must be non-negative with a positive sum, got {losses.tolist()}.")
        alpha, _ = epo_lp(gramian, losses, anchor, eps=self.eps, relax=self.relax)
        return gramian.shape[0] * alpha
