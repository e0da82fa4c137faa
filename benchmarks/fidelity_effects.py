"""Measured effects of the departures from the PLOT reference code (``python benchmarks/fidelity_effects.py``).

Two measurements, printed as Markdown tables (the numbers live in ``benchmarks/README.md`` and
``docs/fidelity.md``):

1. **One step.** ``PLOTTrainer.train()`` takes one optimiser step from the same initial ``resnet32_cifar`` on
   the same digits-LT batch (64 images, 8x8, mixup with alpha 1) twice, once with the reference's setting and
   once with a departure; keep fraction 0, no weight decay and a constant rate, so that each parameter's update
   is ``-lr`` times its gradient (the MOO stage's: the CAGrad direction). Printed: the cosine between the two
   updates of the MOO stage (``layer3``) and of the other parameters (mean and minimum over ``--step_seeds``
   initialisations and batches).
2. **Training.** ``recipes/digits_lt.yaml`` trained per setting and seed (``--seeds``), last-epoch test top-1
   and many/medium/few-shot top-1 (%, mean +- sample std). Settings: the recipe as it is (plot-hf's defaults),
   the reference's optimiser details (weight decay on every parameter, the schedule stepped at the start of
   each epoch, the last batch dropped, ``nn.Linear``'s initialisation), those with mixup (alpha 1) and the
   reference's loss inside the PLOT step (first label), and that setting with one departure at a time.
   Runs are resumable (a finished run's ``metrics.json`` is read back).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `plot_hf` when run as a script

import plot_hf  # noqa: E402, F401
from plot_hf import PLOTConfig, PLOTTrainer  # noqa: E402
from plot_hf.compare import METRICS, _stats, last_metrics  # noqa: E402
from plot_hf.models import create_image_classifier  # noqa: E402
from plot_hf.recipe import load_recipe  # noqa: E402
from plot_hf.train import run  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_lt.yaml"
REFERENCE_OPTIMISER = [
    "--weight_decay_all_parameters", "true", "--lr_schedule_timing", "epoch_start", "--train_drop_last", "true",
    "--max_grad_norm", "0.0", "--model_args", '{"classifier_init": "torch_default"}',
]
REFERENCE_MIXUP = [*REFERENCE_OPTIMISER, "--mixup_alpha", "1.0", "--moo_loss", "first_label"]
SETTINGS: dict[str, list[str]] = {
    "digits_lt.yaml (plot-hf defaults)": [],
    "reference optimiser": REFERENCE_OPTIMISER,
    "reference optimiser + mixup, first-label loss (reference)": REFERENCE_MIXUP,
    "  - departure: moo_loss=mixup": [*REFERENCE_MIXUP, "--moo_loss", "mixup"],
    "  - departure: Trainer's weight-decay rule": [*REFERENCE_MIXUP, "--weight_decay_all_parameters", "false"],
    "  - departure: lr_schedule_timing=epoch_end": [*REFERENCE_MIXUP, "--lr_schedule_timing", "epoch_end"],
    "  - departure: last batch kept": [*REFERENCE_MIXUP, "--train_drop_last", "false"],
    "  - departure: Kaiming classifier init": [*REFERENCE_MIXUP, "--model_args", '{"classifier_init": "kaiming_normal"}'],
    "  - departure: gradients clipped to norm 1 (Trainer's default)": [*REFERENCE_MIXUP, "--max_grad_norm", "1.0"],
    "  - the reference's ResNet-32 copy (5/5/4 blocks)": [
        *REFERENCE_MIXUP, "--model_args", '{"classifier_init": "torch_default", "blocks_per_stage": [5, 5, 4]}'],
}
QUIET = ["--eval_strategy", '"no"', "--save_strategy", '"no"', "--metric_for_best_model", "null",
         "--report_to", "none", "--logging_strategy", '"no"']
# One-step departures: PLOTConfig overrides against the reference's settings of the step.
STEP_DEPARTURES: dict[str, dict] = {
    "moo_loss=mixup (mixup loss at the perturbed point)": {"moo_loss": "mixup"},
    "moo_gradient_method=sketch, d=16": {"moo_gradient_method": "sketch", "moo_sketch_dim": 16},
    "moo_anchor=uniform": {"moo_anchor": "uniform"},
}


def _digits_batch(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A batch drawn from a long-tailed digits subset (110 ... 11 images per class), as 3 x 8 x 8 floats."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = (110 * 10 ** (-np.arange(10) / 9)).astype(int)
    rows = np.concatenate([rng.permutation(np.flatnonzero(digits.target == k))[:n] for k, n in enumerate(counts)])
    picked = rng.choice(rows, size=size, replace=False)
    images = np.repeat((digits.images[picked] / 16.0 - 0.5)[:, None], 3, axis=1).astype(np.float32)
    return images, digits.target[picked].astype(np.int64), counts.tolist()


def _one_step_update(model, images, labels, counts, seed: int, **overrides) -> dict[str, torch.Tensor]:
    from datasets import Dataset

    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dataset = Dataset.from_dict({"pixel_values": list(images), "labels": labels.tolist()}).with_format("torch")
    options = dict(
        use_cpu=True, seed=seed, report_to=[], save_strategy="no", disable_tqdm=True, num_train_epochs=1,
        per_device_train_batch_size=len(labels), learning_rate=0.1, lr_scheduler_type="constant", optim="sgd",
        weight_decay=0.0, max_grad_norm=0.0, moo_until_epoch=30, sam_rho=1e-4, sam_keep_fraction=0.0,
        vc_weight=0.02, mixup_alpha=1.0, moo_loss="first_label", class_counts=counts, moo_gradient_method="loop",
    )
    options.update(overrides)
    with tempfile.TemporaryDirectory() as folder:
        args = PLOTConfig(output_dir=folder, **options)
        PLOTTrainer(model=model, args=args, train_dataset=dataset).train()
    return {n: (p.detach() - before[n]).reshape(-1) for n, p in model.named_parameters()}


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]) -> float:
    x, y = torch.cat([a[n] for n in names]).double(), torch.cat([b[n] for n in names]).double()
    return float(x @ y / (x.norm() * y.norm()).clamp_min(1e-30))


def step_cosines(seeds: int) -> dict[str, dict[str, list[float]]]:
    """Cosine between the reference's one-step update and each departure's, per seed."""
    print("| departure (one step, resnet32_cifar, digits-LT batch of 64, mixup) | cos layer3 mean (min) "
          "| cos other parameters mean (min) |\n|---|---|---|")
    out: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = create_image_classifier("resnet32_cifar", [str(k) for k in range(10)], input_size=(3, 8, 8))
        images, labels, counts = _digits_batch(seed)
        reference = _one_step_update(model, images, labels, counts, seed)
        stage = [n for n in reference if ".layer3." in n]
        other = [n for n in reference if n not in stage]
        for name, overrides in STEP_DEPARTURES.items():
            update = _one_step_update(model, images, labels, counts, seed, **overrides)
            entry = out.setdefault(name, {"layer3": [], "other": []})
            entry["layer3"].append(_cosine(reference, update, stage))
            entry["other"].append(_cosine(reference, update, other))
    for name, entry in out.items():
        cells = [f"{np.mean(v):.3f} ({np.min(v):.3f})" for v in (entry["layer3"], entry["other"])]
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)
    return out


def train_setting(name: str, seed: int, root: Path) -> dict[str, float | None]:
    folder = root / "".join(c if c.isalnum() else "_" for c in name.strip(" -")) / f"seed{seed}"
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        argv = [*QUIET, *SETTINGS[name], "--seed", str(seed), "--output_dir", str(folder)]
        run(load_recipe(RECIPE, argv))
    return last_metrics(json.loads(metrics_file.read_text()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per setting (0: skip training)")
    parser.add_argument("--step_seeds", type=int, default=5, help="seeds of the one-step cosines (0: skip)")
    parser.add_argument("--output_dir", default="outputs/fidelity_effects")
    parser.add_argument("--settings", default=",".join(map(str, range(len(SETTINGS)))),
                        help="comma-separated indices into SETTINGS (0-based, in the order printed)")
    args = parser.parse_args(argv)
    names = [list(SETTINGS)[int(i)] for i in args.settings.split(",") if i]
    summary: dict = {}
    start = time.perf_counter()
    if args.step_seeds:
        summary["step_cosines"] = step_cosines(args.step_seeds)
    if args.seeds:
        print(f"\n# digits-LT, {RECIPE.name}, {args.seeds} seeds, last-epoch test top-1 (%, mean +- sample std)\n")
        print("| setting | top-1 | many | medium | few |\n|---|---|---|---|---|")
        root = Path(args.output_dir)
        for name in names:
            runs = [train_setting(name, seed, root) for seed in range(args.seeds)]
            stats = {m: _stats([r[m] for r in runs]) for m in METRICS}
            summary[name] = {m: {"mean": mean, "std": std} for m, (mean, std) in stats.items()}
            print(f"| {name} | " + " | ".join(f"{stats[m][0]:.2f} ± {stats[m][1]:.2f}" for m in METRICS) + " |",
                  flush=True)
        root.mkdir(parents=True, exist_ok=True)
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
