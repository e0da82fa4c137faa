"""The solver interface: a solver maps the K x K Gramian of the per-class gradients to K coefficients.

With ``G`` the K x P matrix of per-class gradients (rows ``g_k``) and ``A = G G^T`` its Gramian, a solver
returns coefficients ``lambda`` (K,); the update direction is ``d = G^T lambda``. The neutral value is
``ones(K)``: the K class objectives add up to the batch-mean loss, so ``sum_k g_k`` is the plain gradient.

A solver is a small object built from its hyperparameters (checked at construction, errors naming the
parameter and the value; ``repr`` echoes them), in the manner of torchjd's weightings. Calling it runs in one
mode: the Gramian (with the losses and the anchor, in one transfer) is copied once to the host in float64,
solved there with early exit, and the coefficients come back in the Gramian's dtype and on its device, with a
``degenerate`` flag: K = 1, a zero Gramian, a non-finite Gramian (or non-finite losses, for a solver that reads
them) or a failed solve give ``ones(K)`` and ``degenerate=True``.

:data:`SOLVERS` is a :class:`plot_hf.registry.Registry` of solver classes; :func:`register_solver` adds one (a
subclass of :class:`Solver`), which makes it a valid ``moo_solver`` of ``PLOTConfig``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from ...registry import Registry

__all__ = ["SOLVERS", "HostProblem", "Solver", "SolverResult", "build_solver", "register_solver", "solve"]


class SolverResult(NamedTuple):
    """``coefficients``: ``lambda`` (K,), in the Gramian's dtype and on its device; ``degenerate``: the input
    was degenerate (or the solve failed) and ``coefficients`` is the plain ``ones(K)``."""

    coefficients: Tensor
    degenerate: bool


class HostProblem(NamedTuple):
    """A solver's input on the host in float64: the symmetrised Gramian, the anchor normalised to a probability
    vector (uniform if none was given), the losses (or None); and where the coefficients go back to."""

    gramian: Tensor
    anchor: Tensor
    losses: Tensor | None
    device: torch.device
    dtype: torch.dtype

    @property
    def finite(self) -> bool:
        values = self.gramian if self.losses is None else torch.cat([self.gramian.flatten(), self.losses])
        return bool(torch.isfinite(values).all())

    def ones(self) -> Tensor:
        return torch.ones(self.gramian.shape[0], dtype=self.dtype, device=self.device)


class Solver(ABC):
    """Base class of the solvers: ``solver(gramian, *, losses=None, anchor=None) -> SolverResult``.

    Subclasses take their hyperparameters as keyword arguments of ``__init__`` (stored as attributes of the
    same names, which ``repr`` echoes) and implement :meth:`weights` on a non-degenerate float64 host problem.
    ``needs_losses``: the solver reads the K class losses. ``config_keys``: ``PLOTConfig`` fields that set a
    hyperparameter (``{"alpha": "cagrad_alpha"}``); any hyperparameter can also be given in
    ``moo_solver_kwargs``.
    """

    needs_losses: ClassVar[bool] = False
    config_keys: ClassVar[dict[str, str]] = {}

    def __call__(self, gramian: Tensor, *, losses: Tensor | None = None, anchor: Tensor | None = None) -> SolverResult:
        return self.solve_on_host(to_host(gramian, losses=losses, anchor=anchor))

    def solve_on_host(self, problem: HostProblem) -> SolverResult:
        """Solve a problem already on the host (see :func:`to_host`); ``ones(K)`` when it is degenerate. The
        losses are read only by a solver that ``needs_losses``."""
        if not self.needs_losses:
            problem = problem._replace(losses=None)
        elif problem.losses is None:
            raise ValueError(f"`losses` (the K class losses) is required by {self!r}, got None.")
        a = problem.gramian
        if a.shape[0] == 1 or not problem.finite or float(a.diagonal().max()) <= 0.0:
            return SolverResult(problem.ones(), True)
        coefficients = self.weights(a, problem.anchor, problem.losses)
        if not bool(torch.isfinite(coefficients).all()):
            return SolverResult(problem.ones(), True)
        return SolverResult(coefficients.to(device=problem.device, dtype=problem.dtype), False)

    @abstractmethod
    def weights(self, gramian: Tensor, anchor: Tensor, losses: Tensor | None) -> Tensor:
        """The coefficients (K,) for a float64 CPU Gramian (symmetric, finite, non-zero, K >= 2), a probability
        vector ``anchor`` and the float64 ``losses`` (finite, given when ``needs_losses``)."""

    def hyperparameters(self) -> dict[str, Any]:
        """The arguments of ``__init__`` and their values."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in self.hyperparameters().items())
        return f"{type(self).__name__}({arguments})"


