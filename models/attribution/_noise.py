"""Noise-averaged gradients: SmoothGrad and VarGrad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_int
from ._misc import (
    DEFAULT_CHUNK,
    ScalarFn,
    as_float,
    check_nonnegative,
    check_scalar_fn,
    chunked_reduce,
    normal_noise,
)


def _sum_noise_grads(fn, x, eps, sigma, shift, chunk_size, *, squares: bool):
    grad = jax.grad(fn)

    def one(e):
        g = grad(x + sigma * e) - shift
        return (g, g * g) if squares else g

    return chunked_reduce(one, eps, chunk_size=chunk_size)


def _check_noise_args(fn, x, n, sigma, chunk_size):
    x = as_float("x", x)
    check_scalar_fn(fn, x)
    n = check_int("n", n, minimum=1)
    check_nonnegative("sigma", sigma)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    return x, n, chunk_size


def smoothgrad(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    n: int = 50,
    sigma: float = 0.1,
    chunk_size: int = DEFAULT_CHUNK,
) -> Float[Array, "*shape"]:
    r"""SmoothGrad (Smilkov et al. 2017): `(1/n) sum_k grad fn(x + eps_k)`,
    `eps_k ~ N(0, sigma^2 I)`.

    `sigma` is an absolute standard deviation in the units of `x` (Captum's
    `stdevs`), not a fraction of the input range. `sigma = 0` gives `saliency`.
    """
    x, n, chunk_size = _check_noise_args(fn, x, n, sigma, chunk_size)
    eps = normal_noise(key, n, x)
    run = jax.jit(
        lambda x, eps, sigma: (
            _sum_noise_grads(fn, x, eps, sigma, 0.0, chunk_size, squares=False) / n
        )
    )
    return run(x, eps, sigma)


def vargrad(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    n: int = 50,
    sigma: float = 0.1,
    chunk_size: int = DEFAULT_CHUNK,
) -> Float[Array, "*shape"]:
    r"""VarGrad (Adebayo et al. 2018): the elementwise variance of `grad fn(x + eps_k)` over the
    noise.

    `Var_k[g_k] = (1/n) sum_k (g_k - s)^2 - ((1/n) sum_k (g_k - s))^2` with
    `eps_k ~ N(0, sigma^2 I)`: the population variance (`1/n`, as Captum),
    computed in one pass around the shift `s = grad fn(x)` to limit
    cancellation. `sigma = 0` gives zeros.
    """
    x, n, chunk_size = _check_noise_args(fn, x, n, sigma, chunk_size)
    eps = normal_noise(key, n, x)

    @jax.jit
    def run(x, eps, sigma):
        s1, s2 = _sum_noise_grads(fn, x, eps, sigma, jax.grad(fn)(x), chunk_size, squares=True)
        mean = s1 / n
        return jnp.maximum(s2 / n - mean * mean, 0.0)

    return run(x, eps, sigma)
