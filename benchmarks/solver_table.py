"""The solver table: time and accuracy of every registered solver (``python benchmarks/solver_table.py``).

For each Gramian family and K (default 10 / 100 / 300 / 1000) and each solver of
:data:`plot_hf.moo.solvers.SOLVERS` with its default hyperparameters: the median wall time (ms) of
``--reps`` calls on a float64 CPU Gramian (the whole call: checks, solve, coefficients), and the objective
gap to an independent high-accuracy reference (:mod:`benchmarks.references`: Clarabel's interior-point method):

- ``cagrad``: ``(F(w) - F*) / |F*|`` for CAGrad's dual ``F`` (``w`` recovered from the coefficients);
- ``mgda``: ``(f(w) - f*) / max(f*, 1e-12 mean diag A)`` for ``f(w) = w^T A w``;
- ``epo``: ``(z* - z(alpha)) / |z*|`` on the linear program that the reference picks along EPO's chain of
  modes (balance, restricted descent, relaxed descent), and ``viol``, the largest violation of its constraints
  (rows scaled to unit max-norm).

Gap > 0: ours is worse; < 0: ours is better (within the reference's tolerance). Families: "common" (low rank
plus noise plus a shared direction, as real per-class gradients have), "random" (no shared direction: for K
>~ 300 the hull nearly contains 0) and "scaled" (nearly orthogonal gradients with norms over 4.5 decades, as
late in training: badly conditioned).

``--epo-highs`` adds the row ``epo-highs``: EPO with its linear programs solved by HiGHS
(``scipy.optimize.linprog(method="highs")``, the same row scaling and acceptance test) instead of its dual
simplex method, to compare the two LP solvers at equal accuracy.

``--baseline CHECKOUT`` also times the solvers of another checkout (its ``plot_hf/moo/solvers`` package,
loaded under another name; either API: registered functions returning the coefficients, or solver classes),
interleaving its calls with this checkout's, and prints both side by side with the ratio of the medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's plot_hf and `benchmarks`

import numpy as np
import torch

from benchmarks.references import (
    cagrad_dual_objective,
    clarabel_cagrad,
    clarabel_epo,
    clarabel_min_norm,
    gramian,
    scaled_gramian,
)
from plot_hf.moo.solvers import SOLVERS
from plot_hf.moo.solvers import _epo as epo_module

FAMILIES = ("common", "random", "scaled")
CPU = torch.device("cpu")


def coefficients(registry, name: str, a: torch.Tensor, anchor: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """The coefficients of the solver ``registry[name]`` with its default hyperparameters: a solver class (this
    checkout) or a function returning the coefficients (a baseline checkout's older API)."""
    entry = registry[name]
    if isinstance(entry, type):
        return entry()(a, anchor=anchor, losses=losses).coefficients
    return entry(a, anchor=anchor, losses=losses)


def highs_simplex_lp(cost: torch.Tensor, m_ge: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
    """``argmax cost^T x`` over ``{x >= 0, sum x = 1, m_ge x >= h}`` by HiGHS, with the dual simplex method's
    noise threshold (1e-11), row scaling and acceptance test (violation <= 1e-8); None if infeasible."""
    from scipy.optimize import linprog

    mat, rhs, k = m_ge.numpy(), h.numpy(), cost.numel()
    if len(rhs):
        size = np.abs(mat)
        noise = 1e-11 * max(float(size.max()), float(np.abs(rhs).max()))
        row = np.maximum(np.maximum(size.max(axis=1), np.abs(rhs)), noise + 1e-300)
        mat, rhs = np.where(size > noise, mat, 0.0) / row[:, None], np.where(np.abs(rhs) > noise, rhs, 0.0) / row
    c = cost.numpy() / max(float(np.abs(cost.numpy()).max()), 1e-300)
    tolerances = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
    result = linprog(-c, A_ub=-mat if len(rhs) else None, b_ub=-rhs if len(rhs) else None, A_eq=np.ones((1, k)),
                     b_eq=np.ones(1), bounds=(0.0, None), method="highs", options=tolerances)
    if result.status != 0:
        return None
    x = np.clip(result.x, 0.0, None) / np.clip(result.x, 0.0, None).sum()
    return None if len(rhs) and float((rhs - mat @ x).max()) > 1e-8 else torch.from_numpy(x)


class HighsEPO(SOLVERS["epo"]):
    """EPO with its LPs solved by :func:`highs_simplex_lp` (for the ``epo-highs`` row)."""

    def weights(self, gramian, anchor, losses):
        original = epo_module.solve_simplex_lp
        epo_module.solve_simplex_lp = highs_simplex_lp
        try:
            return super().weights(gramian, anchor, losses)
        finally:
            epo_module.solve_simplex_lp = original


def load_baseline(checkout: Path):
    """The ``SOLVERS`` registry of ``checkout/plot_hf/moo/solvers``, imported as the package ``baseline_solvers``."""
    path = checkout / "plot_hf" / "moo" / "solvers" / "__init__.py"
    spec = importlib.util.spec_from_file_location("baseline_solvers", path, submodule_search_locations=[str(path.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_solvers"] = module
    spec.loader.exec_module(module)
    return module.SOLVERS


def gap(name: str, lam: torch.Tensor, a: torch.Tensor, anchor: torch.Tensor, losses: torch.Tensor) -> tuple[float, float]:
    """``(objective gap, constraint violation)`` of the coefficients against the reference (see the module)."""
    k = a.shape[0]
    an, bn, ln = a.numpy(), anchor.numpy(), losses.numpy()
    if name == "cagrad":
        c = 0.5 * math.sqrt(float(a.mean()) + 1e-8) + 1e-8
        scaled = (lam * (1 + 0.5**2) - 1).clamp_min(0)  # = K c w / ||G^T w||: w up to its scale
        w = (scaled / scaled.sum()).numpy() if float(scaled.sum()) > 0 else bn
        ref = clarabel_cagrad(an, bn, c)
        return (cagrad_dual_objective(w, an, bn, c) - ref) / abs(ref), 0.0
    if name == "mgda":
        w = (lam / k).numpy()
        ref = clarabel_min_norm(an)
        return (float(w @ an @ w) - ref) / max(ref, 1e-12 * float(np.diag(an).mean())), 0.0
    if name.startswith("epo"):
        ref, cost, mat, rhs = clarabel_epo(an, ln, bn)
        alpha = (lam / k).numpy()
        scale = np.maximum(np.abs(mat).max(axis=1, initial=0.0), np.abs(rhs)) if len(rhs) else np.ones(0)
        violation = max([0.0, *((rhs - mat @ alpha) / np.maximum(scale, 1e-300)), *(-alpha), abs(alpha.sum() - 1)])
        return (ref - float(cost @ alpha)) / max(abs(ref), 1e-300), violation
    return float("nan"), float("nan")


def problem(family: str, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Gramian, anchor, losses)`` of the table's problem for ``family`` and ``k`` (float64 CPU)."""
    a = scaled_gramian(k, seed=k) if family == "scaled" else gramian(k, float(family == "common"), seed=k)
    anchor = torch.as_tensor(np.random.default_rng(k).dirichlet(np.ones(k)))
    losses = torch.rand(k, generator=torch.Generator().manual_seed(k), dtype=torch.float64) + 0.5
    return a, anchor, losses


def timed(registry, name: str, inputs: tuple, times: list[float], device: torch.device = CPU) -> torch.Tensor:
    """The coefficients (float64 CPU); appends the wall time of the call, inputs on ``device`` (on CUDA,
    synchronised before the clock is read)."""
    on_device = [v.to(device) for v in inputs]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    lam = coefficients(registry, name, *on_device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times.append(time.perf_counter() - start)
    return lam.double().cpu()


def rows(families: list[str], ks: list[int], reps: int, device: torch.device = CPU) -> list[tuple]:
    """``(family, K, solver, median ms, gap, violation)`` for every registered solver."""
    out = []
    for family in families:
        for k in ks:
            inputs = problem(family, k)
            for name in sorted(SOLVERS):
                times: list[float] = []
                for _ in range(reps):
                    lam = timed(SOLVERS, name, inputs, times, device)
                out.append((family, k, name, statistics.median(times) * 1e3, *gap(name, lam, *inputs)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="10,100,300,1000")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to compare with")
    parser.add_argument("--epo-highs", action="store_true", help="add EPO with HiGHS as its LP solver")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline) if args.baseline else None
    registry = dict(SOLVERS) | ({"epo-highs": HighsEPO} if args.epo_highs else {})
    names = sorted(registry)
    print(f"# solver table: float64 CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.reps} calls" + (f", interleaved with the baseline {args.baseline}" if baseline else ""))
    if baseline is None:
        print("| Gramian | K | solver | ms | gap | viol |\n|---|---|---|---|---|---|")
    else:
        print("| Gramian | K | solver | baseline ms | baseline gap | baseline viol | ms | gap | viol | ms / baseline |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for family in args.families.split(","):
        for k in (int(v) for v in args.ks.split(",")):
            inputs = problem(family, k)
            for name in names:
                ours, theirs = [], []
                for _ in range(args.reps):
                    lam_theirs = timed(baseline, name, inputs, theirs) if baseline and name in baseline else None
                    lam = timed(registry, name, inputs, ours)
                cells = [family, k, name]
                if lam_theirs is not None:
                    cells += [f"{statistics.median(theirs) * 1e3:.1f}", *(f"{v:.1e}" for v in gap(name, lam_theirs, *inputs))]
                elif baseline is not None:
                    cells += ["", "", ""]
                cells += [f"{statistics.median(ours) * 1e3:.1f}", *(f"{v:.1e}" for v in gap(name, lam, *inputs))]
                if baseline is not None:
                    cells.append(f"{statistics.median(ours) / statistics.median(theirs):.2f}" if theirs else "")
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
