"""Cost of a PLOT step against a plain step on a LayerNorm backbone (``python benchmarks/vit_step_cost.py``).

Setting: ViT-Tiny (timm ``vit_tiny_patch16_224``: 12 blocks, width 192, 3 heads) with 4-pixel patches at 32 x 32
(64 tokens + the class token), 100 classes, batch 128, every class present (a long-tailed batch). The PLOT step
is built as ``PLOTTrainer`` builds it: the default MOO stage (``blocks.11``), ``moo_gradient_method="auto"``
(which resolves to ``per_sample_split``: exact per-class gradients from one backward, LayerNorm normalising each
sample on its own), CAGrad (alpha 0.5, class-prior anchor), SAM (rho 1e-4), variability-collapse loss (0.02).

Printed side by side, in one run:

* time: median seconds per step over interleaved repetitions (after one warm-up step each), and the ratio to the
  plain step (forward + backward of the mean cross-entropy); optionally (``--loop``) the same PLOT step with one
  backward per class (``loop``), for comparison; and (``--index-add-split``) the same split step with each
  module's per-class gradients formed as per-sample products (``vmap``; a batched matmul for convolutions) summed
  by class with ``index_add``, the form the split's kernels replace (one product per class over its samples'
  rows for linear layers; sorted segment sums elsewhere);
* peak memory: growth of resident memory during two steps in a fresh process, sampled every millisecond (on the
  CPU that is tensor memory); on CUDA the growth of ``torch.cuda.max_memory_allocated``; and the ratio;
* fidelity: cosine between the MOO stage's update direction with the split and with per-class backward passes
  (``loop``), and between their K x P per-class gradient matrices (both exact: about 1.0);
* where the PLOT step's time goes: cProfile of one step, the functions with the most time of their own.

``--reps N`` sets the repetitions (default 3); ``--device cuda`` runs on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's plot_hf and `benchmarks`

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import plot_hf  # noqa: E402, F401
from benchmarks.step_cost import (  # noqa: E402
    Wrapper,
    class_counts,
    cuda_growth_of_two_steps,
    long_tailed_labels,
    plot_step,
    rss_growth_of_two_steps,
    run_plot,
    synchronize,
)
from plot_hf.models.introspection import resolve_gradient_method, resolve_moo_parameters  # noqa: E402
from plot_hf.moo import per_class_gradients, per_class_objectives  # noqa: E402
from plot_hf.moo import split as split_module  # noqa: E402
from plot_hf.moo.split import SplitCapture  # noqa: E402

SETTING = dict(classes=100, present=100, batch=128, image=32)
VIT = dict(img_size=32, patch_size=4)


def build_vit(num_classes: int, device: torch.device, seed: int = 0) -> Wrapper:
    torch.manual_seed(seed)
    return Wrapper(timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **VIT)).to(device).train()


def inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SETTING["batch"], 3, SETTING["image"], SETTING["image"], generator=generator)
    y = long_tailed_labels(SETTING["classes"], SETTING["present"], SETTING["batch"], seed=0)
    return x.to(device), y.to(device)


def plain_step(model: Wrapper, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def make_plot_step(model: Wrapper, method: str):
    """The PLOT step as the trainer builds it (``step_cost.plot_step``) on the default stage, with ``method``."""
    stage = resolve_moo_parameters(model, None).stage_name
    return plot_step(model, class_counts(SETTING["classes"]), stage, gradient_method=method)


INDEX_ADD = "PLOT (per_sample_split, per-sample products + index_add)"


def index_add_module_grads(module, params, inputs, deltas, groups, targets, chunk_size) -> None:
    """The comparison form of the split's per-module kernel: per-sample gradients (``vmap`` of a VJP; one batched
    matmul for convolutions), then ``index_add`` by class."""
    b = deltas.shape[0]
    if isinstance(module, torch.nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        cols = F.unfold(inputs, module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)
        dflat = deltas.reshape(b, deltas.shape[1], -1)
        per_sample = {"weight": torch.bmm(dflat, cols.transpose(1, 2)).reshape(b, *params["weight"].shape)}
        if params.get("bias") is not None:
            per_sample["bias"] = dflat.sum(dim=2)
    else:
        def sample_loss(p, a, d):
            return (torch.func.functional_call(module, p, (a.unsqueeze(0),)) * d.unsqueeze(0)).sum()

        per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(
            params, inputs, deltas)
    for name, g in per_sample.items():
        targets[name].add_(g.new_zeros(targets[name].shape).index_add(0, groups.positions, g))


def with_index_add_kernels(fn):
    def run(*args):
        kernel = split_module._add_per_class_module_grads
        split_module._add_per_class_module_grads = index_add_module_grads
        try:
            fn(*args)
        finally:
            split_module._add_per_class_module_grads = kernel

    return run


def variants(model: Wrapper, device: torch.device, with_loop: bool, with_index_add: bool = False) -> dict:
    auto = resolve_gradient_method(model, resolve_moo_parameters(model, None), "auto", device)
    if auto != "per_sample_split":
        raise SystemExit(f"`auto` resolved to {auto!r} on the ViT, expected per_sample_split.")
    found = {"plain step": plain_step}
    for method in ("per_sample_split", "loop") if with_loop else ("per_sample_split",):
        step = make_plot_step(model, method)
        found[f"PLOT ({method})"] = lambda m, x, y, step=step: run_plot(step, m, x, y)
    if with_index_add:
        step = make_plot_step(model, "per_sample_split")
        found[INDEX_ADD] = with_index_add_kernels(lambda m, x, y, step=step: run_plot(step, m, x, y))
    return found


def time_variants(reps: int, device: torch.device, with_loop: bool, with_index_add: bool) -> dict[str, float]:
    model = build_vit(SETTING["classes"], device)
    x, y = inputs(device)
    fns = variants(model, device, with_loop, with_index_add)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn(model, x, y)
    for _ in range(reps):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn(model, x, y)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def memory_child(name: str, device_name: str) -> float:
    """Peak memory growth (MiB) during two steps of ``name``, measured in this (fresh) process."""
    device = torch.device(device_name)
    model = build_vit(SETTING["classes"], device)
    x, y = inputs(device)
    fn = variants(model, device, with_loop=name.endswith("(loop)"), with_index_add=name == INDEX_ADD)[name]
    if device.type == "cuda":
        return cuda_growth_of_two_steps(fn, model, x, y, device)
    return rss_growth_of_two_steps(fn, model, x, y)


def peak_memory(name: str, device: torch.device) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", name, "--device", str(device)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def fidelity(device: torch.device) -> dict[str, float]:
    """Cosines of the split to per-class backward passes: the step's direction on the MOO stage, and the
    per-class gradient matrices (model in eval mode for the matrices: no randomness, same function)."""
    x, y = inputs(device)
    base = build_vit(SETTING["classes"], device)
    directions = {}
    for method in ("per_sample_split", "loop"):
        model = copy.deepcopy(base)
        run_plot(make_plot_step(model, method), model, x, y)
        moo = resolve_moo_parameters(model, None)
        directions[method] = torch.cat([p.grad.flatten() for p in moo.params]).double()
    model = copy.deepcopy(base).eval()
    moo = resolve_moo_parameters(model, None)
    split = SplitCapture(model, moo.stage_name, moo.names)
    with split.capture():
        losses = F.cross_entropy(model(x), y, reduction="none")
    classes, objectives = per_class_objectives(losses, y)
    looped = per_class_gradients(objectives, moo.params).double()
    params = dict(zip(moo.names, moo.params, strict=True))
    matrix = split.per_class_gradients(objectives, torch.searchsorted(classes, y), params).double()
    cos = torch.nn.functional.cosine_similarity
    return {
        "direction": cos(directions["per_sample_split"], directions["loop"], dim=0).item(),
        "per-class gradients (min over classes)": cos(matrix, looped, dim=1).min().item(),
    }


def profile_plot_step(device: torch.device, top: int) -> list[tuple[str, float, float]]:
    """Where one split PLOT step's time goes (cProfile): ``(function, own seconds, cumulative seconds)`` of the
    functions with the most time of their own (tensor kernels run inside them)."""
    model = build_vit(SETTING["classes"], device)
    x, y = inputs(device)
    step = make_plot_step(model, "per_sample_split")
    run_plot(step, model, x, y)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    run_plot(step, model, x, y)
    synchronize(device)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_, _, own, cumulative, _) in stats.items():
        short = f"{Path(file).parent.name}/{Path(file).name}:{func}" if line else func
        rows.append((short, own, cumulative))
    rows.sort(key=lambda row: -row[1])
    return rows[:top]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loop", action="store_true", help="also time the PLOT step with one backward per class")
    parser.add_argument("--index-add-split", action="store_true",
                        help="also time the split step with per-sample products summed by index_add")
    parser.add_argument("--top", type=int, default=14, help="rows of the profile")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.device)))
        return
    device = torch.device(args.device)
    print(f"# PLOT step on ViT-Tiny (patch 4, 32 px), {SETTING['classes']} classes ({SETTING['present']} present), "
          f"batch {SETTING['batch']}, device {device}, torch threads {torch.get_num_threads()}, reps {args.reps}\n")
    times = time_variants(args.reps, device, args.loop, args.index_add_split)
    memory = {name: peak_memory(name, device) for name in times}
    plain_t, plain_m = times["plain step"], memory["plain step"]
    print("| variant | s / step | / plain | peak MiB | / plain |\n|---|---|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.3f} | {seconds / plain_t:.2f}x | {memory[name]:.0f} | "
              f"{memory[name] / plain_m:.2f}x |")
    print("\n## fidelity of the split (cosine to per-class backward passes)\n")
    for name, value in fidelity(device).items():
        print(f"- {name}: {value:.6f}")
    print("\n## where one PLOT (per_sample_split) step spends its time (cProfile: own s, cumulative s)\n")
    for name, own, cumulative in profile_plot_step(device, args.top):
        print(f"- {own:7.3f} {cumulative:7.3f}  {name}")


if __name__ == "__main__":
    main()
