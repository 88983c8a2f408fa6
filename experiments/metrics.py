"""The study's metrics (DESIGN.md section 6), on numpy arrays."""

from __future__ import annotations

import numpy as np

#: the valid-prediction threshold of Botev et al. (2021)
VPT_THRESHOLD = 0.025


def nmse_curve(pred: np.ndarray, true: np.ndarray, var: np.ndarray) -> np.ndarray:
    """`nmse(t)`: squared error averaged over trajectories and coordinates, each coordinate
    divided by its variance `var (d,)` over the test set. `pred`, `true`: `(N, T, d)`."""
    return np.mean((pred - true) ** 2 / var, axis=(0, 2))


def _valid_times(err: np.ndarray, ts: np.ndarray, t_start: float, threshold: float):
    """Per trajectory of `err (N, T)`: the last time in `ts` before `err` first exceeds
    `threshold` (NaN counts as exceeding), minus `t_start` (0 when the first time already
    exceeds); and whether it never exceeded (censored at `ts[-1] - t_start`)."""
    times, censored = [], []
    for e in err:
        over = np.flatnonzero(~(e <= threshold))
        if over.size == 0:
            times.append(ts[-1] - t_start)
            censored.append(True)
        else:
            times.append(ts[over[0] - 1] - t_start if over[0] > 0 else 0.0)
            censored.append(False)
    return np.asarray(times, float), np.asarray(censored)


def _median_censored(times: np.ndarray, censored: np.ndarray) -> tuple[float, bool]:
    """The median of `times` and whether it is censored: the median trajectory's time is a
    lower bound when at least half of them never left the threshold."""
    return float(np.median(times)), bool(2 * censored.sum() >= censored.size)


def valid_prediction_time(
    pred: np.ndarray, true: np.ndarray, ts: np.ndarray, t_start: float
) -> tuple[float, bool]:
    """Valid prediction time (Botev et al. 2021) and whether it is censored.

    Per trajectory, `e(t) = mean_d((yhat - y)^2) / mean_d(y^2)`; its valid time is the last
    forecast time `t` in `ts` before `e` first exceeds `VPT_THRESHOLD`, minus `t_start`
    (the study passes `t_C`, the time of the last context state, so a forecast wrong from its
    first step has 0 and one valid for exactly one step has `dt`). Returns the median over
    trajectories and `censored`: True when at least half the trajectories never left the
    threshold, so the median is only a lower bound (the horizon `ts[-1] - t_start`), never a
    silent clip. `pred`, `true`: `(N, T, d)`; `ts`: `(T,)`."""
    err = np.mean((pred - true) ** 2, axis=-1) / np.maximum(np.mean(true**2, axis=-1), 1e-12)
    return _median_censored(*_valid_times(err, ts, t_start, VPT_THRESHOLD))


#: the sMAPE above which a forecast no longer counts as valid (Gilpin 2021, dysts)
SMAPE_THRESHOLD = 30.0


