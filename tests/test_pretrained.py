"""Fine-tuning from pretrained checkpoints (plot_hf.models.pretrained) through the recipe path, offline.

The "pretrained" checkpoints are made here, in each Hub format: a timm folder written by timm's own
``save_for_hf`` (config.json + model.safetensors, what ``push_to_hf_hub`` uploads) and a transformers folder from
``save_pretrained`` (a ViT backbone without a head, as ``google/vit-base-patch16-224-in21k``). References: the
checkpoint's own tensors, timm's own initialisation of a fresh model, separate per-class backward passes, and
timm's ``param_groups_layer_decay``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import save_for_hf
from timm.optim import param_groups_layer_decay
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

import plot_hf  # noqa: F401
from plot_hf import PLOTConfig, PLOTTrainer
from plot_hf.models import create_image_classifier
from plot_hf.models.hf import load_image_classifier
from plot_hf.models.introspection import resolve_gradient_method, resolve_moo_parameters
from plot_hf.models.param_groups import fine_tuning_optimizer, fine_tuning_param_groups
from plot_hf.models.pretrained import CheckpointUnavailableError, resolve_checkpoint
from plot_hf.moo import per_class_gradients, per_class_objectives
from plot_hf.moo.split import SplitCapture
from plot_hf.recipe import load_recipe
from plot_hf.train import build_model, preprocessing_of, recipe_preprocessing, run

from .helpers import collate, tensor_dataset
from .test_data_fixtures import cifar_on_disk, places_lt_fixture

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
VIT_ARGS = dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2)
LABELS = [f"class_{i}" for i in range(5)]
CPU = ["--use_cpu", "true", "--bf16", "false", "--data.path", "unused"]


def _timm_vit_folder(tmp_path: Path, num_classes: int = 10) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **VIT_ARGS)
    folder = tmp_path / "timm_vit"
    save_for_hf(source, str(folder), model_args=VIT_ARGS, safe_serialization=True)
    return str(folder), source


def _hf_vit_folder(tmp_path: Path) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(2)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    source = ViTModel(config, add_pooling_layer=False)
    folder = tmp_path / "hf_vit"
    source.save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.3, 0.4]).save_pretrained(folder)
    return str(folder), source


def _build(folder: str, *extra: str) -> torch.nn.Module:
    recipe = load_recipe(None, ["--model_name", folder, *CPU, *extra])
    checkpoint = resolve_checkpoint(folder)
    preprocessing = recipe_preprocessing(recipe.model, recipe.data, checkpoint)
    return build_model(recipe.model, SimpleNamespace(label_names=LABELS), recipe.data, checkpoint, preprocessing)


def test_timm_checkpoint_loads_backbone_and_gets_timms_own_fresh_head(tmp_path):
    folder, source = _timm_vit_folder(tmp_path)
    assert json.loads((Path(folder) / "config.json").read_text())["architecture"] == "vit_tiny_patch16_224"
    torch.manual_seed(0)
    model = _build(folder, "--data.transform", "none")
    state = model.timm_model.state_dict()
    for name, tensor in source.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(state[name], tensor), name
    assert state["head.weight"].shape == (len(LABELS), 32) and model.config.num_labels == len(LABELS)
    torch.manual_seed(0)  # the head is timm's own initialisation for the architecture, drawn as a fresh model draws it
    fresh = timm.create_model("vit_tiny_patch16_224", num_classes=len(LABELS), **VIT_ARGS)
    assert torch.equal(state["head.weight"], fresh.head.weight) and torch.equal(state["head.bias"], fresh.head.bias)
    assert not torch.equal(state["head.weight"][:5], source.head.weight[:5])
    assert model.config.id2label[4] == "class_4" and model.config.fine_tuned_from == folder
    pre = preprocessing_of(SimpleNamespace(transform="cifar", image_size=None), model)
    assert pre["mean"] == (0.5, 0.5, 0.5) and pre["crop_pct"] == 0.9 and pre["input_size"] == (3, 16, 16)


def test_timm_vit_at_another_size_resamples_its_position_embeddings(tmp_path):
    folder, source = _timm_vit_folder(tmp_path)
    model = _build(folder, "--data.transform", "none", "--data.image_size", "8")
    state = model.timm_model.state_dict()
    assert state["pos_embed"].shape == (1, 1 + 4, 32) and model.config.pretrained_cfg["input_size"] == (3, 8, 8)
    assert torch.equal(state["blocks.1.mlp.fc2.weight"], source.state_dict()["blocks.1.mlp.fc2.weight"])
    assert model(pixel_values=torch.randn(2, 3, 8, 8)).logits.shape == (2, len(LABELS))


def test_transformers_checkpoint_loads_backbone_and_gets_a_new_head(tmp_path):
    folder, source = _hf_vit_folder(tmp_path)
    model = _build(folder, "--data.transform", "none")
    assert isinstance(model, ViTForImageClassification)
    state = model.vit.state_dict()
    for name, tensor in source.state_dict().items():
        assert torch.equal(state[name], tensor), name
    head = model.classifier
    assert head.weight.shape == (len(LABELS), 32) and torch.equal(head.bias, torch.zeros(len(LABELS)))
    assert 0.01 < head.weight.std().item() < 0.03  # ViT's _init_weights: N(0, initializer_range = 0.02)
    pre = preprocessing_of(SimpleNamespace(transform="imagenet", image_size=None), model)
    assert pre["mean"] == (0.4, 0.5, 0.6) and pre["std"] == (0.2, 0.3, 0.4) and pre["input_size"] == (3, 16, 16)
    with pytest.raises(ValueError, match="trained at 16 px"):
        _build(folder, "--data.image_size", "32")


def test_a_head_that_already_fits_is_kept(tmp_path):
    folder, source = _timm_vit_folder(tmp_path, num_classes=len(LABELS))
    assert torch.equal(_build(folder).timm_model.head.weight, source.head.weight)
    torch.manual_seed(3)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=len(LABELS))
    classifier = ViTForImageClassification(config)
    classifier.save_pretrained(tmp_path / "hf_cls")
    assert torch.equal(_build(str(tmp_path / "hf_cls")).classifier.weight, classifier.classifier.weight)
    saved = create_image_classifier("resnet20_cifar", LABELS, input_size=(3, 8, 8))  # a plot-hf saved model
    saved.save_pretrained(tmp_path / "saved")
    again = _build(str(tmp_path / "saved"))
    for (name, a), b in zip(saved.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_unreachable_checkpoint_fails_before_any_data_is_loaded(monkeypatch, tmp_path):
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the checkpoint was checked")

    monkeypatch.setattr("plot_hf.train.build_datasets", no_data)
    recipe = load_recipe(RECIPES / "places_lt.yaml", ["--use_cpu", "true", "--bf16", "false",
                                                      "--output_dir", str(tmp_path)])
    with pytest.raises(CheckpointUnavailableError, match=r"timm/resnet152\.tv_in1k.*HF_HUB_OFFLINE=1"):
        run(recipe)
    with pytest.raises(CheckpointUnavailableError, match="not a local folder"):
        resolve_checkpoint(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointUnavailableError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "empty"))


def _split_and_loop(model: torch.nn.Module, size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class gradients of the MOO stage from the one-pass split and from one backward per class."""
    model.eval()  # no dropout / drop path: both sides see the same function
    moo = resolve_moo_parameters(model, None)
    assert resolve_gradient_method(model, moo, "auto") == "per_sample_split"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, size, size, generator=generator)
    y = torch.arange(12) % num_classes
    split = SplitCapture(model, moo.stage_name, moo.names)
    with split.capture():
        losses = F.cross_entropy(model(pixel_values=x).logits, y, reduction="none")
    classes, objectives = per_class_objectives(losses, y)
    looped = per_class_gradients(objectives, moo.params)
    params = dict(zip(moo.names, moo.params, strict=True))
    matrix = split.per_class_gradients(objectives, torch.searchsorted(classes, y), params)
    return matrix, looped


