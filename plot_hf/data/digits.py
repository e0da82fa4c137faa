"""The embedded default source: scikit-learn's digits (ships with scikit-learn; no download).

``load_digits`` gives 1,797 grey 8x8 images of the digits 0-9 (about 180 per class). :func:`digits_source`
returns them as a ``DatasetDict`` in the project's schema (``image``: 8x8 RGB ``Image``, pixel values 0-16
scaled to 0-255; ``labels``: ``ClassLabel`` "0".."9"): a balanced ``test`` split of ``test_per_class`` images
per class drawn with a seeded generator, and a ``train`` split with the rest. The builder then makes the
training split long-tailed (``source: digits`` in a recipe's ``data:`` section) like any other source.
"""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

DIGIT_NAMES = [str(d) for d in range(10)]


def digits_features() -> Features:
    return Features({"image": Image(), "labels": ClassLabel(names=DIGIT_NAMES)})


def digits_source(test_per_class: int = 50, seed: int = 0) -> DatasetDict:
    """``DatasetDict(train, test)`` of scikit-learn's digits; the test split is balanced."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_rows: list[int] = []
    for label in range(10):
        members = np.flatnonzero(labels == label)
        if members.size <= test_per_class:
            raise ValueError(f"`test_per_class`={test_per_class} leaves digit {label} ({members.size} images) no train image.")
        test_rows += rng.choice(members, size=test_per_class, replace=False).tolist()
    is_test = np.zeros(labels.size, dtype=bool)
    is_test[test_rows] = True

    def split(mask: np.ndarray) -> Dataset:
        rows = np.flatnonzero(mask)
        rgb = np.repeat(images[rows][..., None], 3, axis=-1)
        return Dataset.from_dict({"image": list(rgb), "labels": labels[rows].tolist()}, features=digits_features())

    return DatasetDict({"train": split(~is_test), "test": split(is_test)})
