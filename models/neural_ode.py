"""Black-box neural ODEs: first order and second order."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ._base import ODEModel
from ._common import MLP, check_state_dim


class NeuralODE(ODEModel):
    r"""A black-box vector field `y' = s * (A z + f(z))`, `z = (y - m) / s`, with `f` an MLP
    (tanh) and `A` a linear skip (`linear=True`, the default).

    `m`, `s` are the per-coordinate mean and standard deviation of the
    training data. The linear skip makes the network contain the best linear
    field, which a plain MLP must build out of saturating units (without it a
    72-parameter least-squares linear field beat the 5,000-parameter network).
    Trained by the ODE recipe (see `ODEModel` and `models.recipes`). Knows
    nothing of the physics.
    """

    def __init__(
        self,
        state_dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        window: int = 10,
        objective: str = "trajectory",
        linear: bool = True,
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim)
        super().__init__(state_dim, window=window, objective=objective)
        self.net = MLP(state_dim, state_dim, width=width, depth=depth, linear=linear, rngs=rngs)

    def field(self, y):
        return self.std[...] * self.net((y - self.mean[...]) / self.std[...])


class SecondOrderNODE(ODEModel):
    r"""Second-order structure: `q' = p`, `p' = f(q, p)` with `f` an MLP.

    The kinematic identity `q' = p` is built in; only the accelerations are
    learned, `p' = s_p * (A z + f(z))` with `z` the normalised state and the
    linear skip `A` as in `NeuralODE` (`linear=True`). Gruver et al. (2022)
    found that this structure, not the symplectic one, explains most of the
    HNN's gains. Needs a canonical `(q, p)` state.
    """

    needs_canonical = True

    def __init__(
        self,
        state_dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        window: int = 10,
        objective: str = "trajectory",
        linear: bool = True,
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="SecondOrderNODE")
        super().__init__(state_dim, window=window, objective=objective)
        self.n = state_dim // 2
        self.net = MLP(state_dim, self.n, width=width, depth=depth, linear=linear, rngs=rngs)

    def field(self, y):
        p = y[self.n :]
        acc = self.std[self.n :] * self.net((y - self.mean[...]) / self.std[...])
        return jnp.concatenate([p, acc])
