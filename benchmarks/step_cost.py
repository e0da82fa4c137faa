"""Cost, memory and fidelity of the PLOT step's modes against a vanilla step (``python benchmarks/step_cost.py``).

In one process, variants are interleaved over several repetitions and their medians reported as ratios to a
vanilla step (forward + backward): the reference-style step (K ``autograd.grad`` calls on the full retained
graph, scipy SLSQP CAGrad with finite differences, SAM with a full re-forward, as METHOD.md describes); exact
mode (loop, batched; and the loop with the MOO parameters narrowed to the stage's last block, ``moo_modules``); the
cheap modes (sketch, amortised solving, class groups, one-pass per-sample split on the GroupNorm ResNet) and
combinations; at 10 and 100 classes (CIFAR ResNet-32, batch 128, 32x32; at 100 classes
76 classes present, long-tailed). Then peak memory per step (resident-memory growth during two steps in a
fresh subprocess, sampled at 1 kHz; on the CPU that is tensor memory), the projected whole-training overhead of the
CIFAR-100-LT recipe, a solver table (objective gaps to Clarabel), and a fidelity table (cosine of each mode's CAGrad
direction ``G^T lambda`` to the exact one on a partly trained network). ``--quick``: tiny sizes (for tests).

``--device cuda``: models, inputs and the fidelity table on the GPU (the solver table's Gramians start there
and are copied to the host by the solvers), each timed call followed by ``torch.cuda.synchronize``; the default mode there is the one ``moo_gradient_method="auto"`` picks
on an accelerator (exact, batched); peak memory is the growth of ``torch.cuda.max_memory_allocated`` (in
process). ``--skip timing,memory,fidelity,solvers`` leaves tables out (without
the timing: no overhead table and no last line); ``--classes 100`` runs one class count only.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's plot_hf and `benchmarks`

import numpy as np
import timm
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

import plot_hf  # noqa: F401
from plot_hf import PLOTConfig
from plot_hf.models.introspection import class_prior_anchor, resolve_gradient_method, resolve_moo_parameters
from plot_hf.moo import per_class_gradients, per_class_objectives
from plot_hf.moo.class_groups import frequency_groups, group_anchor_table
from plot_hf.moo.sketch import frozen_batch_stats, sketch_gramian
from plot_hf.moo.solvers import CAGrad
from plot_hf.step import PLOTStep, build_plot_step

SKIPPABLE = ("timing", "memory", "fidelity", "solvers")
LAST_BLOCK = "last block only (loop)"  # moo_modules = the last block of layer3: exact, on fewer parameters
BOUND_MIB = 256  # moo_chunk_memory_mb of the memory-bounded batched variant
BOUNDED = f"exact (batched, {BOUND_MIB} MiB bound)"
CPU = torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA kernels run asynchronously): call it before reading the
    clock or the memory counters. A no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_mode(arch: str, device: torch.device) -> str:
    """The variant that ``moo_gradient_method="auto"`` resolves to for this BN ResNet on ``device``, as the
    trainer resolves it: "exact (loop)" on a CPU, "exact (batched)" on an accelerator."""
    model = build(arch, 10)
    method = resolve_gradient_method(model, resolve_moo_parameters(model, ["net.layer3"]), "auto", device)
    return f"exact ({method})"


def group_count(num_classes: int) -> int:
    """Class groups of the "groups" variants: 10 from 20 classes on, else about a third of the classes."""
    return 10 if num_classes >= 20 else max(2, num_classes // 3)


class Wrapper(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


def sizes(quick: bool) -> dict:
    if quick:
        return dict(arch="resnet20_cifar", batch=16, image=8, classes=(4, 12), present=(4, 8), reps=1,
                    pretrain=1, fid_batches=2, solver_ks=(5, 20), sketch_dim=4, mem=False)
    return dict(arch="resnet32_cifar", batch=128, image=32, classes=(10, 100), present=(10, 76), reps=5,
                pretrain=200, fid_batches=5, solver_ks=(10, 100, 300, 1000), sketch_dim=64, mem=True)


def class_counts(num_classes: int, imbalance: float = 100.0) -> list[int]:
    return [max(1, int(500 * imbalance ** (-k / max(num_classes - 1, 1)))) for k in range(num_classes)]


def long_tailed_labels(num_classes: int, present: int, batch: int, seed: int) -> torch.Tensor:
    """``present`` classes appear (each at least once); the rest of the batch follows the LT profile."""
    rng = np.random.default_rng(seed)
    present = min(present, batch)
    p = np.array(class_counts(num_classes), dtype=float)[:present]
    rest = rng.choice(present, size=batch - present, p=p / p.sum())
    labels = np.concatenate([np.arange(present), rest])
    return torch.as_tensor(rng.permutation(labels))


def build(arch: str, num_classes: int, norm: str = "batch", seed: int = 0) -> Wrapper:
    torch.manual_seed(seed)
    return Wrapper(timm.create_model(arch, num_classes=num_classes, norm=norm)).train()


# ------------------------------------------------------------------------------------------------ steps
def vanilla_step(model: Wrapper, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def slsqp_cagrad(a: np.ndarray, anchor: np.ndarray, alpha: float = 0.5, starts: int = 1) -> np.ndarray:
    """The reference's CAGrad: scipy SLSQP on the simplex, gradients by finite differences."""
    k = a.shape[0]
    c = alpha * math.sqrt(max(a.mean(), 0) + 1e-8)
    best, best_val = anchor, math.inf
    rng = np.random.default_rng(0)
    for s in range(starts):
        x0 = anchor if s == 0 else rng.dirichlet(np.ones(k))

        def fun(w: np.ndarray) -> float:
            return float(w @ a @ anchor + c * math.sqrt(max(w @ a @ w, 0) + 1e-8))

        res = minimize(fun, x0, bounds=[(0, 1)] * k, constraints={"type": "eq", "fun": lambda w: 1 - w.sum()},
                       method="SLSQP", options={"maxiter": 200})
        if res.fun < best_val:
            best, best_val = res.x, res.fun
    return best


