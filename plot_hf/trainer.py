"""``PLOTTrainer``: a ``transformers.Trainer`` whose ``training_step`` runs PLOT in the early epochs."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer

from .callbacks import KeptPerturbationRestore, VerifiedCheckpointsMixin
from .config import PLOTConfig
from .distributed import check_backend, check_launch, maybe_sync_batch_norm
from .guard import NonFiniteGuard
from .losses import build_loss, mixup_loss
from .models.introspection import resolve_class_counts
from .models.remote_code import after_trainer_save
from .schedule import warmup_multistep_schedule
from .step import PLOTStep, TrainingLoopHooks, build_plot_step, logits_of


class PLOTTrainer(VerifiedCheckpointsMixin, Trainer):
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
        self._plot_logs: dict[str, list[float | torch.Tensor]] = defaultdict(list)
        self._plot_step: PLOTStep | None = None
        if self.args.plot_enabled:
            self._plot_step = build_plot_step(self.args, unwrapped, self.class_counts)
            self._guard_kept_perturbation()

    def _guard_kept_perturbation(self) -> None:
        """Undo a kept SAM perturbation when the fp16 scaler skips the optimizer step (:class:`~plot_hf.callbacks.KeptPerturbationRestore`)."""
        self._kept_snapshot: list[torch.Tensor] | None = None
        self.add_callback(KeptPerturbationRestore(self))

    # ----------------------------------------------------------------------------------------------- step
    @property
    def gradient_method(self) -> str | None:
        """The per-class gradient method the PLOT step uses (``moo_gradient_method`` with ``"auto"`` resolved for
        this model and device); None when PLOT is off."""
        return None if self._plot_step is None else self._plot_step.gradient_method

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
        pixel_values, per_sample_loss, class_labels = self._baseline(inputs["pixel_values"], inputs["labels"])
        moo_loss = None
        if self.args.mixup_alpha > 0 and self.args.moo_loss == "first_label":
            moo_loss = self._first_label_loss(class_labels)
        self._snapshot_before_kept_perturbation()
        clean_loss, diagnostics = self._plot_step.run(  # type: ignore[union-attr]
            model, pixel_values, class_labels, per_sample_loss, self._training_loop_hooks(), moo_loss=moo_loss
        )
        for key, value in vars(diagnostics).items():
            self._plot_logs[f"plot/{key}"].append(value)
        return clean_loss / self.current_gradient_accumulation_steps

    def _training_loop_hooks(self) -> TrainingLoopHooks:
        """Accelerate's backward (divided by the accumulation steps), its scales, autocast and loss context."""
        return TrainingLoopHooks(
            backward=lambda loss: self.accelerator.backward(loss / self.current_gradient_accumulation_steps),
            loss_scale=self._backward_scale(),
            grad_scale=self._loss_scaler_scale(),
            autocast=self.accelerator.autocast,
            forward_context=self.compute_loss_context_manager,
        )

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

    def _first_label_loss(self, labels: torch.Tensor):
        """The loss at the perturbed point under ``moo_loss="first_label"`` (the reference code): the baseline's
        per-sample loss on the first label of each mixed pair, ``l_i = loss(z_i, y_a,i)``, on the mixed inputs."""

        def first_label_loss(logits: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(logits, labels)

        return first_label_loss

    def _loss_scaler_scale(self) -> float:
        """The fp16 loss-scaler's current scale (1.0 without one)."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return 1.0
        return float(scaler.get_scale())

    def _snapshot_before_kept_perturbation(self) -> None:
        """With an fp16 scaler and a kept SAM perturbation, copy the MOO parameters (once per optimizer step), so
        that a skipped optimizer step can leave them as they were (:class:`~plot_hf.callbacks.KeptPerturbationRestore`)."""
        step, scaler = self._plot_step, getattr(self.accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled() or step is None or self._kept_snapshot is not None:
            return
        if step.keep_fraction and step.rho > 0:
            self._kept_snapshot = [p.detach().clone() for p in step.moo.params]

    def _backward_scale(self) -> float | torch.Tensor:
        """The factor ``accelerator.backward`` applies to the loss we pass it (for the gradient replacement)."""
        scale: float | torch.Tensor = 1.0 / self.current_gradient_accumulation_steps
        scale /= self.accelerator.gradient_accumulation_steps
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            scale = scaler.get_scale() * scale
        return scale

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

    def get_train_dataloader(self):
        """``Trainer``'s training loader; with ``train_drop_last`` it drops the last, smaller batch of each epoch
        (``dataloader_drop_last`` is set for this loader only, so evaluation still sees every sample)."""
        if not self.args.train_drop_last or self.args.dataloader_drop_last:
            return super().get_train_dataloader()
        self.args.dataloader_drop_last = True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = False

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
            timing=self.args.lr_schedule_timing,
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Keep the PLOT model card that :func:`plot_hf.report.write_report` wrote (results by class frequency,
        plots, recipe); fall back to ``Trainer``'s generic card when there is none."""
        if getattr(self, "plot_model_card", None) is not None:
            return
        super().create_model_card(*args, **kwargs)

    # ------------------------------------------------------------------------------------ faults: optimizer
    # ------------------------------------------------------------------------- faults: optimizer, checkpoints
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Every parameter with ``weight_decay_all_parameters`` (the reference's single SGD over all of them);
        otherwise ``Trainer``'s rule (biases and LayerNorm weights undecayed)."""
        if self.args.weight_decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def create_optimizer(self, *args: Any, **kwargs: Any):
        """``Trainer``'s optimizer, its ``step`` wrapped by the non-finite guard (skips NaN/inf steps)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        self.nonfinite_guard.install(optimizer)
        return optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """``Trainer._save`` (output folder, ``checkpoint-N``, ``push_to_hub``), plus the model's code when timm alone
        cannot rebuild it, so the folder loads without plot-hf (:mod:`plot_hf.models.remote_code`)."""
        super()._save(output_dir, state_dict)
        after_trainer_save(self, output_dir or self.args.output_dir)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self.args.plot_enabled:
            logs["plot/skipped_steps"] = float(self.nonfinite_guard.skipped)
        if self._plot_logs and "loss" in logs:
            for key, values in self._plot_logs.items():  # step values may be device tensors: read them now
                numbers = [float(v) for v in values]
                logs[key] = float(np.mean(numbers)) if key != "plot/degenerate" else float(np.sum(numbers))
            self._plot_logs.clear()
        super().log(logs, *args, **kwargs)
