"""The structured white-box model: `k` coupled oscillators with readable parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._base import ODEModel
from ._common import check_state_dim, integrate

_KINDS = ("pendulum", "harmonic", "vanderpol")


def _inv_softplus(x):
    x = np.asarray(x, dtype=float)
    return np.where(x > 20, x, np.log(np.expm1(np.maximum(x, 1e-12))))


class OscillatorModel(ODEModel):
    r"""`k` coupled oscillators with learnable frequencies, damping and coupling.

    Latent state `(u, v)`, `u, v` of shape `(k,)`, with

    `u_i' = v_i`,
    `v_i' = -omega_i^2 g(u_i) - gamma_i v_i - sum_j kappa_ij (u_i - u_j) [+ mu (1 - u_i^2) v_i]`

    where `g = sin` (`kind="pendulum"`) or the identity (`"harmonic"`,
    `"vanderpol"`; the bracket only for `"vanderpol"`). `omega = exp(a) > 0`,
    `gamma = softplus(b) >= 0`, and `kappa = softplus(c)` symmetrised with a zero
    diagonal, so every learned model is physical. When `k == n` (the observed
    number of oscillators) the latent state is the observed `(q, p)`; when
    `k != n` a learned linear map `C` of shape `(n, k)` gives `q = C u`,
    `p = C v`, and the forecast starts from the least-squares latent state of
    the last context state. `k == n` can represent the truth; `k < n` cannot.

    Fitting frequencies by gradient descent through trajectories has many
    local minima, so `prepare` initialises from the data: for `k == n`, a
    linear least-squares fit of the accelerations (central differences of `p`)
    on the model's own features; for `k != n`, the `k` strongest peaks of the
    training data's power spectrum and a PCA map `C`. Training then refines
    everything by trajectory matching over short windows (multiple shooting).
    Read the result with `frequencies()`, `damping()` and `coupling()`.
    """

    needs_canonical = True

    def __init__(
        self,
        state_dim: int,
        *,
        k: int,
        kind: str = "pendulum",
        window: int = 10,
        objective: str = "trajectory",
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="OscillatorModel")
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        super().__init__(state_dim, window=window, objective=objective)
        self.n, self.k, self.kind = state_dim // 2, int(k), kind
        key = rngs.params()
        self.log_omega = nnx.Param(jnp.zeros(k))
        self.raw_damping = nnx.Param(jnp.full(k, float(_inv_softplus(1e-3))))
        self.raw_coupling = nnx.Param(jnp.full((k, k), float(_inv_softplus(0.05))))
        self.raw_mu = (
            nnx.Param(jnp.asarray(float(_inv_softplus(0.5)))) if kind == "vanderpol" else None
        )
        if k != self.n:
            self.readout = nnx.Param(jax.random.normal(key, (self.n, k)) / np.sqrt(k))
        else:
            self.readout = None

    # ------------------------------------------------------------ parameters
    def frequencies(self):
        """The learned `omega`, shape `(k,)`."""
        return jnp.exp(self.log_omega[...])

    def damping(self):
        """The learned `gamma`, shape `(k,)`."""
        return jax.nn.softplus(self.raw_damping[...])

    def coupling(self):
        """The learned `kappa`: symmetric, non-negative, zero diagonal, shape `(k, k)`."""
        c = jax.nn.softplus(self.raw_coupling[...])
        c = 0.5 * (c + c.T)
        return c * (1 - jnp.eye(self.k, dtype=c.dtype))

    def mu(self):
        return jax.nn.softplus(self.raw_mu[...]) if self.raw_mu is not None else None

    # ------------------------------------------------------------ dynamics
    def latent_field(self, x):
        u, v = x[: self.k], x[self.k :]
        kappa = self.coupling()
        lap = jnp.diag(kappa.sum(-1)) - kappa
        restoring = jnp.sin(u) if self.kind == "pendulum" else u
        acc = -(self.frequencies() ** 2) * restoring - self.damping() * v - lap @ u
        if self.kind == "vanderpol":
            acc = acc + self.mu() * (1 - u**2) * v
        return jnp.concatenate([v, acc])

    def field(self, y):
        return self.latent_field(y)  # used when k == n

    def encode(self, y):
        if self.readout is None:
            return y
        pinv = jnp.linalg.pinv(self.readout[...])
        return jnp.concatenate([pinv @ y[: self.n], pinv @ y[self.n :]])

    def decode(self, x):
        if self.readout is None:
            return x
        c = self.readout[...]
        return (
            jnp.concatenate([c @ x[: self.k], c @ x[self.k :]], axis=-1)
            if x.ndim == 1
            else (jnp.concatenate([x[..., : self.k] @ c.T, x[..., self.k :] @ c.T], axis=-1))
        )

    def rollout(self, y0, n_steps: int):
        xs = integrate(self.latent_field, self.encode(y0), n_steps, self.dt, substeps=self.substeps)
        return self.decode(xs)

    def loss(self, windows):
        if self.objective == "derivative" and self.readout is not None:
            raise ValueError(
                "objective='derivative' needs k == n (the latent state must be observed)"
            )
        return super().loss(windows)

    def recipe(self, n_train_steps: int, *, budget: int, **recipe_kwargs):
        """The ODE recipe; without its derivative stage when `k != n` (the latent state is
        not observed, so there is no derivative to regress on)."""
        from .recipes import ode_recipe

        return ode_recipe(
            n_train_steps, budget=budget, derivative=self.readout is None, **recipe_kwargs
        )

    # ------------------------------------------------------------ initialisation
    def prepare(self, dataset) -> None:
        super().prepare(dataset)
        train = np.asarray(dataset.train, dtype=float)
        if train.shape[-1] != self.state_dim:
            raise ValueError(
                f"dataset state_dim {train.shape[-1]} != model state_dim {self.state_dim}"
            )
        if self.readout is None:
            self._init_least_squares(train, float(dataset.dt))
        else:
            self._init_spectral(train, float(dataset.dt))

    def _init_least_squares(self, train, dt):
        n = self.n
        q, p = train[:, 1:-1, :n], train[:, 1:-1, n:]
        acc = (train[:, 2:, n:] - train[:, :-2, n:]) / (2 * dt)
        q, p, acc = (a.reshape(-1, n) for a in (q, p, acc))
        restoring = np.sin(q) if self.kind == "pendulum" else q
        omega2, gamma, kappa = np.ones(n), np.full(n, 1e-3), np.zeros((n, n))
        mus = []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            cols = [-restoring[:, i], -p[:, i]] + [-(q[:, i] - q[:, j]) for j in others]
            if self.kind == "vanderpol":
                cols.append((1 - q[:, i] ** 2) * p[:, i])
            coef, *_ = np.linalg.lstsq(np.stack(cols, 1), acc[:, i], rcond=None)
            omega2[i], gamma[i] = coef[0], coef[1]
            kappa[i, others] = coef[2 : 2 + len(others)]
            if self.kind == "vanderpol":
                mus.append(coef[-1])
        kappa = np.clip(0.5 * (kappa + kappa.T), 1e-7, None)
        self.log_omega.set_value(
            jnp.asarray(0.5 * np.log(np.clip(omega2, 1e-4, None)), self.log_omega[...].dtype)
        )
        self.raw_damping.set_value(
            jnp.asarray(_inv_softplus(np.clip(gamma, 1e-7, None)), self.raw_damping[...].dtype)
        )
        self.raw_coupling.set_value(jnp.asarray(_inv_softplus(kappa), self.raw_coupling[...].dtype))
        if self.kind == "vanderpol":
            self.raw_mu.set_value(
                jnp.asarray(_inv_softplus(max(np.mean(mus), 1e-3)), self.raw_mu[...].dtype)
            )

    def _init_spectral(self, train, dt):
        n, k = self.n, self.k
        q = train[..., :n] - train[..., :n].mean(axis=1, keepdims=True)
        flat = q.reshape(-1, n)
        _, _, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
        c = vt[:k].T if k <= vt.shape[0] else np.eye(n, k)
        t_len = train.shape[1]
        pad = 8 * t_len  # zero padding refines the frequency grid
        spec = (np.abs(np.fft.rfft(q * np.hanning(t_len)[None, :, None], n=pad, axis=1)) ** 2).sum(
            axis=(0, 2)
        )
        freqs = 2 * np.pi * np.fft.rfftfreq(pad, d=dt)
        spec[0] = 0
        peaks = [
            i for i in range(1, len(spec) - 1) if spec[i] >= spec[i - 1] and spec[i] >= spec[i + 1]
        ]
        peaks = sorted(peaks, key=lambda i: -spec[i])[:k]
        omegas = np.sort(freqs[peaks]) if peaks else np.ones(k)
        if len(omegas) < k:
            omegas = np.concatenate(
                [omegas, np.full(k - len(omegas), omegas.mean() if len(omegas) else 1.0)]
            )
        self.log_omega.set_value(jnp.asarray(np.log(omegas), self.log_omega[...].dtype))
        self.readout.set_value(jnp.asarray(c, self.readout[...].dtype))
