"""Helpers shared by the probes: stored arrays as checked float64 matrices, and seeds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def as_matrix(name: str, x, *, n_rows: int | None = None) -> np.ndarray:
    """`x` as a finite float64 matrix `(N, H)`."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from e
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N, H), got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {a.shape}")
    if n_rows is not None and a.shape[0] != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows (one per sample), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX PRNG key (new- or old-style), an int, or `None`
    (seed 0)."""
    if key is None:
        return np.random.default_rng(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return np.random.default_rng(int(key))
    try:
        k = jnp.asarray(key)
    except TypeError as e:
        raise ValueError(
            f"key must be a JAX PRNG key or an integer seed, got {type(key).__name__}"
        ) from e
    if jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
        k = jax.random.key_data(k)
    if not jnp.issubdtype(k.dtype, jnp.integer):
        raise ValueError(f"key must be a JAX PRNG key or an integer seed, got dtype {k.dtype}")
    return np.random.default_rng(np.asarray(k, dtype=np.uint64).ravel().tolist())
