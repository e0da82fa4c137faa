"""Keep a built LT dataset: an atomic ``save_to_disk`` folder with its index list and class counts.

Layout of ``output_dir`` (a :class:`datasets.DatasetDict`, so ``datasets.load_from_disk(output_dir)``
works, with three JSON files beside the splits)::

    dataset_dict.json, train/, validation/, test/   the splits (image bytes embedded)
    indices.json        rows of the source train split kept per split, and how they were chosen
    class_stats.json    per-class training counts, prior, shot groups, label names
    data_config.json    the DataConfig that built it

The folder is written under a temporary name beside ``output_dir`` and renamed when complete, so a crash
never leaves a half-written ``output_dir``. An existing ``output_dir`` is an error unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from datasets import Dataset
from datasets.table import embed_table_storage

from .builder import LTData

FILES = ("indices.json", "class_stats.json", "data_config.json")


def _embedded(ds: Dataset) -> Dataset:
    """Copy images referenced by local path into the table, as ``push_to_hub`` does."""
    fmt = ds.format
    out = ds.with_format("arrow").map(embed_table_storage, batched=True, desc="Embedding images")
    return out.with_format(**{k: fmt[k] for k in ("type", "columns", "output_all_columns")})


def save_lt_data(data: LTData, output_dir: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``data`` to ``output_dir`` atomically (see the module docstring); returns the folder."""
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"`output_dir` {output_dir!r} exists; pass `--overwrite` to replace it.")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        splits = data.splits()
        for name in list(splits):
            splits[name] = _embedded(splits[name])
        splits.save_to_disk(tmp)
        data.save_indices(os.path.join(tmp, "indices.json"))
        with open(os.path.join(tmp, "class_stats.json"), "w") as f:
            json.dump({**data.stats.to_dict(), "label_names": data.label_names}, f)
        with open(os.path.join(tmp, "data_config.json"), "w") as f:
            json.dump(data.config.to_dict(), f, indent=1)
        if os.path.exists(output_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=parent)
            os.rename(output_dir, os.path.join(old, "d"))
            os.rename(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def push_lt_data(
    data: LTData, output_dir: str | os.PathLike, repo_id: str, private: bool | None = None
) -> None:
    """Push the splits as parquet (no loading script) and the three JSON files of ``output_dir``."""
    from huggingface_hub import HfApi

    data.splits().push_to_hub(repo_id, private=private)
    api = HfApi()
    for name in FILES:
        api.upload_file(
            path_or_fileobj=os.path.join(os.fspath(output_dir), name),
            path_in_repo=name,
            repo_id=repo_id,
            repo_type="dataset",
        )
