"""``python -m plot_hf.data`` (atomic output, indices, counts, push) and every recipe on local fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from plot_hf.data import DataConfig, build_datasets, collate_fn
from plot_hf.data.__main__ import main

from .test_data_fixtures import (
    CIFAR10_IF100,
    cifar_on_disk,
    cifar_small,
    imagenet_lt_fixture,
    inat_fixture,
    places_lt_fixture,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write_recipe(path: Path, data: dict, **other) -> str:
    path.write_text(yaml.safe_dump({"model": {"architecture": "resnet32_cifar"}, **other, "data": data}))
    return str(path)


def test_cli_writes_dataset_indices_counts(tmp_path, capsys):
    recipe = write_recipe(
        tmp_path / "r.yaml", {"source": "disk", "path": cifar_on_disk(10)}, training={"lr": 1}
    )
    out = tmp_path / "out" / "c10lt"
    assert main([recipe, "--output_dir", str(out)]) == 0
    saved = datasets.load_from_disk(str(out))
    assert {k: len(v) for k, v in saved.items()} == {"train": 12_406, "test": 100}
    indices = json.loads((out / "indices.json").read_text())
    assert len(indices["indices"]["train"]) == 12_406 and indices["selection"] == "reference"
    stats = json.loads((out / "class_stats.json").read_text())
    assert stats["counts"] == CIFAR10_IF100 and len(stats["label_names"]) == 10
    assert json.loads((out / "data_config.json").read_text())["source"] == "disk"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["counts"] == CIFAR10_IF100
    assert os.listdir(out.parent) == ["c10lt"]  # no temporary folder left
    # the kept folder is itself a source; its index list reproduces the subset
    again = build_datasets(
        DataConfig(source="disk", path=cifar_on_disk(10), indices_file=str(out / "indices.json"))
    )
    assert again.train["labels"] == saved["train"]["labels"]
    with pytest.raises(SystemExit, match="exists"):
        main([recipe, "--output_dir", str(out)])


def test_cli_is_atomic_on_failure(tmp_path, monkeypatch):
    recipe = write_recipe(
        tmp_path / "r.yaml", {"source": "disk", "path": cifar_small(), "imbalance_factor": 10}
    )
    out = tmp_path / "out" / "small"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("plot_hf.data.builder.LTData.save_indices", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        main([recipe, "--output_dir", str(out)])
    assert os.listdir(out.parent) == []


def test_cli_push_to_hub_uses_parquet_push(tmp_path, monkeypatch):
    pushed, uploaded = [], []
    monkeypatch.setattr(
        datasets.DatasetDict, "push_to_hub", lambda self, repo, **kw: pushed.append((repo, list(self)))
    )
    monkeypatch.setattr(
        "huggingface_hub.HfApi.upload_file", lambda self, **kw: uploaded.append(kw["path_in_repo"])
    )
    recipe = write_recipe(
        tmp_path / "r.yaml", {"source": "disk", "path": cifar_small(), "imbalance_factor": 10}
    )
    main([recipe, "--output_dir", str(tmp_path / "o"), "--push_to_hub", "me/cifar-lt"])
    assert pushed == [("me/cifar-lt", ["train", "test"])]
    assert sorted(uploaded) == ["class_stats.json", "data_config.json", "indices.json"]


def test_cli_unknown_data_key_and_module_entry_point(tmp_path):
    bad = write_recipe(tmp_path / "bad.yaml", {"source": "disk", "path": cifar_small(), "imbalance": 10})
    with pytest.raises(ValueError, match=r"Unknown key\(s\) in `data`: \['imbalance'\]"):
        main([bad, "--output_dir", str(tmp_path / "o")])
    (tmp_path / "nodata.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match="no top-level `data:`"):
        DataConfig.from_yaml(tmp_path / "nodata.yaml")
    good = write_recipe(
        tmp_path / "g.yaml", {"source": "disk", "path": cifar_small(), "imbalance_factor": 10}
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "plot_hf.data", good, "--output_dir", str(tmp_path / "kept")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "kept" / "dataset_dict.json").exists()


def recipe_data(name: str) -> dict:
    with open(RECIPES / name) as f:
        return yaml.safe_load(f)["data"]


def few_steps(data, image_size: int | None = None, steps: int = 2) -> None:
    """Transforms + collate + a few SGD steps of a tiny classifier: the recipe's data trains."""
    if image_size is not None:
        data.config.image_size = image_size
    loader = DataLoader(data.with_transforms().train, batch_size=4, shuffle=True, collate_fn=collate_fn)
    model = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, data.num_classes)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for _, batch in zip(range(steps), loader, strict=False):
        loss = torch.nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("name", "classes", "total"), [("cifar10_lt.yaml", 10, 12_406), ("cifar100_lt.yaml", 100, 10_847)]
)
def test_cifar_recipes(name, classes, total, monkeypatch):
    source = datasets.load_from_disk(cifar_on_disk(classes))
    monkeypatch.setattr("plot_hf.data.sources.load_dataset", lambda path, *a, **k: source)
    cfg = DataConfig.from_dict(recipe_data(name))
    assert cfg.path == f"uoft-cs/cifar{classes}"
    data = build_datasets(cfg)
    assert len(data.train) == total
    few_steps(data, image_size=8)  # the fixture's images are 1x1 (padded to 9x9 before the crop)


def test_imagenet_lt_recipe(tmp_path):
    fx = imagenet_lt_fixture(str(tmp_path))
    values = recipe_data("imagenet_lt.yaml")
    assert values["num_classes"] == 1000
    values |= {
        "image_root": fx["image_root"],
        "split_files": {s: fx[s] for s in ("train", "validation", "test")},
    }
    values["num_classes"] = 4  # the fixture's classes
    data = build_datasets(DataConfig.from_dict(values))
    assert (len(data.train), len(data.validation), len(data.test)) == (23, 4, 12)
    few_steps(data)


def test_places_lt_recipe(tmp_path):
    fx = places_lt_fixture(str(tmp_path))
    values = recipe_data("places_lt.yaml")
    assert values["num_classes"] == 365
    values |= {
        "image_root": fx["image_root"],
        "split_files": {s: fx[s] for s in ("train", "validation", "test")},
    }
    with pytest.raises(ValueError, match=r"Class\(es\) \[3, 4, 5"):  # 362 classes have no image here
        build_datasets(DataConfig.from_dict(values))
    values["num_classes"] = 3
    data = build_datasets(DataConfig.from_dict(values))
    assert list(data.stats.counts) == [8, 4, 2] and len(data.test) == 3
    few_steps(data)


def test_inat_recipe(tmp_path):
    fx = inat_fixture(str(tmp_path))
    values = recipe_data("inat2018.yaml")
    assert values["num_classes"] == 8142
    values |= {
        "image_root": fx["image_root"],
        "split_files": {"train": fx["train"], "test": fx["test"]},
        "num_classes": 3,
    }
    data = build_datasets(DataConfig.from_dict(values))
    assert list(data.stats.counts) == [5, 2, 1] and len(data.validation) == 3
    few_steps(data)
