"""Long-tailed datasets with Hugging Face Datasets.

The face of the data layer; the rules live in the modules:

* :mod:`.profiles`: per-class counts (exponential / step imbalance);
* :mod:`.selection`: which rows a subset keeps (reference LDAM-DRW, first-n, seeded), saved index lists;
* :mod:`.sources`, :mod:`.split_files`, :mod:`.inat`: Hub ids, local folders, parquet, OLTR split files,
  iNaturalist JSON;
* :mod:`.stats`: class counts, prior, many/medium/few groups;
* :mod:`.transforms`: lazy train/eval transforms and the collator;
* :mod:`.builder`: ``DataConfig`` (a recipe's ``data:`` section) and ``build_datasets`` -> ``LTData``;
* :mod:`.export`: atomic ``save_to_disk`` with indices and counts, push as parquet
  (``python -m plot_hf.data RECIPE.yaml --output_dir DIR``).

Every split has the schema ``image`` (``datasets.Image``) and ``labels`` (``datasets.ClassLabel``).
"""

from __future__ import annotations

from .builder import DataConfig, LTData, build_datasets
from .profiles import class_counts
from .selection import load_indices, save_indices, select_indices
from .stats import ClassStats
from .transforms import build_transforms, collate_fn, with_transforms

__all__ = [
    "ClassStats",
    "DataConfig",
    "LTData",
    "build_datasets",
    "build_transforms",
    "class_counts",
    "collate_fn",
    "load_indices",
    "save_indices",
    "select_indices",
    "with_transforms",
]
