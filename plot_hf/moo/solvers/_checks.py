"""Checks of solver hyperparameters at construction: errors name the parameter and the value."""

from __future__ import annotations

import math

__all__ = ["check_number"]


def check_number(name: str, value: object, *, minimum: float, strict: bool = False, integer: bool = False):
    """``value`` if it is a finite number (an integer if ``integer``) ``>= minimum`` (``> minimum`` if
    ``strict``); else a ``ValueError`` naming ``name`` and the value."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        what = "an integer" if integer else "a finite number"
        raise ValueError(f"`{name}` must be {what} {'>' if strict else '>='} {minimum:g}, got {value!r}.")
    return value
