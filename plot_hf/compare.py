"""Reproduce the seed table: ``python -m plot_hf.compare RECIPE.yaml --baselines crt_mixup,ldam_drw,...
--solvers none,epo,mgda,cagrad --seeds 3 [--output_dir DIR] [--key value ...]``.

Every (baseline, column, seed) cell is one :func:`plot_hf.train.run` in this process, in its own folder
``DIR/<baseline>/<column>/seed<k>``; a cell whose ``metrics.json`` exists is read back, not re-run (the
command is resumable). Columns, as in the seed poster (METHOD.md, "How to read the seed table"):

* ``vanilla``: the baseline alone (``moo_until_epoch = 0``);
* ``<solver>-plain``: the solver the plain multi-task way (``moo_framework = plain``: every class an
  objective at every step, no SAM, no variability collapse);
* ``<solver>-plot``: the solver inside PLOT's framework (the recipe's E, SAM radius and VC weight).

Extra ``--key value`` flags override the recipe for every cell (e.g. ``--num_train_epochs 15``). The base
recipe should not set baseline keys (``loss_type``, ``mixup_alpha``, ...): recipe keys win over a
baseline's defaults. Outputs in ``DIR``: ``seed_table.md`` (mean +- std over seeds of the last-epoch test
top-1 in %, the PLOT-framework number marked ▲/▼ against vanilla), ``seed_table.json`` (every run's overall
and many/medium/few accuracies, and the summary), ``seed_table.png`` (bar chart).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .baselines import SEED_TABLE_BASELINES, get_baseline

SOLVERS = ("epo", "mgda", "cagrad")
METRICS = ("accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")
logger = logging.getLogger("plot_hf.compare")


@dataclass(frozen=True)
class Cell:
    baseline: str
    column: str  # "vanilla", "<solver>-plain" or "<solver>-plot"
    seed: int

    @property
    def solver(self) -> str | None:
        return None if self.column == "vanilla" else self.column.split("-")[0]

    @property
    def framework(self) -> str | None:
        return None if self.column == "vanilla" else self.column.split("-")[1]

    def folder(self, root: Path) -> Path:
        return root / self.baseline / self.column / f"seed{self.seed}"

    def overrides(self) -> list[str]:
        """Command-line overrides that turn the base recipe into this cell."""
        flags = ["--baseline", self.baseline, "--seed", str(self.seed)]
        if self.solver is None:
            return flags + ["--moo_until_epoch", "0"]
        if self.framework == "plain":  # the base recipe's PLOT-framework values would contradict plain MOO
            flags += ["--moo_until_epoch", ".inf", "--sam_rho", "0", "--vc_weight", "0"]
        return flags + ["--moo_solver", self.solver, "--moo_framework", self.framework]


def columns_for(solvers: list[str], frameworks: tuple[str, ...] = ("plain", "plot")) -> list[str]:
    """``none`` -> ``vanilla``; each solver -> its plain and PLOT-framework columns, in that order."""
    columns = []
    for solver in solvers:
        if solver == "none":
            columns.append("vanilla")
        elif solver in SOLVERS:
            columns += [f"{solver}-{fw}" for fw in frameworks]
        else:
            raise ValueError(f"Unknown solver {solver!r}; choose from none, {', '.join(SOLVERS)}.")
    return columns


def run_cell(recipe_path: str, cell: Cell, root: Path, extra: list[str]) -> tuple[dict[str, Any], float, bool]:
    """Run one cell (or read its finished metrics); returns (metrics, seconds, reused)."""
    folder = cell.folder(root)
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text()), 0.0, True
    from .recipe import load_recipe
    from .train import run

    recipe = load_recipe(recipe_path, [*extra, *cell.overrides(), "--output_dir", str(folder)])
    start = time.perf_counter()
    run(recipe)
    return json.loads(metrics_file.read_text()), time.perf_counter() - start, False


def last_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Overall and many/medium/few top-1 of the last model (fractions; None for an empty group)."""
    last = metrics.get("last", {})
    return {k: last.get(f"test_{k}", last.get(k)) for k in METRICS}


def _stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=float) * 100
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarise(records: list[dict[str, Any]], baselines: list[str], columns: list[str]) -> dict[str, Any]:
    """Mean and std (%, sample std over seeds) per baseline and column, for each metric."""
    summary: dict[str, Any] = {}
    for b in baselines:
        summary[b] = {}
        for c in columns:
            runs = [r for r in records if r["baseline"] == b and r["column"] == c]
            summary[b][c] = {
                m: dict(zip(("mean", "std"), _stats([r["metrics"][m] for r in runs]), strict=True)) for m in METRICS
            }
            summary[b][c]["seeds"] = len(runs)
    return summary


