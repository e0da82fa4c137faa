"""CAGrad's dual on a working set of classes: the interior-point method on small restricted problems, with
the classes left out priced by the restricted dual (column generation), certified on the whole problem.

Problem (see :mod:`plot_hf.moo.solvers._cagrad_ipm`)::

    min_{w in simplex}  F(w) = (A b)^T w + c sqrt(w^T A w + eps).

Its optimum is sparse when K is large: at K = 1000 the benchmark Gramians have 22-140 classes with
``w_k > 0``. Restricting ``w`` to a set ``S`` of classes (``w_k = 0`` elsewhere) gives the same problem with
``A_SS`` and ``(A b)_S`` (the anchor stays the whole ``b``), whose interior-point solve costs
``O(|S|^3)`` per iteration instead of ``O(K^3)`` (one Cholesky factorisation of a K x K matrix is ~7 ms at
K = 1000 on a CPU core).

Certificate. For any ``zeta`` supported on ``S`` and ``rho = min(1, c / sqrt(zeta^T A zeta))``, weak
duality on the WHOLE problem gives ``F* >= D(zeta) = min_k (A b - rho A zeta)_k + sqrt(eps) sqrt(c^2 -
rho^2 zeta^T A zeta)`` (the minimum over all K classes). ``A zeta = A_{:S} zeta_S`` costs ``O(K |S|)``. So
the restricted solution ``w`` (zero outside ``S``) is accepted when ``F(w) - D(zeta) <= tol * max(|w^T A b|
+ c sqrt(w^T A w + eps), c sqrt(mean diag A))``, the tolerance of the whole problem's interior-point method.
Otherwise the classes ``k`` outside ``S`` whose term ``(A b - rho A zeta)_k`` lies below the minimum over
``S`` (the "reduced costs" that make ``D`` smaller: without them the restricted and the whole bound agree)
join ``S``, the most negative first and at most ``max(32, |S|)`` of them, and the restricted problem is
solved again. Each round adds at least
one class and a class never leaves, so the rounds end; if ``S`` would grow past half of the classes, the
caller solves the whole problem instead.

The first working set holds the classes with the smallest ``(A b)_k``, the slope of ``F`` at the anchor
(``grad F(b) = (1 + c / sqrt(b^T A b + eps)) A b``). Host reads decide the rounds: CPU (early-exit) mode only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._cagrad_ipm import solve_cagrad_dual

__all__ = ["cagrad_dual_working_set"]

_EPS = 1e-8  # CAGrad's regulariser inside the square root
_FIRST_SIZE, _FIRST_FRACTION = 64, 8  # the first working set: max(64, K / 8) classes
_MIN_GROWTH = 32  # classes added per round: the most violating ones, at most max(this, |S|)
_MAX_FRACTION = 0.5  # give up (whole problem) once S would exceed this fraction of the classes


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
    order = torch.argsort(ab)
    size = min(k, max(_FIRST_SIZE, k // _FIRST_FRACTION))
    members = torch.zeros(k, dtype=torch.bool, device=a.device)
    members[order[:size]] = True
    while True:
        index = members.nonzero().squeeze(1)
        solution = solve_cagrad_dual(a[index][:, index], ab[index], c, scale, max_iter=max_iter, tol=tol,
                                     stop_early=True)
        w_s, zeta_s = solution.w, solution.zeta
        a_zeta = a[:, index] @ zeta_s  # A zeta for zeta supported on S
        m0 = (zeta_s @ a_zeta[index]).clamp_min(0.0)
        rho = torch.clamp(c / torch.sqrt(m0), max=1.0)
        terms = ab - rho * a_zeta
        lower = terms.min() + torch.sqrt(torch.as_tensor(_EPS, dtype=a.dtype)) * torch.sqrt(
            (c * c - rho * rho * m0).clamp_min(0.0)
        )
        aw = a[:, index] @ w_s
        lin = ab[index] @ w_s
        cs = c * torch.sqrt((w_s @ aw[index]).clamp_min(0.0) + _EPS)
        if bool(lin + cs - lower <= tol * torch.maximum(lin.abs() + cs, floor)):
            return torch.zeros(k, dtype=a.dtype, device=a.device).index_copy_(0, index, w_s)
        violating = (~members) & (terms < terms[index].min())
        count = int(violating.sum())
        if count == 0:  # the restricted solve itself did not certify: let the whole problem decide
            return None
        size = int(index.numel())
        grow = min(count, max(_MIN_GROWTH, size))  # at most doubles S: the most violating first
        if size + grow > _MAX_FRACTION * k:
            return None
        candidates = torch.where(members, torch.inf, terms)
        members[torch.topk(candidates, grow, largest=False).indices] = True