@pytest.mark.parametrize("fmt", ["timm", "transformers"])
def test_split_on_the_loaded_vit_equals_per_class_backward_passes(tmp_path, fmt):
    folder, _ = (_timm_vit_folder if fmt == "timm" else _hf_vit_folder)(tmp_path)
    matrix, looped = _split_and_loop(_build(folder), 16, len(LABELS))
    torch.testing.assert_close(matrix, looped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["timm", "transformers"])
def test_fine_tuning_with_plot_runs_saves_and_reloads(tmp_path, fmt):
    folder, _ = (_timm_vit_folder if fmt == "timm" else _hf_vit_folder)(tmp_path)
    model = _build(folder)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = PLOTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=1e-3,
                      max_steps=2, use_cpu=True, save_strategy="no", report_to="none", disable_tqdm=True,
                      dataloader_num_workers=0, optim="adamw_torch", moo_until_epoch=1, moo_gradient_method="auto")
    trainer = PLOTTrainer(model=model, args=args, data_collator=collate,
                          train_dataset=tensor_dataset(num_rows=32, num_classes=len(LABELS), size=16))
    assert trainer.gradient_method == "per_sample_split"
    trainer.train()
    stage = resolve_moo_parameters(model, None)
    assert stage.stage_name in ("timm_model.blocks.1", "vit.layers.1")
    assert all(not torch.equal(p, before[n]) for n, p in zip(stage.names, stage.params, strict=True))
    trainer.save_model(str(tmp_path / "saved"))
    again = load_image_classifier(str(tmp_path / "saved")).eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(again(pixel_values=x).logits, model.eval()(pixel_values=x).logits)
    assert again.config.fine_tuned_from == folder and again.config.id2label[0] == "class_0"
    assert preprocessing_of(SimpleNamespace(transform="cifar", image_size=None), again)["mean"] != (0.4914,
                                                                                                 0.4822, 0.4465)


