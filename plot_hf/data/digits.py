"""The embedded default: a long-tailed version of scikit-learn's digits (no download, ships with sklearn).

``load_digits`` gives 1,797 grey 8x8 images of the digits 0-9 (about 180 per class). From each class, in a
seeded random order, the first ``test_per_class`` images form a balanced test split, the next
``validation_per_class`` a balanced validation split, and the training split keeps the first ``n_k`` of the
rest, with ``n_k`` from the exponential (or step) profile over ``max_per_class`` (class 0 the head). Images
are stored as 8x8 RGB ``datasets.Image`` (pixel values 0-16 scaled to 0-255), labels as ``ClassLabel``.
"""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from .profiles import ProfileName, class_counts

DIGIT_NAMES = [str(d) for d in range(10)]


def digits_features() -> Features:
    return Features({"image": Image(), "labels": ClassLabel(names=DIGIT_NAMES)})


def build_digits_lt(
    imbalance_factor: float = 10.0,
    *,
    profile: ProfileName = "exponential",
    max_per_class: int = 110,
    test_per_class: int = 50,
    validation_per_class: int = 10,
    seed: int = 0,
) -> tuple[DatasetDict, list[int]]:
    """Return ``(DatasetDict(train, validation, test), train class counts)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = digits.target.astype(np.int64)
    counts = class_counts(10, max_per_class, imbalance_factor, profile)
    rng = np.random.default_rng(seed)
    split_indices: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in range(10):
        members = rng.permutation(np.flatnonzero(labels == label))
        needed = test_per_class + validation_per_class + counts[label]
        if members.size < needed:
            raise ValueError(
                f"Digit {label} has {members.size} images; test_per_class + validation_per_class + "
                f"max_per_class needs {needed}. Lower `max_per_class`."
            )
        split_indices["test"] += members[:test_per_class].tolist()
        split_indices["validation"] += members[test_per_class : test_per_class + validation_per_class].tolist()
        start = test_per_class + validation_per_class
        split_indices["train"] += members[start : start + counts[label]].tolist()
    features = digits_features()
    splits = {}
    for split, indices in split_indices.items():
        order = np.asarray(sorted(indices))
        rgb = np.repeat(images[order][..., None], 3, axis=-1)
        splits[split] = Dataset.from_dict({"image": list(rgb), "labels": labels[order].tolist()}, features=features)
    return DatasetDict(splits), counts
