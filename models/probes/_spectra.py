r"""Linear spectra: dynamic mode decomposition of trajectories, and the spectrum of a model's
linearisation at a rest state, against the system's normal modes.

Every spectrum is a `Spectrum`: eigenvalues with their angular frequencies and decay rates,
either of a map that advances time by `dt` (discrete, `lambda = exp((sigma +- i omega) dt)`)
or of a vector field's Jacobian (continuous, `mu = sigma +- i omega`, `dt = None`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._base import ODEModel
from ._fixed_points import (
    ModeComparison,
    check_dt,
    check_true_freqs,
    compare_to_normal_modes,
    eigen_frequencies,
    match_frequencies,
)


@dataclasses.dataclass(frozen=True)
class Spectrum:
    r"""Eigenvalues of a linear(ised) dynamics, `r` of them, sorted by decreasing frequency.

    - `eigenvalues` `(r,)` complex: of the one-step map (`dt` set) or of the Jacobian of the
      vector field (`dt = None`);
    - `frequencies` `(r,)`: angular, `|angle(lambda)| / dt` (discrete; in `[0, pi / dt]`) or
      `|Im(mu)|` (continuous);
    - `decay_rates` `(r,)`: `log|lambda| / dt` or `Re(mu)` (`> 0` grows);
    - `dt`: the step of the map, or None for a continuous-time spectrum;
    - `modes` `(d, r)` complex or None: the exact DMD modes `Phi` (`dmd`), one per column.
    """

    eigenvalues: np.ndarray
    frequencies: np.ndarray
    decay_rates: np.ndarray
    dt: float | None
    modes: np.ndarray | None = None

    @property
    def oscillatory(self) -> np.ndarray:
        """The frequencies of the rotating directions, one per conjugate pair (`Im > 0`)."""
        return self.frequencies[_positive_imag(self.eigenvalues)]


def _positive_imag(lam: np.ndarray) -> np.ndarray:
    return lam.imag > 1e-12 * np.maximum(np.abs(lam), 1.0)


def _spectrum(lam, dt, modes=None) -> Spectrum:
    lam = np.asarray(lam, np.complex128)
    if dt is None:
        freqs, decay = np.abs(lam.imag), lam.real.copy()
    else:
        freqs, decay = eigen_frequencies(lam, dt)
    order = np.lexsort((-lam.imag, -freqs))  # decreasing frequency, +i before -i
    return Spectrum(
        eigenvalues=lam[order],
        frequencies=freqs[order],
        decay_rates=decay[order],
        dt=dt,
        modes=None if modes is None else np.asarray(modes)[:, order],
    )


def _as_trajectories(name: str, x) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from e
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (N, T, d) or (T, d), got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 2 or a.shape[2] < 1:
        raise ValueError(f"{name} needs N >= 1 trajectories of T >= 2 states, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def dmd(
    trajectories: Float[ArrayLike, "*batch T d"],
    *,
    dt: float,
    rank: int | None = None,
) -> Spectrum:
    r"""Exact dynamic mode decomposition (Schmid 2010; Tu et al. 2014) of snapshot pairs.

    The pairs `(x_t, x_{t+1})` of every trajectory (`(N, T, d)`, or one `(T, d)`) are pooled
    into `X = [x_0 ... ]`, `Y = [x_1 ... ]` (`d x M`, `M = N (T - 1)`); DMD is the
    least-squares linear map `A = Y X^+` with `x_{t+1} ~ A x_t`, computed in the span of `X`'s
    leading `r` left singular vectors: with the thin SVD `X = U S V^*` truncated to rank `r`,
    `Atilde = U_r^* Y V_r S_r^{-1}` (`r x r`), its eigenvalues `lambda` (those of `A` on that
    subspace) and the exact modes `Phi = Y V_r S_r^{-1} W` (`Atilde W = W Lambda`). For data
    from `x' = J x`, `lambda = exp(mu dt)` with `mu` the eigenvalues of `J` on the excited
    subspace, so `frequencies = |angle(lambda)| / dt` and `decay_rates = log|lambda| / dt`
    (`eigen_frequencies`) recover `Im mu` and `Re mu` up to aliasing above `pi / dt`. No
    centring: subtract the rest state first for dynamics about a non-zero equilibrium.

    `rank`: `1 <= r <= min(d, M)`; None takes the numerical rank of `X` (singular values above
    `max(d, M) eps s_1`). A requested rank above the numerical rank (a singular `X`, e.g.
    trajectories that excite fewer directions than `r`) raises `ValueError`.

    Returns a discrete-time `Spectrum` (`dt` set) with `modes` `(d, r)`.
    """
    dt = check_dt(dt)
    x = _as_trajectories("trajectories", trajectories)
    d = x.shape[2]
    X = x[:, :-1].reshape(-1, d).T
    Y = x[:, 1:].reshape(-1, d).T
    m = X.shape[1]
    u, s, vh = np.linalg.svd(X, full_matrices=False)
    numerical = int(np.sum(s > max(d, m) * np.finfo(np.float64).eps * (s[0] if s.size else 0)))
    if rank is None:
        rank = numerical
        if rank == 0:
            raise ValueError("the snapshots are all zero: DMD is undefined")
    elif isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank must be a positive integer or None, got {rank!r}")
    elif not 1 <= rank <= min(d, m):
        raise ValueError(f"rank must be in [1, min(d, M)] = [1, {min(d, m)}], got {rank}")
    elif rank > numerical:
        raise ValueError(
            f"the snapshot matrix has numerical rank {numerical} < rank {rank}: the "
            "trajectories do not excite enough directions for a DMD of that rank"
        )
    r = int(rank)
    ur, sr, vr = u[:, :r], s[:r], vh[:r].conj().T
    yv = Y @ (vr / sr[None, :])
    atilde = ur.conj().T @ yv
    lam, w = np.linalg.eig(atilde)
    return _spectrum(lam, dt, yv @ w)


def forecast_spectrum(
    model,
    contexts: Float[ArrayLike, "N C d"],
    *,
    n_steps: int,
    rest_state: Float[ArrayLike, " d"] | None = None,
    rank: int | None = None,
) -> Spectrum:
    r"""A model-agnostic local spectrum: `dmd` of the model's own forecasts.

    For each context `c_i` (`(N, C, d)`, the caller's: for a spectrum *at* a rest state `y*`,
    small-amplitude states about it, e.g. true trajectories from scaled-down initial states),
    the trajectory `(c_i[-1], yhat_1, ..., yhat_{n_steps})` of the forecast
    `model.forecast(c_i, n_steps)` (batched with `jax.vmap`, jitted), minus `rest_state`
    (default 0), goes to `dmd(..., dt=model.dt, rank=rank)`. For a model that is a flow map
    `F` of the observed state (an ODE model), small amplitudes give the eigenvalues of
    `DF(y*) = exp(J dt)`, so this agrees with `linearisation_spectrum`'s Jacobian; for a model
    with a hidden state (LSTM, GRU, reservoir, Transformer) it is the best linear model of
    its forecasts in the observed coordinates: the frequencies the forecasts oscillate at,
    which a `rank = d` fit of `d` observed coordinates can hold at most `d / 2` pairs of.
    Needs `model.dt` (set by `fit`). Raises `ValueError` for bad shapes, a diverging
    (non-finite) forecast, or a singular DMD.
    """
    if np.ndim(contexts) != 3:
        raise ValueError(f"contexts must have shape (N, C, d), got shape {np.shape(contexts)}")
    ctx = _as_trajectories("contexts", contexts)
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    d = ctx.shape[2]
    y0 = np.zeros(d) if rest_state is None else _rest(rest_state, d)
    dt = getattr(model, "dt", None)
    if dt is None:
        raise ValueError("model.dt is unset: fit the model (or set model.dt) first")
    dtype = _model_dtype(model)
    n = int(n_steps)
    run = jax.jit(jax.vmap(lambda c: model.forecast(c, n)))
    fc = np.asarray(run(jnp.asarray(ctx, dtype)), np.float64)
    if not np.all(np.isfinite(fc)):
        raise ValueError("the forecast from the contexts is not finite (it diverged)")
    states = np.concatenate([ctx[:, -1:], fc], axis=1) - y0
    return dmd(states, dt=dt, rank=rank)


def linearisation_spectrum(
    model,
    rest_state: Float[ArrayLike, " d"],
    *,
    contexts: Float[ArrayLike, "N C d"] | None = None,
    n_steps: int | None = None,
    rank: int | None = None,
) -> Spectrum:
    r"""The spectrum of a model's dynamics linearised at the observed rest state `y*`.

    - A `models.ODEModel` (anything with a vector field `y' = field(y)`): the eigenvalues `mu`
      of the Jacobian `D field(z*)` (`jax.jacfwd`) at `z* = model.to_model(y*)`, the rest
      state in the coordinates the field works in (canonical for the HNNs, latent for an
      `OscillatorModel` with `k != n`; the eigenvalues at an equilibrium do not depend on a
      smooth change of coordinates). A continuous-time `Spectrum` (`dt = None`):
      `frequencies = |Im mu|`, `decay_rates = Re mu`. `contexts`, `n_steps`, `rank` are not
      used. If `y*` is not an equilibrium of the learned field, this is the spectrum of the
      field's linear part there, not of a fixed point.
    - Any other model (only `forecast`): `forecast_spectrum(model, contexts, n_steps=n_steps,
      rest_state=y*, rank=rank)`, for which `contexts` and `n_steps` are required.

    Raises `ValueError` for a wrong shape, a non-finite rest state or Jacobian, or missing
    contexts.
    """
    if not isinstance(model, ODEModel):
        if contexts is None or n_steps is None:
            raise ValueError(
                f"{type(model).__name__} has no vector field: its local spectrum is the DMD of its "
                "forecasts, which needs `contexts` (N, C, d) and `n_steps`"
            )
        return forecast_spectrum(model, contexts, n_steps=n_steps, rest_state=rest_state, rank=rank)
    y0 = _rest(rest_state, int(model.state_dim))
    dtype = _model_dtype(model)
    z0 = model.to_model(jnp.asarray(y0, dtype))
    jac = np.asarray(jax.jit(jax.jacfwd(model.field))(z0), np.float64)
    if not np.all(np.isfinite(jac)):
        raise ValueError("the Jacobian of the model's field at the rest state is not finite")
    return _spectrum(np.linalg.eigvals(jac), None)


def match_normal_modes(
    spectrum: Spectrum,
    true_freqs: Float[ArrayLike, " n"],
    *,
    min_decay_rate: float | None = None,
) -> ModeComparison:
    r"""Each true normal-mode angular frequency `omega_k` matched to the nearest oscillatory
    frequency of `spectrum` (`compare_to_normal_modes`'s rule: candidates are the eigenvalues
    with `Im > 0`, one of each conjugate pair; a candidate may serve several modes;
    `relative_error = |omega - omega_k| / omega_k`), in the spectrum's own time convention.
    `min_decay_rate`: ignore directions that decay faster (`decay_rate < min_decay_rate`;
    for a discrete spectrum this is `min_modulus = exp(min_decay_rate dt)`)."""
    if not isinstance(spectrum, Spectrum):
        raise ValueError(f"spectrum must be a Spectrum, got {type(spectrum).__name__}")
    lo = -np.inf if min_decay_rate is None else float(min_decay_rate)
    if np.isnan(lo):
        raise ValueError("min_decay_rate must be a number or None, got NaN")
    if spectrum.dt is not None:
        return compare_to_normal_modes(
            spectrum.eigenvalues,
            true_freqs,
            spectrum.dt,
            min_modulus=float(np.exp(lo * spectrum.dt)),
        )
    w = check_true_freqs(true_freqs)
    lam = np.asarray(spectrum.eigenvalues, np.complex128)
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues contain NaN or infinite values")
    keep = _positive_imag(lam) & (lam.real >= lo)
    return match_frequencies(lam[keep], lam.imag[keep], lam.real[keep], w)


def _rest(rest_state, d: int) -> np.ndarray:
    try:
        y = np.asarray(rest_state, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"rest_state must be a numeric vector, got {type(rest_state).__name__}"
        ) from e
    if y.shape != (d,):
        raise ValueError(f"rest_state must have shape ({d},), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("rest_state contains NaN or infinite values")
    return y


def _model_dtype(model):
    """The dtype of the model's first floating-point variable (the dtype it computes in)."""
    from flax import nnx

    for leaf in jax.tree.leaves(nnx.state(model)):
        a = jnp.asarray(leaf)
        if jnp.issubdtype(a.dtype, jnp.floating):
            return a.dtype
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


__all__ = [
    "Spectrum",
    "dmd",
    "forecast_spectrum",
    "linearisation_spectrum",
    "match_normal_modes",
]
