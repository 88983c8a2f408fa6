"""The figures draw runs whose forecasts blew up (nmse overflowing to inf, NaN, 1e300).

In a study across systems a neural ODE fitted to one record can leave the data's scale by
hundreds of orders of magnitude; matplotlib's log axes then fail to place their ticks
(`OverflowError` in `tight_layout`), which once ended a whole study before its figures. Each
figure must be drawn, with what blew up at the cap.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import numpy as np
import pytest

from experiments import figures

T = np.linspace(0.05, 4.0, 80)


def _run(nmse, drift, pred_scale):
    true = np.sin(np.linspace(0.0, 4.0, 81))[:, None] * np.ones((1, 4))
    return {
        "ts_forecast": T,
        "nmse_test": nmse,
        "energy_drift": drift,
        "cont_sample_true": true[None],
        "cont_sample_pred": pred_scale * true[None, 1:],
        "n_train": 1,
    }


@pytest.fixture
def runs():
    good = _run(1e-4 * np.exp(T), 1e-3 * T, 1.0)
    # as NVAR's forecast of a held-out state from one record: growing to 3e282, one inf, then NaN
    grows = 10.0 ** np.minimum(T * 100, 282.5)
    blown_nmse = np.where(T > 3, np.nan, np.where(np.isclose(T, 3.0), np.inf, grows))
    blown = _run(blown_nmse, blown_nmse, 1e300)
    return {("S", "LSTM"): [good], ("S", "HNN"): [blown]}


def _drawn(path) -> bool:
    image = matplotlib.image.imread(path)
    return image.ndim == 3 and image.shape[0] > 100 and np.ptp(image) > 0


def test_curves_that_blew_up_are_drawn_at_the_cap(runs, tmp_path):
    path = figures.nmse_over_time(runs, "S", 1.0, tmp_path / "nmse.png")
    assert _drawn(path)
    path = figures.energy_drift(runs, "S", tmp_path / "drift.png")
    assert _drawn(path)
    path = figures.motivating(runs, "S", 1.0, tmp_path / "motivating.png")
    assert _drawn(path)


def test_bars_that_blew_up_are_drawn_at_the_cap(tmp_path):
    rows = [
        {
            "system": "S",
            "model": m,
            "status": "ok",
            "converged": True,
            "interp_nmse": v,
            "extrap_nmse": e,
            "ood_nmse": o,
        }
        for m, v, e, o in (("LSTM", 1e-3, 1e-2, 0.5), ("NVAR", 2.8e282, float("inf"), float("nan")))
    ]
    path = figures.interp_vs_extrap(rows, tmp_path / "bars.png")
    assert _drawn(path)
