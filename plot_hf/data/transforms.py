"""Lazy train/eval image transforms and the batch collator.

Kinds (``transform`` in :class:`~plot_hf.data.builder.DataConfig`):

* ``"cifar"`` (LDAM-DRW): train = pad 4 + random crop ``image_size`` (32) + horizontal flip + normalise;
  eval = normalise only, with the CIFAR mean/std of :mod:`plot_hf.preprocessing`.
* ``"imagenet"`` (timm's ``create_transform``): train = random resized crop ``image_size`` (224) +
  horizontal flip + normalise (no colour jitter); eval = resize ``image_size / 0.875`` (256) + center crop
  ``image_size`` + normalise. ImageNet mean/std (:mod:`plot_hf.preprocessing`).
* ``"none"``: to tensor only (the image must already have the model's size).

No test-time augmentation: the eval transform is deterministic. The transform runs lazily through
``Dataset.with_transform``: each batch gets ``pixel_values`` (float tensors, C x H x W) and keeps
``labels``; the ``image`` column is consumed. Train with ``remove_unused_columns=False`` and
:func:`collate_fn`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from datasets import Dataset
from torchvision import transforms as T

from ..preprocessing import (
    CIFAR_MEAN,
    CIFAR_STD,
    DEFAULT_IMAGE_SIZE,
    IMAGENET_EVAL_CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
)

TransformKind = Literal["cifar", "imagenet", "none"]
TRANSFORM_KINDS: tuple[str, ...] = ("cifar", "imagenet", "none")

ImageTransform = Callable[[Any], torch.Tensor]


def build_transforms(
    kind: TransformKind = "cifar",
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
) -> tuple[ImageTransform, ImageTransform]:
    """``(train_transform, eval_transform)`` mapping one RGB PIL image to a float tensor (``crop_pct``: the
    ``imagenet`` eval crop fraction, 0.875 unless given, e.g. by a pretrained checkpoint's configuration)."""
    size = image_size or DEFAULT_IMAGE_SIZE.get(kind)
    if kind == "cifar":
        norm = T.Normalize(mean or CIFAR_MEAN, std or CIFAR_STD)
        train = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        return train, T.Compose([T.ToTensor(), norm])
    if kind == "imagenet":
        from timm.data import create_transform

        stats = {"mean": tuple(mean or IMAGENET_MEAN), "std": tuple(std or IMAGENET_STD)}
        train = create_transform(size, is_training=True, hflip=0.5, color_jitter=None, **stats)
        evalt = create_transform(size, is_training=False, crop_pct=crop_pct or IMAGENET_EVAL_CROP_PCT, **stats)
        return train, evalt
    if kind == "none":
        return T.ToTensor(), T.ToTensor()
    raise ValueError(f"Unknown `transform` {kind!r}; choose one of {TRANSFORM_KINDS}.")


def batch_transform(transform: ImageTransform) -> Callable[[dict[str, list]], dict[str, list]]:
    """Wrap an image transform for ``Dataset.with_transform``: ``image`` -> ``pixel_values``, keep ``labels``."""

    def apply(batch: dict[str, list]) -> dict[str, list]:
        out = {"pixel_values": [transform(img.convert("RGB")) for img in batch["image"]]}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    return apply


def with_transforms(ds: Dataset, transform: ImageTransform) -> Dataset:
    """A view of ``ds`` that applies ``transform`` lazily (the Arrow data is untouched)."""
    return ds.with_transform(batch_transform(transform))


def collate_fn(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` into ``(B, C, H, W)`` float and ``labels`` into ``(B,)`` long."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]).float(),
        "labels": torch.as_tensor([int(e["labels"]) for e in examples], dtype=torch.long),
    }
