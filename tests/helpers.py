"""Code shared by the test modules (test modules never import each other)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

import dynamics

ROOT = Path(__file__).resolve().parents[1]
#: generous waits for subprocesses on a loaded 2-core machine (never a pass/fail criterion)
SUBPROCESS_TIMEOUT = 1800


def subprocess_env(cache: Path, **extra) -> dict:
    """The environment of a study subprocess: its own compilation cache, one CPU device."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1", **extra)
    env.pop("XLA_FLAGS", None)
    return env


def study_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"experiments.{module}", *args]


class ClocksOnAShelf(dynamics.AbstractSystem):
    """A user's own system, outside the package: `n` harmonic clocks in a chain plus one slow
    shelf coordinate `s' = -s` that nothing couples to. State `(q, s, p)`: a non-plain layout
    that the system declares through `oscillator_groups` and `split_state`.

    `q_i'' = -omega_i^2 q_i - sum_j kappa (q_i - q_j)` on the chain, `s' = -s`.
    """

    omega: Float[Array, " n"]
    kappa: float = eqx.field(static=True, default=0.2)

    conservative = False

    def __init__(self, omega, kappa: float = 0.2):
        self.omega = jnp.asarray(omega, dtype=float)
        self.kappa = float(kappa)

    @property
    def n_oscillators(self) -> int:
        return self.omega.shape[0]

    @property
    def state_dim(self) -> int:
        return 2 * self.n_oscillators + 1

    def _laplacian(self):
        k = dynamics.chain_coupling(self.n_oscillators, self.kappa)
        return jnp.diag(k.sum(-1)) - k

    def vector_field(self, t, y):
        n = self.n_oscillators
        q, s, p = y[:n], y[n], y[n + 1 :]
        acc = -(self.omega**2) * q - self._laplacian() @ q
        return jnp.concatenate([p, (-s)[None], acc])

    def coupling_graph(self):
        return (dynamics.chain_coupling(self.n_oscillators, self.kappa) > 0).astype(float)

    def oscillator_groups(self):
        n = self.n_oscillators
        return tuple((i, n + 1 + i) for i in range(n))

    def split_state(self, y):
        n = self.n_oscillators
        return y[..., :n], y[..., n + 1 :], {"shelf": y[..., n]}

    def natural_frequencies(self):
        return self.omega

    def sample_initial_states(self, key, n, *, scale=1.0):
        kq, kp = jax.random.split(key)
        q = jax.random.uniform(kq, (n, self.n_oscillators), minval=-0.5, maxval=0.5) * scale
        p = jax.random.uniform(kp, (n, self.n_oscillators), minval=-0.5, maxval=0.5) * scale * self.omega
        return jnp.concatenate([q, jnp.full((n, 1), 0.3 * scale), p], axis=-1)
