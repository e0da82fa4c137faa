"""Image preprocessing constants, in one place: the normalisation statistics and default sizes of each
transform kind (``data.transform``), and the eval preprocessing they imply.

The train/eval transforms (:mod:`plot_hf.data.transforms`), the CIFAR ResNets' timm ``pretrained_cfg``
(:mod:`plot_hf.models.resnet_cifar`, where the CIFAR values are written) and the preprocessing stored with a
trained model (``python -m plot_hf.train``: model card, ``AutoImageProcessor``, ``pipeline``) all read them
from here.
"""

from __future__ import annotations

from typing import Any

from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .models.resnet_cifar import CIFAR_MEAN, CIFAR_STD

# CIFAR_MEAN / CIFAR_STD: the per-channel mean of CIFAR-10's training images and the standard deviations that
# LDAM-DRW and the PLOT reference divide by. Their values are written in the model module, which saved models
# carry as standalone code (plot_hf.models.remote_code) and which may import nothing else from plot-hf.
IMAGENET_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)  # type: ignore[assignment]
IMAGENET_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)  # type: ignore[assignment]
IDENTITY_MEAN, IDENTITY_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

DEFAULT_IMAGE_SIZE: dict[str, int | None] = {"cifar": 32, "imagenet": 224, "none": None}
"""Square input size per transform kind when ``image_size`` is not set (``none``: the images' own size)."""
IMAGENET_EVAL_CROP_PCT = 0.875
"""The ImageNet eval transform resizes to ``size / 0.875`` (256 for 224) and centre-crops ``size``."""


def eval_preprocessing(kind: str, image_size: int | None = None) -> dict[str, Any]:
    """Input size, mean, std and crop fraction of the eval transform of ``kind`` (``cifar``, ``imagenet``,
    ``none``), as timm's ``pretrained_cfg`` keys; ``none`` with no size is recorded as 32 x 32."""
    if kind == "imagenet":
        size = image_size or DEFAULT_IMAGE_SIZE["imagenet"]
        return {"input_size": (3, size, size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                "crop_pct": IMAGENET_EVAL_CROP_PCT}
    size = image_size or DEFAULT_IMAGE_SIZE["cifar"]
    mean, std = (CIFAR_MEAN, CIFAR_STD) if kind == "cifar" else (IDENTITY_MEAN, IDENTITY_STD)
    return {"input_size": (3, size, size), "mean": mean, "std": std, "crop_pct": 1.0}
