"""A dense LP solver without host reads: a homogeneous self-dual interior-point method in torch.

Problem (that of :func:`plot_hf.moo.solvers._epo.solve_simplex_lp`, i.e. EPO's LPs)::

    maximise cost^T x   subject to   x >= 0,  1^T x = 1,  M x >= h          (M is m x n, m >= 0)

It is meant for accelerators, where reading a tensor value on the host stalls the queue of kernels: the
solver runs a fixed number of iterations, every decision is a ``torch.where``, a converged (or failed)
iteration takes a zero step, and nothing is read on the host (no ``item``, ``bool(tensor)``, mask indexing or
data-dependent Python branch).

Batches (:func:`solve_simplex_lps_ipm`): B LPs with the same ``n`` and ``m`` are solved together, ``cost``
(B, n), ``M`` (B, m, n), ``h`` (B, m) -> ``x`` (B, n), ``feasible`` (B,). Every vector below gets a leading
batch dimension, every product, Cholesky factorisation and triangular solve is batched and every reduction
runs over the last dimension; every per-LP scalar (``tau``, ``kappa``, ``mu``, ``sigma``, the step length,
``delta``, the freeze flag, the best merit) is a (B, 1) column. So each LP follows exactly its own iteration
and gets the result of solving it alone, up to the rounding of the batched products (a batch of one may sum
in another order): ``feasible`` the same, ``x`` to ~1e-13 where feasible (where not, ``x`` is only some point
of the simplex, and polishing it on contradictory rows amplifies rounding). A batch costs the kernel launches
of one LP. :func:`solve_simplex_lp_ipm` is the batch of one.

Scaling (as ``solve_simplex_lp``): entries of ``M`` and ``h`` below 1e-11 of the largest are zeroed (rounding
noise), row k is divided by ``max(max_j |M_kj|, |h_k|)``, the cost by ``max_j |cost_j|``; "scaled units"
below are these. The variable is ``x' = n x`` (the uniform point is ``x' = 1``, the start). With slacks
``s = M x - h`` and ``v = (x', s)`` the LP is the standard form ``min c^T v  s.t.  A v = b,  v >= 0``::

    A = [[M / n, -I], [1^T / n, 0]]  ((m + 1) x (n + m)),    b = (h, 1),    c = (-cost / n, 0).

Method: the homogeneous self-dual embedding (Ye, Todd & Mizuno, Math. Oper. Res. 19, 1994), in the simplified
form of Xu, Hung & Ye (Ann. Oper. Res. 62, 1996) and Andersen & Andersen ("The MOSEK interior point optimizer
for linear programming", 2000), as in MOSEK, ECOS and Clarabel. Unknowns ``v, z >= 0`` (n + m), ``y`` (m + 1),
``tau, kappa >= 0``; a solution of::

    A v - b tau = 0,   A^T y + z - c tau = 0,   b^T y - c^T v - kappa = 0,   v o z = 0,   tau kappa = 0

gives the optimum ``x = v_x / (n tau)`` if ``tau > 0``, or a Farkas certificate of infeasibility (``A^T y <=
0``, ``b^T y > 0``) if ``kappa > 0`` (the LP is never unbounded: x lies on the simplex), so one run settles
both. From ``v = z = 1, y = 0, tau = kappa = 1``, each iteration takes a Newton step that scales the
residuals ``r_p = b tau - A v``, ``r_d = c tau - A^T y - z`` and ``r_g = kappa + c^T v - b^T y`` by ``1 -
alpha eta`` (``alpha`` the step length) and drives ``v o z`` and ``tau kappa`` to ``gamma mu`` (``mu = (v^T z
+ tau kappa) / (n + m + 1)``): Mehrotra's predictor (``gamma = 0``, ``eta = 1``) gives ``sigma = (mu_aff /
mu)^3``, the corrector uses ``gamma = sigma``, ``eta = 1 - sigma`` and the second-order terms ``dv_aff o
dz_aff``, ``dtau_aff dkappa_aff``; one step length for all variables, 0.99 of the way to the boundary.
Eliminating ``dz`` and ``dkappa`` leaves the normal equations with ``D = V / Z``, ``(m + 1) x (m + 1)`` (at
most ``n + 2`` for EPO's LPs, which have ``m <= n + 1``; the ``n x n`` form only pays off for ``m > n + 1``)::

    A D A^T = [[M D_x M^T / n^2 + D_s, M D_x 1 / n^2], [1^T D_x M^T / n^2, 1^T D_x 1 / n^2]].

For a right-hand side ``(r1, .., r5)`` of the five linearised equations (see :class:`_NewtonSystem`):
``A D A^T p = b + A D c`` (once per iteration), ``A D A^T q = r1 + A (D r2 - r4 / z)``, ``dv = dtau D (A^T p -
c) + D (A^T q - r2) + r4 / z``, ``dy = dtau p + q`` and ``dtau = (r3 + c^T dv_rest - b^T q + r5 / tau) /
(||D^(1/2) (A^T p - c)||^2 + kappa / tau)`` (``dv_rest`` the part of ``dv`` without ``dtau``; the denominator
is positive). ``A D A^T`` is Jacobi-scaled to a unit diagonal, regularised by ``delta I`` (``delta`` = 1e-16,
times 100 after each failed factorisation, which gives a zero step) and factored by ``cholesky_ex`` (which
never raises); each solve is refined once against the unregularised normal matrix, and the corrector once
more against the five equations themselves (``D`` spans 20+ orders of magnitude near the end, and degenerate
LPs, e.g. EPO's with dependent rows, make ``A D A^T`` singular: a larger ``delta`` leaves residuals at 1e-9).

Certified quality of an iterate. ``x = v_x / sum(v_x)`` lies on the simplex (no division by ``tau``); its row
violation ``max_k (h_k - M_k x)^+`` is measured directly, and for ``u = y_rows^+ / tau >= 0`` Lagrangian
duality over the simplex gives ``opt <= U(u) = max_j (cost + M^T u)_j - h^T u`` (for every ``u >= 0``, dual
feasible or not), so ``gap = U(u) - cost^T x`` bounds ``opt - cost^T x`` (and ``cost^T x - opt <= ||u||_1
violation``). Likewise ``(h^T u - max_j (M^T u)_j) / ||u||_1``, when positive, proves the LP infeasible by
that margin (a lower bound on ``min_{x in simplex} max_k (h_k - M_k x)``). The iteration freezes once the
violation and the gap are at most ``tol`` (1e-11) or infeasibility is proven by more than 1e-10; a failed
factorisation or a non-finite step gives a zero step. The best iterate seen (merit ``max(violation / 1e-9, gap
/ (1e-9 + 1e-7 |cost^T x|))``, scaled units) is polished: it is moved, in the metric ``X^{-1}``, onto the rows
it holds as active (slack below its multiplier), which removes the small violation the iteration leaves
(:func:`_polish`), and kept if that is better. ``feasible`` says whether the result has merit <= 1: every row
holds to 1e-9 of its scale and the objective is certified within ``1e-9 max|cost| + 1e-7 |cost^T x|`` of the
optimum. It is False for every LP infeasible by more than 1e-9 (scaled units: then no point of the simplex
passes); for a feasible LP it would only be False if the budget were too small.

Budget: ``max_iter`` = 50 iterations, each one ``(m + 1) x n x (m + 1)`` product, one Cholesky factorisation
and eight pairs of triangular solves of size m + 1 per LP, all batched: about 23,200 torch operations per call
(each a kernel launch on a GPU), whatever B, n and m. On EPO's LPs (Gramians of 2 to 1000 classes, in the
tests and benchmarks) the result is accepted after 5-24 iterations for n <= 300 and after at most 32 for
n = 1000, so 50 leaves a margin; the remaining iterations are frozen.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["solve_simplex_lp_ipm", "solve_simplex_lps_ipm"]

_NOISE = 1e-11  # entries of M and h below this fraction of the largest are zeroed (as in solve_simplex_lp)
_FRACTION_TO_BOUNDARY = 0.99
_REGULARISATION = 1e-16  # initial delta on the Jacobi-scaled (unit diagonal) normal matrix
_REGULARISATION_GROWTH = 100.0  # delta after a failed factorisation
_ACCEPT_ROWS = 1e-9  # largest row violation (scaled units) of an accepted point
_ACCEPT_GAP_ABS, _ACCEPT_GAP_REL = 1e-9, 1e-7  # largest certified objective error (scaled units)
_POLISH_REGULARISATION = 1e-14  # delta of the final polishing step (Jacobi-scaled)
_CERTIFIED_MARGIN = 1e-10  # infeasibility proven by more than this (scaled units) freezes the iteration


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``a_i^T b_i`` for each LP ``i`` of the batch: (B, N) x (B, N) -> (B, 1)."""
    return (a * b).sum(dim=-1, keepdim=True)


