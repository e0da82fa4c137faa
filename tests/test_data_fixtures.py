"""Synthetic data in the Hub schemas, shared by the tests/test_data_*.py files (this module has no tests).

Everything is made here, offline: a CIFAR-shaped 50,000-row train split (unique 1x1 PNG per row) in the
``uoft-cs/cifar10`` / ``uoft-cs/cifar100`` schema, saved with ``save_to_disk`` and as parquet; tiny image
trees for imagefolder, OLTR split files and iNaturalist JSON.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="plot_hf_hf_home_"))

import numpy as np  # noqa: E402
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

_ROOT = tempfile.mkdtemp(prefix="plot_hf_data_tests_")
CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def png_bytes(i: int, size: int = 1) -> bytes:
    """A distinct ``size`` x ``size`` RGB PNG for every ``i < 2**24``."""
    buf = io.BytesIO()
    PILImage.new("RGB", (size, size), (i & 255, (i >> 8) & 255, (i >> 16) & 255)).save(buf, format="PNG")
    return buf.getvalue()


def cifar_labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """Balanced labels in a seeded shuffled order (like the original CIFAR files)."""
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def cifar_dict(
    num_classes: int = 10, per_class: int = 5000, test_per_class: int = 10, image_size: int = 1
) -> DatasetDict:
    """``uoft-cs/cifar10`` schema (``img``, ``label``) or, with 100 classes, ``uoft-cs/cifar100``
    (``img``, ``fine_label``, ``coarse_label``)."""
    label_col = "label" if num_classes == 10 else "fine_label"
    names = [f"class_{i}" for i in range(num_classes)]
    feats = {"img": Image(), label_col: ClassLabel(names=names)}
    if num_classes == 100:
        feats["coarse_label"] = ClassLabel(names=[f"super_{i}" for i in range(20)])
    out = {}
    for split, n, offset in (("train", per_class, 0), ("test", test_per_class, 10**6)):
        labels = cifar_labels(num_classes, n, seed=offset)
        cols = {
            "img": [{"bytes": png_bytes(offset + i, image_size), "path": None} for i in range(len(labels))],
            label_col: labels.tolist(),
        }
        if num_classes == 100:
            cols["coarse_label"] = (labels // 5).tolist()
        out[split] = Dataset.from_dict(cols, features=Features(feats))
    return DatasetDict(out)


@functools.cache
def cifar_on_disk(num_classes: int = 10) -> str:
    """Folder written by ``save_to_disk`` (50,000 train rows, 10 test rows per class)."""
    path = os.path.join(_ROOT, f"cifar{num_classes}_disk")
    cifar_dict(num_classes, 50_000 // num_classes).save_to_disk(path)
    return path


@functools.cache
def cifar_parquet(num_classes: int = 10) -> dict[str, str]:
    """``{split: file}`` parquet files of the same data."""
    dd = DatasetDict.load_from_disk(cifar_on_disk(num_classes))
    files = {}
    for split, ds in dd.items():
        files[split] = os.path.join(_ROOT, f"cifar{num_classes}_{split}.parquet")
        ds.to_parquet(files[split])
    return files


@functools.cache
def cifar_small(num_classes: int = 10, per_class: int = 60, image_size: int = 32) -> str:
    """A small CIFAR-10-schema ``save_to_disk`` folder with real 32x32 images (for transforms/training)."""
    path = os.path.join(_ROOT, f"cifar_small_{num_classes}_{per_class}_{image_size}")
    cifar_dict(num_classes, per_class, test_per_class=4, image_size=image_size).save_to_disk(path)
    return path


def write_image(path: str, i: int, size: int = 8) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png_bytes(i, size))


def image_tree(root: str, files: list[str], size: int = 8) -> None:
    """Write a distinct tiny PNG at each relative path under ``root``."""
    for i, rel in enumerate(files):
        write_image(os.path.join(root, rel), i, size)


def write_lines(path: str, lines: list[str]) -> str:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def imagenet_lt_fixture(tmp: str, num_classes: int = 4, size: int = 8) -> dict[str, str]:
    """ImageNet-LT-shaped files: a local ``train/<wnid>/<wnid>_<k>.JPEG`` + ``val/ILSVRC2012_val_<k>.JPEG``
    tree, and split files whose prefixes differ from the tree (basename matching)."""
    root = os.path.join(tmp, "imagenet")
    wnids = [f"n0{1440764 + c}" for c in range(num_classes)]
    counts = [12, 6, 3, 2][:num_classes]
    train_files = [
        f"train/{w}/{w}_{k}.JPEG" for w, n in zip(wnids, counts, strict=True) for k in range(n + 2)
    ]
    val_files = [f"val/ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 3 * num_classes + 1)]
    image_tree(root, train_files + val_files, size)
    train, val, test = [], [], []
    for c, (w, n) in enumerate(zip(wnids, counts, strict=True)):
        train += [f"train/{w}/{w}_{k}.JPEG {c}" for k in range(n)]
        val += [f"/datasets/ILSVRC/train/{w}/{w}_{n + 1}.JPEG {c}"]  # another copy's prefix
        test += [f"val/ILSVRC2012_val_{3 * c + k + 1:08d}.JPEG {c}" for k in range(3)]
    return {
        "image_root": root,
        "train": write_lines(os.path.join(tmp, "ImageNet_LT_train.txt"), train),
        "validation": write_lines(os.path.join(tmp, "ImageNet_LT_val.txt"), val),
        "test": write_lines(os.path.join(tmp, "ImageNet_LT_test.txt"), test),
    }


def places_lt_fixture(tmp: str, size: int = 8) -> dict[str, str]:
    """Places-LT-shaped: basenames repeat across class folders (``a/abbey/00000001.jpg``)."""
    root = os.path.join(tmp, "places365", "data_256")
    classes = ["a/abbey", "a/airfield", "b/bakery"]
    counts = [8, 4, 2]
    files = [f"{c}/{k:08d}.jpg" for c in classes for k in range(1, 11)]
    image_tree(root, files, size)
    train = [
        f"/{c}/{k:08d}.jpg {i}"
        for i, (c, n) in enumerate(zip(classes, counts, strict=True))
        for k in range(1, n + 1)
    ]
    val = [f"data_256/{c}/{9:08d}.jpg {i}" for i, c in enumerate(classes)]
    test = [f"{c}/{10:08d}.jpg {i}" for i, c in enumerate(classes)]
    return {
        "image_root": os.path.join(tmp, "places365"),
        "train": write_lines(os.path.join(tmp, "Places_LT_train.txt"), train),
        "validation": write_lines(os.path.join(tmp, "Places_LT_val.txt"), val),
        "test": write_lines(os.path.join(tmp, "Places_LT_test.txt"), test),
    }


def inat_fixture(tmp: str, size: int = 8) -> dict[str, str]:
    """iNat-2018-shaped JSON (``train2018.json``, ``val2018.json``) over ``train_val2018/...`` images."""
    root = os.path.join(tmp, "inat")
    cats = [{"id": i, "name": f"species_{i}", "supercategory": "Plantae"} for i in range(3)]
    counts = {"train": [6, 3, 2], "val": [1, 1, 1]}
    paths = {}
    for split, cs in counts.items():
        images, anns = [], []
        for c, n in enumerate(cs):
            for k in range(n):
                image_id = len(images) + (0 if split == "train" else 1000)
                fname = f"train_val2018/Plantae/{c}/{split}_{k}.jpg"
                images.append({"id": image_id, "file_name": fname, "width": size, "height": size})
                anns.append({"id": image_id, "image_id": image_id, "category_id": c})
                write_image(os.path.join(root, fname), image_id, size)
        paths[split] = os.path.join(tmp, f"{split}2018.json")
        with open(paths[split], "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return {"image_root": root, "train": paths["train"], "test": paths["val"]}


def ldam_reference(targets: np.ndarray, img_num_per_cls: list[int], seed: int = 0) -> np.ndarray:
    """Independent re-implementation of LDAM-DRW's IMBALANCECIFAR10.gen_imbalanced_data (global RNG seeded with
    ``seed``: 0 in LDAM-DRW's code, 50 in zzpustc/PLOT's train_cifar.py)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        targets_np = np.array(targets, dtype=np.int64)
        classes = np.unique(targets_np)
        kept = []
        for the_class, the_img_num in zip(classes, img_num_per_cls, strict=True):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            kept.append(idx[:the_img_num])
        return np.concatenate(kept)
    finally:
        np.random.set_state(state)
