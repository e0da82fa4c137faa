"""Backbones: the CIFAR ResNets registered with timm, and timm models wrapped for transformers."""

from . import resnet_cifar  # noqa: F401  (registers the architectures with timm)
from .hf import count_parameters, create_image_classifier
from .remote_code import register_auto_classes

register_auto_classes()  # `plot_timm_wrapper` folders load through the Auto classes without trust_remote_code

__all__ = ["count_parameters", "create_image_classifier"]
