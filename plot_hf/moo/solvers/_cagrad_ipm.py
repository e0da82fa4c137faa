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

The number of iterations does not grow with the conditioning of ``A`` (gradient norms over several
decades), and the method also converges where the optimum sits at the kink of the norm (0 in the hull of the
gradients and a large ``c``), where Newton's method on ``F`` itself (or on ``F`` smoothed by the cone's
barrier) can stall. The loop stops at convergence, or when a step fails (a failed Cholesky factorisation or a
non-finite direction), and returns the best iterate by ``F``. Everything runs in float64 on the host, in
units where ``mean diag A = 1`` (the iterates do not depend on the units).
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


class _Point(NamedTuple):
    """The iterate and the products with ``A`` that the Newton systems use."""

    w: Tensor
    z1: Tensor
    zeta: Tensor
    t: Tensor
    y: Tensor
    zeta_d: Tensor
    aw: Tensor  # A w
    azeta: Tensor  # A zeta
    ww: Tensor  # (w, A w): the body s_1 as a pair (v, A v)
    zz: Tensor  # (zeta, A zeta): the body z_1
    q: Tensor  # |s_1|^2 = w^T A w + eps
    r: Tensor  # s_1^T z_1
    m: Tensor  # |z_1|^2


class _Scaling(NamedTuple):
    """The Nesterov-Todd scaling ``W`` of the cone pair ``s = (t, s_1)``, ``z = (c, z_1)`` and the terms of the
    reduced K x K system built from it (see the module)."""

    big_s: Tensor  # s^T J s
    big_z: Tensor  # z^T J z
    rs: Tensor  # sqrt(S)
    rz: Tensor  # sqrt(Z)
    rsz: Tensor  # sqrt(S Z) = lambda^T J lambda
    nu_mu: Tensor  # (K + 1) mu
    gamma: Tensor
    s0: Tensor  # t / sqrt(S)
    z0: Tensor  # c / sqrt(Z)
    two_gamma: Tensor
    na: Tensor  # a, the first entry of w^
    eta2: Tensor
    inv_eta2: Tensor
    two_inv_eta2: Tensor
    vx: Tensor  # v = vx s_1 + vz z_1
    vz: Tensor
    beta: Tensor  # 2 / (2 a^2 - 1)
    a_beta: Tensor  # a beta
    half_beta_eta2: Tensor
    vv: Tensor  # (v_R, A v_R)
    p: Tensor  # A v_R
    pd: Tensor  # the last entry of v
    z1_w: Tensor  # z1 / w


class _System(NamedTuple):
    """The Cholesky factor of ``H = A - beta p p^T + eta^2 diag(z1 / w)`` (regularised), ``H^-1 1`` and
    ``1^T H^-1 1``."""

    chol: Tensor
    info: Tensor
    h_ones: Tensor
    ones_h_ones: Tensor


class _Direction(NamedTuple):
    """A search direction: the primal part, the dual part and the products the step length needs."""

    dw: Tensor
    dt: Tensor
    dy: Tensor
    dww: Tensor  # (dw, A dw)
    adw: Tensor  # A dw
    kappa: Tensor  # a dt - p^T dw
    p_dw: Tensor  # p^T dw
    dz1: Tensor
    dzz: Tensor  # (dzeta, A dzeta)
    dzeta: Tensor
    adzeta: Tensor
    dzd: Tensor  # dzeta_d


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
    point = _point(pb, state)
    scaling = _nt_scaling(pb, point)
    # predictor (affine scaling): W^-1 u = -z
    system, u = _factor(pb, scaling, -(pb.ab + point.y))
    affine = _direction(pb, scaling, system, u, -pb.c, -point.z1, -point.zz, -point.zeta_d)
    rate_a, dadw_a, awdw_a = _inverse_step(point, scaling, affine)
    # mu_aff = (1 - step) mu exactly: ds^T dz = dw^T (dz1 + A dzeta) = dy 1^T dw = 0 for feasible directions
    sigma = (1.0 - rate_a.clamp_min(1.0).reciprocal()) ** 3
    target = sigma * scaling.nu_mu / pb.nu
    e0, k = _second_order_term(pb, point, scaling, affine, dadw_a, awdw_a)
    d = _corrector(pb, point, scaling, system, affine, target, e0, k)
    step = _FRACTION_TO_BOUNDARY / _inverse_step(point, scaling, d)[0].clamp_min(_FRACTION_TO_BOUNDARY)
    if int(system.info) != 0 or not float(step) > 0:  # a non-finite direction gives a NaN or zero step
        return None
    vectors = state.vectors + step * torch.stack([d.dw, d.dz1, d.dzeta])
    return _State(vectors, state.scalars + step * torch.stack([d.dt, d.dy, d.dzd]))


