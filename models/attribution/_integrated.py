"""Integrated gradients and the quadrature rules of its path integral."""

from __future__ import annotations

import functools

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
    check_baseline,
    check_scalar_fn,
    chunked_reduce,
)

#: The integration rules of `integrated_gradients`.
QUADRATURE_METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)


@functools.lru_cache(maxsize=64)
def _quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(steps, dtype=np.float64)
    if method == "riemann_left":
        alphas, weights = k / steps, np.full(steps, 1.0 / steps)
    elif method == "riemann_right":
        alphas, weights = (k + 1) / steps, np.full(steps, 1.0 / steps)
    elif method == "riemann_middle":
        alphas, weights = (k + 0.5) / steps, np.full(steps, 1.0 / steps)
    elif method == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
    else:  # gausslegendre
        nodes, w = np.polynomial.legendre.leggauss(steps)
        alphas, weights = 0.5 * (1.0 + nodes), 0.5 * w
    alphas.setflags(write=False)
    weights.setflags(write=False)
    return alphas, weights


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes `alpha_k` in `[0, 1]` and weights `w_k` with `int_0^1 h ~ sum_k w_k h(alpha_k)`.

    With `n = steps` and `k = 0, ..., n-1`:

    - `"riemann_left"`: `alpha_k = k/n`, `w_k = 1/n`;
    - `"riemann_right"`: `alpha_k = (k+1)/n`, `w_k = 1/n`;
    - `"riemann_middle"`: `alpha_k = (k+1/2)/n`, `w_k = 1/n`;
    - `"gausslegendre"`: numpy's Gauss-Legendre nodes `t_k` and weights `v_k` on
      `[-1, 1]` mapped to `[0, 1]`: `alpha_k = (1 + t_k)/2`, `w_k = v_k/2`.
      Exact for polynomials of degree `2n - 1`.

    These four are Captum's definitions (which require `n >= 2` for the
    Riemann rules; here `n = 1` is allowed too).

    - `"riemann_trapezoid"`: the composite trapezoid rule on `n >= 2` equally
      spaced nodes, `alpha_k = k/(n-1)`, `w_k = 1/(n-1)` with the first and last
      weight halved. Exact for linear integrands. (Captum uses these nodes with
      step `1/n`, so its weights sum to `1 - 1/n`; not copied here.)

    Every rule's weights sum to 1. Returns read-only float64 numpy arrays.
    """
    if method not in QUADRATURE_METHODS:
        raise ValueError(f"method must be one of {QUADRATURE_METHODS}, got {method!r}")
    steps = check_int("steps", steps, minimum=1)
    if method == "riemann_trapezoid" and steps < 2:
        raise ValueError(f"riemann_trapezoid needs steps >= 2 (both end points), got {steps}")
    return _quadrature(method, steps)


def _ig_and_delta(fn, x, baseline, steps, method, chunk_size):
    x = as_float("x", x)
    check_scalar_fn(fn, x)
    b = check_baseline(x, baseline)
    alphas, weights = quadrature(method, steps)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    grad = jax.grad(fn)

    @jax.jit
    def run(x, b, alphas, weights):
        b = broadcast_like(b, x)
        delta = x - b

        def weighted_grad(p):
            a, w = p
            return w * grad(b + a * delta)

        attr = delta * chunked_reduce(weighted_grad, (alphas, weights), chunk_size=chunk_size)
        return attr, jnp.sum(attr) - (fn(x) - fn(b))

    return run(x, b, jnp.asarray(alphas, x.dtype), jnp.asarray(weights, x.dtype))


def integrated_gradients(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    baseline: Float[ArrayLike, "*shape"] | float | None = None,
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int = DEFAULT_CHUNK,
) -> Float[Array, "*shape"]:
    r"""Integrated gradients (Sundararajan et al. 2017).

    `IG_i(x) = (x_i - b_i) int_0^1 (d fn / d x_i)(b + alpha (x - b)) d alpha`
    `       ~ (x_i - b_i) sum_k w_k (d fn / d x_i)(b + alpha_k (x - b))`

    with the nodes and weights of `quadrature(method, steps)`. Completeness:
    `sum_i IG_i = fn(x) - fn(b)` up to the quadrature error (see
    `integrated_gradients_with_delta`).

    **Arguments:**

    - `fn`: maps one input `x` to a scalar.
    - `x`: the input explained.
    - `baseline`: `b`; zeros when `None`; a scalar is broadcast.
    - `steps`, `method`: the quadrature rule.
    - `chunk_size`: path points evaluated at once (`vmap` within a chunk,
      `lax.scan` over chunks); memory is bounded by `chunk_size`, not `steps`.
    """
    attr, _ = _ig_and_delta(fn, x, baseline, steps, method, chunk_size)
    return attr


def completeness_delta(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    attr: Float[ArrayLike, "*shape"],
    baseline: Float[ArrayLike, "*shape"] | float | None = None,
) -> Float[Array, ""]:
    r"""`sum(attr) - (fn(x) - fn(baseline))`: zero for a complete attribution."""
    x = as_float("x", x)
    check_scalar_fn(fn, x)
    attr = jnp.asarray(attr)
    if attr.shape != x.shape:
        raise ValueError(f"attr must have the shape of x {x.shape}, got {attr.shape}")
    b = check_baseline(x, baseline)
    return jax.jit(lambda x, attr, b: jnp.sum(attr) - (fn(x) - fn(broadcast_like(b, x))))(
        x, attr, b
    )


def integrated_gradients_with_delta(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    baseline: Float[ArrayLike, "*shape"] | float | None = None,
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[Float[Array, "*shape"], Float[Array, ""]]:
    r"""`integrated_gradients` and its completeness delta `sum(IG) - (fn(x) - fn(b))`.

    The delta is the quadrature error of the path integral; it tends to 0 as
    `steps` grows (like `1/steps` for the left and right rules, `1/steps^2`
    for the midpoint and trapezoid rules on smooth `fn`, faster for
    Gauss-Legendre). Kinks of ReLU networks along the path slow all rules down.
    """
    return _ig_and_delta(fn, x, baseline, steps, method, chunk_size)
