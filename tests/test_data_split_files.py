"""OLTR split files (ImageNet-LT, Places-LT) and iNaturalist JSON over tiny local fixtures."""

from __future__ import annotations

import json
import os

import datasets
import pytest

from plot_hf.data import DataConfig, build_datasets
from plot_hf.data.split_files import read_split_file

from .test_data_fixtures import imagenet_lt_fixture, inat_fixture, places_lt_fixture, write_lines


def split_cfg(fx: dict[str, str], num_classes: int, **kw) -> DataConfig:
    values = {
        "source": "split_files",
        "image_root": fx["image_root"],
        "split_files": {s: fx[s] for s in ("train", "validation", "test")},
        "validation_split": "validation",
        "num_classes": num_classes,
        "imbalance_profile": "none",
        "transform": "imagenet",
    }
    return DataConfig(**(values | kw))


def read(path: str) -> str:
    with open(path, "rb" if not path.endswith((".txt", ".json")) else "r") as f:
        return f.read()


def test_imagenet_lt_mixed_prefixes(tmp_path):
    fx = imagenet_lt_fixture(str(tmp_path))
    data = build_datasets(split_cfg(fx, 4))
    assert list(data.stats.counts) == [12, 6, 3, 2]
    assert (len(data.validation), len(data.test)) == (4, 12)
    assert data.indices == {}
    # the validation line carried a foreign prefix: matched on basename to the local copy
    assert data.validation[0]["image"].size == (8, 8)
    paths = data.validation.cast_column("image", datasets.Image(decode=False))["image"]
    assert paths[0]["path"].endswith("train/n01440764/n01440764_13.JPEG")
    assert data.train.features["labels"].names == ["0", "1", "2", "3"]


def test_places_lt_repeated_basenames(tmp_path):
    fx = places_lt_fixture(str(tmp_path))
    data = build_datasets(split_cfg(fx, 3, label_names=["abbey", "airfield", "bakery"]))
    assert list(data.stats.counts) == [8, 4, 2]
    test = data.test.cast_column("image", datasets.Image(decode=False))
    assert [r["path"].split("data_256/")[1] for r in test["image"]] == [
        "a/abbey/00000010.jpg",
        "a/airfield/00000010.jpg",
        "b/bakery/00000010.jpg",
    ]


def test_split_files_against_imagenet_dataset(tmp_path):
    fx = imagenet_lt_fixture(str(tmp_path))
    root = fx["image_root"]
    imagenet = {}
    for split, folder in (("train", "train"), ("validation", "val")):
        rel = sorted(
            os.path.relpath(os.path.join(d, f), root)
            for d, _, fs in os.walk(os.path.join(root, folder))
            for f in fs
        )
        rows = [{"bytes": read(os.path.join(root, r)), "path": os.path.basename(r)} for r in rel]
        feats = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abcd"))}
        )
        imagenet[split] = datasets.Dataset.from_dict(
            {"image": rows, "label": [0] * len(rows)}, features=feats
        )
    datasets.DatasetDict(imagenet).save_to_disk(tmp_path / "imagenet_1k")
    cfg = split_cfg(fx, 4, image_root=None, path=str(tmp_path / "imagenet_1k"))
    data = build_datasets(cfg)
    assert list(data.stats.counts) == [12, 6, 3, 2]
    assert data.label_names == list("abcd")
    assert len(data.test) == 12 and data.test.column_names == ["image", "labels"]
    assert data.test["labels"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_split_file_errors(tmp_path):
    fx = imagenet_lt_fixture(str(tmp_path))
    lines = read(fx["train"]).split("\n")[:3]
    missing = write_lines(str(tmp_path / "missing.txt"), [*lines, "train/n0/n0_404.JPEG 0", "x/gone.JPEG 1"])
    with pytest.raises(FileNotFoundError, match=r"2 of 5 image\(s\).*missing.txt.*n0_404.JPEG"):
        build_datasets(split_cfg({**fx, "train": missing}, 4))
    dup = write_lines(str(tmp_path / "dup.txt"), [*lines, "other/prefix/" + lines[0]])
    with pytest.raises(ValueError, match=r"1 duplicate image\(s\) in .*dup.txt"):
        build_datasets(split_cfg({**fx, "train": dup}, 4))
    empty = write_lines(str(tmp_path / "empty.txt"), [])
    with pytest.raises(ValueError, match="empty"):
        build_datasets(split_cfg({**fx, "test": empty}, 4))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        build_datasets(split_cfg(fx, 2))
    bad = write_lines(str(tmp_path / "bad.txt"), ["just_a_path.JPEG"])
    with pytest.raises(ValueError, match=r"bad.txt:1: expected"):
        read_split_file(bad)
    with pytest.raises(ValueError, match="split_files"):
        DataConfig(source="split_files", image_root=fx["image_root"])


def inat_cfg(fx: dict[str, str], **kw) -> DataConfig:
    return DataConfig(
        source="inat",
        image_root=fx["image_root"],
        split_files={"train": fx["train"], "test": fx["test"]},
        imbalance_profile="none",
        transform="imagenet",
        **kw,
    )


def test_inat_json(tmp_path):
    fx = inat_fixture(str(tmp_path))
    data = build_datasets(inat_cfg(fx, validation_per_class=1))
    assert data.label_names == ["species_0", "species_1", "species_2"]
    # one image per class held out of train (none is left over by the profile): 6, 3, 2 -> 5, 2, 1
    assert list(data.stats.counts) == [5, 2, 1]
    assert len(data.validation) == 3 and len(data.test) == 3
    assert data.test[0]["image"].size == (8, 8)


def test_inat_errors(tmp_path):
    fx = inat_fixture(str(tmp_path))
    payload = json.loads(read(fx["train"]))
    payload["annotations"].append({"id": 999, "image_id": 4242, "category_id": 0})
    bad = tmp_path / "bad_ids.json"
    bad.write_text(json.dumps(payload))
    with pytest.raises(
        ValueError, match=r"1 annotation\(s\) in .*bad_ids.json.* point at unknown image ids.*4242"
    ):
        build_datasets(inat_cfg({**fx, "train": str(bad)}))
    payload = json.loads(read(fx["train"]))
    payload["images"][0]["file_name"] = "train_val2018/none.jpg"
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps(payload))
    with pytest.raises(FileNotFoundError, match=r"1 of 11 image\(s\).*none.jpg"):
        build_datasets(inat_cfg({**fx, "train": str(gone)}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_datasets(inat_cfg({**fx, "test": str(tmp_path / "val2018.missing.json")}))
