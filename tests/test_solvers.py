"""Properties every solver of ``plot_hf.moo.solvers.SOLVERS`` must have, checked on each registered solver
(registering a solver adds it to these tests), and the registry, construction and call contracts.

Shared checks: shape, dtype and device of the coefficients; finite coefficients on rank-deficient and
1e+-10-scaled Gramians without a degenerate flag; ``degenerate`` with ``ones(K)`` for K = 1, zero and non-finite
Gramians; invariance to the order of the classes and to the units of the gradients; ``repr`` echoing the
hyperparameters. Where a method promises it (``PROMISES``): non-negative coefficients, coefficients summing to K
(simplex weights ``lambda / K``). Each method against an independent reference: ``test_solver_accuracy.py``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from plot_hf.config import PLOTConfig
from plot_hf.moo.solvers import (
    EPO,
    MGDA,
    SOLVERS,
    CAGrad,
    Solver,
    SolverResult,
    build_solver,
    register_solver,
    solve,
)

from .solver_references import random_g

DEVICE = torch.device(os.environ.get("PLOT_HF_TEST_DEVICE", "cpu"))
NAMES = sorted(SOLVERS)
PROMISES = {"cagrad": {"non_negative"}, "mgda": {"non_negative", "sums_to_k"}, "epo": {"non_negative", "sums_to_k"}}


def tensor(x, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=DEVICE)


def inputs(k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {"anchor": tensor(rng.dirichlet(np.ones(k))), "losses": tensor(rng.uniform(0.5, 3.0, k))}


def run(name: str, a, **kwargs) -> SolverResult:
    gram = a if isinstance(a, torch.Tensor) else tensor(a)
    return SOLVERS[name]()(gram, **(kwargs or inputs(gram.shape[0])))


# ---------------------------------------------------------------- shared properties
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coefficients_keep_the_gramians_dtype_and_device(name, dtype):
    g = random_g(6, 6, 1.0, seed=1)
    result = run(name, tensor(g @ g.T, dtype))
    assert isinstance(result, SolverResult) and result.degenerate is False
    assert result.coefficients.shape == (6,)
    assert result.coefficients.dtype == dtype and result.coefficients.device == DEVICE


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rank, scale", [(1, 1.0), (3, 1.0), (8, 1.0), (1, 1e-10), (3, 1e-10), (3, 1e10), (8, 1e10)])
def test_rank_deficient_and_scaled_gramians_give_finite_coefficients(name, rank, scale):
    g = random_g(8, rank, scale, seed=rank)
    result = run(name, g @ g.T)
    assert not result.degenerate and bool(torch.isfinite(result.coefficients).all()), result
    check_promises(name, result.coefficients, 8)


def check_promises(name: str, lam: torch.Tensor, k: int) -> None:
    promises = PROMISES.get(name, set())
    if "non_negative" in promises:
        assert float(lam.min()) >= 0.0, lam
    if "sums_to_k" in promises:
        assert abs(float(lam.sum()) - k) <= 1e-9 * k, lam


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["k1", "zero", "nan", "inf", "nan_loss"])
def test_degenerate_input_gives_ones_and_the_flag(name, case):
    k = 1 if case == "k1" else 4
    a = np.eye(k) if case in ("k1", "nan_loss") else np.zeros((k, k))
    if case in ("nan", "inf"):
        a = np.eye(k)
        a[1, 2] = a[2, 1] = math.nan if case == "nan" else math.inf
    extra = inputs(k)
    if case == "nan_loss":
        extra["losses"][0] = math.nan
        if not SOLVERS[name].needs_losses:  # losses are not read: nothing degenerate
            assert not run(name, a, **extra).degenerate
            return
    result = run(name, tensor(a, torch.float32), **extra)
    assert result.degenerate is True
    torch.testing.assert_close(result.coefficients, torch.ones(k, device=DEVICE))


@pytest.mark.parametrize("name", NAMES)
def test_invariant_to_the_order_of_the_classes(name):
    k = 9
    g = random_g(k, k, 1.0, seed=21)
    a = g @ g.T
    extra = inputs(k, seed=3)
    perm = torch.as_tensor(np.random.default_rng(0).permutation(k), device=DEVICE)
    lam = run(name, a, **extra).coefficients
    permuted = run(name, tensor(a)[perm][:, perm], **{key: v[perm] for key, v in extra.items()}).coefficients
    torch.testing.assert_close(permuted, lam[perm], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("factor", [1e-10, 1e-3, 1e4, 1e10])
def test_invariant_to_the_units_of_the_gradients(name, factor):
    """The coefficients do not depend on the scale of the Gramian (CAGrad: up to its 1e-8 regularisers,
    negligible against these squared norms)."""
    g = random_g(6, 6, 1.0, seed=8)
    a = g @ g.T * (1e6 if factor < 1e-3 else 1.0)
    extra = inputs(6)
    lam = run(name, a, **extra).coefficients
    torch.testing.assert_close(run(name, a * factor, **extra).coefficients, lam, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_repr_echoes_the_hyperparameters(name):
    solver = SOLVERS[name]()
    hyperparameters = solver.hyperparameters()
    assert repr(solver) == f"{type(solver).__name__}(" + ", ".join(
        f"{key}={value!r}" for key, value in hyperparameters.items()) + ")"
    assert repr(build_solver(name, **hyperparameters)) == repr(solver)


# ---------------------------------------------------------------- pinned examples (the doctests')
def test_pinned_examples():
    torch.testing.assert_close(CAGrad()(torch.tensor([[1.0, -0.5], [-0.5, 1.0]])).coefficients, torch.tensor([1.2, 1.2]))
    torch.testing.assert_close(MGDA()(torch.tensor([[4.0, 0.0], [0.0, 1.0]])).coefficients, torch.tensor([0.4, 1.6]))
    epo = EPO()(torch.eye(2), losses=torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(epo.coefficients, torch.tensor([2.0, 0.0]))
    assert repr(CAGrad(alpha=0.4, rescale=2)) == "CAGrad(alpha=0.4, rescale=2, tol=1e-09, max_iter=60)"


# ---------------------------------------------------------------- construction and call contracts
@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (CAGrad, {"alpha": -0.1}, r"`alpha` must be a finite number >= 0, got -0.1"),
        (CAGrad, {"alpha": math.nan}, r"`alpha` must be a finite number >= 0, got nan"),
        (CAGrad, {"rescale": 3}, r"`rescale` must be one of \(0, 1, 2\), got 3"),
        (CAGrad, {"tol": 0.0}, r"`tol` must be a finite number > 0, got 0.0"),
        (MGDA, {"max_iter": 0}, r"`max_iter` must be an integer >= 1, got 0"),
        (MGDA, {"max_iter": 2.5}, r"`max_iter` must be an integer >= 1, got 2.5"),
        (EPO, {"eps": -1.0}, r"`eps` must be a finite number >= 0, got -1.0"),
        (EPO, {"relax": "yes"}, r"`relax` must be a bool, got 'yes'"),
    ],
)
def test_construction_errors_name_the_parameter_and_value(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_call_errors(name):
    a, solver = tensor(np.eye(3)), SOLVERS[name]()
    with pytest.raises(ValueError, match=r"`gramian` must be a square K x K tensor, got \(3, 2\)"):
        solver(a[:, :2], losses=tensor([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"`anchor` must have shape \(3,\).*got \(2,\)"):
        solver(a, anchor=tensor([0.5, 0.5]), losses=tensor([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"`anchor` must be finite, non-negative, with a positive sum, got \[-1.0"):
        solver(a, anchor=tensor([-1.0, 1.0, 1.0]), losses=tensor([1.0, 1.0, 1.0]))


def test_epo_needs_non_negative_losses():
    with pytest.raises(ValueError, match="`losses`.*required.*got None"):
        EPO()(tensor(np.eye(3)))
    with pytest.raises(ValueError, match=r"`losses` must be non-negative with a positive sum"):
        EPO()(tensor(np.eye(3)), losses=tensor([1.0, -1.0, 1.0]))


def test_registry_errors():
    assert {"cagrad", "mgda", "epo"} <= set(SOLVERS)
    assert SOLVERS["cagrad"] is CAGrad
    with pytest.raises(ValueError, match="Unknown solver 'pcgrad'; valid names are: cagrad, epo, mgda"):
        SOLVERS["pcgrad"]
    with pytest.raises(ValueError, match="solver `cagrad` is already registered"):
        register_solver("cagrad")(MGDA)
    with pytest.raises(TypeError, match="must be a subclass of plot_hf.moo.solvers.Solver"):
        register_solver("function")(lambda gramian, **kwargs: gramian.diagonal())
    with pytest.raises(ValueError, match=r"solver `epo` has no hyperparameter \['alpha'\]; valid ones are \['eps', 'relax'\]"):
        build_solver("epo", alpha=0.5)


class Uniform(Solver):
    """A toy solver for the registry tests: ``lambda = scale * ones(K)``."""

    def __init__(self, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"`scale` must be > 0, got {scale!r}.")
        self.scale = scale

    def weights(self, gramian, anchor, losses):
        return torch.full((gramian.shape[0],), self.scale, dtype=gramian.dtype)


def test_a_registered_solver_is_a_config_choice(tmp_path, monkeypatch):
    monkeypatch.setitem(SOLVERS._entries, "uniform", Uniform)
    config = PLOTConfig(output_dir=str(tmp_path), moo_solver="uniform", moo_solver_kwargs={"scale": 2.0})
    assert repr(config.build_solver()) == "Uniform(scale=2.0)"
    with pytest.raises(ValueError, match=r"`moo_solver_kwargs`=\{'scale': -1.0\} is invalid: .*`scale` must be > 0"):
        PLOTConfig(output_dir=str(tmp_path), moo_solver="uniform", moo_solver_kwargs={"scale": -1.0})
    with pytest.raises(ValueError, match=r"`moo_solver`='nope' is invalid: choose one of"):
        PLOTConfig(output_dir=str(tmp_path), moo_solver="nope")


def test_config_builds_cagrad_from_its_keys(tmp_path):
    config = PLOTConfig(output_dir=str(tmp_path), cagrad_alpha=0.3, cagrad_rescale=2, moo_solver_kwargs={"tol": 1e-8})
    assert repr(config.build_solver()) == "CAGrad(alpha=0.3, rescale=2, tol=1e-08, max_iter=60)"
    with pytest.raises(ValueError, match=r"`cagrad_alpha`=-1.0 is invalid: solver `cagrad` says: `alpha` must be"):
        PLOTConfig(output_dir=str(tmp_path), cagrad_alpha=-1.0)


# ---------------------------------------------------------------- the step's entry point
@pytest.mark.parametrize("name", NAMES)
def test_solve_gives_nan_for_non_finite_input_and_agrees_otherwise(name):
    g = random_g(5, 5, 1.0, seed=2)
    a, extra = tensor(g @ g.T, torch.float32), inputs(5)
    direct = SOLVERS[name]()(a, **extra)
    torch.testing.assert_close(solve(SOLVERS[name](), a, **extra).coefficients, direct.coefficients)
    for bad in ("gramian", "losses"):
        gram, losses = a.clone(), extra["losses"].clone()
        (gram if bad == "gramian" else losses)[1] = math.inf
        result = solve(SOLVERS[name](), gram, losses=losses, anchor=extra["anchor"])
        assert result.degenerate and bool(torch.isnan(result.coefficients).all()), (bad, result)
