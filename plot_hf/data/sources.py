"""Where images come from: Hub ids, ``save_to_disk`` folders, ``imagefolder`` trees and parquet files.

Every source is loaded lazily as a :class:`datasets.DatasetDict` (memory-mapped Arrow, nothing decoded),
then each split is reduced to the project's schema by :func:`to_lt_schema`::

    image   datasets.Image()                      (renamed from the source's image column)
    labels  datasets.ClassLabel(names=label_names) (renamed from the source's label column)

Column names default to the Hub schema of the known ids (:data:`HUB_COLUMNS`), also for a local copy
whose columns match exactly one of those schemas; otherwise the image column is the only ``Image``
column and the label column is ``label``/``labels`` or the only ``ClassLabel``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset, load_from_disk

SourceKind = Literal["hub", "disk", "imagefolder", "parquet", "split_files", "inat", "digits"]
SOURCE_KINDS: tuple[str, ...] = ("hub", "disk", "imagefolder", "parquet", "split_files", "inat", "digits")

#: Hub id -> (image column, label column).
HUB_COLUMNS: dict[str, tuple[str, str]] = {
    "uoft-cs/cifar10": ("img", "label"),
    "uoft-cs/cifar100": ("img", "fine_label"),
    "ILSVRC/imagenet-1k": ("image", "label"),
}


def load_source(
    kind: SourceKind, path: str, data_files: str | Sequence[str] | dict[str, str | list[str]] | None = None
) -> DatasetDict:
    """Open a ``hub``/``disk``/``imagefolder``/``parquet`` source as a DatasetDict (a lone Dataset -> ``train``)."""
    if kind == "hub":
        return _as_dict(load_dataset(path))
    if kind == "disk":
        if not os.path.isdir(path):
            raise FileNotFoundError(f"`path` {path!r} is not a save_to_disk folder.")
        return _as_dict(load_from_disk(path))
    if kind == "imagefolder":
        if not os.path.isdir(path):
            raise FileNotFoundError(f"`path` {path!r} is not a folder (imagefolder source).")
        return _as_dict(load_dataset("imagefolder", data_dir=path))
    if kind == "parquet":
        files = data_files if data_files is not None else path
        for f in _flatten_files(files):
            if not any(c in f for c in "*?[") and not os.path.exists(f):
                raise FileNotFoundError(f"Parquet file {f!r} does not exist.")
        return _as_dict(load_dataset("parquet", data_files=files))
    raise ValueError(f"`source` {kind!r} is not opened by load_source; choose one of {SOURCE_KINDS[:4]}.")


def _flatten_files(files: str | Sequence[str] | dict[str, str | list[str]] | None) -> list[str]:
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for v in files.values() for f in _flatten_files(v)]
    return list(files)


def _as_dict(ds: Dataset | DatasetDict) -> DatasetDict:
    return ds if isinstance(ds, DatasetDict) else DatasetDict(train=ds)


def resolve_columns(
    ds: Dataset, image_column: str | None, label_column: str | None, hub_id: str | None = None
) -> tuple[str, str]:
    """The (image, label) column names of ``ds``: given ones are checked, missing ones inferred."""
    names = list(ds.column_names)
    default = HUB_COLUMNS.get(hub_id or "")
    if default is None:  # a local copy of a known Hub dataset: recognise its schema
        known = {pair for pair in HUB_COLUMNS.values() if set(pair) <= set(names)}
        default = known.pop() if len(known) == 1 else None
    if image_column is None:
        if default:
            image_column = default[0]
        else:
            images = [c for c, f in ds.features.items() if isinstance(f, Image)]
            if len(images) != 1:
                raise ValueError(f"Cannot infer the image column; set `image_column` to one of {names}.")
            image_column = images[0]
    if label_column is None:
        if default:
            label_column = default[1]
        else:
            cands = [c for c in ("label", "labels") if c in names]
            cands = cands or [c for c, f in ds.features.items() if isinstance(f, ClassLabel)]
            if len(cands) != 1:
                raise ValueError(f"Cannot infer the label column; set `label_column` to one of {names}.")
            label_column = cands[0]
    for key, col in (("image_column", image_column), ("label_column", label_column)):
        if col not in names:
            raise ValueError(f"Unknown column {col!r} (`{key}`); the dataset has columns {names}.")
    if image_column == label_column:
        raise ValueError(f"`image_column` and `label_column` are both {image_column!r}.")
    return image_column, label_column


def label_array(ds: Dataset, column: str) -> np.ndarray:
    """The label column as an int64 NumPy array, read from Arrow without touching other columns."""
    col = ds.with_format("arrow").select_columns([column])[column]
    return np.asarray(col.to_numpy(), dtype=np.int64) if len(col) else np.zeros(0, dtype=np.int64)


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if a label lies outside ``[0, num_classes)``."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        values = sorted(set(labels[bad].tolist()))
        raise ValueError(
            f"{where}: {int(bad.sum())} label(s) outside [0, {num_classes}), e.g. {values[:5]}; "
            f"check `num_classes` and `label_column`."
        )


def source_label_names(ds: Dataset, label_column: str) -> list[str] | None:
    """Class names stored in the source's ``ClassLabel`` feature, if it has one."""
    feat = ds.features.get(label_column)
    return list(feat.names) if isinstance(feat, ClassLabel) else None


def to_lt_schema(ds: Dataset, image_column: str, label_column: str, label_names: Sequence[str]) -> Dataset:
    """Keep only the image and label columns, rename them ``image``/``labels`` and set their features.

    Casting is per column (``cast_column``), which leaves the image bytes untouched.
    """
    ds = ds.select_columns([image_column, label_column])
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if label_column != "labels":
        ds = ds.rename_column(label_column, "labels")
    if not isinstance(ds.features["image"], Image):
        ds = ds.cast_column("image", Image())
    target = ClassLabel(names=list(label_names))
    if ds.features["labels"] != target:
        ds = ds.cast_column("labels", target)
    return ds
