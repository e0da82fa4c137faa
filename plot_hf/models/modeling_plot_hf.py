"""The transformers classes of a plot-hf image classifier that timm alone cannot rebuild.

A timm backbone wrapped by ``TimmWrapperForImageClassification`` loads anywhere when timm knows its
architecture (``resnet50``, ``resnext50_32x4d``). Two kinds of plot-hf models need this project's code as well:
the CIFAR ResNets registered with timm by :mod:`plot_hf.models.resnet_cifar`, and any backbone whose linear
classifier was swapped for the cosine :class:`~plot_hf.losses.NormedLinear` (``config.normed_classifier``).
Their folders are saved with ``model_type = "plot_timm_wrapper"``, handled by the two classes below.

This module is the architecture's code that travels with a saved model: :mod:`plot_hf.models.remote_code`
copies its source, and the sources it imports (``resnet_cifar``, ``normed_linear``), into the model folder with
their package-relative imports made folder-relative, and points ``config.json``'s ``auto_map`` at the classes
below. So it must stay self-contained: only torch, timm, transformers and relative imports (``from .x import
y``, ``from ..x.y import z``) of the modules :data:`plot_hf.models.remote_code.SHIPPED_MODULES` names.

Loading (``AutoModelForImageClassification.from_pretrained(folder)`` or ``pipeline``):

* with ``import plot_hf``: the classes are registered with the Auto classes, nothing else is needed;
* without plot-hf: ``trust_remote_code=True`` runs the copy saved in the folder;
* without either: transformers refuses and asks for ``trust_remote_code=True``.
"""

from __future__ import annotations

from torch import nn
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from .resnet_cifar import CIFAR_ARCHITECTURES  # noqa: F401  (importing it registers the CIFAR ResNets with timm)

MODEL_TYPE = "plot_timm_wrapper"


class PLOTTimmWrapperConfig(TimmWrapperConfig):
    """``TimmWrapperConfig`` under its own ``model_type``: the config of a model that needs plot-hf's code.

    Everything else is ``TimmWrapperConfig``'s: ``architecture`` (a timm name), ``model_args``,
    ``pretrained_cfg`` (preprocessing), labels; plus ``normed_classifier`` when the head is a cosine classifier.
    """

    model_type = MODEL_TYPE


class PLOTTimmWrapperForImageClassification(TimmWrapperForImageClassification):
    """``TimmWrapperForImageClassification`` that rebuilds the cosine classifier when ``config.normed_classifier``.

    ``forward(pixel_values, labels=None)`` returns ``ImageClassifierOutput`` exactly as the parent does; the
    timm model is built by ``timm.create_model(config.architecture, num_classes=num_labels, **model_args)``,
    which finds the CIFAR ResNets because this module imports :mod:`resnet_cifar`.
    """

    config_class = PLOTTimmWrapperConfig

    def __init__(self, config: PLOTTimmWrapperConfig):
        super().__init__(config)
        if getattr(config, "normed_classifier", False):
            use_normed_classifier(self)


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the classifier module (timm's ``get_classifier()``), e.g. ``timm_model.fc``."""
    backbone = getattr(model, "timm_model", model)
    head = backbone.get_classifier()
    for name, module in model.named_modules():
        if module is head:
            return name
    raise ValueError(f"Cannot locate the classifier of {type(backbone).__name__}.")


def use_normed_classifier(model: nn.Module, keep_weight: bool = False) -> nn.Module:
    """Swap the linear classifier for the cosine ``NormedLinear`` (Cao et al. 2019; used by LDAM and GCL) and
    record it as ``config.normed_classifier`` (so loading rebuilds it). ``keep_weight``: copy the existing
    ``weight`` (reloading a saved cosine classifier into a linear one); its bias is dropped. A model whose
    classifier is already cosine is returned unchanged."""
    from ..losses.normed_linear import NormedLinear

    name = classifier_name(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    if isinstance(old, NormedLinear):
        return model
    head = NormedLinear(old.in_features, old.out_features).to(old.weight.device)
    if keep_weight:
        head.weight.data.copy_(old.weight.data)
    setattr(parent, child, head)
    if hasattr(model, "config"):
        model.config.normed_classifier = True
    return model
