"""Cross-rank reductions that define the PLOT step on the GLOBAL batch under data parallelism (DDP).

With ``W`` ranks holding local batches of sizes ``b_r`` (global batch ``B = sum_r b_r``), the PLOT step of a
global batch needs, besides the per-sample losses that stay local:

* the classes present ANYWHERE and ``B``: one all-reduce of a per-class count vector (length = number of labels);
* the SAM ascent direction ``g = grad (1/B) sum_i l_i``: the local gradients of ``(1/B) sum_{i on r} l_i`` are
  summed (so ``eps`` is identical on every rank, which ``sam_keep_fraction > 0`` requires);
* the per-class objectives ``L_k = (1/B) sum_{i in k} l_i``: each rank's part ``L_k^r`` over its own samples;
  the values are summed (the solver's ``losses``) and so are their gradients, in one of two modes:

  ``"gradients"`` (exact): the K x P matrices ``G^r`` (zero rows for classes absent on a rank) are summed, every
  rank solves the same Gramian ``G G^T`` and applies the same direction ``d = lambda^T G``; DDP then averages
  ``W`` identical copies, so each rank hands ``d`` itself to the surrogate (factor 1). Communication ``K * P``
  floats per step.

  ``"gramian"`` (communication-cheap): only the K x K local Gramians are summed and multiplied by ``W``
  (``W * sum_r G^r G^r^T`` equals ``G G^T`` when the ranks' gradients coincide; it drops the cross-rank terms
  ``G^r G^s^T``, so it is an approximation). The solver sees this Gramian; rank ``r`` hands ``W * lambda^T G^r``
  to the surrogate and DDP's average gives ``lambda^T G``: the direction is exact FOR the approximate
  coefficients. Communication ``K^2`` floats. :func:`gramian_mode_cosine` measures the cost.

* the variability-collapse loss over the global batch: per-class sums and squared deviations are summed; the
  backward uses a local surrogate with the exact gradient (see :func:`global_variability_collapse`).

Every rank runs the same collectives in the same order (the number of classes is known after the first
all-reduce). A single process uses :class:`SingleProcess`, whose reductions are the identity and whose batch
(:class:`LocalBatch`) is the local one; :func:`reducer_for` picks one of the two when the step is built.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

from .moo.gradients import gramian
from .moo.objectives import variability_collapse_loss

ReduceMode = Literal["gradients", "gramian"]
REDUCE_MODES = ("gradients", "gramian")


class CrossRank:
    """Sum-reductions over the default process group (the identity when there is a single rank)."""

    def __init__(self, mode: ReduceMode = "gradients", group: dist.ProcessGroup | None = None):
        if mode not in REDUCE_MODES:
            raise ValueError(f"`moo_ddp_reduce`={mode!r} is invalid: choose one of {REDUCE_MODES}.")
        self.mode = mode
        self.group = group

    @property
    def world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.group)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place; returns the tensor."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def sum_list(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum a list of tensors across ranks with ONE collective (flattened, float32 or wider)."""
        if not self.active or not tensors:
            return tensors
        dtype = torch.promote_types(tensors[0].dtype, torch.float32)
        flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
        self.sum_(flat)
        pieces = torch.split(flat, [t.numel() for t in tensors])
        return [piece.view_as(t).to(t.dtype) for piece, t in zip(pieces, tensors, strict=True)]

    def summed(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``tensor``, as a new tensor (``tensor`` is left as it is)."""
        return self.sum_(tensor.clone())

    def scope(self, ids: torch.Tensor, num_ids: int) -> GlobalBatch:
        """The global batch of the objective ids ``ids`` (values in ``[0, num_ids)``): one all-reduce."""
        return global_batch(ids, num_ids, self)

    def gradients_and_gramian(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """See :func:`reduce_class_gradients`."""
        return reduce_class_gradients(local, self)

    def __repr__(self) -> str:
        return f"CrossRank(mode={self.mode!r})"


class LocalBatch:
    """The batch of a single process: the objective ids present, ``L_k = (1/B) sum_{i: id_i = k} l_i``, the
    batch-mean loss and the variability-collapse loss of the local batch."""

    world_size = 1

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    @functools.cached_property
    def classes(self) -> torch.Tensor:
        """The ids present, sorted: a host read (it fixes K)."""
        return torch.unique(self.ids, sorted=True)

    def mean(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.mean()

    def objectives(self, losses: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``L_k`` for every id in ``classes`` (as :func:`plot_hf.moo.per_class_objectives`)."""
        position = torch.searchsorted(self.classes, ids)
        return losses.new_zeros(self.classes.numel()).index_add(0, position, losses) / float(losses.numel())

    def variability_collapse(self, losses: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(value, term to differentiate)``: both :func:`plot_hf.moo.variability_collapse_loss`."""
        value = variability_collapse_loss(losses, labels)
        return value, value


class SingleProcess:
    """The reducer of one process: the step's batch is the local batch, every sum over ranks is the identity."""

    world_size = 1

    def scope(self, ids: torch.Tensor, num_ids: int) -> LocalBatch:
        return LocalBatch(ids)

    def sum_list(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def summed(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gradients_and_gramian(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(G, G G^T, 1.0)``: the matrix for the direction, the Gramian for the solver, the direction's factor."""
        return local, gramian(local), 1.0

    def __repr__(self) -> str:
        return "SingleProcess()"


@dataclass
class GlobalBatch:
    """The classes present in the global batch, their global counts, and the global batch size ``B``."""

    classes: torch.Tensor
    counts: torch.Tensor
    size: int
    world_size: int
    reducer: CrossRank = field(default_factory=CrossRank, repr=False)

    def positions(self, labels: torch.Tensor) -> torch.Tensor:
        """Row of each local sample's class in ``classes``."""
        return torch.searchsorted(self.classes, labels)

    def local_objectives(self, losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's part ``L_k^r = (1/B) sum_{i on r, y_i = k} l_i`` for every global class ``k``."""
        sums = losses.new_zeros(self.classes.numel()).index_add(0, self.positions(labels), losses)
        return sums / float(self.size)

    def local_rows(self, labels: torch.Tensor) -> torch.Tensor:
        """Indices (into ``classes``) of the classes present on this rank."""
        return torch.unique(self.positions(labels), sorted=True)

    def mean(self, losses: torch.Tensor) -> torch.Tensor:
        """This rank's part ``(1/B) sum_{i on r} l_i`` of the global batch-mean loss."""
        return losses.sum() / self.size

    objectives = local_objectives

    def variability_collapse(self, losses: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`global_variability_collapse` (``labels`` index this batch's ``classes``)."""
        return global_variability_collapse(losses, labels, self, self.reducer)


def global_batch(labels: torch.Tensor, num_classes: int, reducer: CrossRank) -> GlobalBatch:
    """One all-reduce of the per-class counts: the classes present anywhere and ``B``."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes)[:num_classes].to(torch.float64)
    reducer.sum_(counts)
    classes = torch.nonzero(counts > 0).reshape(-1).to(labels.device)
    return GlobalBatch(
        classes=classes,
        counts=counts[classes].to(labels.device),
        size=int(counts.sum().item()),
        world_size=reducer.world_size,
        reducer=reducer,
    )


Reducer = SingleProcess | CrossRank
BatchScope = LocalBatch | GlobalBatch  # what Reducer.scope returns


def reducer_for(mode: ReduceMode = "gradients") -> Reducer:
    """:class:`CrossRank` in ``mode`` when this process is one of several ranks, else :class:`SingleProcess`."""
    cross_rank = CrossRank(mode)
    return cross_rank if cross_rank.active else SingleProcess()


def reduce_class_gradients(
    local: torch.Tensor, reducer: CrossRank
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """From this rank's K x P matrix ``G^r``: ``(matrix for the direction, Gramian for the solver, factor)``.

    The MOO parameters' gradient handed to the surrogate on this rank is ``factor * lambda^T matrix``, chosen so
    that DDP's average over ranks is ``lambda^T G`` (see the module docstring).
    """
    if not reducer.active:
        return local, gramian(local), 1.0
    if reducer.mode == "gradients":
        total = reducer.sum_(local.clone())
        return total, gramian(total), 1.0
    world = reducer.world_size
    return local, reducer.sum_(gramian(local)) * world, float(world)


def global_variability_collapse(
    losses: torch.Tensor, labels: torch.Tensor, batch: GlobalBatch, reducer: CrossRank
) -> tuple[torch.Tensor, torch.Tensor]:
    """The variability-collapse loss of the GLOBAL batch: ``(value, surrogate)``.

    ``value`` is ``mean_{k: n_k >= 2} std_k`` over the global batch (detached); ``surrogate`` is a local scalar whose
    gradient w.r.t. this rank's losses is exactly ``d value / d l_i = (l_i - m_k) / ((n_k - 1) std_k |K2|)``.
    Two all-reduces of per-class vectors (sums, then squared deviations from the global means).
    """
    position = batch.positions(labels)
    detached = losses.detach().double()
    counts = batch.counts.double()
    sums = reducer.sum_(detached.new_zeros(counts.numel()).index_add(0, position, detached))
    means = sums / counts
    centred = detached - means[position]
    squares = reducer.sum_(detached.new_zeros(counts.numel()).index_add(0, position, centred * centred))
    eligible = counts >= 2
    variance = squares / (counts - 1).clamp_min(1)
    positive = eligible & (variance > 0)
    std = torch.where(positive, variance.clamp_min(torch.finfo(variance.dtype).tiny).sqrt(), variance.new_zeros(()))
    num_eligible = eligible.sum().clamp_min(1).to(std.dtype)
    denominator = torch.where(positive, (counts - 1) * std, torch.ones_like(std)) * num_eligible
    coefficient = torch.where(positive[position], centred / denominator[position], centred.new_zeros(()))
    surrogate = (coefficient.to(losses.dtype) * losses).sum()
    value = (std.sum() / num_eligible).to(losses.dtype)
    return value, surrogate


def check_launch(num_processes: int) -> None:
    """Fail when the launcher announced several processes but they did not join one process group."""
    announced = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if announced > 1 and num_processes == 1:
        raise RuntimeError(
            f"WORLD_SIZE={announced} but this process is not part of a {announced}-process group "
            "(accelerator.num_processes == 1): the launcher started independent rank-0 processes, each of which "
            "would train alone on the full data. On a machine without GPUs `accelerate launch --multi_gpu` does "
            "this unless `use_cpu: true` (or ACCELERATE_USE_CPU=1) is set; use `recipes/accelerate/cpu.yaml` or "
            "`torchrun --nproc_per_node N`."
        )


def gramian_mode_cosine(local_matrices: list[torch.Tensor], solver, **solver_kwargs) -> float:
    """Cosine between the directions of the ``"gramian"`` and the exact ``"gradients"`` mode, simulated in one
    process from the ranks' K x P matrices ``G^r`` (``solver(gram, **kwargs) -> lambda``)."""
    total = torch.stack(local_matrices).sum(0).double()
    exact = solver(total @ total.T, **solver_kwargs) @ total
    world = len(local_matrices)
    cheap_gram = world * sum(m.double() @ m.double().T for m in local_matrices)
    cheap = solver(cheap_gram, **solver_kwargs) @ total
    return float(torch.nn.functional.cosine_similarity(exact, cheap, dim=0))


def check_backend(args: object) -> None:
    """Refuse DeepSpeed and FSDP for PLOT, with the reason and what to use instead (DDP)."""
    deepspeed = getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    fsdp = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if not (deepspeed or fsdp):
        return
    which = "DeepSpeed" if deepspeed else "FSDP"
    raise ValueError(
        f"PLOTTrainer does not support {which}: the PLOT step differentiates the loss several times per micro-batch "
        "(the SAM ascent gradient, one `autograd.grad(..., retain_graph=True)` per class, then one backward), which "
        "FSDP's resharding hooks do not allow, and it needs each rank's full, unsharded per-class gradients of the "
        "MOO stage, which ZeRO shards (DeepSpeed's `backward` also steps its engine). Use DDP instead: "
        "`accelerate launch --config_file recipes/accelerate/multi_gpu_ddp_bf16.yaml ...` (the ResNets of the "
        "recipes fit on one GPU). `moo_until_epoch=0` (plain baseline) works with any backend."
    )


def maybe_sync_batch_norm(model: torch.nn.Module, enabled: bool, world_size: int) -> torch.nn.Module:
    """``torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)`` when ``enabled`` and ``world_size > 1``.

    Batch norm in train mode couples the samples of a batch; with DDP each rank normalises with its own
    statistics, so the step is then defined on the global batch only up to that coupling. SyncBatchNorm removes
    it (CUDA only; its backward is a collective, so the PLOT step then computes every global class's row)."""
    if enabled and world_size > 1:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def has_sync_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
