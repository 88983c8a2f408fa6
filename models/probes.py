r"""Looking inside a learner: linear probes, unit dissection, hidden-state PCA and the
fixed points of the LSTM's autonomous map.

Probes
    `ridge_probe` (cross-validated ridge regression from hidden states to a
    target, scored by out-of-fold `R^2`), `probe_with_control` and
    `probe_report` (the same probe on the hidden states of a randomly
    initialised network of the same architecture, fed the same inputs:
    `random_features_control`), and the physical targets of a system,
    `physical_targets`.
Dissection
    `dissect` (network dissection, Bau et al. 2017: each unit's top-quantile
    activation mask against binary concepts, scored by IoU) and the physical
    concepts of a system, `physical_concepts`.
Hidden-state geometry
    `pca_fit`, `pca_transform` and `manifold_departure` (how far hidden states
    produced beyond the training window leave the subspace the states inside
    it span).
Fixed points
    `lstm_autonomous_map`, `lstm_fixed_points` (the fixed points of the
    free-running LSTM and the eigenvalues of its linearisation),
    `eigen_frequencies` and `compare_to_normal_modes` (against the system's
    true normal-mode frequencies).

Everything here is analysis on stored arrays: plain NumPy (float64) except
where a model is evaluated (the fixed-point search, which jits and
differentiates the LSTM step with JAX). Argument checks raise `ValueError`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from flax import nnx
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, PRNGKeyArray

import dynamics

__all__ = [
    "ALPHA_GRID",
    "AutonomousMap",
    "ControlledProbe",
    "Dissection",
    "FixedPoints",
    "ManifoldDeparture",
    "ModeComparison",
    "PCA",
    "ProbeResult",
    "compare_to_normal_modes",
    "dissect",
    "eigen_frequencies",
    "lstm_autonomous_map",
    "lstm_fixed_points",
    "manifold_departure",
    "pca_fit",
    "pca_transform",
    "physical_concepts",
    "physical_targets",
    "probe_report",
    "probe_with_control",
    "random_features_control",
    "ridge_probe",
]

#: The ridge penalties `lambda` searched by the inner cross-validation of `ridge_probe`
#: (objective `mean((y - X w)^2) + lambda |w|^2` on standardised features).
ALPHA_GRID: tuple[float, ...] = tuple(float(a) for a in 10.0 ** np.arange(-6, 3))


# --------------------------------------------------------------------------- #
# Checks and small helpers
# --------------------------------------------------------------------------- #


def _check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _matrix(name: str, x, *, n_rows: int | None = None) -> np.ndarray:
    """`x` as a finite float64 matrix `(N, H)`."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from e
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N, H), got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {a.shape}")
    if n_rows is not None and a.shape[0] != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows (one per sample), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _target(name: str, y, n_rows: int) -> tuple[np.ndarray, bool]:
    """`y` as a finite float64 matrix `(N, k)`; also whether it was given as a vector."""
    try:
        a = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array, got {type(y).__name__}") from e
    vector = a.ndim == 1
    if vector:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N,) or (N, k), got shape {np.shape(y)}")
    if a.shape[0] != n_rows:
        raise ValueError(
            f"{name} has {a.shape[0]} samples but hidden has {n_rows}: they must be paired row by row"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a, vector


def _rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX PRNG key (new- or old-style), an int, or `None` (seed 0)."""
    if key is None:
        return np.random.default_rng(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return np.random.default_rng(int(key))
    try:
        k = jnp.asarray(key)
    except TypeError as e:
        raise ValueError(f"key must be a JAX PRNG key or an integer seed, got {type(key).__name__}") from e
    if jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
        k = jax.random.key_data(k)
    if not jnp.issubdtype(k.dtype, jnp.integer):
        raise ValueError(f"key must be a JAX PRNG key or an integer seed, got dtype {k.dtype}")
    return np.random.default_rng(np.asarray(k, dtype=np.uint64).ravel().tolist())


def _jax_key(key) -> PRNGKeyArray:
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


# --------------------------------------------------------------------------- #
# Linear probes
# --------------------------------------------------------------------------- #


class ProbeResult(NamedTuple):
    """The result of `ridge_probe`.

    - `r2`: out-of-fold `R^2` per target column, shape `(k,)`.
    - `r2_mean`: their mean.
    - `alphas`: the penalty used in each outer fold for each column, `(n_folds, k)`.
    - `predictions`: the out-of-fold predictions, shape `(N, k)`.
    - `folds`: the outer fold of each sample, shape `(N,)`.
    """

    r2: np.ndarray
    r2_mean: float
    alphas: np.ndarray
    predictions: np.ndarray
    folds: np.ndarray


def _assign_folds(n: int, n_folds: int, rng: np.random.Generator, groups) -> np.ndarray:
    """The fold of each of `n` samples: a shuffled, balanced split, or, with `groups`,
    whole groups per fold (groups shuffled, then each given to the currently smallest fold)."""
    if groups is None:
        if n < n_folds:
            raise ValueError(f"need at least n_folds={n_folds} samples, got N={n}")
        folds = np.empty(n, dtype=np.int64)
        for f, idx in enumerate(np.array_split(rng.permutation(n), n_folds)):
            folds[idx] = f
        return folds
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape (N,) = ({n},), got shape {g.shape}")
    labels, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    if labels.size < n_folds:
        raise ValueError(
            f"need at least n_folds={n_folds} distinct groups for grouped cross-validation, got {labels.size}"
        )
    sizes = np.zeros(n_folds, dtype=np.int64)
    of_group = np.empty(labels.size, dtype=np.int64)
    for gi in rng.permutation(labels.size):
        f = int(np.argmin(sizes))
        of_group[gi] = f
        sizes[f] += counts[gi]
    return of_group[inverse]


def _standardise(x_train, x_test):
    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0)
    sd = np.where(sd > 1e-12 * (1.0 + np.abs(mu)), sd, 1.0)  # constant features become zero columns
    return (x_train - mu) / sd, (x_test - mu) / sd


def _ridge_predict_all(x_train, y_train, x_test, alphas) -> np.ndarray:
    """Predictions `(A, n_test, k)` of ridge fits with intercept for each penalty in `alphas`.

    With standardised `X` and centred `y`, the minimiser of
    `mean((y - X w)^2) + lambda |w|^2` solves `(X^T X + n lambda I) w = X^T y`
    (least squares, i.e. the pseudo-inverse, where that matrix is singular).
    One `H x H` solve per penalty: LAPACK's eigen- and singular-value routines
    are orders of magnitude slower on small matrices when a multi-threaded
    BLAS competes for busy cores.
    """
    xs, xt = _standardise(x_train, x_test)
    y_mu = y_train.mean(axis=0)
    gram = xs.T @ xs
    xty = xs.T @ (y_train - y_mu)
    n, h = xs.shape
    out = np.empty((len(alphas), xt.shape[0], y_train.shape[1]))
    for i, a in enumerate(alphas):
        m = gram + (n * a) * np.eye(h)
        try:
            if a <= 0:
                raise np.linalg.LinAlgError
            w = np.linalg.solve(m, xty)
        except np.linalg.LinAlgError:
            w = np.linalg.lstsq(m, xty, rcond=None)[0]
        out[i] = xt @ w + y_mu
    return out


def _choose_alpha(x, y, alphas, n_inner, rng, groups) -> np.ndarray:
    """Per target column, the penalty of smallest pooled inner-CV squared error (ties: the larger)."""
    if len(alphas) == 1:
        return np.full(y.shape[1], alphas[0])
    n_groups = x.shape[0] if groups is None else np.unique(groups).size
    n_inner = min(n_inner, n_groups)
    if n_inner < 2:
        raise ValueError("too few samples (or groups) in a training fold for the inner cross-validation")
    folds = _assign_folds(x.shape[0], n_inner, rng, groups)
    sse = np.zeros((len(alphas), y.shape[1]))
    for f in range(n_inner):
        te = folds == f
        pred = _ridge_predict_all(x[~te], y[~te], x[te], alphas)
        sse += np.sum((pred - y[te]) ** 2, axis=1)
    best = len(alphas) - 1 - np.argmin(sse[::-1], axis=0)  # ties go to the stronger penalty
    return np.asarray(alphas)[best]


def _r2(y, pred) -> np.ndarray:
    ss_res = np.sum((y - pred) ** 2, axis=0)
    ss_tot = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)


def _alpha_grid(alpha) -> tuple[float, ...]:
    if alpha is None:
        return ALPHA_GRID
    vals = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    if vals.ndim != 1 or vals.size < 1 or not np.all(np.isfinite(vals)) or np.any(vals < 0):
        raise ValueError(f"alpha must be None, a number >= 0 or a sequence of them, got {alpha!r}")
    return tuple(float(a) for a in vals)


def ridge_probe(
    hidden: Float[ArrayLike, "N H"],
    target: Float[ArrayLike, "N"] | Float[ArrayLike, "N k"],
    *,
    alpha: float | Sequence[float] | None = None,
    n_folds: int = 5,
    key: PRNGKeyArray | int | None = None,
    groups: ArrayLike | None = None,
) -> ProbeResult:
    r"""A linear probe: cross-validated ridge regression from hidden states to a target.

    **Model.** In each of `n_folds` outer folds, the features are standardised
    with the training fold's mean and standard deviation (constant features
    become zero) and the targets centred by the training fold's mean (the
    intercept, not penalised); the weights minimise

    `(1/n) sum_t (y_t - x_t w)^2 + lambda |w|^2`,

    i.e. `w = (X^T X + n lambda I)^{-1} X^T y`.

    **Penalty.** `alpha=None` (default) chooses `lambda` per target column by an
    inner `n_folds`-fold cross-validation on the training fold over
    `ALPHA_GRID` (`1e-6 ... 1e2`; ties go to the larger penalty). A sequence
    is searched in the same way; a number is used as given.

    **Score.** The out-of-fold predictions `yhat` (each sample predicted by the
    fit that did not see it) give, per target column,

    `R^2 = 1 - sum_t (y_t - yhat_t)^2 / sum_t (y_t - ybar)^2`

    with `ybar` the mean over all samples. `R^2` can be negative (worse than
    the mean); it is NaN for a constant target.

    **Folds.** Samples are shuffled into balanced folds with `key` (a JAX key or
    an integer seed; `None` means seed 0). Hidden states along a trajectory
    are strongly autocorrelated, so shuffled folds let neighbours of a test
    sample into training; pass `groups` (e.g. the trajectory index of each
    sample, shape `(N,)`) to keep whole groups in one fold.

    Returns a `ProbeResult` (`r2` per column, `r2_mean`, the chosen `alphas`,
    the out-of-fold `predictions` and the `folds`).
    """
    n_folds = _check_int("n_folds", n_folds, minimum=2)
    x = _matrix("hidden", hidden)
    y, _ = _target("target", target, x.shape[0])
    if x.shape[0] < n_folds:
        raise ValueError(f"need at least n_folds={n_folds} samples, got N={x.shape[0]}")
    grid = _alpha_grid(alpha)
    rng = _rng(key)
    g = None if groups is None else np.asarray(groups)
    folds = _assign_folds(x.shape[0], n_folds, rng, g)
    pred = np.empty_like(y)
    alphas = np.empty((n_folds, y.shape[1]))
    for f in range(n_folds):
        te = folds == f
        tr = ~te
        if tr.sum() < 2:
            raise ValueError(f"fold {f} leaves fewer than 2 training samples; use fewer folds or more data")
        a = _choose_alpha(x[tr], y[tr], grid, n_folds, rng, None if g is None else g[tr])
        alphas[f] = a
        uniq, which = np.unique(a, return_inverse=True)
        p_all = _ridge_predict_all(x[tr], y[tr], x[te], uniq)  # (A, n_test, k)
        pred[te] = p_all[which, :, np.arange(y.shape[1])].T
    r2 = _r2(y, pred)
    return ProbeResult(r2=r2, r2_mean=float(np.mean(r2)), alphas=alphas, predictions=pred, folds=folds)


class ControlledProbe(NamedTuple):
    """A probe and its random-network control (`probe_with_control`).

    `r2`, `control_r2`: per target column; `r2_mean`, `control_r2_mean`: their
    means; `selectivity = r2_mean - control_r2_mean`; `probe`, `control`: the
    full `ProbeResult`s.
    """

    r2: np.ndarray
    control_r2: np.ndarray
    r2_mean: float
    control_r2_mean: float
    selectivity: float
    probe: ProbeResult
    control: ProbeResult


def probe_with_control(
    hidden: Float[ArrayLike, "N H"],
    target: Float[ArrayLike, "N"] | Float[ArrayLike, "N k"],
    *,
    control_hidden: Float[ArrayLike, "N H2"],
    alpha: float | Sequence[float] | None = None,
    n_folds: int = 5,
    key: PRNGKeyArray | int | None = None,
    groups: ArrayLike | None = None,
) -> ControlledProbe:
    """`ridge_probe` on `hidden` and, with the same folds and penalty rule, on `control_hidden`.

    The control answers "how much of this `R^2` does the architecture give for
    free?": `control_hidden` should be the hidden states of a randomly
    initialised network of the same architecture fed the same inputs (see
    `random_features_control`), row-paired with `hidden`. A quantity the
    trained network represents has `selectivity = r2 - control_r2` well above 0.
    """
    x = _matrix("hidden", hidden)
    xc = _matrix("control_hidden", control_hidden, n_rows=x.shape[0])
    kw = dict(alpha=alpha, n_folds=n_folds, groups=groups)
    probe = ridge_probe(x, target, key=key, **kw)
    control = ridge_probe(xc, target, key=key, **kw)
    return ControlledProbe(
        r2=probe.r2,
        control_r2=control.r2,
        r2_mean=probe.r2_mean,
        control_r2_mean=control.r2_mean,
        selectivity=probe.r2_mean - control.r2_mean,
        probe=probe,
        control=control,
    )


def probe_report(
    hidden: Float[ArrayLike, "N H"],
    targets: Mapping[str, ArrayLike],
    *,
    control_hidden: Float[ArrayLike, "N H2"] | None = None,
    alpha: float | Sequence[float] | None = None,
    n_folds: int = 5,
    key: PRNGKeyArray | int | None = None,
    groups: ArrayLike | None = None,
) -> list[dict[str, Any]]:
    """Probes every target of `targets` (e.g. `physical_targets(...)`); one row per quantity.

    Each row is `{"quantity", "r2", "control_r2", "selectivity", "n_components"}`,
    where `r2` is the mean out-of-fold `R^2` over the target's columns (a
    phase's cos and sin, say) and `control_r2` the same on `control_hidden`
    (NaN without one). All quantities share the folds (same `key`). The rows
    are the `probes.csv` rows of the study, less the `model` column.
    """
    if not isinstance(targets, Mapping) or not targets:
        raise ValueError("targets must be a non-empty mapping name -> array (N,) or (N, k)")
    x = _matrix("hidden", hidden)
    xc = None if control_hidden is None else _matrix("control_hidden", control_hidden, n_rows=x.shape[0])
    rows = []
    for name, y in targets.items():
        yy, _ = _target(f"targets[{name!r}]", y, x.shape[0])
        kw = dict(alpha=alpha, n_folds=n_folds, key=key, groups=groups)
        r2 = ridge_probe(x, yy, **kw).r2_mean
        c = np.nan if xc is None else ridge_probe(xc, yy, **kw).r2_mean
        rows.append(
            {"quantity": str(name), "r2": r2, "control_r2": c, "selectivity": r2 - c, "n_components": yy.shape[1]}
        )
    return rows


def random_features_control(
    model: nnx.Module,
    xs: Float[ArrayLike, "*batch T d"],
    *,
    key: PRNGKeyArray | int,
) -> Float[Array, "*batch T hidden"]:
    """Hidden states of a randomly initialised copy of `model` reading the same inputs.

    The copy has `model`'s architecture (`type(model)(state_dim, hidden=...,
    layers=...)`, fresh parameters from `key`) and its normalisation (`mean`,
    `std`) and `dt`, so both networks see identical normalised inputs. Returns
    `copy.hidden_states(xs)` for `xs` of shape `(T, d)`, or `(B, T, d)`
    (mapped over `B`). For hidden states recorded while free-running, pass
    the inputs the trained model read, i.e. its own forecast.
    """
    for attr in ("hidden_states", "state_dim", "hidden", "layers"):
        if not hasattr(model, attr):
            raise ValueError(f"model must be an LSTM-like module with `{attr}`, got {type(model).__name__}")
    xs = jnp.asarray(xs)
    if xs.ndim not in (2, 3) or xs.shape[-1] != model.state_dim:
        raise ValueError(f"xs must have shape (T, {model.state_dim}) or (B, T, {model.state_dim}), got {xs.shape}")
    fresh = type(model)(model.state_dim, hidden=model.hidden, layers=model.layers, rngs=nnx.Rngs(_jax_key(key)))
    fresh.mean.set_value(jnp.asarray(model.mean.get_value()))
    fresh.std.set_value(jnp.asarray(model.std.get_value()))
    fresh.dt = model.dt
    graphdef, state = nnx.split(fresh)

    def one(st, x):
        return nnx.merge(graphdef, st).hidden_states(x)

    run = jax.jit(one if xs.ndim == 2 else jax.vmap(one, in_axes=(None, 0)))
    return run(state, xs)


# --------------------------------------------------------------------------- #
# Physical targets and concepts
# --------------------------------------------------------------------------- #


class _Coords(NamedTuple):
    q: np.ndarray | None  # (N, n)
    p: np.ndarray | None  # (N, n)
    phase: np.ndarray  # (N, n), in (-pi, pi]
    angles: bool  # whether q are angles
    extra: dict


def _coords(system: dynamics.AbstractSystem, states) -> _Coords:
    if not isinstance(system, dynamics.AbstractSystem):
        raise ValueError(f"system must be a dynamics.AbstractSystem, got {type(system).__name__}")
    y = _matrix("states", states)
    if y.shape[1] != system.state_dim:
        raise ValueError(f"states must have shape (N, {system.state_dim}) for {type(system).__name__}, got {y.shape}")
    n = system.n_oscillators
    if not system.second_order:  # phase oscillators (Kuramoto): the state is the phase
        return _Coords(None, None, np.angle(np.exp(1j * y)), True, {})
    extra = {}
    if isinstance(system, dynamics.HuygensClocks):
        q, p = y[:, :n], y[:, n + 1 : 2 * n + 1]
        extra = {"beam_x": y[:, n], "beam_v": y[:, 2 * n + 1]}
    elif y.shape[1] == 2 * n:
        q, p = y[:, :n], y[:, n:]
    else:
        raise ValueError(f"cannot split the state of {type(system).__name__} into (q, p) per oscillator")
    if hasattr(system, "omega"):
        omega = np.asarray(system.omega, dtype=np.float64)
    elif isinstance(system, dynamics.DoublePendulum):  # each pendulum's small-swing frequency
        omega = np.sqrt(float(system.g) / np.array([float(system.l1), float(system.l2)]))
        omega = np.where(omega > 0, omega, 1.0)
    else:
        omega = np.ones(n)
    angles = isinstance(system, (dynamics.CoupledPendulums, dynamics.HuygensClocks, dynamics.DoublePendulum))
    return _Coords(q, p, np.arctan2(-p / omega, q), angles, extra)


def physical_targets(
    system: dynamics.AbstractSystem, states: Float[ArrayLike, "N state_dim"]
) -> dict[str, np.ndarray]:
    r"""The physical quantities a probe may look for, one entry per quantity (float64 NumPy).

    Oscillators are numbered from 1. For second-order systems with
    `q_i, p_i` per oscillator (`p_i = q_i'`):

    - `"energy"` `(N,)`: `system.energy(states)` (where the system has one);
    - `"phase_i"` `(N, 2)`: `(cos phi_i, sin phi_i)` with
      `phi_i = atan2(-p_i / omega_i, q_i)`, the angle of the oscillator in its
      normalised phase plane (`phi_i = omega_i t + const` for a free harmonic
      oscillator; the convention of `HuygensClocks.phase_difference`).
      `omega_i` is the system's `omega`; for the double pendulum
      `sqrt(g / l_i)`; otherwise 1;
    - `"q_i"`, `"p_i"` `(N,)`;
    - `"angle_i"` `(N, 2)`: `(cos q_i, sin q_i)` where `q` are angles
      (coupled pendulums, Huygens' clocks, double pendulum);
    - Huygens' clocks also give `"beam_x"` and `"beam_v"`.

    For phase oscillators (Kuramoto) the state is the phase: `"phase_i"` is
    `(cos theta_i, sin theta_i)`, plus `"order_parameter"` `r = |mean_j e^{i theta_j}|`.
    """
    c = _coords(system, states)
    y = np.asarray(states, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    if system.has_energy:
        out["energy"] = np.asarray(system.energy(jnp.asarray(y)), dtype=np.float64)
    if not system.second_order:
        out["order_parameter"] = np.abs(np.mean(np.exp(1j * y), axis=-1))
    n = c.phase.shape[1]
    for i in range(n):
        out[f"phase_{i + 1}"] = np.stack([np.cos(c.phase[:, i]), np.sin(c.phase[:, i])], axis=-1)
    if c.q is not None:
        for i in range(n):
            out[f"q_{i + 1}"] = c.q[:, i].copy()
            out[f"p_{i + 1}"] = c.p[:, i].copy()
        if c.angles:
            for i in range(n):
                out[f"angle_{i + 1}"] = np.stack([np.cos(c.q[:, i]), np.sin(c.q[:, i])], axis=-1)
    out.update({k: np.asarray(v, dtype=np.float64).copy() for k, v in c.extra.items()})
    return out


def _wrap(a):
    """Angles into `[-pi, pi)`."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def physical_concepts(
    system: dynamics.AbstractSystem,
    states: Float[ArrayLike, "N state_dim"],
    *,
    n_sectors: int = 4,
    energy_quantile: float = 0.75,
    in_step_tol: float = np.pi / 8,
    pair: tuple[int, int] = (1, 2),
) -> dict[str, np.ndarray]:
    r"""Binary physical concepts for `dissect`, each a boolean mask `(N,)`.

    With `phi_i` the phase of oscillator `i` as in `physical_targets`
    (oscillators numbered from 1):

    - `"phase_sector_k"` (`k = 1..n_sectors`): `phi_1` wrapped into
      `[-pi, pi)` lies in `[-pi + 2 pi (k-1)/n_sectors, -pi + 2 pi k/n_sectors)`;
    - `"high_energy"`: `energy > ` its `energy_quantile` quantile over the
      given states (where the system has an energy);
    - `"in_step"`: `|wrap(phi_a - phi_b)| < in_step_tol` for the oscillators
      `pair = (a, b)`, and `"anti_phase"`: `|wrap(phi_a - phi_b - pi)| < in_step_tol`
      (where there are at least two oscillators).
    """
    n_sectors = _check_int("n_sectors", n_sectors, minimum=2)
    if not 0 < float(energy_quantile) < 1:
        raise ValueError(f"energy_quantile must be in (0, 1), got {energy_quantile!r}")
    if not 0 < float(in_step_tol) <= np.pi:
        raise ValueError(f"in_step_tol must be in (0, pi], got {in_step_tol!r}")
    c = _coords(system, states)
    out: dict[str, np.ndarray] = {}
    sector = np.floor((_wrap(c.phase[:, 0]) + np.pi) / (2 * np.pi) * n_sectors).astype(int)
    sector = np.clip(sector, 0, n_sectors - 1)
    for k in range(n_sectors):
        out[f"phase_sector_{k + 1}"] = sector == k
    if system.has_energy:
        e = np.asarray(system.energy(jnp.asarray(np.asarray(states, dtype=np.float64))))
        out["high_energy"] = e > np.quantile(e, float(energy_quantile))
    n = c.phase.shape[1]
    if n >= 2:
        a, b = pair
        if not (1 <= a <= n and 1 <= b <= n and a != b):
            raise ValueError(f"pair must name two different oscillators in 1..{n}, got {pair!r}")
        d = c.phase[:, a - 1] - c.phase[:, b - 1]
        out["in_step"] = np.abs(_wrap(d)) < in_step_tol
        out["anti_phase"] = np.abs(_wrap(d - np.pi)) < in_step_tol
    return out


