"""Model introspection: which parameters PLOT treats as the shared representation, which gradient method is exact
for them, and the class statistics the step needs (class counts, the class-prior anchor).

Used by :class:`plot_hf.trainer.PLOTTrainer`, :mod:`plot_hf.analysis`, :mod:`plot_hf.analyze` and the benchmarks;
it imports neither the trainer nor the analysis, so none of them import each other through it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class MOOParameters:
    """The MOO parameters of a model: names relative to the unwrapped model, and the stage to replay from."""

    names: list[str]
    params: list[nn.Parameter]
    stage_name: str

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


__all__ = [
    "MOOParameters",
    "STAGE_LISTS",
    "class_prior_anchor",
    "default_moo_stage",
    "resolve_class_counts",
    "resolve_gradient_method",
    "resolve_moo_parameters",
]


def class_prior_anchor(class_counts: Sequence[int]) -> torch.Tensor:
    """The reference's class-prior preference ``b_k = log(n_max / n_k + 0.01) / 2`` (unnormalised)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    return torch.log(counts.max() / counts + 0.01) / 2


def resolve_class_counts(counts: Sequence[int] | None, train_dataset: Any, num_labels: int) -> list[int]:
    """The training count per class: given, or counted from the dataset's ``labels`` (or ``label``) column."""
    if counts is None:
        if train_dataset is None:
            raise ValueError("`class_counts` is not set and there is no train_dataset to count the labels from.")
        column = next(
            (c for c in ("labels", "label") if c in getattr(train_dataset, "column_names", []) or []), None
        )
        if column is None:
            raise ValueError(
                "`class_counts` is not set and the train dataset has no `labels` or `label` column to count from "
                f"(columns: {getattr(train_dataset, 'column_names', None)})."
            )
        labels = np.asarray(train_dataset.with_format("numpy")[column]).astype(np.int64)
        if labels.size and (labels.min() < 0 or (num_labels and labels.max() >= num_labels)):
            bad = labels[(labels < 0) | ((labels >= num_labels) if num_labels else False)]
            raise ValueError(f"Label {int(bad[0])} in column `{column}` is outside [0, {num_labels}).")
        counts = np.bincount(labels, minlength=num_labels or 0).tolist()
    counts = [int(n) for n in counts]
    if num_labels and len(counts) != num_labels:
        raise ValueError(f"`class_counts` has {len(counts)} entries but the model has {num_labels} labels.")
    empty = [i for i, n in enumerate(counts) if n < 1]
    if empty:
        raise ValueError(f"Class(es) {empty[:10]} have no training sample; PLOT needs every class in the train set.")
    return counts


STAGE_LISTS = ("stages", "stage", "layers", "layer", "blocks", "block")


def _last_block_of_stage_list(model: nn.Module) -> str | None:
    """transformers-native backbones: the last entry of the largest ``ModuleList`` / ``Sequential`` named like a
    list of stages or blocks (``resnet.encoder.stages.1``, ``convnext.encoder.stages.3``, ``vit.layers.11``,
    ``swin.encoder.layers.3``, ``efficientnet.encoder.blocks.15``)."""
    lists = [
        (name, module) for name, module in model.named_modules()
        if name and isinstance(module, nn.ModuleList | nn.Sequential) and len(module) > 0
        and name.rsplit(".", 1)[-1] in STAGE_LISTS
    ]
    if not lists:
        return None
    name, module = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return f"{name}.{len(module) - 1}"


def default_moo_stage(model: nn.Module) -> str:
    """Name of the last stage of the backbone: from timm's ``feature_info`` (e.g. ``layer3``, ``stages.3``), else
    the last block of the backbone's list of stages (transformers-native models, e.g. ``resnet.encoder.stages.1``,
    ``vit.layers.11``)."""
    backbone = getattr(model, "timm_model", model)
    info = getattr(backbone, "feature_info", None)
    if info is not None:
        entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        modules = [e.get("module") for e in entries if e.get("module")]
        if modules:
            return modules[-1]
    stage = _last_block_of_stage_list(backbone)
    if stage is not None:
        return stage
    raise ValueError(
        f"Cannot find the last stage of {type(backbone).__name__} (no timm `feature_info`, no ModuleList named "
        f"{'/'.join(STAGE_LISTS)} such as transformers' `resnet.encoder.stages` or `vit.layers`); set `moo_modules` to "
        "the module name(s) of the shared representation, e.g. ['layer4']."
    )


def _needs_per_class_backward(module: nn.Module) -> bool:
    """Modules the one-pass split cannot take: batch norm (couples the samples of a batch in training) and window
    attention (Swin: ``window_size``; it folds windows into the batch dimension and adds a relative-position bias
    computed from no sample)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or hasattr(module, "window_size")


def resolve_gradient_method(
    model: nn.Module, moo: MOOParameters, requested: str, device: torch.device | str = "cpu"
) -> str:
    """``"auto"`` -> ``"per_sample_split"`` (exact, one backward) when no batch norm and no window attention runs
    in or after the MOO stage (ViT, DeiT, ConvNeXt, GroupNorm ResNets); else exact per-class backward passes:
    ``"batched"`` vector-Jacobian products on an accelerator, ``"loop"`` on a CPU (as fast there, with a lower
    peak memory: ``benchmarks/README.md``). Other values are kept as given."""
    if requested != "auto":
        return requested
    names = [name for name, _ in model.named_modules()]
    start = names.index(moo.stage_name)
    for _, module in list(model.named_modules())[start:]:
        if _needs_per_class_backward(module):
            return "loop" if torch.device(device).type == "cpu" else "batched"
    return "per_sample_split"


def resolve_moo_parameters(model: nn.Module, patterns: Sequence[str] | None) -> MOOParameters:
    """Match ``patterns`` (globs relative to the backbone, or to the model) to modules; collect their parameters."""

    prefix = "timm_model." if hasattr(model, "timm_model") else ""
    patterns = list(patterns) if patterns else [default_moo_stage(model)]
    module_names = [name for name, _ in model.named_modules() if name]
    matched: list[str] = []
    for pattern in patterns:
        hits = [
            n for n in module_names
            if fnmatch.fnmatchcase(n, pattern) or (prefix and fnmatch.fnmatchcase(n, prefix + pattern))
        ]
        if not hits:
            raise ValueError(
                f"`moo_modules` pattern {pattern!r} matches no module of {type(model).__name__}; top-level "
                f"modules: {[n for n in module_names if n.count('.') <= (1 if prefix else 0)][:20]}."
            )
        matched += [h for h in hits if not any(h.startswith(m + ".") for m in matched)]
    matched = [m for m in matched if not any(m.startswith(o + ".") for o in matched if o != m)]
    names, params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad and any(name.startswith(m + ".") for m in matched):
            names.append(name)
            params.append(param)
    if not params:
        raise ValueError(f"`moo_modules` {patterns} match modules {matched} without trainable parameters.")
    order = {name: i for i, name in enumerate(module_names)}
    stage = min(matched, key=lambda m: order[m])
    return MOOParameters(names=names, params=params, stage_name=stage)
