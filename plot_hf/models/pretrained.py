"""Fine-tuning from a pretrained checkpoint: the backbone's weights loaded, the head sized to the data's classes.

A recipe's ``model_name`` names a checkpoint when it is a local folder, a Hub id (``org/name``, optionally
``hf-hub:org/name``), e.g. ``timm/resnet152.tv_in1k``, ``timm/vit_small_patch16_224.augreg_in21k_ft_in1k``,
``timm/convnext_tiny.fb_in22k``, ``google/vit-base-patch16-224-in21k``; a bare timm architecture name
(``resnet152``) is trained from random initialisation instead (:func:`plot_hf.models.create_image_classifier`).

Contract:

* :func:`resolve_checkpoint` runs first (before any data is loaded): a local folder must hold ``config.json``; a
  Hub id is fetched (config, safetensors weights, or ``*.bin`` when a repository has no safetensors) through
  ``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE`` (then only the local cache is read).
  A missing folder or an unreachable / uncached id raises :class:`CheckpointUnavailableError` naming the id and
  the offline setting.
* Two formats, told apart by ``config.json``: timm's (``architecture``, ``pretrained_cfg``, optional
  ``model_args``; what ``timm.models.save_for_hf`` / ``push_to_hf_hub`` write) and transformers' (``model_type``;
  ``save_pretrained``, including this project's saved ``TimmWrapperForImageClassification`` models).
* Head. When the checkpoint's number of classes equals the data's, its head is kept (a saved model loads exactly as
  :func:`plot_hf.models.hf.load_image_classifier` loads it; only ``id2label`` takes the data's names). Otherwise the
  classifier is re-created for the data's classes with the architecture's own initialisation: timm drops the
  classifier from the state dict and keeps its freshly initialised head (``timm.create_model(..., pretrained=True,
  num_classes=K)``); transformers models load with ``id2label`` (hence ``num_labels``) and ``ignore_mismatched_sizes=True``
  (as Hugging Face's image-classification example does), so the head gets the model's ``_init_weights``; for a
  saved ``TimmWrapperForImageClassification`` the head is then re-drawn from the timm architecture's own
  initialisation (transformers' generic one is a N(0, 0.02) draw). Any other weight that the checkpoint does not
  supply, or supplies with another shape, is an error (for example a ``model_args`` override that changes a shape).
* Preprocessing (input size, mean, std, crop fraction) comes from the checkpoint: timm's ``pretrained_cfg``, or the
  transformers ``preprocessor_config.json`` (``size``, ``image_mean``, ``image_std``, ``crop_pct``); values that a
  recipe sets win (:func:`checkpoint_preprocessing`). It is stored in the fine-tuned model's
  ``config.pretrained_cfg`` (what ``AutoImageProcessor`` and ``pipeline`` read for timm models).
* Input size. A timm model with a fixed input size (ViT) trained at another size is built at the data's size
  (``img_size``), and timm resamples its position embeddings while loading. A transformers model whose
  ``config.image_size`` differs from the data's is an error (its position embeddings would be re-initialised).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)

from .hf import classifier_name, load_image_classifier

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
PREPROCESSING_KEYS = ("input_size", "mean", "std", "crop_pct")
_SOURCE_KEYS = ("file", "source", "hf_hub_id", "url", "architecture", "num_classes", "label_names", "tag")


class CheckpointUnavailableError(OSError):
    """A pretrained checkpoint named by a recipe is neither a local folder nor reachable on the Hub (or cached)."""


@dataclass(frozen=True)
class Checkpoint:
    """A pretrained checkpoint on the local disk: ``name`` as the recipe gives it, its ``folder`` and ``config.json``."""

    name: str
    folder: Path
    config: dict[str, Any]

    @property
    def format(self) -> str:
        """``"transformers"`` (``config.json`` has ``model_type``) or ``"timm"`` (``architecture``)."""
        return "transformers" if "model_type" in self.config else "timm"


def is_checkpoint_name(name: str) -> bool:
    """A local folder or a Hub id (``org/name``, ``hf-hub:org/name``); a bare timm architecture name is not."""
    return name.startswith(HUB_PREFIX) or "/" in name or Path(name).expanduser().is_dir()


def _offline_note() -> str:
    return f"HF_HUB_OFFLINE={'1' if constants.HF_HUB_OFFLINE else '0'}"


def _download(repo_id: str, name: str) -> Path:
    """Config and weights of a Hub repository (safetensors, else ``*.bin``), from the cache when offline."""
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.bin"]))
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise CheckpointUnavailableError(
            f"Pretrained checkpoint `model_name`={name!r}: the Hub repository {repo_id!r} cannot be fetched "
            f"({_offline_note()}; with it set, only the local cache is read): {type(error).__name__}: {error}. "
            "Download it once with network access (`hf download " + repo_id + "`), or point `model_name` at a "
            "local folder holding its config.json and weights."
        ) from error
    return folder


def resolve_checkpoint(name: str) -> Checkpoint:
    """The local folder of checkpoint ``name`` (downloaded when it is a Hub id) and its ``config.json``.

    Raises :class:`CheckpointUnavailableError` before any training work when the checkpoint cannot be had.
    """
    location = name.removeprefix(HUB_PREFIX)
    path = Path(location).expanduser()
    if path.is_dir():
        folder = path
    elif path.is_absolute() or location.startswith((".", "~")) or location.count("/") != 1:
        raise CheckpointUnavailableError(
            f"Pretrained checkpoint `model_name`={name!r} is not a local folder and not a Hub id of the form "
            f"org/name ({_offline_note()})."
        )
    else:
        folder = _download(location, name)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointUnavailableError(f"Pretrained checkpoint {name!r}: {str(folder)!r} holds no config.json.")
    config = json.loads(config_file.read_text())
    if "model_type" not in config and "architecture" not in config:
        raise ValueError(
            f"Pretrained checkpoint {name!r}: config.json has neither `model_type` (a transformers model) nor "
            "`architecture` (a timm model)."
        )
    return Checkpoint(name=name, folder=folder, config=config)


def _processor_preprocessing(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Input size, mean, std, crop fraction of a transformers checkpoint (``preprocessor_config.json``)."""
    file = folder / "preprocessor_config.json"
    processor = json.loads(file.read_text()) if file.is_file() else {}
    size = processor.get("crop_size") or processor.get("size") or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    side = side or config.get("image_size")
    found = {
        "input_size": (config.get("num_channels", 3), int(side), int(side)) if side else None,
        "mean": processor.get("image_mean"),
        "std": processor.get("image_std"),
        "crop_pct": processor.get("crop_pct"),
    }
    return {key: value for key, value in found.items() if value is not None}


