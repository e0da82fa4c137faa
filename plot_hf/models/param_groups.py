"""Fine-tuning learning rates by layer: a faster classifier and BEiT-style layer-wise decay.

The optimizer's parameter groups, for a recipe that sets ``head_lr_scale`` or ``layer_decay``
(:class:`plot_hf.recipe.ModelArguments`). Parameter ``p`` gets the learning rate

    lr(p) = learning_rate * head_lr_scale ** [p in the classifier] * layer_decay ** (L - layer(p)),

where ``layer(p)`` in ``0 .. L`` is timm's fine-grained layering of the backbone (``group_matcher(coarse=False)``:
the stem is 0, each block one layer, the classifier ``L``), as in BEiT / MAE fine-tuning and timm's
``param_groups_layer_decay``. Weight decay follows the fine-tuning convention of timm and BEiT: none on 1-D
parameters (biases, every norm's weight) nor on the model's ``no_weight_decay()`` names (position embeddings,
class token); ``weight_decay`` on the rest. Departure: ``Trainer``'s default groups decay batch-norm weights.
The schedule multiplies every group's rate by the same factor, so the ratios hold throughout training.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import group_parameters
from torch import nn

from .hf import classifier_name


def _layer_of(model: nn.Module, layer_decay: float | None) -> tuple[dict[str, int], int]:
    """Layer index of each parameter name of ``model`` (all 0 without layer decay) and the largest index."""
    backbone = getattr(model, "timm_model", None)
    if layer_decay is None:
        return {}, 0
    if backbone is None or not hasattr(backbone, "group_matcher"):
        raise ValueError(
            f"`layer_decay` needs a timm backbone with `group_matcher` (the model is {type(model).__name__}); "
            "unset it, or fine-tune a timm checkpoint."
        )
    layers = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    return {f"timm_model.{name}": layer for name, layer in layers.items()}, max(layers.values())


def fine_tuning_param_groups(
    model: nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    head_lr_scale: float = 1.0,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups ``{"params", "lr", "weight_decay"}`` with the rates of the module docstring."""
    if head_lr_scale <= 0 or (layer_decay is not None and not 0 < layer_decay <= 1):
        raise ValueError(
            f"`head_lr_scale` must be > 0 (got {head_lr_scale}) and `layer_decay` in (0, 1] (got {layer_decay})."
        )
    head = classifier_name(model) if hasattr(model, "timm_model") else "classifier"
    backbone = getattr(model, "timm_model", model)
    no_decay = {f"timm_model.{n}" if hasattr(model, "timm_model") else n for n in _no_weight_decay(backbone)}
    layer_of, last = _layer_of(model, layer_decay)
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_head = name.startswith(head + ".")
        scale = (head_lr_scale if in_head else 1.0) * (layer_decay or 1.0) ** (last - layer_of.get(name, last))
        decay = 0.0 if param.ndim <= 1 or name in no_decay else weight_decay
        groups.setdefault((learning_rate * scale, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def _no_weight_decay(backbone: nn.Module) -> set[str]:
    names = getattr(backbone, "no_weight_decay", None)
    return set(names()) if callable(names) else set()


def fine_tuning_optimizer(model: nn.Module, args: Any, head_lr_scale: float, layer_decay: float | None):
    """The optimizer ``args.optim`` names (``Trainer.get_optimizer_cls_and_kwargs``) over those groups."""
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    groups = fine_tuning_param_groups(model, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                                      head_lr_scale=head_lr_scale, layer_decay=layer_decay)
    return optimizer_cls(groups, **kwargs)
