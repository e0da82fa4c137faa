"""The Trainer extensions of plot-hf that are not PLOT itself, installed by :class:`~plot_hf.PLOTTrainer`.

* :class:`VerifiedCheckpointsMixin`: checkpoints that can be verified (a manifest of sha256 sums written last
  and atomically, :mod:`plot_hf.checkpoint`), rotation that counts only complete checkpoints, and resuming that
  verifies the checkpoint first. A mixin, not a callback: the manifest must be invalidated *before* the
  Trainer writes a folder and the Trainer's own rotation must wait for the manifest, and the callback events
  of ``transformers`` only come after a save.
* :class:`KeptPerturbationRestore`: a callback that puts back the MOO parameters a kept SAM perturbation
  moved when the fp16 scaler skipped the optimizer step, so that a skipped step changes no weight.

The non-finite guard is a callback of its own (:class:`plot_hf.guard.NonFiniteGuard`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from .checkpoint import (
    invalidate,
    latest_valid_checkpoint,
    remove_invalid_checkpoints,
    verify_checkpoint,
    write_manifest,
)


class VerifiedCheckpointsMixin:
    """Mixed into a ``transformers.Trainer`` subclass before ``Trainer`` (``class T(VerifiedCheckpointsMixin,
    Trainer)``): verifiable checkpoints and verified resuming; see the module docstring."""

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer``'s checkpoint, made verifiable: the manifest (sha256 of every file) is written last and
        atomically (:mod:`plot_hf.checkpoint`); older checkpoints are rotated out only after it is written."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

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
        if resume_from_checkpoint is True:
            found = latest_valid_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"No valid checkpoint in output_dir {self.args.output_dir!r} to resume from.")
            resume_from_checkpoint = str(found)
        elif isinstance(resume_from_checkpoint, str | os.PathLike):
            verify_checkpoint(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)


class KeptPerturbationRestore(TrainerCallback):
    """After each optimizer step: if the fp16 scaler skipped it (inf/NaN gradients), put back the MOO parameters
    that a kept SAM perturbation (``sam_keep_fraction > 0``) moved, so a skipped step changes no weight.

    Reads the trainer's ``_kept_snapshot`` (taken before the perturbation, see ``PLOTTrainer._grad_scale``)
    and clears it at every optimizer step.
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        snapshot, trainer._kept_snapshot = trainer._kept_snapshot, None
        if snapshot is not None and trainer.accelerator.optimizer_step_was_skipped:
            with torch.no_grad():
                for p, saved in zip(trainer._plot_step.moo.params, snapshot, strict=True):
                    p.copy_(saved)