def _times(mat: Tensor, vec: Tensor) -> Tensor:
    """``M_i v_i`` for each LP ``i`` of the batch: (B, P, N) x (B, N) -> (B, P)."""
    return torch.bmm(mat, vec.unsqueeze(-1)).squeeze(-1)


def _scaled_problem(cost: Tensor, m_ge: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(cost, M, h)`` in float64, noise zeroed, rows of ``(M, h)`` and the cost scaled to unit max-norm
    (per LP of the batch: ``cost`` (B, n), ``M`` (B, m, n), ``h`` (B, m))."""
    dtype = torch.float64
    cost, m_ge, h = cost.to(dtype), m_ge.to(dtype), h.to(dtype)
    scaled_cost = cost / cost.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    if m_ge.shape[1] == 0:  # a shape, not a value: no host read
        return scaled_cost, m_ge, h
    size, h_size = m_ge.abs(), h.abs()
    row_max = size.amax(dim=-1)
    noise = _NOISE * torch.maximum(row_max.amax(dim=-1, keepdim=True), h_size.amax(dim=-1, keepdim=True))
    row_scale = torch.maximum(row_max, h_size).clamp_min(noise + 1e-300)
    mat = torch.where(size > noise[..., None], m_ge / row_scale[..., None], 0.0)
    rhs = torch.where(h_size > noise, h / row_scale, 0.0)
    return scaled_cost, mat, rhs


def _step_to_boundary(point: Tensor, direction: Tensor) -> Tensor:
    """The largest ``t <= 1`` with ``point + t direction >= 0`` (for ``point > 0``), per LP: (B, 1)."""
    tiny = torch.finfo(point.dtype).tiny
    ratio = torch.where(direction < 0, point / (-direction).clamp_min(tiny), torch.inf)
    return ratio.amin(dim=-1, keepdim=True).clamp(max=1.0)


def _quality(
    cost: Tensor, mat: Tensor, rhs: Tensor, x_part: Tensor, y_rows: Tensor, tau: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(x, violation, gap, objective, infeasibility)`` of an iterate, in scaled units (see the module doc).

    ``x = x_part / sum(x_part)``; ``violation = max_k (h_k - M_k x)^+``; with ``w = y_rows^+`` (``= tau u``),
    ``gap = (max_j (tau cost + M^T w)_j - h^T w) / tau - cost^T x`` bounds ``opt - cost^T x`` from above, and
    ``infeasibility = (h^T w - max_j (M^T w)_j) / ||w||_1`` (> 0 proves the LP infeasible by that much).
    Per LP of the batch: ``x`` (B, n), the others (B, 1).
    """
    x = x_part / x_part.sum(dim=-1, keepdim=True)
    objective = _dot(cost, x)
    weights = y_rows.clamp_min(0.0)
    combined = _times(mat.mT, weights)
    if mat.shape[1]:  # a shape
        violation = (rhs - _times(mat, x)).amax(dim=-1, keepdim=True).clamp_min(0.0)
    else:
        violation = torch.zeros_like(objective)
    rhs_weights, total_weight = _dot(rhs, weights), weights.sum(dim=-1, keepdim=True)
    bound = ((tau * cost + combined).amax(dim=-1, keepdim=True) - rhs_weights) / tau
    infeasibility = (rhs_weights - combined.amax(dim=-1, keepdim=True)) / total_weight.clamp_min(1e-300)
    return x, violation, bound - objective, objective, infeasibility


def _cholesky_solve(factor: Tensor, rhs: Tensor) -> Tensor:
    """``(L L^T)^{-1} rhs`` by two (batched) triangular solves (cuBLAS ``trsm`` on CUDA: no host read)."""
    forward = torch.linalg.solve_triangular(factor, rhs, upper=False)
    return torch.linalg.solve_triangular(factor.mT, forward, upper=True)


def _jacobi_factor(matrix: Tensor, regularisation: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """``(jacobi, L, info)``: ``J = diag(matrix)^(-1/2)`` and the Cholesky factor of ``J matrix J + delta I``
    (``info`` != 0 where it failed; ``cholesky_ex`` never raises), for a batch of symmetric matrices."""
    jacobi = matrix.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).rsqrt()
    scaled = jacobi[..., :, None] * matrix * jacobi[..., None, :]
    scaled.diagonal(dim1=-2, dim2=-1).add_(regularisation)
    factor, info = torch.linalg.cholesky_ex(scaled)
    return jacobi, factor, info


class _NormalEquations:
    """The factorised ``A D A^T`` (see the module doc), with one step of iterative refinement per solve."""

    def __init__(self, rows: Tensor, d_x: Tensor, d_s: Tensor, regularisation: Tensor) -> None:
        m = d_s.shape[-1]
        self.matrix = torch.bmm(rows * d_x.unsqueeze(-2), rows.mT)
        self.matrix.diagonal(dim1=-2, dim2=-1)[..., :m] += d_s
        self.jacobi, self.factor, self.info = _jacobi_factor(self.matrix, regularisation)

    def _solve_once(self, rhs: Tensor) -> Tensor:
        return self.jacobi * _cholesky_solve(self.factor, (self.jacobi * rhs)[..., None])[..., 0]

    def solve(self, rhs: Tensor) -> Tensor:
        """``(A D A^T)^{-1} rhs`` for a batch of vectors ``rhs`` (B, m + 1)."""
        solution = self._solve_once(rhs)
        return solution + self._solve_once(rhs - _times(self.matrix, solution))


class _StandardForm:
    """``A = [[M / n, -I], [1^T / n, 0]]``, ``b = (h, 1)``, ``c = (-cost / n, 0)`` for ``v = (x', s)``."""

    def __init__(self, scaled_cost: Tensor, mat: Tensor, rhs: Tensor) -> None:
        self.n, self.m = scaled_cost.shape[-1], rhs.shape[-1]
        ones = torch.ones_like(scaled_cost[..., None, :])
        self.rows = torch.cat([mat, ones], dim=-2) / self.n  # [M; 1^T] / n
        self.rows_t = self.rows.mT
        self.b = torch.nn.functional.pad(rhs, (0, 1), value=1.0)
        self.c = torch.nn.functional.pad(-scaled_cost / self.n, (0, self.m))

    def a_times(self, v: Tensor) -> Tensor:
        return _times(self.rows, v[..., : self.n]) - torch.nn.functional.pad(v[..., self.n :], (0, 1))

    def a_transpose_times(self, y: Tensor) -> Tensor:
        return torch.cat([_times(self.rows_t, y), -y[..., : self.m]], dim=-1)


Step = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # (dv, dz, dy, dtau, dkappa), also right-hand sides


class _NewtonSystem:
    """The linearised embedding at ``(v, z, tau, kappa)``, for any right-hand side ``(r1, .., r5)``::

        A dv - b dtau = r1,   A^T dy + dz - c dtau = r2,   b^T dy - c^T dv - dkappa = r3,
        z o dv + v o dz = r4,   kappa dtau + tau dkappa = r5,

    solved through the normal equations (see the module doc), for each LP of the batch.
    """

    def __init__(
        self, form: _StandardForm, v: Tensor, z: Tensor, tau: Tensor, kappa: Tensor, regularisation: Tensor
    ) -> None:
        self.form, self.v, self.z, self.tau, self.kappa = form, v, z, tau, kappa
        self.d = d = v / z
        self.normal = _NormalEquations(form.rows, d[..., : form.n], d[..., form.n :], regularisation)
        self.p = self.normal.solve(form.b + form.a_times(d * form.c))
        self.dv_tau = d * (form.a_transpose_times(self.p) - form.c)  # dv per unit of dtau
        self.denominator = _dot(form.b, self.p) - _dot(form.c, self.dv_tau) + kappa / tau  # > 0

    def _solve_reduced(self, rhs: Step) -> Step:
        form, d = self.form, self.d
        r1, r2, r3, r4, r5 = rhs
        q = self.normal.solve(r1 + form.a_times(d * r2 - r4 / self.z))
        dv_rest = d * (form.a_transpose_times(q) - r2) + r4 / self.z
        d_tau = (r3 + _dot(form.c, dv_rest) - _dot(form.b, q) + r5 / self.tau) / self.denominator
        dv = self.dv_tau * d_tau + dv_rest
        return (
            dv,
            (r4 - self.z * dv) / self.v,
            self.p * d_tau + q,
            d_tau,
            (r5 - self.kappa * d_tau) / self.tau,
        )

    def _residual(self, step: Step, rhs: Step) -> Step:
        form = self.form
        dv, dz, dy, d_tau, d_kappa = step
        r1, r2, r3, r4, r5 = rhs
        return (
            r1 - form.a_times(dv) + form.b * d_tau,
            r2 - form.a_transpose_times(dy) - dz + form.c * d_tau,
            r3 - _dot(form.b, dy) + _dot(form.c, dv) + d_kappa,
            r4 - self.z * dv - self.v * dz,
            r5 - self.kappa * d_tau - self.tau * d_kappa,
        )

    def solve(self, rhs: Step, refine: bool = True) -> Step:
        """The step for ``rhs``; ``refine``: one step of iterative refinement against the full system."""
        step = self._solve_reduced(rhs)
        if not refine:
            return step
        correction = self._solve_reduced(self._residual(step, rhs))
        return tuple(part + fix for part, fix in zip(step, correction, strict=True))

    def step_length(self, step: Step) -> Tensor:
        """The largest ``t <= 1`` that keeps ``v, z, tau, kappa >= 0``, per LP: (B, 1)."""
        dv, dz, _, d_tau, d_kappa = step
        point = torch.cat([self.v, self.z, self.tau, self.kappa], dim=-1)
        return _step_to_boundary(point, torch.cat([dv, dz, d_tau, d_kappa], dim=-1))


def _polish(mat: Tensor, rhs: Tensor, x: Tensor, active: Tensor, regularisation: float) -> Tensor:
    """``x`` moved to satisfy its active rows with equality: ``x + X B^T lam`` with ``B = [M_T; 1^T]``
    (``T``: the rows flagged in ``active``) and ``(B X B^T) lam = (h_T - M_T x, 1 - 1^T x)``, the least
    change in the metric ``X^{-1}`` (relative changes: a tiny correction keeps ``x >= 0``). The system is
    Jacobi-scaled, regularised (dependent active rows make it singular) and refined once. Per LP of the
    batch: ``mat`` (B, m, n), ``rhs`` and ``active`` (B, m), ``x`` (B, n)."""
    m = mat.shape[1]
    weight = active.to(mat.dtype)
    rows = torch.cat([mat * weight[..., None], torch.ones_like(x)[..., None, :]], dim=-2)
    residual = torch.cat([(rhs - _times(mat, x)) * weight, 1.0 - x.sum(dim=-1, keepdim=True)], dim=-1)
    gram = torch.bmm(rows * x.unsqueeze(-2), rows.mT)
    gram.diagonal(dim1=-2, dim2=-1)[..., :m] += 1.0 - weight  # inactive rows: lam_k = 0
    jacobi, factor, _ = _jacobi_factor(gram, regularisation)

    def solve(vector: Tensor) -> Tensor:
        return jacobi * _cholesky_solve(factor, (jacobi * vector)[..., None])[..., 0]

    multipliers = solve(residual)
    multipliers = multipliers + solve(residual - _times(gram, multipliers))
    moved = (x + x * _times(rows.mT, multipliers)).clamp_min(0.0)
    return moved / moved.sum(dim=-1, keepdim=True)


def _merit(violation: Tensor, gap: Tensor, objective: Tensor) -> Tensor:
    """At most 1: accepted; the smaller the better (NaN is never better)."""
    gap_scale = _ACCEPT_GAP_ABS + _ACCEPT_GAP_REL * objective.abs()
    return torch.maximum(violation / _ACCEPT_ROWS, gap / gap_scale)


def solve_simplex_lps_ipm(
    cost: Tensor, m_ge: Tensor, h: Tensor, *, max_iter: int = 50, tol: float = 1e-11
) -> tuple[Tensor, Tensor]:
    """:func:`solve_simplex_lp_ipm` for a batch of B LPs of the same shape, solved together, each exactly
    as if alone (its own step lengths, regularisation and freezing; see the module doc).

    ``cost`` (B, n) with n >= 1, ``m_ge`` (B, m, n) with m >= 0, ``h`` (B, m). Returns ``(x, feasible)``:
    ``x`` (B, n), each row a point of the simplex, in ``cost``'s dtype, and ``feasible`` (B,) bool, on
    ``cost``'s device, each with the meaning of :func:`solve_simplex_lp_ipm`'s.

    Example:
        >>> import torch
        >>> cost = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
        >>> m_ge, h = torch.tensor([[[1.0, -1.0, 0.0]], [[0.0, 1.0, 0.0]]]), torch.tensor([[0.0], [2.0]])
        >>> x, feasible = solve_simplex_lps_ipm(cost, m_ge, h)  # the second LP asks for x_1 >= 2
        >>> x[0].round(decimals=6), feasible.tolist()
        (tensor([0.5000, 0.5000, 0.0000], dtype=torch.float64), [True, False])
    """
    batch, n = cost.shape
    m = m_ge.shape[1]
    scaled_cost, mat, rhs = _scaled_problem(cost, m_ge, h)
    form = _StandardForm(scaled_cost, mat, rhs)
    pairs = n + m + 1  # complementary pairs: (v_i, z_i) and (tau, kappa)

    def column(value: float) -> Tensor:
        """A per-LP scalar: a (B, 1) column, which broadcasts against the (B, N) vectors."""
        return torch.full((batch, 1), value, dtype=mat.dtype, device=mat.device)

    v = torch.ones(batch, n + m, dtype=mat.dtype, device=mat.device)
    z = torch.ones_like(v)
    y = torch.zeros(batch, m + 1, dtype=mat.dtype, device=mat.device)
    tau, kappa, regularisation = column(1.0), column(1.0), column(_REGULARISATION)
    done = torch.zeros(batch, 1, dtype=torch.bool, device=mat.device)
    best_x = torch.full_like(scaled_cost, 1.0 / n)
    best_merit, best_bound = column(torch.inf), column(torch.inf)  # best_bound: U(u) of the best iterate
    best_active = torch.zeros_like(rhs, dtype=torch.bool)  # its rows with slack < multiplier
    for iteration in range(max_iter + 1):
        x, violation, gap, objective, infeasibility = _quality(
            scaled_cost, mat, rhs, v[..., :n], y[..., :m], tau
        )
        merit = _merit(violation, gap, objective)
        better = merit < best_merit
        best_x = torch.where(better, x, best_x)
        best_merit = torch.where(better, merit, best_merit)
        best_bound = torch.where(better, gap + objective, best_bound)
        best_active = torch.where(better, v[..., n:] < z[..., n:], best_active)
        converged = (violation <= tol) & (gap <= tol * (1.0 + objective.abs()))
        done = done | converged | (infeasibility > _CERTIFIED_MARGIN)
        if iteration == max_iter:  # the last pass only evaluates the final iterate
            break

        r_p = form.b * tau - form.a_times(v)
        r_d = form.c * tau - form.a_transpose_times(y) - z
        r_g = kappa + _dot(form.c, v) - _dot(form.b, y)
        mu = (_dot(v, z) + tau * kappa) / pairs
        system = _NewtonSystem(form, v, z, tau, kappa, regularisation)
        failed = (system.normal.info != 0)[:, None]
        regularisation = torch.where(failed, regularisation * _REGULARISATION_GROWTH, regularisation)

        # predictor (affine scaling, gamma = 0, eta = 1): only gives sigma and the second-order terms
        affine = system.solve((r_p, r_d, r_g, -v * z, -tau * kappa), refine=False)
        dv, dz, _, d_tau, d_kappa = affine
        alpha = system.step_length(affine)
        mu_affine = _dot(v + alpha * dv, z + alpha * dz) + (tau + alpha * d_tau) * (kappa + alpha * d_kappa)
        sigma = (mu_affine / pairs / mu).clamp(0.0, 1.0) ** 3
        eta = 1.0 - sigma
        # corrector: centring (gamma = sigma) plus the second-order terms
        r_c = sigma * mu - v * z - dv * dz
        r_tk = sigma * mu - tau * kappa - d_tau * d_kappa
        step = system.solve((eta * r_p, eta * r_d, eta * r_g, r_c, r_tk))
        alpha = _FRACTION_TO_BOUNDARY * system.step_length(step)
        finite = torch.isfinite(torch.cat([*step, alpha], dim=-1)).all(dim=-1, keepdim=True)
        alpha = torch.where(~failed & finite & ~done, alpha, 0.0)
        dv, dz, dy, d_tau, d_kappa = (torch.where(alpha > 0, part, 0.0) for part in step)
        v, z, y = v + alpha * dv, z + alpha * dz, y + alpha * dy
        tau, kappa = tau + alpha * d_tau, kappa + alpha * d_kappa

    if m:  # a shape: polish the best iterate on its active rows, keep the result if it is better
        polished = _polish(mat, rhs, best_x, best_active, _POLISH_REGULARISATION)
        objective = _dot(scaled_cost, polished)
        violation = (rhs - _times(mat, polished)).amax(dim=-1, keepdim=True).clamp_min(0.0)
        merit = _merit(violation, best_bound - objective, objective)
        better = merit < best_merit
        best_x = torch.where(better, polished, best_x)
        best_merit = torch.where(better, merit, best_merit)
    usable = (
        torch.isfinite(best_x).all(dim=-1, keepdim=True)
        & (best_x >= 0.0).all(dim=-1, keepdim=True)
        & (best_x.sum(dim=-1, keepdim=True) > 0.0)
    )
    x = torch.where(usable, best_x, 1.0 / n)
    return (x / x.sum(dim=-1, keepdim=True)).to(cost.dtype), best_merit[:, 0] <= 1.0


def solve_simplex_lp_ipm(
    cost: Tensor, m_ge: Tensor, h: Tensor, *, max_iter: int = 50, tol: float = 1e-11
) -> tuple[Tensor, Tensor]:
    """``argmax cost^T x`` over ``{x >= 0, sum x = 1, m_ge x >= h}`` by a homogeneous self-dual
    interior-point method with a fixed number of iterations and no host read (method: the module doc; a batch
    of one for :func:`solve_simplex_lps_ipm`).

    ``cost`` (n,) with n >= 1, ``m_ge`` (m, n) with m >= 0, ``h`` (m,); float64 internally, on ``cost``'s
    device. ``max_iter``: the number of iterations (all run; converged ones take a zero step); ``tol``: the
    row violation and certified objective gap (scaled units) at which the iteration freezes.

    Returns ``(x, feasible)``: ``x`` (n,) on the simplex (``x >= 0``, ``sum x = 1``, always finite, in
    ``cost``'s dtype) and ``feasible``, a 0-d bool tensor on the same device: True certifies that ``x``
    satisfies every row to 1e-9 of its scale ``max(max_j |M_kj|, |h_k|)`` and that ``cost^T x`` is within
    ``1e-9 max|cost| + 1e-7 |cost^T x|`` of the optimum; False: the LP is infeasible (it always is when no
    point of the simplex comes within 1e-9 of satisfying every row, in those units), and ``x`` is then some
    point of the simplex.

    Example:
        >>> import torch
        >>> cost = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
        >>> x, feasible = solve_simplex_lp_ipm(cost, torch.tensor([[1.0, -1.0, 0.0]]), torch.zeros(1))
        >>> x.round(decimals=6), bool(feasible)  # x_0 >= x_1: the best is x_0 = x_1 = 1/2
        (tensor([0.5000, 0.5000, 0.0000], dtype=torch.float64), True)
    """
    n, m = cost.numel(), m_ge.shape[0]
    x, feasible = solve_simplex_lps_ipm(
        cost.reshape(1, n), m_ge.reshape(1, m, n), h.reshape(1, m), max_iter=max_iter, tol=tol
    )
    return x[0], feasible[0]