# --------------------------------------------------------------------------- #
# Network dissection
# --------------------------------------------------------------------------- #


class Dissection(NamedTuple):
    """The result of `dissect`.

    - `concepts`: the concept names, in column order;
    - `thresholds` `(H,)`: each unit's activation threshold;
    - `iou` `(H, C)`: IoU of each unit's mask with each concept;
    - `iou_chance` `(H, C)`: the IoU expected of independent masks of the same sizes;
    - `best_concept` (H names), `best_iou` `(H,)`: each unit's best concept;
    - `table`: rows `{"unit", "concept", "iou", "iou_chance", "threshold", "unit_fraction",
      "concept_fraction"}`, one per unit (its best concept), sorted by IoU, largest first.
    """

    concepts: tuple[str, ...]
    thresholds: np.ndarray
    iou: np.ndarray
    iou_chance: np.ndarray
    best_concept: tuple[str, ...]
    best_iou: np.ndarray
    table: list[dict[str, Any]]


def dissect(
    activations: Float[ArrayLike, "N H"],
    concepts: Mapping[str, Bool[ArrayLike, "N"]],
    *,
    quantile: float | str | None = None,
) -> Dissection:
    r"""Network dissection (Bau et al. 2017) of `H` units against binary concepts.

    Unit `u`'s mask is `M_u = {t : a_{t,u} > T_u}` with `T_u` the `quantile`
    quantile of its activations over the `N` samples; concept `c`'s mask is
    `C_c`. The score is `IoU(u, c) = |M_u & C_c| / |M_u | C_c|` (0 where the
    union is empty), and each unit is labelled by its best concept.

    `quantile=None` takes `0.99` when `N >= 1000` and `0.9` below (so that the
    mask keeps at least ~10 samples); Bau et al. use `0.995` on millions of
    pixels. Note that `IoU <= min(|M|, |C|) / max(|M|, |C|)`: a top-1% mask
    cannot score high on a concept that covers a quarter of the samples.
    `quantile="matched"` sets, per unit and concept, `T_{u,c}` so that the mask
    is as large as the concept (quantile `1 - |C_c| / N`), which removes that
    cap; `thresholds` then holds the mask of each unit's best concept.

    Only large positive activations count, as in the original method; to
    dissect the negative side too, pass `concatenate([a, -a], axis=1)`.
    `iou_chance` is the IoU expected of independent masks of sizes `m` and
    `c`: `(mc/N) / (m + c - mc/N)`.
    """
    a = _matrix("activations", activations)
    n, h = a.shape
    if not isinstance(concepts, Mapping) or not concepts:
        raise ValueError("concepts must be a non-empty mapping name -> boolean mask (N,)")
    names = tuple(str(k) for k in concepts)
    cols = []
    for name, m in concepts.items():
        m = np.asarray(m)
        if m.shape != (n,):
            raise ValueError(f"concept {name!r} must be a mask of shape ({n},), got shape {m.shape}")
        if m.dtype != bool:
            if not np.all((m == 0) | (m == 1)):
                raise ValueError(f"concept {name!r} must be boolean (or 0/1)")
            m = m.astype(bool)
        cols.append(m)
    cmask = np.stack(cols, axis=1)  # (N, C)
    csize = cmask.sum(axis=0).astype(np.float64)

    if quantile is None:
        quantile = 0.99 if n >= 1000 else 0.9
    if isinstance(quantile, str):
        if quantile != "matched":
            raise ValueError(f"quantile must be a number in (0, 1), None or 'matched', got {quantile!r}")
        thr_uc = np.empty((h, len(names)))
        for j, cs in enumerate(csize):
            q = 1.0 - cs / n
            thr_uc[:, j] = np.quantile(a, q, axis=0) if cs > 0 else np.inf
        masks = a[:, :, None] > thr_uc[None]  # (N, H, C)
        inter = np.einsum("nhc,nc->hc", masks.astype(np.float64), cmask.astype(np.float64))
        msize = masks.sum(axis=0).astype(np.float64)
    else:
        q = float(quantile)
        if not 0 < q < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
        thr = np.quantile(a, q, axis=0)
        umask = a > thr  # (N, H)
        inter = umask.T.astype(np.float64) @ cmask.astype(np.float64)
        msize = np.broadcast_to(umask.sum(axis=0).astype(np.float64)[:, None], inter.shape)
    union = msize + csize[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    e_inter = msize * csize[None, :] / n
    e_union = msize + csize[None, :] - e_inter
    iou_chance = np.where(e_union > 0, e_inter / np.where(e_union > 0, e_union, 1.0), 0.0)

    best = np.argmax(iou, axis=1)
    best_iou = iou[np.arange(h), best]
    thresholds = thr_uc[np.arange(h), best] if isinstance(quantile, str) else thr
    table = [
        {
            "unit": int(u),
            "concept": names[best[u]],
            "iou": float(best_iou[u]),
            "iou_chance": float(iou_chance[u, best[u]]),
            "threshold": float(thresholds[u]),
            "unit_fraction": float(msize[u, best[u]] / n),
            "concept_fraction": float(csize[best[u]] / n),
        }
        for u in np.argsort(-best_iou, kind="stable")
    ]
    return Dissection(
        concepts=names,
        thresholds=np.asarray(thresholds, dtype=np.float64),
        iou=iou,
        iou_chance=iou_chance,
        best_concept=tuple(names[b] for b in best),
        best_iou=best_iou,
        table=table,
    )


# --------------------------------------------------------------------------- #
# PCA and departure from the training manifold
# --------------------------------------------------------------------------- #


class PCA(NamedTuple):
    """Principal components of hidden states: `mean` `(H,)`, `components` `(k, H)` (orthonormal
    rows, by decreasing variance), `explained_variance` `(k,)` (sample variance along each,
    divisor `N - 1`) and `explained_variance_ratio` `(k,)` (fraction of the total variance)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray


def pca_fit(h: Float[ArrayLike, "N H"], *, n_components: int | None = None) -> PCA:
    """PCA by the SVD of the centred states `h - mean = U S V^T`: the components are the
    rows of `V^T`, the variances `S^2 / (N - 1)`. `n_components=None` keeps `min(N, H)`."""
    x = _matrix("h", h)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 states, got {n}")
    kmax = min(n, d)
    k = kmax if n_components is None else _check_int("n_components", n_components, minimum=1)
    if k > kmax:
        raise ValueError(f"n_components must be <= min(N, H) = {kmax}, got {k}")
    mu = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    var = s**2 / (n - 1)
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    return PCA(mean=mu, components=vt[:k], explained_variance=var[:k], explained_variance_ratio=ratio[:k])


def pca_transform(pca: PCA, h: Float[ArrayLike, "N H"]) -> Float[np.ndarray, "N k"]:
    """Coordinates `(h - mean) V_k^T` of states in the principal subspace."""
    x = _matrix("h", h)
    if x.shape[1] != pca.mean.shape[0]:
        raise ValueError(f"h must have {pca.mean.shape[0]} columns like the fitted states, got {x.shape}")
    return (x - pca.mean) @ pca.components.T


class ManifoldDeparture(NamedTuple):
    r"""The result of `manifold_departure`.

    - `residual_ratio`: mean squared residual off the top-`k` subspace of the
      beyond-states over that of held-out inside states (`> 1`: leaving the manifold);
    - `distance_ratio`: the same ratio for the mean Mahalanobis distance inside the subspace
      (`> 1`: moving beyond the inside spread along the manifold);
    - `residual_inside`, `residual_beyond`, `distance_inside`, `distance_beyond`: the means;
    - `residuals_beyond`, `distances_beyond` `(N2,)`: per beyond-state values, in units of
      the held-out inside means (ratios per state, e.g. to plot against the horizon);
    - `explained_variance_ratio`: fraction of the inside variance the subspace captures;
    - `pca`: the fitted `PCA`.
    """

    residual_ratio: float
    distance_ratio: float
    residual_inside: float
    residual_beyond: float
    distance_inside: float
    distance_beyond: float
    residuals_beyond: np.ndarray
    distances_beyond: np.ndarray
    explained_variance_ratio: float
    pca: PCA


def manifold_departure(
    h_inside: Float[ArrayLike, "N1 H"],
    h_beyond: Float[ArrayLike, "N2 H"],
    *,
    n_components: int,
    holdout: float = 0.2,
    key: PRNGKeyArray | int | None = None,
) -> ManifoldDeparture:
    r"""How far hidden states beyond the training window leave the manifold of those inside it.

    A random `holdout` fraction of the inside states (chosen with `key`) is set
    aside; PCA on the rest gives the mean `mu`, the top-`k` components `V_k`
    (`k = n_components`) and their variances `lambda_j`. For a state `x`:

    - residual off the subspace: `r(x) = |(x - mu) - V_k^T V_k (x - mu)|^2`;
    - Mahalanobis distance inside it: `d(x) = sqrt(sum_j c_j^2 / lambda_j)`,
      `c = V_k (x - mu)`.

    `residual_ratio = mean r(beyond) / mean r(held-out inside)` and
    `distance_ratio = mean d(beyond) / mean d(held-out inside)`. Both are about
    1 when the beyond-states come from the inside distribution; a residual
    ratio well above 1 means the extrapolating network visits directions its
    training-window states never used, a distance ratio above 1 (with a
    residual ratio near 1) means it moves along the manifold but further out.
    The held-out denominator is floored at `1e-12` times the total inside
    variance (states lying exactly in a `k`-dimensional subspace).
    """
    x_in = _matrix("h_inside", h_inside)
    x_out = _matrix("h_beyond", h_beyond)
    if x_out.shape[1] != x_in.shape[1]:
        raise ValueError(
            f"h_inside and h_beyond must have the same number of units, got {x_in.shape[1]} and {x_out.shape[1]}"
        )
    k = _check_int("n_components", n_components, minimum=1)
    if k >= x_in.shape[1]:
        raise ValueError(f"n_components must be < H = {x_in.shape[1]} (the full space leaves no residual), got {k}")
    if not 0 < float(holdout) < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
    n = x_in.shape[0]
    n_hold = int(round(float(holdout) * n))
    if n_hold < 1 or n - n_hold < k + 1:
        raise ValueError(
            f"too few inside states ({n}) for holdout={holdout} and n_components={k}: "
            f"need >= 1 held out and >= {k + 1} to fit"
        )
    perm = _rng(key).permutation(n)
    fit, held = x_in[perm[n_hold:]], x_in[perm[:n_hold]]
    pca = pca_fit(fit, n_components=k)
    total_var = float(np.sum(np.var(fit, axis=0, ddof=1)))

    def measures(x):
        c = (x - pca.mean) @ pca.components.T
        res = np.sum((x - pca.mean) ** 2, axis=1) - np.sum(c**2, axis=1)
        lam = np.maximum(pca.explained_variance, 1e-300)
        return np.maximum(res, 0.0), np.sqrt(np.sum(c**2 / lam, axis=1))

    r_in, d_in = measures(held)
    r_out, d_out = measures(x_out)
    r_in_mean = max(float(r_in.mean()), 1e-12 * total_var, np.finfo(np.float64).tiny)
    d_in_mean = max(float(d_in.mean()), np.finfo(np.float64).tiny)
    return ManifoldDeparture(
        residual_ratio=float(r_out.mean()) / r_in_mean,
        distance_ratio=float(d_out.mean()) / d_in_mean,
        residual_inside=float(r_in.mean()),
        residual_beyond=float(r_out.mean()),
        distance_inside=float(d_in.mean()),
        distance_beyond=float(d_out.mean()),
        residuals_beyond=r_out / r_in_mean,
        distances_beyond=d_out / d_in_mean,
        explained_variance_ratio=float(np.sum(pca.explained_variance_ratio)),
        pca=pca,
    )


# --------------------------------------------------------------------------- #
# Fixed points of the LSTM's autonomous map
# --------------------------------------------------------------------------- #


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
    for attr in ("_cell", "_norm", "_denorm", "_run", "_zeros", "state_dim", "hidden", "layers"):
        if not hasattr(lstm, attr):
            raise ValueError(f"lstm must be a models.LSTM (missing `{attr}`), got {type(lstm).__name__}")


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
    for l in range(nl):
        o = d + 2 * l * hd
        st.append((x[o : o + hd], x[o + hd : o + 2 * hd]))
    return x[:d], st


def _pack(z, state):
    return jnp.concatenate([z] + [a for hc in state for a in hc])


def _flat_step(graphdef, dims, params, x):
    model = nnx.merge(graphdef, params)
    z, st = _unpack(x, dims)
    _, pred, st = model._cell(z, st)
    return _pack(pred, st)


# module-level jits with the architecture static: compiled once per architecture and dtype
_step_jit = jax.jit(_flat_step, static_argnums=(0, 1))
_jac_jit = jax.jit(jax.jacfwd(_flat_step, argnums=3), static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _visited(graphdef, dims, params, context, n_steps):
    """The flat states visited in `n_steps` free-running steps after reading `context`."""
    model = nnx.merge(graphdef, params)
    _, pred, state = model._run(model._norm(context), model._zeros())

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
            lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, params
        )
    else:
        dtype = lstm.w_out.get_value().dtype

    def step(x):
        return _step_jit(graphdef, dims, params, jnp.asarray(x, dtype))

    def jacobian(x):
        return _jac_jit(graphdef, dims, params, jnp.asarray(x, dtype))

    def run(context, n_steps):
        return _visited(graphdef, dims, params, jnp.asarray(context, dtype), int(n_steps))

    amap = AutonomousMap(
        step=step, jacobian=jacobian, pack=_pack, unpack=functools.partial(_unpack, dims=dims), dim=dim
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
    eigenvalues: Complex[ArrayLike, "*shape"], dt: float
) -> tuple[Float[np.ndarray, "*shape"], Float[np.ndarray, "*shape"]]:
    r"""Angular frequencies `omega = |angle(lambda)| / dt` and decay rates `log|lambda| / dt`
    of the eigenvalues `lambda` of a map that advances time by `dt`
    (`lambda = exp((sigma +- i omega) dt)`; frequencies alias above `pi / dt`)."""
    dt = _check_dt(dt)
    lam = np.asarray(eigenvalues, dtype=np.complex128)
    with np.errstate(divide="ignore"):
        return np.abs(np.angle(lam)) / dt, np.log(np.abs(lam)) / dt


def _check_dt(dt) -> float:
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
    dt = _check_dt(lstm.dt)
    steps = _check_int("steps", steps, minimum=1)
    dedupe_tol = float(dedupe_tol)
    amap, run, dtype = _autonomous_map(lstm)
    dim, d = amap.dim, int(lstm.state_dim)
    f64 = bool(jax.config.jax_enable_x64)
    if tol is None:
        tol = 1e-9 if f64 else 1e-4
    tol = float(tol)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    rng = _rng(key)

    if starts is not None:
        x0s = _matrix("starts", starts)
        if x0s.shape[1] != dim:
            raise ValueError(f"starts must have shape (S, {dim}) (z, then (h, c) per layer), got {x0s.shape}")
    else:
        n_starts = _check_int("n_starts", n_starts, minimum=1)
        if context is not None:
            n_forecast = _check_int("n_forecast", n_forecast, minimum=1)
            ctx = jnp.asarray(context)
            if ctx.ndim != 2 or ctx.shape[1] != d or ctx.shape[0] < 1:
                raise ValueError(f"context must have shape (C, {d}) with C >= 1, got {tuple(ctx.shape)}")
            visited = np.asarray(run(ctx, n_forecast), dtype=np.float64)
            if not np.all(np.isfinite(visited)):
                visited = visited[np.all(np.isfinite(visited), axis=1)]
            if visited.shape[0] == 0:
                raise ValueError("the forecast from context diverged: no finite states to start from")
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
    jacs = np.array([np.asarray(amap.jacobian(x), dtype=np.float64) for x in points]).reshape(m, dim, dim)
    eigs = np.empty((m, dim), dtype=np.complex128)
    for i in range(m):
        lam = np.linalg.eigvals(jacs[i])
        eigs[i] = lam[np.argsort(-np.abs(lam), kind="stable")]
    freqs, decay = eigen_frequencies(eigs, dt)
    states = (
        np.asarray(lstm._denorm(jnp.asarray(points[:, :d])), dtype=np.float64) if m else np.empty((0, d))
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
    eigenvalues: Complex[ArrayLike, "*shape"],
    true_freqs: Float[ArrayLike, "n"],
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
    dt = _check_dt(dt)
    lam = np.asarray(eigenvalues, dtype=np.complex128).ravel()
    w = np.asarray(true_freqs, dtype=np.float64)
    if w.ndim != 1 or w.size < 1:
        raise ValueError(f"true_freqs must be a non-empty vector, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("true_freqs must be finite and > 0")
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues contain NaN or infinite values")
    scale = np.maximum(np.abs(lam), 1.0)
    cand = lam[(lam.imag > 1e-12 * scale) & (np.abs(lam) >= float(min_modulus))]
    if cand.size == 0:
        nan = np.full(w.shape, np.nan)
        return ModeComparison(w, nan, nan.copy(), np.full(w.shape, np.nan + 0j), nan.copy())
    omega, decay = eigen_frequencies(cand, dt)
    j = np.argmin(np.abs(omega[None, :] - w[:, None]), axis=1)
    return ModeComparison(
        true_freqs=w,
        model_freqs=omega[j],
        relative_error=np.abs(omega[j] - w) / w,
        eigenvalues=cand[j],
        decay_rates=decay[j],
    )
