"""CAGrad's dual on a working set of classes: the interior-point method on small restricted problems, with
the classes left out priced by the restricted dual (column generation), certified on the whole problem.

Problem (see :mod:`plot_hf.moo.solvers._cagrad_ipm`)::

    min_{w in simplex}  F(w) = (A b)^T w + c sqrt(w^T A w + eps).

Restricting ``w`` to a set ``S`` of classes gives the same problem with ``A_SS`` and ``(A b)_S`` (the anchor
stays the whole ``b``); its optimum is sparse when K is large (22-140 of 1000 classes on the benchmark
Gramians). The working sets and their growth: :mod:`plot_hf.moo.solvers._working_set`.

Certificate. For any ``zeta`` supported on ``S`` and ``rho = min(1, c / sqrt(zeta^T A zeta))``, weak
duality on the WHOLE problem gives ``F* >= D(zeta) = min_k (A b - rho A zeta)_k + sqrt(eps) sqrt(c^2 -
rho^2 zeta^T A zeta)`` (the minimum over all K classes). ``A zeta = A_{:S} zeta_S`` costs ``O(K |S|)``. So
the restricted solution ``w`` (zero outside ``S``) is accepted when ``F(w) - D(zeta) <= tol * max(|w^T A b|
+ c sqrt(w^T A w + eps), c sqrt(mean diag A))``, the tolerance of the whole problem's interior-point method.
Otherwise the classes ``k`` outside ``S`` whose term ``(A b - rho A zeta)_k`` lies below the minimum over
``S`` (the "reduced costs" that make ``D`` smaller: without them the restricted and the whole bound agree)
join ``S`` (they are the prices of the working-set driver) and the restricted problem is solved again.

The first working set holds the classes with the smallest ``(A b)_k``, the slope of ``F`` at the anchor
(``grad F(b) = (1 + c / sqrt(b^T A b + eps)) A b``). Host reads decide the rounds: CPU (early-exit) mode only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._cagrad_ipm import _EPS, dual_bound, solve_cagrad_dual
from ._working_set import solve_on_working_sets

__all__ = ["cagrad_dual_working_set"]


def cagrad_dual_working_set(
    a: Tensor, anchor: Tensor, c: Tensor | float, *, max_iter: int, tol: float
) -> Tensor | None:
    """``argmin_{w in simplex} w^T A b + c sqrt(w^T A w + 1e-8)`` (float64 PSD ``a``, anchor ``b``) through
    restricted interior-point solves (see the module), or None when the working set would cover more than
    half of the classes or a restricted solve does not certify within ``max_iter`` iterations. Reads values on
    the host (CPU use)."""
    k = a.shape[0]
    ab = a @ anchor
    scale = a.diagonal().mean()
    c = torch.as_tensor(c, dtype=a.dtype, device=a.device)
    floor = c * torch.sqrt(scale.clamp_min(0.0))
    delta = torch.sqrt(torch.as_tensor(_EPS, dtype=a.dtype, device=a.device))

    def restricted(index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a_ss = a[index][:, index]
        w_s, zeta_s = solve_cagrad_dual(a_ss, ab[index], c, scale, max_iter=max_iter, tol=tol, stop_early=True)
        a_zeta = a[:, index] @ zeta_s  # A zeta over all K classes, for zeta supported on S
        terms, lower = dual_bound(ab, a_zeta, (zeta_s @ a_zeta[index]).clamp_min(0.0), c, delta)
        lin = ab[index] @ w_s
        cs = c * torch.sqrt((w_s @ a_ss @ w_s).clamp_min(0.0) + _EPS)
        certified = lin + cs - lower <= tol * torch.maximum(lin.abs() + cs, floor)
        return torch.zeros(k, dtype=a.dtype, device=a.device).index_copy_(0, index, w_s), terms, certified

    return solve_on_working_sets(torch.argsort(ab), restricted)