def reference_step(model: Wrapper, x: torch.Tensor, y: torch.Tensor, anchor_table: torch.Tensor,
                   rho: float = 1e-4, vc_weight: float = 0.02) -> None:
    """METHOD.md's step: SAM, full re-forward, total backward, K autograd.grad calls, SLSQP, written to .grad."""
    model.zero_grad(set_to_none=True)
    named = dict(model.named_parameters())
    stage = [n for n in named if ".layer3." in n]
    params = [named[n] for n in stage]
    clean = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(clean, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    eps = [rho * g / norm for g in grads]
    with torch.no_grad():
        for p, e in zip(params, eps, strict=True):
            p.add_(e)
    losses = F.cross_entropy(model(x), y, reduction="none")
    classes = y.unique()
    stds = [losses[y == c].std() for c in classes if (y == c).sum() >= 2]
    total = losses.mean() + vc_weight * (torch.stack(stds).mean() if stds else 0.0)
    total.backward(retain_graph=True)
    rows = []
    for c in classes:
        g = torch.autograd.grad(losses[y == c].sum() / len(y), params, retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    G = torch.stack(rows)
    a = (G @ G.T).double().cpu().numpy()  # SLSQP on the host (a copy from the GPU on CUDA)
    anchor = anchor_table[classes.cpu()].double().numpy()
    w = slsqp_cagrad(a, anchor / anchor.sum())
    gw = torch.as_tensor(w, dtype=G.dtype, device=G.device) @ G
    g0 = G.mean(0)
    c = 0.5 * g0.norm()
    d = (g0 + c / (gw.norm() + 1e-8) * gw) / (1 + 0.5**2) * len(classes)
    with torch.no_grad():
        for p, piece, e in zip(params, torch.split(d, [p.numel() for p in params]), eps, strict=True):
            p.grad = piece.view_as(p).clone()
            p.sub_(e)


def last_block(model: Wrapper) -> str:
    """The module name of the last residual block of the last stage (``net.layer3.4`` in ResNet-32)."""
    return f"net.layer3.{len(model.net.layer3) - 1}"


def plot_step(model: Wrapper, counts: list[int], stage: str = "net.layer3", **kwargs) -> PLOTStep:
    """The step as ``PLOTTrainer`` builds it (:func:`plot_hf.step.build_plot_step`), ``host_reads`` left unset, so
    that the step resolves it from the inputs' device (host reads on a CPU; on CUDA only the classes present and the
    solver's copy of the Gramian). ``stage``: the module holding the MOO parameters (``moo_modules``); the other
    keyword arguments name the step's options (``gradient_method``, ``chunk_size``, ``chunk_memory_mb``,
    ``sketch_dim``, ``groups``, ``solve_every``)."""
    options = {"gradient_method": "moo_gradient_method", "chunk_size": "moo_chunk_size", "groups": "moo_class_groups",
               "chunk_memory_mb": "moo_chunk_memory_mb", "sketch_dim": "moo_sketch_dim", "solve_every": "moo_solve_every"}
    config = PLOTConfig(report_to="none", moo_modules=[stage], moo_solver="cagrad", cagrad_alpha=0.5, cagrad_rescale=1,
                        sam_rho=1e-4, sam_keep_fraction=0.0, vc_weight=0.02,
                        **{options[key]: value for key, value in kwargs.items()})
    return build_plot_step(config, model, counts)


def run_plot(step: PLOTStep, model: Wrapper, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    step.run(model, x, y, lambda logits: F.cross_entropy(logits, y, reduction="none"))


def variants(cfg: dict, num_classes: int) -> dict:
    """name -> (norm, factory(model, counts) -> callable(model, x, y), steps per timed call)."""
    d, chunk = cfg["sketch_dim"], 32
    groups = group_count(num_classes)
    v = {
        "vanilla": ("batch", lambda m, c: vanilla_step, 1),
        "reference-style": ("batch", lambda m, c: _bind_reference(class_prior_anchor(c)), 1),
        "exact (loop)": ("batch", lambda m, c: _bind(plot_step(m, c, gradient_method="loop")), 1),
        "exact (batched)": ("batch", lambda m, c: _bind(plot_step(m, c, gradient_method="batched")), 1),
        LAST_BLOCK: ("batch", lambda m, c: _bind(plot_step(m, c, last_block(m), gradient_method="loop")), 1),
        f"exact (batched, chunk {chunk})": ("batch", lambda m, c: _bind(plot_step(m, c, gradient_method="batched", chunk_size=chunk)), 1),
        BOUNDED: ("batch", lambda m, c: _bind(plot_step(m, c, gradient_method="batched", chunk_memory_mb=BOUND_MIB)), 1),
        f"sketch d={d}": ("batch", lambda m, c: _bind(plot_step(m, c, gradient_method="sketch", sketch_dim=d, chunk_size=16)), 1),
        f"groups {groups}": ("batch", lambda m, c: _bind(plot_step(m, c, gradient_method="loop", groups=groups)), 1),
        "amortised k=10": ("batch", lambda m, c: _bind(plot_step(m, c, gradient_method="loop", solve_every=10)), 10),
        f"groups {groups} + amortised k=4": ("batch", lambda m, c: _bind(plot_step(m, c, gradient_method="loop", groups=groups, solve_every=4)), 4),
        "vanilla (GN)": ("group", lambda m, c: vanilla_step, 1),
        "per_sample_split (GN)": ("group", lambda m, c: _bind(plot_step(m, c, gradient_method="per_sample_split")), 1),
        "per_sample_split + amortised k=4 (GN)": ("group", lambda m, c: _bind(plot_step(m, c, gradient_method="per_sample_split", solve_every=4)), 4),
    }
    return v


def _bind_reference(table: torch.Tensor):
    return lambda model, x, y: reference_step(model, x, y, table)


def _bind(step: PLOTStep):
    return lambda model, x, y: run_plot(step, model, x, y)


def time_variants(cfg: dict, num_classes: int, present: int, only: list[str] | None = None,
                  device: torch.device = CPU) -> dict[str, float]:
    counts = class_counts(num_classes)
    x = torch.randn(cfg["batch"], 3, cfg["image"], cfg["image"], generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    y = long_tailed_labels(num_classes, present, cfg["batch"], seed=0).to(device)
    table = variants(cfg, num_classes)
    names = [n for n in table if only is None or n in only]
    models = {n: build(cfg["arch"], num_classes, table[n][0]).to(device) for n in names}
    fns = {n: table[n][1](models[n], counts) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up (and the first amortised solve); not in quick mode
        if cfg["reps"] > 1:
            fns[n](models[n], x, y)
            synchronize(device)
    for _ in range(cfg["reps"]):
        for n in names:
            per_call = table[n][2]
            start = time.perf_counter()
            for _ in range(per_call):
                fns[n](models[n], x, y)
            synchronize(device)  # the clock is read once the device has finished the calls
            times[n].append((time.perf_counter() - start) / per_call)
    return {n: statistics.median(t) for n, t in times.items()}


# ------------------------------------------------------------------------------------------------ memory
def peak_memory(cfg: dict, name: str, num_classes: int, present: int) -> float:
    """Peak growth of resident memory (MiB) over two steps of ``name``, in a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        f"import json,sys; sys.path.insert(0, {root!r}); from benchmarks import step_cost as s;"
        f"print(json.dumps(s._memory_child(json.loads({json.dumps(cfg)!r}), {name!r}, {num_classes}, {present})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory_child(cfg: dict, name: str, num_classes: int, present: int) -> float:
    """Peak resident-memory growth (MiB) during two steps, sampled every millisecond by a thread (ru_maxrss
    would include the peak of the imports)."""
    counts = class_counts(num_classes)
    x = torch.randn(cfg["batch"], 3, cfg["image"], cfg["image"])
    y = long_tailed_labels(num_classes, present, cfg["batch"], seed=0)
    norm, factory, _ = variants(cfg, num_classes)[name]
    model = build(cfg["arch"], num_classes, norm)
    return rss_growth_of_two_steps(factory(model, counts), model, x, y)


def rss_growth_of_two_steps(fn, model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak resident-memory growth (MiB) while ``fn(model, x, y)`` runs twice, sampled every millisecond by a
    thread (on the CPU that is tensor memory)."""
    base = _rss_mib()
    peak, running = [base], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(2):
        fn(model, x, y)
    running[0] = False
    sampler.join()
    return max(peak[0], _rss_mib()) - base


def cuda_peak_memory(cfg: dict, name: str, num_classes: int, present: int, device: torch.device) -> float:
    """Peak growth of allocated CUDA memory (MiB) over two steps of ``name``, in this process. Unlike RSS,
    this needs no fresh process: the allocator's counters count the bytes of live tensors only (not the
    imports, not the cache it keeps reserved); the previous variant's model and step are freed when this is
    called; what persists from earlier work (cuBLAS workspaces, made by the timing tables) is in the baseline,
    read once this variant's model and inputs are on the device. The gradients, made by the first step, count
    (as in RSS)."""
    counts = class_counts(num_classes)
    x = torch.randn(cfg["batch"], 3, cfg["image"], cfg["image"]).to(device)
    y = long_tailed_labels(num_classes, present, cfg["batch"], seed=0).to(device)
    norm, factory, _ = variants(cfg, num_classes)[name]
    model = build(cfg["arch"], num_classes, norm).to(device)
    fn = factory(model, counts)
    gc.collect()  # what earlier variants left in reference cycles is freed now, not during the two steps
    return cuda_growth_of_two_steps(fn, model, x, y, device)


def cuda_growth_of_two_steps(fn, model, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Growth (MiB) of ``torch.cuda.max_memory_allocated`` while ``fn(model, x, y)`` runs twice."""
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        fn(model, x, y)
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# ------------------------------------------------------------------------------------------------ solvers
def solver_table(ks: tuple[int, ...], device: torch.device = CPU) -> list[tuple]:
    """(family, K, solver, median ms of 3, objective gap, constraint violation) per registered solver:
    ``benchmarks/solver_table.py``'s rows (gaps to Clarabel; EPO's LP to Clarabel's). On CUDA the Gramian starts
    on the device, and the timed call includes its one copy to the host."""
    from benchmarks.solver_table import FAMILIES, rows  # Clarabel: this table only

    return rows(list(FAMILIES), list(ks), reps=3, device=device)


# ------------------------------------------------------------------------------------------------ fidelity
def _cagrad(gram: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """CAGrad's coefficients (alpha 0.5, the reference's rescale) in the Gramian's dtype and device."""
    return CAGrad()(gram, anchor=anchor).coefficients


@contextmanager
def constant_batch_stats(model: torch.nn.Module) -> Iterator[None]:
    """Train-mode batch norms normalise with the batch statistics held constant (detached): the network becomes
    sample-separable, and its per-class gradients leave out the statistics' term (benchmarks/README.md, "Why batch norm")."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training]

    def constant(x: torch.Tensor, m: torch.nn.BatchNorm2d) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3)).detach()[None, :, None, None]
        var = x.var(dim=(0, 2, 3), unbiased=False).detach()[None, :, None, None]
        return (x - mean) / torch.sqrt(var + m.eps) * m.weight[None, :, None, None] + m.bias[None, :, None, None]

    for m in norms:
        m.forward = lambda x, m=m: constant(x, m)  # instance attribute shadows the class method
    try:
        yield
    finally:
        for m in norms:
            del m.forward


def objectives_with(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, position: torch.Tensor,
                    k: int) -> torch.Tensor:
    """The K class objectives ``L_k = sum_{i in k} l_i / B`` of one forward of ``model``."""
    losses = F.cross_entropy(model(x), y, reduction="none")
    return losses.new_zeros(k).index_add(0, position, losses) / len(y)


def fidelity(cfg: dict, num_classes: int, present: int, device: torch.device = CPU) -> dict[str, float]:
    """Median cosine of each mode's CAGrad direction to the exact one, on a partly trained ResNet (BN). On
    CUDA everything runs on the device (the random draws are made on the host, as on a CPU)."""
    counts = class_counts(num_classes)
    model = build(cfg["arch"], num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    protos = torch.randn(num_classes, 3, cfg["image"], cfg["image"], generator=gen).to(device)

    def batch(seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = long_tailed_labels(num_classes, present, size, seed)
        noise = torch.randn(size, 3, cfg["image"], cfg["image"], generator=torch.Generator().manual_seed(seed))
        y = y.to(device)
        return protos[y] + 1.5 * noise.to(device), y

    for i in range(cfg["pretrain"]):  # synthetic long-tailed data: class prototypes + noise
        x, y = batch(1000 + i, min(cfg["batch"], 64))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    table = class_prior_anchor(counts)
    groups = group_count(num_classes)
    class_to_group = frequency_groups(counts, groups)
    group_table = group_anchor_table(table, class_to_group).to(device)
    table, class_to_group = table.to(device), class_to_group.to(device)
    names = [n for n, _ in model.named_parameters() if ".layer3." in n]
    cos: dict[str, list[float]] = {}
    stale = None
    for b in range(cfg["fid_batches"]):
        x, y = batch(b, cfg["batch"])
        params = [dict(model.named_parameters())[n] for n in names]
        buffers = {n: t.clone() for n, t in model.named_buffers()}
        classes, _ = per_class_objectives(torch.zeros(len(y), device=device), y)
        position, k = torch.searchsorted(classes, y), classes.numel()

        def objectives_of(values, x=x, y=y, position=position, k=k, buffers=buffers):
            with frozen_batch_stats(model):
                out = torch.func.functional_call(model, {**buffers, **dict(zip(names, values, strict=True))}, (x,))
            losses = F.cross_entropy(out, y, reduction="none")
            return losses.new_zeros(k).index_add(0, position, losses) / len(y)

        objectives = objectives_of(params)
        G = per_class_gradients(objectives, params).double()
        anchor = table[classes] / table[classes].sum()
        lam = _cagrad(G @ G.T, anchor=anchor)
        exact = lam @ G

        def add(name: str, direction: torch.Tensor, exact: torch.Tensor = exact) -> None:
            cos.setdefault(name, []).append(float(F.cosine_similarity(direction, exact, dim=0)))

        for d in sorted({4, 16, cfg["sketch_dim"], 4 * cfg["sketch_dim"]}):
            sk, _ = sketch_gramian(objectives_of, params, d, chunk_size=16,
                                   generator=torch.Generator().manual_seed(b))
            add(f"sketch d={d}", _cagrad(sk.double(), anchor=anchor) @ G)
        gid = class_to_group[classes]
        gids = gid.unique()
        Gg = torch.zeros(gids.numel(), G.shape[1], dtype=G.dtype, device=G.device).index_add(
            0, torch.searchsorted(gids, gid), G)
        ga = group_table[gids] / group_table[gids].sum()
        add(f"groups {groups}", _cagrad(Gg @ Gg.T, anchor=ga) @ Gg)
        add("plain mean (no MOO)", G.sum(0))
        # MOO on the last block only: CAGrad on that block's columns of G, the plain mean on the other blocks
        prefix = last_block(model) + "."
        block = torch.cat([torch.full((p.numel(),), n.startswith(prefix), device=G.device)
                           for n, p in zip(names, params, strict=True)])
        narrow = G.sum(0)
        narrow[block] = _cagrad(G[:, block] @ G[:, block].T, anchor=anchor) @ G[:, block]
        add(f"{LAST_BLOCK}: layer3 direction", narrow)
        add(f"{LAST_BLOCK}: within the block", narrow[block], exact[block])
        with constant_batch_stats(model):  # the BN statistics as constants: sample-separable, one pass in principle
            constant = per_class_gradients(objectives_with(model, x, y, position, k), params).double()
        add("BN statistics as constants", _cagrad(constant @ constant.T, anchor=anchor) @ constant)
        add("BN constants: coefficients on the exact G", _cagrad(constant @ constant.T, anchor=anchor) @ G)
        if stale is None:
            stale = (classes, lam)
        else:  # amortised: coefficients solved b steps earlier, looked up by class (1.0 if absent then)
            table_lam = torch.ones(num_classes, dtype=G.dtype, device=G.device)
            table_lam[stale[0]] = stale[1]
            add(f"amortised (stale {b} step{'s' if b > 1 else ''})", table_lam[classes] @ G)
        opt.zero_grad()  # a plain SGD step between batches: the network moves on
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {n: statistics.median(v) for n, v in cos.items()}


# ------------------------------------------------------------------------------------------------ main
def skip_list(value: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in value.split(",") if n.strip())
    unknown = sorted(names - set(SKIPPABLE))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(SKIPPABLE)}")
    return names


def class_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in value.split(",") if n.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from err


def resolve_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, checked before any work (a clear error, not a failure halfway)."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        parser.error(f"--device {name}: {err}")
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        parser.error(f"--device {name}: only cpu and cuda[:N] are supported")
    if not torch.cuda.is_available():
        why = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        parser.error(f"--device {name}: CUDA is not available here (torch {torch.__version__}, {why})")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        parser.error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (for tests)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 5; quick 1)")
    parser.add_argument("--pretrain", type=int, default=None, help="SGD steps before the fidelity table")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--skip", type=skip_list, action="append", default=[],
                        help=f"comma-separated tables to leave out: {','.join(SKIPPABLE)} (may be repeated)")
    parser.add_argument("--classes", type=class_list, default=None,
                        help="comma-separated class counts to run, among the size's (default: all; 10,100)")
    args = parser.parse_args(argv)
    device = resolve_device(parser, args.device)
    skip = frozenset().union(*args.skip)
    cfg = sizes(args.quick)
    cfg.update({k: v for k, v in (("reps", args.reps), ("pretrain", args.pretrain)) if v is not None})
    if args.classes is not None:
        if not args.classes or not set(args.classes) <= set(cfg["classes"]):
            parser.error(f"--classes {','.join(map(str, args.classes))}: choose among "
                         f"{','.join(map(str, cfg['classes']))}")
        keep = [i for i, c in enumerate(cfg["classes"]) if c in args.classes]
        cfg["classes"] = tuple(cfg["classes"][i] for i in keep)
        cfg["present"] = tuple(cfg["present"][i] for i in keep)
    if args.threads:
        torch.set_num_threads(args.threads)
    default = default_mode(cfg["arch"], device)  # also "exact" in the last line: the exact mode "auto" picks
    on = "cpu" if device.type == "cpu" else (
        f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}), default mode {default}")
    print(f"# step cost: {cfg['arch']}, batch {cfg['batch']}, {cfg['image']}x{cfg['image']}, {on}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {cfg['reps']} interleaved reps (medians)")
    ratios: dict[int, dict[str, float]] = {}
    if "timing" not in skip:
        for num_classes, present in zip(cfg["classes"], cfg["present"], strict=True):
            med = time_variants(cfg, num_classes, present, device=device)
            ratios[num_classes] = {n: t / med["vanilla"] for n, t in med.items()}
            print(f"\n## {num_classes} classes ({present} present in the batch)\n")
            print("| variant | median step (s) | / vanilla (BN) | / vanilla (GN) |\n|---|---|---|---|")
            for n, t in med.items():
                gn = f"{t / med['vanilla (GN)']:.2f}x" if "GN" in n else ""
                print(f"| {n} | {t:.3f} | {t / med['vanilla']:.2f}x | {gn} |")
            sys.stdout.flush()
        big = cfg["classes"][-1]
        plot_epochs, epochs = 30, 200  # recipes/cifar100_lt.yaml: moo_until_epoch 30 of num_train_epochs 200
        print(f"\n## whole-training overhead of the CIFAR-100-LT recipe (PLOT for {plot_epochs} of {epochs} epochs), "
              f"projected from the step ratios at {big} classes\n")
        print("| mode | PLOT step / vanilla | training / vanilla |\n|---|---|---|")
        for n in dict.fromkeys((default, "exact (loop)", "exact (batched)", LAST_BLOCK, "per_sample_split (GN)")):
            if n in ratios[big]:
                step_ratio = ratios[big][n] / (ratios[big]["vanilla (GN)"] if "GN" in n else 1.0)
                overall = (plot_epochs * step_ratio + epochs - plot_epochs) / epochs
                print(f"| {n}{' (default)' if n == default else ''} | {step_ratio:.2f}x | {overall:.2f}x |")
    if cfg["mem"] and "memory" not in skip:
        big, present = cfg["classes"][-1], cfg["present"][-1]
        how = ("RSS growth over 2 steps, sampled at 1 kHz, fresh process" if device.type == "cpu" else
               "growth of torch.cuda.max_memory_allocated over 2 steps, in process")
        print(f"\n## peak memory per step, {big} classes ({how})\n")
        print("| variant | peak MiB | / vanilla |\n|---|---|---|")
        mem = {}
        for n in ("vanilla", "reference-style", "exact (loop)", "exact (batched)", "exact (batched, chunk 32)", BOUNDED,
                  LAST_BLOCK,
                  f"sketch d={cfg['sketch_dim']}", f"groups {group_count(big)}", "amortised k=10",
                  "vanilla (GN)", "per_sample_split (GN)"):
            if device.type == "cpu":
                mem[n] = peak_memory(cfg, n, big, present)
            else:
                mem[n] = cuda_peak_memory(cfg, n, big, present, device)
            base = mem["vanilla (GN)"] if "GN" in n and "vanilla (GN)" in mem else mem["vanilla"]
            print(f"| {n} | {mem[n]:.0f} | {mem[n] / base:.2f}x |")
            sys.stdout.flush()
    if "solvers" not in skip:
        on = "CPU" if device.type == "cpu" else f"host, the Gramian copied from {device}"
        print(f"\n## solvers (float64 {on}, median of 3 ms; gap = relative objective excess over Clarabel, "
              f"< 0: ours lower; viol: EPO's largest constraint violation)\n")
        print("| Gramian | K | solver | ms | gap | viol |\n|---|---|---|---|---|---|")
        for family, k, name, ms, gap, violation in solver_table(cfg["solver_ks"], device):
            print(f"| {family} | {k} | {name} | {ms:.1f} | {gap:.1e} | {violation:.1e} |")
        sys.stdout.flush()
    if "fidelity" not in skip:
        on = "" if device.type == "cpu" else f", on {device}"
        print(f"\n## fidelity: median cosine to the exact CAGrad direction ({cfg['pretrain']} SGD steps of "
              f"pre-training, {cfg['fid_batches']} batches{on})\n")
        fids = {c: fidelity(cfg, c, p, device) for c, p in zip(cfg["classes"], cfg["present"], strict=True)}
        names = list(dict.fromkeys(n for f in fids.values() for n in f))
        print("| mode | " + " | ".join(f"{c} classes" for c in fids) + " |\n|---|" + "---|" * len(fids))
        for n in names:
            print(f"| {n} | " + " | ".join(f"{fids[c].get(n, float('nan')):.4f}" for c in fids) + " |")
        exact = ["exact (tests: 1e-5)"] + ["exact"] * (len(fids) - 1)
        print("| per_sample_split (GN) | " + " | ".join(exact) + " |")
    if "timing" in skip:
        return
    r = ratios[big]
    if device.type != "cpu":
        print(f"\n(on {device.type}, both the default mode and \"exact\" below are {default}: "
              f"moo_gradient_method \"auto\" on an accelerator; on a CPU both are exact (loop))")
    print(f"\ndefault-mode step / vanilla step at {big} classes: {r[default]:.2f}x "
          f"(exact: {r[default]:.2f}x, reference-style: {r['reference-style']:.2f}x)")


if __name__ == "__main__":
    main()
