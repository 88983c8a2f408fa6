"""The interface every system shares."""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class AbstractSystem(eqx.Module):
    """A dynamical system: a frozen pytree of its parameters.

    Being a pytree, a system passes through `jax.jit` and can be differentiated
    with respect to its parameters. Subclasses give:

    - `state_dim`, `n_oscillators`;
    - `vector_field(t, y)`: `dy/dt` for one state `y` of shape `(state_dim,)`;
    - `energy(y)`: the energy of states of shape `(..., state_dim)` (where the
      system has one; `has_energy` says);
    - `coupling_graph()`: the true `(n, n)` interaction graph (0/1 entries);
    - `sample_initial_states(key, n, *, scale=1.0)`: `n` initial states from the
      system's initial-condition distribution; `scale > 1` gives
      out-of-distribution, higher-energy states.

    `second_order` is True where the state is `concat(q, p)` with `p = dq/dt`
    (or a canonical momentum), which the Hamiltonian and Lagrangian models need.
    """

    second_order: ClassVar[bool] = True
    has_energy: ClassVar[bool] = True
    conservative: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def n_oscillators(self) -> int: ...

    @property
    def state_dim(self) -> int:
        return 2 * self.n_oscillators

    @abc.abstractmethod
    def vector_field(self, t, y: Float[Array, " state_dim"]) -> Float[Array, " state_dim"]: ...

    def energy(self, y: Float[Array, "*batch state_dim"]) -> Float[Array, "*batch"]:
        raise NotImplementedError(f"{type(self).__name__} has no energy")

    @abc.abstractmethod
    def coupling_graph(self) -> Float[Array, "n n"]: ...

    @abc.abstractmethod
    def sample_initial_states(
        self, key: PRNGKeyArray, n: int, *, scale: float = 1.0
    ) -> Float[Array, "n state_dim"]: ...

    def parameters(self) -> dict:
        """The constructor arguments as plain Python values (for metadata)."""
        out = {}
        for name in self._param_names():
            v = getattr(self, name)
            out[name] = jnp.asarray(v).tolist()
        return out

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def _uniform(key, shape, half_width):
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) * half_width


def _check_sample_args(n, scale):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(scale, jax.core.Tracer):
        return  # a traced scale cannot be checked here
    # plain Python arithmetic: `jnp.isfinite` would make a tracer under `jax.jit`
    if not (float(scale) > 0 and math.isfinite(float(scale))):
        raise ValueError(f"scale must be finite and > 0, got {scale!r}")
