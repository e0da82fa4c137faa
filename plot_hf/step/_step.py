"""One PLOT step on a micro-batch, as a sequence of phases (glue, no new math).

The step, for a batch with per-sample baseline losses ``l_i`` and the MOO parameters ``theta`` (a stage of
the backbone):

1. **forward** at ``theta``, recording the input of the MOO stage;
2. **perturb** (SAM): ``eps = rho * g / ||g||`` with ``g = grad_theta mean(l)``;
3. **replay** the forward from the MOO stage at ``theta + eps`` (earlier stages are reused, not recomputed;
   batch-norm running statistics are not updated a second time);
4. **objectives**: one per class present (or per class group), ``L_k = (1/B) sum_{i in k} l_i``;
5. **Gramian** ``G G^T`` of their gradients ``G`` w.r.t. ``theta`` (the Gramian source of the gradient method);
6. **solve** for the coefficients ``lambda`` (or take the coefficient policy's stored ones);
7. **apply**: ONE backward of ``total = mean(l) + vc_weight * L_vc`` at the perturbed point, in which ``theta``
   receives ``G^T lambda`` instead of its own gradient (:mod:`plot_hf.moo.surrogate`); every other parameter
   receives ``grad total``, as in the reference code;
8. **keep**: ``theta`` was never modified in place (the perturbed copy lives in the graph), so the restore is
   exact; ``keep_fraction`` then adds ``r * eps`` as the reference's ``perturb_radius`` does.

The varying parts are objects chosen once when the step is built (:func:`plot_hf.step.build_plot_step`): the
Gramian source (:mod:`plot_hf.moo.gramian_sources`), the cross-rank reducer (:mod:`plot_hf.distributed`; under
DDP the step is defined on the global batch, on one process every reduction is the identity), the objective
ids (classes or class groups, :class:`plot_hf.moo.objectives.ObjectiveIds`), the coefficient policy
(:mod:`plot_hf.moo.policies`) and the solve phase (:mod:`plot_hf.step._solve`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from ..distributed import BatchScope, Reducer
from ..models.introspection import MOOParameters
from ..moo import (
    DirectionSlot,
    StageReplay,
    conflict_fraction,
    finite_sam_epsilon,
    replace_gradient,
    unflatten,
)
from ..moo.amortised import weighted_gradient
from ..moo.gramian_sources import GramianSource, PerturbedObjectives
from ..moo.objectives import ObjectiveIds
from ..moo.policies import CoefficientPolicy
from ..moo.sketch import frozen_batch_stats
from ._solve import Solve, Solved

PerSampleLoss = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StepDiagnostics:
    """What one PLOT step reports to the logs (device tensors are read when the trainer logs)."""

    num_classes: float | torch.Tensor
    coef_std: float | torch.Tensor
    conflict_fraction: float | torch.Tensor
    degenerate: float | torch.Tensor
    vc_loss: float | torch.Tensor


@dataclass
class TrainingLoopHooks:
    """What the training loop lends the step for one micro-batch; the defaults are plain PyTorch.

    ``backward(loss)``: the loop's backward (accelerate's: loss scaling, DDP hooks); ``loss_scale``: the factor
    that backward applies to its loss (``1 / accumulation steps`` x the fp16 scaler's scale), given to the
    gradient replacement; ``grad_scale``: the fp16 scaler's scale alone (gradients computed by hand are taken of
    ``grad_scale x objective`` and divided by it); ``autocast`` wraps the replayed forward (called on the
    unwrapped model); ``forward_context`` wraps the clean forward.
    """

    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
    loss_scale: float | torch.Tensor = 1.0
    grad_scale: float = 1.0
    autocast: Callable[[], AbstractContextManager] = nullcontext
    forward_context: Callable[[], AbstractContextManager] = nullcontext


@dataclass
class _PerturbedPoint:
    """The replayed forward at ``theta + eps``: the values used, their gradient slots, per-sample losses."""

    values: list[torch.Tensor]
    slots: list[DirectionSlot]
    losses: torch.Tensor
    losses_at: Callable[[Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class PLOTStep:
    """The PLOT step of one (unwrapped) ``model``; build it with :func:`plot_hf.step.build_plot_step`.

    ``host_reads``: may the step read values on the host for the SAM finiteness gate? None: on a CPU batch yes,
    on an accelerator no; then the values read on the host are the set of objective ids present (it fixes K, the
    number of per-class backward passes) and, when the step solves, the K x K Gramian (the solver's one copy, see
    :mod:`plot_hf.step._solve`); the diagnostics stay on the device until the trainer logs them.
    """

    model: nn.Module
    moo: MOOParameters
    replay: StageReplay
    objective_ids: ObjectiveIds
    gramian_source: GramianSource
    reducer: Reducer
    policy: CoefficientPolicy
    solve: Solve
    rho: float
    keep_fraction: float
    vc_weight: float
    host_reads: bool | None = None
    _last_conflict: float | torch.Tensor = field(default=0.0, repr=False)

    @property
    def gradient_method(self) -> str:
        return self.gramian_source.name

    def __repr__(self) -> str:
        return (
            f"PLOTStep(stage={self.moo.stage_name!r}, objective_ids={self.objective_ids!r}, "
            f"gramian_source={self.gramian_source!r}, reducer={self.reducer!r}, policy={self.policy!r}, "
            f"solve={self.solve!r}, rho={self.rho}, keep_fraction={self.keep_fraction}, vc_weight={self.vc_weight}, "
            f"host_reads={self.host_reads})"
        )

    def run(
        self,
        model: nn.Module,
        pixel_values: torch.Tensor,
        class_labels: torch.Tensor,
        per_sample_loss: PerSampleLoss,
        hooks: TrainingLoopHooks | None = None,
        moo_loss: PerSampleLoss | None = None,
    ) -> tuple[torch.Tensor, StepDiagnostics]:
        """Run the step; return the clean-point batch-mean loss (detached) and diagnostics.

        ``model`` is the model as the training loop runs it (DDP-wrapped, say) for the clean forward;
        ``per_sample_loss(logits)`` gives the baseline's per-sample losses (mixup included); ``class_labels``
        the class of each sample (the first label under mixup), which groups samples into objectives;
        ``moo_loss``, when given, replaces ``per_sample_loss`` at the perturbed point (objectives, variability
        collapse, the total whose backward gives the other parameters' gradients; ``PLOTConfig.moo_loss``).
        """
        hooks = hooks or TrainingLoopHooks()
        host_reads = self.host_reads if self.host_reads is not None else pixel_values.device.type == "cpu"
        with self.replay.record(), hooks.forward_context():  # 1. forward
            clean_losses = per_sample_loss(logits_of(model(pixel_values=pixel_values)))
        ids = self.objective_ids(class_labels)  # the objective of each sample: its class or class group
        scope = self.reducer.scope(ids, self.objective_ids.num_ids)  # ids present (on any rank), batch size
        epsilon = self._perturbation(scope.mean(clean_losses), hooks.grad_scale, host_reads)  # 2. perturb
        point = self._replayed_forward(pixel_values, moo_loss or per_sample_loss, epsilon, hooks)  # 3. replay
        problem = PerturbedObjectives(  # 4. objectives
            objectives=scope.objectives(point.losses, ids),
            positions=torch.searchsorted(scope.classes, ids),
            values=dict(zip(self.moo.names, point.values, strict=True)),
            losses_at=point.losses_at,
            grad_scale=hooks.grad_scale,
        )
        direction, solved = self._direction(problem, scope.classes)  # 5-6. Gramian, solve
        vc = self._apply(direction, point, class_labels, scope, hooks)  # 7. apply
        self._keep(epsilon)  # 8. keep
        diagnostics = StepDiagnostics(
            num_classes=float(scope.classes.numel()),
            coef_std=solved.coefficients.std().detach() if solved.coefficients.numel() > 1 else 0.0,
            conflict_fraction=self._last_conflict,
            degenerate=solved.degenerate,
            vc_loss=vc.detach(),
        )
        return clean_losses.mean().detach(), diagnostics

    def _perturbation(self, mean_loss: torch.Tensor, grad_scale: float, host_reads: bool) -> list[torch.Tensor]:
        """SAM's ``eps = rho * g / ||g||``, ``g`` the gradient of the (global) batch-mean loss w.r.t. ``theta``,
        identical on every rank; zeros without SAM or when ``g`` is not finite (an fp16 overflow)."""
        params = self.moo.params
        if self.rho == 0:
            return [torch.zeros_like(p) for p in params]
        objective = mean_loss if grad_scale == 1.0 else mean_loss * grad_scale
        grads = torch.autograd.grad(objective, params, retain_graph=False, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]
        if grad_scale != 1.0:
            grads = [g.float() / grad_scale for g in grads]
        return finite_sam_epsilon(self.reducer.sum_list(grads), self.rho, host_reads=host_reads)

    def _replayed_forward(
        self, pixel_values: torch.Tensor, per_sample_loss: PerSampleLoss, epsilon: list[torch.Tensor],
        hooks: TrainingLoopHooks,
    ) -> _PerturbedPoint:
        """Per-sample losses at ``theta + eps``, replayed from the MOO stage; ``theta + eps`` enters the graph
        through a gradient replacement whose slot the apply phase fills with the direction."""
        slots = [DirectionSlot() for _ in self.moo.params]
        values = [replace_gradient(p + e.detach(), s) for p, e, s in zip(self.moo.params, epsilon, slots, strict=True)]
        overrides: dict[str, torch.Tensor] = dict(zip(self.moo.names, values, strict=True))
        # Fresh copies of the buffers that the replayed forward runs (the stage and after): it must not update
        # running statistics a second time. Replayed modules do not run: their buffers need no copy.
        overrides.update({name: b.clone() for name, b in self.replay.recomputed_buffers().items()})

        def losses_at(inner_values: Sequence[torch.Tensor]) -> torch.Tensor:
            inner = {**overrides, **dict(zip(self.moo.names, inner_values, strict=True))}
            with self.replay.replay(), hooks.autocast(), frozen_batch_stats(self.model):
                return per_sample_loss(self._logits(inner, pixel_values))

        exclude = [*self.model.parameters(), *values]
        with self.replay.replay(), hooks.autocast(), self.gramian_source.forward_context(exclude):
            logits = self._logits(overrides, pixel_values)
        return _PerturbedPoint(values, slots, per_sample_loss(logits), losses_at)

    def _logits(self, overrides: dict[str, torch.Tensor], pixel_values: torch.Tensor) -> torch.Tensor:
        return logits_of(functional_call(self.model, overrides, args=(), kwargs={"pixel_values": pixel_values}))

    def _direction(self, problem: PerturbedObjectives, ids: torch.Tensor) -> tuple[torch.Tensor, Solved]:
        """``d = G^T lambda`` (flat, float32): from ``G`` when the Gramian source formed it, else by one backward
        of ``sum_k lambda_k L_k``; scaled so that DDP's average over ranks is the global batch's direction."""
        if not self.policy.should_solve():  # the policy's stored coefficients; no Gramian this step
            solved = Solved(self.policy.recall(ids))
            matrix, factor = None, float(self.reducer.world_size)
        else:
            found = self.gramian_source.compute(problem)
            if found.matrix is None:  # a Gramian without G (the sketch)
                matrix, gram, factor = None, found.gram, float(self.reducer.world_size)
            else:  # exact: sum G^r over ranks; cheap: sum the local Gramians (plot_hf.distributed)
                matrix, gram, factor = self.reducer.gradients_and_gramian(found.matrix)
            solved = self.solve(gram, self.reducer.summed(problem.objectives.detach()), ids)
            self.policy.remember(ids, solved.coefficients)
            self._last_conflict = conflict_fraction(gram).detach()  # a tensor: read when the trainer logs
        values = list(problem.values.values())
        if matrix is not None:
            direction = solved.coefficients @ matrix
        else:
            direction = weighted_gradient(problem.objectives, solved.coefficients, values)
        return (direction if factor == 1.0 else direction * factor), solved

    def _apply(
        self, direction: torch.Tensor, point: _PerturbedPoint, class_labels: torch.Tensor, scope: BatchScope,
        hooks: TrainingLoopHooks,
    ) -> torch.Tensor:
        """ONE backward of ``mean(l) + vc_weight * L_vc`` (the global batch's, times W since DDP averages over
        the ranks) in which ``theta`` receives ``direction`` instead of its own gradient; returns the
        variability-collapse loss ``L_vc`` (over classes, also with class groups)."""
        for slot, piece in zip(point.slots, unflatten(direction, self.moo.params), strict=True):
            slot.fill(piece.detach(), hooks.loss_scale)
        losses = point.losses
        vc, vc_term = losses.new_zeros(()), losses.new_zeros(())
        if self.vc_weight > 0:
            by_class = scope if self.objective_ids.are_classes else self.reducer.scope(class_labels, self.objective_ids.num_classes)
            vc, vc_term = by_class.variability_collapse(losses, class_labels)
        hooks.backward(scope.world_size * (scope.mean(losses) + self.vc_weight * vc_term))
        return vc

    def _keep(self, epsilon: list[torch.Tensor]) -> None:
        """``theta <- theta + r * eps`` (the reference's ``perturb_radius``)."""
        if self.keep_fraction and self.rho > 0:
            with torch.no_grad():
                for p, e in zip(self.moo.params, epsilon, strict=True):
                    p.add_(e, alpha=self.keep_fraction)


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
