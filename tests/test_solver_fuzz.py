"""Hypothesis fuzzing: no solver of ``plot_hf.moo.SOLVERS`` returns NaN/inf on degenerate Gramians, and the
degenerate flag is set exactly when the Gramian has K = 1 or no positive diagonal entry (all zero)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plot_hf.moo import SOLVERS, gramian


@st.composite
def degenerate_gramians(draw, sizes=(1, 2, 3, 5, 17, 64)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gramians of K class gradients with zero rows, duplicate rows and a huge dynamic range."""
    k = draw(st.sampled_from(sizes))
    p = draw(st.sampled_from([1, 4, 32]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((k, p))
    kind = draw(st.sampled_from(["zero_rows", "duplicates", "dynamic_range", "all_zero", "rank_one", "mixed"]))
    if kind in ("zero_rows", "mixed"):
        g[rng.random(k) < 0.5] = 0.0
    if kind in ("duplicates", "mixed") and k > 1:
        g[1:] = g[rng.integers(0, k, size=k - 1) * 0 + rng.integers(0, k)]
    if kind in ("dynamic_range", "mixed"):
        g *= 10.0 ** rng.uniform(-30, 30, size=(k, 1))
    if kind == "all_zero":
        g[:] = 0.0
    if kind == "rank_one":
        g = rng.standard_normal((k, 1)) @ rng.standard_normal((1, p))
    losses = torch.as_tensor(rng.uniform(0, 10, k) * (10.0 ** rng.uniform(-8, 8)))
    anchor = torch.as_tensor(rng.uniform(0.0, 1.0, k) + 1e-3)
    return gramian(torch.as_tensor(g)), losses, anchor


@pytest.mark.parametrize("name", sorted(SOLVERS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=degenerate_gramians(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_solver_never_returns_nonfinite(name: str, problem, dtype: torch.dtype) -> None:
    gram, losses, anchor = problem
    gram = gram.to(dtype)
    coefficients, degenerate = SOLVERS[name]()(gram, losses=losses, anchor=anchor)
    assert coefficients.shape == (gram.shape[0],)
    assert coefficients.dtype == dtype
    assert bool(torch.isfinite(coefficients).all()), (name, coefficients)
    if gram.shape[0] == 1 or float(gram.double().diagonal().max()) <= 0:
        assert degenerate and bool((coefficients == 1).all()), (name, coefficients)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=degenerate_gramians(sizes=(1000,)))
def test_solver_never_returns_nonfinite_at_k_1000(name: str, problem) -> None:
    gram, losses, anchor = problem
    coefficients, _ = SOLVERS[name]()(gram, losses=losses, anchor=anchor)
    assert coefficients.shape == (1000,) and bool(torch.isfinite(coefficients).all()), name
