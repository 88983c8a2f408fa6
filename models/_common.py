"""Pieces shared by the models: MLPs, normalisation statistics, fixed-grid integration."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

import dynamics


class Stats(nnx.Variable):
    """Non-trainable statistics set from the training data (normalisation, priors)."""


class Coordinates(nnx.Variable):
    """Non-trainable: the system (a `dynamics.AbstractSystem` pytree) whose `to_canonical` /
    `from_canonical` define the coordinates a model works in, or None for the observed ones.

    Held in an `nnx.Variable`, the system's parameters are part of the model's state: they pass
    through `nnx.split` / `nnx.merge`, `jax.jit` and `vmap`, and are stored with the other
    variables (`jax.tree.leaves(nnx.state(model))`). The state's structure therefore depends
    on the system: a model rebuilt to receive stored variables must be built with the same
    coordinates (the models take them as a constructor argument for that).
    """


def own_transform(system) -> bool:
    """Whether `system` overrides the identity default of `to_canonical` / `from_canonical`
    (its `(q, q')` is not canonical: the double pendulum, the clocks on their beam)."""
    if not isinstance(system, dynamics.AbstractSystem):
        return False
    cls, base = type(system), dynamics.AbstractSystem
    return (
        cls.to_canonical is not base.to_canonical or cls.from_canonical is not base.from_canonical
    )


class MLP(nnx.Module):
    """`x -> W_L s(... s(W_1 x + b_1) ...) + b_L` with `depth` hidden layers of `width` units;
    with `linear=True`, plus a bias-free linear skip `A x` (an affine map plus a nonlinear
    correction: a black-box field that contains the least-squares linear field)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        width: int,
        depth: int,
        activation: Callable = jnp.tanh,
        linear: bool = False,
        rngs: nnx.Rngs,
    ):
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        sizes = [d_in] + [width] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(width, d_out, rngs=rngs)
        self.skip = nnx.Linear(d_in, d_out, use_bias=False, rngs=rngs) if linear else None
        self.activation = activation

    def __call__(self, x):
        h = x
        for layer in self.hidden:
            h = self.activation(layer(h))
        return self.out(h) if self.skip is None else self.out(h) + self.skip(x)


class Quadratic(nnx.Module):
    """`u -> u^T S u / 2` with `S = (A + A^T) / 2` learned (`A` starts at zero): the quadratic
    part of a learned energy, whose gradient is a linear field. It is to an energy network
    what a linear skip is to a field network: the harmonic part exactly, the network left to
    learn the anharmonic correction."""

    def __init__(self, dim: int):
        self.a = nnx.Param(jnp.zeros((dim, dim)))

    def __call__(self, u: Float[Array, " d"]) -> Float[Array, ""]:
        s = 0.5 * (self.a[...] + self.a[...].T)
        return 0.5 * u @ (s @ u)


def lift(v: Array, ndim: int) -> Array:
    """`v` with leading unit axes up to `ndim` axes: a bias or a per-coordinate statistic made
    ready to meet a batch. Broadcasting made explicit; implicit rank promotion is an error in
    the tests (`jax_numpy_rank_promotion="raise"`)."""
    return jnp.reshape(v, (1,) * (ndim - jnp.ndim(v)) + jnp.shape(v))


def check_state_dim(state_dim: int, *, even: bool = False, who: str = "model") -> int:
    if not isinstance(state_dim, (int, np.integer)) or state_dim < 1:
        raise ValueError(f"state_dim must be a positive integer, got {state_dim!r}")
    if even and state_dim % 2:
        raise ValueError(
            f"{who} needs a canonical (q, p) state of even size, got state_dim={state_dim}"
        )
    return int(state_dim)


def integrate(
    field: Callable,
    y0: Float[Array, " d"],
    n_steps: int,
    dt: float | Float[Array, ""],
    *,
    substeps: int = 1,
) -> Float[Array, "n_steps d"]:
    """Integrates `y' = field(y)` from `y0` with the classical fourth-order Runge-Kutta method
    on a fixed grid (`substeps` steps per `dt`); returns the states at `dt, ..., n_steps dt`.

    The models train on a fixed grid, so an adaptive solver buys nothing here,
    and a plain `lax.scan` compiles an order of magnitude faster than
    `diffrax.diffeqsolve` under `grad` (0.65 s against 8.8 s for a small field
    on a 2-core CPU). The simulator (`dynamics.simulate`) uses diffrax.
    """
    h = dt / substeps

    def rk4(y, _):
        k1 = field(y)
        k2 = field(y + 0.5 * h * k1)
        k3 = field(y + 0.5 * h * k2)
        k4 = field(y + h * k3)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4), None

    def step(y, _):
        y, _ = jax.lax.scan(rk4, y, None, length=substeps)
        return y, y

    return jax.lax.scan(step, y0, None, length=n_steps)[1]


def data_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean and standard deviation (floored) over a `(N, T, D)` array."""
    flat = np.asarray(train).reshape(-1, train.shape[-1])
    mean = flat.mean(0)
    std = flat.std(0)
    std = np.where(std > 1e-6 * max(1.0, float(std.max())), std, 1.0)
    return mean, std


def _savgol_fit(window: int) -> np.ndarray:
    """The rows of the least-squares fit of the polynomial of degree `min(window - 1, 3)`
    (degree 2 for `window = 3`) to an odd `window` of samples at `j = -w//2, ..., w//2`: row `k`
    holds the weights of its `k`-th Taylor coefficient at the centre."""
    if not isinstance(window, (int, np.integer)) or window < 3 or window % 2 == 0:
        raise ValueError(f"the derivative window must be an odd integer >= 3, got {window!r}")
    half = window // 2
    j = np.arange(-half, half + 1, dtype=np.float64)
    order = 2 if window == 3 else min(window - 1, 3)
    return np.linalg.pinv(np.vander(j, order + 1, increasing=True))


def savgol_derivative_weights(window: int) -> np.ndarray:
    """Weights `c` of the Savitzky-Golay derivative at the centre of an odd `window`:
    `y'(t_c) ~ sum_j c_j y_{c+j} / dt`, the slope of the least-squares polynomial of degree
    `min(window - 1, 3)` (degree 2 for `window = 3`: the central difference
    `(y_{c+1} - y_{c-1}) / 2`; the 5-point stencil for `window = 5`; wider windows smooth
    noisy data). The weights sum to zero and `sum_j j c_j = 1`."""
    return _savgol_fit(window)[1]


def savgol_value_weights(window: int) -> np.ndarray:
    """Weights `h` of the Savitzky-Golay smoothed value at the centre of an odd `window`: the
    value there of the least-squares polynomial `savgol_derivative_weights` differentiates
    (`y(t_c) ~ sum_j h_j y_{c+j}`; the weights sum to one)."""
    return _savgol_fit(window)[0]
