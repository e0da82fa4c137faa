"""The Trainer extensions of :mod:`plot_hf.callbacks` on their own: the verified-checkpoint mixin on a bare
``transformers.Trainer`` (no PLOT), and the restore of a kept SAM perturbation after a skipped fp16 step."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainingArguments

from plot_hf import PLOTConfig, PLOTTrainer
from plot_hf.callbacks import KeptPerturbationRestore, VerifiedCheckpointsMixin
from plot_hf.checkpoint import MANIFEST_NAME, CheckpointError, list_checkpoints, verify_checkpoint

from .helpers import collate, tensor_dataset, tiny_model


class _VerifiedTrainer(VerifiedCheckpointsMixin, Trainer):
    pass


def _bare_trainer(output_dir: Path, max_steps: int) -> _VerifiedTrainer:
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, save_steps=2, save_total_limit=2, per_device_train_batch_size=8,
        use_cpu=True, report_to="none", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
        seed=0, optim="sgd", learning_rate=0.01,
    )
    return _VerifiedTrainer(model=tiny_model(), args=args, train_dataset=tensor_dataset(32), data_collator=collate)


def test_mixin_gives_a_bare_trainer_verified_checkpoints_and_resume(tmp_path: Path) -> None:
    _bare_trainer(tmp_path, max_steps=6).train()
    kept = list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["checkpoint-6", "checkpoint-4"]  # save_total_limit 2
    assert [verify_checkpoint(p)["step"] for p in kept] == [6, 4]

    weights = kept[0] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # truncate the newest checkpoint
    with pytest.raises(CheckpointError, match=r"checkpoint-6.*model\.safetensors"):
        _bare_trainer(tmp_path, max_steps=8).train(resume_from_checkpoint=str(kept[0]))
    resumed = _bare_trainer(tmp_path, max_steps=8)
    resumed.train(resume_from_checkpoint=True)  # falls back to checkpoint-4: steps 5..8 run again
    assert resumed.state.global_step == 8
    assert (tmp_path / "checkpoint-8" / MANIFEST_NAME).is_file()
    assert [verify_checkpoint(p)["step"] for p in list_checkpoints(tmp_path)] == [8, 6]  # 6 rewritten whole


def test_plot_trainer_installs_the_extensions(tmp_path: Path) -> None:
    args = PLOTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=8)
    trainer = PLOTTrainer(model=tiny_model(), args=args, train_dataset=tensor_dataset(32), data_collator=collate)
    assert isinstance(trainer, VerifiedCheckpointsMixin)
    callbacks = trainer.callback_handler.callbacks
    assert any(isinstance(c, KeptPerturbationRestore) for c in callbacks)
    assert trainer.nonfinite_guard in callbacks


@pytest.mark.parametrize("skipped", [True, False])
def test_kept_perturbation_is_restored_only_when_the_step_was_skipped(skipped: bool) -> None:
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2))]
    snapshot = [p.detach().clone() for p in params]
    with torch.no_grad():  # the kept perturbation moved them
        for p in params:
            p.add_(0.5)
    moved = [p.detach().clone() for p in params]
    trainer = SimpleNamespace(
        _kept_snapshot=snapshot, accelerator=SimpleNamespace(optimizer_step_was_skipped=skipped),
        _plot_step=SimpleNamespace(moo=SimpleNamespace(params=params)),
    )
    KeptPerturbationRestore(trainer).on_optimizer_step(None, None, None)
    assert trainer._kept_snapshot is None
    for p, before, after in zip(params, snapshot, moved, strict=True):
        torch.testing.assert_close(p.detach(), before if skipped else after)
