"""Validation of physical parameters and solver inputs.

Every check raises `ValueError` naming the field and the offending value, so
that nothing non-physical ever reaches the solver. Checks are skipped for
traced values (a system rebuilt inside `jax.jit` or differentiated with respect
to its parameters): those were validated when the concrete system was built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _short(x) -> str:
    arr = np.asarray(x)
    with np.printoptions(precision=4, threshold=12, edgeitems=3):
        return repr(arr) if arr.ndim else repr(arr.item())


def as_float_array(name: str, value, *, ndim: int | None = None, shape=None):
    """Converts `value` to a float array of the default dtype and checks it is finite."""
    if _is_traced(value):
        return value
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric, got {value!r}") from e
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimension(s), got shape {arr.shape}: {_short(arr)}"
        )
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {_short(arr)}")
    return jnp.asarray(arr, dtype=jnp.result_type(float))


def scalar(name: str, value, *, positive: bool = False, nonnegative: bool = False):
    arr = as_float_array(name, value, ndim=0)
    if _is_traced(arr):
        return arr
    v = float(arr)
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {v!r}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {v!r}")
    return arr


def vector(name: str, value, *, positive: bool = False, size: int | None = None):
    arr = as_float_array(name, value, ndim=1)
    if _is_traced(arr):
        return arr
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    if size is not None and arr.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},), got {arr.shape}")
    if positive and not bool(jnp.all(arr > 0)):
        raise ValueError(f"{name} must be > 0 everywhere, got {_short(arr)}")
    return arr


def coupling_matrix(name: str, value, n: int):
    """A symmetric `(n, n)` matrix with zero diagonal and non-negative entries."""
    arr = as_float_array(name, value, ndim=2, shape=(n, n))
    if _is_traced(arr):
        return arr
    a = np.asarray(arr)
    if not np.allclose(a, a.T, rtol=1e-12, atol=1e-12):
        i, j = np.unravel_index(np.argmax(np.abs(a - a.T)), a.shape)
        raise ValueError(
            f"{name} must be symmetric, "
            f"got {name}[{i},{j}]={a[i, j]!r} != {name}[{j},{i}]={a[j, i]!r}"
        )
    if np.any(a < 0):
        i, j = np.argwhere(a < 0)[0]
        raise ValueError(f"{name} must be non-negative, got {name}[{i},{j}]={a[i, j]!r}")
    if np.any(np.diag(a) != 0):
        i = int(np.flatnonzero(np.diag(a))[0])
        raise ValueError(f"{name} must have a zero diagonal, got {name}[{i},{i}]={a[i, i]!r}")
    return arr


def states(name: str, y, state_dim: int):
    """An array of states of shape `(..., state_dim)`, all finite."""
    arr = as_float_array(name, y) if not _is_traced(y) else y
    if arr.ndim == 0 or arr.shape[-1] != state_dim:
        raise ValueError(f"{name} must have shape (..., {state_dim}), got shape {tuple(arr.shape)}")
    return arr


def times(name: str, ts):
    """A strictly increasing, finite 1-D array of at least two times."""
    arr = as_float_array(name, ts, ndim=1)
    if _is_traced(arr):
        return arr
    if arr.shape[0] < 2:
        raise ValueError(f"{name} must hold at least two times, got {_short(arr)}")
    d = np.diff(np.asarray(arr))
    if np.any(d <= 0):
        i = int(np.flatnonzero(d <= 0)[0])
        raise ValueError(
            f"{name} must be strictly increasing, got {name}[{i}]={float(arr[i])!r} "
            f">= {name}[{i + 1}]={float(arr[i + 1])!r}"
        )
    return arr
