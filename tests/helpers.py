"""Small builders shared by the trainer tests: a tiny image dataset and a tiny timm model."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from datasets import Dataset

import plot_hf  # noqa: F401
from plot_hf.models import create_image_classifier


class Wrapper(torch.nn.Module):
    """Stands in for TimmWrapperForImageClassification: forward(pixel_values=...) -> logits."""

    def __init__(self, timm_model):
        super().__init__()
        self.timm_model = timm_model

    def forward(self, pixel_values):
        return self.timm_model(pixel_values)


def tensor_dataset(num_rows: int = 64, num_classes: int = 4, size: int = 8, seed: int = 0) -> Dataset:
    """Rows of ``pixel_values`` (3 x size x size floats) and long-tailed ``labels``."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.5 ** k for k in range(num_classes)])
    labels = rng.choice(num_classes, size=num_rows, p=weights / weights.sum())
    labels[:num_classes] = np.arange(num_classes)  # every class present
    pixels = rng.standard_normal((num_rows, 3, size, size)).astype(np.float32) + labels[:, None, None, None] * 0.3
    return Dataset.from_dict({"pixel_values": list(pixels), "labels": labels.tolist()}).with_format("torch")


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]),
        "labels": torch.as_tensor([int(r["labels"]) for r in rows]),
    }


def tiny_model(architecture: str = "resnet20_cifar", num_classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return create_image_classifier(architecture, [f"c{i}" for i in range(num_classes)], input_size=(3, 8, 8))


def parameters_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class HostReadError(AssertionError):
    """A tensor value was read on the host inside a :func:`forbid_host_reads` block."""


@contextmanager
def forbid_host_reads(allow: tuple[str, ...] = ()):
    """Make every Python-level way of reading a tensor's value on the host raise :class:`HostReadError`.

    On an accelerator each of these is a device-to-host synchronisation: ``item``, ``tolist``, ``bool`` /
    ``float`` / ``int`` of a tensor, ``nonzero`` / ``unique`` / ``masked_select`` (data-dependent shapes),
    and indexing with a boolean mask or a 0-d tensor (PyTorch reads such an index as an integer).
    ``allow``: names of these (e.g. ``"unique"``) to leave alone. Yields a handle whose ``lifted()`` context
    lifts the ban for a block (e.g. the solver's one copy of the Gramian to the host, by design).
    """
    saved: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, replacement) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def refuse(what: str):
        def raiser(*args, **kwargs):
            raise HostReadError(f"host read of a tensor value: {what}")

        return raiser

    original_getitem = torch.Tensor.__getitem__

    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        for part in parts:
            if isinstance(part, torch.Tensor) and (part.dtype == torch.bool or part.ndim == 0):
                raise HostReadError("host read of a tensor value: indexing with a mask or a 0-d tensor")
        return original_getitem(self, index)

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "unique", "masked_select"):
        if name not in allow:
            patch(torch.Tensor, name, refuse(f"Tensor.{name}"))
    for name in ("nonzero", "unique", "masked_select"):
        if name not in allow:
            patch(torch, name, refuse(f"torch.{name}"))
    patch(torch.Tensor, "__getitem__", getitem)

    class Handle:
        @contextmanager
        def lifted(self):
            bans = [(owner, name, getattr(owner, name)) for owner, name, _ in saved]
            for owner, name, value in saved:
                setattr(owner, name, value)
            try:
                yield
            finally:
                for owner, name, value in bans:
                    setattr(owner, name, value)

    try:
        yield Handle()
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
