"""Fixed points of the free-running LSTM and the spectra of its linearisation, against the
system's normal modes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Inexact, PRNGKeyArray

from .._checks import check_int
from ._misc import as_matrix, numpy_rng


class AutonomousMap(NamedTuple):
    r"""The free-running LSTM as a map `x -> F(x)` on one flat vector (`lstm_autonomous_map`).

    `x = concat(z, h_1, c_1, ..., h_L, c_L)` of size `dim = d + 2 L H`, with
    `z` the normalised input. `step(x)` and `jacobian(x)` are jitted;
    `pack(z, state)` and `unpack(x)` convert from and to `(z, [(h, c), ...])`.
    """

    step: Callable[[Array], Array]
    jacobian: Callable[[Array], Array]
    pack: Callable[..., Array]
    unpack: Callable[[Array], tuple]
    dim: int


def _check_lstm(lstm) -> None:
    for attr in (
        "cell",
        "normalise",
        "denormalise",
        "run",
        "init_state",
        "state_dim",
        "hidden",
        "layers",
    ):
        if not hasattr(lstm, attr):
            raise ValueError(
                f"lstm must be a models.LSTM (missing `{attr}`), got {type(lstm).__name__}"
            )


def lstm_autonomous_map(lstm: nnx.Module) -> AutonomousMap:
    r"""The LSTM's free-running step as one map `F` on `x = (z, h_1, c_1, ..., h_L, c_L)`.

    `F(x) = (zhat, h_1', c_1', ..., h_L', c_L')` where `(h_l', c_l')` is one
    step of the stack on input `z` from state `(h_l, c_l)` and
    `zhat = z + W_out h_L' + b_out` is the prediction, which the free-running
    LSTM reads as its next input. The parameters are cast to float64 when
    `jax_enable_x64` is on.
    """
    return _autonomous_map(lstm)[0]


def _unpack(x, dims):
    d, hd, nl = dims
    st = []
    for layer in range(nl):
        o = d + 2 * layer * hd
        st.append((x[o : o + hd], x[o + hd : o + 2 * hd]))
    return x[:d], st


def _pack(z, state):
    return jnp.concatenate([z] + [a for hc in state for a in hc])


def _flat_step(graphdef, dims, params, x):
    model = nnx.merge(graphdef, params)
    z, st = _unpack(x, dims)
    _, pred, st = model.cell(z, st)
    return _pack(pred, st)


# module-level jits with the architecture static: compiled once per architecture and dtype
_step_jit = jax.jit(_flat_step, static_argnums=(0, 1))
_jac_jit = jax.jit(jax.jacfwd(_flat_step, argnums=3), static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _visited(graphdef, dims, params, context, n_steps):
    """The flat states visited in `n_steps` free-running steps after reading `context`."""
    model = nnx.merge(graphdef, params)
    _, pred, state = model.run(model.normalise(context), model.init_state())

    def body(x, _):
        x = _flat_step(graphdef, dims, params, x)
        return x, x

    return jax.lax.scan(body, _pack(pred[-1], state), None, length=n_steps)[1]


def _autonomous_map(lstm):
    """`AutonomousMap`, the visited-states function `run(context, n_steps)` and the float dtype."""
    _check_lstm(lstm)
    dims = (int(lstm.state_dim), int(lstm.hidden), int(lstm.layers))
    dim = dims[0] + 2 * dims[1] * dims[2]
    graphdef, params = nnx.split(lstm)
    if jax.config.jax_enable_x64:
        dtype = jnp.float64
        params = jax.tree.map(
            lambda a: (
                jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a
            ),
            params,
        )
    else:
        dtype = lstm.w_out[...].dtype

    def step(x):
        return _step_jit(graphdef, dims, params, jnp.asarray(x, dtype))

    def jacobian(x):
        return _jac_jit(graphdef, dims, params, jnp.asarray(x, dtype))

    def run(context, n_steps):
        return _visited(graphdef, dims, params, jnp.asarray(context, dtype), int(n_steps))

    amap = AutonomousMap(
        step=step,
        jacobian=jacobian,
        pack=_pack,
        unpack=functools.partial(_unpack, dims=dims),
        dim=dim,
    )
    return amap, run, dtype


class FixedPoints(NamedTuple):
    r"""Fixed points `x* = F(x*)` of the LSTM's autonomous map (`lstm_fixed_points`), `M` of them.

    - `points` `(M, D)`: `x*` (flat `(z, h_1, c_1, ...)`, see `AutonomousMap`);
    - `states` `(M, d)`: the forecast state at each, `denorm(z*)` in physical units;
    - `residuals` `(M,)`: `|F(x*) - x*|`;
    - `jacobians` `(M, D, D)`: `dF/dx` at `x*`;
    - `eigenvalues` `(M, D)` complex, sorted by decreasing modulus;
    - `frequencies` `(M, D)`: `|angle(lambda)| / dt` (angular, in `[0, pi/dt]`);
    - `decay_rates` `(M, D)`: `log|lambda| / dt` (`> 0` grows);
    - `stable` `(M,)`: spectral radius `< 1`;
    - `n_starts`, `n_converged`: searches run and those whose residual was below `tol`.
    """

    points: np.ndarray
    states: np.ndarray
    residuals: np.ndarray
    jacobians: np.ndarray
    eigenvalues: np.ndarray
    frequencies: np.ndarray
    decay_rates: np.ndarray
    stable: np.ndarray
    n_starts: int
    n_converged: int


def eigen_frequencies(
    eigenvalues: Inexact[ArrayLike, "*shape"],
    dt: float,  # real or complex eigenvalues
) -> tuple[Float[np.ndarray, "*shape"], Float[np.ndarray, "*shape"]]:
    r"""Angular frequencies `omega = |angle(lambda)| / dt` and decay rates `log|lambda| / dt`
    of the eigenvalues `lambda` of a map that advances time by `dt`
    (`lambda = exp((sigma +- i omega) dt)`; frequencies alias above `pi / dt`)."""
    dt = check_dt(dt)
    lam = np.asarray(eigenvalues, dtype=np.complex128)
    with np.errstate(divide="ignore"):
        return np.abs(np.angle(lam)) / dt, np.log(np.abs(lam)) / dt


def check_dt(dt) -> float:
    try:
        v = float(dt)
    except (TypeError, ValueError) as e:
        raise ValueError(f"dt must be a positive number, got {dt!r}") from e
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"dt must be finite and > 0, got {dt!r}")
    return v


def lstm_fixed_points(
    lstm: nnx.Module,
    *,
    key: PRNGKeyArray | int,
    n_starts: int = 32,
    steps: int = 200,
    context: Float[ArrayLike, "C d"] | None = None,
    n_forecast: int = 500,
    starts: Float[ArrayLike, "S D"] | None = None,
    tol: float | None = None,
    dedupe_tol: float = 1e-5,
) -> FixedPoints:
    r"""Fixed points of the free-running LSTM and the spectra of its linearisation there.

    The autonomous map `F` is `lstm_autonomous_map(lstm)`. From each start
    `x_0`, the residual `r(x) = F(x) - x` is driven to zero by
    Levenberg-Marquardt (`scipy.optimize.least_squares(method="lm")`, at most
    `steps` evaluations, with the exact Jacobian `dF/dx - I` from
    `jax.jacfwd`), which converges quadratically near a regular fixed point.
    Points with `|r(x)| < tol` are kept (`tol=None`: `1e-9` in float64, `1e-4`
    in float32), and duplicates, `|x_i - x_j| <= dedupe_tol (1 + |x_j|)`,
    removed (the point of smallest residual stays).

    **Starts.** `starts` `(S, D)` if given; otherwise, with `context` (`(C, d)`,
    physical units), `n_starts` states drawn with `key` from the
    `n_forecast` free-running steps after reading the context (the states the
    forecast visits); otherwise `n_starts` random states,
    `z ~ N(0, 1)`, `h ~ U(-1, 1)`, `c ~ N(0, 1)`.

    **Spectrum.** At each fixed point, the eigenvalues `lambda` of `J = dF/dx`
    (NumPy `eigvals`) give angular frequencies `|angle(lambda)| / dt` and
    decay rates `log|lambda| / dt`, with `dt = lstm.dt` (see
    `compare_to_normal_modes`). A trained LSTM that oscillates about a fixed
    point with the system's normal modes has pairs `exp((sigma +- i omega_k) dt)`.

    Returns `FixedPoints` (possibly empty: `M = 0`).
    """
    _check_lstm(lstm)
    if getattr(lstm, "dt", None) is None:
        raise ValueError("lstm.dt is unset: fit the model (or set lstm.dt) first")
    dt = check_dt(lstm.dt)
    steps = check_int("steps", steps, minimum=1)
    dedupe_tol = float(dedupe_tol)
    amap, run, dtype = _autonomous_map(lstm)
    dim, d = amap.dim, int(lstm.state_dim)
    f64 = bool(jax.config.jax_enable_x64)
    if tol is None:
        tol = 1e-9 if f64 else 1e-4
    tol = float(tol)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    rng = numpy_rng(key)

    if starts is not None:
        x0s = as_matrix("starts", starts)
        if x0s.shape[1] != dim:
            raise ValueError(
                f"starts must have shape (S, {dim}) (z, then (h, c) per layer), got {x0s.shape}"
            )
    else:
        n_starts = check_int("n_starts", n_starts, minimum=1)
        if context is not None:
            n_forecast = check_int("n_forecast", n_forecast, minimum=1)
            ctx = jnp.asarray(context)
            if ctx.ndim != 2 or ctx.shape[1] != d or ctx.shape[0] < 1:
                raise ValueError(
                    f"context must have shape (C, {d}) with C >= 1, got {tuple(ctx.shape)}"
                )
            visited = np.asarray(run(ctx, n_forecast), dtype=np.float64)
            if not np.all(np.isfinite(visited)):
                visited = visited[np.all(np.isfinite(visited), axis=1)]
            if visited.shape[0] == 0:
                raise ValueError(
                    "the forecast from context diverged: no finite states to start from"
                )
            idx = rng.choice(visited.shape[0], size=n_starts, replace=visited.shape[0] < n_starts)
            x0s = visited[idx]
        else:
            hd, nl = int(lstm.hidden), int(lstm.layers)
            parts = [rng.standard_normal((n_starts, d))]
            for _ in range(nl):
                parts += [rng.uniform(-1, 1, (n_starts, hd)), rng.standard_normal((n_starts, hd))]
            x0s = np.concatenate(parts, axis=1)

    eye = np.eye(dim)

    def res(x):
        return np.asarray(amap.step(x), dtype=np.float64) - x

    def jac(x):
        return np.asarray(amap.jacobian(x), dtype=np.float64) - eye

    found: list[tuple[float, np.ndarray]] = []
    for x0 in x0s:
        try:
            sol = scipy.optimize.least_squares(
                res, x0, jac=jac, method="lm", max_nfev=steps, xtol=1e-15, ftol=1e-15, gtol=1e-15
            )
        except (ValueError, np.linalg.LinAlgError):  # non-finite residuals from a diverging start
            continue
        x = sol.x
        if not np.all(np.isfinite(x)):
            continue
        r = float(np.linalg.norm(res(x)))
        if r < tol:
            found.append((r, x))
    n_converged = len(found)
    found.sort(key=lambda t: t[0])
    kept: list[tuple[float, np.ndarray]] = []
    for r, x in found:
        if all(np.linalg.norm(x - y) > dedupe_tol * (1 + np.linalg.norm(y)) for _, y in kept):
            kept.append((r, x))

    m = len(kept)
    points = np.array([x for _, x in kept]).reshape(m, dim)
    residuals = np.array([r for r, _ in kept])
    jacs = np.array([np.asarray(amap.jacobian(x), dtype=np.float64) for x in points]).reshape(
        m, dim, dim
    )
    eigs = np.empty((m, dim), dtype=np.complex128)
    for i in range(m):
        lam = np.linalg.eigvals(jacs[i])
        eigs[i] = lam[np.argsort(-np.abs(lam), kind="stable")]
    freqs, decay = eigen_frequencies(eigs, dt)
    states = (
        np.asarray(lstm.denormalise(jnp.asarray(points[:, :d])), dtype=np.float64)
        if m
        else np.empty((0, d))
    )
    return FixedPoints(
        points=points,
        states=states,
        residuals=residuals,
        jacobians=jacs,
        eigenvalues=eigs,
        frequencies=freqs,
        decay_rates=decay,
        stable=np.all(np.abs(eigs) < 1, axis=1) if m else np.zeros(0, dtype=bool),
        n_starts=int(x0s.shape[0]),
        n_converged=n_converged,
    )


class ModeComparison(NamedTuple):
    """For each true normal mode (`compare_to_normal_modes`): `true_freqs` `(n,)`, the nearest
    model frequency `model_freqs` `(n,)`, the `relative_error` `|model - true| / true`, the
    matched `eigenvalues` `(n,)` and their `decay_rates` `(n,)`. NaN where no candidate exists."""

    true_freqs: np.ndarray
    model_freqs: np.ndarray
    relative_error: np.ndarray
    eigenvalues: np.ndarray
    decay_rates: np.ndarray


def compare_to_normal_modes(
    eigenvalues: Inexact[ArrayLike, "*shape"],  # real or complex (as np.linalg.eigvals gives)
    true_freqs: Float[ArrayLike, " n"],
    dt: float,
    *,
    min_modulus: float = 0.0,
) -> ModeComparison:
    r"""Matches each true normal-mode angular frequency to the nearest frequency of a linearisation.

    The candidates are the eigenvalues `lambda` (any shape, e.g. all fixed
    points' spectra pooled; flattened) with `Im(lambda) > 0` (one of each
    conjugate pair; real eigenvalues carry no rotation) and
    `|lambda| >= min_modulus` (to ignore fast-decaying directions). Each
    candidate has `omega = angle(lambda) / dt`; each true `omega_k` is matched to
    the nearest `omega` (a candidate may serve several modes), with
    `relative_error = |omega - omega_k| / omega_k`. Modes above the Nyquist
    frequency `pi / dt` cannot be represented by a map of step `dt`.
    For a linear system, `exp(A dt)` has exactly `exp(+- i omega_k dt)`.
    """
    dt = check_dt(dt)
    lam = np.asarray(eigenvalues, dtype=np.complex128).ravel()
    w = check_true_freqs(true_freqs)
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues contain NaN or infinite values")
    scale = np.maximum(np.abs(lam), 1.0)
    cand = lam[(lam.imag > 1e-12 * scale) & (np.abs(lam) >= float(min_modulus))]
    return match_frequencies(cand, *eigen_frequencies(cand, dt), w)


def check_true_freqs(true_freqs) -> np.ndarray:
    """`true_freqs` as a non-empty, finite, positive float64 vector (`ValueError` otherwise)."""
    w = np.asarray(true_freqs, dtype=np.float64)
    if w.ndim != 1 or w.size < 1:
        raise ValueError(f"true_freqs must be a non-empty vector, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("true_freqs must be finite and > 0")
    return w


def match_frequencies(cand, omega, decay, w) -> ModeComparison:
    """The matching itself, in any time convention: each true `w_k` to the candidate (complex
    eigenvalue `cand`, angular frequency `omega`, decay rate `decay`, all `(m,)`) of nearest
    `omega` (NaN everywhere when `m = 0`)."""
    if cand.size == 0:
        nan = np.full(w.shape, np.nan)
        return ModeComparison(w, nan, nan.copy(), np.full(w.shape, np.nan + 0j), nan.copy())
    j = np.argmin(np.abs(omega[None, :] - w[:, None]), axis=1)
    return ModeComparison(
        true_freqs=w,
        model_freqs=omega[j],
        relative_error=np.abs(omega[j] - w) / w,
        eigenvalues=cand[j],
        decay_rates=decay[j],
    )
