"""`experiments.extrapolation.score` picks the metrics right for each kind of system, read from
what the system declares; an exact model scores (nearly) zero on each, a wrong one does not."""

import dataclasses

import jax
import numpy as np
import pytest

import dynamics as d
import models as m
from experiments import extrapolation
from experiments.presets import PRESETS

PRESET = dataclasses.replace(PRESETS["tiny"], dt=0.1, t_train=5.0, t_end=20.0, context=10)
NEW = ("amplitude_error", "phase_lock_error", "angular_nmse", "vpt_lyapunov")


def _score(system, model_system=None):
    ds = d.make_dataset(
        system,
        key=jax.random.key(0),
        n_train=2,
        n_val=1,
        n_test=4,
        dt=PRESET.dt,
        t_train=PRESET.t_train,
        t_end=PRESET.t_end,
    )
    model = m.ParametricModel(system, init=model_system or system, fixed=(), substeps=8)
    model.prepare(ds)
    out, arrays = extrapolation.score(model, ds, PRESET)
    assert set(out) <= set(extrapolation.COLUMNS)
    return out, arrays


def _present(out):
    return {k for k in NEW if np.isfinite(out.get(k, np.nan))}


def test_self_sustained_oscillators_get_the_amplitude_error():
    omega, kappa = [1.0, 1.2, 0.9], d.ring_coupling(3, 0.1)
    vdp = d.CoupledVanDerPol(omega, 1.0, kappa)
    exact, _ = _score(vdp)
    assert _present(exact) == {"amplitude_error"}
    assert exact["amplitude_error"] < 1e-3
    # without the escapement (mu = 0) the forecast keeps its start's amplitude, not ~2
    wrong, _ = _score(vdp, d.CoupledVanDerPol(omega, 0.0, kappa))
    assert wrong["amplitude_error"] > 0.2


def test_clocks_get_amplitude_and_phase_lock_errors():
    clocks = d.HuygensClocks([1.0, 1.01])
    exact, _ = _score(clocks)
    assert _present(exact) == {"amplitude_error", "phase_lock_error"}
    assert exact["phase_lock_error"] < 1e-3 and exact["amplitude_error"] < 1e-3
    wrong, _ = _score(clocks, d.HuygensClocks([1.0, 1.2]))  # the second clock runs fast
    assert wrong["phase_lock_error"] > 0.1


def test_phase_oscillators_get_the_angular_nmse():
    kuramoto = d.Kuramoto([0.3, -0.5, 0.8, 0.1], d.ring_coupling(4, 0.2))
    exact, arrays = _score(kuramoto)
    assert _present(exact) == {"angular_nmse"}
    assert exact["angular_nmse"] < 1e-6 and np.isfinite(exact["sync_error"])
    assert arrays["angular_nmse"].shape == (len(arrays["ts_forecast"]),)
    wrong, _ = _score(kuramoto, d.Kuramoto([0.3, -0.5, 0.8, 1.1], d.ring_coupling(4, 0.2)))
    assert wrong["angular_nmse"] > 0.1


@pytest.mark.parametrize("amplitude, chaotic", [(0.5, False), (2.0, True)])
def test_vpt_in_lyapunov_times_only_in_the_chaotic_regime(amplitude, chaotic):
    out, _ = _score(d.DoublePendulum(amplitude=amplitude))
    lam = out["lyapunov_exponent"]
    print(f"double pendulum, amplitude {amplitude}: lambda {lam:.3f}")
    assert _present(out) == ({"vpt_lyapunov"} if chaotic else set())
    if chaotic:
        assert lam > 0.1
        assert out["vpt_lyapunov"] == pytest.approx(out["vpt"] * PRESET.t_train * lam)
    else:
        assert abs(lam) < 0.05


def test_conservative_chain_gets_none_of_them():
    out, _ = _score(d.HarmonicChain([1.0, 1.3], d.chain_coupling(2, 0.3)))
    assert _present(out) == set()
    assert abs(out["lyapunov_exponent"]) < 0.05 and np.isfinite(out["energy_drift"])


def _row(model, seed, **values):
    row = {c: float("nan") for c in extrapolation.COLUMNS}
    row.update(system="S", model=model, seed=seed, n_train=1, status="ok", converged=True)
    row.update(values)
    return row


def test_summary_marks_censored_valid_times_and_shows_only_the_metrics_present():
    rows = [
        _row("a", 0, vpt=3.9, vpt_censored=True),
        _row("a", 1, vpt=3.9, vpt_censored=True),
        _row("b", 0, vpt=1.0, vpt_censored=False, amplitude_error=0.1),
        _row("b", 1, vpt=2.0, vpt_censored=True, amplitude_error=0.3),
    ]
    table = extrapolation.summary_markdown(rows)
    header = table.splitlines()[0]
    assert "amplitude_error" in header and "phase_lock_error" not in header
    line_a = next(x for x in table.splitlines() if x.startswith("| S | a |"))
    line_b = next(x for x in table.splitlines() if x.startswith("| S | b |"))
    assert ">= 3.9" in line_a
    assert ">=" not in line_b  # one censored seed of two: the median is not a bound
    assert "0.2 ±" in line_b  # the amplitude error's mean over the two seeds
