"""The Kuramoto model of phase oscillators."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _validate as v
from ._base import AbstractSystem, _check_sample_args


class Kuramoto(AbstractSystem):
    r"""Phase oscillators (first order): state `theta` of shape `(n,)`.

    `theta_i' = omega_i + sum_j K_ij sin(theta_j - theta_i)`

    `omega` may be any real (natural frequencies); `K = coupling` is symmetric,
    non-negative, with zero diagonal. There is no energy; synchrony is measured
    by the order parameter `r(t) = |mean_j exp(i theta_j)|`, which approaches 1
    when the coupling is strong against the spread of `omega`.
    """

    omega: Float[Array, " n"]
    coupling: Float[Array, "n n"]

    second_order: ClassVar[bool] = False
    has_energy: ClassVar[bool] = False
    angular: ClassVar[bool] = True

    def __init__(self, omega, coupling):
        self.omega = v.vector("omega", omega)
        self.coupling = v.coupling_matrix("coupling", coupling, self.omega.shape[0])

    @property
    def n_oscillators(self) -> int:
        return self.omega.shape[0]

    @property
    def state_dim(self) -> int:
        return self.n_oscillators

    def vector_field(self, t, y):
        diff = jnp.sin(y[None, :] - y[:, None])  # [i, j] = sin(theta_j - theta_i)
        return self.omega + jnp.sum(self.coupling * diff, axis=-1)

    def coupling_graph(self):
        return (self.coupling > 0).astype(self.coupling.dtype)

    def order_parameter(self, y: Float[Array, "*batch n"]) -> Float[Array, "*batch"]:
        """`r = |mean_j exp(i theta_j)|` in `[0, 1]`."""
        return jnp.abs(jnp.mean(jnp.exp(1j * y), axis=-1))

    def natural_frequencies(self) -> Float[Array, " n"]:
        """`omega`, the frequencies of the uncoupled phases."""
        return self.omega

    def observables(self, y: Float[Array, "*batch n"]) -> dict[str, Array]:
        """`"order_parameter"` `r`."""
        return {"order_parameter": self.order_parameter(y)}

    def sample_initial_states(self, key: PRNGKeyArray, n: int, *, scale: float = 1.0):
        """`theta_i ~ U(-pi/2, pi/2) * scale`: `scale = 2` spreads the phases over the whole
        circle."""
        _check_sample_args(n, scale)
        return jax.random.uniform(key, (n, self.n_oscillators), minval=-1.0, maxval=1.0) * (
            jnp.pi / 2 * scale
        )
