"""The study's metric functions (`experiments.metrics`) on arrays whose answers are known."""

import numpy as np
import pytest

from experiments import metrics

TS = 0.1 * np.arange(1, 11)  # forecast times t_C = 0.1, ..., 1.0


def _traj(n=3, d=2):
    rng = np.random.default_rng(0)
    return 1.0 + rng.uniform(0, 1, (n, len(TS), d))


def test_vpt_is_the_last_valid_time_from_t_c():
    true = _traj()
    pred = true.copy()
    pred[:, 6:] += 10.0  # first invalid time index 6 -> last valid index 5
    vpt, censored = metrics.valid_prediction_time(pred, true, TS, TS[0])
    # a first-exceeding-time implementation gives 0.6, one measured from t_(C-1) 0.6 too
    assert vpt == pytest.approx(TS[5] - TS[0])
    assert not censored


def test_vpt_of_a_perfect_forecast_is_censored_at_the_horizon():
    true = _traj()
    vpt, censored = metrics.valid_prediction_time(true.copy(), true, TS, TS[0])
    assert vpt == pytest.approx(TS[-1] - TS[0])
    assert censored


def test_vpt_is_zero_when_wrong_from_the_first_step_and_nan_counts_as_wrong():
    true = _traj()
    pred = np.full_like(true, np.nan)
    assert metrics.valid_prediction_time(pred, true, TS, TS[0]) == (0.0, False)


def test_vpt_median_and_censoring_over_trajectories():
    true = _traj(n=3)
    pred = true.copy()
    pred[0, 2:] += 10.0  # valid to index 1
    pred[1, 4:] += 10.0  # valid to index 3
    # trajectory 2 is never wrong: censored at the horizon
    vpt, censored = metrics.valid_prediction_time(pred, true, TS, TS[0])
    assert vpt == pytest.approx(TS[3] - TS[0])  # median of (0.1, 0.3, 0.9)
    assert not censored  # one of three censored: the median is a real crossing
    pred[1] = true[1]
    assert metrics.valid_prediction_time(pred, true, TS, TS[0])[1]  # two of three: censored


def test_vpt_threshold_is_relative_to_the_signal():
    true = _traj()
    # an error of 0.1 * |y| everywhere: e = 0.01 < 0.025, valid; 0.2 * |y|: e = 0.04, not
    assert metrics.valid_prediction_time(1.1 * true, true, TS, TS[0])[1]
    assert metrics.valid_prediction_time(1.2 * true, true, TS, TS[0]) == (0.0, False)


def test_smape_known_values():
    true = np.ones((1, 2, 1))
    pred = np.array([[[2.0], [1.0]]])
    # |2-1| / (2+1) = 1/3 -> 66.67; a perfect step is 0; 0/0 counts as 0
    np.testing.assert_allclose(metrics.smape_curve(pred, true), [200 / 3, 0.0])
    assert metrics.smape_curve(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))[0] == 0.0
    # the opposite sign is the maximum, 200
    assert metrics.smape_curve(-true, true)[0] == pytest.approx(200.0)


def test_smape_valid_time():
    true = _traj()
    pred = true.copy()
    pred[:, 3:] *= 3.0  # sMAPE 100 from index 3 on
    vpt, censored = metrics.smape_valid_time(pred, true, TS, TS[0])
    assert vpt == pytest.approx(TS[2] - TS[0]) and not censored


def test_energy_drift_is_measured_above_the_ground_state():
    e0 = np.array([-28.0, -27.0])  # a double pendulum's energies; ground state -29.4
    e_pred = np.stack([e0 + 0.14, e0 + 0.26], axis=1)  # (N, T)
    plain = metrics.energy_drift_curve(e_pred, e0)
    above = metrics.energy_drift_curve(e_pred, e0, ground=-29.4)
    # relative to |E| the drift looks ~20x smaller than relative to the energy above ground
    np.testing.assert_allclose(
        above, [np.mean(0.14 / np.array([1.4, 2.4])), np.mean(0.26 / np.array([1.4, 2.4]))]
    )
    assert np.all(above > 10 * plain)


def test_coverage_is_the_median_nearest_neighbour_distance_in_train_units():
    reference = np.array([[0.0, 0.0], [10.0, 0.0]])
    scale = np.array([2.0, 1.0])
    points = np.array([[0.0, 1.0], [0.0, 3.0], [10.0, 2.0], [14.0, 0.0], [0.0, 0.0]])
    # distances in scaled units: 1, 3, 2, 2 (4/2 along the first axis), 0 -> median 2
    assert metrics.coverage(points, reference, scale) == pytest.approx(2.0)
    # unscaled the fourth point would be at 4: a wrong normaliser changes the answer
    assert metrics.coverage(points, reference, np.ones(2)) == pytest.approx(2.0)
    assert metrics.coverage(points[3:4], reference, scale) == pytest.approx(2.0)
    assert metrics.coverage(points[3:4], reference, np.ones(2)) == pytest.approx(4.0)


def test_mean_ci_matches_the_student_t_interval():
    m, h = metrics.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))
    assert np.isnan(metrics.mean_ci([1.0])[1])
    assert metrics.mean_ci([1.0, np.nan, 3.0])[0] == 2.0
