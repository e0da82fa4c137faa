"""Mixed precision through the PLOT step: bf16 autocast in every forward (the replayed one included) on CPU;
fp16 with the GradScaler on CUDA only (hand-computed gradients scaled/unscaled, skipped steps change nothing)."""

from __future__ import annotations

import pytest
import torch

from plot_hf import PLOTConfig, PLOTTrainer

from .helpers import collate, parameters_of, tensor_dataset, tiny_model

COMMON = dict(
    per_device_train_batch_size=16, learning_rate=0.05, max_steps=2, report_to="none", save_strategy="no",
    disable_tqdm=True, seed=5, logging_steps=1, dataloader_num_workers=0, optim="sgd", moo_until_epoch=10,
    sam_keep_fraction=0.5,
)


def _dtype_probe(model):
    """Record the output dtype of the first conv of the MOO stage (layer3) in every forward."""
    seen: list[torch.dtype] = []
    conv = next(m for n, m in model.named_modules() if n.startswith("timm_model.layer3") and isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    return seen


def test_bf16_autocast_in_every_forward_on_cpu(tmp_path):
    model = tiny_model()
    before = parameters_of(model)
    seen = _dtype_probe(model)
    args = PLOTConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True, **COMMON)
    trainer = PLOTTrainer(model=model, args=args, train_dataset=tensor_dataset(), data_collator=collate)
    trainer.train()
    assert len(seen) == 4 and set(seen) == {torch.bfloat16}  # clean + replayed forward, two steps
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logged) and "plot/num_classes" in logged[0]
    for name, p in trainer.model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert not torch.equal(before[name], p.detach()), f"{name} did not change"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs CUDA")


@pytest.mark.gpu
@cuda
def test_fp16_trains_and_hand_gradients_are_unscaled(tmp_path):
    model = tiny_model()
    before = parameters_of(model)
    args = PLOTConfig(output_dir=str(tmp_path), fp16=True, **COMMON)
    trainer = PLOTTrainer(model=model, args=args, train_dataset=tensor_dataset(), data_collator=collate)
    assert trainer.accelerator.scaler is not None and trainer._loss_scaler_scale() > 1.0
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["plot/degenerate"] == 0 for h in logged)
    for name, p in trainer.model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert not torch.equal(before[name].cuda(), p.detach()), f"{name} did not change"


@pytest.mark.gpu
@cuda
def test_fp16_overflowing_step_is_skipped_and_leaves_weights_unperturbed(tmp_path):
    """A huge loss scale overflows fp16: the SAM perturbation is skipped, the direction is NaN, the scaler skips
    the optimizer step, and the kept SAM fraction is undone: every weight is exactly as before."""
    model = tiny_model()
    before = parameters_of(model)
    args = PLOTConfig(output_dir=str(tmp_path), fp16=True, **{**COMMON, "max_steps": 1})
    trainer = PLOTTrainer(model=model, args=args, train_dataset=tensor_dataset(), data_collator=collate)
    trainer.accelerator.scaler._init_scale = 2.0**120
    trainer.train()
    assert trainer.accelerator.scaler.get_scale() < 2.0**120  # the scaler saw the overflow
    for name, p in trainer.model.named_parameters():
        assert torch.equal(before[name].cuda(), p.detach()), name
