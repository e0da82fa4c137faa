"""Where images come from: the registry of data sources (``data.source`` of a recipe) and the source schema.

Every source is registered in :data:`SOURCES` as an *opener*: a function of the recipe's ``data:`` section
(a :class:`~plot_hf.data.builder.DataConfig`) that returns an :class:`OpenedSource`, the splits as a lazy
:class:`datasets.DatasetDict` (memory-mapped Arrow, nothing decoded) with the names of their image and label
columns and the class names when the source knows them. ``DataConfig`` accepts exactly the registered names,
so a source added with ``SOURCES.add(name, opener)`` is usable from a recipe. Registered here:

==============  ==========================================================================================
``hub``          a Hub id (``datasets.load_dataset(path)``)
``disk``         a ``save_to_disk`` folder
``imagefolder``  a ``class/image`` folder tree
``parquet``      parquet files (``data_files``, or ``path``)
``split_files``  OLTR ``path label`` files over a local image root or a dataset (:mod:`.split_files`)
``inat``         iNaturalist COCO-style JSON (:mod:`.inat`)
``digits``       scikit-learn's digits, embedded (:mod:`.digits`; no ``path``)
==============  ==========================================================================================

The builder then reduces each split to the project's schema with :func:`to_lt_schema`::

    image   datasets.Image()                      (renamed from the source's image column)
    labels  datasets.ClassLabel(names=label_names) (renamed from the source's label column)

Column names default to the Hub schema of the known ids (:data:`HUB_COLUMNS`), also for a local copy
whose columns match exactly one of those schemas; otherwise the image column is the only ``Image``
column and the label column is ``label``/``labels`` or the only ``ClassLabel``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset, load_from_disk

from ..registry import Registry
from .digits import DIGIT_NAMES, digits_source
from .inat import category_mapping, inat_split, read_coco_json
from .split_files import index_image_root, split_from_dataset, split_from_image_root

DataFiles = str | Sequence[str] | dict[str, str | list[str]] | None

#: Hub id -> (image column, label column).
HUB_COLUMNS: dict[str, tuple[str, str]] = {
    "uoft-cs/cifar10": ("img", "label"),
    "uoft-cs/cifar100": ("img", "fine_label"),
    "ILSVRC/imagenet-1k": ("image", "label"),
}


@dataclass(frozen=True)
class OpenedSource:
    """What an opener returns: the splits, their image and label columns, the class names if known."""

    splits: DatasetDict
    image_column: str
    label_column: str
    label_names: list[str] | None


SourceOpener = Callable[[Any], OpenedSource]
"""``opener(data_config) -> OpenedSource``; the config is a :class:`~plot_hf.data.builder.DataConfig`."""

SOURCES: Registry[SourceOpener] = Registry("data source")
"""Every data source by name (``data.source``); see the module docstring."""


# ------------------------------------------------------------------------------- the four tabular loaders
def load_hub(path: str, data_files: DataFiles = None) -> DatasetDict:
    """A Hub id, or a local dataset script / data folder that ``load_dataset`` understands."""
    return _as_dict(load_dataset(path))


def load_disk(path: str, data_files: DataFiles = None) -> DatasetDict:
    """A ``save_to_disk`` folder."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`path` {path!r} is not a save_to_disk folder.")
    return _as_dict(load_from_disk(path))


