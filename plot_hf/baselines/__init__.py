"""Long-tailed baselines as composable parts (loss, sampler, classifier head, M2m, stage 2), selectable from
a recipe with ``baseline: NAME`` (:func:`expand_baseline`), each usable with PLOT on or off.

See :mod:`plot_hf.baselines.specs` for the baselines, :mod:`plot_hf.baselines.sampling` for the samplers,
:mod:`plot_hf.stage2` for classifier re-training and :mod:`plot_hf.m2m` for M2m.
"""

from __future__ import annotations

from .sampling import SAMPLERS, DeferredSampler, build_train_sampler, dataset_labels
from .specs import BASELINES, SEED_TABLE_BASELINES, BaselineSpec, expand_baseline, get_baseline

__all__ = [
    "BASELINES",
    "SAMPLERS",
    "SEED_TABLE_BASELINES",
    "BaselineSpec",
    "DeferredSampler",
    "build_train_sampler",
    "dataset_labels",
    "expand_baseline",
    "get_baseline",
]
