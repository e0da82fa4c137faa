"""Gramian sources: one per gradient method, each giving the solver the K x K Gramian of the objectives.

For the objectives ``L_1..L_K`` at the perturbed MOO parameters ``theta + eps``, a source returns either the
per-class gradient matrix ``G`` (K x P; the Gramian ``G G^T`` and the direction ``lambda^T G`` then follow, after
any cross-rank reduction) or, when it never forms ``G``, the Gramian alone (the direction is then one backward
of ``sum_k lambda_k L_k``, :func:`plot_hf.moo.amortised.weighted_gradient`):

* :class:`PerClassVJPs` (``"loop"``, ``"batched"``): exact, one vector-Jacobian product per class, one at a time
  or batched in chunks (fixed, or sized from a memory bound: :mod:`plot_hf.moo.chunking`);
* :class:`OnePassSplit` (``"per_sample_split"``): exact from one backward when no module in or after the stage
  couples samples (:mod:`plot_hf.moo.split`);
* :class:`SketchedGramian` (``"sketch"``): an unbiased random-projection estimate by forward-mode JVPs
  (:mod:`plot_hf.moo.sketch`).

Each source may wrap the perturbed forward (:meth:`forward_context`) to record what it needs. Gradients
computed by hand are taken of ``grad_scale x L_k`` and divided by ``grad_scale`` (the fp16 loss scaler's scale),
as the scaler does for the final backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .chunking import chunk_for_memory, count_saved_bytes
from .gradients import per_class_gradients
from .sketch import sketch_gramian
from .split import SplitCapture

__all__ = ["ClassGramian", "GramianSource", "OnePassSplit", "PerClassVJPs", "PerturbedObjectives", "SketchedGramian"]


@dataclass
class PerturbedObjectives:
    """The objectives at the perturbed point, and what a source needs to differentiate them.

    ``objectives``: the K objectives (this rank's parts under DDP), in the graph of ``values``;
    ``positions``: each sample's row in ``objectives``; ``values``: the MOO parameters' names -> the tensors the
    perturbed forward used; ``losses_at(values)``: per-sample losses of the perturbed forward rerun at other
    values of the MOO parameters (in ``values``' order), without updating batch-norm running statistics.
    """

    objectives: torch.Tensor
    positions: torch.Tensor
    values: dict[str, torch.Tensor]
    losses_at: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    grad_scale: float = 1.0

    def scaled(self) -> torch.Tensor:
        return self.objectives if self.grad_scale == 1.0 else self.objectives * self.grad_scale

    def unscaled(self, matrix: torch.Tensor) -> torch.Tensor:
        """A float32 matrix of gradients of :meth:`scaled`, divided by ``grad_scale``."""
        matrix = matrix.float()
        return matrix if self.grad_scale == 1.0 else matrix / self.grad_scale


@dataclass
class ClassGramian:
    """What a source gives: the K x P matrix ``G`` (float32), or (``matrix`` None) only the K x K Gramian."""

    matrix: torch.Tensor | None
    gram: torch.Tensor | None = None


class PerClassVJPs:
    """Exact per-class gradients by vector-Jacobian products (:func:`plot_hf.moo.per_class_gradients`).

    ``method``: ``"loop"`` (one ``autograd.grad`` per class) or ``"batched"`` (``is_grads_batched``, ``chunk_size``
    classes a call, or as many as ``chunk_memory_mb`` MiB allow, measured in the perturbed forward).
    ``local_rows_only`` (DDP without SyncBatchNorm): only the rows of the objectives present on this rank are
    computed, the others are zero (SyncBatchNorm's backward is a collective: every rank computes every row).
    """

    def __init__(
        self,
        method: str = "loop",
        chunk_size: int | None = None,
        chunk_memory_mb: float | None = None,
        local_rows_only: bool = False,
    ):
        if method not in ("loop", "batched"):
            raise ValueError(f"Unknown per-class gradient `method` {method!r}; choose 'loop' or 'batched'.")
        self.name = method
        self.chunk_size = chunk_size
        self.chunk_memory_mb = chunk_memory_mb if method == "batched" else None
        self.local_rows_only = local_rows_only
        self._saved_bytes: int | None = None

    def forward_context(self, exclude: Sequence[torch.Tensor]) -> AbstractContextManager:
        """With a memory bound: count the bytes the forward saves for backward, ``exclude`` (parameters) left out."""
        return nullcontext() if self.chunk_memory_mb is None else self._counting(exclude)

    @contextmanager
    def _counting(self, exclude: Sequence[torch.Tensor]) -> Iterator[None]:
        with count_saved_bytes(exclude=exclude) as saved:
            yield
        self._saved_bytes = saved.nbytes

    def compute(self, problem: PerturbedObjectives) -> ClassGramian:
        values = list(problem.values.values())
        chunk_size = self.chunk_size
        if self.chunk_memory_mb is not None and self._saved_bytes is not None:
            numel = sum(v.numel() for v in values)
            chunk_size = chunk_for_memory(self.chunk_memory_mb * 2**20, self._saved_bytes, numel, values[0].element_size())
        scaled = problem.scaled()
        rows = torch.unique(problem.positions, sorted=True) if self.local_rows_only else None
        picked = scaled if rows is None else scaled[rows]
        computed = problem.unscaled(per_class_gradients(picked, values, method=self.name, chunk_size=chunk_size))  # type: ignore[arg-type]
        if rows is None:
            return ClassGramian(computed)
        full = computed.new_zeros(scaled.numel(), computed.shape[1])
        full[rows] = computed
        return ClassGramian(full)

    def __repr__(self) -> str:
        return (f"PerClassVJPs(method={self.name!r}, chunk_size={self.chunk_size}, "
                f"chunk_memory_mb={self.chunk_memory_mb}, local_rows_only={self.local_rows_only})")


class OnePassSplit:
    """Exact per-class gradients from one backward (:class:`plot_hf.moo.split.SplitCapture`): ``model`` is the
    model the perturbed forward runs, ``stage_name`` its MOO stage, ``param_names`` the MOO parameters;
    ``chunk_size`` samples per vectorised per-sample call (None: all)."""

    name = "per_sample_split"

    def __init__(self, model: nn.Module, stage_name: str, param_names: Sequence[str], chunk_size: int | None = None):
        self.capture = SplitCapture(model, stage_name, param_names)
        self.chunk_size = chunk_size

    def forward_context(self, exclude: Sequence[torch.Tensor]) -> AbstractContextManager:
        """Record the stage's module inputs and outputs; refuse sample-coupling batch norm."""
        return self.capture.capture()

    def compute(self, problem: PerturbedObjectives) -> ClassGramian:
        matrix = self.capture.per_class_gradients(
            problem.scaled(), problem.positions, problem.values, chunk_size=self.chunk_size
        )
        return ClassGramian(problem.unscaled(matrix))

    def __repr__(self) -> str:
        return f"OnePassSplit(stage_name={self.capture.stage_name!r}, chunk_size={self.chunk_size})"


class SketchedGramian:
    """The Gramian estimated from ``dim`` Gaussian directions (``chunk_size`` directions per vectorised JVP);
    ``G`` is never formed. Each objective is rebuilt as ``(1 / b) sum_{i in k} l_i`` over the ``b`` local samples."""

    name = "sketch"

    def __init__(self, dim: int = 64, chunk_size: int | None = None):
        if dim < 1:
            raise ValueError(f"`moo_sketch_dim` must be >= 1, got {dim}.")
        self.dim = dim
        self.chunk_size = chunk_size

    def forward_context(self, exclude: Sequence[torch.Tensor]) -> AbstractContextManager:
        return nullcontext()

    def compute(self, problem: PerturbedObjectives) -> ClassGramian:
        num = problem.objectives.numel()

        def objectives_of(values: Sequence[torch.Tensor]) -> torch.Tensor:
            losses = problem.losses_at(values)
            return losses.new_zeros(num).index_add(0, problem.positions, losses) / losses.numel()

        gram, _ = sketch_gramian(objectives_of, list(problem.values.values()), self.dim, chunk_size=self.chunk_size)
        return ClassGramian(None, gram)

    def __repr__(self) -> str:
        return f"SketchedGramian(dim={self.dim}, chunk_size={self.chunk_size})"


GramianSource = PerClassVJPs | OnePassSplit | SketchedGramian
