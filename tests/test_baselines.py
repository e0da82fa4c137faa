"""Baselines as parts: recipe expansion, samplers wired into the trainer, stage-2 freezing, M2m, the cosine
classifier round trip, the plain-MOO switch, and the baseline recipes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from plot_hf.baselines import BASELINES, SEED_TABLE_BASELINES, DeferredSampler, expand_baseline, get_baseline
from plot_hf.config import PLOTConfig
from plot_hf.losses import NormedLinear
from plot_hf.m2m import M2mConfig, M2mTrainer, choose_seeds, generation_targets, translate
from plot_hf.models.hf import load_image_classifier, use_normed_classifier
from plot_hf.recipe import load_recipe
from plot_hf.stage2 import Stage2Config, prepare_model, release_model, run_stage2, trainable_names
from plot_hf.trainer import PLOTTrainer

from .helpers import collate, parameters_of, tensor_dataset, tiny_model

RECIPES_ROOT = Path(__file__).resolve().parents[1] / "recipes" / "baselines"
RECIPES = sorted(RECIPES_ROOT.glob("*.yaml"))


# ------------------------------------------------------------------------------------------ expansion
def test_every_seed_table_baseline_is_registered():
    assert set(SEED_TABLE_BASELINES) <= set(BASELINES)
    with pytest.raises(ValueError, match="Unknown baseline 'nope'"):
        get_baseline("nope")


def test_expand_fills_defaults_and_keeps_overrides():
    raw = expand_baseline({"baseline": "ldam_drw", "num_train_epochs": 200})
    assert raw["loss_type"] == "ldam" and raw["classifier"] == "normed"
    assert raw["loss_kwargs"] == {"max_m": 0.5, "s": 30.0, "drw_epoch": 160}
    raw = expand_baseline({"baseline": "ldam_drw", "num_train_epochs": 200, "loss_kwargs": {"drw_epoch": 100}})
    assert raw["loss_kwargs"] == {"max_m": 0.5, "s": 30.0, "drw_epoch": 100}  # merged, the recipe's key wins
    raw = expand_baseline({"baseline": "ldam_drw", "loss_type": "focal"})
    assert raw["loss_type"] == "focal" and "loss_kwargs" not in raw  # the loss's defaults do not leak
    raw = expand_baseline({"baseline": "crt_mixup", "stage2": None, "mixup_alpha": 0.2})
    assert raw["stage2"] is None and raw["mixup_alpha"] == 0.2
    raw = expand_baseline({"baseline": "m2m", "num_train_epochs": 200})
    assert raw["train_sampler"] == "class_balanced" and raw["resample_from_epoch"] == 160
    assert raw["m2m"]["start_epoch"] == 160
    assert expand_baseline({"loss_type": "ce"}) == {"loss_type": "ce"}


def test_recipe_with_baseline_and_override(tmp_path):
    recipe = load_recipe(RECIPES_ROOT / "digits.yaml", ["--baseline", "gcl", "--num_train_epochs", "10", "--output_dir", str(tmp_path),
                                "--loss_kwargs", "{noise_mul: 0.2}"])
    assert recipe.model.classifier == "normed" and recipe.model.stage2["method"] == "gcl"
    assert recipe.training.loss_type == "gcl" and recipe.training.loss_kwargs["noise_mul"] == 0.2


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_baseline_recipes_parse(path, tmp_path):
    recipe = load_recipe(path, ["--output_dir", str(tmp_path)])
    if recipe.model.baseline is not None:
        assert recipe.model.baseline in BASELINES
    if recipe.model.stage2:
        Stage2Config.from_dict(recipe.model.stage2)
    if recipe.training.m2m is not None:
        M2mConfig.from_dict(recipe.training.m2m)


# zzpustc/PLOT configs: (classes, IF) -> (pareto_start_epoch, bal_ratio, perturb_radius)
REFERENCE_PLOT_VALUES = {
    (10, 200): (80, 0.02, 0.5), (10, 100): (50, 0.01, 1.0), (10, 50): (20, 0.01, 1.0),
    (100, 200): (30, 0.02, 0.0), (100, 100): (30, 0.02, 0.0), (100, 50): (30, 0.02, 0.0),
}
CIFAR_RECIPES = [*sorted(RECIPES_ROOT.glob("*_cifar*_lt_if*.yaml")), *sorted(RECIPES_ROOT.parent.glob("cifar*_lt.yaml"))]


@pytest.mark.parametrize("path", CIFAR_RECIPES, ids=[p.stem for p in CIFAR_RECIPES])
def test_cifar_recipes_carry_the_reference_values(path, tmp_path):
    recipe = load_recipe(path, ["--output_dir", str(tmp_path)])
    classes, imbalance = recipe.data.num_classes, int(recipe.data.imbalance_factor)
    epoch_e, vc_weight, keep = REFERENCE_PLOT_VALUES[(classes, imbalance)]
    training = recipe.training
    assert (training.moo_until_epoch, training.vc_weight, training.sam_keep_fraction) == (epoch_e, vc_weight, keep)
    assert (recipe.data.selection, recipe.data.shot_rule) == ("plot", "inclusive")
    header = path.read_text().split("\nmodel_name:")[0]
    assert "PLOT settings of the released configs" not in header and "half" not in path.read_text()
    if recipe.model.baseline == "crt_mixup":  # the whole reference pipeline: 200 + 30 epochs
        stage2 = Stage2Config.from_dict(recipe.model.stage2)
        assert (training.num_train_epochs, stage2.method, stage2.epochs, stage2.learning_rate) == (
            200, "crt_mixup", 30, 0.01
        )
        # the reference's optimiser and step (METHOD.md, "The reference pipeline, point by point")
        assert (training.weight_decay_all_parameters, training.lr_schedule_timing, training.train_drop_last) == (
            True, "epoch_start", True
        )
        assert (training.moo_loss, training.max_grad_norm, training.mixup_alpha) == ("first_label", 0.0, 1.0)
        assert recipe.model.model_args == {"classifier_init": "torch_default"}
    else:
        assert f"no PLOT config was released for {recipe.model.baseline}" in " ".join(w for w in header.split() if w != "#")


def test_recipes_cover_every_seed_table_baseline_on_cifar_and_digits():
    names = {p.stem for p in RECIPES}
    for baseline in SEED_TABLE_BASELINES:
        for dataset in ("cifar10_lt", "cifar100_lt"):
            for imbalance in (200, 100, 50):
                assert f"{baseline}_{dataset}_if{imbalance}" in names
        assert f"{baseline}_digits" in names


def test_plain_framework_switch():
    args = PLOTConfig(output_dir="unused", num_train_epochs=7, moo_framework="plain", moo_solver="mgda")
    assert (args.moo_until_epoch, args.sam_rho, args.vc_weight) == (7.0, 0.0, 0.0)
    off = PLOTConfig(output_dir="unused", moo_framework="plain", moo_until_epoch=0)
    assert not off.plot_enabled
    framework = PLOTConfig(output_dir="unused", num_train_epochs=7, moo_until_epoch=3, sam_rho=1e-4)
    assert (framework.moo_until_epoch, framework.sam_rho) == (3, 1e-4)


# ------------------------------------------------------------------------------------------- samplers
def test_deferred_sampler_schedule_and_frequencies():
    labels = [0] * 90 + [1] * 9 + [2] * 1
    sampler = DeferredSampler(labels, "class_balanced", start_epoch=2, num_samples=3000)
    sampler.set_epoch(1)
    assert sampler.active_kind == "random" and len(list(sampler)) == 3000
    first = Counter(labels[i] for i in sampler)
    assert first[0] > 2000  # uniform over rows: the head dominates
    sampler.set_epoch(2)
    assert sampler.active_kind == "class_balanced"
    balanced = Counter(labels[i] for i in sampler)
    assert all(800 < balanced[c] < 1200 for c in range(3))
    sampler.set_epoch(3)
    assert len(sampler) == 3000


def test_trainer_uses_the_configured_sampler(tmp_path):
    dataset = tensor_dataset(64, 4)
    args = PLOTConfig(output_dir=str(tmp_path), moo_until_epoch=0, train_sampler="square_root",
                      resample_from_epoch=1, report_to="none", use_cpu=True)
    trainer = PLOTTrainer(model=tiny_model(), args=args, train_dataset=dataset, data_collator=collate)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, DeferredSampler) and sampler.kind == "square_root" and sampler.start_epoch == 1
    loader = trainer.get_train_dataloader()
    assert len(loader) == len(trainer.get_train_dataloader())
    args.train_sampler = "random"
    assert not isinstance(trainer._get_train_sampler(), DeferredSampler)


# -------------------------------------------------------------------------------------------- stage 2
def _sgd_steps(model: nn.Module, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    torch.manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
        loss = nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("method", ["crt", "mislas", "gcl"])
def test_stage2_only_trains_the_classifier(method):
    model = tiny_model()
    if method == "gcl":
        use_normed_classifier(model)
    before = parameters_of(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    trainable = set(prepare_model(model, Stage2Config(method=method)))
    _sgd_steps(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    classifier = {n for n in before if n.startswith("timm_model.fc.")}
    assert classifier <= changed
    if method == "mislas":
        shift = {n for n in before if ".bn" in n or n.startswith("timm_model.bn")}
        assert trainable == classifier | shift and changed == classifier | shift
        assert all(n.endswith((".weight", ".bias")) for n in shift)
    else:
        assert trainable == classifier and changed == classifier
        for name, buffer in model.named_buffers():  # frozen features: batch-norm statistics do not move
            assert torch.equal(buffer, buffers[name]), name
    release_model(model)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(m.training for m in model.modules())


def test_mislas_without_shift_learning_freezes_batch_norm():
    model = tiny_model()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    trainable = set(prepare_model(model, Stage2Config(method="mislas", shift_batch_norm=False)))
    assert trainable == {"timm_model.fc.weight", "timm_model.fc.bias"}
    _sgd_steps(model)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    release_model(model)


def test_crt_reinitialises_the_classifier_and_mislas_does_not():
    for method, fresh in (("crt", True), ("mislas", False)):
        model = tiny_model()
        weight = model.timm_model.fc.weight.detach().clone()
        prepare_model(model, Stage2Config(method=method))
        assert torch.equal(model.timm_model.fc.weight, weight) is not fresh
    assert Stage2Config(method="mislas").loss_type == "label_aware_smoothing"
    with pytest.raises(ValueError, match="Unknown `stage2` key"):
        Stage2Config.from_dict({"method": "crt", "epoch": 3})


def test_run_stage2_trains_with_class_balanced_sampling(tmp_path):
    dataset = tensor_dataset(48, 4)
    args = PLOTConfig(output_dir=str(tmp_path), moo_until_epoch=0, num_train_epochs=1, report_to="none",
                      use_cpu=True, per_device_train_batch_size=16, mixup_alpha=1.0, disable_tqdm=True)
    trainer = PLOTTrainer(model=tiny_model(), args=args, train_dataset=dataset, data_collator=collate)
    trainer.train()
    before = parameters_of(trainer.model)
    second = run_stage2(trainer, {"method": "crt", "epochs": 1})
    assert second.args.train_sampler == "class_balanced" and second.args.mixup_alpha == 0.0
    assert not second.args.plot_enabled
    changed = {n for n, p in second.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {"timm_model.fc.weight", "timm_model.fc.bias"}
    assert any(entry.get("stage") == 2 for entry in second.state.log_history)


def test_trainable_names_of_a_normed_head():
    model = use_normed_classifier(tiny_model())
    assert trainable_names(model, "crt") == ["timm_model.fc.weight"]


# --------------------------------------------------------------------------------- cosine classifier
def test_normed_classifier_round_trip(tmp_path):
    model = use_normed_classifier(tiny_model())
    assert isinstance(model.timm_model.fc, NormedLinear) and model.config.normed_classifier
    model.save_pretrained(tmp_path)
    again = load_image_classifier(str(tmp_path))
    x = torch.randn(4, 3, 8, 8)
    model.eval()
    again.eval()
    assert isinstance(again.timm_model.fc, NormedLinear)
    torch.testing.assert_close(model(pixel_values=x).logits, again(pixel_values=x).logits)


# ------------------------------------------------------------------------------------------------ M2m
COUNTS = torch.tensor([100.0, 30.0, 10.0, 2.0])


def test_generation_targets_follow_one_minus_relative_frequency():
    labels = torch.arange(4).repeat_interleave(5000)
    picked = labels[generation_targets(labels, COUNTS, torch.Generator().manual_seed(0))]
    rates = torch.bincount(picked, minlength=4).double() / 5000
    assert rates[0] == 0  # the head class is never replaced
    np.testing.assert_allclose(rates.numpy(), (1 - COUNTS / COUNTS.max()).numpy(), atol=0.02)


def test_seeds_come_from_more_frequent_classes():
    targets = torch.tensor([3, 3, 2, 1, 0])
    seeds_pool = torch.tensor([0, 1, 2, 3, 0, 1])
    index, p_accept, valid = choose_seeds(targets, seeds_pool, COUNTS, beta=0.999,
                                          generator=torch.Generator().manual_seed(0))
    assert valid.tolist() == [True, True, True, True, False]  # nothing is more frequent than the head
    seed_classes = seeds_pool[index]
    assert bool((COUNTS[seed_classes[valid]] > COUNTS[targets[valid]]).all())
    expected = 1 - 0.999 ** (COUNTS[seed_classes[valid]] - COUNTS[targets[valid]])
    torch.testing.assert_close(p_accept[valid].float(), expected.float())


class _Linear(nn.Module):
    """A model with the transformers face (``pixel_values=`` in, ``.logits`` out) for M2m's unit tests."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data.copy_(weight)

    def forward(self, pixel_values):
        return type("Out", (), {"logits": self.fc(pixel_values.flatten(1))})()


