"""A primal-dual interior-point method for CAGrad's dual problem, as a second-order cone program.

Problem. With ``A`` the K x K Gramian (PSD), ``b`` the anchor, ``c > 0`` and ``eps = 1e-8``::

    min_{w in simplex}  F(w) = (A b)^T w + c sqrt(w^T A w + eps),

the dual of CAGrad (Liu et al., NeurIPS 2021, eq. 4). Its epigraph form is a second-order cone program
(SOCP) in ``(w, t)``::

    min (A b)^T w + c t   s.t.   1^T w = 1,   w >= 0,   s = (t, s_1) in Q,   s_1 = (R w, sqrt(eps)),

with ``R^T R = A`` and ``Q = {(u0, u1): u0 >= ||u1||}``. Its conic dual has multipliers ``y`` (equality),
``z1 >= 0`` (orthant) and ``z = (z0, z_1)`` in ``Q``, ``z_1 = (R zeta, zeta_d)``; dual feasibility reads
``z0 = c`` and ``z1 = A b + y - A zeta``. ``R`` is never formed: a vector ``(R v, v_d)`` of the cone's body
is kept as ``v``, ``A v`` and ``v_d``, and inner products are ``v^T A v' + v_d v'_d``.

Method. Mehrotra's predictor-corrector with Nesterov-Todd (NT) scaling (Mehrotra, SIAM J. Optim. 1992;
Vandenberghe, "The CVXOPT linear and quadratic cone program solvers", 2010, sec. 4-5; as in Clarabel), from
a feasible start (``w = 1/K``, ``t = sqrt(w^T A w + eps) + 1``, ``zeta = zeta_d = 0``,
``z1 = A b - min(A b) + 0.1``), so that primal and dual residuals stay zero. With ``W`` the NT scaling of
the cone pair (``W^-1 s = W z = lambda``; ``W^-2 = eta^-2 (2 w^ w^^T - J)``, ``J = diag(1, -I)``,
``w^ = (a, -v)``, ``v = vx s_1 + vz z_1``), eliminating ``dz``, ``dz1`` and ``dt`` from the Newton system
leaves, per iteration, one K x K system::

    (A - (2 / (2 a^2 - 1)) p p^T + eta^2 diag(z1 / w)) dw = eta^2 (r - dy 1),   1^T dw = 0,   p = A v_R,

factored once by Cholesky and solved for the affine predictor and for the corrector (the equality row is
eliminated through ``1^T H^-1 1``). For feasible directions ``ds^T dz = 0``, so ``mu_aff = (1 - alpha_aff) mu``
and ``sigma = (1 - alpha_aff)^3``. The corrector carries Mehrotra's second-order terms of both cones (for
``Q``: ``W^-1 L(lambda)^-1 (W^-1 ds_a o W^-1 ds_a)``, computed in the 3-dimensional span of ``s_1``, ``z_1``
and ``(R dw_a, 0)``). The common step is 0.97 of the step to the boundary of both cones (for ``Q`` the first
positive root of a quadratic).

Certificate. Weak duality: for any ``zeta`` with ``zeta^T A zeta <= c^2``,
``D(zeta) = min_k (A b - A zeta)_k + sqrt(eps) sqrt(c^2 - zeta^T A zeta) <= F(w*)`` (Cauchy-Schwarz on
``c ||(R w, sqrt(eps))||``). ``D`` is evaluated at the iterate's ``zeta`` (scaled into the ball if rounding
put it outside), so the bound holds whatever the rounding errors of the iteration. Converged when
``F(w) - D <= tol * max(|w^T A b| + c sqrt(w^T A w + eps), c sqrt(mean diag A))`` (relative, with a floor
at the size of ``c ||g_k||`` for ``F* ~ 0``).

Iterations to ``tol = 1e-9``: 9-17 on the benchmark families whatever the conditioning of ``A`` (gradient
norms over 4.5 decades, condition numbers ~1e9), about 20 where the optimum sits at the kink of the norm
(0 in the hull of the gradients and a large ``c``), where Newton's method on ``F`` itself (or on ``F``
smoothed by the cone's barrier) can stall. The loop stops at convergence, or when a step fails (a failed
Cholesky factorisation or a non-finite direction), and returns the best iterate by ``F``. Everything runs in
float64 on the host, in units where ``mean diag A = 1`` (the iterates do not depend on the units).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["cagrad_dual"]

_EPS = 1e-8  # CAGrad's regulariser inside the square root
_FRACTION_TO_BOUNDARY = 0.97
_REGULARISATION = 1e-13  # added to the diagonal of the K x K system (units of mean diag A): A may be singular
_START_T = 1.0  # t0 = sqrt(q(w0)) + 1: strictly inside the cone
_START_Z = 0.1  # z1 = A b - min(A b) + 0.1 at the start (zeta = 0)


class _Problem(NamedTuple):
    """The data in units where ``mean diag A = 1``, and constants."""

    a: Tensor
    ab: Tensor  # A b
    c: Tensor
    c2: Tensor  # c^2
    two_c: Tensor  # 2 c
    delta: Tensor  # sqrt(eps)
    eps: Tensor
    tol: float
    nu: float  # K + 1: the degree of the cone R_+^K x Q
    ones: Tensor
    basis_3: Tensor  # (0, 0, 1): the body (R dw_a, 0) in the basis of the second-order term
    minus_2z: Tensor  # (0, -2, 0): -2 z_1 in that basis


class _State(NamedTuple):
    """The iterate: rows ``(w, z1, zeta)``, scalars ``(t, y, zeta_d)``."""

    vectors: Tensor  # (3, K)
    scalars: Tensor  # (3,)


def cagrad_dual(a: Tensor, anchor: Tensor, c: float, *, max_iter: int, tol: float) -> Tensor:
    """``argmin_{w in simplex} w^T A b + c sqrt(w^T A w + 1e-8)`` for a float64 PSD ``a`` and a probability
    vector ``anchor`` (``b``), by the interior-point method of this module; no argument checks.

    ``max_iter``: the iteration cap; ``tol``: relative accuracy of the certificate (see the module). Returns
    the best iterate by ``F`` (clamped at 0 and renormalised onto the simplex).
    """
    k, dtype = a.shape[0], a.dtype
    scale = a.diagonal().mean().clamp_min(torch.finfo(dtype).tiny)
    a, ab = a / scale, (a @ anchor) / scale  # units: mean diag A = 1
    c = (torch.tensor(c, dtype=dtype) / torch.sqrt(scale)).clamp_min(torch.finfo(dtype).tiny)
    eye3 = torch.eye(3, dtype=dtype)
    eps = _EPS / scale
    problem = _Problem(
        a=a, ab=ab, c=c, c2=c * c, two_c=c + c, delta=torch.sqrt(eps), eps=eps, tol=tol, nu=float(k + 1),
        ones=torch.ones(k, dtype=dtype), basis_3=eye3[2], minus_2z=-2.0 * eye3[1],
    )
    # feasible start: 1^T w = 1, s = (t, R w, delta) inside Q, z1 = A b + y - A zeta > 0, (c, R zeta, zeta_d) in Q
    w = torch.full((k,), 1.0 / k, dtype=dtype)
    t = torch.sqrt(w @ (a @ w) + eps) + _START_T
    y = _START_Z - ab.min()
    state = _State(torch.stack([w, ab + y, torch.zeros_like(w)]), torch.stack([t, y, torch.zeros_like(t)]))
    best_w, best_f = w, float("inf")
    for _ in range(max_iter):
        f, converged = _certify(problem, state)
        if f < best_f:
            best_w, best_f = state.vectors[0], f
        if converged:
            break
        state = _iteration(problem, state)
        if state is None:  # a failed step: keep the best iterate so far
            break
    w = best_w.clamp_min(0.0)
    return w / w.sum()


def _certify(pb: _Problem, state: _State) -> tuple[float, bool]:
    """``(F(w), converged)``: ``F(w) - D(zeta) <= tol * max(|w^T A b| + c sqrt(w^T A w + eps), c)`` with the
    bound ``D(rho zeta) = min_k (A b - rho A zeta)_k + delta sqrt(c^2 - rho^2 zeta^T A zeta)``,
    ``rho = min(1, c / sqrt(zeta^T A zeta))`` (weak duality, see the module)."""
    w, _, zeta = state.vectors.unbind()
    azeta = pb.a @ zeta
    m0 = (zeta @ azeta).clamp_min(0.0)
    lin = w @ pb.ab
    cs = pb.c * torch.sqrt((w @ pb.a @ w).clamp_min(0.0) + pb.eps)
    rho = torch.clamp(pb.c / torch.sqrt(m0), max=1.0)
    lower = (pb.ab - rho * azeta).min() + pb.delta * torch.sqrt((pb.c2 - rho * rho * m0).clamp_min(0.0))
    f = lin + cs
    return float(f), bool(f - lower <= pb.tol * torch.maximum(lin.abs() + cs, pb.c))


def _iteration(pb: _Problem, state: _State) -> _State | None:
    """One predictor-corrector step from ``state``; None if it fails (no Cholesky factor, a non-finite step)."""
    a, ab, c, c2, delta = pb.a, pb.ab, pb.c, pb.c2, pb.delta
    w, z1, zeta = state.vectors.unbind()
    t, y, zeta_d = state.scalars.unbind()
    x = state.vectors[::2]  # (w, zeta)
    ax = x @ a
    aw, azeta = ax.unbind()
    ww, zz = torch.stack([x, ax], dim=1).unbind()  # pairs (v, A v) of the bodies s_1 and z_1
    q0, r0, _, m0 = (x @ ax.mT).flatten().unbind()  # w^T A w, w^T A zeta, zeta^T A zeta
    m0 = m0.clamp_min(0.0)
    q, r, m = q0 + pb.eps, r0 + delta * zeta_d, m0 + zeta_d * zeta_d  # |s_1|^2, s_1^T z_1, |z_1|^2

    # Nesterov-Todd scaling of the cone pair s = (t, s_1), z = (c, z_1)
    big_s, big_z = t * t - q, c2 - m  # s^T J s, z^T J z
    rs, rz = torch.sqrt(big_s), torch.sqrt(big_z)
    rsz = rs * rz
    sz = t * c + r
    nu_mu = w @ z1 + sz  # (K + 1) mu
    gamma = torch.sqrt(0.5 + 0.5 * sz / rsz)
    s0, z0 = t / rs, c / rz
    two_gamma = gamma + gamma
    na = (s0 + z0) / two_gamma  # a
    eta2, inv_eta2 = rs / rz, rz / rs
    two_inv_eta2 = inv_eta2 + inv_eta2
    vx = (two_gamma * rs).reciprocal()
    vz = -vx * eta2  # v = vx s_1 + vz z_1
    a2m1 = na * na - 1.0  # |v|^2
    beta = (a2m1 + 0.5).reciprocal()  # 2 / (2 a^2 - 1)
    a_beta, half_beta_eta2 = na * beta, 0.5 * beta * eta2
    vv = vx * ww + vz * zz  # (v_R, A v_R)
    pw, p = vv.unbind()
    pd = vx * delta + vz * zeta_d
    z1_w = z1 / w
    h = torch.addr(a, beta * p, p, alpha=-1.0)  # A - beta p p^T
    h.diagonal().add_(eta2 * z1_w + _REGULARISATION)
    chol, info = torch.linalg.cholesky_ex(h)

    def dual_direction(dw: Tensor, dww: Tensor, kappa: Tensor, rc_w: Tensor, m_pair: Tensor, m_d: Tensor):
        """``dz = m - W^-2 ds`` (the cone's body as the pair ``(dzeta, A dzeta)`` and ``dzeta_d``), ``dz1``."""
        coef = kappa * two_inv_eta2
        dzz = m_pair - inv_eta2 * dww + coef * vv
        return rc_w - z1_w * dw, dzz, *dzz.unbind(), m_d + coef * pd

    def rate(dw, dt, adw, dz1, dzeta, adzeta, dzd) -> tuple[Tensor, Tensor, Tensor]:
        """``1 / (the largest step keeping w, z1 >= 0 and s, z in Q)`` (<= 0: unbounded); ``dw^T A dw``,
        ``dw^T A w``."""
        orth = -torch.cat([dw / w, dz1 / z1]).amin()
        dadw, awdw = dw @ adw, aw @ dw
        # s + al ds in Q iff S + 2 al b + al^2 (dt^2 - dw^T A dw) >= 0: 1 / (the first positive root)
        b = t * dt - awdw
        disc = b * b - big_s * (dt * dt - dadw)
        primal = (torch.sqrt(disc.clamp_min(0.0)) - b) * (disc >= 0) / big_s
        # z + al dz in Q (dz0 = 0) iff Z - 2 al uu - al^2 |dz_1|^2 >= 0
        uu = azeta @ dzeta + zeta_d * dzd
        dual = (torch.sqrt(uu * uu + big_z * (dzeta @ adzeta + dzd * dzd)) + uu) / big_z
        return torch.stack([orth, primal, dual]).amax(), dadw, awdw

    def newton(u: Tensor, dy: Tensor, rhs_t: Tensor) -> tuple[Tensor, ...]:
        """``(dw, dt, (dw, A dw), A dw, kappa = a dt - p^T dw, p^T dw)`` from ``u = H^-1 rt`` (reduced
        right-hand side ``rt = rhs_w + a beta rhs_t p``; ``1^T dw = 0``)."""
        dw = eta2 * (u - dy * h_ones)
        p_dw = p @ dw
        dt = half_beta_eta2 * rhs_t + a_beta * p_dw
        adw = a @ dw
        return dw, dt, torch.stack([dw, adw]), adw, na * dt - p_dw, p_dw

    # predictor (affine scaling): W^-1 u = -z; also H^-1 1 (the system is eta^2 H: dy is scale-free)
    minus_ab_y = -(ab + y)
    h_ones, u = _cholesky_solve(chol, torch.stack([pb.ones, minus_ab_y - (a_beta * c) * p], dim=1)).unbind(dim=1)
    ones_h_ones = h_ones.sum()
    dw_a, dt_a, dww_a, adw_a, kappa_a, p_dw_a = newton(u, u.sum() / ones_h_ones, -c)
    dz1_a, dzz_a, dzeta_a, adzeta_a, dzd_a = dual_direction(dw_a, dww_a, kappa_a, -z1, -zz, -zeta_d)
    rate_a, dadw_a, awdw_a = rate(dw_a, dt_a, adw_a, dz1_a, dzeta_a, adzeta_a, dzd_a)
    # mu_aff = (1 - step) mu exactly: ds^T dz = dw^T (dz1 + A dzeta) = dy 1^T dw = 0 for feasible directions
    sigma = (1.0 - rate_a.clamp_min(1.0).reciprocal()) ** 3
    target = sigma * nu_mu / pb.nu

    # Mehrotra's second-order term of the cone, e = W^-1 L(lambda)^-1 (ds~ o ds~), ds~ = W^-1 ds_a, with the
    # bodies as coefficients on the basis (s_1, z_1, (R dw_a, 0)) of Gram matrix gram
    azdw = azeta @ dw_a
    gram = torch.stack([q, r, awdw_a, r, m, azdw, awdw_a, azdw, dadw_a]).view(3, 3)
    zero = torch.zeros_like(vx)
    cv = torch.stack([vx, vz, zero])
    inv_eta = torch.sqrt(inv_eta2)
    one_a = 1.0 + na
    root = torch.sqrt(rsz)
    den = root / (s0 + z0 + two_gamma)
    lam0 = root * gamma  # lambda = W z = (lam0, lambda_1)
    c_lam = torch.stack([(gamma + z0) * den / rs, (gamma + s0) * den / rz, zero])
    ds0 = kappa_a * inv_eta
    ds_b = (pb.basis_3 + (p_dw_a / one_a - dt_a) * cv) * inv_eta  # W^-1 (dt_a, (R dw_a, 0)), body
    sq0 = ds0 * ds0 + ds_b @ (gram @ ds_b)  # ds~ o ds~ = (sq0, 2 ds0 ds_b)
    sq_b = (ds0 + ds0) * ds_b
    u0 = (lam0 * sq0 - c_lam @ (gram @ sq_b)) / rsz  # lambda^T J lambda = rs rz
    u_b = (sq_b - u0 * c_lam) / lam0
    v_u = (gram @ cv) @ u_b
    e0 = (na * u0 - v_u) * inv_eta
    k1, k2, k3 = ((u_b + (v_u / one_a - u0) * cv) * inv_eta + pb.minus_2z).unbind()
    # corrector: W^-1 u = sigma mu s^-1 - 2 z - dz_a + e, s^-1 = (t, -s_1) / S
    k1 = k1 - target / big_s
    m_pair = k1 * ww + k2 * zz + k3 * dww_a - dzz_a
    m_d = k1 * delta + k2 * zeta_d - dzd_a
    rc_w = (target - dw_a * dz1_a) / w  # r_comp / w
    rhs_t = target * t / big_s + e0 - pb.two_c
    rhs_w = rc_w + m_pair[1] + azeta + minus_ab_y  # -(A b + y - z1 - A zeta) + r_comp / w - z1 + A m_zeta
    rc_w = rc_w - z1
    u = _cholesky_solve(chol, (rhs_w + (a_beta * rhs_t) * p)[:, None])[:, 0]
    dy = u.sum() / ones_h_ones
    dw, dt, dww, adw, kappa, _ = newton(u, dy, rhs_t)
    dz1, _, dzeta, adzeta, dzd = dual_direction(dw, dww, kappa, rc_w, m_pair, m_d)
    step = _FRACTION_TO_BOUNDARY / rate(dw, dt, adw, dz1, dzeta, adzeta, dzd)[0].clamp_min(_FRACTION_TO_BOUNDARY)

    if int(info) != 0 or not float(step) > 0:  # a non-finite direction gives a NaN or zero step
        return None
    return _State(state.vectors + step * torch.stack([dw, dz1, dzeta]), state.scalars + step * torch.stack([dt, dy, dzd]))


def _cholesky_solve(chol: Tensor, rhs: Tensor) -> Tensor:
    """``(L L^T)^{-1} rhs`` by two triangular solves."""
    return torch.linalg.solve_triangular(chol.mT, torch.linalg.solve_triangular(chol, rhs, upper=False), upper=True)
