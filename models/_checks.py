"""Static argument checks shared by `models.attribution` and `models.probes`."""

from __future__ import annotations

import jax
import numpy as np


def is_traced(value) -> bool:
    """Whether `value` is a JAX tracer (its value cannot be checked eagerly)."""
    return isinstance(value, jax.core.Tracer)


def check_int(name: str, value, *, minimum: int) -> int:
    """`value` as a Python `int`; `ValueError` unless it is an integer (not a bool) `>= minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)