SOLVERS: Registry[type[Solver]] = Registry("solver")


def register_solver(name: str):
    """Class decorator adding a :class:`Solver` subclass to :data:`SOLVERS` under ``name`` (once only)."""

    def decorator(cls: type[Solver]) -> type[Solver]:
        if not (isinstance(cls, type) and issubclass(cls, Solver)):
            raise TypeError(f"solver `{name}` must be a subclass of plot_hf.moo.solvers.Solver, got {cls!r}.")
        return SOLVERS.add(name, cls)

    return decorator


def build_solver(name: str, **hyperparameters: Any) -> Solver:
    """The solver registered as ``name`` built from ``hyperparameters``; an unknown name or hyperparameter is a
    ``ValueError`` listing the valid ones (a bad value: the solver's own ``ValueError``)."""
    cls = SOLVERS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(f"solver `{name}` has no hyperparameter {unknown}; valid ones are {accepted}.")
    return cls(**hyperparameters)


def _vector(value: Tensor | None, name: str, k: int) -> Tensor | None:
    if value is None:
        return None
    value = torch.as_tensor(value)
    if value.shape != (k,):
        raise ValueError(f"`{name}` must have shape ({k},) to match the Gramian, got {tuple(value.shape)}.")
    return value.detach()


def to_host(gramian: Tensor, *, losses: Tensor | None = None, anchor: Tensor | None = None) -> HostProblem:
    """Check the shapes, then copy the Gramian, the losses and the anchor to the host in float64 in ONE
    transfer; symmetrise the Gramian, normalise the anchor (a ``ValueError`` if it is negative, non-finite or
    sums to 0). Non-finite Gramian or losses are kept (the solver reports them as degenerate)."""
    if not isinstance(gramian, Tensor) or gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        shape = tuple(gramian.shape) if isinstance(gramian, Tensor) else type(gramian).__name__
        raise ValueError(f"`gramian` must be a square K x K tensor, got {shape}.")
    if not gramian.is_floating_point():
        raise ValueError(f"`gramian` must be a floating-point tensor, got dtype {gramian.dtype}.")
    k = gramian.shape[0]
    if k == 0:
        raise ValueError("`gramian` must have K >= 1 classes, got a 0 x 0 tensor.")
    losses, anchor = _vector(losses, "losses", k), _vector(anchor, "anchor", k)
    parts = [gramian.detach().reshape(-1), *(v for v in (losses, anchor) if v is not None)]
    host = torch.cat([p.to(device=gramian.device, dtype=torch.float64) for p in parts]).cpu()
    a, rest = host[: k * k].view(k, k), host[k * k :]
    a = 0.5 * (a + a.T)
    losses_64 = rest[:k] if losses is not None else None
    anchor_64 = rest[-k:] if anchor is not None else torch.full((k,), 1.0 / k, dtype=torch.float64)
    if anchor is not None:
        if not bool(torch.isfinite(anchor_64).all()) or bool((anchor_64 < 0).any()) or float(anchor_64.sum()) <= 0:
            raise ValueError(f"`anchor` must be finite, non-negative, with a positive sum, got {anchor_64.tolist()}.")
        anchor_64 = anchor_64 / anchor_64.sum()
    return HostProblem(a, anchor_64, losses_64, gramian.device, gramian.dtype)


def solve(solver: Solver, gramian: Tensor, *, losses: Tensor | None = None, anchor: Tensor | None = None) -> SolverResult:
    """The PLOT step's one call of a solver: :func:`to_host` (one transfer), then the solver on the host.

    Unlike a direct call, a non-finite Gramian or non-finite losses (fp16 overflow of the per-class gradients,
    a NaN or infinite loss) give NaN coefficients (``degenerate=True``), so that the loss scaler skips the step
    and lowers its scale, or the non-finite guard skips the optimizer step; they are never stored by amortised
    solving. The losses are passed on to the solver only if it reads them.
    """
    problem = to_host(gramian, losses=losses, anchor=anchor)
    if not problem.finite:
        return SolverResult(torch.full_like(problem.ones(), float("nan")), True)
    return solver.solve_on_host(problem)
