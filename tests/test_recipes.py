"""Every recipe, pointed at local data in its schema, builds its data and trains PLOT steps with the real
entry point (``plot_hf.train.run``); only the sizes are overridden (tiny backbone, tiny images, 2 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from plot_hf.recipe import load_recipe
from plot_hf.train import run

from .test_data_fixtures import cifar_on_disk, imagenet_lt_fixture, inat_fixture, places_lt_fixture

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(tmp_path / "out"), "--model_name", "resnet20_cifar", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--use_cpu", "true",
        "--bf16", "false", "--report_to", "none", "--dataloader_num_workers", "0", "--eval_strategy", "no",
        "--save_strategy", "no", "--disable_tqdm", "true", *extra,
    ]


def _check(results: dict, tmp_path: Path) -> None:
    assert 0.0 <= results["last"]["test_accuracy"] <= 1.0
    assert (tmp_path / "out" / "metrics.json").is_file() and (tmp_path / "out" / "README.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_lt", "cifar100_lt"])
def test_cifar_recipe_trains(name, tmp_path, monkeypatch):
    classes = 10 if name == "cifar10_lt" else 100
    source = datasets.load_from_disk(cifar_on_disk(classes))
    monkeypatch.setattr("plot_hf.data.sources.load_dataset", lambda path, *a, **k: source)
    recipe = load_recipe(RECIPES / f"{name}.yaml", _tiny(tmp_path, "--data.image_size", "8"))
    assert recipe.training.moo_until_epoch > 0 and recipe.data.path == f"uoft-cs/cifar{classes}"
    _check(run(recipe), tmp_path)


def _split_file_overrides(fx: dict, splits: tuple[str, ...], num_classes: int) -> list[str]:
    return [
        "--data.image_root", fx["image_root"], "--data.num_classes", str(num_classes),
        "--data.split_files", json.dumps({s: fx[s] for s in splits}), "--data.image_size", "16",
    ]


@pytest.mark.slow
def test_imagenet_lt_recipe_trains(tmp_path):
    fx = imagenet_lt_fixture(str(tmp_path))
    overrides = _split_file_overrides(fx, ("train", "validation", "test"), 4)
    _check(run(load_recipe(RECIPES / "imagenet_lt.yaml", _tiny(tmp_path, *overrides))), tmp_path)


@pytest.mark.slow
def test_places_lt_recipe_trains(tmp_path):
    fx = places_lt_fixture(str(tmp_path))
    overrides = _split_file_overrides(fx, ("train", "validation", "test"), 3)
    _check(run(load_recipe(RECIPES / "places_lt.yaml", _tiny(tmp_path, *overrides))), tmp_path)


@pytest.mark.slow
def test_inat2018_recipe_trains(tmp_path):
    fx = inat_fixture(str(tmp_path))
    overrides = _split_file_overrides(fx, ("train", "test"), 3)
    _check(run(load_recipe(RECIPES / "inat2018.yaml", _tiny(tmp_path, *overrides))), tmp_path)
