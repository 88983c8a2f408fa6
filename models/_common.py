"""Pieces shared by the models: MLPs, normalisation statistics, fixed-grid integration."""

from __future__ import annotations

from typing import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float


class Stats(nnx.Variable):
    """Non-trainable statistics set from the training data (normalisation, priors)."""


class MLP(nnx.Module):
    """`x -> W_L s(... s(W_1 x + b_1) ...) + b_L` with `depth` hidden layers of `width` units."""

    def __init__(self, d_in: int, d_out: int, *, width: int, depth: int, activation: Callable = jnp.tanh,
                 rngs: nnx.Rngs):
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        sizes = [d_in] + [width] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(width, d_out, rngs=rngs)
        self.activation = activation

    def __call__(self, x):
        for layer in self.hidden:
            x = self.activation(layer(x))
        return self.out(x)


def check_state_dim(state_dim: int, *, even: bool = False, who: str = "model") -> int:
    if not isinstance(state_dim, (int, np.integer)) or state_dim < 1:
        raise ValueError(f"state_dim must be a positive integer, got {state_dim!r}")
    if even and state_dim % 2:
        raise ValueError(
            f"{who} needs a canonical (q, p) state of even size, got state_dim={state_dim}"
        )
    return int(state_dim)


def integrate(field: Callable, y0: Float[Array, " d"], n_steps: int, dt: float, *, substeps: int = 1
              ) -> Float[Array, "n_steps d"]:
    """Integrates `y' = field(y)` from `y0` with Tsit5 on a fixed grid; returns the states at
    `dt, 2 dt, ..., n_steps dt` (not `y0`)."""
    term = diffrax.ODETerm(lambda t, y, args: field(y))
    ts = dt * jnp.arange(1, n_steps + 1, dtype=y0.dtype)
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=0.0, t1=ts[-1], dt0=dt / substeps, y0=y0,
        saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=n_steps * substeps + 1,
    )
    return sol.ys


def data_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean and standard deviation (floored) over a `(N, T, D)` array."""
    flat = np.asarray(train).reshape(-1, train.shape[-1])
    mean = flat.mean(0)
    std = flat.std(0)
    std = np.where(std > 1e-6 * max(1.0, float(std.max())), std, 1.0)
    return mean, std