TINY = {
    "timm vit": (lambda: create_image_classifier("vit_tiny_patch16_224", LABELS, input_size=(3, 16, 16),
                                                 model_args=VIT_ARGS), "timm_model.blocks.1", 16),
    "timm convnext": (lambda: create_image_classifier("convnext_atto", LABELS, input_size=(3, 32, 32),
                                                      model_args={"depths": (1, 1, 1, 1), "dims": (8, 8, 16, 16)}),
                      "timm_model.stages.3", 32),
    "timm swin": (lambda: create_image_classifier(
        "swin_tiny_patch4_window7_224", LABELS, input_size=(3, 32, 32),
        model_args={"img_size": 32, "window_size": 2, "embed_dim": 8, "depths": (1, 1), "num_heads": (1, 2)}),
        "timm_model.layers.1", 32),
    "transformers vit": (lambda: ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=5)), "vit.layers.1", 16),
    "transformers convnext": (lambda: ConvNextForImageClassification(ConvNextConfig(
        hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_labels=5)), "convnext.encoder.stages.3", 32),
    "transformers swin": (lambda: SwinForImageClassification(SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2, num_labels=5)),
        "swin.encoder.layers.1", 32),
}


@pytest.mark.parametrize("name", list(TINY))
def test_moo_stage_default_and_exact_split_on_layernorm_backbones(name):
    build, stage, size = TINY[name]
    torch.manual_seed(0)
    model = build()
    moo = resolve_moo_parameters(model, None)
    assert moo.stage_name == stage
    if "swin" in name:  # window attention folds windows into the batch: exact per-class backward passes instead
        assert resolve_gradient_method(model, moo, "auto", "cpu") == "loop"
        assert resolve_gradient_method(model, moo, "auto", "cuda") == "batched"
        return
    matrix, looped = _split_and_loop(model, size, len(LABELS))
    torch.testing.assert_close(matrix, looped, rtol=1e-4, atol=1e-6)


def test_layer_decay_and_head_rate_match_timms_groups():
    model = create_image_classifier("vit_tiny_patch16_224", LABELS, input_size=(3, 16, 16), model_args=VIT_ARGS)
    groups = fine_tuning_param_groups(model, learning_rate=0.1, weight_decay=0.05, head_lr_scale=4.0, layer_decay=0.5)
    ours = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    reference = param_groups_layer_decay(model.timm_model, weight_decay=0.05, layer_decay=0.5,
                                                    no_weight_decay_list=model.timm_model.no_weight_decay())
    head = {id(p) for p in model.timm_model.head.parameters()}
    for group in reference:
        for p in group["params"]:
            expected = 0.1 * group["lr_scale"] * (4.0 if id(p) in head else 1.0)
            assert ours[id(p)] == pytest.approx((expected, group["weight_decay"]))
    blocks = model.timm_model.blocks
    assert ours[id(blocks[1].mlp.fc1.weight)][0] == pytest.approx(2 * ours[id(blocks[0].mlp.fc1.weight)][0])
    assert ours[id(model.timm_model.pos_embed)][1] == 0.0 and ours[id(blocks[0].norm1.weight)][1] == 0.0
    with pytest.raises(ValueError, match="layer_decay"):
        fine_tuning_param_groups(ViTForImageClassification(TINY["transformers vit"][0]().config),
                                 learning_rate=0.1, weight_decay=0.0, layer_decay=0.5)
    args = PLOTConfig(output_dir="unused", use_cpu=True, optim="sgd", optim_args="momentum=0.9", learning_rate=0.01,
                      weight_decay=5e-4, report_to="none")
    optimizer = fine_tuning_optimizer(model, args, head_lr_scale=100.0, layer_decay=None)
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert rates[id(model.timm_model.head.weight)] == pytest.approx(1.0) and rates[id(blocks[0].mlp.fc1.weight)] == 0.01


