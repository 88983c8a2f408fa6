"""Lagrangian neural networks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ._base import ODEModel
from ._common import MLP, check_state_dim


def _tikhonov(w, eps):
    return w / (w**2 + eps**2)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tikhonov_inverse(h, eps):
    """`V diag(w / (w^2 + eps^2)) V^T` for a symmetric `h = V diag(w) V^T`.

    A smooth matrix function of `h`, but the derivative of `eigh` divides by
    eigenvalue gaps and is NaN at repeated eigenvalues (a Hessian that is zero
    or a multiple of the identity). The JVP below is the Daleckii-Krein formula,
    `d f(h) = V (G o (V^T dh V)) V^T` with `G_ij = (f(w_i) - f(w_j)) / (w_i - w_j)`,
    and `f'(w_i)` where the eigenvalues coincide: finite everywhere.
    """
    w, v = jnp.linalg.eigh(h)
    return (v * _tikhonov(w, eps)[None, :]) @ v.T


@_tikhonov_inverse.defjvp
def _tikhonov_inverse_jvp(eps, primals, tangents):
    (h,), (dh,) = primals, tangents
    w, v = jnp.linalg.eigh(h)
    fw = _tikhonov(w, eps)
    gap = w[:, None] - w[None, :]
    tol = jnp.sqrt(jnp.finfo(w.dtype).eps) * (eps + jnp.abs(w[:, None]) + jnp.abs(w[None, :]))
    close = jnp.abs(gap) <= tol
    mid = 0.5 * (w[:, None] + w[None, :])
    slope = (eps**2 - mid**2) / (mid**2 + eps**2) ** 2  # f'(mid)
    g = jnp.where(close, slope, (fw[:, None] - fw[None, :]) / jnp.where(close, 1.0, gap))
    return (v * fw[None, :]) @ v.T, v @ (g * (v.T @ dh @ v)) @ v.T


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

    def __init__(
        self,
        state_dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        window: int = 10,
        eps: float = 1e-3,
        objective: str = "trajectory",
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="LNN")
        super().__init__(state_dim, window=window, objective=objective)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.n = state_dim // 2
        self.eps = float(eps)
        self.net = MLP(
            state_dim, 1, width=width, depth=depth, activation=jax.nn.softplus, rngs=rngs
        )

    def lagrangian(self, q, qdot):
        y = jnp.concatenate([q, qdot])
        return self.net((y - self.mean[...]) / self.std[...])[0]

    def accelerations(self, q, qdot):
        hess = jax.hessian(self.lagrangian, argnums=1)(q, qdot)
        grad_q = jax.grad(self.lagrangian, argnums=0)(q, qdot)
        mixed = jax.jacfwd(jax.grad(self.lagrangian, argnums=1), argnums=0)(q, qdot)
        rhs = grad_q - mixed @ qdot
        return _tikhonov_inverse(0.5 * (hess + hess.T), self.eps) @ rhs

    def field(self, y):
        q, qdot = y[: self.n], y[self.n :]
        return jnp.concatenate([qdot, self.accelerations(q, qdot)])
