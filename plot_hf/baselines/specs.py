"""The long-tailed baselines of the seed table as compositions of parts: a loss (``loss_type`` /
``loss_kwargs``), mixup, a classifier head, a training sampler, M2m over-sampling, and an optional stage 2.

A recipe selects one with ``baseline: NAME``; :func:`expand_baseline` fills in the baseline's defaults for
every key the recipe (or the command line) does not set, so each part stays individually overridable
(``--loss_kwargs '{drw_epoch: 100}'``, ``--stage2 null``). Mapping-valued defaults (``loss_kwargs``,
``stage2``, ``m2m``) are merged key by key with the recipe's; the loss's defaults are dropped when the recipe
picks another ``loss_type``. Every baseline runs with PLOT on or off (``moo_until_epoch``, ``moo_framework``).

Epoch-dependent defaults are fractions of ``num_train_epochs`` (the papers' 160 of 200 epochs -> 0.8).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry

DEFAULT_EPOCHS = 3.0  # TrainingArguments' default num_train_epochs


@dataclass(frozen=True)
class BaselineSpec:
    """One baseline: what it is, where it comes from, and the recipe keys it sets.

    ``training`` holds :class:`~plot_hf.PLOTConfig` keys, ``model`` :class:`~plot_hf.recipe.ModelArguments`
    keys (``classifier``, ``stage2``); both are functions of ``num_train_epochs``.
    """

    name: str
    summary: str
    citation: str
    training: Callable[[float], dict[str, Any]]
    model: Callable[[float], dict[str, Any]] = field(default=lambda epochs: {})

    def defaults(self, num_train_epochs: float = DEFAULT_EPOCHS) -> dict[str, Any]:
        """Every recipe key this baseline sets, for a run of ``num_train_epochs`` epochs."""
        return {"baseline": self.name, **self.training(num_train_epochs), **self.model(num_train_epochs)}


def _at(fraction: float, epochs: float) -> int:
    return max(0, int(round(fraction * epochs)))


def _stage2(method: str, **kwargs: Any) -> dict[str, Any]:
    return {"method": method, **kwargs}


BASELINES: Registry[BaselineSpec] = Registry("baseline")
"""Every baseline by name; an unknown name is a ``ValueError`` listing the valid ones."""

for _spec in [
        BaselineSpec("ce", "Softmax cross-entropy (ERM).", "-", lambda e: {"loss_type": "ce", "loss_kwargs": {}}),
        BaselineSpec(
            "focal", "Focal loss, gamma 1 (as in the LDAM-DRW CIFAR runs).",
            "Lin et al., ICCV 2017", lambda e: {"loss_type": "focal", "loss_kwargs": {"gamma": 1.0}},
        ),
        BaselineSpec(
            "class_balanced", "Class-balanced cross-entropy, beta 0.9999.", "Cui et al., CVPR 2019",
            lambda e: {"loss_type": "class_balanced", "loss_kwargs": {"beta": 0.9999}},
        ),
        BaselineSpec(
            "crt_mixup",
            "Mixup (alpha 1) stage 1; stage 2 as the PLOT reference runs it: 15% of the stage-1 epochs (30 after "
            "200) re-training the classifier "
            "(not re-initialised; backbone frozen by requires_grad, batch norm in train mode) with class-aware "
            "sampling, SGD lr 0.01 constant, and the class-wise feature-perturbation loss (plot_hf.stage2).",
            "Kang et al., ICLR 2020; Zhang et al., ICLR 2018; zzpustc/PLOT (train_cifar.py, sampler 'Decoup')",
            lambda e: {"loss_type": "ce", "loss_kwargs": {}, "mixup_alpha": 1.0},
            lambda e: {"stage2": _stage2("crt_mixup", epochs=max(1, _at(0.15, e)))},
        ),
        BaselineSpec(
            "ldam_drw",
            "LDAM (margins ~ n_j^-1/4, max 0.5, s 30) on a cosine classifier; deferred re-weighting (beta "
            "0.9999) from 80% of training.",
            "Cao et al., NeurIPS 2019",
            lambda e: {"loss_type": "ldam", "loss_kwargs": {"max_m": 0.5, "s": 30.0, "drw_epoch": _at(0.8, e)}},
            lambda e: {"classifier": "normed"},
        ),
        BaselineSpec(
            "balanced_softmax", "Balanced Softmax: CE(z + log n, y).", "Ren et al., NeurIPS 2020",
            lambda e: {"loss_type": "balanced_softmax", "loss_kwargs": {}},
        ),
        BaselineSpec(
            "logit_adjustment", "Logit-adjusted loss, CE(z + tau log pi, y), tau 1.", "Menon et al., ICLR 2021",
            lambda e: {"loss_type": "logit_adjustment", "loss_kwargs": {"tau": 1.0}},
        ),
        BaselineSpec(
            "m2m",
            "Cross-entropy; from 80% of training, class-balanced over-sampling in which tail samples are "
            "translated from head-class seeds against the stage-1 classifier (plot_hf.m2m).",
            "Kim, Jeong and Shin, CVPR 2020",
            lambda e: {
                "loss_type": "ce", "loss_kwargs": {}, "train_sampler": "class_balanced",
                "resample_from_epoch": _at(0.8, e), "m2m": {"start_epoch": _at(0.8, e)},
            },
        ),
        BaselineSpec(
            "mislas",
            "Mixup (alpha 1) stage 1; stage 2: label-aware smoothing (0.3 head -> 0.0 tail, concave) and "
            "shift learning on batch norm, classifier re-trained, class-balanced sampling.",
            "Zhong et al., CVPR 2021",
            lambda e: {"loss_type": "ce", "loss_kwargs": {}, "mixup_alpha": 1.0},
            lambda e: {"stage2": _stage2(
                "mislas",
                loss_kwargs={"smooth_head": 0.3, "smooth_tail": 0.0, "shape": "concave"},
            )},
        ),
        BaselineSpec(
            "gcl",
            "Gaussian clouded logits (noise_mul 0.5, s 30) on a cosine classifier; stage 2 re-balances the "
            "classifier (class-balanced sampling, clouded focal loss gamma 1, frozen features).",
            "Li, Cheung and Lu, CVPR 2022",
            lambda e: {"loss_type": "gcl", "loss_kwargs": {"noise_mul": 0.5, "s": 30.0, "m": 0.0}},
            lambda e: {"classifier": "normed", "stage2": _stage2("gcl")},
        ),
]:
    BASELINES.add(_spec.name, _spec)
del _spec

SEED_TABLE_BASELINES = ("crt_mixup", "ldam_drw", "balanced_softmax", "m2m", "mislas", "gcl")
"""The six baselines of the seed poster's main table, in its order."""

_MERGED = ("loss_kwargs", "stage2", "m2m")


def get_baseline(name: str) -> BaselineSpec:
    """The baseline registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    return BASELINES[name]


def expand_baseline(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the raw recipe mapping with the defaults of ``raw["baseline"]`` filled in.

    Keys set in ``raw`` win; ``loss_kwargs``, ``stage2`` and ``m2m`` mappings are merged (the recipe's keys
    win; an explicit ``null`` switches the part off); ``loss_kwargs`` defaults are dropped when ``raw`` sets
    another ``loss_type`` than the baseline's.
    """
    name = raw.get("baseline")
    if name is None:
        return raw
    if name not in BASELINES:
        raise ValueError(f"Recipe key `baseline`: {name!r} is unknown; valid names are: {', '.join(BASELINES)}.")
    epochs = float(raw.get("num_train_epochs", DEFAULT_EPOCHS))
    defaults = BASELINES[name].defaults(epochs)
    out = copy.deepcopy(raw)
    if "loss_type" in raw and raw["loss_type"] != defaults.get("loss_type"):
        defaults.pop("loss_kwargs", None)
    for key, value in defaults.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif key in _MERGED and isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = {**value, **out[key]}
    return out
