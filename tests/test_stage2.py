"""Stage 2 of cRT+Mixup as the PLOT reference runs it (``crt_mixup``), against hand-written references: the
feature perturbation and the loss against per-class ``autograd.grad`` calls, the class weights and the
mixing schedule against their formulas, one trainer step against a hand-written SGD step, what moves (only the
classifier; batch-norm statistics too) and the class balance of the stage-2 sampler."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from plot_hf.baselines import dataset_labels
from plot_hf.config import PLOTConfig
from plot_hf.losses import CELoss, NormedLinear
from plot_hf.stage2 import (
    Stage2Config,
    _stage2_trainer_class,
    feature_perturbation,
    feature_perturbation_loss,
    perturbation_class_weights,
    perturbation_mix,
    prepare_model,
    run_stage2,
    stage2_args,
)
from plot_hf.trainer import PLOTTrainer

from .helpers import collate, parameters_of, tensor_dataset, tiny_model


def _reference_loss(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, weights, mix: float):
    """train_cifar.py's ``train_sample`` ("Decoup"), written out: one autograd.grad per class present, the
    class's mean CE, ``g / torch.norm(g)`` over the whole tensor, a separate head forward per class."""
    fea = features.detach().clone().requires_grad_(True)
    loss_ori = F.cross_entropy(head(fea), labels, reduction="none")
    deltas, perturbed = torch.zeros_like(fea), []
    for cls in torch.unique(labels).tolist():
        idx = (labels == cls).nonzero().flatten()
        grad = torch.autograd.grad(loss_ori[idx].mean(), fea, retain_graph=True)[0]
        noise = 1.0 * grad / torch.norm(grad) * float(weights[cls])
        deltas[idx] = noise[idx]
        loss_tmp = F.cross_entropy(head(fea + noise), labels, reduction="none") * float(weights[cls])
        perturbed.append(loss_tmp[idx])
    loss = mix * torch.cat(perturbed).mean() + (1 - mix) * loss_ori.mean()
    return loss, deltas


def _batch(seed: int = 0, rows: int = 12, dim: int = 6, classes: int = 4):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, dim, generator=generator)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 0, 1])[:rows]  # class 3: a single sample
    return features, labels, torch.tensor([0.005, 0.4, 0.9, 1.7])[:classes]


@pytest.mark.parametrize("head_kind", ["linear", "normed"])
def test_perturbation_and_loss_match_per_class_autograd_calls(head_kind):
    torch.manual_seed(1)
    head = nn.Linear(6, 4) if head_kind == "linear" else NormedLinear(6, 4)
    features, labels, weights = _batch()
    loss_fn = CELoss([10, 5, 3, 1])
    delta = feature_perturbation(head, features, labels, weights, loss_fn)
    mix = 7 / 30
    expected_loss, expected_delta = _reference_loss(head, features, labels, weights, mix)
    torch.testing.assert_close(delta, expected_delta, rtol=1e-5, atol=1e-7)
    for cls in range(4):  # each class's perturbation has norm w_y
        assert math.isclose(float(delta[labels == cls].norm()), float(weights[cls]), rel_tol=1e-5)
    loss = feature_perturbation_loss(head, features, labels, weights, mix, loss_fn)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-7)
    ours = torch.autograd.grad(loss, list(head.parameters()))
    theirs = torch.autograd.grad(expected_loss, list(head.parameters()))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_zero_gradient_class_gets_no_perturbation():
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1e4, 0.0], [-1e4, 0.0]]))
        head.bias.zero_()
    features, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    delta = feature_perturbation(head, features, labels, torch.tensor([0.5, 0.5]), CELoss([2, 1]))
    assert torch.isfinite(delta).all() and torch.equal(delta[0], torch.zeros(2))  # CE of row 0 saturates to 0
    assert math.isclose(float(delta[1].norm()), 0.5, rel_tol=1e-6)


