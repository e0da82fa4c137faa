"""``PLOTTrainer``: a ``transformers.Trainer`` whose ``training_step`` runs PLOT in the early epochs."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from .config import PLOTConfig
from .distributed import CrossRank, check_backend, check_launch, has_sync_batch_norm, maybe_sync_batch_norm
from .guard import NonFiniteGuard
from .losses import build_loss, mixup_loss
from .models.introspection import (
    class_prior_anchor,
    resolve_class_counts,
    resolve_gradient_method,
    resolve_moo_parameters,
)
from .moo.class_groups import frequency_groups, group_anchor_table
from .schedule import warmup_multistep_schedule
from .step import PLOTStep, logits_of


class PLOTTrainer(Trainer):
    """Trainer for PLOT (Zhou, Liu, Zhao, Gong: "Pareto Deep Long-Tailed Recognition: A Conflict-Averse
    Solution", ICLR 2024).

    During epochs ``< args.moo_until_epoch`` each micro-batch takes the PLOT step (:mod:`plot_hf.step`): a SAM
    perturbation of the MOO stage, one objective per class present, the solver's conflict-averse direction
    for the MOO stage, and the variability-collapse loss; afterwards, the plain step of the baseline loss
    (``args.loss_type``, with mixup when ``args.mixup_alpha > 0``). With ``moo_until_epoch=0`` and the default
    loss, every step is exactly ``Trainer``'s.

    Example::

        import plot_hf
        from plot_hf import PLOTConfig, PLOTTrainer

        args = PLOTConfig(output_dir="out", num_train_epochs=200, moo_until_epoch=30, learning_rate=0.1)
        trainer = PLOTTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                              data_collator=collate)
        trainer.train()

    Gradient accumulation: each micro-batch takes its own PLOT step (its own classes, SAM perturbation and
    solver) and the directions add up, each divided by the number of accumulation steps, as the plain step's
    gradients do. Logged per step: ``plot/num_classes`` (classes in the micro-batch), ``plot/coef_std``
    (spread of the solver's coefficients), ``plot/conflict_fraction`` (class-gradient pairs with negative
    cosine), ``plot/degenerate`` (solver fallbacks), ``plot/vc_loss``.
    """

    args: PLOTConfig

    def __init__(self, model: nn.Module | None = None, args: PLOTConfig | None = None, **kwargs: Any):
        if args is not None and not isinstance(args, PLOTConfig):
            raise TypeError(
                f"PLOTTrainer needs `args` to be a PLOTConfig (a TrainingArguments subclass), got {type(args).__name__}."
            )
        if args is not None and args.plot_enabled:  # before Trainer wraps the model
            check_backend(args)
            if model is not None:
                model = maybe_sync_batch_norm(model, args.sync_batch_norm, args.world_size)
        super().__init__(model=model, args=args, **kwargs)
        check_launch(self.accelerator.num_processes)
        self.nonfinite_guard = NonFiniteGuard(
            self.args.max_consecutive_bad_steps, describe=lambda: f"step {self.state.global_step + 1}"
        )
        self.add_callback(self.nonfinite_guard)
        if self.args.analysis_every_steps > 0:
            from .analysis.callback import AnalysisCallback

            self.add_callback(AnalysisCallback(self))
        unwrapped = self.accelerator.unwrap_model(self.model)
        num_labels = int(getattr(getattr(unwrapped, "config", None), "num_labels", 0) or 0)
        self.class_counts = resolve_class_counts(self.args.class_counts, self.train_dataset, num_labels)
        self.loss_fn = build_loss(self.args.loss_type, self.class_counts, **(self.args.loss_kwargs or {}))
        self.loss_fn.to(self.args.device)
        self._anchor_table = class_prior_anchor(self.class_counts)
        class_to_group = None
        if self.args.moo_class_groups is not None:  # objectives = frequency-ordered class bins
            class_to_group = frequency_groups(self.class_counts, self.args.moo_class_groups)
            self._anchor_table = group_anchor_table(self._anchor_table, class_to_group)
        self._plot_step: PLOTStep | None = None
        self._plot_logs: dict[str, list[float | torch.Tensor]] = defaultdict(list)
        if self.args.plot_enabled:
            moo = resolve_moo_parameters(unwrapped, self.args.moo_modules)
            self.gradient_method = resolve_gradient_method(
                unwrapped, moo, self.args.moo_gradient_method, self.args.device
            )
            self._plot_step = PLOTStep(
                moo=moo,
                solver_name=self.args.moo_solver,
                solver_kwargs=self._solver_kwargs(),
                rho=self.args.sam_rho,
                keep_fraction=self.args.sam_keep_fraction,
                vc_weight=self.args.vc_weight,
                gradient_method=self.gradient_method,
                chunk_size=self.args.moo_chunk_size,
                chunk_memory_mb=self.args.moo_chunk_memory_mb,
                solve_every=self.args.moo_solve_every,
                sketch_dim=self.args.moo_sketch_dim,
                class_to_group=class_to_group,
            )

        self._setup_distributed(unwrapped)

    def _setup_distributed(self, unwrapped: nn.Module) -> None:
        """Cross-rank reductions of the PLOT step (global-batch definition under DDP; identity on one process)
        and the guard that undoes a kept SAM perturbation when the fp16 scaler skips the optimizer step."""
        self._kept_snapshot: list[torch.Tensor] | None = None
        if self._plot_step is None:
            return
        self._plot_step.reducer = CrossRank(self.args.moo_ddp_reduce)
        self._plot_step.all_class_rows = has_sync_batch_norm(unwrapped)
        if self.args.world_size > 1 and self._plot_step.gradient_method == "sketch":
            raise ValueError("`moo_gradient_method='sketch'` is not reduced across ranks; use 'loop' or 'batched' with DDP.")
        self.add_callback(_SkippedStepGuard(self))

    # ----------------------------------------------------------------------------------------------- step
    def plot_active(self) -> bool:
        """Whether the current step is a PLOT step (epoch < E)."""
        epoch = self.state.epoch or 0.0
        return self._plot_step is not None and epoch < self.args.moo_until_epoch

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """The PLOT or plain step behind the non-finite guard (:mod:`plot_hf.guard`): a NaN/inf loss restores
        the batch-norm running statistics and marks the optimizer step to be skipped."""
        buffers = [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()]
        loss = self._plot_or_plain_step(model, inputs, num_items_in_batch)
        if not self.nonfinite_guard.mark_loss(loss.detach()):
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
        return loss

    def _plot_or_plain_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        self.loss_fn.set_epoch(self.state.epoch or 0.0)
        if not self.plot_active():
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        pixel_values, labels = inputs["pixel_values"], inputs["labels"]
        pixel_values, per_sample_loss, group_labels = self._baseline(pixel_values, labels)
        scale = self._backward_scale()
        clean_loss, diagnostics = self._plot_step.run(  # type: ignore[union-attr]
            model=model,
            unwrapped=self.accelerator.unwrap_model(model),
            pixel_values=pixel_values,
            group_labels=group_labels,
            per_sample_loss=per_sample_loss,
            anchor_for=self._anchor,
            backward=lambda loss: self.accelerator.backward(loss / self.current_gradient_accumulation_steps),
            loss_scale=scale,
            autocast=self.accelerator.autocast,
            forward_context=self.compute_loss_context_manager,
            grad_scale=self._grad_scale(),
        )
        for key, value in vars(diagnostics).items():
            if key != "extras":
                self._plot_logs[f"plot/{key}"].append(value)
        return clean_loss / self.current_gradient_accumulation_steps

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """The baseline's loss (``loss_type``, mixup when enabled) for the plain step and for evaluation."""
        if "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        pixel_values = inputs.pop("pixel_values")
        if model.training:
            pixel_values, per_sample_loss, _ = self._baseline(pixel_values, labels)
        else:
            def per_sample_loss(logits: torch.Tensor) -> torch.Tensor:
                return self.loss_fn(logits, labels)
        outputs = model(pixel_values=pixel_values, **inputs)
        loss = per_sample_loss(logits_of(outputs)).mean()
        return (loss, outputs) if return_outputs else loss

    def _baseline(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        """Mixup (when enabled) and the per-sample loss; returns (inputs, loss of logits, grouping labels)."""
        alpha = self.args.mixup_alpha
        if alpha > 0:
            lam = float(np.random.beta(alpha, alpha))
            index = torch.randperm(pixel_values.shape[0], device=pixel_values.device)
            mixed = lam * pixel_values + (1 - lam) * pixel_values[index]
            labels_b = labels[index]

            def per_sample_loss(logits: torch.Tensor) -> torch.Tensor:
                return mixup_loss(self.loss_fn, logits, labels, labels_b, lam)

            return mixed, per_sample_loss, labels

        def plain_loss(logits: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(logits, labels)

        return pixel_values, plain_loss, labels

    def _grad_scale(self) -> float:
        """The fp16 loss-scaler's current scale (1.0 without one); snapshot the MOO parameters before a kept SAM
        perturbation so that a skipped optimizer step can leave them as they were."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return 1.0
        step = self._plot_step
        if step is not None and step.keep_fraction and step.rho > 0 and self._kept_snapshot is None:
            self._kept_snapshot = [p.detach().clone() for p in step.moo.params]
        return float(scaler.get_scale())

    def _backward_scale(self) -> float | torch.Tensor:
        """The factor ``accelerator.backward`` applies to the loss we pass it (for the gradient replacement)."""
        scale: float | torch.Tensor = 1.0 / self.current_gradient_accumulation_steps
        scale /= self.accelerator.gradient_accumulation_steps
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            scale = scaler.get_scale() * scale
        return scale

    def _anchor(self, classes: torch.Tensor) -> torch.Tensor | None:
        if self.args.moo_anchor == "uniform":
            return None
        anchor = self._anchor_table.to(classes.device)[classes].double()
        return anchor / anchor.sum()

    def _solver_kwargs(self) -> dict:
        if self.args.moo_solver == "cagrad":
            return {"alpha": self.args.cagrad_alpha, "rescale": self.args.cagrad_rescale}
        return {}

    # ------------------------------------------------------------------------------------------- sampler
    def _get_train_sampler(self, train_dataset=None):
        """``args.train_sampler`` (class-balanced / square-root, from ``args.resample_from_epoch``), see
        :mod:`plot_hf.baselines.sampling`; the Trainer's own sampler otherwise."""
        if self.args.train_sampler != "random":
            from .baselines.sampling import build_train_sampler

            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return build_train_sampler(
                dataset, self.args.train_sampler, self.args.resample_from_epoch, seed=self.args.seed
            )
        return super()._get_train_sampler(train_dataset)

    # -------------------------------------------------------------------------------------- schedule, log
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.args.lr_milestones is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = optimizer if optimizer is not None else self.optimizer
        steps_per_epoch = max(1, math.ceil(num_training_steps / max(self.args.num_train_epochs, 1e-9)))
        self.lr_scheduler = warmup_multistep_schedule(
            optimizer,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=self.args.lr_warmup_epochs,
            milestones=self.args.lr_milestones,
            decay=self.args.lr_decay,
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Keep the PLOT model card that :func:`plot_hf.report.write_report` wrote (results by class frequency,
        plots, recipe); fall back to ``Trainer``'s generic card when there is none."""
        if getattr(self, "plot_model_card", None) is not None:
            return
        super().create_model_card(*args, **kwargs)

    # ------------------------------------------------------------------------- faults: optimizer, checkpoints
    def create_optimizer(self, *args: Any, **kwargs: Any):
        """``Trainer``'s optimizer, its ``step`` wrapped by the non-finite guard (skips NaN/inf steps)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        self.nonfinite_guard.install(optimizer)
        return optimizer

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer``'s checkpoint, made verifiable: the manifest (sha256 of every file) is written last and
        atomically (:mod:`plot_hf.checkpoint`); older checkpoints are rotated out only after it is written."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        from .checkpoint import invalidate, remove_invalid_checkpoints, write_manifest

        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            invalidate(folder)  # a stale folder of the same step is about to be overwritten
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            write_manifest(folder, step=self.state.global_step)
            remove_invalid_checkpoints(run_dir, keep=None)
            rotate_checkpoints(run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest checkpoint of ``output_dir`` that
        verifies (an incomplete or corrupted newer one is skipped with a warning), and a given path is
        verified first (:class:`plot_hf.checkpoint.CheckpointError` if it is incomplete or corrupted)."""
        from .checkpoint import latest_valid_checkpoint, verify_checkpoint

        if resume_from_checkpoint is True:
            found = latest_valid_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"No valid checkpoint in output_dir {self.args.output_dir!r} to resume from.")
            resume_from_checkpoint = str(found)
        elif isinstance(resume_from_checkpoint, str | os.PathLike):
            verify_checkpoint(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self.args.plot_enabled:
            logs["plot/skipped_steps"] = float(self.nonfinite_guard.skipped)
        if self._plot_logs and "loss" in logs:
            for key, values in self._plot_logs.items():  # step values may be device tensors: read them now
                numbers = [float(v) for v in values]
                logs[key] = float(np.mean(numbers)) if key != "plot/degenerate" else float(np.sum(numbers))
            self._plot_logs.clear()
        super().log(logs, *args, **kwargs)


class _SkippedStepGuard(TrainerCallback):
    """After each optimizer step: if the fp16 scaler skipped it (inf/NaN gradients), put back the MOO parameters
    that a kept SAM perturbation (``sam_keep_fraction > 0``) moved, so a skipped step changes no weight."""

    def __init__(self, trainer: PLOTTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        snapshot, trainer._kept_snapshot = trainer._kept_snapshot, None
        if snapshot is not None and trainer.accelerator.optimizer_step_was_skipped:
            with torch.no_grad():
                for p, saved in zip(trainer._plot_step.moo.params, snapshot, strict=True):  # type: ignore[union-attr]
                    p.copy_(saved)
