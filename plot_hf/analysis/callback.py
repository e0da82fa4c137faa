"""``AnalysisCallback``: the cheap analysis measures every ``analysis_every_steps`` optimizer steps of a run."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .measures import (
    class_gradients,
    conflict_measures,
    fixed_batches,
    penultimate_features,
    preference_measures,
    representation_measures,
    summary_measures,
)


def analyze_model(trainer: Any, batches: list) -> dict[str, Any]:
    """Conflict, preference and representation measures of ``trainer.model`` on ``batches`` (eval mode)."""
    from ..models.introspection import resolve_moo_parameters

    model = trainer.accelerator.unwrap_model(trainer.model)
    step = getattr(trainer, "_plot_step", None)
    params = step.moo.params if step is not None else resolve_moo_parameters(model, trainer.args.moo_modules).params

    def per_sample_loss(logits, labels):
        return trainer.loss_fn(logits, labels)

    grads = class_gradients(model, params, batches, per_sample_loss, method=trainer.args.moo_gradient_method,
                            chunk_size=trainer.args.moo_chunk_size,
                            chunk_memory_mb=trainer.args.moo_chunk_memory_mb)
    counts = trainer.class_counts
    return {
        "conflict": conflict_measures(grads, counts),
        "preference": preference_measures(grads, counts),
        "representation": representation_measures(penultimate_features(model, batches, per_sample_loss), counts),
    }


class AnalysisCallback(TrainerCallback):
    """Logs ``analysis/conflict_fraction``, ``analysis/mean_cosine``, ``analysis/head_tail_preference``,
    ``analysis/nc1`` and ``analysis/mean_loss_std`` every ``args.analysis_every_steps`` steps (and at step 0),
    measured on ``args.analysis_num_batches`` training batches drawn once with a seeded generator. It reads the
    model without changing it (eval mode, ``autograd.grad``, no global RNG), so the run stays bit-identical."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self._batches: list | None = None

    def _measure(self) -> None:
        trainer = self.trainer
        if self._batches is None:
            self._batches = fixed_batches(
                trainer.train_dataset, trainer.data_collator, trainer.args.analysis_num_batches,
                trainer.args.per_device_train_batch_size, seed=trainer.args.seed,
            )
        summary = summary_measures(**analyze_model(trainer, self._batches))
        trainer.log({f"analysis/{k}": float(v) for k, v in summary.items()})

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0 and self.trainer.is_world_process_zero():
            self._measure()

    def on_step_end(self, args, state, control, **kwargs):
        every = args.analysis_every_steps
        if every and state.global_step % every == 0 and self.trainer.is_world_process_zero():
            self._measure()
