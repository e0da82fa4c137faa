"""``DataConfig`` and ``build_datasets``: one entry point from a recipe's ``data:`` section to LT splits.

The build, in order (everything before step 5 reads only labels and file names):

1. open the source lazily (:mod:`.sources`, :mod:`.split_files`, :mod:`.inat`) and check the columns and
   splits named in the config;
2. read the train split's label column as an array and check every label lies in ``[0, num_classes)``;
3. per-class counts from the imbalance profile (:mod:`.profiles`; ``"none"`` keeps the split whole), then
   the rows from the selection rule (:mod:`.selection`), or the rows of a saved ``indices_file``;
4. the validation split: the source's own (``validation_split``), or ``validation_per_class`` images per
   class held out of the TRAIN split: first from the rows the profile left out (a seeded draw, so the LT
   training subset is exactly the reference one), and, for a class with too few of those, up to half of
   its selected rows. It is never taken from the test split;
5. ``select`` the rows and ``flatten_indices()`` once; reduce every split to ``image``/``labels``;
6. class statistics (:class:`.stats.ClassStats`) from the final training labels; a class left with no
   training image is an error.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import yaml
from datasets import Dataset, DatasetDict

from .profiles import class_counts
from .selection import SELECTIONS, SelectionName, load_indices, row_keys, save_indices, select_indices
from .sources import (
    SOURCES,
    check_labels,
    label_array,
    to_lt_schema,
)
from .stats import SHOT_RULES, ClassStats, ShotRule
from .transforms import TRANSFORM_KINDS, TransformKind, build_transforms, with_transforms

ImbalanceProfile = Literal["exponential", "step", "none"]
IMBALANCE_PROFILES: tuple[str, ...] = ("exponential", "step", "none")


@dataclass
class DataConfig:
    """The ``data:`` section of a recipe.

    > Where the images come from

    source (`str`, defaults to `"hub"`): one of `hub`, `disk` (a `save_to_disk` folder), `imagefolder`,
        `parquet`, `split_files` (OLTR `path label` files), `inat` (COCO-style JSON), `digits` (scikit-learn's
        digits, embedded: the default demo; no `path`).
    path (`str`, *optional*): Hub id or local folder. For `split_files` without `image_root`: the dataset
        (Hub id, or `save_to_disk` folder) whose image file names the split files are matched against.
    data_files (`dict[str, str | list[str]]`, *optional*): split -> parquet file(s) for `parquet`.
    split_files (`dict[str, str]`, *optional*): split -> OLTR `.txt` file (`split_files`) or JSON (`inat`).
    image_root (`str`, *optional*): folder holding the images of `split_files` / `inat`.
    image_column, label_column (`str`, *optional*): source columns; default to the Hub schema of known ids,
        else inferred. Renamed to `image` and `labels`.
    num_classes (`int`, *optional*): defaults to the source's `ClassLabel` size (required for split files
        unless `label_names` is given).
    label_names (`list[str]`, *optional*): overrides the source's class names.

    > Splits

    train_split, test_split (`str`, defaults to `"train"`, `"test"`; `test_split` may be null).
    validation_split (`str`, *optional*): the source's validation split, if it has one.
    validation_per_class (`int`, defaults to 0): images per class held out of the train split as
        validation when `validation_split` is not set (see the module docstring).

    > The long tail

    imbalance_profile (`str`, defaults to `"exponential"`): `exponential`, `step`, or `none` (keep the
        train split as it is, e.g. ImageNet-LT).
    imbalance_factor (`float`, defaults to 100): n_max / n_min, >= 1.
    max_per_class (`int`, *optional*): head count n_max; defaults to the smallest class of the source.
    selection (`str`, defaults to `"reference"`): `reference` (LDAM-DRW), `plot` (PLOT's draw, seed 50), `first`, `seeded`.
    seed (`int`, defaults to 0): seed of the selection and of the held-out validation draw.
    indices_file (`str`, *optional*): a saved `indices.json`; its rows replace the selection.
    flatten_indices (`bool`, defaults to True): copy the chosen rows into a contiguous table once.

    > Statistics and transforms

    many_shot_threshold, few_shot_threshold (`int`, defaults to 100, 20), shot_rule (`str`, defaults to
        `"strict"`: many > 100, few < 20; `"inclusive"` is OLTR's >= / <=).
    transform (`str`, defaults to `"cifar"`): `cifar`, `imagenet` or `none`.
    image_size (`int`, *optional*): 32 for `cifar`, 224 for `imagenet`.
    """

    source: str = "hub"
    path: str | None = None
    data_files: dict[str, Any] | None = None
    split_files: dict[str, str] | None = None
    image_root: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    num_classes: int | None = None
    label_names: list[str] | None = None
    train_split: str = "train"
    validation_split: str | None = None
    test_split: str | None = "test"
    validation_per_class: int = 0
    imbalance_profile: ImbalanceProfile = "exponential"
    imbalance_factor: float = 100.0
    max_per_class: int | None = None
    selection: SelectionName = "reference"
    seed: int = 0
    indices_file: str | None = None
    flatten_indices: bool = True
    many_shot_threshold: int = 100
    few_shot_threshold: int = 20
    shot_rule: ShotRule = "strict"
    transform: TransformKind = "cifar"
    image_size: int | None = None

    def __post_init__(self) -> None:
        for key, allowed in (
            ("source", SOURCES.names()),
            ("imbalance_profile", IMBALANCE_PROFILES),
            ("selection", SELECTIONS),
            ("shot_rule", SHOT_RULES),
            ("transform", TRANSFORM_KINDS),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"`{key}` is {getattr(self, key)!r}; choose one of {allowed}.")
        if not self.imbalance_factor >= 1:
            raise ValueError(
                f"`imbalance_factor` must be >= 1 (1 means balanced), got {self.imbalance_factor}."
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {self.num_classes}.")
        if (
            self.label_names is not None
            and self.num_classes is not None
            and len(self.label_names) != self.num_classes
        ):
            raise ValueError(
                f"`label_names` has {len(self.label_names)} names but `num_classes` is {self.num_classes}."
            )
        if self.validation_per_class < 0:
            raise ValueError(f"`validation_per_class` must be >= 0, got {self.validation_per_class}.")
        if self.validation_split is not None and self.validation_per_class:
            raise ValueError("Set either `validation_split` or `validation_per_class`, not both.")
        if self.validation_split is not None and self.validation_split == self.test_split:
            raise ValueError(
                f"`validation_split` is the test split {self.test_split!r}; select on a validation split."
            )
        if self.source in ("split_files", "inat"):
            if not self.split_files:
                raise ValueError(f"`source: {self.source}` needs `split_files` (split -> file).")
            if self.source == "inat" and not self.image_root:
                raise ValueError("`source: inat` needs `image_root`.")
            if self.source == "split_files" and not (self.image_root or self.path):
                raise ValueError(
                    "`source: split_files` needs `image_root` (local images) or `path` (a dataset)."
                )
        elif self.source == "parquet":
            if not (self.path or self.data_files):
                raise ValueError("`source: parquet` needs `data_files` or `path`.")
        elif not self.path and self.source != "digits":
            raise ValueError(f"`source: {self.source}` needs `path`.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        """Build from a mapping; an unknown key is a ``ValueError`` naming it."""
        if not isinstance(values, dict):
            raise ValueError(f"The `data` section must be a mapping, got {type(values).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown key(s) in `data`: {unknown}; valid keys are {sorted(known)}.")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> DataConfig:
        """Read only the top-level ``data:`` section of a recipe (other sections are ignored)."""
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
        if not isinstance(recipe, dict) or "data" not in recipe:
            raise ValueError(f"Recipe {str(path)!r} has no top-level `data:` section.")
        return cls.from_dict(recipe["data"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LTData:
    """What :func:`build_datasets` returns.

    ``train``/``validation``/``test`` have the columns ``image`` (`Image`) and ``labels`` (`ClassLabel`);
    ``validation``/``test`` may be None. ``indices`` maps ``"train"`` (and ``"validation"`` when held out)
    to rows of the source train split (empty when the source already is the LT set, e.g. split files).
    """

    train: Dataset
    validation: Dataset | None
    test: Dataset | None
    stats: ClassStats
    label_names: list[str]
    indices: dict[str, list[int]]
    config: DataConfig
    source_rows: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.label_names)}

    def splits(self) -> DatasetDict:
        """The non-empty splits as a DatasetDict (``train``, ``validation``, ``test``)."""
        parts = {"train": self.train, "validation": self.validation, "test": self.test}
        return DatasetDict({k: v for k, v in parts.items() if v is not None})

    def with_transforms(self) -> LTData:
        """A copy whose splits apply the config's transforms lazily (train: augmenting, others: eval)."""
        train_tf, eval_tf = build_transforms(self.config.transform, self.config.image_size)
        return dataclasses.replace(
            self,
            train=with_transforms(self.train, train_tf),
            validation=None if self.validation is None else with_transforms(self.validation, eval_tf),
            test=None if self.test is None else with_transforms(self.test, eval_tf),
        )

    def save_indices(self, path: str | os.PathLike) -> None:
        """Write the chosen rows and how they were chosen (see :func:`.selection.save_indices`)."""
        cfg = self.config
        save_indices(
            path,
            self.indices,
            source=cfg.source,
            path=cfg.path,
            train_split=cfg.train_split,
            source_rows=self.source_rows,
            imbalance_profile=cfg.imbalance_profile,
            imbalance_factor=cfg.imbalance_factor,
            selection=cfg.selection,
            seed=cfg.seed,
            counts=list(self.stats.counts),
        )


def _open(cfg: DataConfig) -> tuple[DatasetDict, str, str, list[str] | None]:
    """Open the source (:data:`~plot_hf.data.sources.SOURCES`); returns (splits, image column, label column,
    class names if known)."""
    opened = SOURCES[cfg.source](cfg)
    return opened.splits, opened.image_column, opened.label_column, opened.label_names


def _holdout(
    labels: np.ndarray, chosen: np.ndarray, per_class: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out validation rows (see the module docstring, step 4); returns (train rows, validation rows)."""
    rng = np.random.default_rng(seed)
    taken = np.zeros(len(labels), dtype=bool)
    taken[chosen] = True
    rest_all = np.flatnonzero(~taken)
    rest_by_class = np.split(
        rest_all[np.argsort(labels[rest_all], kind="stable")],
        np.searchsorted(np.sort(labels[rest_all]), np.arange(1, num_classes)),
    )
    own_by_class = np.split(
        chosen[np.argsort(labels[chosen], kind="stable")],
        np.searchsorted(np.sort(labels[chosen]), np.arange(1, num_classes)),
    )
    val, drop = [], []
    for rest, own in zip(rest_by_class, own_by_class, strict=True):
        pick = rng.permutation(rest)[:per_class]
        val.append(pick)
        short = per_class - len(pick)
        if short > 0:
            steal = rng.permutation(own)[: min(short, len(own) // 2)]
            val.append(steal)
            drop.append(steal)
    if drop:
        chosen = chosen[~np.isin(chosen, np.concatenate(drop))]
    return chosen, np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, dtype=np.int64)


def _choose(
    cfg: DataConfig, train_src: Dataset, labels: np.ndarray, num_classes: int, img: str
) -> np.ndarray:
    """Rows of the source train split kept for training (step 3)."""
    if cfg.imbalance_profile == "none":
        return np.arange(len(labels), dtype=np.int64)
    source_counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(source_counts == 0).tolist()
    if empty:
        raise ValueError(f"Class(es) {empty[:5]} have no image in the train split {cfg.train_split!r}.")
    n_max = cfg.max_per_class or int(source_counts.min())
    counts = class_counts(num_classes, n_max, cfg.imbalance_factor, cfg.imbalance_profile)
    keys = (
        row_keys(train_src.with_format("arrow").select_columns([img])[img])
        if cfg.selection == "seeded"
        else None
    )
    return select_indices(labels, counts, cfg.selection, cfg.seed, keys)


def _take(
    ds: Dataset, rows: np.ndarray | None, img: str, lab: str, names: list[str], flatten: bool
) -> Dataset:
    ds = ds.select_columns([img, lab])
    if rows is not None and not (len(rows) == len(ds) and np.array_equal(rows, np.arange(len(ds)))):
        ds = ds.select(rows)
        if flatten:
            ds = ds.flatten_indices()
    return to_lt_schema(ds, img, lab, names)


def build_datasets(cfg: DataConfig) -> LTData:
    """Build the long-tailed train split, the validation and test splits and their statistics."""
    dd, img, lab, names = _open(cfg)
    train_src = dd[cfg.train_split]
    labels = label_array(train_src, lab)
    num_classes, names = _classes(cfg, labels, names)
    check_labels(labels, num_classes, f"`{lab}` of split {cfg.train_split!r}")
    other = {s: dd[s] for s in (cfg.validation_split, cfg.test_split) if s}
    for s, ds in other.items():
        check_labels(label_array(ds, lab), num_classes, f"`{lab}` of split {s!r}")
    if cfg.indices_file:
        saved = load_indices(cfg.indices_file)
        chosen, val_rows = _saved_rows(cfg, saved, len(labels))
    else:
        saved = None
        chosen, val_rows = _chosen_rows(cfg, train_src, labels, num_classes, img)
    stats = ClassStats.from_labels(
        labels[chosen], num_classes, many_shot_threshold=cfg.many_shot_threshold,
        few_shot_threshold=cfg.few_shot_threshold, shot_rule=cfg.shot_rule,
    )  # fmt: skip
    _check_counts(cfg, saved, stats)
    train, validation, test = _splits(cfg, dd, chosen, val_rows, img, lab, names)
    indices = {"train": chosen.tolist()}
    if val_rows.size:
        indices["validation"] = val_rows.tolist()
    if cfg.imbalance_profile == "none" and not val_rows.size and not cfg.indices_file:
        indices = {}
    return LTData(train, validation, test, stats, names, indices, cfg, source_rows=len(labels))


def _classes(cfg: DataConfig, labels: np.ndarray, names: list[str] | None) -> tuple[int, list[str]]:
    """The number of classes and their names: from the config, else the source's label feature, else the
    largest label."""
    num_classes = cfg.num_classes or (len(cfg.label_names) if cfg.label_names else None)
    num_classes = num_classes or (len(names) if names else int(labels.max(initial=-1)) + 1)
    if names is not None and cfg.label_names is None and len(names) != num_classes:
        raise ValueError(
            f"`num_classes` is {num_classes} but the source's label feature has {len(names)} classes."
        )
    return num_classes, list(cfg.label_names or names or [str(i) for i in range(num_classes)])


def _saved_rows(cfg: DataConfig, saved: dict, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The train and validation rows of ``cfg.indices_file`` (``saved``), checked against the source's
    ``num_rows``."""
    if saved.get("source_rows") not in (None, num_rows):
        raise ValueError(
            f"`indices_file` {cfg.indices_file!r} was made from {saved['source_rows']} rows; "
            f"the train split has {num_rows}."
        )
    chosen = np.asarray(saved["indices"].get("train", []), dtype=np.int64)
    val_rows = np.asarray(saved["indices"].get("validation", []), dtype=np.int64)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= num_rows):
        raise ValueError(f"`indices_file` {cfg.indices_file!r} has rows outside [0, {num_rows}).")
    return chosen, val_rows


def _chosen_rows(
    cfg: DataConfig, train_src: Dataset, labels: np.ndarray, num_classes: int, img: str
) -> tuple[np.ndarray, np.ndarray]:
    """The train rows chosen by the config's imbalance profile and selection, and the validation rows held out
    from them (``validation_per_class`` without a ``validation_split``; else none)."""
    chosen = _choose(cfg, train_src, labels, num_classes, img)
    val_rows = np.zeros(0, dtype=np.int64)
    if cfg.validation_per_class and cfg.validation_split is None:
        chosen, val_rows = _holdout(labels, chosen, cfg.validation_per_class, num_classes, cfg.seed)
        if not val_rows.size:
            raise ValueError(
                "The validation split is empty: no class has an image to hold out; "
                "set `validation_per_class: 0` or give a `validation_split`."
            )
    return chosen, val_rows


def _check_counts(cfg: DataConfig, saved: dict | None, stats: ClassStats) -> None:
    """The class counts match those recorded in the indices file (if any) and no class is left empty."""
    if cfg.indices_file and saved.get("counts") not in (None, list(stats.counts)):
        raise ValueError(
            f"`indices_file` {cfg.indices_file!r} recorded class counts {saved['counts'][:5]}..., but its rows "
            f"give {list(stats.counts)[:5]}... here: the source is not the one it was made from."
        )
    empty = [c for c, n in enumerate(stats.counts) if n == 0]
    if empty:
        raise ValueError(f"Class(es) {empty[:10]} are left with 0 training images ({len(empty)} in all).")


def _splits(
    cfg: DataConfig, dd: DatasetDict, chosen: np.ndarray, val_rows: np.ndarray, img: str, lab: str, names: list[str]
) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """The train, validation and test splits in the LT schema; none of them empty."""
    train_src = dd[cfg.train_split]
    train = _take(train_src, chosen, img, lab, names, cfg.flatten_indices)
    if val_rows.size:
        validation = _take(train_src, val_rows, img, lab, names, cfg.flatten_indices)
    elif cfg.validation_split:
        validation = _take(dd[cfg.validation_split], None, img, lab, names, False)
    else:
        validation = None
    test = _take(dd[cfg.test_split], None, img, lab, names, False) if cfg.test_split else None
    for s, ds in (("train", train), ("validation", validation), ("test", test)):
        if ds is not None and len(ds) == 0:
            raise ValueError(f"The {s} split is empty.")
    return train, validation, test

