"""A system defined by any Hamiltonian: how research code brings its own physics."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ._base import AbstractSystem, _check_sample_args, _uniform


class HamiltonianSystem(AbstractSystem):
    r"""Canonical dynamics of a user-supplied Hamiltonian `H(q, p) -> scalar`.

    `q' = dH/dp`, `p' = -dH/dq` (both by autodiff), state `concat(q, p)` of
    shape `(2n,)`. `energy` is `H`. The coupling graph is read off the mixed
    second derivatives of `H` at a few random states: oscillators `i != j` are
    coupled where `d^2 H / d(q_i, p_i) d(q_j, p_j)` is non-zero.
    """

    hamiltonian: Callable = eqx.field(static=True)
    n: int = eqx.field(static=True)

    conservative: ClassVar[bool] = True

    def __init__(self, hamiltonian: Callable, n: int):
        if not callable(hamiltonian):
            raise ValueError(f"hamiltonian must be callable H(q, p) -> scalar, got {hamiltonian!r}")
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.hamiltonian = hamiltonian
        self.n = int(n)
        out = jax.eval_shape(hamiltonian, jnp.zeros(self.n), jnp.zeros(self.n))
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"hamiltonian must return a scalar for q, p of shape ({self.n},), "
                f"got shape {getattr(out, 'shape', type(out))}"
            )

    @property
    def n_oscillators(self) -> int:
        return self.n

    def _h(self, y):
        return self.hamiltonian(y[: self.n], y[self.n :])

    def vector_field(self, t, y):
        dh = jax.grad(self._h)(y)
        return jnp.concatenate([dh[self.n :], -dh[: self.n]])

    def energy(self, y):
        flat = y.reshape(-1, self.state_dim)
        return jax.vmap(self._h)(flat).reshape(y.shape[:-1])

    def coupling_graph(self):
        ys = self.sample_initial_states(jax.random.key(0), 4)
        hess = jax.vmap(jax.hessian(self._h))(ys)  # (4, 2n, 2n)
        n = self.n
        blocks = jnp.abs(hess).max(axis=0).reshape(2, n, 2, n).max(axis=(0, 2))
        scale = jnp.maximum(jnp.abs(hess).max(), 1.0)
        graph = (blocks > 1e-10 * scale).astype(ys.dtype)
        return graph * (1 - jnp.eye(n))

    def sample_initial_states(self, key: PRNGKeyArray, n: int, *, scale: float = 1.0):
        """`q_i, p_i ~ U(-a, a)` with `a = 0.5 scale`."""
        _check_sample_args(n, scale)
        return _uniform(key, (n, self.state_dim), 0.5 * scale)
