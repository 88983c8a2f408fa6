"""Gradient attributions: saliency and gradient times input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._misc import ScalarFn, as_float, check_scalar_fn


def saliency(
    fn: ScalarFn, x: Float[ArrayLike, "*shape"], *, abs: bool = False
) -> Float[Array, "*shape"]:
    r"""The gradient `d fn / d x` at `x` (Simonyan et al. 2014).

    With `abs=True` its elementwise magnitude `|d fn / d x|` (Captum's default;
    here the signed gradient is the default).
    """
    x = as_float("x", x)
    check_scalar_fn(fn, x)
    g = jax.grad(fn)(x)
    return jnp.abs(g) if abs else g


def gradient_x_input(fn: ScalarFn, x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""Gradient times input, `x_i * d fn / d x_i` (Shrikumar et al. 2016).

    This is integrated gradients with a zero baseline and a single
    right-endpoint step; it is exact (complete) for functions that are
    homogeneous of degree one, such as bias-free ReLU networks.
    """
    x = as_float("x", x)
    check_scalar_fn(fn, x)
    return x * jax.grad(fn)(x)
