"""Backbones: the CIFAR ResNets registered with timm, and timm models wrapped for transformers."""

from . import resnet_cifar  # noqa: F401  (registers the architectures with timm)
from .hf import count_parameters, create_image_classifier

__all__ = ["count_parameters", "create_image_classifier"]
