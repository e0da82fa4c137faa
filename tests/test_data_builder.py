"""build_datasets on a synthetic 50,000-row CIFAR-shaped dataset in the Hub schemas (disk, parquet, hub)."""

from __future__ import annotations

import time

import datasets
import numpy as np
import pytest

from plot_hf.data import DataConfig, build_datasets, class_counts
from plot_hf.data.stats import ClassStats

from .test_data_fixtures import (
    CIFAR10_IF100,
    cifar_on_disk,
    cifar_parquet,
    cifar_small,
    image_tree,
    ldam_reference,
)


def disk_cfg(classes: int = 10, **kw) -> DataConfig:
    """A config over the 50,000-row fixture with ``classes`` classes (10: cifar10, 100: cifar100 schema)."""
    return DataConfig(source="disk", path=cifar_on_disk(classes), **kw)


@pytest.mark.parametrize(
    ("num_classes", "imb", "profile", "total"),
    [
        (10, 100, "exponential", 12_406),
        (10, 50, "exponential", 13_996),
        (10, 100, "step", 25_250),
        (100, 100, "exponential", 10_847),
        (100, 50, "exponential", 12_608),
        (100, 100, "step", 25_250),
    ],
)
def test_counts_from_disk(num_classes, imb, profile, total):
    data = build_datasets(disk_cfg(num_classes, imbalance_factor=imb, imbalance_profile=profile))
    assert len(data.train) == total == data.stats.total
    assert np.bincount(data.train["labels"], minlength=num_classes).tolist() == list(data.stats.counts)
    assert len(data.test) == 10 * num_classes
    assert data.validation is None


def test_schema_and_label_names():
    data = build_datasets(disk_cfg(100))
    for split in (data.train, data.test):
        assert split.column_names == ["image", "labels"]
        assert isinstance(split.features["image"], datasets.Image)
        assert split.features["labels"].names == data.label_names
    assert data.label_names[:2] == ["class_0", "class_1"] and data.num_classes == 100


def test_parquet_same_subset_as_disk():
    a = build_datasets(disk_cfg(10))
    b = build_datasets(DataConfig(source="parquet", data_files=cifar_parquet(10)))
    assert list(b.stats.counts) == CIFAR10_IF100
    assert a.indices == b.indices
    assert a.train["image"][:3] == b.train["image"][:3]


def test_hub_id_uses_its_schema(monkeypatch):
    source = datasets.load_from_disk(cifar_on_disk(100))
    seen = []

    def fake_load_dataset(path, *args, **kwargs):
        seen.append(path)
        return source

    monkeypatch.setattr("plot_hf.data.sources.load_dataset", fake_load_dataset)
    data = build_datasets(DataConfig(source="hub", path="uoft-cs/cifar100"))  # img / fine_label
    assert seen == ["uoft-cs/cifar100"] and len(data.train) == 10_847


def test_reference_selection_picks_ldam_rows_and_images():
    data = build_datasets(disk_cfg(10))
    src = datasets.load_from_disk(cifar_on_disk(10))["train"]
    labels = np.asarray(src["label"])
    expected = ldam_reference(labels, CIFAR10_IF100)
    assert data.indices["train"] == expected.tolist()
    probe = [0, 5000, 12_405]
    assert [data.train[i]["image"].getpixel((0, 0)) for i in probe] == [
        src[int(expected[i])]["img"].getpixel((0, 0)) for i in probe
    ]


@pytest.mark.parametrize("selection", ["reference", "first", "seeded"])
def test_each_selection_deterministic(selection):
    a = build_datasets(disk_cfg(10, selection=selection, seed=3))
    b = build_datasets(disk_cfg(10, selection=selection, seed=3))
    assert a.indices == b.indices and list(a.stats.counts) == CIFAR10_IF100


def test_seeded_selection_ignores_row_order(tmp_path):
    src = datasets.load_from_disk(cifar_on_disk(10))
    perm = np.random.default_rng(0).permutation(len(src["train"]))
    shuffled = datasets.DatasetDict(train=src["train"].select(perm).flatten_indices(), test=src["test"])
    shuffled.save_to_disk(tmp_path / "shuffled")
    a = build_datasets(disk_cfg(10, selection="seeded"))
    b = build_datasets(DataConfig(source="disk", path=str(tmp_path / "shuffled"), selection="seeded"))
    assert sorted(perm[b.indices["train"]].tolist()) == sorted(a.indices["train"])


def test_indices_file_reproduces_subset(tmp_path):
    a = build_datasets(disk_cfg(10, selection="seeded", seed=11, validation_per_class=5))
    a.save_indices(tmp_path / "indices.json")
    b = build_datasets(disk_cfg(10, indices_file=str(tmp_path / "indices.json")))
    assert b.indices == a.indices
    assert a.train["image"][:5] == b.train["image"][:5] and a.train["labels"] == b.train["labels"]
    assert len(b.validation) == len(a.validation) == 50