def test_translation_moves_head_seeds_into_the_tail_class():
    torch.manual_seed(0)
    g = _Linear(torch.eye(4) * 5)
    seeds = torch.zeros(6, 4)
    seeds[:, 0] = 1.0  # head-class seeds (class 0)
    seed_labels, targets = torch.zeros(6, dtype=torch.long), torch.full((6,), 3)
    config = M2mConfig(step_size=0.3, attack_iters=10, lam=0.0, noise_radius=0.1, gamma=0.9)
    before = g(pixel_values=seeds).logits.softmax(-1)[:, 3]
    generated, probs = translate(g, g, seeds, seed_labels, targets, config, bounds=(-3.0, 3.0))
    assert bool((probs > before).all()) and bool((probs >= config.gamma).all())
    assert bool((g(pixel_values=generated).logits.argmax(-1) == 3).all())


def test_m2m_trainer_replaces_only_tail_samples_after_the_start_epoch(tmp_path):
    dataset = tensor_dataset(64, 4)
    args = PLOTConfig(output_dir=str(tmp_path), moo_until_epoch=0, report_to="none", use_cpu=True,
                      train_sampler="class_balanced", resample_from_epoch=1,
                      m2m={"start_epoch": 1, "gamma": 0.0, "beta": 0.5, "attack_iters": 2})
    trainer = M2mTrainer(model=tiny_model(), args=args, train_dataset=dataset, data_collator=collate)
    batch = collate([dataset[i] for i in range(64)])
    calls = []
    original = trainer.m2m_batch
    trainer.m2m_batch = lambda model, inputs: calls.append(1) or original(model, inputs)
    trainer.current_gradient_accumulation_steps = 1
    trainer.state.epoch = 0.5
    trainer.training_step(trainer.model, dict(batch))
    assert not calls  # no generation before the start epoch
    torch.manual_seed(0)
    out = original(trainer.model, dict(batch))
    changed = (out["pixel_values"] != batch["pixel_values"]).flatten(1).any(1)
    assert bool(changed.any())
    assert bool((out["labels"] == batch["labels"]).all())  # a translated sample carries its target label
    head = int(torch.as_tensor(trainer.class_counts).argmax())
    assert not bool((changed & (batch["labels"] == head)).any())  # the head class is never a target
    trainer.state.epoch = 1.0
    trainer.training_step(trainer.model, dict(batch))
    assert calls and trainer.generator_model is not None
