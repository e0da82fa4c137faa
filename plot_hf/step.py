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

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from .moo import (
    DirectionSlot,
    StageReplay,
    conflict_fraction,
    gramian,
    per_class_gradients,
    per_class_objectives,
    replace_gradient,
    sam_epsilon,
    variability_collapse_loss,
)
from .moo.gradients import unflatten
from .moo.solvers import DegenerateGramianWarning, get_solver


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

    num_classes: float
    coef_std: float
    conflict_fraction: float
    degenerate: float
    vc_loss: float
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
    _replay: StageReplay | None = None

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
    ) -> tuple[torch.Tensor, StepDiagnostics]:
        """Run the step; return the clean-point batch-mean loss (detached) and diagnostics.

        ``per_sample_loss(logits)`` gives the baseline's per-sample losses (mixup included);
        ``group_labels`` groups samples into objectives (the first label under mixup);
        ``backward(loss)`` is the trainer's backward (accelerate: loss scaling, DDP hooks);
        ``loss_scale`` is the factor that backward applies to the loss (1 / accumulation steps x scaler).
        """
        if self._replay is None:
            self._replay = StageReplay(unwrapped, self.moo.stage_name)
        replay = self._replay

        with replay.record(), forward_context():
            logits = _logits(model(pixel_values=pixel_values))
        clean_losses = per_sample_loss(logits)
        clean_loss = clean_losses.mean()

        params = self.moo.params
        if self.rho > 0:
            sam_grads = torch.autograd.grad(clean_loss, params, retain_graph=False, allow_unused=True)
            sam_grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(sam_grads, params, strict=True)]
            if all(bool(torch.isfinite(g).all()) for g in sam_grads):
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
        # Fresh copies of the buffers: the replayed forward must not update running statistics a second time.
        overrides.update({name: b.clone() for name, b in unwrapped.named_buffers()})
        with replay.replay(), autocast():
            perturbed_logits = _logits(functional_call(unwrapped, overrides, args=(), kwargs={"pixel_values": pixel_values}))
        losses = per_sample_loss(perturbed_logits)

        classes, objectives = per_class_objectives(losses, group_labels)
        grads = per_class_gradients(
            objectives, perturbed, method=self.gradient_method, chunk_size=self.chunk_size  # type: ignore[arg-type]
        ).float()
        gram = gramian(grads)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DegenerateGramianWarning)
            coefficients = get_solver(self.solver_name)(
                gram.double(),
                losses=objectives.detach().double(),
                anchor=anchor_for(classes),
                **self.solver_kwargs,
            ).to(grads.dtype)
        degenerate = sum(issubclass(w.category, DegenerateGramianWarning) for w in caught)
        for w in caught:
            if not issubclass(w.category, DegenerateGramianWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

        direction = coefficients @ grads
        for slot, piece in zip(slots, unflatten(direction, params), strict=True):
            slot.fill(piece.detach(), loss_scale)

        vc = variability_collapse_loss(losses, group_labels) if self.vc_weight > 0 else losses.new_zeros(())
        total = losses.mean() + self.vc_weight * vc
        backward(total)

        if self.keep_fraction and self.rho > 0:
            with torch.no_grad():
                for p, e in zip(params, epsilon, strict=True):
                    p.add_(e, alpha=self.keep_fraction)

        diagnostics = StepDiagnostics(
            num_classes=float(classes.numel()),
            coef_std=float(coefficients.std()) if coefficients.numel() > 1 else 0.0,
            conflict_fraction=float(conflict_fraction(gram)),
            degenerate=float(degenerate),
            vc_loss=float(vc.detach()),
        )
        return clean_loss.detach(), diagnostics


def _logits(output: object) -> torch.Tensor:
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
