"""The measures, torch and numpy only; no I/O.

All of them are taken in eval mode (batch-norm running statistics, no dropout), on a fixed list of batches, and
change nothing in the model: gradients come from ``torch.autograd.grad`` (``.grad`` untouched) and the global
RNGs are not used, so logging them during training leaves the run bit-identical.

* **Gradient conflict**: the per-class gradients ``g_k`` of the MOO parameters (the shared representation), from
  :func:`plot_hf.moo.per_class_objectives` / :func:`plot_hf.moo.per_class_gradients` summed over the batches;
  their cosine matrix, the fraction of class pairs with a negative cosine, and each class's conflict rate.
* **Preference**: ``||g_k||`` and the projection ``<g_k, g_bar> / ||g_bar||`` of each class gradient on the mean
  ``g_bar``, i.e. how much each class drives the shared update; ``head_tail_preference`` is the mean projection
  of the most frequent third of the classes over that of the least frequent third.
* **Representation**: penultimate features ``h``, class means ``mu_c``, global mean ``mu_G``;
  ``Sw = sum_c (n_c/N) Cov_c``, ``Sb = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T``; NC1 ``= tr(Sw Sb^+) / C``
  (Papyan et al. 2020), per class ``tr(Cov_c Sb^+) / C``; and the std of the per-sample losses of each class
  (what PLOT's variability-collapse loss penalises).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..moo import per_class_gradients, per_class_objectives
from ..moo.chunking import chunk_for_memory, count_saved_bytes
from ..step import logits_of

Batch = dict[str, torch.Tensor]
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fixed_batches(dataset: Any, collate_fn: Callable, num_batches: int, batch_size: int, seed: int = 0) -> list[Batch]:
    """``num_batches`` batches of a seeded permutation of ``dataset`` (the global RNGs are not touched);
    ``num_batches <= 0`` takes the whole dataset."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    if num_batches > 0:
        order = order[: num_batches * batch_size]
    loader = DataLoader(torch.utils.data.Subset(dataset, order), batch_size=batch_size, collate_fn=collate_fn)
    return list(loader)


@dataclass
class ClassGradients:
    """Per-class gradients ``matrix`` (C_seen x P, float64) of the classes ``classes`` and their sample counts."""

    classes: np.ndarray
    matrix: torch.Tensor
    samples: np.ndarray


@dataclass
class Features:
    """Penultimate features (N x D), labels (N,) and per-sample losses (N,) of the fixed batches."""

    features: torch.Tensor
    labels: torch.Tensor
    losses: torch.Tensor


def _classifier(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "timm_model", model)
    if hasattr(backbone, "get_classifier"):
        head = backbone.get_classifier()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"Cannot find the classifier of {type(model).__name__} (no get_classifier(), no Linear).")
    return linears[-1]


def class_gradients(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    batches: Sequence[Batch],
    per_sample_loss: PerSampleLoss,
    *,
    method: str = "loop",
    chunk_size: int | None = None,
    chunk_memory_mb: float | None = None,
    device: torch.device | str | None = None,
) -> ClassGradients:
    """Sum over ``batches`` of the per-class gradients (PLOT's ``L_k = sum_{i in k} l_i / B``), eval mode.

    Always exact: ``method`` "loop" is kept, any other training method (auto, sketch, ...) becomes "batched",
    in chunks of ``chunk_size`` classes or sized from ``chunk_memory_mb`` (:mod:`plot_hf.moo.chunking`; here the
    whole forward's saved bytes count, a looser bound than the training step's)."""
    method = "loop" if method == "loop" else "batched"
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    sized = chunk_memory_mb is not None and method == "batched"
    try:
        for batch in batches:
            labels = batch["labels"].to(device)
            with count_saved_bytes(exclude=model.parameters()) if sized else nullcontext() as saved:
                logits = logits_of(model(pixel_values=batch["pixel_values"].to(device)))
            chunk = chunk_size
            if saved is not None:
                chunk = chunk_for_memory(chunk_memory_mb * 2**20, saved.nbytes, sum(p.numel() for p in params),
                                         params[0].element_size())
            classes, objectives = per_class_objectives(per_sample_loss(logits, labels), labels)
            grads = per_class_gradients(objectives, list(params), method=method, chunk_size=chunk,  # type: ignore[arg-type]
                                        retain_graph=False).detach().double()
            for row, k in enumerate(classes.tolist()):
                sums[k] = sums[k] + grads[row] if k in sums else grads[row].clone()
                counts[k] = counts.get(k, 0) + int((labels == k).sum())
    finally:
        model.train(was_training)
    order = sorted(sums)
    return ClassGradients(
        classes=np.asarray(order, dtype=np.int64),
        matrix=torch.stack([sums[k] for k in order]) / max(len(batches), 1),
        samples=np.asarray([counts[k] for k in order], dtype=np.int64),
    )


@torch.no_grad()
def penultimate_features(
    model: nn.Module, batches: Sequence[Batch], per_sample_loss: PerSampleLoss, device: torch.device | str | None = None
) -> Features:
    """The classifier's input (the penultimate features) and the per-sample losses, eval mode."""
    device = device or next(model.parameters()).device
    captured: list[torch.Tensor] = []
    handle = _classifier(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].flatten(1)))
    was_training = model.training
    model.eval()
    feats, labels, losses = [], [], []
    try:
        for batch in batches:
            y = batch["labels"].to(device)
            logits = logits_of(model(pixel_values=batch["pixel_values"].to(device)))
            feats.append(captured.pop().double().cpu())
            labels.append(y.cpu())
            losses.append(per_sample_loss(logits, y).double().cpu())
            captured.clear()
    finally:
        handle.remove()
        model.train(was_training)
    return Features(torch.cat(feats), torch.cat(labels), torch.cat(losses))


