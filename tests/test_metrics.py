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


# ------------------------------------------------- self-sustained and phase oscillators
T_LONG = 0.05 * np.arange(800)  # the last quarter, 200 samples, holds 4 periods of 2.5


def _cycles(amps, phases, period=2.5):
    """`(N, T, 2n + 1)` states `(q, q', extra)` of oscillators `q_i = A_i cos(w t + phi_i)`."""
    w = 2 * np.pi / period
    amps, phases = np.asarray(amps, float), np.asarray(phases, float)
    arg = w * T_LONG[None, :, None] + phases[:, None, :]
    q, p = amps[:, None, :] * np.cos(arg), -w * amps[:, None, :] * np.sin(arg)
    extra = np.full(q.shape[:2] + (1,), 7.0)  # a coordinate of no oscillator (a beam)
    return np.concatenate([q, p, extra], axis=-1)


GROUPS2 = ((0, 2), (1, 3))


def test_amplitude_error_of_a_ten_percent_larger_cycle_is_a_tenth_whatever_its_phase():
    amps = np.array([[1.0, 2.0], [0.5, 1.5]])
    true = _cycles(amps, np.zeros((2, 2)))
    pred = _cycles(1.1 * amps, np.array([[0.3, 1.0], [2.0, -1.2]]))  # other phases
    assert metrics.limit_cycle_amplitude_error(pred, true, GROUPS2) == pytest.approx(0.1)
    # one oscillator 10% too large, the other right: 0.05 on average
    pred = _cycles(amps * np.array([1.1, 1.0]), np.zeros((2, 2)))
    assert metrics.limit_cycle_amplitude_error(pred, true, GROUPS2) == pytest.approx(0.05)
    assert metrics.limit_cycle_amplitude_error(true, true, GROUPS2) == 0.0


def test_amplitude_error_reads_only_the_tail_and_the_oscillators():
    true = _cycles([[1.0, 2.0]], [[0.0, 0.0]])
    pred = true.copy()
    pred[:, :600] *= 5.0  # the transient (first three quarters) is wrong
    pred[..., 4] = -100.0  # the beam coordinate belongs to no oscillator
    assert metrics.limit_cycle_amplitude_error(pred, true, GROUPS2) == pytest.approx(0.0)
    pred[:, 600:] *= 0.8
    assert metrics.limit_cycle_amplitude_error(pred, true, GROUPS2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="tail"):
        metrics.limit_cycle_amplitude_error(pred, true, GROUPS2, tail=0.0)
    with pytest.raises(ValueError, match="shape"):
        metrics.limit_cycle_amplitude_error(pred[:, 1:], true, GROUPS2)


def test_wrap_angle_maps_to_minus_pi_pi_closed_above():
    x = np.array([0.0, np.pi, -np.pi, 3 * np.pi, 2 * np.pi + 0.5, -2 * np.pi - 0.5, 7.0])
    np.testing.assert_allclose(
        metrics.wrap_angle(x), [0.0, np.pi, np.pi, np.pi, 0.5, -0.5, 7.0 - 2 * np.pi], atol=1e-12
    )


def test_phase_lock_error_of_a_known_offset():
    rng = np.random.default_rng(1)
    dphi = rng.uniform(-np.pi, np.pi, (3, 50))
    assert metrics.phase_lock_error(dphi, dphi) == 0.0
    # an offset of 0.3 rad everywhere: 0.3 / pi, through the wrap at +-pi
    assert metrics.phase_lock_error(metrics.wrap_angle(dphi + 0.3), dphi) == pytest.approx(
        0.3 / np.pi
    )
    # in-phase forecast of anti-phase clocks: the largest error, 1
    assert metrics.phase_lock_error(np.zeros(10), np.full(10, np.pi)) == pytest.approx(1.0)
    # pi - 0.1 against -pi + 0.1 are 0.2 apart on the circle, not 2 pi - 0.2
    assert metrics.phase_lock_error(
        np.array([np.pi - 0.1]), np.array([-np.pi + 0.1])
    ) == pytest.approx(0.2 / np.pi)


def test_angular_nmse_ignores_whole_turns_and_measures_the_circle():
    rng = np.random.default_rng(2)
    theta = rng.uniform(-np.pi, np.pi, (4, 30, 3))
    np.testing.assert_allclose(
        metrics.angular_nmse_curve(theta + 2 * np.pi, theta), 0.0, atol=1e-24
    )
    plain = metrics.nmse_curve(theta + 2 * np.pi, theta, theta.reshape(-1, 3).var(0))
    assert np.all(plain > 1.0)  # the plain nmse calls a whole turn an error
    # a shift by pi: (cos, sin) -> -(cos, sin), squared error 4 cos^2 and 4 sin^2 per feature
    curve = metrics.angular_nmse_curve(theta + np.pi, theta)
    f = np.concatenate([np.cos(theta), np.sin(theta)], axis=-1)
    expected = np.mean(4 * f**2 / f.reshape(-1, 6).var(0), axis=(0, 2))
    np.testing.assert_allclose(curve, expected, rtol=1e-12)
    assert curve.shape == (30,)
