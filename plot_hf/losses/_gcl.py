"""Gaussian clouded logit (GCL) loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import LOSSES, ClassCounts, LongTailedLoss, as_class_counts, check_inputs
from ._ce import focal_term


def gcl_amplitudes(class_counts: ClassCounts) -> Tensor:
    """Per-class cloud amplitude ``a_j = (log n_max - log n_j) / (log n_max - log n_min)`` in [0, 1]
    (float64 ``[C]``): 0 for the most frequent class, 1 for the rarest; all zeros when the counts are equal."""
    counts = as_class_counts(class_counts)
    gaps = counts.max().log() - counts.log()
    top = gaps.max()
    return gaps / top if top > 0 else torch.zeros_like(gaps)


@LOSSES.register("gcl")
class GCLLoss(LongTailedLoss):
    """Gaussian clouded logit loss, Li, Cheung and Lu, "Long-tailed Visual Recognition via Gaussian Clouded
    Logit Adjustment" (CVPR 2022), as released in Keke921/GCLLoss (``losses.py``, ``GCLLoss``):

    ``l_i = CE(s * (cos_i - noise_mul * a * |delta_i| - m e_{y_i}), y_i)``, with ``cos_i`` the cosine logits
    ``[C]`` of a :class:`~plot_hf.losses.NormedLinear` head, ``delta_ij ~ N(0, (1/3)^2)`` clamped to [-1, 1],
    drawn independently for every sample and class, and ``a_j`` from :func:`gcl_amplitudes`. The cloud is
    subtracted from every class's logit, so rarer classes (larger ``a_j``) get larger clouds; the most
    frequent class gets none. With ``gamma > 0`` the cross-entropy is replaced by the focal term, as in the
    reference's classifier-re-training mode (``train_cls=True``).

    Args:
        m (float, *optional*, defaults to 0.0): extra margin on the target logit (the CIFAR stage-1 runs use 0).
        s (float, *optional*, defaults to 30.0): logit scale.
        noise_mul (float, *optional*, defaults to 0.5): cloud size ``beta`` (the CIFAR stage-1 runs use 0.5).
        gamma (float, *optional*, defaults to 0.0): focal gamma on top of the clouded cross-entropy.
        generator (torch.Generator, *optional*): source of the noise; None draws from torch's global
            generator on the logits' device. A generator on another device than the logits is sampled on its
            own device and the noise moved.

    Departures: the noise is drawn only in training mode (``.train()``); in ``.eval()`` the loss is noise-free
    (the reference also clouds its validation loss). The reference divides by ``max_j(log n_max - log n_j)``
    and fails when all counts are equal; here the cloud is then zero.
    """

    requires_normed_classifier = True

    def __init__(
        self,
        class_counts: ClassCounts,
        m: float = 0.0,
        s: float = 30.0,
        noise_mul: float = 0.5,
        gamma: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(class_counts)
        if not s > 0:
            raise ValueError(f"`s` must be > 0, got {s}.")
        if not noise_mul >= 0:
            raise ValueError(f"`noise_mul` must be >= 0, got {noise_mul}.")
        if not gamma >= 0:
            raise ValueError(f"`gamma` must be >= 0, got {gamma}.")
        self.m, self.s, self.noise_mul, self.gamma = float(m), float(s), float(noise_mul), float(gamma)
        self.generator = generator
        self.register_buffer("amplitudes", gcl_amplitudes(self.class_counts.double()).float())

    def _abs_noise(self, logits: Tensor) -> Tensor:
        if self.generator is None:
            noise = torch.randn(logits.shape, device=logits.device, dtype=logits.dtype)
        else:
            noise = torch.randn(logits.shape, generator=self.generator, device=self.generator.device)
        return (noise / 3.0).abs().clamp_max(1.0).to(device=logits.device, dtype=logits.dtype)

    def cloud(self, logits: Tensor) -> Tensor:
        """The clouded cosine logits ``cos - noise_mul * a * |delta|`` (unchanged in eval mode)."""
        if not self.training or self.noise_mul == 0.0:
            return logits
        amplitudes = self.amplitudes.to(device=logits.device, dtype=logits.dtype)
        return logits - self.noise_mul * amplitudes * self._abs_noise(logits)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = check_inputs(logits, labels, self.num_classes)
        clouded = self.cloud(logits) - self.m * F.one_hot(labels, self.num_classes).to(logits.dtype)
        log_p_y = F.log_softmax(self.s * clouded, dim=-1).gather(1, labels[:, None]).squeeze(1)
        return focal_term(log_p_y, self.gamma)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, m={self.m}, s={self.s}, noise_mul={self.noise_mul}, "
            f"gamma={self.gamma}"
        )
