"""plot-hf: PLOT (Pareto deep long-tailed recognition, ICLR 2024) for the Hugging Face ecosystem.

Importing ``plot_hf`` registers the project's timm architectures (the CIFAR ResNet-32 and its GroupNorm
variant), so that ``AutoModelForImageClassification.from_pretrained`` and ``pipeline`` can rebuild a saved
model. Heavy pieces (the trainer, the config) are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import models as _models  # noqa: F401  (registers timm architectures)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import PLOTConfig
    from .trainer import PLOTTrainer

__all__ = ["PLOTConfig", "PLOTTrainer", "__version__"]


def __getattr__(name: str):
    if name == "PLOTConfig":
        from .config import PLOTConfig

        return PLOTConfig
    if name == "PLOTTrainer":
        from .trainer import PLOTTrainer

        return PLOTTrainer
    raise AttributeError(f"module 'plot_hf' has no attribute {name!r}")
