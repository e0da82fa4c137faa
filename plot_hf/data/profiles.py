"""Imbalance profiles: how many training images each class keeps.

Class 0 is the head. With ``C`` classes, a head count ``n_max`` and an imbalance factor ``IF >= 1``:

* exponential (Cao et al., LDAM-DRW): ``n_i = int(n_max * (1 / IF) ** (i / (C - 1)))``
* step: the first ``C // 2`` classes keep ``n_max``, the others ``int(n_max / IF)``

``int()`` truncates exactly as the reference code does, so CIFAR-10 at IF 100 keeps
5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 images (12,406 in all).
"""

from __future__ import annotations

from typing import Literal

ProfileName = Literal["exponential", "step"]
PROFILES: tuple[str, ...] = ("exponential", "step")


def class_counts(
    num_classes: int, max_per_class: int, imbalance_factor: float, profile: ProfileName = "exponential"
) -> list[int]:
    """Number of images kept per class, head (class 0) first.

    Raises ``ValueError`` (naming the argument) for an imbalance factor below 1, an unknown profile, fewer
    than one class, or a profile that leaves a class with no image.
    """
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
    if max_per_class < 1:
        raise ValueError(f"`max_per_class` must be >= 1, got {max_per_class}.")
    if not imbalance_factor >= 1:
        raise ValueError(f"`imbalance_factor` must be >= 1 (1 means balanced), got {imbalance_factor}.")
    if profile == "exponential":
        if num_classes == 1:
            counts = [max_per_class]
        else:
            counts = [
                int(max_per_class * (1.0 / imbalance_factor) ** (i / (num_classes - 1)))
                for i in range(num_classes)
            ]
    elif profile == "step":
        tail = int(max_per_class / imbalance_factor)
        counts = [max_per_class if i < num_classes // 2 else tail for i in range(num_classes)]
    else:
        raise ValueError(f"Unknown imbalance `profile` {profile!r}; choose one of {PROFILES}.")
    empty = [i for i, n in enumerate(counts) if n < 1]
    if empty:
        raise ValueError(
            f"The {profile} profile with max_per_class={max_per_class} and imbalance_factor={imbalance_factor} "
            f"leaves class(es) {empty[:5]} with 0 images; lower the imbalance factor."
        )
    return counts
