"""iNaturalist 2018 (COCO-style JSON) over a local image root.

A file such as ``train2018.json`` holds ``images[{id, file_name, ...}]``, ``annotations[{image_id,
category_id, ...}]`` and ``categories[{id, name, ...}]``. The rules:

* labels are the category ids mapped to ``0..C-1`` in ascending id order (the identity for iNat 2018,
  whose ids are ``0..8141``); label names are the categories' ``name`` (else the id);
* every annotation must point at a listed image id and a listed category id;
* every image must carry exactly one annotation;
* every ``image_root/file_name`` must exist (missing ones are reported with their count and first few);
* a split must hold at least one image.

iNat 2018 has no labelled test set: the usual protocol uses ``val2018.json`` as the test split.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from datasets import Dataset

from .split_files import lt_features


def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"iNaturalist annotation file {path!r} does not exist.")
    with open(path) as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path!r} has no `{key}` list; expected COCO-style JSON.")
    return data


def category_mapping(data: dict[str, Any]) -> tuple[dict[int, int], list[str]]:
    """``{category_id: label}`` (ids ascending -> 0..C-1) and the label names."""
    cats = sorted(data["categories"], key=lambda c: int(c["id"]))
    mapping = {int(c["id"]): i for i, c in enumerate(cats)}
    names = [str(c.get("name", c["id"])) for c in cats]
    return mapping, names


def inat_split(json_path: str, image_root: str, mapping: dict[int, int], label_names: list[str]) -> Dataset:
    """One split as ``{image: path, labels}`` rows (nothing decoded), checked by the module's rules."""
    data = read_coco_json(json_path)
    if not data["images"]:
        raise ValueError(f"{json_path!r} lists no images: a split needs at least one image.")
    files = {int(im["id"]): im["file_name"] for im in data["images"]}
    unknown_img = [a["image_id"] for a in data["annotations"] if int(a["image_id"]) not in files]
    if unknown_img:
        raise ValueError(
            f"{len(unknown_img)} annotation(s) in {json_path!r} point at unknown image ids, first: {unknown_img[:5]}."
        )
    unknown_cat = sorted(
        {a["category_id"] for a in data["annotations"] if int(a["category_id"]) not in mapping}
    )
    if unknown_cat:
        raise ValueError(f"Annotations in {json_path!r} use unknown category ids, first: {unknown_cat[:5]}.")
    per_image = Counter(int(a["image_id"]) for a in data["annotations"])
    bad = [i for i in files if per_image[i] != 1]
    if bad:
        raise ValueError(
            f"{len(bad)} image(s) in {json_path!r} do not have exactly one annotation, first ids: {bad[:5]}."
        )
    label_of = {int(a["image_id"]): mapping[int(a["category_id"])] for a in data["annotations"]}
    ids = list(files)
    paths = [os.path.join(image_root, files[i]) for i in ids]
    missing = [files[i] for i, p in zip(ids, paths, strict=True) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(ids)} image(s) listed in {json_path!r} are missing under "
            f"{image_root!r}, first: {missing[:5]}."
        )
    return Dataset.from_dict(
        {"image": paths, "labels": [label_of[i] for i in ids]}, features=lt_features(label_names)
    )
