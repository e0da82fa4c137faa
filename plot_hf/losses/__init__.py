"""Long-tailed baseline losses, the cosine classifier, and class-aware samplers (torch only).

Every loss is a :class:`LongTailedLoss` built from the training class counts, returning per-sample losses
``[B]``; :func:`build_loss` builds one by its registered name (see ``LOSSES``). Mixup is applied outside the
loss with :func:`mixup_loss`.
"""

from __future__ import annotations

from ._base import LOSSES, ClassCounts, LongTailedLoss, build_loss, class_balanced_weights, mixup_loss
from ._ce import CELoss, ClassBalancedLoss, FocalLoss
from ._drw import DRWLoss
from ._gcl import GCLLoss, gcl_amplitudes
from ._label_aware_smoothing import LabelAwareSmoothingLoss, label_aware_epsilons
from ._ldam import LDAMLoss, ldam_margins
from ._logit_adjusted import BalancedSoftmaxLoss, LogitAdjustedLoss, log_prior, posthoc_logit_adjustment
from .normed_linear import NormedLinear
from .samplers import ClassBalancedSampler, SquareRootSampler

__all__ = [
    "LOSSES",
    "BalancedSoftmaxLoss",
    "CELoss",
    "ClassBalancedLoss",
    "ClassBalancedSampler",
    "ClassCounts",
    "DRWLoss",
    "FocalLoss",
    "GCLLoss",
    "LDAMLoss",
    "LabelAwareSmoothingLoss",
    "LogitAdjustedLoss",
    "LongTailedLoss",
    "NormedLinear",
    "SquareRootSampler",
    "build_loss",
    "class_balanced_weights",
    "gcl_amplitudes",
    "label_aware_epsilons",
    "ldam_margins",
    "log_prior",
    "mixup_loss",
    "posthoc_logit_adjustment",
]
