"""OLTR split files (ImageNet-LT, Places-LT): ``relative/path label`` lines matched to images.

A split file line is ``<path> <label>``, e.g. ``train/n01440764/n01440764_190.JPEG 0``. Copies of the
files disagree on the path prefix, so a line is matched on its **basename**: against every file under a
local image root (:func:`split_from_image_root`), or against the image file names stored in a dataset such
as ``ILSVRC/imagenet-1k`` (:func:`split_from_dataset`). When several files share a basename (Places-LT:
``00000001.jpg`` in every class folder), the line's trailing path components are compared, from the parent
folder upwards, until one file remains. The rules:

* every line must find exactly one image (missing ones are reported with their count and the first few);
* no image may appear twice in one split;
* a split file must have at least one line, and every label must lie in ``[0, num_classes)``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, concatenate_datasets

Entry = tuple[str, int]


def read_split_file(path: str | os.PathLike) -> list[Entry]:
    """Parse ``path label`` lines (blank lines skipped; the label is the last field)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Split file {path!r} does not exist.")
    entries: list[Entry] = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected `relative/path label`, got {line!r}.")
            entries.append((parts[0], int(parts[1])))
    if not entries:
        raise ValueError(f"Split file {path!r} is empty: a split needs at least one image.")
    return entries


def _parts(path: str) -> list[str]:
    return [p for p in path.replace("\\", "/").split("/") if p]


class _Matcher:
    """Basename index of ``(key, path)`` candidates, disambiguated by trailing path components."""

    def __init__(self, items: Iterable[tuple[Hashable, str]]) -> None:
        self.by_name: dict[str, list[tuple[Hashable, list[str]]]] = defaultdict(list)
        for key, path in items:
            parts = _parts(path)
            if parts:
                self.by_name[parts[-1]].append((key, parts))

    def match(self, line_path: str) -> Hashable | None:
        """The key of the one candidate matching ``line_path``, or None; ValueError if still ambiguous."""
        parts = _parts(line_path)
        cands = self.by_name.get(parts[-1], []) if parts else []
        k = 1
        while len(cands) > 1 and k < len(parts):
            k += 1
            cands = [c for c in cands if c[1][-k:] == parts[-k:]]
        if len(cands) > 1:
            raise ValueError(
                f"Split-file path {line_path!r} matches several images: {['/'.join(c[1]) for c in cands[:3]]}."
            )
        return cands[0][0] if cands else None


def _check_labels(entries: Sequence[Entry], num_classes: int, split_file: str) -> None:
    bad = [(i + 1, lab) for i, (_, lab) in enumerate(entries) if not 0 <= lab < num_classes]
    if bad:
        raise ValueError(
            f"{len(bad)} label(s) in {split_file!r} outside [0, {num_classes}), first (entry, label): {bad[:5]}; "
            "check `num_classes`/`label_names`."
        )


def _resolve(entries: Sequence[Entry], matcher: _Matcher, split_file: str) -> list[Hashable]:
    """The matched key of every line; FileNotFoundError for missing images, ValueError for duplicates."""
    found: list[Hashable] = []
    missing = []
    for p, _ in entries:
        m = matcher.match(p)
        if m is None:
            missing.append(p)
        found.append(m)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(entries)} image(s) listed in {split_file!r} were not found, "
            f"first: {missing[:5]}."
        )
    seen: dict[Hashable, int] = {}
    dups = []
    for i, m in enumerate(found):
        if m in seen:
            dups.append(f"line {i + 1} {entries[i][0]!r} (same image as line {seen[m] + 1})")
        seen.setdefault(m, i)
    if dups:
        raise ValueError(f"{len(dups)} duplicate image(s) in {split_file!r}, first: {dups[:5]}.")
    return found


def index_image_root(root: str | os.PathLike) -> list[str]:
    """Every file under ``root``, as paths relative to it (``/``-separated)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"`image_root` {root!r} is not a folder.")
    out = []
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for f in files:
            out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return out


def lt_features(label_names: Sequence[str]) -> Features:
    return Features({"image": Image(), "labels": ClassLabel(names=list(label_names))})


def split_from_image_root(
    split_file: str, image_root: str, label_names: Sequence[str], index: Sequence[str] | None = None
) -> Dataset:
    """A split as ``{image: path, labels}`` rows over files under ``image_root`` (nothing decoded).

    ``index`` (from :func:`index_image_root`) can be passed to walk the root once for several splits.
    """
    entries = read_split_file(split_file)
    _check_labels(entries, len(label_names), split_file)
    files = index if index is not None else index_image_root(image_root)
    rel = _resolve(entries, _Matcher((f, f) for f in files), split_file)
    paths = [os.path.join(image_root, str(r)) for r in rel]
    return Dataset.from_dict(
        {"image": paths, "labels": [lab for _, lab in entries]}, features=lt_features(label_names)
    )


def image_file_names(ds: Dataset, image_column: str) -> list[str]:
    """The ``path`` stored with each image of ``ds`` (no decoding); empty string where there is none."""
    col = ds.with_format("arrow").select_columns([image_column])[image_column].combine_chunks()
    return [p or "" for p in col.field("path").to_pylist()]


def split_from_dataset(
    split_file: str, source: DatasetDict, image_column: str, label_names: Sequence[str]
) -> Dataset:
    """A split whose images are rows of ``source`` (e.g. imagenet-1k), matched on the stored file names.

    Every split of ``source`` is searched. Labels come from the split file. Rows are grouped by source
    split (in ``source`` order), in line order within each.
    """
    entries = read_split_file(split_file)
    _check_labels(entries, len(label_names), split_file)
    matcher = _Matcher(
        ((name, row), path)
        for name in source
        for row, path in enumerate(image_file_names(source[name], image_column))
    )
    found = _resolve(entries, matcher, split_file)
    parts, labels = [], []
    for name in source:
        rows = [(key[1], entries[i][1]) for i, key in enumerate(found) if key[0] == name]
        if rows:
            parts.append(source[name].select_columns([image_column]).select([r for r, _ in rows]))
            labels.extend(lab for _, lab in rows)
    ds = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    ds = ds.flatten_indices()
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    ds = ds.add_column("labels", labels)
    return ds.cast_column("labels", ClassLabel(names=list(label_names)))
