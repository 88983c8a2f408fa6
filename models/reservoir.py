"""Reservoir computing: next-generation reservoir computing (`NVAR`) and the echo-state network
(`ESN`), linear readouts of fixed features solved in closed form by ridge regression.

Both models predict the next state from a feature vector `phi_t` of what they have read:

`y_{t+1} = y_t + W^T phi_t + b`

(in the ESN, in normalised units `z = (y - m) / s`). Nothing is learned by gradient descent:
`W` and the intercept `b` minimise the ridge objective over every training step,

`sum_t |y_{t+1} - y_t - W^T phi_t - b|^2 + lambda |W|_F^2`,

whose solution is given by the normal equations
`(Phi_c^T Phi_c + lambda I) W = Phi_c^T Delta_c`, `b = mean(Delta) - W^T mean(phi)`, with
`Phi_c` and `Delta_c` the centred features and targets: the intercept is not penalised, as in
ridge regression with an intercept. The sums are not divided by the number of samples (the
convention of Gauthier et al. 2021 and of scikit-learn), so the NG-RC paper's `lambda` is used
as published.

**Feature standardisation** (`standardise=True`, the default): before the solve, each feature
is divided by its standard deviation over the training steps (floored), so that the penalty
weighs linear terms, quadratic monomials and reservoir units alike and one grid of `lambda`
serves every system. The statistics are stored on the model (`feat_mean`, `feat_scale`) and
applied in the forecast, so the model is the same map either way; only what the penalty
shrinks differs. With `standardise=False` the features are centred only (the NG-RC paper's
set-up).

The normal equations are solved through the singular value decomposition of `Phi_c`
(`W = V diag(sigma / (sigma^2 + lambda)) U^T Delta_c`): the same solution, without squaring the
condition number of `Phi_c` (delayed states sampled finely are nearly collinear), and one
decomposition serves a whole grid of `lambda` (`readout_path`). `models.recipes.RidgeRecipe`
chooses `lambda` on the validation rollout.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractModel
from ._common import Stats, check_state_dim, lift
from .recipes import DEFAULT_RIDGES


class Reservoir(nnx.Variable):
    """Non-trainable: the fixed random weights of a reservoir (drawn once from the key)."""


@jax.jit
def _ridge_path(
    phi: Float[Array, "M F"], delta: Float[Array, "M d"], ridges: Float[Array, " R"]
) -> tuple[Float[Array, "R F d"], Float[Array, "R d"]]:
    """Ridge solutions with an unpenalised intercept for every `lambda` in `ridges`, from one
    SVD of the centred features: `W = V diag(s / (s^2 + lambda)) U^T Delta_c`,
    `b = mean(Delta) - mean(phi) W`."""
    mu_phi, mu_delta = jnp.mean(phi, axis=0), jnp.mean(delta, axis=0)
    u, s, vt = jnp.linalg.svd(phi - mu_phi[None, :], full_matrices=False)
    proj = u.T @ (delta - mu_delta[None, :])  # (K, d)
    gain = s[None, :] / (s[None, :] ** 2 + ridges[:, None])  # (R, K)
    ws = jnp.einsum("kf,rk,kd->rfd", vt, gain, proj)
    bs = mu_delta[None, :] - jnp.einsum("f,rfd->rd", mu_phi, ws)
    return ws, bs


def _check_positive_int(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_real(name: str, value, *, lo: float, hi: float = math.inf, open_lo: bool = False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    ok = math.isfinite(v) and (v > lo if open_lo else v >= lo) and v <= hi
    if not ok:
        interval = f"{'(' if open_lo else '['}{lo}, {hi}]"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return v


class _ReadoutModel(AbstractModel):
    """A linear readout `W, b` of fixed features `phi_t`, predicting increments, fitted in
    closed form (see the module's docstring). Subclasses give `n_features`, `_pairs(trajs)`
    (the features and increments of every training step, in the readout's units) and
    `forecast`."""

    closed_form: ClassVar[bool] = True

    def __init__(
        self, state_dim: int, n_features: int, *, standardise: bool, ridges: tuple[float, ...]
    ):
        super().__init__(state_dim)
        ridges = tuple(float(r) for r in ridges)
        if not ridges or any(not (math.isfinite(r) and r >= 0) for r in ridges):
            raise ValueError(
                f"ridges must be a non-empty tuple of finite values >= 0, got {ridges}"
            )
        self.standardise = bool(standardise)
        self.ridges = ridges
        self.n_features = int(n_features)
        self.w_out = nnx.Param(jnp.zeros((n_features, state_dim)))
        self.b_out = nnx.Param(jnp.zeros(state_dim))
        self.feat_mean = Stats(jnp.zeros(n_features))
        self.feat_scale = Stats(jnp.ones(n_features))

    # ---------------------------------------------------------------- readout
    def _readout(self, phi: Float[Array, " F"]) -> Float[Array, " d"]:
        """`W^T phi_std + b`, the predicted increment, with `phi_std = (phi - mu) / sigma`."""
        z = (phi - self.feat_mean[...]) / self.feat_scale[...]
        return z @ self.w_out[...] + self.b_out[...]

    def _pairs(self, trajs: Float[Array, "N T d"]):
        raise NotImplementedError

    def _min_length(self) -> int:
        raise NotImplementedError

    def _check_trajectories(self, trajectories) -> Array:
        x = jnp.asarray(trajectories)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[-1] != self.state_dim:
            raise ValueError(
                f"trajectories must have shape (N, T, {self.state_dim}) or (T, {self.state_dim}), "
                f"got {tuple(jnp.shape(trajectories))}"
            )
        if x.shape[0] < 1 or x.shape[1] < self._min_length():
            raise ValueError(
                f"{type(self).__name__} needs trajectories of at least {self._min_length()} "
                f"states, got {x.shape[1]}"
            )
        if not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError("trajectories contain NaN or inf")
        return x

    def readout_path(
        self, trajectories: Float[ArrayLike, "*N T d"], ridges: tuple[float, ...] | None = None
    ) -> tuple[Float[Array, "R F d"], Float[Array, "R d"]]:
        """The ridge readouts `(W, b)` for every `lambda` in `ridges` (default: the model's
        grid) on the training steps of `trajectories` `(N, T, d)` (or one `(T, d)`). Sets the
        feature statistics on the model (the readout itself is set by `set_readout`)."""
        x = self._check_trajectories(trajectories)
        ridges = self.ridges if ridges is None else tuple(ridges)
        if not ridges or any(not (math.isfinite(r) and r >= 0) for r in ridges):
            raise ValueError(f"ridges must be finite values >= 0, got {ridges}")
        phi, delta = self._pairs(x)
        mu = jnp.mean(phi, axis=0)
        if self.standardise:
            sd = jnp.std(phi, axis=0)
            sd = jnp.where(sd > 1e-12 * jnp.maximum(1.0, jnp.max(sd)), sd, 1.0)
        else:
            sd = jnp.ones_like(mu)
        self.feat_mean.set_value(mu.astype(self.feat_mean[...].dtype))
        self.feat_scale.set_value(sd.astype(self.feat_scale[...].dtype))
        return _ridge_path((phi - mu[None, :]) / sd[None, :], delta, jnp.asarray(ridges, phi.dtype))

    def set_readout(self, w: Float[ArrayLike, "F d"], b: Float[ArrayLike, " d"]) -> None:
        w, b = jnp.asarray(w), jnp.asarray(b)
        if w.shape != (self.n_features, self.state_dim) or b.shape != (self.state_dim,):
            raise ValueError(
                f"readout must have shapes ({self.n_features}, {self.state_dim}) and "
                f"({self.state_dim},), got {tuple(w.shape)} and {tuple(b.shape)}"
            )
        self.w_out.set_value(w.astype(self.w_out[...].dtype))
        self.b_out.set_value(b.astype(self.b_out[...].dtype))

    def fit_readout(
        self, trajectories: Float[ArrayLike, "*N T d"], *, ridge: float, dt: float | None = None
    ) -> None:
        """Solves the readout at one ridge strength on `trajectories` and sets it (and `dt`,
        when given); the study's route is `recipe(...).fit(model, dataset)`."""
        ridge = _check_real("ridge", ridge, lo=0.0)
        if dt is not None:
            self.dt = _check_real("dt", dt, lo=0.0, open_lo=True)
        ws, bs = self.readout_path(trajectories, (ridge,))
        self.set_readout(ws[0], bs[0])

    # ------------------------------------------------------------ training
    def recipe(self, n_train_steps: int, *, budget: int, **recipe_kwargs):
        """`models.recipes.RidgeRecipe`: the readout in closed form, `lambda` chosen from the
        model's grid on the validation rollout (`budget` and the optimiser settings unused)."""
        from .recipes import RidgeRecipe

        del budget
        return RidgeRecipe(ridges=self.ridges, **recipe_kwargs)

    def loss(self, windows: Float[Array, "B W d"]) -> Float[Array, ""]:
        """The one-step objective the readout minimises (without the penalty), in the readout's
        units, for diagnostics: `mean |Delta_t - W^T phi_t - b|^2` over the windows' steps."""
        phi, delta = self._pairs(windows)
        pred = jax.vmap(self._readout)(phi)
        return jnp.mean((pred - delta) ** 2)


def _monomials(n: int, order: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """For each degree `2..order`, the index tuples `i_1 <= ... <= i_p` of the unique
    monomials `x_{i_1} ... x_{i_p}` of `n` variables (plain tuples: static, hashable
    attributes of the module)."""
    return tuple(
        tuple(itertools.combinations_with_replacement(range(n), p)) for p in range(2, order + 1)
    )


class NVAR(_ReadoutModel):
    r"""Next-generation reservoir computing (Gauthier et al. 2021, Nat. Commun. 12:5564): a
    nonlinear vector autoregression.

    With `k` delays of stride `s`, the linear part at time `t` is
    `lin_t = (y_t, y_{t-s}, ..., y_{t-(k-1)s})` (`k d` numbers) and the feature vector is
    `phi_t = [1, lin_t, (unique monomials of lin_t of degrees 2..order)]`; `order=2` gives the
    paper's quadratic features, `k d (k d + 1) / 2` of them. The readout predicts the increment,
    `y_{t+1} = y_t + W^T phi_t + b` (the weight of the constant being the intercept `b`), and
    is trained by ridge regression on `y_{t+1} - y_t` (see `models.reservoir`). The forecast
    needs a context of at least `(k - 1) s + 1` states and feeds its predictions back.

    `rngs` is accepted for the common constructor and unused (nothing is random).
    """

    def __init__(
        self,
        state_dim: int,
        *,
        k: int = 2,
        s: int = 1,
        order: int = 2,
        standardise: bool = True,
        ridges: tuple[float, ...] = DEFAULT_RIDGES,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        state_dim = check_state_dim(state_dim)
        self.k = _check_positive_int("k", k)
        self.s = _check_positive_int("s", s)
        self.order = _check_positive_int("order", order)
        n_lin = self.k * state_dim
        self._mono = _monomials(n_lin, self.order)
        n_features = n_lin + sum(len(m) for m in self._mono)
        super().__init__(state_dim, n_features, standardise=standardise, ridges=ridges)
        self.min_context = (self.k - 1) * self.s + 1

    def _min_length(self) -> int:
        return self.min_context + 1

    def features(self, window: Float[Array, "L d"]) -> Float[Array, " F"]:
        """`phi_t` without the constant, from the last `(k-1)s+1` states `window` (oldest
        first; `window[-1] = y_t`): `[lin_t, monomials of lin_t]`."""
        lin = window[::-1][:: self.s][: self.k].reshape(-1)
        return jnp.concatenate([lin, *(jnp.prod(lin[np.asarray(m)], axis=-1) for m in self._mono)])

    def _pairs(self, trajs):
        length = self.min_context
        n, t, d = trajs.shape
        # windows ending at y_t for t = L-1 .. T-2, each with its target y_{t+1} - y_t
        idx = np.arange(length - 1, t - 1)[:, None] + np.arange(-(length - 1), 1)[None, :]
        windows = trajs[:, idx]  # (N, M, L, d)
        phi = jax.vmap(self.features)(windows.reshape(-1, length, d))
        delta = (trajs[:, length:] - trajs[:, length - 1 : -1]).reshape(-1, d)
        return phi, delta

    def forecast(self, context: Float[ArrayLike, "C d"], n_steps: int) -> Float[Array, "n_steps d"]:
        """From the last `(k-1)s+1` context states, `y_{t+1} = y_t + W^T phi_t + b`, each
        prediction fed back, for `n_steps` steps."""
        context = self._check_forecast(context, n_steps)
        buf0 = context[-self.min_context :]
        buf0 = buf0.astype(jnp.result_type(buf0.dtype, self.w_out[...].dtype))

        def step(buf, _):
            y = buf[-1] + self._readout(self.features(buf))
            return jnp.concatenate([buf[1:], y[None]]), y

        return jax.lax.scan(step, buf0, None, length=int(n_steps))[1]


class ESN(_ReadoutModel):
    r"""An echo-state network (Jaeger 2001) with a leaky reservoir and a ridge readout.

    In normalised units `z = (y - m) / s` (the training statistics), `N = units` reservoir
    states evolve as

    `r_{t+1} = (1 - a) r_t + a tanh(W r_t + W_in z_t + b_r)`, `r_0 = 0`,

    with the leak rate `a`, a fixed random `W` (`N x N`, each entry nonzero with probability
    `density`, standard normal, rescaled to the spectral radius `spectral_radius`), `W_in`
    (`N x d`, uniform in `[-input_scaling, input_scaling]`) and `b_r` (uniform in
    `[-bias_scaling, bias_scaling]`), all drawn once from `rngs.params()`. The readout
    predicts the increment from `phi_t = [1, r_{t+1}, z_t]`:
    `z_{t+1} = z_t + W_out^T phi_t + b`, trained by ridge regression (see
    `models.reservoir`) on every training step after the first `washout` (the reservoir's
    transient from `r_0 = 0`). The forecast reads the context (its own washout), then runs
    autonomously, feeding each prediction back as the next input.
    """

    def __init__(
        self,
        state_dim: int,
        *,
        units: int = 200,
        spectral_radius: float = 0.9,
        input_scaling: float = 0.5,
        bias_scaling: float = 0.2,
        leak: float = 0.5,
        density: float = 0.1,
        washout: int = 10,
        standardise: bool = True,
        ridges: tuple[float, ...] = DEFAULT_RIDGES,
        rngs: nnx.Rngs,
    ):
        state_dim = check_state_dim(state_dim)
        self.units = _check_positive_int("units", units)
        self.spectral_radius = _check_real("spectral_radius", spectral_radius, lo=0.0)
        self.input_scaling = _check_real("input_scaling", input_scaling, lo=0.0, open_lo=True)
        self.bias_scaling = _check_real("bias_scaling", bias_scaling, lo=0.0)
        self.leak = _check_real("leak", leak, lo=0.0, hi=1.0, open_lo=True)
        self.density = _check_real("density", density, lo=0.0, hi=1.0, open_lo=True)
        self.washout = _check_positive_int("washout", washout, lo=0)
        super().__init__(state_dim, self.units + state_dim, standardise=standardise, ridges=ridges)
        k_w, k_mask, k_in, k_b = jax.random.split(rngs.params(), 4)
        n = self.units
        w = jax.random.normal(k_w, (n, n)) * jax.random.bernoulli(k_mask, self.density, (n, n))
        # the spectral radius on the host (a nonsymmetric eigensolver is CPU-only in some
        # JAX versions); construction is eager, outside any transformation
        radius = float(np.max(np.abs(np.linalg.eigvals(np.asarray(w, dtype=np.float64)))))
        scale = self.spectral_radius / radius if radius > 0 else 0.0
        self.w_res = Reservoir(w * scale)
        self.w_in = Reservoir(
            jax.random.uniform(k_in, (state_dim, n), minval=-1.0, maxval=1.0) * self.input_scaling
        )
        self.b_res = Reservoir(
            jax.random.uniform(k_b, (n,), minval=-1.0, maxval=1.0) * self.bias_scaling
        )

    def _min_length(self) -> int:
        return self.washout + 2

    def normalise(self, y: Float[Array, "*B d"]) -> Float[Array, "*B d"]:
        return (y - lift(self.mean[...], y.ndim)) / lift(self.std[...], y.ndim)

    def denormalise(self, z: Float[Array, "*B d"]) -> Float[Array, "*B d"]:
        return z * lift(self.std[...], z.ndim) + lift(self.mean[...], z.ndim)

    def step(self, r: Float[Array, " N"], z: Float[Array, " d"]) -> Float[Array, " N"]:
        """`r_{t+1} = (1 - a) r_t + a tanh(W r_t + W_in z_t + b_r)` (one normalised input)."""
        pre = self.w_res[...] @ r + z @ self.w_in[...] + self.b_res[...]
        return (1.0 - self.leak) * r + self.leak * jnp.tanh(pre)

    def drive(self, zs: Float[Array, "T d"]) -> Float[Array, "T N"]:
        """The reservoir states `r_1, ..., r_T` while reading `z_0, ..., z_{T-1}` from `r_0 = 0`."""
        r0 = jnp.zeros(self.units, jnp.result_type(zs.dtype, self.w_res[...].dtype))

        def body(r, z):
            r = self.step(r, z)
            return r, r

        return jax.lax.scan(body, r0, zs)[1]

    def _pairs(self, trajs):
        zs = self.normalise(trajs)
        rs = jax.vmap(self.drive)(zs[:, :-1])  # r_{t+1} after reading z_t, t = 0 .. T-2
        phi = jnp.concatenate([rs, zs[:, :-1]], axis=-1)[:, self.washout :]
        delta = (zs[:, 1:] - zs[:, :-1])[:, self.washout :]
        return phi.reshape(-1, self.n_features), delta.reshape(-1, self.state_dim)

    def forecast(self, context: Float[ArrayLike, "C d"], n_steps: int) -> Float[Array, "n_steps d"]:
        """Reads the context (washout from `r_0 = 0`), then `z_{t+1} = z_t + W_out^T
        [1, r_{t+1}, z_t] + b` with `r_{t+1}` driven by the previous prediction, for
        `n_steps` steps."""
        context = self._check_forecast(context, n_steps)
        zs = self.normalise(context)
        r = self.drive(zs)[-1]  # r_C, after reading z_{C-1}
        z = zs[-1]

        def body(carry, _):
            r, z = carry
            z_next = z + self._readout(jnp.concatenate([r, z]))
            return (self.step(r, z_next), z_next), z_next

        zs_out = jax.lax.scan(body, (r, z), None, length=int(n_steps))[1]
        return self.denormalise(zs_out)
