"""Lagrangian neural networks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ._base import ODEModel
from ._common import MLP, check_state_dim


def _tikhonov(w, eps):
    return w / (w**2 + eps**2)


def _relative_eps(w, eps):
    """`eps * max(max_i |w_i|, 1)`: the guard's threshold scaled to the largest eigenvalue (as
    `pinv`'s `rcond`), never below `eps` itself."""
    return eps * jnp.maximum(jnp.max(jnp.abs(w)), 1.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tikhonov_inverse(h: Float[Array, "n n"], eps: float) -> Float[Array, "n n"]:
    """`V diag(w / (w^2 + e^2)) V^T` for a symmetric `h = V diag(w) V^T`, with the relative
    threshold `e = eps * max(max_i |w_i|, 1)`.

    A smooth matrix function of `h` (for a fixed `e`), but the derivative of `eigh` divides by
    eigenvalue gaps and is NaN at repeated eigenvalues (a Hessian that is zero or a multiple of
    the identity, as the LNN's is at initialisation). The JVP below is the Daleckii-Krein
    formula, `d f(h) = V (G o (V^T dh V)) V^T` with `G_ij = (f(w_i) - f(w_j)) / (w_i - w_j)`,
    and `f'(w_i)` where the eigenvalues coincide: finite everywhere. The threshold `e` is held
    fixed under differentiation (a guard, not part of the model: where `|w| >> e`, as for a
    well-conditioned Hessian, `f(w) = 1/w + O(e^2/w^3)` does not depend on it).
    """
    w, v = jnp.linalg.eigh(h)
    return (v * _tikhonov(w, _relative_eps(w, eps))[None, :]) @ v.T


@_tikhonov_inverse.defjvp
def _tikhonov_inverse_jvp(eps, primals, tangents):
    (h,), (dh,) = primals, tangents
    w, v = jnp.linalg.eigh(h)
    e = jax.lax.stop_gradient(_relative_eps(w, eps))
    fw = _tikhonov(w, e)
    gap = w[:, None] - w[None, :]
    tol = jnp.sqrt(jnp.finfo(w.dtype).eps) * (e + jnp.abs(w[:, None]) + jnp.abs(w[None, :]))
    close = jnp.abs(gap) <= tol
    mid = 0.5 * (w[:, None] + w[None, :])
    slope = (e**2 - mid**2) / (mid**2 + e**2) ** 2  # f'(mid)
    g = jnp.where(close, slope, (fw[:, None] - fw[None, :]) / jnp.where(close, 1.0, gap))
    return (v * fw[None, :]) @ v.T, v @ (g * (v.T @ dh @ v)) @ v.T


class LNN(ODEModel):
    r"""Lagrangian neural network (Cranmer et al. 2020).

    Learns a general scalar `L(q, q')`; the accelerations solve the Euler-Lagrange equations

    `(d^2L/dq'^2) q'' = dL/dq - (d^2L/dq' dq) q'`.

    **Parametrisation.** In the normalised coordinates `u = (q - m_q) / s_q`,
    `v = (q' - m_v) / s_v` (`m`, `s`: the training data's means and standard deviations)

    `L = (kinetic_prior / 2) |v|^2 + N(u, v)`,

    with `N` an MLP with softplus activations (as in the paper: its second derivatives are
    non-zero, unlike ReLU's). The quadratic term is fixed, not learned, and adds no structure:
    `N` is a general function and can represent any `L` minus it (EL equations are
    unchanged by `L -> c L`, so `N` only has to learn `c L_true - |v|^2 / 2` for some
    `c > 0`). What it buys is the conditioning at initialisation: `d^2L/dv^2 = kinetic_prior *
    I + d^2N/dv^2` starts near a multiple of the identity, positive definite, instead of at the
    small, indefinite Hessian of a random network (measured on two coupled pendulums: every
    eigenvalue pair of a fresh network's `d^2L/dq'^2` was indefinite, with eigenvalues
    crossing zero, so that the solve amplified the right-hand side up to `1/eps` and the first
    training steps saw accelerations of 1e2-1e3 and losses of 1e4). `kinetic_prior = 0` is the
    plain LNN of the paper.

    **The solve** is done in the normalised coordinates, where the prior sets the scale:
    with `H = d^2L/dv^2`, `G = dL/du` and `M = d^2L/dv du`,

    `H z = (s_v / s_q) G - M (q' / s_q)`, `q'' = s_v z`

    (the same equations multiplied through by `diag(s_v)`). It is guarded: with
    `H = V diag(w) V^T` the inverse is applied as `V diag(w / (w^2 + e^2)) V^T` (a Tikhonov
    pseudo-inverse), `e = eps * max(max_i |w_i|, 1)` relative to the Hessian's scale (so the
    condition number that reaches the accelerations is capped near `1 / eps`), smooth and
    finite even where the learned Hessian is singular. Needs a canonical `(q, q')` state.
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
        kinetic_prior: float = 1.0,
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="LNN")
        super().__init__(state_dim, window=window, objective=objective)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not kinetic_prior >= 0:
            raise ValueError(f"kinetic_prior must be >= 0, got {kinetic_prior!r}")
        self.n = state_dim // 2
        self.eps = float(eps)
        self.kinetic_prior = float(kinetic_prior)
        self.net = MLP(
            state_dim, 1, width=width, depth=depth, activation=jax.nn.softplus, rngs=rngs
        )

    def _normalised_lagrangian(self, u: Float[Array, " n"], v: Float[Array, " n"]):
        """`L` as a function of the normalised `u = (q - m_q) / s_q`, `v = (q' - m_v) / s_v`."""
        return 0.5 * self.kinetic_prior * jnp.sum(v**2) + self.net(jnp.concatenate([u, v]))[0]

    def _normalise(self, q, qdot):
        n = self.n
        u = (q - self.mean[:n]) / self.std[:n]
        v = (qdot - self.mean[n:]) / self.std[n:]
        return u, v

    def lagrangian(self, q: Float[Array, " n"], qdot: Float[Array, " n"]) -> Float[Array, ""]:
        """The learned `L(q, q')` of one state."""
        return self._normalised_lagrangian(*self._normalise(q, qdot))

    def accelerations(self, q: Float[Array, " n"], qdot: Float[Array, " n"]) -> Float[Array, " n"]:
        """`q''` from the Euler-Lagrange equations, solved in the normalised coordinates."""
        n = self.n
        s_q, s_v = self.std[:n], self.std[n:]
        u, v = self._normalise(q, qdot)
        x = qdot / s_q
        grad = jax.grad(self._normalised_lagrangian, argnums=(0, 1))

        def push(du, dv):
            return jax.jvp(grad, (u, v), (du, dv))

        # one reverse pass for (dL/du, dL/dv) and n + 1 tangents through it: along (x, 0) the
        # change of dL/dv is `M x`, along (0, e_i) it is `H e_i` (not the 2n of the full Hessian)
        du = jnp.concatenate([x[None], jnp.zeros((n, n), x.dtype)])
        dv = jnp.concatenate([jnp.zeros((1, n), x.dtype), jnp.eye(n, dtype=x.dtype)])
        (grad_u, _), (_, d_grad_v) = jax.vmap(push, out_axes=((None, None), (0, 0)))(du, dv)
        hess = d_grad_v[1:]
        rhs = (s_v / s_q) * grad_u - d_grad_v[0]
        return s_v * (_tikhonov_inverse(0.5 * (hess + hess.T), self.eps) @ rhs)

    def recipe(self, n_train_steps: int, *, budget: int, **recipe_kwargs):
        """`models.recipes.ode_recipe` with one short-window stage (10 states) before the whole
        window, validated every 10 steps there: an LNN step solves a Hessian system at every
        state, so each extra stage costs about 25 s of compilation and each step about ten
        of another ODE model's; on the quick study the window-40 stage gained under 10% of
        validation error, and the whole-window stage, validated every 20 steps, ran out of
        budget one evaluation before its stopping rule could fire."""
        from .recipes import ode_recipe

        kwargs = {"windows": (10,), "whole_eval_every": 10} | recipe_kwargs
        return ode_recipe(n_train_steps, budget=budget, **kwargs)

    def field(self, y: Float[Array, " d"]) -> Float[Array, " d"]:
        q, qdot = y[: self.n], y[self.n :]
        return jnp.concatenate([qdot, self.accelerations(q, qdot)])