def test_class_weights_and_mixing_schedule_follow_the_reference_formulas():
    counts = [5000, 2997, 1796, 50]
    expected = np.log(max(counts) / np.array(counts, dtype=np.float64) + 0.01) / 2.0
    np.testing.assert_allclose(perturbation_class_weights(counts).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(perturbation_class_weights(counts, div=1.0).numpy(), 2 * expected, rtol=1e-6)
    reference = [min((epoch - 200 + 1) / (230 - 200), 1.0) for epoch in range(200, 230)]
    assert [perturbation_mix(e, 30) for e in range(30)] == reference
    assert perturbation_mix(4.99, 30) == 5 / 30 and perturbation_mix(40, 30) == 1.0
    assert perturbation_mix(0, 30, cap=0.5) == 1 / 30 and perturbation_mix(29, 30, cap=0.5) == 0.5
    with pytest.raises(ValueError, match="class_counts"):
        perturbation_class_weights([3, 0])


def test_crt_mixup_config_defaults_and_bad_input():
    config = Stage2Config(method="crt_mixup")
    assert (config.epochs, config.learning_rate, config.lr_scheduler_type) == (30.0, 0.01, "constant")
    assert not config.reinit_classifier and not config.eval_frozen_modules and config.feature_perturbation
    assert config.epoch_length == "dataset" and config.decay_all_parameters and config.loss_type == "ce"
    crt = Stage2Config(method="crt")
    assert (crt.epochs, crt.lr_scheduler_type, crt.reinit_classifier, crt.epoch_length) == (
        10.0, "cosine", True, "balanced"
    )
    with pytest.raises(ValueError, match="stage2.sampler.*class_balanced"):
        Stage2Config(method="crt_mixup", sampler="uniform")
    with pytest.raises(ValueError, match="stage2.epoch_length"):
        Stage2Config(method="crt_mixup", epoch_length="long")


def _stage1(tmp_path, rows: int = 48):
    dataset = tensor_dataset(rows, 4)
    args = PLOTConfig(output_dir=str(tmp_path), moo_until_epoch=0, num_train_epochs=1, report_to="none",
                      use_cpu=True, per_device_train_batch_size=16, disable_tqdm=True, save_strategy="no",
                      optim="sgd", optim_args="momentum=0.9", weight_decay=2e-4, seed=3, max_grad_norm=0.0)
    return PLOTTrainer(model=tiny_model(), args=args, train_dataset=dataset, data_collator=collate)


def test_only_the_classifier_trains_and_batch_norm_statistics_move(tmp_path):
    trainer = _stage1(tmp_path)
    model = trainer.model
    before = parameters_of(model)
    buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
    config = Stage2Config(method="crt_mixup", epochs=1)
    prepare_model(model, config)
    assert torch.equal(model.timm_model.fc.weight, before["timm_model.fc.weight"])  # not re-initialised
    model.train()
    assert all(m.training for m in model.modules())  # frozen by requires_grad only
    second = run_stage2(trainer, config)
    changed = {n for n, p in second.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {"timm_model.fc.weight", "timm_model.fc.bias"}
    moved = {n for n, b in second.model.named_buffers() if n in buffers and not torch.equal(b, buffers[n])}
    assert any(n.endswith("running_mean") for n in moved) and any(n.endswith("running_var") for n in moved)
    assert second.lr_scheduler.get_last_lr() == [0.01, 0.01]  # constant after 3 steps (two parameter groups)
    (group,) = [g for g in second.optimizer.param_groups if g["params"]]  # one group: the classifier
    assert {id(p) for p in group["params"]} == {id(p) for p in second.model.timm_model.fc.parameters()}
    assert (group["weight_decay"], group["momentum"]) == (2e-4, 0.9)


def test_one_trainer_step_equals_a_hand_written_sgd_step(tmp_path):
    trainer = _stage1(tmp_path)
    config = Stage2Config(method="crt_mixup", epochs=30)
    model = trainer.model
    reference = copy.deepcopy(model)
    prepare_model(model, config)
    args = stage2_args(trainer.args, config)
    args.max_steps, args.per_device_train_batch_size = 1, 16
    second = _stage2_trainer_class()(stage2_config=config, model=model, args=args,
                                     train_dataset=trainer.train_dataset, data_collator=collate)
    rows = list(second._get_train_sampler())[:16]
    second.train()
    batch = collate([trainer.train_dataset[i] for i in rows])
    store = {}
    hook = reference.timm_model.fc.register_forward_pre_hook(lambda m, a: store.__setitem__("f", a[0]))
    reference.train()
    reference(pixel_values=batch["pixel_values"])
    hook.remove()
    weights = torch.tensor(np.log(max(second.class_counts) / np.array(second.class_counts) + 0.01) / 2.0)
    head = reference.timm_model.fc
    loss, _ = _reference_loss(head, store["f"], batch["labels"], weights.float(), mix=1 / 30)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name], param, rtol=1e-5, atol=1e-7)
    for name, buffer in reference.named_buffers():  # batch norm moved once, as in the reference
        torch.testing.assert_close(dict(model.named_buffers())[name], buffer)


def test_stage2_sampler_is_class_balanced_with_one_dataset_of_draws_per_epoch(tmp_path):
    trainer = _stage1(tmp_path, rows=400)
    config = Stage2Config(method="crt_mixup")
    second = _stage2_trainer_class()(stage2_config=config, model=trainer.model,
                                     args=stage2_args(trainer.args, config),
                                     train_dataset=trainer.train_dataset, data_collator=collate)
    sampler = second._get_train_sampler()
    labels = dataset_labels(trainer.train_dataset).tolist()
    assert len(sampler) == 400
    draws = Counter(labels[i] for _ in range(25) for i in sampler)  # 10,000 draws
    assert Counter(labels)[0] > 4 * Counter(labels)[3]
    assert all(abs(draws[c] / 10_000 - 0.25) < 0.025 for c in range(4)), draws
    balanced = Stage2Config(method="crt")
    crt = _stage2_trainer_class()(stage2_config=balanced, model=trainer.model,
                                  args=stage2_args(trainer.args, balanced),
                                  train_dataset=trainer.train_dataset, data_collator=collate)
    assert len(crt._get_train_sampler()) == max(Counter(labels).values()) * 4  # cRT's n_max * C


def test_weight_decay_reaches_the_classifier_bias_only_when_asked(tmp_path):
    trainer = _stage1(tmp_path)
    for method, bias_decayed in (("crt_mixup", True), ("crt", False)):
        config = Stage2Config(method=method)
        second = _stage2_trainer_class()(stage2_config=config, model=tiny_model(), args=stage2_args(trainer.args, config),
                                         train_dataset=trainer.train_dataset, data_collator=collate)
        decayed = set(second.get_decay_parameter_names(second.model))
        assert ("timm_model.fc.bias" in decayed) is bias_decayed and "timm_model.fc.weight" in decayed
