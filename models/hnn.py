"""Hamiltonian neural networks: conservative and dissipative."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ._base import ODEModel
from ._common import MLP, check_state_dim


class HNN(ODEModel):
    r"""Hamiltonian neural network (Greydanus et al. 2019).

    Learns a scalar `H(q, p) = MLP((y - m) / s)`; the vector field is
    `J grad H`, i.e. `q' = dH/dp`, `p' = -dH/dq`, so every forecast conserves
    the learned `H` up to the integrator's error. Trained by trajectory
    matching over short windows (or, for the paper's reproduction, derivative
    matching: `objective="derivative"`). Needs a canonical `(q, p)` state.
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
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="HNN")
        super().__init__(state_dim, window=window, objective=objective)
        self.n = state_dim // 2
        self.net = MLP(state_dim, 1, width=width, depth=depth, rngs=rngs)

    def hamiltonian(self, y):
        """The learned energy `H(y)` of one state."""
        return self.net((y - self.mean[...]) / self.std[...])[0]

    def field(self, y):
        dh = jax.grad(self.hamiltonian)(y)
        return jnp.concatenate([dh[self.n :], -dh[: self.n]])


class DissipativeHNN(ODEModel):
    r"""Dissipative HNN (Sosanya and Greydanus 2022).

    Learns a Hamiltonian `H` and a dissipation potential `D` (two MLPs); the
    field is `J grad H + grad D` (Helmholtz decomposition into a
    divergence-free and a curl-free part). `D` captures damping and driving,
    `H` the conservative dynamics. Needs a canonical `(q, p)` state.
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
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="DissipativeHNN")
        super().__init__(state_dim, window=window, objective=objective)
        self.n = state_dim // 2
        self.h_net = MLP(state_dim, 1, width=width, depth=depth, rngs=rngs)
        self.d_net = MLP(state_dim, 1, width=width, depth=depth, rngs=rngs)

    def hamiltonian(self, y):
        return self.h_net((y - self.mean[...]) / self.std[...])[0]

    def dissipation(self, y):
        return self.d_net((y - self.mean[...]) / self.std[...])[0]

    def field(self, y):
        dh = jax.grad(self.hamiltonian)(y)
        return jnp.concatenate([dh[self.n :], -dh[: self.n]]) + jax.grad(self.dissipation)(y)
