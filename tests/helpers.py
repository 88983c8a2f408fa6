"""Code shared by the test modules (test modules never import each other)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import dynamics
import dynamics as d

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
        acc = -(self.omega**2) * q - self._laplacian() @ q  # q is one state here
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
        p = (
            jax.random.uniform(kp, (n, self.n_oscillators), minval=-0.5, maxval=0.5)
            * scale
            * self.omega[None, :]
        )
        return jnp.concatenate([q, jnp.full((n, 1), 0.3 * scale), p], axis=-1)


# --------------------------------------------------------------- systems at random parameters
#: tolerances at which solver error is far below the physical tolerances tested
TIGHT = dict(solver="dopri8", rtol=1e-12, atol=1e-12)
#: batch size and number of save times of the shared solves: every test that uses
#: `solve` on a system of `random_system` hits the same compiled solver
BATCH, N_TIMES = 6, 101


#: a point on Lorenz63's attractor (after a long transient from (1, 1, 1))
LORENZ_Y0 = (17.67715816276679, 12.931379185960404, 43.91404334248268)


class Lorenz63(dynamics.AbstractSystem):
    """`x' = sigma (y - x)`, `y' = x (rho - z) - y`, `z' = x y - beta z`: a user's own
    first-order system (not an oscillator chain), chaotic at the classic parameters."""

    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0

    second_order = False
    has_energy = False

    @property
    def n_oscillators(self) -> int:
        return 3

    @property
    def state_dim(self) -> int:
        return 3

    def vector_field(self, t, y):
        x, v, z = y[0], y[1], y[2]
        return jnp.stack(
            [self.sigma * (v - x), x * (self.rho - z) - v, x * v - self.beta * z], axis=-1
        )

    def coupling_graph(self):
        return jnp.ones((3, 3)) - jnp.eye(3)

    def sample_initial_states(self, key, n, *, scale=1.0):
        y0 = jnp.asarray(LORENZ_Y0)
        return y0[None, :] + scale * jax.random.normal(key, (n, 3))


def solve(system, y0, t_end, **kwargs):
    """`simulate` at `TIGHT` tolerances on `N_TIMES` equally spaced times in `[0, t_end]`."""
    ts = jnp.linspace(0.0, t_end, N_TIMES)
    return ts, d.simulate(system, y0, ts, **{**TIGHT, **kwargs})


def _random_coupling(rng, n, high=0.5):
    """Symmetric, non-negative, zero diagonal; some pairs uncoupled so that graphs are not complete.

    For `n = 3` the graph is the chain `0 - 1 - 2`; for larger `n` a third of the pairs are dropped.
    """
    k = np.triu(rng.uniform(0.1 * high, high, (n, n)), 1)
    k[0, n - 1] = 0.0
    if n > 3:
        k *= rng.uniform(size=(n, n)) > 1 / 3
    return k + k.T


SYSTEMS = [
    "HarmonicChain",
    "CoupledPendulums",
    "CoupledVanDerPol",
    "HuygensClocks",
    "Kuramoto",
    "DoublePendulum",
    "HamiltonianSystem",
]
#: the conservative systems (`UndampedHuygensClocks`: `gamma = mu = beam_gamma = 0`)
CONSERVATIVE = [
    "HarmonicChain",
    "CoupledPendulums",
    "DoublePendulum",
    "UndampedHuygensClocks",
    "HamiltonianSystem",
]


@functools.cache
def random_system(name: str, seed: int = 0) -> d.AbstractSystem:
    """One system of each kind at random parameters (cached: the same instance each call).

    Shapes depend only on `name`, so repeated solves reuse one compilation.
    """
    rng = np.random.default_rng(seed)
    n = 3
    if name == "HarmonicChain":
        return d.HarmonicChain(rng.uniform(0.5, 2.0, n), _random_coupling(rng, n))
    if name == "CoupledPendulums":
        return d.CoupledPendulums(rng.uniform(0.5, 2.0, n), _random_coupling(rng, n))
    if name == "CoupledVanDerPol":
        return d.CoupledVanDerPol(
            rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0), _random_coupling(rng, n)
        )
    if name in ("HuygensClocks", "UndampedHuygensClocks"):
        damped = name == "HuygensClocks"
        return d.HuygensClocks(
            rng.uniform(0.8, 1.2, 2),
            gamma=rng.uniform(0.0, 0.1) if damped else 0.0,
            mu=rng.uniform(0.05, 0.3) if damped else 0.0,
            theta0=rng.uniform(0.1, 0.4),
            beam_omega=rng.uniform(0.5, 2.0),
            beam_gamma=rng.uniform(0.1, 1.0) if damped else 0.0,
            mass_ratio=rng.uniform(0.05, 0.4),
        )
    if name == "Kuramoto":
        return d.Kuramoto(rng.normal(0.0, 1.0, 20), _random_coupling(rng, 20, high=0.2))
    if name == "DoublePendulum":
        m1, m2, l1, l2 = rng.uniform(0.5, 2.0, 4)
        return d.DoublePendulum(m1, m2, l1, l2, g=rng.uniform(5.0, 15.0))
    if name == "HamiltonianSystem":  # the random pendulums' energy, as a black-box H(q, p)
        pend = random_system("CoupledPendulums", seed)
        return d.HamiltonianSystem(
            lambda q, p: pend.energy(jnp.concatenate([q, p])), pend.n_oscillators
        )
    raise KeyError(name)
