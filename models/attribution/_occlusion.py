"""Occlusion over time windows of a sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_int
from ._misc import (
    DEFAULT_CHUNK,
    ScalarFn,
    as_float,
    broadcast_like,
    check_scalar_fn,
    chunked_reduce,
)


def _window_starts(length: int, window: int, stride: int) -> np.ndarray:
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:  # cover the tail too
        starts.append(length - window)
    return np.asarray(starts)


def occlusion(
    fn: ScalarFn,
    x: Float[ArrayLike, "T D"],
    *,
    window: int,
    stride: int = 1,
    baseline: Float[ArrayLike, "..."] | float = 0.0,
    per_channel: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> Float[Array, "T D"]:
    r"""Occlusion over time windows of a sequence `x` of shape `(T, D)` (Zeiler and Fergus 2014).

    A window `W` covers the time steps `s, ..., s + window - 1`, for every
    channel (`per_channel=False`) or for one channel `d` (`per_channel=True`).
    Occluding it replaces `x` by `baseline` there. The attribution of an entry
    is the output drop averaged over the windows that cover it:

    `A_{t,d} = mean_{W ∋ (t,d)} [fn(x) - fn(x with W occluded)]`.

    Window starts are `0, stride, 2 stride, ...` up to `T - window`, plus
    `T - window` itself when the stride does not land there, so every time
    step is covered. `baseline` is a scalar or any array broadcastable to
    `(T, D)` (e.g. per-channel means of shape `(D,)`).
    """
    x = as_float("x", x)
    if x.ndim != 2:
        raise ValueError(f"occlusion needs x of shape (T, D), got shape {x.shape}")
    check_scalar_fn(fn, x)
    T, D = x.shape
    window = check_int("window", window, minimum=1)
    stride = check_int("stride", stride, minimum=1)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    if window > T:
        raise ValueError(f"window must be <= the sequence length T={T}, got {window}")
    b = jnp.asarray(baseline, x.dtype)
    try:
        if np.broadcast_shapes(b.shape, x.shape) != x.shape:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"baseline must broadcast to the shape of x {x.shape}, got shape {b.shape}"
        ) from None

    starts = _window_starts(T, window, stride)
    counts = np.zeros(T)
    for s in starts:
        counts[s : s + window] += 1
    if per_channel:
        st, ch = np.repeat(starts, D), np.tile(np.arange(D), len(starts))
    else:
        st, ch = starts, np.full(len(starts), -1)

    @jax.jit
    def run(x, b, st, ch, counts):
        b = broadcast_like(b, x)
        t_idx = jnp.arange(T)[:, None]
        d_idx = jnp.arange(D)[None, :]
        f0 = fn(x)

        def one(p):
            s, c = p
            mask = (t_idx >= s) & (t_idx < s + window) & ((c < 0) | (d_idx == c))
            return (f0 - fn(jnp.where(mask, b, x))) * mask.astype(x.dtype)

        total = chunked_reduce(one, (st, ch), chunk_size=chunk_size)
        return total / counts[:, None]

    return run(x, b, jnp.asarray(st), jnp.asarray(ch), jnp.asarray(counts, x.dtype))
