"""Build a recipe's long-tailed dataset and keep it.

    python -m plot_hf.data RECIPE.yaml --output_dir DIR [--push_to_hub REPO] [--overwrite]

Reads only the recipe's ``data:`` section (other top-level sections are ignored; an unknown key inside
``data:`` is an error), builds the splits with :func:`plot_hf.data.build_datasets`, writes them with
:func:`plot_hf.data.export.save_lt_data` (atomic), and with ``--push_to_hub`` pushes them as parquet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .builder import DataConfig, build_datasets
from .export import push_lt_data, save_lt_data


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m plot_hf.data", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="recipe YAML with a top-level `data:` section")
    parser.add_argument(
        "--output_dir", required=True, help="folder to write (must not exist unless --overwrite)"
    )
    parser.add_argument("--push_to_hub", metavar="REPO", default=None, help="also push to this dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    cfg = DataConfig.from_yaml(args.recipe)
    if os.path.exists(args.output_dir) and not args.overwrite:
        raise SystemExit(f"error: `--output_dir` {args.output_dir!r} exists; pass --overwrite to replace it.")
    data = build_datasets(cfg)
    out = save_lt_data(data, args.output_dir, overwrite=args.overwrite)
    if args.push_to_hub:
        push_lt_data(data, out, args.push_to_hub, private=args.private or None)
    sizes = {k: len(v) for k, v in data.splits().items()}
    print(json.dumps({"output_dir": out, "splits": sizes, "counts": list(data.stats.counts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