def _point(pb: _Problem, state: _State) -> _Point:
    """The iterate with ``A w``, ``A zeta`` and the inner products of the cone's bodies."""
    w, z1, zeta = state.vectors.unbind()
    t, y, zeta_d = state.scalars.unbind()
    x = state.vectors[::2]  # (w, zeta)
    ax = x @ pb.a
    aw, azeta = ax.unbind()
    ww, zz = torch.stack([x, ax], dim=1).unbind()  # pairs (v, A v) of the bodies s_1 and z_1
    q0, r0, _, m0 = (x @ ax.mT).flatten().unbind()  # w^T A w, w^T A zeta, zeta^T A zeta
    m0 = m0.clamp_min(0.0)
    q, r, m = q0 + pb.eps, r0 + pb.delta * zeta_d, m0 + zeta_d * zeta_d  # |s_1|^2, s_1^T z_1, |z_1|^2
    return _Point(w, z1, zeta, t, y, zeta_d, aw, azeta, ww, zz, q, r, m)


def _nt_scaling(pb: _Problem, pt: _Point) -> _Scaling:
    """Nesterov-Todd scaling of the cone pair ``s = (t, s_1)``, ``z = (c, z_1)`` (see the module)."""
    big_s, big_z = pt.t * pt.t - pt.q, pb.c2 - pt.m  # s^T J s, z^T J z
    rs, rz = torch.sqrt(big_s), torch.sqrt(big_z)
    rsz = rs * rz
    sz = pt.t * pb.c + pt.r
    gamma = torch.sqrt(0.5 + 0.5 * sz / rsz)
    s0, z0 = pt.t / rs, pb.c / rz
    two_gamma = gamma + gamma
    na = (s0 + z0) / two_gamma  # a
    eta2, inv_eta2 = rs / rz, rz / rs
    vx = (two_gamma * rs).reciprocal()
    vz = -vx * eta2  # v = vx s_1 + vz z_1
    a2m1 = na * na - 1.0  # |v|^2
    beta = (a2m1 + 0.5).reciprocal()  # 2 / (2 a^2 - 1)
    vv = vx * pt.ww + vz * pt.zz  # (v_R, A v_R)
    return _Scaling(
        big_s=big_s, big_z=big_z, rs=rs, rz=rz, rsz=rsz, nu_mu=pt.w @ pt.z1 + sz, gamma=gamma, s0=s0, z0=z0,
        two_gamma=two_gamma, na=na, eta2=eta2, inv_eta2=inv_eta2, two_inv_eta2=inv_eta2 + inv_eta2, vx=vx, vz=vz,
        beta=beta, a_beta=na * beta, half_beta_eta2=0.5 * beta * eta2, vv=vv, p=vv[1],
        pd=vx * pb.delta + vz * pt.zeta_d, z1_w=pt.z1 / pt.w,
    )


def _factor(pb: _Problem, sc: _Scaling, minus_ab_y: Tensor) -> tuple[_System, Tensor]:
    """Factor the K x K system ``H`` and solve it for ``1`` and for the predictor's reduced right-hand side
    ``-(A b + y) - a beta c p`` (the system is ``eta^2 H``: ``dy`` is scale-free); returns the system and the
    predictor's ``u = H^-1 rt``."""
    h = torch.addr(pb.a, sc.beta * sc.p, sc.p, alpha=-1.0)  # A - beta p p^T
    h.diagonal().add_(sc.eta2 * sc.z1_w + _REGULARISATION)
    chol, info = torch.linalg.cholesky_ex(h)
    rhs = torch.stack([pb.ones, minus_ab_y - (sc.a_beta * pb.c) * sc.p], dim=1)
    h_ones, u = _cholesky_solve(chol, rhs).unbind(dim=1)
    return _System(chol, info, h_ones, h_ones.sum()), u


def _direction(
    pb: _Problem, sc: _Scaling, system: _System, u: Tensor, rhs_t: Tensor, rc_w: Tensor, m_pair: Tensor, m_d: Tensor
) -> _Direction:
    """The direction from ``u = H^-1 rt`` (reduced right-hand side ``rt = rhs_w + a beta rhs_t p``): ``dy``
    such that ``1^T dw = 0``, ``dw``, ``dt``; then ``dz = m - W^-2 ds`` (the cone's body as the pair
    ``(dzeta, A dzeta)`` and ``dzeta_d``, with ``m = (m_pair, m_d)``) and ``dz1 = rc_w - (z1 / w) dw``."""
    dy = u.sum() / system.ones_h_ones
    dw = sc.eta2 * (u - dy * system.h_ones)
    p_dw = sc.p @ dw
    dt = sc.half_beta_eta2 * rhs_t + sc.a_beta * p_dw
    adw = pb.a @ dw
    dww = torch.stack([dw, adw])
    kappa = sc.na * dt - p_dw
    coef = kappa * sc.two_inv_eta2
    dzz = m_pair - sc.inv_eta2 * dww + coef * sc.vv
    dzeta, adzeta = dzz.unbind()
    dz1 = rc_w - sc.z1_w * dw
    return _Direction(dw, dt, dy, dww, adw, kappa, p_dw, dz1, dzz, dzeta, adzeta, m_d + coef * sc.pd)


