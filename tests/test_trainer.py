"""PLOTTrainer: invariants against transformers.Trainer, gradient accumulation, logging, the schedule."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from plot_hf import PLOTConfig, PLOTTrainer
from plot_hf.models.introspection import resolve_class_counts, resolve_moo_parameters
from plot_hf.schedule import warmup_multistep_factor

from .helpers import collate, parameters_of, tensor_dataset, tiny_model

COMMON = dict(
    per_device_train_batch_size=16, learning_rate=0.05, num_train_epochs=1, max_steps=4, use_cpu=True,
    save_strategy="no", report_to="none", disable_tqdm=True, seed=7, data_seed=7, logging_steps=1,
    dataloader_num_workers=0, optim="sgd",
)


def _train(trainer_cls, args_cls, tmp_path, model=None, dataset=None, **overrides):
    args = args_cls(output_dir=str(tmp_path), **{**COMMON, **overrides})
    model = model if model is not None else tiny_model()
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset or tensor_dataset(), data_collator=collate)
    trainer.train()
    return trainer


def test_plot_off_equals_trainer_bit_for_bit(tmp_path):
    plain = _train(Trainer, TrainingArguments, tmp_path / "a")
    plot = _train(PLOTTrainer, PLOTConfig, tmp_path / "b", moo_until_epoch=0)
    for (name, p), q in zip(parameters_of(plain.model).items(), parameters_of(plot.model).values(), strict=True):
        assert torch.equal(p, q), name


def _bn_eval(model):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    return model


class _BNEvalTrainer(PLOTTrainer):
    """Batch norm in eval mode (no cross-sample coupling) while the rest trains."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        _bn_eval(model)  # after Trainer.training_step's model.train()
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize("architecture", ["resnet32_cifar_gn", "resnet20_cifar"])
def test_accumulation_2x32_equals_1x64_plain_step(tmp_path, architecture):
    dataset = tensor_dataset(num_rows=128)
    trainer_cls = _BNEvalTrainer if architecture == "resnet20_cifar" else PLOTTrainer
    one = _train(trainer_cls, PLOTConfig, tmp_path / "a", model=tiny_model(architecture), dataset=dataset,
                 moo_until_epoch=0, per_device_train_batch_size=64, max_steps=1)
    two = _train(trainer_cls, PLOTConfig, tmp_path / "b", model=tiny_model(architecture), dataset=dataset,
                 moo_until_epoch=0, per_device_train_batch_size=32, gradient_accumulation_steps=2, max_steps=1)
    for (name, p), q in zip(parameters_of(one.model).items(), parameters_of(two.model).values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_plot_step_with_accumulation_sums_micro_batch_directions(tmp_path):
    """PLOT with accumulation: each micro-batch takes its own PLOT step (its own classes, SAM perturbation and
    solver) and contributes its direction divided by the number of accumulation steps."""
    dataset = tensor_dataset(num_rows=64)
    captured: dict[str, list] = {"grads": [], "inputs": []}

    class Capture(PLOTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            before = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                      for n, p in model.named_parameters()}
            captured["inputs"].append({k: v.clone() for k, v in inputs.items()})
            loss = super().training_step(model, inputs, num_items_in_batch)
            captured["grads"].append({n: p.grad - before[n] for n, p in model.named_parameters()})
            return loss

    # lr 0 and no clipping: the parameters stay at their initial values, so each micro-batch can be replayed.
    trainer = _train(Capture, PLOTConfig, tmp_path, dataset=dataset, per_device_train_batch_size=16,
                     gradient_accumulation_steps=2, max_steps=1, moo_until_epoch=10, learning_rate=0.0,
                     max_grad_norm=0.0)
    assert len(captured["grads"]) == 2
    args = PLOTConfig(output_dir=str(tmp_path / "solo"), **{**COMMON, "moo_until_epoch": 10})
    solo = PLOTTrainer(model=tiny_model(), args=args, train_dataset=dataset, data_collator=collate)
    solo.model.load_state_dict(trainer.model.state_dict())
    solo.state.epoch = 0.0
    solo.current_gradient_accumulation_steps = 1
    for inputs, contribution in zip(captured["inputs"], captured["grads"], strict=True):
        solo.model.zero_grad(set_to_none=True)
        solo.training_step(solo.model, inputs)
        for name, p in solo.model.named_parameters():
            torch.testing.assert_close(2 * contribution[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_plot_training_logs_diagnostics_and_changes_every_parameter(tmp_path):
    model = tiny_model()
    before = parameters_of(model)
    trainer = _train(PLOTTrainer, PLOTConfig, tmp_path, model=model, moo_until_epoch=10)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all("plot/conflict_fraction" in h and "plot/num_classes" in h for h in logged)
    assert all(0.0 <= h["plot/conflict_fraction"] <= 1.0 and h["plot/degenerate"] == 0 for h in logged)
    for name, p in trainer.model.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} did not change"


def test_plot_switches_off_after_epoch_e(tmp_path):
    trainer = _train(PLOTTrainer, PLOTConfig, tmp_path, moo_until_epoch=0.5, max_steps=-1, num_train_epochs=1)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert "plot/num_classes" in logged[0] and "plot/num_classes" not in logged[-1]


def test_reference_schedule_values():
    factors = [warmup_multistep_factor(e, 5, [160, 180], 0.1) for e in (0, 1, 4, 5, 159, 160, 179, 180, 199)]
    expected = [1 / 3, 1 / 3 * 0.8 + 0.2, 1 / 3 * 0.2 + 0.8, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert factors == pytest.approx(expected)


def test_schedule_is_used_by_trainer(tmp_path):
    trainer = _train(PLOTTrainer, PLOTConfig, tmp_path, moo_until_epoch=0, lr_milestones=[0.5],
                     lr_warmup_epochs=0, max_steps=-1, num_train_epochs=2)
    rates = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert rates[0] == pytest.approx(0.05) and rates[-1] == pytest.approx(0.005)


def test_class_counts_inferred_and_validated():
    dataset = tensor_dataset(num_rows=32, num_classes=4)
    counts = resolve_class_counts(None, dataset, 4)
    assert sum(counts) == 32 and len(counts) == 4
    with pytest.raises(ValueError, match="no training sample"):
        resolve_class_counts(None, dataset, 6)
    with pytest.raises(ValueError, match="outside"):
        resolve_class_counts(None, dataset, 3)
    with pytest.raises(ValueError, match="entries"):
        resolve_class_counts([3, 4], dataset, 4)


def test_moo_modules_default_and_errors():
    model = tiny_model()
    assert resolve_moo_parameters(model, None).stage_name == "timm_model.layer3"
    assert resolve_moo_parameters(model, ["layer2"]).stage_name == "timm_model.layer2"
    with pytest.raises(ValueError, match="matches no module"):
        resolve_moo_parameters(model, ["block9"])


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("moo_solver", "adam", "moo_solver"), ("sam_rho", -1.0, "sam_rho"), ("vc_weight", -0.1, "vc_weight"),
     ("sam_keep_fraction", 2.0, "sam_keep_fraction"), ("moo_until_epoch", -1.0, "moo_until_epoch"),
     ("class_counts", [3, 0], "class_counts"), ("cagrad_rescale", 5, "cagrad_rescale")],
)
def test_config_errors_name_the_key(tmp_path, key, value, match):
    with pytest.raises(ValueError, match=match):
        PLOTConfig(output_dir=str(tmp_path), **{key: value})


def test_trainer_requires_plot_config(tmp_path):
    with pytest.raises(TypeError, match="PLOTConfig"):
        PLOTTrainer(model=tiny_model(), args=TrainingArguments(output_dir=str(tmp_path)))


def test_auto_gradient_method_picks_the_exact_one_pass_method_without_batch_norm(tmp_path):
    plot = PLOTTrainer(model=tiny_model("resnet32_cifar_gn"), args=PLOTConfig(output_dir=str(tmp_path), use_cpu=True),
                       train_dataset=tensor_dataset())
    assert plot._plot_step.gradient_method == "per_sample_split"
    plot = PLOTTrainer(model=tiny_model("resnet20_cifar"), args=PLOTConfig(output_dir=str(tmp_path), use_cpu=True),
                       train_dataset=tensor_dataset())
    assert plot._plot_step.gradient_method == "loop"  # on a CPU; "batched" on an accelerator