def load_imagefolder(path: str, data_files: DataFiles = None) -> DatasetDict:
    """A ``class/image`` folder tree (``load_dataset("imagefolder")``)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`path` {path!r} is not a folder (imagefolder source).")
    return _as_dict(load_dataset("imagefolder", data_dir=path))


def load_parquet(path: str, data_files: DataFiles = None) -> DatasetDict:
    """Parquet files: ``data_files`` (a file, a list, or split -> files; globs allowed), else ``path``."""
    files = data_files if data_files is not None else path
    for f in _flatten_files(files):
        if not any(c in f for c in "*?[") and not os.path.exists(f):
            raise FileNotFoundError(f"Parquet file {f!r} does not exist.")
    return _as_dict(load_dataset("parquet", data_files=files))


TABULAR_LOADERS: dict[str, Callable[[str, DataFiles], DatasetDict]] = {  # each a lone Dataset -> ``train``
    "hub": load_hub, "disk": load_disk, "imagefolder": load_imagefolder, "parquet": load_parquet,
}


def _flatten_files(files: DataFiles) -> list[str]:
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for v in files.values() for f in _flatten_files(v)]
    return list(files)


def _as_dict(ds: Dataset | DatasetDict) -> DatasetDict:
    return ds if isinstance(ds, DatasetDict) else DatasetDict(train=ds)


# ------------------------------------------------------------------------------------------- the openers
def need_splits(cfg: Any, have: list[str]) -> None:
    """Raise ``ValueError`` naming the key if a split the config asks for is not among ``have``."""
    for key in ("train_split", "validation_split", "test_split"):
        name = getattr(cfg, key)
        if name is not None and name not in have:
            raise ValueError(f"`{key}` {name!r} is not a split of the source; it has {have}.")


def _open_tabular(kind: str) -> SourceOpener:
    def opener(cfg: Any) -> OpenedSource:
        dd = TABULAR_LOADERS[kind](cfg.path or "", cfg.data_files)
        need_splits(cfg, list(dd))
        img, lab = resolve_columns(dd[cfg.train_split], cfg.image_column, cfg.label_column, cfg.path)
        for name in (cfg.validation_split, cfg.test_split):
            if name:
                resolve_columns(dd[name], img, lab)
        return OpenedSource(dd, img, lab, source_label_names(dd[cfg.train_split], lab))

    opener.__qualname__ = f"open_{kind}"
    return opener


for _kind in TABULAR_LOADERS:
    SOURCES.add(_kind, _open_tabular(_kind))
del _kind


@SOURCES.register("digits")
def open_digits(cfg: Any) -> OpenedSource:
    """scikit-learn's digits, embedded (train/test splits drawn with ``cfg.seed``)."""
    dd = digits_source(seed=cfg.seed)
    need_splits(cfg, list(dd))
    return OpenedSource(dd, "image", "labels", list(DIGIT_NAMES))


def _wanted_splits(cfg: Any) -> list[str]:
    need_splits(cfg, list(cfg.split_files or {}))
    return [s for s in (cfg.train_split, cfg.validation_split, cfg.test_split) if s]


@SOURCES.register("inat")
def open_inat(cfg: Any) -> OpenedSource:
    """iNaturalist COCO-style JSON per split (``split_files``) over ``image_root``."""
    wanted = _wanted_splits(cfg)
    mapping, names = category_mapping(read_coco_json(cfg.split_files[cfg.train_split]))
    names = cfg.label_names or names
    if len(names) != len(mapping):
        raise ValueError(f"`label_names` has {len(names)} names but the JSON has {len(mapping)} categories.")
    dd = DatasetDict({s: inat_split(cfg.split_files[s], cfg.image_root, mapping, names) for s in wanted})
    return OpenedSource(dd, "image", "labels", names)


@SOURCES.register("split_files")
def open_split_files(cfg: Any) -> OpenedSource:
    """OLTR ``path label`` files per split (``split_files``), over ``image_root`` or the dataset at ``path``."""
    wanted = _wanted_splits(cfg)
    names = cfg.label_names or ([str(i) for i in range(cfg.num_classes)] if cfg.num_classes else None)
    missing = ValueError("`source: split_files` needs `num_classes` or `label_names`.")
    if cfg.image_root:
        if names is None:
            raise missing
        index = index_image_root(cfg.image_root)
        dd = DatasetDict({s: split_from_image_root(cfg.split_files[s], cfg.image_root, names, index) for s in wanted})
        return OpenedSource(dd, "image", "labels", names)
    base = (load_disk if os.path.isdir(cfg.path) else load_hub)(cfg.path)
    first = next(iter(base.values()))
    img, lab = resolve_columns(first, cfg.image_column, cfg.label_column, cfg.path)
    src_names = source_label_names(first, lab)
    if cfg.label_names is None and src_names and cfg.num_classes in (None, len(src_names)):
        names = src_names
    if names is None:
        raise missing
    dd = DatasetDict({s: split_from_dataset(cfg.split_files[s], base, img, names) for s in wanted})
    return OpenedSource(dd, "image", "labels", names)


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