def _timm_resnet_folder(tmp_path: Path) -> str:
    """A "pretrained" ResNet-152 in timm's format, shrunk to one bottleneck per stage (the recipe's override)."""
    torch.manual_seed(4)
    source = timm.create_model("resnet152", layers=[1, 1, 1, 1], num_classes=20)
    folder = tmp_path / "resnet152_tiny"
    save_for_hf(source, str(folder), model_args={"layers": [1, 1, 1, 1]}, safe_serialization=True)
    return str(folder)


@pytest.mark.slow
def test_places_lt_recipe_fine_tunes_a_local_pretrained_resnet(tmp_path):
    recipe_text = (RECIPES / "places_lt.yaml").read_text()
    recipe = load_recipe(RECIPES / "places_lt.yaml", ["--use_cpu", "true", "--bf16", "false"])
    assert recipe.model.model_name == "timm/resnet152.tv_in1k" and recipe.training.num_train_epochs == 30
    assert recipe.training.lr_milestones == [10, 20] and recipe.model.head_lr_scale * 0.001 == pytest.approx(0.1)
    assert "OLTR" in recipe_text and "stage_1.py" in recipe_text
    fx = places_lt_fixture(str(tmp_path))
    overrides = [
        "--output_dir", str(tmp_path / "out"), "--model_name", _timm_resnet_folder(tmp_path),
        "--model_args", "{layers: [1, 1, 1, 1]}", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
        "--dataloader_num_workers", "0", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true",
        "--data.image_root", fx["image_root"], "--data.num_classes", "3", "--data.image_size", "32",
        "--data.split_files", json.dumps({s: fx[s] for s in ("train", "validation", "test")}),
    ]
    results = run(load_recipe(RECIPES / "places_lt.yaml", overrides))
    assert 0.0 <= results["last"]["test_accuracy"] <= 1.0
    saved = load_image_classifier(str(tmp_path / "out"))
    assert saved.config.num_labels == 3 and saved.config.model_args["layers"] == [1, 1, 1, 1]
    assert saved.config.pretrained_cfg["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.slow
def test_cifar100_lt_vit_recipe_fine_tunes_a_local_pretrained_vit(tmp_path, monkeypatch):
    recipe = load_recipe(RECIPES / "cifar100_lt_vit.yaml", ["--use_cpu", "true", "--bf16", "false"])
    assert recipe.model.model_name == "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"
    assert recipe.training.optim == "adamw_torch" and recipe.training.lr_scheduler_type == "cosine"
    assert recipe.model.layer_decay == 0.75 and recipe.training.moo_gradient_method == "auto"
    source = datasets.load_from_disk(cifar_on_disk(100))
    monkeypatch.setattr("plot_hf.data.sources.load_dataset", lambda path, *a, **k: source)
    folder, _ = _timm_vit_folder(tmp_path)
    overrides = [
        "--output_dir", str(tmp_path / "out"), "--model_name", folder, "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64", "--use_cpu", "true",
        "--bf16", "false", "--report_to", "none", "--dataloader_num_workers", "0", "--save_strategy", "no",
        "--disable_tqdm", "true", "--data.image_size", "16",
    ]
    results = run(load_recipe(RECIPES / "cifar100_lt_vit.yaml", overrides))
    assert 0.0 <= results["last"]["test_accuracy"] <= 1.0
    saved = load_image_classifier(str(tmp_path / "out"))
    assert saved.config.num_labels == 100 and saved.config.model_args["drop_path_rate"] == 0.1
    assert saved.config.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]
