"""The double pendulum (the LNN paper's benchmark)."""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _validate as v
from ._base import AbstractSystem, _check_sample_args, _uniform


class DoublePendulum(AbstractSystem):
    r"""Two point masses on rigid massless rods; state `(theta1, theta2, w1, w2)`.

    `L = (m1+m2) l1^2 w1^2/2 + m2 l2^2 w2^2/2 + m2 l1 l2 w1 w2 cos(theta1-theta2)
         + (m1+m2) g l1 cos theta1 + m2 g l2 cos theta2`

    With `d = theta1 - theta2` the Euler-Lagrange equations are the 2x2 system

    `(m1+m2) l1^2 w1' + m2 l1 l2 cos(d) w2' = -m2 l1 l2 w2^2 sin(d) - (m1+m2) g l1 sin theta1`

    `m2 l1 l2 cos(d) w1' + m2 l2^2 w2'      =  m2 l1 l2 w1^2 sin(d) - m2 g l2 sin theta2`,

    solved in closed form (the determinant `m2 l1^2 l2^2 (m1 + m2 sin^2 d)` is
    positive). Energy `E = T - (m1+m2) g l1 cos theta1 - m2 g l2 cos theta2`.
    Chaotic at high energy.

    `amplitude` sets the initial-condition distribution (`sample_initial_states`:
    `|theta_i|, |w_i| <= amplitude`): the default 0.5 rad keeps the swings nearly
    regular (largest Lyapunov exponent below 0.025 on 8 of 8 sampled starts),
    `amplitude = 2` reaches the chaotic regime on part of its starts (exponents 0.02 to 1.1,
    median 0.18, on 8 sampled starts over `T = 200`; 1.5 at `theta = (2, 2.5)`, see
    `lyapunov_exponent`): a mixed phase space. It is a
    parameter of the data, not of the equations: a static field, recorded in
    `parameters()` (and so in the run hash) but never learned.
    """

    m1: Float[Array, ""]
    m2: Float[Array, ""]
    l1: Float[Array, ""]
    l2: Float[Array, ""]
    g: Float[Array, ""]
    amplitude: float = eqx.field(static=True)

    conservative: ClassVar[bool] = True
    angular: ClassVar[bool] = True

    def __init__(self, m1=1.0, m2=1.0, l1=1.0, l2=1.0, g=9.8, amplitude=0.5):
        self.m1 = v.scalar("m1", m1, positive=True)
        self.m2 = v.scalar("m2", m2, positive=True)
        self.l1 = v.scalar("l1", l1, positive=True)
        self.l2 = v.scalar("l2", l2, positive=True)
        self.g = v.scalar("g", g, nonnegative=True)
        try:
            amplitude = float(amplitude)
        except (TypeError, ValueError) as e:
            raise ValueError(f"amplitude must be a number, got {amplitude!r}") from e
        if not (math.isfinite(amplitude) and amplitude > 0):
            raise ValueError(f"amplitude must be finite and > 0, got {amplitude!r}")
        self.amplitude = amplitude

    @property
    def n_oscillators(self) -> int:
        return 2

    def vector_field(self, t, y):
        t1, t2, w1, w2 = y[0], y[1], y[2], y[3]
        m1, m2, l1, l2, g = self.m1, self.m2, self.l1, self.l2, self.g
        d = t1 - t2
        a11, a12, a22 = (m1 + m2) * l1**2, m2 * l1 * l2 * jnp.cos(d), m2 * l2**2
        b1 = -m2 * l1 * l2 * w2**2 * jnp.sin(d) - (m1 + m2) * g * l1 * jnp.sin(t1)
        b2 = m2 * l1 * l2 * w1**2 * jnp.sin(d) - m2 * g * l2 * jnp.sin(t2)
        det = a11 * a22 - a12**2
        acc1 = (a22 * b1 - a12 * b2) / det
        acc2 = (a11 * b2 - a12 * b1) / det
        return jnp.stack([w1, w2, acc1, acc2])

    def kinetic(self, y):
        t1, t2, w1, w2 = (y[..., i] for i in range(4))
        m1, m2, l1, l2 = self.m1, self.m2, self.l1, self.l2
        return (
            0.5 * (m1 + m2) * l1**2 * w1**2
            + 0.5 * m2 * l2**2 * w2**2
            + m2 * l1 * l2 * w1 * w2 * jnp.cos(t1 - t2)
        )

    def lagrangian(self, q: Float[Array, "2"], qdot: Float[Array, "2"]) -> Float[Array, ""]:
        """`L(q, q')` exactly as in the class docstring."""
        y = jnp.concatenate([q, qdot])
        return (
            self.kinetic(y)
            + (self.m1 + self.m2) * self.g * self.l1 * jnp.cos(q[0])
            + (self.m2 * self.g * self.l2 * jnp.cos(q[1]))
        )

    def energy(self, y):
        return (
            self.kinetic(y)
            - (self.m1 + self.m2) * self.g * self.l1 * jnp.cos(y[..., 0])
            - self.m2 * self.g * self.l2 * jnp.cos(y[..., 1])
        )

    def ground_energy(self) -> float:
        """The energy of both pendulums hanging at rest, `-(m1 + m2) g l1 - m2 g l2`."""
        return float(self.energy(jnp.zeros(4)))

    def coupling_graph(self):
        return jnp.array([[0.0, 1.0], [1.0, 0.0]])

    def natural_frequencies(self) -> Float[Array, "2"]:
        """`sqrt(g / l_i)`: each pendulum's small-swing frequency on its own."""
        return jnp.sqrt(self.g / jnp.stack([self.l1, self.l2]))

    def _mass_matrix(self, y):
        m1, m2, l1, l2 = self.m1, self.m2, self.l1, self.l2
        a12 = m2 * l1 * l2 * jnp.cos(y[..., 0] - y[..., 1])
        return (m1 + m2) * l1**2, a12, m2 * l2**2

    def to_canonical(self, y):
        """`p = M(theta) w`: `p1 = (m1+m2) l1^2 w1 + m2 l1 l2 cos(d) w2`,
        `p2 = m2 l1 l2 cos(d) w1 + m2 l2^2 w2` (`p = dL/dw`)."""
        a11, a12, a22 = self._mass_matrix(y)
        w1, w2 = y[..., 2], y[..., 3]
        return jnp.stack([y[..., 0], y[..., 1], a11 * w1 + a12 * w2, a12 * w1 + a22 * w2], axis=-1)

    def from_canonical(self, z):
        """`w = M(theta)^{-1} p`, the 2x2 inverse in closed form."""
        a11, a12, a22 = self._mass_matrix(z)
        p1, p2 = z[..., 2], z[..., 3]
        det = a11 * a22 - a12**2
        return jnp.stack(
            [z[..., 0], z[..., 1], (a22 * p1 - a12 * p2) / det, (a11 * p2 - a12 * p1) / det],
            axis=-1,
        )

    def sample_initial_states(self, key: PRNGKeyArray, n: int, *, scale: float = 1.0):
        """`theta_i ~ U(-a, a)` with `a = amplitude * scale` rad, `w_i ~ U(-a, a)` rad per unit
        time."""
        _check_sample_args(n, scale)
        kq, kw = jax.random.split(key)
        a = self.amplitude * scale
        return jnp.concatenate([_uniform(kq, (n, 2), a), _uniform(kw, (n, 2), a)], axis=-1)
