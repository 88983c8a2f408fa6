"""Faithfulness of attributions: infidelity, max-sensitivity (Yeh et al. 2019) and the
model-parameter randomisation check (Adebayo et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from .._checks import check_int
from ._ground_truth import spearman
from ._misc import (
    DEFAULT_CHUNK,
    ScalarFn,
    as_float,
    check_nonnegative,
    check_scalar_fn,
    chunked_map,
    normal_noise,
    safe_div,
)


def infidelity(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    attr: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    n: int = 64,
    sigma: float = 0.1,
    normalize: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> Float[Array, ""]:
    r"""Infidelity (Yeh et al. 2019) with Gaussian perturbations.

    With `I_k ~ N(0, sigma^2 I)`, `d_k = I_k . attr` and
    `D_k = fn(x) - fn(x - I_k)`, the Monte-Carlo estimate

    `INFD = (1/n) sum_k (d_k - D_k)^2`.

    For a linear `fn` and `attr = grad fn` it is 0. With `normalize=True`
    (Captum's `normalize`) the attribution is first rescaled by the
    least-squares factor `beta = sum_k d_k D_k / sum_k d_k^2` (0 if the
    denominator is 0), i.e. `min_beta (1/n) sum_k (beta d_k - D_k)^2`, which does
    not change when `attr` is scaled by a constant. The default is the
    unnormalised definition of Yeh et al.

    The `n` pairs `(d_k, D_k)` are kept and the squares formed from them
    (Captum expands the square into three running sums, which cancels
    catastrophically when the infidelity is small).
    """
    x = as_float("x", x)
    check_scalar_fn(fn, x)
    attr = jnp.asarray(attr, x.dtype)
    if attr.shape != x.shape:
        raise ValueError(f"attr must have the shape of x {x.shape}, got {attr.shape}")
    n = check_int("n", n, minimum=1)
    check_nonnegative("sigma", sigma)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    perts = normal_noise(key, n, x)

    @jax.jit
    def run(x, attr, perts, sigma):
        perts = sigma * perts
        f0 = fn(x)

        def one(pert):
            return jnp.sum(pert * attr), f0 - fn(x - pert)

        d, diff = chunked_map(one, perts, chunk_size=chunk_size)
        if normalize:
            d = d * safe_div(jnp.sum(d * diff), jnp.sum(d * d))
        return jnp.mean((d - diff) ** 2)

    return run(x, attr, perts, sigma)


def max_sensitivity(
    explain_fn: Callable[[Float[Array, "*shape"]], Float[Array, "..."]],
    x: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    n: int = 16,
    radius: float = 0.02,
    chunk_size: int = DEFAULT_CHUNK,
) -> Float[Array, ""]:
    r"""Max-sensitivity (Yeh et al. 2019) over an `L_inf` ball of radius `radius`.

    `SENS = max_k ||e(x + d_k) - e(x)||_F / ||e(x)||_F`, `d_k ~ U([-radius, radius]^shape)`,

    for an explanation `e = explain_fn` (e.g. `lambda x: saliency(fn, x)`).
    As in Captum, the ratio is not normalised where `||e(x)|| = 0`.
    """
    x = as_float("x", x)
    if not callable(explain_fn):
        raise ValueError(f"explain_fn must be callable, got {type(explain_fn).__name__}")
    n = check_int("n", n, minimum=1)
    check_nonnegative("radius", radius)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    ds = jax.random.uniform(key, (n, *x.shape), x.dtype, minval=-1.0, maxval=1.0)

    @jax.jit
    def run(x, ds, radius):
        ds = radius * ds
        e0 = explain_fn(x)

        def one(d):
            return jnp.sqrt(jnp.sum((explain_fn(x + d) - e0) ** 2))

        worst = jnp.max(chunked_map(one, ds, chunk_size=chunk_size))
        norm0 = jnp.sqrt(jnp.sum(e0**2))
        return jnp.where(norm0 > 0, safe_div(worst, norm0), worst)

    return run(x, ds, radius)


class RandomisationResult(NamedTuple):
    """The outcome of `randomisation_check`.

    - `correlations`: Spearman correlation between the original explanation
      and the one after each cascade stage, shape `(stages,)`.
    - `passes`: True where the correlation after the full cascade is below
      `threshold`, i.e. the explanation depends on the parameters.
    """

    correlations: Float[Array, " stages"]
    passes: Bool[Array, ""]


def _path(entry) -> tuple:
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _get_path(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set_path(tree, path, value):
    if not path:
        return value
    k, rest = path[0], path[1:]
    if isinstance(tree, dict):
        new = dict(tree)
        new[k] = _set_path(tree[k], rest, value)
        return new
    if isinstance(tree, (list, tuple)):
        new = list(tree)
        new[k] = _set_path(tree[k], rest, value)
        return type(tree)(new)
    raise ValueError(f"cannot set {path!r} inside a {type(tree).__name__}; use dicts or lists")


def _rms_normal(key: PRNGKeyArray, leaf: ArrayLike) -> Array:
    """A fresh Gaussian leaf with the root-mean-square of the old one (0 stays 0)."""
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        return leaf
    rms = jnp.sqrt(jnp.mean(leaf * leaf))
    return rms * jax.random.normal(key, leaf.shape, leaf.dtype)


def randomisation_check(
    explain_with_params: Callable[[Any, Float[Array, "*shape"]], Float[Array, "..."]],
    params: Any,
    x: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    layer_order: Sequence[Hashable | tuple],
    threshold: float = 0.5,
    absolute: bool = True,
    reinit: Callable[[PRNGKeyArray, Array], Array] | None = None,
    jit: bool = True,
) -> RandomisationResult:
    r"""Cascading model-parameter randomisation test (Adebayo et al. 2018).

    `params` is a pytree of layers (a dict, possibly nested); `layer_order`
    lists the layers from the top (output) down, each as a key of `params` or a
    tuple path into it (e.g. `("layers", 1)`). Stage `k` re-initialises layers
    `layer_order[0], ..., layer_order[k]` (earlier stages' random values are
    kept: the cascade) and computes

    `rho_k = spearman(|e(params, x)|, |e(params_k, x)|)`

    (signed values with `absolute=False`), `e = explain_with_params`. A
    faithful explanation changes as the model is destroyed, so `rho` drops; an
    explanation that ignores the parameters (an edge detector, the input
    itself) keeps `rho = 1`.

    `passes` is `rho_last < threshold`: after the whole cascade the
    explanation must have lost most of its rank agreement. The default
    `threshold = 0.5` is a judgement call: a random model's explanation of a
    few dozen features correlates with the original by chance at `|rho|` of
    order `1/sqrt(size)`, while explanations dominated by the input (gradient
    times input on large inputs, guided backpropagation in Adebayo et al.)
    stay well above 0.5.

    `reinit(key, leaf)` draws a new leaf; by default a Gaussian with the old
    leaf's root-mean-square (so the scale of every layer is kept and
    zero-initialised biases stay zero). With `jit=True` the explanation is
    compiled once and reused for every stage (the parameter shapes do not
    change); pass `jit=False` for an explanation that cannot be traced.
    """
    x = as_float("x", x)
    if len(layer_order) == 0:
        raise ValueError("layer_order must name at least one layer")
    paths = [_path(e) for e in layer_order]
    for p in paths:
        try:
            _get_path(params, p)
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"layer {p if len(p) > 1 else p[0]!r} of layer_order is not in params"
            ) from None
    reinit = _rms_normal if reinit is None else reinit
    prep = jnp.abs if absolute else (lambda a: a)
    explain = jax.jit(explain_with_params) if jit else explain_with_params
    ref = prep(explain(params, x))
    current, corrs = params, []
    for k, p in enumerate(paths):
        sub = _get_path(current, p)
        leaves, treedef = jax.tree.flatten(sub)
        keys = jax.random.split(jax.random.fold_in(key, k), max(len(leaves), 1))
        new = jax.tree.unflatten(treedef, [reinit(kk, leaf) for kk, leaf in zip(keys, leaves)])
        current = _set_path(current, p, new)
        corrs.append(spearman(ref, prep(explain(current, x))))
    corrs = jnp.stack(corrs)
    return RandomisationResult(correlations=corrs, passes=corrs[-1] < threshold)
