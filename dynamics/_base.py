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

    **The state layout is declared, never guessed.** Downstream code (probes,
    attribution, scoring) reads it only through these members, each with a
    default that holds for the plain layouts `y = concat(q, p)` (second order,
    `state_dim = 2n`) and `y = theta` (first order, `state_dim = n`); a system
    with another layout overrides them:

    - `oscillator_groups()`: the state indices of each oscillator;
    - `split_state(y) -> (q, p, extras)`: per-oscillator coordinates and
      velocities (`p` is None for first-order systems) and any further
      coordinates by name (the beam of Huygens' clocks);
    - `natural_frequencies()`: each oscillator's own angular frequency;
    - `angular`: whether the `q` (or first-order phases) are angles;
    - `conservative`: whether `energy` is conserved along trajectories;
    - `self_sustained`: whether each oscillator settles on a limit cycle of its own
      amplitude (an escapement or negative damping: Van der Pol, the clocks), which the
      study scores by the limit-cycle amplitude error;
    - `observables(y)`: the physical scalars the system has (energy, order
      parameter, phase differences);
    - `to_canonical(y)` / `from_canonical(z)`: `(q, q') <-> (q, dL/dq')`, the
      identity where `q'` is already the canonical momentum (unit masses).
    """

    second_order: ClassVar[bool] = True
    has_energy: ClassVar[bool] = True
    conservative: ClassVar[bool] = False
    angular: ClassVar[bool] = False
    self_sustained: ClassVar[bool] = False

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

    def ground_energy(self) -> float:
        """The energy of the system's rest state, above which energy drift is measured
        (0 for the oscillators about `y = 0`; overridden where the potential has a constant)."""
        return 0.0

    @abc.abstractmethod
    def coupling_graph(self) -> Float[Array, "n n"]: ...

    @abc.abstractmethod
    def sample_initial_states(
        self, key: PRNGKeyArray, n: int, *, scale: float = 1.0
    ) -> Float[Array, "n state_dim"]: ...

    # ------------------------------------------------------------ declared layout
    def _check_plain_layout(self, what: str) -> None:
        n, d = self.n_oscillators, self.state_dim
        if d != (2 * n if self.second_order else n):
            raise NotImplementedError(
                f"{type(self).__name__} has state_dim={d} for n_oscillators={n}, not the plain "
                f"layout ({2 * n if self.second_order else n}); it must override {what}()"
            )

    def oscillator_groups(self) -> tuple[tuple[int, ...], ...]:
        """The state indices of each oscillator: `((i, n + i), ...)` for `concat(q, p)`,
        `((i,), ...)` for a first-order state."""
        self._check_plain_layout("oscillator_groups")
        n = self.n_oscillators
        if self.second_order:
            return tuple((i, n + i) for i in range(n))
        return tuple((i,) for i in range(n))

    def split_state(
        self, y: Float[Array, "*batch state_dim"]
    ) -> tuple[Float[Array, "*batch n"], Float[Array, "*batch n"] | None, dict[str, Array]]:
        """`(q, p, extras)` of states `(..., state_dim)`: `q_i, p_i = q_i'` per oscillator (`p`
        is None for a first-order state, whose `q` is the state itself) and any further
        coordinates by name (none by default)."""
        self._check_plain_layout("split_state")
        n = self.n_oscillators
        if self.second_order:
            return y[..., :n], y[..., n:], {}
        return y, None, {}

    def natural_frequencies(self) -> Float[Array, " n"]:
        """Each oscillator's own angular frequency. Default (second order): `sqrt` of the
        diagonal stiffness `-d q_i'' / d q_i` at the rest state `y = 0`, which includes the
        coupling springs; for a first-order state, `theta_i'` at `theta = 0`. Systems with
        a parameter for it override this."""
        self._check_plain_layout("natural_frequencies")
        n = self.n_oscillators
        y0 = jnp.zeros(self.state_dim)
        if not self.second_order:
            return self.vector_field(0.0, y0)
        jac = jax.jacfwd(lambda y: self.vector_field(0.0, y))(y0)
        return jnp.sqrt(jnp.maximum(-jnp.diagonal(jac[n:, :n]), 0.0))

    def observables(self, y: Float[Array, "*batch state_dim"]) -> dict[str, Array]:
        """The physical scalars of states `(..., state_dim)`, each of shape `(...)`, by name:
        `"energy"` where the system has one (`has_energy` and an `energy` of its own)."""
        has = self.has_energy and type(self).energy is not AbstractSystem.energy
        return {"energy": self.energy(y)} if has else {}

    def to_canonical(self, y: Float[Array, "*batch state_dim"]) -> Float[Array, "*batch state_dim"]:
        """`(q, q') -> (q, p)` with `p = dL/dq'`; the identity for unit masses."""
        return y

    def from_canonical(
        self, z: Float[Array, "*batch state_dim"]
    ) -> Float[Array, "*batch state_dim"]:
        """The inverse of `to_canonical`."""
        return z

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
