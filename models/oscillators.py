"""The structured white-box model: `k` coupled oscillators with readable parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

import dynamics

from ._base import ODEModel
from ._common import check_state_dim, integrate

_KINDS = ("pendulum", "harmonic", "vanderpol", "huygens")
_INITS = ("lstsq", "agnostic")
#: the order of `dynamics.HuygensClocks`'s fields, in which its pytree is rebuilt
_HUYGENS_FIELDS = ("omega", "gamma", "mu", "theta0", "beam_omega", "beam_gamma", "mass_ratio")


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

    `kind="huygens"`: `k` pendulum clocks with a Van der Pol escapement on one
    beam that slides on a spring, the equations of `dynamics.HuygensClocks`
    (state `(theta_1..theta_k, x, theta_1'..theta_k', x')`, so
    `state_dim = 2k + 2`):

    `theta_i'' + cos(theta_i) x'' = -omega_i^2 sin(theta_i) - gamma theta_i'
    + mu (1 - theta_i^2/theta0^2) theta_i'`,

    `x'' + m sum_i cos(theta_i) theta_i'' = m sum_i theta_i'^2 sin(theta_i)
    - beam_omega^2 x - beam_gamma x'`,

    whose accelerations the system's own `vector_field` gives in closed form
    (the model rebuilds a `HuygensClocks` from its parameters as a pytree, so
    the equations are the system's, not a copy). Learned: `omega = exp(a)`
    (per clock), `gamma, mu, beam_gamma = softplus(.) >= 0`, `theta0,
    beam_omega = exp(.) > 0` and `m = sigmoid(.) / k`, so `m k < 1`. Only
    `k == n` is accepted (the beam couples the observed clocks through
    `cos(theta_i)`, which a linear readout of latent clocks would not
    preserve): `k != n` raises `ValueError`. The escapement enters the field
    only through `mu - gamma` and `mu / theta0^2`, so those two combinations
    are identified, not `gamma`, `mu` and `theta0` separately.

    **Initialisation** (`init`, applied by `prepare(dataset)`):

    - `"lstsq"` (the default; system identification from the data): for
      `k == n`, a linear least-squares fit of the accelerations (central
      differences of `p`) on the model's own features (for `"huygens"`, of both
      equations of motion: `omega_i^2`, `mu - gamma`, `mu / theta0^2`, `m`,
      `beam_omega^2`, `beam_gamma`, with `gamma` set to `1e-3`); for `k != n`,
      the `k` strongest peaks of the training data's power spectrum and a PCA
      map `C`.
    - `"agnostic"`: nothing is read from the data but its normalisation
      statistics and `dt`: unit frequencies `omega = 1`, damping `1e-3`,
      uniform coupling `kappa = 0.05`, Van der Pol `mu = 0.5` (Huygens:
      `mu = 0.5`, `theta0 = 1`, `beam_omega = 1`, `beam_gamma = 0.1`,
      `m = 0.25 / k`), and for `k != n` the random readout drawn at
      construction (`N(0, 1/k)` entries).

    Fitting frequencies by gradient descent through trajectories has many
    local minima; from the agnostic start, train first on the derivative
    objective (`objective="derivative"`, a regression of the field on finite
    differences), then refine by trajectory matching over short windows
    (multiple shooting). Read the result with `frequencies()`, `damping()` and
    `coupling()` (and, for `"huygens"`, `learned_system()`).
    """

    needs_canonical = True

    def __init__(
        self,
        state_dim: int,
        *,
        k: int,
        kind: str = "pendulum",
        init: str = "lstsq",
        window: int = 10,
        objective: str = "trajectory",
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="OscillatorModel")
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        super().__init__(state_dim, window=window, objective=objective)
        huygens = kind == "huygens"
        self.n = (state_dim - 2) // 2 if huygens else state_dim // 2
        self.k, self.kind, self.init = int(k), kind, init
        if huygens and (self.n < 1 or self.k != self.n):
            raise ValueError(
                "OscillatorModel(kind='huygens') needs k == n clocks and state_dim = 2k + 2 "
                f"(k clocks and the beam), got k={k!r}, state_dim={state_dim}"
            )
        key = rngs.params()
        self.log_omega = nnx.Param(jnp.zeros(k))
        damping_shape = () if huygens else (k,)
        self.raw_damping = nnx.Param(jnp.full(damping_shape, float(_inv_softplus(1e-3))))
        self.raw_coupling = (
            None if huygens else nnx.Param(jnp.full((k, k), float(_inv_softplus(0.05))))
        )
        self.raw_mu = (
            nnx.Param(jnp.asarray(float(_inv_softplus(0.5))))
            if kind in ("vanderpol", "huygens")
            else None
        )
        if huygens:
            self.log_theta0 = nnx.Param(jnp.asarray(0.0))
            self.log_beam_omega = nnx.Param(jnp.asarray(0.0))
            self.raw_beam_gamma = nnx.Param(jnp.asarray(float(_inv_softplus(0.1))))
            self.raw_mass_ratio = nnx.Param(jnp.asarray(float(np.log(0.25 / 0.75))))
            self._huygens_def = jax.tree_util.tree_structure(dynamics.HuygensClocks(np.ones(k)))
        if huygens or k == self.n:
            self.readout = None
        else:
            self.readout = nnx.Param(jax.random.normal(key, (self.n, k)) / np.sqrt(k))

    # ------------------------------------------------------------ parameters
    def frequencies(self):
        """The learned `omega`, shape `(k,)`."""
        return jnp.exp(self.log_omega[...])

    def damping(self):
        """The learned `gamma`, shape `(k,)` (for `"huygens"` one shared value, broadcast)."""
        gamma = jax.nn.softplus(self.raw_damping[...])
        return jnp.broadcast_to(gamma, (self.k,))

    def coupling(self):
        """The learned `kappa`: symmetric, non-negative, zero diagonal, shape `(k, k)`; for
        `"huygens"` the beam couples every pair alike: `m (1 - I)` with `m` the mass ratio."""
        if self.kind == "huygens":
            m = self.learned_system().mass_ratio
            return m * (1 - jnp.eye(self.k, dtype=m.dtype))
        c = jax.nn.softplus(self.raw_coupling[...])
        c = 0.5 * (c + c.T)
        return c * (1 - jnp.eye(self.k, dtype=c.dtype))

    def mu(self):
        return jax.nn.softplus(self.raw_mu[...]) if self.raw_mu is not None else None

    def learned_system(self) -> dynamics.HuygensClocks:
        """`kind="huygens"` only: the learned clocks as a `dynamics.HuygensClocks`, rebuilt as a
        pytree (no constructor, so nothing is validated under tracing; the parametrisation keeps
        every value physical)."""
        if self.kind != "huygens":
            raise ValueError(f"learned_system() is for kind='huygens', not {self.kind!r}")
        values = (
            self.frequencies(),
            jax.nn.softplus(self.raw_damping[...]),
            self.mu(),
            jnp.exp(self.log_theta0[...]),
            jnp.exp(self.log_beam_omega[...]),
            jax.nn.softplus(self.raw_beam_gamma[...]),
            jax.nn.sigmoid(self.raw_mass_ratio[...]) / self.k,
        )
        return jax.tree_util.tree_unflatten(self._huygens_def, values)

    # ------------------------------------------------------------ dynamics
    def latent_field(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        if self.kind == "huygens":
            return self.learned_system().vector_field(0.0, x)
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

    def to_model(self, y):
        """The latent state of an observed one (`encode`): the coordinates of `field`."""
        return self.encode(y)

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
        if self.init == "agnostic":
            return  # the start set at construction; only dt and the statistics from the data
        if self.kind == "huygens":
            self._init_least_squares_huygens(train, float(dataset.dt))
        elif self.readout is None:
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

    def _init_least_squares_huygens(self, train, dt):
        """Both equations of motion are linear in `omega_i^2`, `a = mu - gamma`,
        `b = mu / theta0^2` (the clocks, given the observed `x''`) and in `m`,
        `beam_omega^2`, `beam_gamma` (the beam, given the observed `theta''`)."""
        n = self.n
        y = train[:, 1:-1].reshape(-1, 2 * n + 2)
        acc = ((train[:, 2:, n + 1 :] - train[:, :-2, n + 1 :]) / (2 * dt)).reshape(-1, n + 1)
        th, x, w, u = y[:, :n], y[:, n], y[:, n + 1 : 2 * n + 1], y[:, 2 * n + 1]
        th_acc, x_acc = acc[:, :n], acc[:, n]
        c, s = np.cos(th), np.sin(th)
        # clocks: theta_i'' + c_i x'' = -omega_i^2 s_i + a w_i - b theta_i^2 w_i
        rows = []
        for i in range(n):
            onehot = np.zeros((len(y), n))
            onehot[:, i] = -s[:, i]
            rows.append(
                np.concatenate(
                    [onehot, w[:, i : i + 1], -(th[:, i : i + 1] ** 2) * w[:, i : i + 1]], 1
                )
            )
        target = (th_acc + c * x_acc[:, None]).T.reshape(-1)
        coef, *_ = np.linalg.lstsq(np.concatenate(rows, 0), target, rcond=None)
        omega2, a, b = coef[:n], coef[n], coef[n + 1]
        # beam: x'' = m (sum w^2 s - sum c theta'') - beam_omega^2 x - beam_gamma x'
        cols = np.stack([(w**2 * s).sum(1) - (c * th_acc).sum(1), -x, -u], 1)
        (m, bw2, bg), *_ = np.linalg.lstsq(cols, x_acc, rcond=None)
        gamma = 1e-3  # the gauge: only mu - gamma is identified
        mu = max(a + gamma, 1e-3)
        theta0 = np.sqrt(mu / b) if b > 0 else 1.0
        m = float(np.clip(m, 1e-6, 0.99 / n)) * n
        dtype = self.log_omega[...].dtype
        self.log_omega.set_value(jnp.asarray(0.5 * np.log(np.clip(omega2, 1e-4, None)), dtype))
        self.raw_damping.set_value(jnp.asarray(_inv_softplus(gamma), dtype))
        self.raw_mu.set_value(jnp.asarray(_inv_softplus(mu), dtype))
        self.log_theta0.set_value(jnp.asarray(np.log(theta0), dtype))
        self.log_beam_omega.set_value(jnp.asarray(0.5 * np.log(max(bw2, 1e-4)), dtype))
        self.raw_beam_gamma.set_value(jnp.asarray(_inv_softplus(max(bg, 1e-7)), dtype))
        self.raw_mass_ratio.set_value(jnp.asarray(np.log(m) - np.log1p(-m), dtype))

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
