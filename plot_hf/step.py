"""One PLOT step on a micro-batch, as a function of the model and the trainer's hooks (glue, no new math).

The step, for a batch with per-sample baseline losses ``l_i`` and the MOO parameters ``theta`` (a stage of
the backbone):

1. forward at ``theta`` (recording the input of the MOO stage); SAM direction ``g = grad_theta mean(l)``;
2. replay the forward from the MOO stage at ``theta + eps``, ``eps = rho * g / ||g||`` (earlier stages are
   reused, not recomputed; batch-norm running statistics are not updated a second time);
3. per-class objectives ``L_k`` at the perturbed point, their gradients ``G`` w.r.t. ``theta``, the Gramian
   ``G G^T``, and the solver's coefficients ``lambda``;
4. ONE backward of ``total = mean(l) + vc_weight * L_vc`` at the perturbed point, in which ``theta`` receives
   ``G^T lambda`` instead of its own gradient (see :mod:`plot_hf.moo.surrogate`); every other parameter
   receives ``grad total``, as in the reference code;
5. ``theta`` is never modified in place (the perturbed copy lives in the graph), so the restore is exact;
   ``keep_fraction`` then adds ``r * eps`` as the reference's ``perturb_radius`` does.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from .distributed import (
    CrossRank,
    GlobalBatch,
    global_batch,
    global_variability_collapse,
    reduce_class_gradients,
)
from .moo import (
    DirectionSlot,
    StageReplay,
    all_finite,
    conflict_fraction,
    gradient_is_finite,
    gramian,
    per_class_gradients,
    per_class_objectives,
    replace_gradient,
    sam_epsilon,
    variability_collapse_loss,
)
from .moo.amortised import CoefficientCache, weighted_gradient
from .moo.chunking import chunk_for_memory, count_saved_bytes
from .moo.gradients import unflatten
from .moo.sketch import frozen_batch_stats, sketch_gramian
from .moo.solvers import DegenerateGramianWarning, degenerate_gramian, get_solver
from .moo.split import SplitCapture


@dataclass
class MOOParameters:
    """The MOO parameters of a model: names relative to the unwrapped model, and the stage to replay from."""

    names: list[str]
    params: list[nn.Parameter]
    stage_name: str

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass
class StepDiagnostics:
    """What one PLOT step reports to the logs."""

    num_classes: float | torch.Tensor
    coef_std: float | torch.Tensor
    conflict_fraction: float | torch.Tensor
    degenerate: float | torch.Tensor
    vc_loss: float | torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class PLOTStep:
    """The PLOT step for one model; built once by the trainer."""

    moo: MOOParameters
    solver_name: str
    solver_kwargs: dict
    rho: float
    keep_fraction: float
    vc_weight: float
    gradient_method: str = "loop"
    chunk_size: int | None = None
    chunk_memory_mb: float | None = None
    solve_every: int = 1
    sketch_dim: int = 64
    class_to_group: torch.Tensor | None = None
    reducer: CrossRank | None = None
    all_class_rows: bool = False
    host_reads: bool | None = None
    _replay: StageReplay | None = None
    _cache: CoefficientCache | None = None
    _split: SplitCapture | None = None
    _last_conflict: float | torch.Tensor = 0.0

    def run(
        self,
        model: nn.Module,
        unwrapped: nn.Module,
        pixel_values: torch.Tensor,
        group_labels: torch.Tensor,
        per_sample_loss: Callable[[torch.Tensor], torch.Tensor],
        anchor_for: Callable[[torch.Tensor], torch.Tensor | None],
        backward: Callable[[torch.Tensor], None],
        loss_scale: float | torch.Tensor,
        autocast: Callable[[], object],
        forward_context: Callable[[], object],
        grad_scale: float = 1.0,
        moo_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, StepDiagnostics]:
        """Run the step; return the clean-point batch-mean loss (detached) and diagnostics.

        ``per_sample_loss(logits)`` gives the baseline's per-sample losses (mixup included); ``moo_loss``, when
        given, replaces it at the perturbed point (objectives, variability collapse, total; ``PLOTConfig.moo_loss``);
        ``group_labels`` groups samples into objectives (the first label under mixup);
        ``backward(loss)`` is the trainer's backward (accelerate: loss scaling, DDP hooks);
        ``loss_scale`` is the factor that backward applies to the loss (1 / accumulation steps x scaler);
        ``grad_scale`` is the fp16 loss-scaler's scale: gradients computed here by hand (SAM, per-class) are taken
        of ``grad_scale x objective`` and divided by it, as the scaler does for the final backward.
        Under DDP (``reducer`` active) the step is defined on the global batch (:mod:`plot_hf.distributed`).

        Host reads: with ``host_reads`` False (default on accelerators) the step reads one value on the
        host, the set of classes present in the batch (it fixes K, the number of per-class backward passes):
        finiteness gates, the solver and the diagnostics stay on the device (the diagnostics are read when
        the trainer logs). On a CPU (default ``host_reads`` True) reads are free and the solvers stop early.
        """
        if self._replay is None:
            self._replay = StageReplay(unwrapped, self.moo.stage_name)
        replay = self._replay
        host_reads = self.host_reads if self.host_reads is not None else pixel_values.device.type == "cpu"

        with replay.record(), forward_context():
            logits = logits_of(model(pixel_values=pixel_values))
        clean_losses = per_sample_loss(logits)
        clean_loss = clean_losses.mean()
        reducer = self.reducer if self.reducer is not None and self.reducer.active else None
        batch: GlobalBatch | None = None
        if reducer is not None:  # classes present anywhere, global batch size (one all-reduce)
            num_ids = int(self.class_to_group.max()) + 1 if self.class_to_group is not None else logits.shape[-1]
            ids = self.class_to_group.to(group_labels.device)[group_labels] if self.class_to_group is not None else group_labels
            batch = global_batch(ids, num_ids, reducer)

        params = self.moo.params
        if self.rho > 0:
            sam_objective = clean_loss if batch is None else clean_losses.sum() / batch.size
            if grad_scale != 1.0:
                sam_objective = sam_objective * grad_scale
            sam_grads = torch.autograd.grad(sam_objective, params, retain_graph=False, allow_unused=True)
            sam_grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(sam_grads, params, strict=True)]
            if grad_scale != 1.0:
                sam_grads = [g.float() / grad_scale for g in sam_grads]
            if reducer is not None:  # the global batch's ascent direction: eps identical on every rank
                sam_grads = reducer.sum_list(sam_grads)
            if not host_reads:  # fp16 overflow: no perturbation (zero ascent direction), decided on the device
                finite = all_finite(sam_grads)
                epsilon = sam_epsilon([torch.where(finite, g, torch.zeros_like(g)) for g in sam_grads], self.rho)
            elif gradient_is_finite(sam_grads):  # one host read for all tensors
                epsilon = sam_epsilon(sam_grads, self.rho)
            else:  # fp16 overflow: skip the perturbation, never poison the weights
                epsilon = [torch.zeros_like(p) for p in params]
        else:
            epsilon = [torch.zeros_like(p) for p in params]

        slots = [DirectionSlot() for _ in params]
        perturbed = [
            replace_gradient(p + e.detach(), slot) for p, e, slot in zip(params, epsilon, slots, strict=True)
        ]
        overrides: dict[str, torch.Tensor] = dict(zip(self.moo.names, perturbed, strict=True))
        # Fresh copies of the buffers that the replayed forward runs (the stage and after): it must not update
        # running statistics a second time. Replayed modules do not run: their buffers need no copy.
        overrides.update({name: b.clone() for name, b in replay.recomputed_buffers().items()})
        split = self._split_capture(unwrapped)
        sized = self.chunk_memory_mb is not None and self.gradient_method == "batched"
        with (
            replay.replay(),
            autocast(),
            split.capture() if split is not None else _null(),
            count_saved_bytes(exclude=[*unwrapped.parameters(), *perturbed]) if sized else _null() as saved,
        ):
            perturbed_logits = logits_of(functional_call(unwrapped, overrides, args=(), kwargs={"pixel_values": pixel_values}))
        chunk_size = self.chunk_size
        if saved is not None:  # as many classes per batched call as the memory bound allows (plot_hf.moo.chunking)
            chunk_size = chunk_for_memory(self.chunk_memory_mb * 2**20, saved.nbytes, self.moo.numel,
                                          perturbed[0].element_size())
        perturbed_loss = moo_loss if moo_loss is not None else per_sample_loss
        losses = perturbed_loss(perturbed_logits)

        # Objectives: one per class present, or per class group (frequency-ordered bins of classes).
        objective_labels = group_labels
        if self.class_to_group is not None:
            objective_labels = self.class_to_group.to(group_labels.device)[group_labels]
        if batch is None:
            classes, objectives = per_class_objectives(losses, objective_labels)
        else:  # this rank's part L_k^r (denominator: the global batch) of every class present anywhere
            classes, objectives = batch.classes, batch.local_objectives(losses, objective_labels)
        factor = 1.0
        if self._cache is None:  # sized by the number of objective ids: storing reads nothing on the host
            num_ids = logits.shape[-1] if self.class_to_group is None else int(self.class_to_group.max()) + 1
            self._cache = CoefficientCache(self.solve_every, size=num_ids)
        grads: torch.Tensor | None = None
        degenerate = 0
        if self._cache.should_solve():
            if self.gradient_method == "sketch":

                def objectives_of(values: Sequence[torch.Tensor]) -> torch.Tensor:
                    inner = dict(overrides)
                    inner.update(zip(self.moo.names, values, strict=True))
                    with replay.replay(), autocast(), frozen_batch_stats(unwrapped):
                        out = logits_of(functional_call(unwrapped, inner, args=(), kwargs={"pixel_values": pixel_values}))
                    sample_losses = perturbed_loss(out)
                    position = torch.searchsorted(classes, objective_labels)
                    total = sample_losses.new_zeros(classes.numel()).index_add(0, position, sample_losses)
                    return total / sample_losses.numel()

                gram, _ = sketch_gramian(objectives_of, perturbed, self.sketch_dim, chunk_size=self.chunk_size)
            else:
                if split is not None:
                    grads = split.per_class_gradients(
                        objectives if grad_scale == 1.0 else objectives * grad_scale,
                        torch.searchsorted(classes, objective_labels),
                        dict(zip(self.moo.names, perturbed, strict=True)),
                    ).float()
                    if grad_scale != 1.0:
                        grads = grads / grad_scale
                else:
                    grads = self._class_gradients(objectives, perturbed, objective_labels, batch, grad_scale, chunk_size)
                if reducer is None:
                    gram = gramian(grads)
                else:  # exact: sum G^r; cheap: sum the local Gramians (plot_hf.distributed)
                    grads, gram, factor = reduce_class_gradients(grads, reducer)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DegenerateGramianWarning)
                # fp16 overflow in G: NaN coefficients, so the loss scaler skips the step and lowers its scale.
                # A NaN/inf loss: NaN coefficients too, so that plot_hf.guard skips the optimizer step.
                losses_k = (objectives.detach() if reducer is None else reducer.sum_(objectives.detach().clone())).double()
                if host_reads or not _takes_early_exit(self.solver_name):
                    finite = gradient_is_finite([gram, objectives.detach()])
                    solver = get_solver(self.solver_name) if finite else _nan_coefficients
                    coefficients = solver(gram.double(), losses=losses_k, anchor=anchor_for(classes), **self.solver_kwargs)
                else:  # no host read: the solver runs a fixed budget; non-finite input -> NaN coefficients
                    finite_flag = all_finite([gram, objectives.detach()])
                    coefficients = get_solver(self.solver_name)(
                        gram.double(), losses=losses_k, anchor=anchor_for(classes), early_exit=False, **self.solver_kwargs
                    )
                    coefficients = torch.where(finite_flag, coefficients, torch.full_like(coefficients, float("nan")))
                    degenerate = degenerate_gramian(gram).float()  # read when the trainer logs
                coefficients = coefficients.float()
            degenerate = degenerate + sum(issubclass(w.category, DegenerateGramianWarning) for w in caught)
            for w in caught:
                if not issubclass(w.category, DegenerateGramianWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if self.solve_every > 1:  # (non-finite coefficients are never stored for the amortised steps)
                self._cache.store(classes, coefficients)
            self._last_conflict = conflict_fraction(gram).detach()  # a tensor: read when the trainer logs
        else:  # amortised: the last coefficients of these classes (1.0 if never solved for)
            coefficients = self._cache.lookup(classes, torch.float32)

        # d = G^T lambda: from G when it was computed, else by one backward of sum_k lambda_k L_k.
        direction = coefficients @ grads if grads is not None else weighted_gradient(objectives, coefficients, perturbed)
        if reducer is not None and grads is None:
            factor = float(reducer.world_size)  # local part of the direction; DDP averages over ranks
        if factor != 1.0:
            direction = direction * factor
        for slot, piece in zip(slots, unflatten(direction, params), strict=True):
            slot.fill(piece.detach(), loss_scale)

        if batch is None:
            vc = variability_collapse_loss(losses, group_labels) if self.vc_weight > 0 else losses.new_zeros(())
            total = losses.mean() + self.vc_weight * vc
        else:  # gradients of the GLOBAL total, times W since DDP averages over the ranks
            vc, vc_part = losses.new_zeros(()), losses.new_zeros(())
            if self.vc_weight > 0:
                by_class = batch if self.class_to_group is None else global_batch(group_labels, logits.shape[-1], reducer)
                vc, vc_part = global_variability_collapse(losses, group_labels, by_class, reducer)
            total = batch.world_size * (losses.sum() / batch.size + self.vc_weight * vc_part)
        backward(total)

        if self.keep_fraction and self.rho > 0:
            with torch.no_grad():
                for p, e in zip(params, epsilon, strict=True):
                    p.add_(e, alpha=self.keep_fraction)

        diagnostics = StepDiagnostics(
            num_classes=float(classes.numel()),
            coef_std=coefficients.std().detach() if coefficients.numel() > 1 else 0.0,
            conflict_fraction=self._last_conflict,
            degenerate=degenerate,
            vc_loss=vc.detach(),
        )
        return clean_loss.detach(), diagnostics


    def _class_gradients(
        self,
        objectives: torch.Tensor,
        perturbed: list[torch.Tensor],
        labels: torch.Tensor,
        batch: GlobalBatch | None,
        grad_scale: float,
        chunk_size: int | None,
    ) -> torch.Tensor:
        """K x P per-class gradients (float32). Under DDP only the classes present on this rank are computed
        (zero rows elsewhere), unless ``all_class_rows`` (SyncBatchNorm: its backward is a collective, so every
        rank must run the same number of backward passes). With fp16, of ``grad_scale x L_k``, then unscaled."""
        scaled = objectives if grad_scale == 1.0 else objectives * grad_scale
        rows = None if batch is None or self.all_class_rows else batch.local_rows(labels)
        picked = scaled if rows is None else scaled[rows]
        computed = per_class_gradients(
            picked, perturbed, method=self.gradient_method, chunk_size=chunk_size  # type: ignore[arg-type]
        ).float()
        if grad_scale != 1.0:
            computed = computed / grad_scale
        if rows is None:
            return computed
        full = computed.new_zeros(objectives.numel(), computed.shape[1])
        full[rows] = computed
        return full

    def _split_capture(self, unwrapped: nn.Module) -> SplitCapture | None:
        if self.gradient_method != "per_sample_split":
            return None
        if self._split is None:
            self._split = SplitCapture(unwrapped, self.moo.stage_name, self.moo.names)
        return self._split


@functools.cache
def _takes_early_exit(solver_name: str) -> bool:
    """Whether the solver has a sync-free mode (an ``early_exit`` argument): the built-in ones do; a solver
    registered without it is called as is (it may read values on the host)."""
    return "early_exit" in inspect.signature(get_solver(solver_name)).parameters


def _nan_coefficients(gram: torch.Tensor, **_: object) -> torch.Tensor:
    return torch.full((gram.shape[0],), float("nan"), dtype=gram.dtype, device=gram.device)


@contextmanager
def _null() -> Iterator[None]:
    yield


def logits_of(output: object) -> torch.Tensor:
    """The logits of a model's output: a tensor, an output with ``.logits``, a dict, or a tuple (first item)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, tuple | list):
        logits = output[0]
    if logits is None:
        raise TypeError(f"The model returned {type(output).__name__} without `logits`.")
    return logits
