"""Coupling matrices for common graphs, as NumPy arrays: they configure a system."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float


def _check(n: int, kappa: float):
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not (np.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa must be finite and >= 0, got {kappa!r}")


def chain_coupling(n: int, kappa: float) -> Float[np.ndarray, "n n"]:
    """Nearest neighbours on an open chain: `kappa_{i,i+1} = kappa_{i+1,i} = kappa`."""
    _check(n, kappa)
    k = np.zeros((n, n))
    i = np.arange(n - 1)
    k[i, i + 1] = k[i + 1, i] = kappa
    return k


def ring_coupling(n: int, kappa: float) -> Float[np.ndarray, "n n"]:
    """Nearest neighbours on a ring (a chain whose ends are joined)."""
    k = chain_coupling(n, kappa)
    if n > 2:
        k[0, n - 1] = k[n - 1, 0] = kappa
    return k


def all_to_all_coupling(n: int, kappa: float) -> Float[np.ndarray, "n n"]:
    """Every pair coupled with strength `kappa`."""
    _check(n, kappa)
    return kappa * (np.ones((n, n)) - np.eye(n))