def _ranks(class_counts: Sequence[int], classes: np.ndarray) -> np.ndarray:
    """Classes sorted by decreasing training frequency (ties by index)."""
    counts = np.asarray(class_counts)
    return np.asarray(sorted(classes.tolist(), key=lambda k: (-counts[k], k)), dtype=np.int64)


def conflict_measures(grads: ClassGradients, class_counts: Sequence[int]) -> dict[str, Any]:
    """Cosine matrix (classes by decreasing frequency), conflict fraction, per-class conflict vs frequency."""
    order = _ranks(class_counts, grads.classes)
    position = {k: i for i, k in enumerate(grads.classes.tolist())}
    g = grads.matrix[[position[k] for k in order.tolist()]]
    norms = g.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    cosine = (g @ g.T) / (safe[:, None] * safe[None, :])
    cosine[norms == 0] = 0.0
    cosine[:, norms == 0] = 0.0
    k = len(order)
    off = ~torch.eye(k, dtype=torch.bool)
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    negative = (cosine < 0) & off
    return {
        "classes_by_frequency": order.tolist(),
        "class_counts": [int(class_counts[c]) for c in order],
        "cosine": cosine.tolist(),
        "conflict_fraction": float(negative[upper].double().mean()) if k > 1 else 0.0,
        "mean_cosine": float(cosine[upper].mean()) if k > 1 else 1.0,
        "per_class_conflict": (negative.double().sum(1) / max(k - 1, 1)).tolist(),
        "per_class_mean_cosine": ((cosine * off).sum(1) / max(k - 1, 1)).tolist(),
    }


def preference_measures(grads: ClassGradients, class_counts: Sequence[int]) -> dict[str, Any]:
    """Each class's gradient norm and projection on the mean gradient, by decreasing frequency."""
    order = _ranks(class_counts, grads.classes)
    position = {k: i for i, k in enumerate(grads.classes.tolist())}
    g = grads.matrix[[position[k] for k in order.tolist()]]
    mean = g.mean(0)
    mean_norm = float(mean.norm())
    projection = (g @ mean) / mean_norm if mean_norm > 0 else torch.zeros(len(order), dtype=g.dtype)
    third = max(len(order) // 3, 1)
    head, tail = projection[:third].mean(), projection[-third:].mean()
    total = float(projection.sum())
    return {
        "classes_by_frequency": order.tolist(),
        "class_counts": [int(class_counts[c]) for c in order],
        "gradient_norm": g.norm(dim=1).tolist(),
        "projection_on_mean": projection.tolist(),
        "share_of_mean": (projection / total).tolist() if total != 0 else [0.0] * len(order),
        "head_tail_preference": float(head / tail) if float(tail) != 0 else float("inf"),
    }


def representation_measures(features: Features, class_counts: Sequence[int]) -> dict[str, Any]:
    """NC1 ``tr(Sw Sb^+) / C`` overall and per class, within/between spread, per-class loss std."""
    h, y, losses = features.features, features.labels, features.losses
    classes = np.unique(y.numpy())
    order = _ranks(class_counts, classes)
    global_mean = h.mean(0)
    means, covs, weights, loss_std, within = [], [], [], [], []
    for c in order.tolist():
        hc = h[y == c]
        mu = hc.mean(0)
        centred = hc - mu
        cov = centred.T @ centred / max(len(hc), 1)
        means.append(mu)
        covs.append(cov)
        weights.append(len(hc) / len(h))
        within.append(float(cov.trace()))
        lc = losses[y == c]
        loss_std.append(float(lc.std()) if len(lc) > 1 else 0.0)
    mu_c = torch.stack(means) - global_mean
    num = len(order)
    sb = mu_c.T @ mu_c / num
    sb_pinv = torch.linalg.pinv(sb, hermitian=True)
    sw = sum(w * cov for w, cov in zip(weights, covs, strict=True))
    per_class_nc1 = [float((cov @ sb_pinv).trace()) / num for cov in covs]
    between = float(sb.trace())
    return {
        "classes_by_frequency": order.tolist(),
        "class_counts": [int(class_counts[c]) for c in order],
        "nc1": float((sw @ sb_pinv).trace()) / num,
        "per_class_nc1": per_class_nc1,
        "within_class_variance": within,
        "between_class_variance": between,
        "within_over_between": [w / between if between > 0 else float("inf") for w in within],
        "per_class_loss_std": loss_std,
        "mean_loss_std": float(np.mean(loss_std)),
        "num_samples": int(len(h)),
    }


def summary_measures(conflict: dict, preference: dict, representation: dict) -> dict[str, float]:
    """The scalars logged over a run (``analysis/<name>``)."""
    return {
        "conflict_fraction": conflict["conflict_fraction"],
        "mean_cosine": conflict["mean_cosine"],
        "head_tail_preference": preference["head_tail_preference"],
        "nc1": representation["nc1"],
        "mean_loss_std": representation["mean_loss_std"],
    }
