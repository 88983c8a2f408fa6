"""Coupled oscillators with unit masses: harmonic, pendulum and Van der Pol.

All three share the state `y = concat(q, p)` with `p = dq/dt`, frequencies
`omega` of shape `(n,)` (all > 0) and a coupling matrix `kappa` of shape
`(n, n)`: symmetric, zero diagonal, non-negative. The coupling force on
oscillator `i` is `-sum_j kappa_ij (q_i - q_j) = -(Lq)_i` with the graph
Laplacian `L = diag(sum_j kappa_ij) - kappa`.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from . import _validate as v
from ._base import AbstractSystem, _check_sample_args, _uniform


def _laplacian(kappa):
    return jnp.diag(jnp.sum(kappa, axis=-1)) - kappa


class _CoupledOscillators(AbstractSystem):
    omega: Float[Array, " n"]
    coupling: Float[Array, "n n"]

    #: half-width of the uniform initial-amplitude distribution at scale 1
    _amplitude: ClassVar[float] = 0.5

    def __init__(self, omega, coupling):
        self.omega = v.vector("omega", omega, positive=True)
        self.coupling = v.coupling_matrix("coupling", coupling, self.omega.shape[0])

    @property
    def n_oscillators(self) -> int:
        return self.omega.shape[0]

    def _split(self, y):
        n = self.n_oscillators
        return y[..., :n], y[..., n:]

    def _coupling_force(self, q):
        return -q @ _laplacian(self.coupling)

    def _coupling_energy(self, q):
        # sum_{i<j} kappa_ij (q_i - q_j)^2 / 2 = q' L q / 2
        return 0.5 * jnp.sum((q @ _laplacian(self.coupling)) * q, axis=-1)

    def _harmonic_energy(self, y):
        """`sum p_i^2/2 + sum omega_i^2 q_i^2/2 + sum_{i<j} kappa_ij (q_i-q_j)^2/2`."""
        q, p = self._split(y)
        return (
            0.5 * jnp.sum(p**2, axis=-1)
            + 0.5 * jnp.sum(jnp.broadcast_to(self.omega**2, q.shape) * q**2, axis=-1)
            + self._coupling_energy(q)
        )

    def coupling_graph(self) -> Float[Array, "n n"]:
        return (self.coupling > 0).astype(self.coupling.dtype)

    def natural_frequencies(self) -> Float[Array, " n"]:
        """`omega` (each oscillator's frequency without its coupling springs)."""
        return self.omega

    def sample_initial_states(
        self, key: PRNGKeyArray, n: int, *, scale: float = 1.0
    ) -> Float[Array, "n state_dim"]:
        """`q_i ~ U(-a, a)` and `p_i ~ U(-a omega_i, a omega_i)` with `a = scale * amplitude`."""
        _check_sample_args(n, scale)
        kq, kp = jax.random.split(key)
        a = scale * self._amplitude
        q = _uniform(kq, (n, self.n_oscillators), a)
        p = _uniform(kp, (n, self.n_oscillators), a) * self.omega[None, :]
        return jnp.concatenate([q, p], axis=-1)


class HarmonicChain(_CoupledOscillators):
    r"""Linearly coupled harmonic oscillators.

    `q_i'' = -omega_i^2 q_i - sum_j kappa_ij (q_i - q_j)`

    Energy `H = sum p_i^2/2 + sum omega_i^2 q_i^2/2 + sum_{i<j} kappa_ij (q_i-q_j)^2/2`.

    Writing `q'' = -A q` with `A = diag(omega^2) + L` (symmetric positive
    definite), the normal modes are the eigenvectors of `A` and their angular
    frequencies the square roots of its eigenvalues; `exact_solution` uses them.
    """

    conservative: ClassVar[bool] = True

    def vector_field(self, t, y):
        q, p = self._split(y)
        return jnp.concatenate([p, -(self.omega**2) * q + self._coupling_force(q)], axis=-1)

    def energy(self, y):
        return self._harmonic_energy(y)

    def stiffness(self) -> Float[Array, "n n"]:
        """`A = diag(omega^2) + L`, so that `q'' = -A q`."""
        return jnp.diag(self.omega**2) + _laplacian(self.coupling)

    def normal_modes(self) -> tuple[Float[Array, " n"], Float[Array, "n n"]]:
        """Angular frequencies (ascending) and the orthonormal mode shapes (columns)."""
        lam, vecs = jnp.linalg.eigh(self.stiffness())
        return jnp.sqrt(lam), vecs

    def exact_solution(
        self, y0: Float[ArrayLike, "*batch state_dim"], ts: Float[ArrayLike, " T"]
    ) -> Float[Array, "*batch T state_dim"]:
        """The closed-form trajectory from the normal modes.

        In modal coordinates `a = V^T q`, `b = V^T p`:
        `a(t) = a0 cos(nu t) + b0 sin(nu t) / nu`, `b(t) = -a0 nu sin(nu t) + b0 cos(nu t)`.
        """
        y0 = v.states("y0", y0, self.state_dim)
        ts = v.times("ts", ts)
        nu, vecs = self.normal_modes()
        q0, p0 = self._split(y0)
        a0 = (q0 @ vecs)[..., None, :]
        b0 = (p0 @ vecs)[..., None, :]
        phase = ts[:, None] * nu[None, :]
        # (T, n) and (n,) lifted to the rank of a0, (*batch, 1, n): explicit broadcasting
        lead = (None,) * (a0.ndim - 2)
        c, s = jnp.cos(phase)[lead], jnp.sin(phase)[lead]
        nu = nu[lead + (None,)]
        a = a0 * c + b0 * s / nu
        b = -a0 * nu * s + b0 * c
        return jnp.concatenate([a @ vecs.T, b @ vecs.T], axis=-1)


class CoupledPendulums(_CoupledOscillators):
    r"""Pendulums coupled by linear springs.

    `q_i'' = -omega_i^2 sin q_i - sum_j kappa_ij (q_i - q_j)`

    Energy `H = sum p_i^2/2 + sum omega_i^2 (1 - cos q_i) + sum_{i<j} kappa_ij (q_i-q_j)^2/2`.
    """

    conservative: ClassVar[bool] = True
    angular: ClassVar[bool] = True

    def vector_field(self, t, y):
        q, p = self._split(y)
        return jnp.concatenate(
            [p, -(self.omega**2) * jnp.sin(q) + self._coupling_force(q)], axis=-1
        )

    def energy(self, y):
        q, p = self._split(y)
        return (
            0.5 * jnp.sum(p**2, axis=-1)
            + jnp.sum(jnp.broadcast_to(self.omega**2, q.shape) * (1 - jnp.cos(q)), axis=-1)
            + self._coupling_energy(q)
        )


class CoupledVanDerPol(_CoupledOscillators):
    r"""Self-sustained Van der Pol oscillators with linear coupling (dissipative).

    `q_i'' = mu (1 - q_i^2) q_i' - omega_i^2 q_i - sum_j kappa_ij (q_i - q_j)`, `mu >= 0`.

    `energy` is the mechanical part of the `HarmonicChain` energy; it is not
    conserved. A single oscillator with `omega = 1` has a limit cycle of
    amplitude close to 2 for any `mu > 0`.
    """

    mu: Float[Array, ""]
    _amplitude: ClassVar[float] = 2.0

    self_sustained: ClassVar[bool] = True

    def __init__(self, omega, mu, coupling):
        super().__init__(omega, coupling)
        self.mu = v.scalar("mu", mu, nonnegative=True)

    def vector_field(self, t, y):
        q, p = self._split(y)
        acc = self.mu * (1 - q**2) * p - self.omega**2 * q + self._coupling_force(q)
        return jnp.concatenate([p, acc], axis=-1)

    def energy(self, y):
        return self._harmonic_energy(y)
