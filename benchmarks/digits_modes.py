"""Digits-LT accuracy of each PLOT gradient mode over seeds (``python benchmarks/digits_modes.py``).

The accuracy half of a cheap mode's fidelity: ``recipes/digits_lt.yaml`` (resnet32_cifar, PLOT for 10 of 30
epochs, CAGrad with the class-prior anchor) trained once per mode and seed, last-epoch test top-1 and
many/medium/few-shot top-1 (%, mean +- sample std over seeds). Runs are resumable: a finished run's
``metrics.json`` is read instead of training again. ``--quick``: 1 epoch, 1 seed, 3 modes (for tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` / `plot_hf` when run as a script

from plot_hf.compare import METRICS, _stats, last_metrics  # noqa: E402
from plot_hf.recipe import load_recipe  # noqa: E402
from plot_hf.train import run  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_lt.yaml"
GN = ["--model_name", "resnet32_cifar_gn"]
MODES: dict[str, list[str]] = {
    "baseline (no PLOT)": ["--moo_until_epoch", "0"],
    "exact (loop)": ["--moo_gradient_method", "loop"],
    "last block only (loop)": ["--moo_gradient_method", "loop", "--moo_modules", '["layer3.4"]'],
    "sketch d=16": ["--moo_gradient_method", "sketch", "--moo_sketch_dim", "16"],
    "groups 3": ["--moo_class_groups", "3"],
    "amortised k=4": ["--moo_solve_every", "4"],
    "GN baseline (no PLOT)": [*GN, "--moo_until_epoch", "0"],
    "GN per_sample_split": [*GN, "--moo_gradient_method", "per_sample_split"],
}
QUIET = ["--eval_strategy", '"no"', "--save_strategy", '"no"', "--metric_for_best_model", "null",
         "--report_to", "none", "--logging_strategy", '"no"']


def run_mode(name: str, seed: int, root: Path, extra: list[str]) -> tuple[dict[str, float | None], float]:
    """Train one (mode, seed) run, or read its finished metrics; returns (last-epoch metrics, seconds)."""
    folder = root / name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "") / f"seed{seed}"
    metrics_file = folder / "metrics.json"
    seconds = 0.0
    if not metrics_file.is_file():
        argv = [*QUIET, *extra, *MODES[name], "--seed", str(seed), "--output_dir", str(folder)]
        start = time.perf_counter()
        run(load_recipe(RECIPE, argv))
        seconds = time.perf_counter() - start
    return last_metrics(json.loads(metrics_file.read_text())), seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output_dir", default="outputs/digits_modes")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated names from MODES")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 seed, 3 modes")
    args = parser.parse_args(argv)
    names = [n for n in args.modes.split(",") if n]
    unknown = [n for n in names if n not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; valid: {list(MODES)}")
    extra: list[str] = []
    if args.quick:
        names, args.seeds = ["baseline (no PLOT)", "exact (loop)", "amortised k=4"], 1
        extra = ["--num_train_epochs", "1", "--moo_until_epoch", "1", "--lr_milestones", "[]", "--lr_warmup_epochs", "0"]
    root = Path(args.output_dir)
    summary: dict[str, dict] = {}
    print(f"# digits-LT, {RECIPE.name}, {args.seeds} seeds, last-epoch test top-1 (%, mean +- sample std)\n")
    print("| mode | top-1 | many | medium | few | train s / run |\n|---|---|---|---|---|---|")
    for name in names:
        runs = [run_mode(name, seed, root, extra) for seed in range(args.seeds)]
        stats = {m: _stats([metrics[m] for metrics, _ in runs]) for m in METRICS}
        trained = [s for _, s in runs if s > 0]
        seconds = sum(trained) / len(trained) if trained else float("nan")
        summary[name] = {m: {"mean": mean, "std": std} for m, (mean, std) in stats.items()}
        cells = " | ".join(f"{stats[m][0]:.2f} ± {stats[m][1]:.2f}" for m in METRICS)
        print(f"| {name} | {cells} | {seconds:.0f} |", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
