"""experiments.reproduce: the HNN code's data sets, and an end-to-end run of the `tiny` preset."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import reproduce as R

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spring():
    return R.hnn_dataset("mass_spring", 0)


@pytest.fixture(scope="module")
def pendulum():
    return R.hnn_dataset("pendulum", 0)


def test_spring_matches_closed_form(spring):
    # H = q^2 + p^2: q(t) = q0 cos 2t + p0 sin 2t, p(t) = p0 cos 2t - q0 sin 2t
    t, y0 = spring["t"], spring["y0"]
    c, s = np.cos(2 * t)[None], np.sin(2 * t)[None]
    q = y0[:, :1] * c + y0[:, 1:] * s
    p = y0[:, 1:] * c - y0[:, :1] * s
    np.testing.assert_allclose(spring["clean"], np.stack([q, p], -1), atol=1e-8)


@pytest.mark.parametrize("task, n_t, radius", [("mass_spring", 30, (0.1, 1.0)), ("pendulum", 45, (1.3, 2.3))])
def test_data_follow_the_hnn_code(task, n_t, radius, spring, pendulum):
    d = spring if task == "mass_spring" else pendulum
    assert d["clean"].shape == (50, n_t, 2)
    np.testing.assert_allclose(d["t"], np.linspace(0, 3, n_t))
    assert d["x"].shape == d["dx"].shape == d["test_x"].shape == d["test_dx"].shape == (25 * n_t, 2)
    # start radii in the code's range, the start on the circle of that radius
    r0 = np.linalg.norm(d["y0"], axis=-1)
    np.testing.assert_allclose(r0, d["radius"], rtol=1e-12)
    assert radius[0] <= r0.min() and r0.max() <= radius[1]
    assert r0.max() - r0.min() > 0.5 * (radius[1] - radius[0])  # spread over the range
    # noise of std 0.1 on the inputs only; targets are the exact derivatives at the clean states
    noise = d["noisy"] - d["clean"]
    assert 0.09 < noise.std() < 0.11 and abs(noise.mean()) < 0.01
    np.testing.assert_allclose(d["x"], d["noisy"][:25].reshape(-1, 2))
    np.testing.assert_allclose(d["test_x"], d["noisy"][25:].reshape(-1, 2))
    np.testing.assert_allclose(d["dx"], R.hnn_true_field(task, d["clean"][:25]).reshape(-1, 2))
    # the clean trajectories conserve the code's energy
    e = R.hnn_energy(task, d["clean"])
    np.testing.assert_allclose(e, e[:, :1] * np.ones_like(e), rtol=1e-7)


def test_data_are_seeded(spring):
    again = R.hnn_dataset("mass_spring", 0)
    np.testing.assert_array_equal(again["x"], spring["x"])
    assert not np.allclose(R.hnn_dataset("mass_spring", 1)["x"], spring["x"])


def test_energy_rollout_starts():
    x0 = R.hnn_eval_states(0, 15)
    assert x0.shape == (15, 2)
    assert np.all((np.abs(x0) >= 0.2) & (np.abs(x0) <= 1.0))


def test_unknown_preset_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown preset"):
        R.get_preset("huge")
    with pytest.raises(SystemExit) as exc:  # tyro rejects it while parsing the command line
        R.main(["--preset", "huge", "--out", str(tmp_path)])
    assert exc.value.code != 0
    assert "huge" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_tiny_run_end_to_end_and_resume(tmp_path):
    # a separate process: the command line as a user runs it, float32 and one CPU device
    env = dict(os.environ, XLA_FLAGS="")
    cmd = [sys.executable, "-m", "experiments.reproduce", "--preset", "tiny", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "reproduce.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(R.COLUMNS) <= set(rows[0])
    assert {(r["task"], r["model"]) for r in rows} == {
        ("mass_spring", "baseline"), ("mass_spring", "HNN"), ("pendulum", "baseline"), ("pendulum", "HNN"),
        ("double_pendulum", "baseline"), ("double_pendulum", "LNN")}
    by = {(r["task"], r["model"]): r for r in rows}
    for (task, model), r in by.items():
        if task != "double_pendulum":  # the tiny LNN is untrained; its rollouts may blow up
            for m in ("test_loss", "energy_mse", "energy_error"):
                assert np.isfinite(float(r[m])) and float(r[m]) > 0, (task, model, m, r[m])
        else:
            assert np.isfinite(float(r["test_loss"]))
        assert r["notes"] and r["seeds"] == "0"
    assert float(by[("mass_spring", "HNN")]["published_energy_mse"]) == pytest.approx(3.8416e-4)
    assert float(by[("double_pendulum", "LNN")]["published_energy_error"]) == pytest.approx(0.0043)
    # the symplectic structure shows after a hundred steps: the HNN conserves energy far better
    hnn, base = (float(by[("mass_spring", m)]["energy_mse"]) for m in ("HNN", "baseline"))
    assert hnn < 0.1 * base
    meta = json.loads((tmp_path / "reproduce.json").read_text())
    assert meta["preset"]["name"] == "tiny" and "jax" in meta["environment"]
    assert "git_commit" in meta["environment"]
    assert "| mass_spring | HNN |" in (tmp_path / "reproduce.md").read_text()

    # a rerun finds every row complete for this configuration and trains nothing
    messages = []
    R.run(R.get_preset("tiny"), tmp_path, log=messages.append)
    assert sum("skipped" in m for m in messages) == 3, messages
    with (tmp_path / "reproduce.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == rows
