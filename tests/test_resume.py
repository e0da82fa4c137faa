"""``resume_from_checkpoint`` continues a PLOT run exactly: same parameters as the uninterrupted run, with the
epoch-based MOO schedule switching off after the resume point, mixup (numpy's RNG), a kept SAM fraction, the
reference learning-rate schedule and SGD momentum."""

from __future__ import annotations

import torch

from plot_hf import PLOTConfig, PLOTTrainer

from .helpers import collate, parameters_of, tensor_dataset, tiny_model

ARGS = dict(
    per_device_train_batch_size=8, learning_rate=0.05, num_train_epochs=2, use_cpu=True, report_to="none",
    disable_tqdm=True, seed=11, logging_steps=1, dataloader_num_workers=0, optim="sgd", save_strategy="steps",
    save_steps=3, moo_until_epoch=1.25, mixup_alpha=1.0, sam_keep_fraction=0.5, lr_milestones=[1.5],
    lr_warmup_epochs=0.5,
)


def _trainer(output_dir) -> PLOTTrainer:
    args = PLOTConfig(output_dir=str(output_dir), **ARGS)
    return PLOTTrainer(model=tiny_model(), args=args, train_dataset=tensor_dataset(num_rows=32), data_collator=collate)


def test_resume_continues_exactly(tmp_path):
    full = _trainer(tmp_path / "full")
    full.train()  # 8 steps: PLOT for steps 1-5 (epoch < 1.25), the plain step for 6-8
    logged = [h for h in full.state.log_history if "loss" in h]
    assert len(logged) == 8 and "plot/num_classes" in logged[4] and "plot/num_classes" not in logged[5]

    resumed = _trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed.state.global_step == 8
    for (name, p), q in zip(parameters_of(full.model).items(), parameters_of(resumed.model).values(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
    for name, buffer in full.model.named_buffers():
        torch.testing.assert_close(dict(resumed.model.named_buffers())[name], buffer, msg=name)