def checkpoint_preprocessing(checkpoint: Checkpoint, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{input_size, mean, std, crop_pct}`` of the checkpoint, with the recipe's ``overrides`` (non-None) on top.

    timm: ``config.json``'s ``pretrained_cfg``; transformers: ``preprocessor_config.json``. A key neither
    provides is left out (the caller falls back to the data config's transform defaults).
    """
    if checkpoint.format == "timm":
        saved = checkpoint.config.get("pretrained_cfg", {})
        found = {key: saved[key] for key in PREPROCESSING_KEYS if saved.get(key) is not None}
    else:
        found = _processor_preprocessing(checkpoint.folder, checkpoint.config)
    found.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return {key: tuple(value) if isinstance(value, list) else value for key, value in found.items()}


def load_pretrained_classifier(
    checkpoint: Checkpoint,
    label_names: Sequence[str],
    *,
    preprocessing: dict[str, Any],
    model_args: dict | None = None,
) -> nn.Module:
    """The checkpoint as an image classifier over ``label_names`` (see the module docstring for the head rule).

    ``preprocessing`` (from :func:`checkpoint_preprocessing`) is stored in ``config.pretrained_cfg``; its input size
    also sets a fixed-size timm model's ``img_size``. ``model_args``: timm ``create_model`` keyword arguments, or
    transformers config overrides (e.g. ``drop_path_rate``).
    """
    if len(label_names) < 2:
        raise ValueError(f"An image classifier needs at least 2 labels, got {list(label_names)}.")
    logger.info("Fine-tuning %s checkpoint %r for %d classes.", checkpoint.format, checkpoint.name, len(label_names))
    if checkpoint.format == "timm":
        model = _load_timm(checkpoint, label_names, preprocessing, dict(model_args or {}))
    else:
        model = _load_transformers(checkpoint, label_names, preprocessing, dict(model_args or {}))
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {label: i for i, label in enumerate(label_names)}
    return model


def _load_timm(
    checkpoint: Checkpoint, label_names: Sequence[str], preprocessing: dict[str, Any], model_args: dict
) -> TimmWrapperForImageClassification:
    """timm format: timm builds and loads the backbone (dropping a mismatched head), then the transformers wrapper."""
    saved_cfg = dict(checkpoint.config.get("pretrained_cfg", {}))
    size = preprocessing.get("input_size")
    if saved_cfg.get("fixed_input_size") and size and tuple(size) != tuple(saved_cfg.get("input_size", size)):
        model_args.setdefault("img_size", size[1] if size[1] == size[2] else tuple(size[1:]))
    backbone = timm.create_model(
        f"local-dir:{checkpoint.folder}", pretrained=True, num_classes=len(label_names), **model_args
    )
    pretrained_cfg = {k: v for k, v in saved_cfg.items() if k not in _SOURCE_KEYS}
    pretrained_cfg.update(preprocessing, num_classes=len(label_names))
    saved_args = {k: v for k, v in checkpoint.config.get("model_args", {}).items() if k != "num_classes"}
    config = TimmWrapperConfig(
        architecture=checkpoint.config["architecture"],
        num_labels=len(label_names),
        model_args={**saved_args, **model_args} or None,
        pretrained_cfg=pretrained_cfg,
    )
    config._name_or_path = checkpoint.name
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(backbone.state_dict())
    return model


def _head_prefix(model: nn.Module) -> str:
    """Qualified name of the classifier (timm wrapper: timm's ``get_classifier()``; transformers: ``classifier``)."""
    if hasattr(model, "timm_model"):
        return classifier_name(model)
    if isinstance(getattr(model, "classifier", None), nn.Module):
        return "classifier"
    raise ValueError(f"Cannot locate the classifier of {type(model).__name__} (no `classifier` module).")


def _load_transformers(
    checkpoint: Checkpoint, label_names: Sequence[str], preprocessing: dict[str, Any], model_args: dict
) -> nn.Module:
    """transformers format: the saved model as before when its head fits, else a new head for the data's labels."""
    folder, num_labels = str(checkpoint.folder), len(label_names)
    _check_image_size(checkpoint, preprocessing)
    saved_labels = AutoConfig.from_pretrained(folder).num_labels
    if saved_labels == num_labels:
        model = load_image_classifier(folder, **model_args)
    else:
        model, info = AutoModelForImageClassification.from_pretrained(
            folder, id2label=dict(enumerate(label_names)),
            label2id={label: i for i, label in enumerate(label_names)}, ignore_mismatched_sizes=True,
            output_loading_info=True, **model_args,
        )
        head = _head_prefix(model)
        fresh = sorted({*info.get("missing_keys", ()), *(entry[0] for entry in info.get("mismatched_keys", ()))})
        outside = [key for key in fresh if not key.startswith(head + ".")]
        if outside:
            raise ValueError(
                f"Pretrained checkpoint {checkpoint.name!r} does not supply {outside[:6]} (outside the classifier "
                f"`{head}`); check `model_args` and the input size."
            )
        if hasattr(model, "timm_model"):
            _reset_timm_head(model, head)
    if hasattr(model, "timm_model"):
        model.config.pretrained_cfg = {**(model.config.pretrained_cfg or {}), **preprocessing}
    else:
        model.config.pretrained_cfg = dict(preprocessing)
    return model


def _check_image_size(checkpoint: Checkpoint, preprocessing: dict[str, Any]) -> None:
    """A transformers model with learnt position embeddings is fine-tuned at its own ``image_size``."""
    trained = checkpoint.config.get("image_size")
    size = preprocessing.get("input_size")
    if isinstance(trained, int) and size and tuple(size[1:]) != (trained, trained):
        raise ValueError(
            f"Pretrained checkpoint {checkpoint.name!r} was trained at {trained} px, the recipe asks for "
            f"{tuple(size[1:])}: set `data.image_size` to {trained} (transformers would re-initialise its position "
            "embeddings), or use a timm checkpoint (timm resamples them)."
        )


def _reset_timm_head(model: TimmWrapperForImageClassification, head: str) -> None:
    """Re-draw the classifier of a wrapped timm model with the architecture's own initialisation."""
    config = model.config
    fresh = timm.create_model(config.architecture, pretrained=False, num_classes=config.num_labels,
                              **(config.model_args or {}))
    prefix = head.removeprefix("timm_model.") + "."
    state = {k: v for k, v in fresh.state_dict().items() if k.startswith(prefix)}
    with torch.no_grad():
        model.timm_model.load_state_dict(state, strict=False)
