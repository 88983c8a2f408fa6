"""Huygens' clocks: pendulum clocks hanging from one movable beam."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _validate as v
from ._base import AbstractSystem, _check_sample_args


class HuygensClocks(AbstractSystem):
    r"""`n` pendulum clocks on one beam that can slide on a spring (Huygens' "odd sympathy").

    State `(theta_1..theta_n, x, theta_1'..theta_n', x')`, shape `(2n+2,)`;
    `q = (theta, x)`, `p = (theta', x')`. With `m = mass_ratio`:

    `theta_i'' + cos(theta_i) x'' = -omega_i^2 sin(theta_i) - gamma theta_i'
    + mu (1 - theta_i^2/theta0^2) theta_i'`

    `x'' + m sum_i cos(theta_i) theta_i'' = m sum_i theta_i'^2 sin(theta_i) - beam_omega^2 x
    - beam_gamma x'`

    The escapement `mu (1 - theta^2/theta0^2) theta'` pumps energy into small
    swings and takes it from large ones (a Van der Pol escapement). Writing
    `f_i` and `g` for the right-hand sides and `c_i = cos(theta_i)`, the
    bordered linear system for the accelerations has the closed form

    `x'' = (g - m sum_i c_i f_i) / (1 - m sum_i c_i^2)`, `theta_i'' = f_i - c_i x''`,

    which is well posed because `m n < 1` (a constructor check). With
    `gamma = mu = beam_gamma = 0` the system conserves

    `E = sum theta_i'^2/2 + sum c_i theta_i' x' + x'^2/(2m) + sum omega_i^2 (1 - c_i)
    + beam_omega^2 x^2/(2m)`,

    the energy that `energy` returns (the energy per unit pendulum mass and
    length). The coupling graph is all-to-all through the beam.

    With the default parameters (a light beam, `mass_ratio = 0.05`, strongly
    damped) two identical clocks started out of step fall into **anti-phase**
    synchronisation, as Huygens observed.
    """

    omega: Float[Array, " n"]
    gamma: Float[Array, ""]
    mu: Float[Array, ""]
    theta0: Float[Array, ""]
    beam_omega: Float[Array, ""]
    beam_gamma: Float[Array, ""]
    mass_ratio: Float[Array, ""]

    angular: ClassVar[bool] = True
    self_sustained: ClassVar[bool] = True

    def __init__(
        self,
        omega,
        gamma=0.01,
        mu=0.1,
        theta0=0.2,
        beam_omega=1.5,
        beam_gamma=0.5,
        mass_ratio=0.05,
    ):
        self.omega = v.vector("omega", omega, positive=True)
        self.gamma = v.scalar("gamma", gamma, nonnegative=True)
        self.mu = v.scalar("mu", mu, nonnegative=True)
        self.theta0 = v.scalar("theta0", theta0, positive=True)
        self.beam_omega = v.scalar("beam_omega", beam_omega, nonnegative=True)
        self.beam_gamma = v.scalar("beam_gamma", beam_gamma, nonnegative=True)
        self.mass_ratio = v.scalar("mass_ratio", mass_ratio, positive=True)
        n = self.omega.shape[0]
        if not isinstance(self.mass_ratio, jax.core.Tracer) and not float(self.mass_ratio) * n < 1:
            raise ValueError(
                f"mass_ratio * n must be < 1 for the accelerations to be well posed, "
                f"got mass_ratio={float(self.mass_ratio)!r} with n={n} "
                f"(product {float(self.mass_ratio) * n!r})"
            )

    @property
    def n_oscillators(self) -> int:
        return self.omega.shape[0]

    @property
    def state_dim(self) -> int:
        return 2 * self.n_oscillators + 2

    def _split(self, y):
        n = self.n_oscillators
        return y[..., :n], y[..., n], y[..., n + 1 : 2 * n + 1], y[..., 2 * n + 1]

    def vector_field(self, t, y):
        th, x, w, u = self._split(y)
        m = self.mass_ratio
        c, s = jnp.cos(th), jnp.sin(th)
        f = -(self.omega**2) * s - self.gamma * w + self.mu * (1 - th**2 / self.theta0**2) * w
        g = m * jnp.sum(w**2 * s) - self.beam_omega**2 * x - self.beam_gamma * u
        x_acc = (g - m * jnp.sum(c * f)) / (1 - m * jnp.sum(c**2))
        th_acc = f - c * x_acc
        return jnp.concatenate([w, u[None], th_acc, x_acc[None]])

    def energy(self, y):
        th, x, w, u = self._split(y)
        m = self.mass_ratio
        c = jnp.cos(th)
        return (
            0.5 * jnp.sum(w**2, axis=-1)
            + jnp.sum(c * w, axis=-1) * u
            + u**2 / (2 * m)
            + jnp.sum(jnp.broadcast_to(self.omega**2, c.shape) * (1 - c), axis=-1)
            + self.beam_omega**2 * x**2 / (2 * m)
        )

    def oscillator_groups(self) -> tuple[tuple[int, ...], ...]:
        """Clock `i` is `(theta_i, theta_i')` = indices `(i, n + 1 + i)`; the beam belongs to
        none."""
        n = self.n_oscillators
        return tuple((i, n + 1 + i) for i in range(n))

    def split_state(self, y):
        """`q = theta`, `p = theta'`, extras `{"beam_x": x, "beam_v": x'}`."""
        th, x, w, u = self._split(y)
        return th, w, {"beam_x": x, "beam_v": u}

    def natural_frequencies(self) -> Float[Array, " n"]:
        """`omega`, each clock's small-swing frequency on a fixed beam."""
        return self.omega

    def observables(self, y):
        """`"energy"` and, for each clock `i > 1`, `"phase_difference_i"`: its phase minus
        clock 1's in `(-pi, pi]` (`phase_difference` for two clocks)."""
        th, _, w, _ = self._split(y)
        ph = jnp.arctan2(-w / jnp.broadcast_to(self.omega, w.shape), th)
        out = {"energy": self.energy(y)}
        for i in range(1, self.n_oscillators):
            out[f"phase_difference_{i + 1}"] = jnp.angle(jnp.exp(1j * (ph[..., i] - ph[..., 0])))
        return out

    def to_canonical(self, y):
        """With `L = sum theta'^2/2 + sum cos(theta) theta' x' + x'^2/(2m) - V`:
        `p_theta_i = theta_i' + cos(theta_i) x'`, `p_x = x'/m + sum_i cos(theta_i) theta_i'`."""
        th, x, w, u = self._split(y)
        c = jnp.cos(th)
        p_th = w + c * u[..., None]
        p_x = u / self.mass_ratio + jnp.sum(c * w, axis=-1)
        return jnp.concatenate([th, x[..., None], p_th, p_x[..., None]], axis=-1)

    def from_canonical(self, z):
        """The bordered inverse: `x' = (p_x - sum c_i p_theta_i) / (1/m - sum c_i^2)`,
        `theta_i' = p_theta_i - c_i x'`."""
        th, x, p_th, p_x = self._split(z)
        c = jnp.cos(th)
        u = (p_x - jnp.sum(c * p_th, axis=-1)) / (1 / self.mass_ratio - jnp.sum(c**2, axis=-1))
        w = p_th - c * u[..., None]
        return jnp.concatenate([th, x[..., None], w, u[..., None]], axis=-1)

    def coupling_graph(self):
        n = self.n_oscillators
        return jnp.ones((n, n)) - jnp.eye(n)

    def sample_initial_states(self, key: PRNGKeyArray, n: int, *, scale: float = 1.0):
        """Each clock at amplitude `A_i ~ U(0.5, 1.5) * theta0 * scale` and a random phase
        `phi_i ~ U(-pi, pi)`: `theta_i = A_i cos(phi_i)`, `theta_i' = -A_i omega_i sin(phi_i)`,
        so the clocks start genuinely out of step; the beam starts at rest."""
        _check_sample_args(n, scale)
        k_amp, k_phase = jax.random.split(key)
        nc = self.n_oscillators
        amp = jax.random.uniform(k_amp, (n, nc), minval=0.5, maxval=1.5) * self.theta0 * scale
        phase = jax.random.uniform(k_phase, (n, nc), minval=-jnp.pi, maxval=jnp.pi)
        zeros = jnp.zeros((n, 1))
        w = -amp * self.omega[None, :] * jnp.sin(phase)
        return jnp.concatenate([amp * jnp.cos(phase), zeros, w, zeros], axis=-1)

    def phase_difference(self, y: Float[Array, "*batch state_dim"]) -> Float[Array, "*batch"]:
        """Phase of clock 2 minus clock 1 in `(-pi, pi]`, from the angle of
        `(theta_i, theta_i'/omega_i)`."""
        th, _, w, _ = self._split(y)
        ph = jnp.arctan2(-w / jnp.broadcast_to(self.omega, w.shape), th)
        d = ph[..., 1] - ph[..., 0]
        return jnp.angle(jnp.exp(1j * d))