def test_build_is_fast():
    build_datasets(disk_cfg(10))  # warm the imports and the flatten cache path
    start = time.perf_counter()
    data = build_datasets(disk_cfg(10, seed=1))
    elapsed = time.perf_counter() - start
    assert len(data.train) == 12_406
    # Guards against decoding the images while selecting (minutes for 50,000 of them); not a speed measurement,
    # so the bound leaves room for a loaded machine.
    assert elapsed < 30.0, f"CIFAR-10-LT build took {elapsed:.2f} s: are the images decoded while selecting?"


def test_holdout_validation_never_from_test():
    data = build_datasets(disk_cfg(10, validation_per_class=20))
    assert len(data.validation) == 200
    assert np.bincount(data.validation["labels"]).tolist() == [20] * 10
    assert not set(data.indices["validation"]) & set(data.indices["train"])
    # class 0 used whole by the profile: its 20 validation images come out of its training images
    assert list(data.stats.counts) == [4980, *CIFAR10_IF100[1:]]
    with pytest.raises(ValueError, match="test split"):
        disk_cfg(10, validation_split="test")


def test_shot_groups_cifar100_if100():
    data = build_datasets(disk_cfg(100))
    assert {g: len(c) for g, c in data.stats.groups.items()} == {"many": 35, "medium": 35, "few": 30}
    assert data.stats.prior.sum() == pytest.approx(1.0)
    oltr = ClassStats(data.stats.counts, shot_rule="inclusive")
    assert sum(len(c) for c in oltr.groups.values()) == 100


def test_shot_groups_rules_and_empty_groups():
    stats = ClassStats(class_counts(10, 5000, 100))
    assert list(stats.groups) == ["many", "medium"]  # CIFAR-10-LT IF 100 has no few-shot class
    edge = ClassStats((100, 20, 50))
    assert edge.group_of == ("medium", "medium", "medium")
    assert ClassStats((100, 20, 50), shot_rule="inclusive").group_of == ("many", "few", "medium")
    with pytest.raises(ValueError, match="shot_rule"):
        ClassStats((1,), shot_rule="loose")


def test_imagefolder(tmp_path):
    files = [
        f"{split}/{c}/{k}.png"
        for split in ("train", "test")
        for c in ("cat", "dog", "eel")
        for k in range(30)
    ]
    image_tree(str(tmp_path / "tree"), files, size=4)
    cfg = DataConfig(source="imagefolder", path=str(tmp_path / "tree"), imbalance_factor=10, transform="none")
    data = build_datasets(cfg)
    assert data.label_names == ["cat", "dog", "eel"]
    assert list(data.stats.counts) == class_counts(3, 30, 10) == [30, 9, 3]
    assert len(data.test) == 90


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"label_column": "fine"}, ValueError, r"Unknown column 'fine'.*\['img', 'label'\]"),
        ({"image_column": "picture"}, ValueError, "Unknown column 'picture'"),
        ({"num_classes": 5}, ValueError, "num_classes"),
        ({"imbalance_factor": 0.9}, ValueError, "imbalance_factor"),
        ({"max_per_class": 10, "imbalance_factor": 20}, ValueError, "0 images"),
        ({"test_split": "validation"}, ValueError, r"'validation' is not a split.*\['train', 'test'\]"),
        ({"selection": "random"}, ValueError, "`selection`"),
        ({"indices_file": "/nonexistent/indices.json"}, FileNotFoundError, "indices.json"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_datasets(disk_cfg(10, **kwargs))


def test_label_outside_range(tmp_path):
    ds = datasets.Dataset.from_dict({"img": [None] * 4, "label": [0, 1, 2, 7]})
    ds = ds.cast_column("img", datasets.Image())
    ds.save_to_disk(tmp_path / "bad")
    cfg = DataConfig(source="disk", path=str(tmp_path / "bad"), num_classes=3, test_split=None)
    with pytest.raises(ValueError, match=r"`label`.*outside \[0, 3\).*\[7\]"):
        build_datasets(cfg)


@pytest.mark.parametrize("profile", ["exponential", "none"])
def test_class_left_empty(profile):
    names = [f"c{i}" for i in range(11)]
    cfg = DataConfig(source="disk", path=cifar_small(), label_names=names, imbalance_profile=profile)
    with pytest.raises(ValueError, match=r"Class\(es\) \[10\]"):
        build_datasets(cfg)


def test_unknown_key_and_missing_path():
    with pytest.raises(ValueError, match=r"Unknown key\(s\) in `data`: \['batch_size'\]"):
        DataConfig.from_dict({"source": "disk", "path": "x", "batch_size": 3})
    with pytest.raises(ValueError, match="needs `path`"):
        DataConfig(source="disk")
    with pytest.raises(FileNotFoundError, match="save_to_disk folder"):
        build_datasets(DataConfig(source="disk", path="/nonexistent/cifar"))
