"""The study's metrics (DESIGN.md section 6), on numpy arrays."""

from __future__ import annotations

import numpy as np

#: the valid-prediction threshold of Botev et al. (2021)
VPT_THRESHOLD = 0.025


def nmse_curve(pred: np.ndarray, true: np.ndarray, var: np.ndarray) -> np.ndarray:
    """`nmse(t)`: squared error averaged over trajectories and coordinates, each coordinate
    divided by its variance `var (d,)` over the test set. `pred`, `true`: `(N, T, d)`."""
    return np.mean((pred - true) ** 2 / var, axis=(0, 2))


def valid_prediction_time(
    pred: np.ndarray, true: np.ndarray, ts: np.ndarray, t_start: float
) -> float:
    """Median over trajectories of the time from the forecast start `t_start` to the first `t`
    in `ts` where `mean((yhat - y)^2) / mean(y^2)` exceeds `VPT_THRESHOLD`; the whole horizon
    `ts[-1] - t_start` if never."""
    err = np.mean((pred - true) ** 2, axis=-1) / np.maximum(np.mean(true**2, axis=-1), 1e-12)
    times = []
    for e in err:
        over = np.flatnonzero(~(e <= VPT_THRESHOLD))  # NaN counts as over
        times.append((ts[over[0]] if over.size else ts[-1]) - t_start)
    return float(np.median(times))


def energy_drift_curve(energy_pred: np.ndarray, energy_0: np.ndarray) -> np.ndarray:
    """`|E(yhat_t) - E(y_0)| / |E(y_0)|` averaged over trajectories; `energy_pred (N, T)`,
    `energy_0 (N,)`."""
    return np.mean(np.abs(energy_pred - energy_0[:, None]) / np.abs(energy_0[:, None]), axis=0)


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
