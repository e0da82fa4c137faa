"""Cosine classifier used with LDAM and GCL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NormedLinear(nn.Module):
    """Cosine-similarity classifier of Cao et al. 2019 (kaidic/LDAM-DRW, ``NormedLinear``):
    ``out_ij = <x_i / ||x_i||, w_j / ||w_j||>``, in [-1, 1]; no bias.

    ``weight`` has the ``nn.Linear`` layout ``[out_features, in_features]`` (one row per class; the reference
    stores the transpose and normalises its columns, which is the same function). Initialisation as in the
    reference: uniform in [-1, 1], then every class vector rescaled to unit norm.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        for key, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{key}` must be a positive integer, got {value!r}.")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
