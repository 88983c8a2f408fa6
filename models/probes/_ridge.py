"""Linear probes: cross-validated ridge regression from hidden states to a target, and the
random-network control."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_int
from ._misc import as_matrix, numpy_rng

#: The ridge penalties `lambda` searched by the inner cross-validation of `ridge_probe`
#: (objective `mean((y - X w)^2) + lambda |w|^2` on standardised features).
ALPHA_GRID: tuple[float, ...] = tuple(float(a) for a in 10.0 ** np.arange(-6, 3))


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
            f"{name} has {a.shape[0]} samples but hidden has {n_rows}: "
            "they must be paired row by row"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a, vector


def _jax_key(key) -> PRNGKeyArray:
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


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
            f"need at least n_folds={n_folds} distinct groups for grouped cross-validation, "
            f"got {labels.size}"
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
    """Per target column, the penalty of smallest pooled inner-CV squared error (ties: the
    larger)."""
    if len(alphas) == 1:
        return np.full(y.shape[1], alphas[0])
    n_groups = x.shape[0] if groups is None else np.unique(groups).size
    n_inner = min(n_inner, n_groups)
    if n_inner < 2:
        raise ValueError(
            "too few samples (or groups) in a training fold for the inner cross-validation"
        )
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
    target: Float[ArrayLike, " N"] | Float[ArrayLike, "N k"],
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
    n_folds = check_int("n_folds", n_folds, minimum=2)
    x = as_matrix("hidden", hidden)
    y, _ = _target("target", target, x.shape[0])
    if x.shape[0] < n_folds:
        raise ValueError(f"need at least n_folds={n_folds} samples, got N={x.shape[0]}")
    grid = _alpha_grid(alpha)
    rng = numpy_rng(key)
    g = None if groups is None else np.asarray(groups)
    folds = _assign_folds(x.shape[0], n_folds, rng, g)
    pred = np.empty_like(y)
    alphas = np.empty((n_folds, y.shape[1]))
    for f in range(n_folds):
        te = folds == f
        tr = ~te
        if tr.sum() < 2:
            raise ValueError(
                f"fold {f} leaves fewer than 2 training samples; use fewer folds or more data"
            )
        a = _choose_alpha(x[tr], y[tr], grid, n_folds, rng, None if g is None else g[tr])
        alphas[f] = a
        uniq, which = np.unique(a, return_inverse=True)
        p_all = _ridge_predict_all(x[tr], y[tr], x[te], uniq)  # (A, n_test, k)
        pred[te] = p_all[which, :, np.arange(y.shape[1])].T
    r2 = _r2(y, pred)
    return ProbeResult(
        r2=r2, r2_mean=float(np.mean(r2)), alphas=alphas, predictions=pred, folds=folds
    )


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
    target: Float[ArrayLike, " N"] | Float[ArrayLike, "N k"],
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
    x = as_matrix("hidden", hidden)
    xc = as_matrix("control_hidden", control_hidden, n_rows=x.shape[0])
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
    x = as_matrix("hidden", hidden)
    xc = (
        None
        if control_hidden is None
        else as_matrix("control_hidden", control_hidden, n_rows=x.shape[0])
    )
    rows = []
    for name, y in targets.items():
        yy, _ = _target(f"targets[{name!r}]", y, x.shape[0])
        kw = dict(alpha=alpha, n_folds=n_folds, key=key, groups=groups)
        r2 = ridge_probe(x, yy, **kw).r2_mean
        c = np.nan if xc is None else ridge_probe(xc, yy, **kw).r2_mean
        rows.append(
            {
                "quantity": str(name),
                "r2": r2,
                "control_r2": c,
                "selectivity": r2 - c,
                "n_components": yy.shape[1],
            }
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
            raise ValueError(
                f"model must be an LSTM-like module with `{attr}`, got {type(model).__name__}"
            )
    xs = jnp.asarray(xs)
    if xs.ndim not in (2, 3) or xs.shape[-1] != model.state_dim:
        raise ValueError(
            f"xs must have shape (T, {model.state_dim}) or (B, T, {model.state_dim}), "
            f"got {xs.shape}"
        )
    fresh = type(model)(
        model.state_dim, hidden=model.hidden, layers=model.layers, rngs=nnx.Rngs(_jax_key(key))
    )
    fresh.mean.set_value(jnp.asarray(model.mean.get_value()))
    fresh.std.set_value(jnp.asarray(model.std.get_value()))
    fresh.dt = model.dt
    graphdef, state = nnx.split(fresh)

    def one(st, x):
        return nnx.merge(graphdef, st).hidden_states(x)

    run = jax.jit(one if xs.ndim == 2 else jax.vmap(one, in_axes=(None, 0)))
    return run(state, xs)
