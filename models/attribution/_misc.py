"""Helpers shared by the attribution methods: static argument checks and chunked evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import is_traced

ScalarFn = Callable[[Float[Array, "*shape"]], Float[Array, ""]]


DEFAULT_CHUNK = 64


def as_float(name: str, x) -> Array:
    """`x` as a JAX array of a floating dtype (integers become the default float)."""
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"{name} must be an array, got {type(x).__name__}") from e
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def check_scalar_fn(fn: Callable, x: Array, name: str = "fn") -> None:
    """Raises unless `fn(x)` is a floating scalar (checked with `jax.eval_shape`)."""
    if not callable(fn):
        raise ValueError(f"{name} must be callable, got {type(fn).__name__}")
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(
            f"{name} must map x to a scalar array, got a {type(out).__name__} "
            f"(for a vector output, explain one entry: lambda x: model(x)[target])"
        )
    if out.shape != ():
        raise ValueError(
            f"{name} must map x to a scalar, got output shape {out.shape} "
            f"(explain one entry, e.g. lambda x: model(x)[target], or a sum)"
        )
    if not jnp.issubdtype(out.dtype, jnp.inexact):
        raise ValueError(f"{name} must return a floating-point scalar, got dtype {out.dtype}")


def check_nonnegative(name: str, value) -> None:
    """Checks a scalar hyperparameter where it is concrete (traced values pass)."""
    if is_traced(value):
        return
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    v = float(arr)
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {v!r}")


def check_baseline(x: Array, baseline) -> Array:
    """Checks `baseline` (`None` means zeros; a scalar is broadcast; otherwise the
    shape must equal `x`'s) and returns it as an array; broadcast it with `broadcast_like`."""
    if baseline is None:
        return jnp.zeros((), x.dtype)
    b = jnp.asarray(baseline, dtype=x.dtype)
    if b.shape not in ((), x.shape):
        raise ValueError(
            f"baseline must be a scalar or have the shape of x {x.shape}, got shape {b.shape}"
        )
    return b


def broadcast_like(b: Array, x: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(b, x.dtype), x.shape)


def safe_div(a: Array, b: Array) -> Array:
    """`a / b`, and 0 where `b == 0` (no NaN, also in gradients)."""
    zero = b == 0
    return jnp.where(zero, 0.0, a / jnp.where(zero, 1.0, b))


def _chunks(points: Any, chunk_size: int):
    """Splits the leading axis (static length `N`) of every leaf of `points` into
    `m` chunks of `c` points, padding the last chunk with copies of the first
    point (so padded evaluations stay finite). Returns the chunks, a validity
    mask of shape `(m, c)`, and `N`."""
    n = jax.tree.leaves(points)[0].shape[0]
    c = max(1, min(int(chunk_size), n))
    m = -(-n // c)
    pad = m * c - n

    def split(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)], axis=0)
        return a.reshape(m, c, *a.shape[1:])

    return jax.tree.map(split, points), (np.arange(m * c) < n).reshape(m, c), n


def chunked_reduce(g: Callable, points: Any, *, chunk_size: int) -> Any:
    """`sum_k g(points[k])` over the leading axis of `points`, `chunk_size` points at a time.

    Inside a chunk the points are `jax.vmap`ped; chunks are visited by
    `jax.lax.scan`, so memory grows with `chunk_size`, not with the number of
    points. Padded evaluations are masked out of the sum.
    """
    chunks, valid, _ = _chunks(points, chunk_size)

    def chunk_sum(pts, ok):
        out = jax.vmap(g)(pts)

        def masked(o):
            okb = jnp.asarray(ok).reshape(ok.shape + (1,) * (o.ndim - 1))
            return jnp.where(okb, o, 0).sum(0)

        return jax.tree.map(masked, out)

    if valid.shape[0] == 1:
        return chunk_sum(jax.tree.map(lambda a: a[0], chunks), valid[0])
    out_struct = jax.eval_shape(g, jax.tree.map(lambda a: a[0, 0], chunks))
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_struct)

    def body(acc, inp):
        return jax.tree.map(jnp.add, acc, chunk_sum(*inp)), None

    acc, _ = jax.lax.scan(body, init, (chunks, jnp.asarray(valid)))
    return acc


def chunked_map(g: Callable, points: Any, *, chunk_size: int) -> Any:
    """`stack_k g(points[k])`, evaluated `chunk_size` points at a time (`vmap` inside
    a chunk, `lax.scan` over chunks). For small outputs (scalars per point)."""
    chunks, valid, n = _chunks(points, chunk_size)
    if valid.shape[0] == 1:
        out = jax.vmap(g)(jax.tree.map(lambda a: a[0], chunks))
    else:
        _, out = jax.lax.scan(lambda carry, pts: (carry, jax.vmap(g)(pts)), None, chunks)
        out = jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), out)
    return jax.tree.map(lambda o: o[:n], out)


def normal_noise(key, n, x):
    """`n` draws of `N(0, I)` shaped like `x`, generated up front.

    One call to `jax.random.normal` for all draws: its compiled kernel is
    cached per shape, and the result does not depend on `chunk_size`. It holds
    `n * x.size` numbers, the same as the input batch Captum would build.
    """
    return jax.random.normal(key, (n, *x.shape), x.dtype)
