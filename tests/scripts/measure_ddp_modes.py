"""Measure the cost of ``moo_ddp_reduce="gramian"``: the cosine between its direction and the exact mode's.

Simulated in one process: a long-tailed batch (10 classes, imbalance 10, 128 samples) is split into W "ranks";
each rank's per-class gradient matrix G^r (denominator: the global batch) of the MOO stage of a ResNet-32 (GN)
is computed; the exact direction solves ``G G^T`` with ``G = sum_r G^r``, the cheap one ``W sum_r G^r G^r^T``;
both directions use ``G`` (as DDP's average does). Four batches, one SGD step between them.

Usage: ``python tests/scripts/measure_ddp_modes.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from plot_hf.models.introspection import resolve_moo_parameters  # noqa: E402
from plot_hf.moo import build_solver, per_class_gradients  # noqa: E402
from tests.helpers import tiny_model  # noqa: E402


def rank_matrices(losses, labels, classes, params, world):
    """Per-rank K x P matrices G^r of the global-batch objectives (zero rows for classes absent on a rank)."""
    size = labels.numel()
    matrices = []
    for r in range(world):
        part = slice(r * size // world, (r + 1) * size // world)
        position = torch.searchsorted(classes, labels[part])
        objectives = losses.new_zeros(classes.numel()).index_add(0, position, losses[part]) / size
        present = torch.unique(position)
        local = torch.zeros(classes.numel(), sum(p.numel() for p in params), dtype=torch.float64)
        local[present] = per_class_gradients(objectives[present], params).double()
        matrices.append(local)
    return matrices


def main(num_classes: int = 10, batch: int = 128, trials: int = 4) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    prior = np.array([10 ** (-k / (num_classes - 1)) for k in range(num_classes)])
    prior /= prior.sum()
    model = tiny_model("resnet32_cifar_gn", num_classes=num_classes)
    moo = resolve_moo_parameters(model, None)
    results: dict = {}
    for _ in range(trials):
        labels = torch.as_tensor(rng.choice(num_classes, size=batch, p=prior))
        pixels = torch.randn(batch, 3, 8, 8) + labels[:, None, None, None] * 0.3
        logits = model(pixel_values=pixels).logits
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        classes = torch.unique(labels)
        anchor = torch.log(torch.tensor(prior).max() / torch.tensor(prior)[classes] + 0.01) / 2
        anchor = anchor / anchor.sum()
        for world in (2, 4, 8):
            matrices = rank_matrices(losses, labels, classes, moo.params, world)
            total = torch.stack(matrices).sum(0)
            exact_gram = total @ total.T
            cheap_gram = world * sum(m @ m.T for m in matrices)
            key = f"gram_rel_err/W{world}"
            results.setdefault(key, []).append(float((cheap_gram - exact_gram).norm() / exact_gram.norm()))
            for name in ("cagrad", "mgda"):
                solver = build_solver(name, **({"alpha": 0.5, "rescale": 1} if name == "cagrad" else {}))
                kwargs = {"anchor": anchor} if name == "cagrad" else {}
                exact = solver(exact_gram, **kwargs).coefficients @ total
                cheap = solver(cheap_gram, **kwargs).coefficients @ total
                cosine = torch.nn.functional.cosine_similarity(exact, cheap, dim=0)
                results.setdefault(f"cosine_{name}/W{world}", []).append(float(cosine))
        model.zero_grad()
        losses.mean().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    return results


if __name__ == "__main__":
    for key, values in main().items():
        print(f"{key:22s} mean {np.mean(values):.4f} min {np.min(values):.4f}  {np.round(values, 4).tolist()}")
