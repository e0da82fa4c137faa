"""timm backbones as transformers models: ``TimmWrapperForImageClassification``.

Any timm architecture name (``resnet50``, ``resnext50_32x4d``, or this project's ``resnet32_cifar``) becomes a
transformers model that round-trips through ``save_pretrained`` / ``push_to_hub`` and
``AutoModelForImageClassification.from_pretrained``. The preprocessing metadata (input size, mean, std,
crop fraction) is stored in ``config.pretrained_cfg``, which is what ``AutoImageProcessor`` and
``pipeline("image-classification")`` read back.

A model that timm alone cannot rebuild (a CIFAR ResNet, a cosine classifier) is a
:class:`~plot_hf.models.remote_code.PortableTimmWrapperForImageClassification`: its folder carries its code and
loads without plot-hf with ``trust_remote_code=True`` (:mod:`plot_hf.models.remote_code`).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
from torch import nn
from transformers import AutoModelForImageClassification, TimmWrapperConfig, TimmWrapperForImageClassification

from .modeling_plot_hf import PLOTTimmWrapperConfig, classifier_name, use_normed_classifier
from .remote_code import PortableTimmWrapperForImageClassification, needs_remote_code
from .resnet_cifar import CIFAR_ARCHITECTURES

__all__ = [
    "classifier_name",
    "count_parameters",
    "create_image_classifier",
    "load_image_classifier",
    "use_normed_classifier",
]


def create_image_classifier(
    architecture: str,
    label_names: Sequence[str],
    *,
    input_size: tuple[int, int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
    model_args: dict | None = None,
    classifier: str = "linear",
) -> TimmWrapperForImageClassification:
    """Build a randomly initialised timm ``architecture`` wrapped for transformers.

    ``label_names`` gives ``num_labels``, ``id2label`` and ``label2id``. ``input_size``, ``mean``, ``std`` and
    ``crop_pct`` override the architecture's default preprocessing (stored in ``config.pretrained_cfg``).
    Pretrained weights are never downloaded here: fine-tuning from a checkpoint (a Hub id or a local folder) goes
    through :mod:`plot_hf.models.pretrained`.
    """
    if not timm.is_model(architecture):
        raise ValueError(
            f"Unknown timm architecture `model_name`={architecture!r}. Did you `import plot_hf` (it registers "
            f"resnet32_cifar)? Similar names: {timm.list_models(f'*{architecture[:6]}*')[:8]}"
        )
    if len(label_names) < 2:
        raise ValueError(f"An image classifier needs at least 2 labels, got {list(label_names)}.")
    if classifier == "normed" and architecture in CIFAR_ARCHITECTURES:
        # The cosine head is part of the CIFAR architectures: kept in config.model_args, it is rebuilt on load by
        # AutoModelForImageClassification / pipeline with nothing but `import plot_hf`.
        model_args, classifier = {**(model_args or {}), "classifier": "normed"}, "linear"
    pretrained_cfg = dict(timm.models.get_pretrained_cfg(architecture).to_dict())
    pretrained_cfg.pop("url", None)
    pretrained_cfg.pop("hf_hub_id", None)
    for key, value in {"input_size": input_size, "mean": mean, "std": std, "crop_pct": crop_pct}.items():
        if value is not None:
            pretrained_cfg[key] = tuple(value) if isinstance(value, list | tuple) else value
    pretrained_cfg["num_classes"] = len(label_names)
    # A model timm alone cannot rebuild gets plot-hf's classes, which save their code with the weights.
    needs_code = needs_remote_code({"architecture": architecture, "normed_classifier": classifier == "normed"})
    config_class, model_class = (
        (PLOTTimmWrapperConfig, PortableTimmWrapperForImageClassification) if needs_code
        else (TimmWrapperConfig, TimmWrapperForImageClassification)
    )
    config = config_class(
        architecture=architecture,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        model_args=model_args or None,
        pretrained_cfg=pretrained_cfg,
    )
    model = model_class(config)
    # transformers' post_init re-initialises the classifier; rebuild the timm model's own initialisation.
    fresh = timm.create_model(architecture, pretrained=False, num_classes=len(label_names), **(model_args or {}))
    model.timm_model.load_state_dict(fresh.state_dict())
    if classifier == "normed":
        use_normed_classifier(model)
    elif classifier != "linear":
        raise ValueError(f"`classifier` must be 'linear' or 'normed', got {classifier!r}.")
    return model


def load_image_classifier(path: str, **kwargs) -> nn.Module:
    """``AutoModelForImageClassification.from_pretrained``, with the cosine classifier restored when saved so."""
    model = AutoModelForImageClassification.from_pretrained(path, **kwargs)
    if getattr(model.config, "normed_classifier", False):
        use_normed_classifier(model, keep_weight=True)
    return model


def count_parameters(model) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