def smape_curve(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Symmetric mean absolute percentage error, in `[0, 200]`, per time (the dysts
    benchmark's forecasting metric, Gilpin 2021):
    `200 mean_{n,d} |yhat - y| / (|yhat| + |y|)`, a 0/0 term counting as 0."""
    num, den = np.abs(pred - true), np.abs(pred) + np.abs(true)
    ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return 200.0 * np.mean(np.where(np.isnan(pred), 1.0, ratio), axis=(0, 2))


def smape_valid_time(
    pred: np.ndarray, true: np.ndarray, ts: np.ndarray, t_start: float
) -> tuple[float, bool]:
    """Like `valid_prediction_time`, with each trajectory's own sMAPE (over coordinates)
    against `SMAPE_THRESHOLD` (the dysts benchmark's valid time)."""
    num, den = np.abs(pred - true), np.abs(pred) + np.abs(true)
    ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    err = 200.0 * np.mean(np.where(np.isnan(pred), np.nan, ratio), axis=-1)
    return _median_censored(*_valid_times(err, ts, t_start, SMAPE_THRESHOLD))


def energy_drift_curve(
    energy_pred: np.ndarray, energy_0: np.ndarray, *, ground: float = 0.0
) -> np.ndarray:
    """`|E(yhat_t) - E(y_0)| / |E(y_0) - ground|` averaged over trajectories; `energy_pred
    (N, T)`, `energy_0 (N,)`; `ground` the energy of the system's rest state
    (`system.ground_energy()`), so that a constant in the potential does not shrink the
    drift."""
    e0 = energy_0[:, None]
    return np.mean(np.abs(energy_pred - e0) / np.abs(e0 - ground), axis=0)


def wrap_angle(x: np.ndarray) -> np.ndarray:
    """Angles mapped to `(-pi, pi]`: `pi - ((pi - x) mod 2 pi)` (so `pi -> pi`, `-pi -> pi`)."""
    return np.pi - np.mod(np.pi - np.asarray(x, dtype=np.float64), 2 * np.pi)


def limit_cycle_amplitude_error(
    pred: np.ndarray,
    true: np.ndarray,
    groups: tuple[tuple[int, ...], ...],
    *,
    tail: float = 0.25,
) -> float:
    """The relative error of the limit-cycle amplitude of self-sustained oscillators.

    For each trajectory and each oscillator `i` (its coordinate `q_i` is the first state index
    of `groups[i]`, `system.oscillator_groups()`), the amplitude is the RMS of `q_i` over the
    last `tail` fraction of the horizon, `A = sqrt(mean_{t in tail} q_i(t)^2)` (for a sinusoid
    of amplitude `a`, `a / sqrt 2`: the ratio below is the ratio of amplitudes); the error is
    `|A_pred - A_true| / A_true`, averaged over oscillators and trajectories. A forecast that
    is right in amplitude but wrong in phase scores 0: this measures the attractor, not the
    trajectory. `pred`, `true`: `(N, T, d)`."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape or pred.ndim != 3:
        raise ValueError(
            f"pred and true must be (N, T, d) arrays of one shape, got {pred.shape}, {true.shape}"
        )
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be a fraction in (0, 1], got {tail!r}")
    if not groups:
        raise ValueError("groups must name at least one oscillator")
    q_idx = [g[0] for g in groups]
    n_tail = max(1, int(round(tail * true.shape[1])))

    def amp(y):
        return np.sqrt(np.mean(y[:, -n_tail:, q_idx] ** 2, axis=1))  # (N, n)

    a_true = amp(true)
    return float(np.mean(np.abs(amp(pred) - a_true) / np.maximum(a_true, 1e-12)))


def phase_lock_error(dphi_pred: np.ndarray, dphi_true: np.ndarray) -> float:
    """`mean |wrap(dphi_pred - dphi_true)| / pi` in `[0, 1]`: how far the forecast phase
    differences between oscillators (any shape, e.g. `(N, T)`) are from the true ones, on the
    circle (0: the same locking, 1: in anti-phase where the truth is in phase)."""
    dphi_pred, dphi_true = np.asarray(dphi_pred, np.float64), np.asarray(dphi_true, np.float64)
    if dphi_pred.shape != dphi_true.shape:
        raise ValueError(
            f"dphi_pred and dphi_true must have one shape, got {dphi_pred.shape}, {dphi_true.shape}"
        )
    return float(np.mean(np.abs(wrap_angle(dphi_pred - dphi_true)))) / np.pi


def angular_nmse_curve(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """`nmse(t)` of phase oscillators on the circle: `nmse_curve` on the features
    `(cos theta, sin theta)` of `pred`, `true` `(N, T, n)` (so angles that differ by `2 pi`
    agree), each feature divided by its variance over `true` (all trajectories and times).
    Returns `(T,)`."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape or pred.ndim != 3:
        raise ValueError(
            f"pred and true must be (N, T, n) arrays of one shape, got {pred.shape}, {true.shape}"
        )

    def features(theta):
        return np.concatenate([np.cos(theta), np.sin(theta)], axis=-1)

    f_true = features(true)
    var = f_true.reshape(-1, f_true.shape[-1]).var(0)
    return nmse_curve(features(pred), f_true, np.where(var > 0, var, 1.0))


def coverage(points: np.ndarray, reference: np.ndarray, scale: np.ndarray) -> float:
    """How far `points (M, d)` lie from the data: the median over them of the Euclidean
    distance to the nearest `reference (K, d)` state, each coordinate divided by `scale (d,)`
    (the training data's std). Deterministically strided to at most 5,000 points and 20,000
    references (a k-d tree: well under a second)."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, np.float64).reshape(-1, np.shape(points)[-1])
    reference = np.asarray(reference, np.float64).reshape(-1, np.shape(reference)[-1])
    if points.shape[0] == 0 or reference.shape[0] == 0:
        return float("nan")
    points = points[:: -(-points.shape[0] // 5000)]
    reference = reference[:: -(-reference.shape[0] // 20000)]
    dist, _ = cKDTree(reference / scale).query(points / scale)
    return float(np.median(dist))


def nanmean(values, axis=None):
    """`np.nanmean` without the warning for an empty or all-NaN slice, which stays NaN (an
    undefined AUROC, a model without a successful run); inf is kept (a forecast that blew up)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(values, dtype=float), axis=axis) if len(values) else np.nan


def column(rows, name: str) -> list[float]:
    """The values of `name` in `rows` as floats: dicts of numbers, or rows read back from a
    CSV file (strings, empty where the value is missing, which becomes NaN)."""
    return [np.nan if r.get(name) in (None, "") else float(r[name]) for r in rows]


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (NaN half-width for one value)."""
    from scipy import stats

    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean()), float(half)
