"""Lagrangian neural networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ._base import ODEModel
from ._common import MLP, check_state_dim


class LNN(ODEModel):
    r"""Lagrangian neural network (Cranmer et al. 2020).

    Learns `L(q, q')` (an MLP with softplus activations, as in the paper, so
    that its second derivatives are non-zero). The accelerations solve the
    Euler-Lagrange equations

    `(d^2L/dq'^2) q'' = dL/dq - (d^2L/dq' dq) q'`.

    The solve is guarded: with the eigen-decomposition `d^2L/dq'^2 = V diag(w) V^T`
    the inverse is applied as `V diag(w / (w^2 + eps^2)) V^T` (a Tikhonov
    pseudo-inverse), which is smooth and finite even where the learned
    Hessian is singular. Needs a canonical `(q, q')` state.
    """

    needs_canonical = True

    def __init__(self, state_dim: int, *, width: int = 64, depth: int = 2, window: int = 10,
                 eps: float = 1e-3, objective: str = "trajectory", rngs: nnx.Rngs):
        check_state_dim(state_dim, even=True, who="LNN")
        super().__init__(state_dim, window=window, objective=objective)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.n = state_dim // 2
        self.eps = float(eps)
        self.net = MLP(state_dim, 1, width=width, depth=depth, activation=jax.nn.softplus, rngs=rngs)

    def lagrangian(self, q, qdot):
        y = jnp.concatenate([q, qdot])
        return self.net((y - self.mean.value) / self.std.value)[0]

    def accelerations(self, q, qdot):
        hess = jax.hessian(self.lagrangian, argnums=1)(q, qdot)
        grad_q = jax.grad(self.lagrangian, argnums=0)(q, qdot)
        mixed = jax.jacfwd(jax.grad(self.lagrangian, argnums=1), argnums=0)(q, qdot)
        rhs = grad_q - mixed @ qdot
        w, v = jnp.linalg.eigh(0.5 * (hess + hess.T))
        return v @ ((w / (w**2 + self.eps**2)) * (v.T @ rhs))

    def field(self, y):
        q, qdot = y[: self.n], y[self.n:]
        return jnp.concatenate([qdot, self.accelerations(q, qdot)])