def _fmt(stat: dict[str, float]) -> str:
    return "-" if math.isnan(stat["mean"]) else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def markdown_table(summary: dict[str, Any], columns: list[str], metric: str = "accuracy") -> str:
    """The poster's layout: per baseline, Vanilla, then each solver's plain-MOO and PLOT-framework numbers,
    the latter marked ▲ (above vanilla's mean) or ▼ (not above)."""
    header = ["Baseline"] + [
        "Vanilla" if c == "vanilla" else f"w/ {c.split('-')[0].upper()} ({'plain' if c.endswith('plain') else 'PLOT'})"
        for c in columns
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for baseline, row in summary.items():
        vanilla = row.get("vanilla", {}).get(metric, {"mean": math.nan})["mean"]
        cells = [baseline]
        for c in columns:
            text = _fmt(row[c][metric])
            if c.endswith("-plot") and not math.isnan(vanilla) and not math.isnan(row[c][metric]["mean"]):
                text += " ▲" if row[c][metric]["mean"] > vanilla else " ▼"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(summary: dict[str, Any], columns: list[str], path: Path, title: str = "") -> Path:
    """Grouped bars: one group per baseline, one bar per column (mean, std as error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baselines = list(summary)
    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(baselines) + 2), 4))
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(columns):
        means = [summary[b][c]["accuracy"]["mean"] for b in baselines]
        stds = [summary[b][c]["accuracy"]["std"] for b in baselines]
        xs = np.arange(len(baselines)) + (i - (len(columns) - 1) / 2) * width
        hatch = "//" if c.endswith("-plain") else None
        if c == "vanilla":
            color = "0.45"
        else:  # one hue per solver: light = plain MOO, dark = inside PLOT's framework
            hue = 2 * (1 + SOLVERS.index(c.split("-")[0]))
            color = cmap(hue + (1 if c.endswith("-plain") else 0))
        ax.bar(xs, means, width, yerr=stds, label=c, color=color, hatch=hatch, capsize=2)
    ax.set_xticks(np.arange(len(baselines)), baselines)
    finite = [summary[b][c]["accuracy"]["mean"] for b in baselines for c in columns]
    finite = [v for v in finite if not math.isnan(v)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 10), min(100.0, max(finite) + 5))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Seed table")
    ax.legend(ncol=min(4, len(columns)), fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(
    recipe: str, baselines: list[str], solvers: list[str], seeds: list[int], output_dir: Path,
    extra: list[str] | None = None, name: str = "seed_table", frameworks: tuple[str, ...] = ("plain", "plot"),
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any] | None:
    """Run (or resume) every cell, then write ``{name}.md``, ``{name}.json`` and ``{name}.png``.

    ``shard=(k, n)``: run only cells ``k, k + n, k + 2n, ...`` and write no table (parallel workers share
    the folder; a last call without a shard reads every finished cell back and writes the table)."""
    for b in baselines:
        get_baseline(b)
    columns = columns_for(solvers, frameworks)
    cells = [Cell(b, c, s) for b in baselines for c in columns for s in seeds]
    output_dir.mkdir(parents=True, exist_ok=True)
    records, total = [], time.perf_counter()
    index, count = shard
    if count > 1:
        for i, cell in enumerate(cells[index::count], 1):
            _, seconds, reused = run_cell(recipe, cell, output_dir, list(extra or []))
            print(f"[shard {index}/{count}: {i}] {cell.baseline:<16} {cell.column:<12} seed {cell.seed}: "
                  + ("(done before)" if reused else f"({seconds:.1f} s)"), flush=True)
        return None
    for i, cell in enumerate(cells, 1):
        metrics, seconds, reused = run_cell(recipe, cell, output_dir, list(extra or []))
        record = {
            "baseline": cell.baseline, "column": cell.column, "solver": cell.solver, "framework": cell.framework,
            "seed": cell.seed, "folder": str(cell.folder(output_dir)), "metrics": last_metrics(metrics),
            "best_on_validation": {k: metrics.get("best_on_validation", {}).get(f"test_{k}") for k in METRICS},
            "seconds": round(seconds, 1) if not reused else None,
        }
        records.append(record)
        acc = record["metrics"]["accuracy"]
        print(
            f"[{i}/{len(cells)}] {cell.baseline:<16} {cell.column:<12} seed {cell.seed}: "
            f"top-1 {100 * acc:.2f}%  " + ("(done before)" if reused else f"({seconds:.1f} s)"),
            flush=True,
        )
    summary = summarise(records, baselines, columns)
    table = markdown_table(summary, columns)
    wall = time.perf_counter() - total
    note = (
        f"Top-1 accuracy (%) of the last model on the balanced test split, mean ± std (sample std) over "
        f"{len(seeds)} seed(s); ▲/▼: PLOT-framework number above / not above Vanilla. Recipe `{recipe}`"
        + (f", overrides `{' '.join(extra)}`" if extra else "") + ".\n"
    )
    (output_dir / f"{name}.md").write_text(note + "\n" + table)
    payload = {
        "recipe": recipe, "overrides": list(extra or []), "baselines": baselines, "columns": columns,
        "seeds": seeds, "metric": "last-epoch test top-1 (fraction in runs, % in summary)",
        "summary": summary, "runs": records, "wall_seconds_this_invocation": round(wall, 1),
    }
    (output_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float))
    bar_chart(summary, columns, output_dir / f"{name}.png", title=Path(recipe).stem)
    print(table, flush=True)
    print(f"{len(cells)} cells, {wall:.0f} s this invocation; wrote {output_dir / name}.{{md,json,png}}", flush=True)
    return payload


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m plot_hf.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--baselines", default=",".join(SEED_TABLE_BASELINES))
    parser.add_argument("--solvers", default="none,epo,mgda,cagrad")
    parser.add_argument("--frameworks", default="plain,plot", help="Which MOO columns: plain, plot or both.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 0 .. N-1.")
    parser.add_argument("--output_dir", default=None, help="Default: outputs/compare/<recipe name>.")
    parser.add_argument("--name", default="seed_table", help="Stem of the table, JSON and plot files.")
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th cell from K, write no table.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (per process).")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "plot_hf.train", "plot_hf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    extra = ["--disable_tqdm", "true", "--report_to", "none", *extra]
    index, count = (int(v) for v in args.shard.split("/"))
    output_dir = Path(args.output_dir or Path("outputs/compare") / Path(args.recipe).stem)
    return compare(
        args.recipe, _split(args.baselines), _split(args.solvers), list(range(args.seeds)), output_dir,
        extra=extra, name=args.name, frameworks=tuple(_split(args.frameworks)), shard=(index, count),
    ) or {}


if __name__ == "__main__":
    main(sys.argv[1:])
