"""Which images a long-tailed subset keeps: four selection rules over a label array.

Every rule reads only the labels (a 1-D integer array, one entry per row of the source split) and the
per-class counts from :func:`plot_hf.data.profiles.class_counts`; none decodes an image. Each returns the
chosen row indices grouped by class in ascending class order, so a subset's labels read
``0, 0, ..., 1, 1, ...``:

* ``"reference"`` (Cao et al., LDAM-DRW, ``IMBALANCECIFAR10.gen_imbalanced_data``): the legacy NumPy
  Mersenne-Twister seeded with ``seed`` (0 in the reference); for each class in ascending order, that
  class's row indices in dataset order are shuffled with ``shuffle`` and the first ``n_i`` kept; the random
  stream carries over from one class to the next. On data in the original CIFAR order this picks the same
  images as the reference code. Departure: a private ``np.random.RandomState(seed)`` (the very generator
  behind ``np.random.seed``/``np.random.shuffle``, hence the same stream) so the caller's global NumPy state
  is left alone. The kept indices stay in the shuffled order, as in the reference.
* ``"plot"`` (the PLOT reference, zzpustc/PLOT ``datasets/Cifar.py`` under ``train_cifar.py``): the rule of
  ``"reference"`` with the seed fixed at :data:`PLOT_SEED` (50, the ``seed`` of every released CIFAR config;
  ``train_cifar.py`` calls ``np.random.seed(50)`` and the training subset is the first draw from that stream).
  The ``seed`` argument is ignored (it still seeds a held-out validation draw in the data builder).
* ``"first"``: the first ``n_i`` rows of each class in dataset order.
* ``"seeded"``: within each class, rows are ranked by ``blake2b(key, salt=seed)`` of a per-row key that
  names the sample, not its position (the image file name, else a digest of its encoded bytes; see
  :func:`row_keys`); the ``n_i`` lowest ranks are kept (ties broken by row order). The chosen samples
  therefore do not depend on the order of the rows, and a different ``seed`` gives an independent draw.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

SelectionName = Literal["reference", "plot", "first", "seeded"]
SELECTIONS: tuple[str, ...] = ("reference", "plot", "first", "seeded")
PLOT_SEED = 50
"""The global NumPy seed of the PLOT reference's CIFAR configs, which draws its CIFAR-LT subset."""


def _class_rows(labels: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Row indices of each class in dataset order, after checking each class has enough rows."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be a 1-D array, got shape {labels.shape}.")
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(counts) + 1))
    rows = [order[bounds[c] : bounds[c + 1]] for c in range(len(counts))]
    short = [(c, len(r), n) for c, (r, n) in enumerate(zip(rows, counts, strict=True)) if len(r) < n]
    if short:
        desc = ", ".join(f"class {c} has {have} < {want}" for c, have, want in short[:5])
        raise ValueError(f"Not enough images to select from: {desc} (and {max(0, len(short) - 5)} more).")
    return rows


def reference_selection(labels: np.ndarray, counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """LDAM-DRW's selection: legacy MT19937 seeded once, per-class ``shuffle`` in class order, keep ``n_i``."""
    rng = np.random.RandomState(seed)
    chosen = []
    for rows, n in zip(_class_rows(labels, counts), counts, strict=True):
        idx = rows.copy()
        rng.shuffle(idx)
        chosen.append(idx[:n])
    return np.concatenate(chosen).astype(np.int64)


def first_n_selection(labels: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """The first ``n_i`` rows of each class in dataset order."""
    rows = _class_rows(labels, counts)
    return np.concatenate([r[:n] for r, n in zip(rows, counts, strict=True)]).astype(np.int64)


def seeded_selection(
    labels: np.ndarray, counts: Sequence[int], keys: Sequence[str | bytes], seed: int = 0
) -> np.ndarray:
    """Per class, the ``n_i`` rows whose keys hash lowest under ``blake2b(salt=seed)``; order independent."""
    if len(keys) != len(labels):
        raise ValueError(f"`keys` has {len(keys)} entries but `labels` has {len(labels)}.")
    salt = int(seed).to_bytes(8, "little", signed=True)
    ranks = np.array(
        [
            int.from_bytes(
                hashlib.blake2b(k.encode() if isinstance(k, str) else k, digest_size=8, salt=salt).digest(),
                "little",
            )
            for k in keys
        ],
        dtype=np.uint64,
    )
    chosen = []
    for rows, n in zip(_class_rows(labels, counts), counts, strict=True):
        order = np.lexsort((rows, ranks[rows]))  # by rank, ties by row index
        chosen.append(np.sort(rows[order[:n]]))
    return np.concatenate(chosen).astype(np.int64)


def select_indices(
    labels: np.ndarray,
    counts: Sequence[int],
    method: SelectionName = "reference",
    seed: int = 0,
    keys: Sequence[str | bytes] | None = None,
) -> np.ndarray:
    """Dispatch to one of the rules above; ``keys`` is required by (and only used by) ``"seeded"``; ``seed`` is
    not used by ``"plot"`` (fixed at :data:`PLOT_SEED`) nor ``"first"``."""
    if method == "reference":
        return reference_selection(labels, counts, seed)
    if method == "plot":
        return reference_selection(labels, counts, PLOT_SEED)
    if method == "first":
        return first_n_selection(labels, counts)
    if method == "seeded":
        if keys is None:
            raise ValueError("`selection='seeded'` needs per-row `keys` (see `row_keys`).")
        return seeded_selection(labels, counts, keys, seed)
    raise ValueError(f"Unknown `selection` {method!r}; choose one of {SELECTIONS}.")


def row_keys(image_column: Any) -> list[bytes]:
    """Order-free identity of each row from an Arrow image column (``struct<bytes, path>``), no decoding.

    The key is the file's basename when the row has a path, else a 16-byte digest of the encoded image.
    """
    import pyarrow as pa

    col = image_column.combine_chunks() if isinstance(image_column, pa.ChunkedArray) else image_column
    if not pa.types.is_struct(col.type):
        raise ValueError(f"Expected an image column of type struct<bytes, path>, got {col.type}.")
    paths = col.field("path").to_pylist()
    data = col.field("bytes").to_pylist()
    keys = []
    for p, b in zip(paths, data, strict=True):
        if p:
            keys.append(os.path.basename(p).encode())
        elif b is not None:
            keys.append(hashlib.blake2b(b, digest_size=16).digest())
        else:
            raise ValueError(
                "An image row has neither a path nor bytes; cannot key it for `seeded` selection."
            )
    return keys


def save_indices(file: str | os.PathLike, indices: dict[str, Sequence[int]], /, **meta: Any) -> None:
    """Write ``{"indices": {split: [row, ...]}, **meta}`` as JSON (rows index the source split)."""
    payload = dict(meta)
    payload["indices"] = {k: [int(i) for i in v] for k, v in indices.items()}
    with open(file, "w") as f:
        json.dump(payload, f)


def load_indices(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_indices`; ``result["indices"][split]`` is a list of ints."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Index file {str(path)!r} does not exist.")
    with open(path) as f:
        payload = json.load(f)
    if not isinstance(payload, dict) or not isinstance(payload.get("indices"), dict):
        raise ValueError(
            f"Index file {str(path)!r} has no `indices` mapping; was it written by save_indices?"
        )
    return payload
