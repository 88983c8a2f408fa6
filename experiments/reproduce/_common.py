"""What both reproductions share: RK4 rollouts of a learned field, and parameter counts."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models


def n_params(model) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


@functools.partial(jax.jit, static_argnames=("graphdef", "field_fn", "n_steps", "substeps"))
def _rollout(state, y0, dt, *, graphdef, field_fn, n_steps, substeps):
    model = nnx.merge(graphdef, state)
    return jax.vmap(lambda y: models.integrate(field_fn(model), y, n_steps, dt, substeps=substeps))(
        y0
    )


def rollout(
    model, field_fn: Callable, y0: np.ndarray, n_steps: int, dt: float, substeps: int
) -> np.ndarray:
    """RK4 rollouts of `field_fn(model)` from each row of `y0`: `(N, n_steps + 1, d)`, with the
    start."""
    y0 = jnp.asarray(y0, jnp.float32)
    graphdef, state = nnx.split(model)
    ys = _rollout(
        state,
        y0,
        jnp.float32(dt),
        graphdef=graphdef,
        field_fn=field_fn,
        n_steps=n_steps,
        substeps=substeps,
    )
    return np.concatenate([np.asarray(y0)[:, None], np.asarray(ys)], axis=1).astype(np.float64)
