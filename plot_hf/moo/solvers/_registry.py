"""Registry of multi-objective solvers, the shared argument checks and the degenerate-input fallback.

A solver maps the K x K Gramian ``G G^T`` of the K per-class gradients (rows ``g_k`` of ``G``) to K
coefficients ``lambda``; the update direction is ``d = G^T lambda``. The neutral case is ``ones(K)``: the K
class objectives add up to the batch-mean loss, so ``sum_k g_k`` is the plain gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "SOLVERS",
    "DegenerateGramianWarning",
    "Solver",
    "UnknownSolverError",
    "degenerate_gramian",
    "get_solver",
    "register_solver",
]


class DegenerateGramianWarning(RuntimeWarning):
    """The Gramian was degenerate (K = 1, zero, non-finite) or the solver failed: plain ``ones(K)`` was used."""


class UnknownSolverError(KeyError, ValueError):
    """Lookup of a solver name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Solver(Protocol):
    def __call__(
        self,
        gramian: Tensor,
        *,
        losses: Tensor | None = None,
        anchor: Tensor | None = None,
        **hyperparameters,
    ) -> Tensor: ...


class SolverRegistry(Mapping[str, Solver]):
    """Read-only mapping ``name -> solver``; add entries with :func:`register_solver`."""

    def __init__(self) -> None:
        self._solvers: dict[str, Solver] = {}

    def __getitem__(self, name: str) -> Solver:
        try:
            return self._solvers[name]
        except KeyError:
            raise UnknownSolverError(
                f"Unknown solver `{name!r}`; valid names are {sorted(self._solvers)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._solvers)

    def __len__(self) -> int:
        return len(self._solvers)

    def __repr__(self) -> str:
        return f"SolverRegistry({sorted(self._solvers)})"

    def register(self, name: str, solver: Solver) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
        if name in self._solvers:
            raise ValueError(f"A solver named `{name!r}` is already registered.")
        self._solvers[name] = solver


SOLVERS = SolverRegistry()


def register_solver(name: str) -> Callable[[Solver], Solver]:
    """Decorator adding a solver to :data:`SOLVERS` under ``name``; a name can be registered once only."""

    def decorator(solver: Solver) -> Solver:
        SOLVERS.register(name, solver)
        return solver

    return decorator


def get_solver(name: str) -> Solver:
    """The solver registered as ``name``; raises :class:`UnknownSolverError` listing the valid names."""
    return SOLVERS[name]


@dataclass
class Problem:
    """Validated inputs in float64 on the Gramian's device, or the ``fallback`` to return instead.

    ``degenerate`` (sync-free mode only): a 0-d boolean tensor, true when the Gramian is zero or not finite;
    the solver then runs on a harmless stand-in and :func:`finish` returns ``ones(K)``.
    """

    gramian: Tensor  # symmetrised, float64
    anchor: Tensor  # probability vector, float64
    losses: Tensor | None
    fallback: Tensor | None = None
    degenerate: Tensor | None = None


def _check_vector(value: Tensor | None, name: str, k: int, ref: Tensor, check_values: bool) -> Tensor | None:
    if value is None:
        return None
    value = torch.as_tensor(value).to(device=ref.device, dtype=torch.float64)
    if value.shape != (k,):
        raise ValueError(f"`{name}` must have shape ({k},) to match the Gramian, got {tuple(value.shape)}.")
    if check_values and (not bool(torch.isfinite(value).all()) or bool((value < 0).any())):
        raise ValueError(f"`{name}` must be finite and non-negative, got {value.tolist()}.")
    return value


def plain(gramian: Tensor, reason: str) -> Tensor:
    """``ones(K)`` in the Gramian's dtype and device, with a :class:`DegenerateGramianWarning`."""
    warnings.warn(f"{reason}; using the plain coefficients ones(K).", DegenerateGramianWarning, stacklevel=4)
    return torch.ones(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)


def degenerate_gramian(gramian: Tensor) -> Tensor:
    """A 0-d boolean tensor, without a host read: the Gramian has a non-finite entry or a zero diagonal
    (all class gradients zero), or K = 1. These are the cases where every solver returns ``ones(K)``."""
    diagonal = gramian.diagonal()
    zero = ~(diagonal.amax() > 0)
    return zero | ~torch.isfinite(gramian).all() | torch.tensor(gramian.shape[0] == 1, device=gramian.device)


def prepare(
    gramian: Tensor,
    *,
    anchor: Tensor | None,
    losses: Tensor | None,
    needs_losses: bool = False,
    check_values: bool = True,
) -> Problem:
    """Check the arguments common to all solvers and detect degenerate Gramians.

    ``check_values=False`` (sync-free mode, for accelerators): shapes are checked, values are not read on
    the host; a degenerate Gramian is flagged in ``Problem.degenerate`` instead of warned about.
    """
    if not isinstance(gramian, Tensor) or gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        shape = tuple(gramian.shape) if isinstance(gramian, Tensor) else type(gramian).__name__
        raise ValueError(f"`gramian` must be a square K x K tensor, got {shape}.")
    if not gramian.is_floating_point():
        raise ValueError(f"`gramian` must be a floating-point tensor, got dtype {gramian.dtype}.")
    k = gramian.shape[0]
    if k == 0:
        raise ValueError("`gramian` must have K >= 1 classes, got a 0 x 0 tensor.")
    anchor64 = _check_vector(anchor, "anchor", k, gramian, check_values)
    if check_values and anchor64 is not None and float(anchor64.sum()) <= 0:
        raise ValueError(f"`anchor` must have a positive sum, got {anchor64.tolist()}.")
    losses64 = _check_vector(losses, "losses", k, gramian, check_values)
    if needs_losses and losses64 is None:
        raise ValueError("`losses` (the K class losses) is required by this solver, got None.")
    if check_values and losses64 is not None and needs_losses and float(losses64.sum()) <= 0:
        raise ValueError(f"`losses` must have a positive sum, got {losses64.tolist()}.")
    a = gramian.detach().to(torch.float64)
    a = 0.5 * (a + a.T)
    if anchor64 is None:
        anchor64 = torch.full((k,), 1.0 / k, dtype=torch.float64, device=a.device)
    else:
        anchor64 = anchor64 / anchor64.sum()
    problem = Problem(a, anchor64, losses64)
    if k == 1:  # known from the shape: no host read
        problem.fallback = plain(gramian, "Only one class (K = 1)")
    elif not check_values:
        problem.degenerate = degenerate_gramian(a)
        stand_in = torch.eye(k, dtype=a.dtype, device=a.device)
        problem.gramian = torch.where(problem.degenerate, stand_in, a)
        if losses64 is not None:
            problem.losses = torch.where(problem.degenerate, torch.ones_like(losses64), losses64)
    elif not bool(torch.isfinite(a).all()):
        problem.fallback = plain(gramian, "The Gramian has non-finite entries")
    elif float(a.diagonal().max()) <= 0.0:
        problem.fallback = plain(gramian, "The Gramian is zero")
    return problem


def finish(coefficients: Tensor, gramian: Tensor, degenerate: Tensor | None = None) -> Tensor:
    """Cast back to the Gramian's dtype; non-finite results become ``ones(K)`` (a warning when values may
    be read on the host, i.e. ``degenerate`` is None; else silently, on the device)."""
    out = coefficients.to(dtype=gramian.dtype)
    if degenerate is not None:
        bad = degenerate | ~torch.isfinite(out).all()
        return torch.where(bad, torch.ones_like(out), out)
    if not bool(torch.isfinite(out).all()):
        return plain(gramian, "The solver produced non-finite coefficients")
    return out