def _inverse_step(pt: _Point, sc: _Scaling, d: _Direction) -> tuple[Tensor, Tensor, Tensor]:
    """``1 / (the largest step keeping w, z1 >= 0 and s, z in Q)`` (<= 0: unbounded); ``dw^T A dw``,
    ``dw^T A w``."""
    orth = -torch.cat([d.dw / pt.w, d.dz1 / pt.z1]).amin()
    dadw, awdw = d.dw @ d.adw, pt.aw @ d.dw
    # s + al ds in Q iff S + 2 al b + al^2 (dt^2 - dw^T A dw) >= 0: 1 / (the first positive root)
    b = pt.t * d.dt - awdw
    disc = b * b - sc.big_s * (d.dt * d.dt - dadw)
    primal = (torch.sqrt(disc.clamp_min(0.0)) - b) * (disc >= 0) / sc.big_s
    # z + al dz in Q (dz0 = 0) iff Z - 2 al uu - al^2 |dz_1|^2 >= 0
    uu = pt.azeta @ d.dzeta + pt.zeta_d * d.dzd
    dual = (torch.sqrt(uu * uu + sc.big_z * (d.dzeta @ d.adzeta + d.dzd * d.dzd)) + uu) / sc.big_z
    return torch.stack([orth, primal, dual]).amax(), dadw, awdw


def _second_order_term(
    pb: _Problem, pt: _Point, sc: _Scaling, affine: _Direction, dadw_a: Tensor, awdw_a: Tensor
) -> tuple[Tensor, Tensor]:
    """Mehrotra's second-order term of the cone, ``e = W^-1 L(lambda)^-1 (ds~ o ds~)``, ``ds~ = W^-1 ds_a``,
    plus ``-2 z``: ``e0`` and the body's coefficients on the basis ``(s_1, z_1, (R dw_a, 0)``), whose Gram
    matrix is ``gram``."""
    gamma, s0, z0, rsz, na = sc.gamma, sc.s0, sc.z0, sc.rsz, sc.na
    azdw = pt.azeta @ affine.dw
    gram = torch.stack([pt.q, pt.r, awdw_a, pt.r, pt.m, azdw, awdw_a, azdw, dadw_a]).view(3, 3)
    zero = torch.zeros_like(sc.vx)
    cv = torch.stack([sc.vx, sc.vz, zero])
    inv_eta = torch.sqrt(sc.inv_eta2)
    one_a = 1.0 + na
    root = torch.sqrt(rsz)
    den = root / (s0 + z0 + sc.two_gamma)
    lam0 = root * gamma  # lambda = W z = (lam0, lambda_1)
    c_lam = torch.stack([(gamma + z0) * den / sc.rs, (gamma + s0) * den / sc.rz, zero])
    ds0 = affine.kappa * inv_eta
    ds_b = (pb.basis_3 + (affine.p_dw / one_a - affine.dt) * cv) * inv_eta  # W^-1 (dt_a, (R dw_a, 0)), body
    sq0 = ds0 * ds0 + ds_b @ (gram @ ds_b)  # ds~ o ds~ = (sq0, 2 ds0 ds_b)
    sq_b = (ds0 + ds0) * ds_b
    u0 = (lam0 * sq0 - c_lam @ (gram @ sq_b)) / rsz  # lambda^T J lambda = rs rz
    u_b = (sq_b - u0 * c_lam) / lam0
    v_u = (gram @ cv) @ u_b
    e0 = (na * u0 - v_u) * inv_eta
    return e0, (u_b + (v_u / one_a - u0) * cv) * inv_eta + pb.minus_2z


def _corrector(
    pb: _Problem, pt: _Point, sc: _Scaling, system: _System, affine: _Direction, target: Tensor, e0: Tensor,
    k: Tensor,
) -> _Direction:
    """The corrector: ``W^-1 u = sigma mu s^-1 - 2 z - dz_a + e``, ``s^-1 = (t, -s_1) / S``, with the
    second-order term ``(e0, k)`` of :func:`_second_order_term` and ``target = sigma mu``."""
    k1, k2, k3 = k.unbind()
    k1 = k1 - target / sc.big_s
    m_pair = k1 * pt.ww + k2 * pt.zz + k3 * affine.dww - affine.dzz
    m_d = k1 * pb.delta + k2 * pt.zeta_d - affine.dzd
    rc_w = (target - affine.dw * affine.dz1) / pt.w  # r_comp / w
    rhs_t = target * pt.t / sc.big_s + e0 - pb.two_c
    # -(A b + y - z1 - A zeta) + r_comp / w - z1 + A m_zeta
    rhs_w = rc_w + m_pair[1] + pt.azeta - (pb.ab + pt.y)
    u = _cholesky_solve(system.chol, (rhs_w + (sc.a_beta * rhs_t) * sc.p)[:, None])[:, 0]
    return _direction(pb, sc, system, u, rhs_t, rc_w - pt.z1, m_pair, m_d)


def _cholesky_solve(chol: Tensor, rhs: Tensor) -> Tensor:
    """``(L L^T)^{-1} rhs`` by two triangular solves."""
    return torch.linalg.solve_triangular(chol.mT, torch.linalg.solve_triangular(chol, rhs, upper=False), upper=True)
