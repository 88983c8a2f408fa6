"""experiments.reproduce: the HNN code's data sets, and an end-to-end run of the `tiny` preset."""

import ast
import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
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


@pytest.mark.parametrize(
    "task, n_t, radius", [("mass_spring", 30, (0.1, 1.0)), ("pendulum", 45, (1.3, 2.3))]
)
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
    cmd = [
        sys.executable,
        "-m",
        "experiments.reproduce",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "reproduce.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(R.COLUMNS) <= set(rows[0])
    assert {(r["task"], r["model"]) for r in rows} == {
        ("mass_spring", "baseline"),
        ("mass_spring", "HNN"),
        ("pendulum", "baseline"),
        ("pendulum", "HNN"),
        ("double_pendulum", "baseline"),
        ("double_pendulum", "LNN"),
    }
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


# ------------------------------------------------------------------ the command line
def _changed_flag(name, value):
    """A command-line flag that sets field `name` to something other than `value`, and that
    value."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return ([f"--no-{flag[2:]}"] if value else [flag]), not value
    if isinstance(value, tuple):
        new = tuple(v + 5 for v in value) + (99,)
        return [flag, *map(str, new)], new
    new = value * 2 if isinstance(value, float) else value + 1
    return [flag, str(new)], new


def test_preset_picks_the_defaults_of_every_flag():
    assert R.parse([]).budgets == R.PRESETS["quick"] and R.parse([]).preset == "quick"
    for name in R.PRESETS:
        cmd = R.parse(["--preset", name])
        assert cmd.budgets == R.PRESETS[name] and cmd.preset == name
    assert R.parse(["--preset=tiny"]).budgets == R.PRESETS["tiny"]
    cmd = R.parse(
        ["--hnn-steps", "7", "--preset", "tiny", "--no-time-rescale", "--lnn-seeds", "3", "4"]
    )
    assert cmd.budgets == dataclasses.replace(
        R.PRESETS["tiny"], hnn_steps=7, time_rescale=False, lnn_seeds=(3, 4)
    )


@pytest.mark.parametrize(
    "field", [f.name for f in dataclasses.fields(R.Preset) if f.name != "name"]
)
def test_every_preset_field_is_a_flag_recorded_in_its_tasks_hash(field):
    tiny = R.PRESETS["tiny"]
    argv, value = _changed_flag(field, getattr(tiny, field))
    changed = R.parse(["--preset", "tiny", *argv]).budgets
    assert getattr(changed, field) == value
    assert changed == dataclasses.replace(tiny, **{field: value})
    dp = field.startswith("lnn_")
    for task in R.TASKS:
        moved = changed.config_hash(task) != tiny.config_hash(task)
        assert moved == (dp == (task == "double_pendulum")), (field, task)


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="hnn_steps"):
        dataclasses.replace(R.PRESETS["tiny"], hnn_steps=0)
    with pytest.raises(ValueError, match="lnn_seeds"):
        dataclasses.replace(R.PRESETS["tiny"], lnn_seeds=())


# ------------------------------------------------------------------ training through models.fit
def test_reproduce_imports_no_private_names_of_other_packages():
    """Absolute imports (models, dynamics, third parties) use public names only; the package's
    own modules and `experiments._runtime` are reached relatively."""
    pkg = ROOT / "experiments" / "reproduce"
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
                assert not any(p.startswith("_") for p in node.module.split(".")), (
                    path.name,
                    node.module,
                )
                assert not any(a.name.startswith("_") for a in node.names), (path.name, node.module)
            if isinstance(node, ast.Import):
                for a in node.names:
                    assert not any(p.startswith("_") for p in a.name.split(".")), (
                        path.name,
                        a.name,
                    )
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in ("models", "dynamics"):
                    assert not node.attr.startswith("_"), (path.name, node.attr)


@pytest.fixture
def fit_calls(monkeypatch):
    import models

    calls = []
    real_fit = models.fit

    def spy(model, dataset, **kwargs):
        calls.append(dict(kwargs, model=type(model).__name__, dataset=dataset))
        return real_fit(model, dataset, **kwargs)

    monkeypatch.setattr(models, "fit", spy)
    return calls


def test_hnn_tasks_train_through_models_fit(fit_calls):
    preset = dataclasses.replace(R.PRESETS["tiny"], hnn_steps=3, hnn_energy_rollouts=1)
    res = R.run_hnn_task("mass_spring", 0, preset)
    assert [c["model"] for c in fit_calls] == ["NeuralODE", "HNN"]
    data = R.hnn_dataset("mass_spring", 0)
    for c in fit_calls:
        assert (
            c["optimizer"] is R.hnn_optimizer()
            and c["loss"] is R.derivative_mse
            and c["steps"] == 3
        )
        x, dx = c["dataset"]  # the full batch of derivative targets
        np.testing.assert_allclose(x, data["x"], rtol=1e-6)
        np.testing.assert_allclose(dx, data["dx"], rtol=1e-6)
    for label in ("baseline", "HNN"):
        assert np.isfinite(res[label]["test_loss"]) and np.isfinite(res[label]["final_train_loss"])


def test_double_pendulum_trains_through_models_fit_and_divergence_is_training_diverged(
    fit_calls, monkeypatch
):
    import models

    preset = dataclasses.replace(R.PRESETS["tiny"], lnn_steps=3, lnn_rollouts=1, lnn_t_end=0.2)
    res = R.run_dp("baseline", 0, preset)
    (call,) = fit_calls
    assert call["dataset"] is None and call["loss"] is R.dp_loss(preset.lnn_batch)
    assert call["optimizer"] is R.lnn_optimizer(3, preset.lnn_lr, preset.lnn_grad_clip)
    assert np.isfinite(res["test_loss"])
    # targets that turn non-finite (another batch size: a loss of its own, compiled afresh)
    monkeypatch.setattr(R._lnn, "dp_accelerations", lambda y: jnp.full((y.shape[0], 2), jnp.nan))
    with pytest.raises(models.TrainingDiverged, match="at step 0"):
        R.run_dp("baseline", 0, dataclasses.replace(preset, lnn_batch=17))


def test_double_pendulum_follows_the_lnn_notebooks():
    """The set-up of the LNN notebooks: training states uniform with angles in [0, 2pi) and
    velocities in [-10, 10], the analytic accelerations as targets, rollout starts with angles
    in [0, 2pi) and velocities in [0, 0.1), the energy scale 29.4; a softplus LNN (with its
    kinetic prior) against a ReLU baseline."""
    import jax
    from flax import nnx

    import dynamics
    import models

    y = np.asarray(R.dp_states(jax.random.key(0), 4096))
    assert y.shape == (4096, 4)
    assert 0 <= y[:, :2].min() < 0.01 and 2 * np.pi - 0.01 < y[:, :2].max() < 2 * np.pi
    assert -10 <= y[:, 2:].min() < -9.9 and 9.9 < y[:, 2:].max() <= 10
    system = dynamics.DoublePendulum()
    np.testing.assert_allclose(
        np.asarray(R._lnn.dp_accelerations(jnp.asarray(y[:5]))),
        np.stack([np.asarray(system.vector_field(0.0, jnp.asarray(s)))[2:] for s in y[:5]]),
        rtol=1e-6,
    )
    y0 = R.dp_eval_states(0, 40)
    assert y0.shape == (40, 4)
    assert 0 <= y0[:, :2].min() and y0[:, :2].max() < 2 * np.pi and np.ptp(y0[:, :2]) > 5
    assert 0 <= y0[:, 2:].min() and y0[:, 2:].max() < 0.1
    assert R.MAX_POTENTIAL == pytest.approx(2 * 9.8 + 9.8)
    np.testing.assert_array_equal(R.dp_eval_states(0, 40), y0)  # seeded
    # the networks: a softplus LNN, the wrap to [-pi, pi) before it
    lnn = models.LNN(4, width=8, depth=1, rngs=nnx.Rngs(0))
    assert lnn.net.activation is jax.nn.softplus and lnn.kinetic_prior > 0
    f = R._lnn.wrapped_field(lnn)
    s = jnp.asarray([0.3, 2.0, 1.0, -1.0])
    np.testing.assert_allclose(f(s), f(s + jnp.asarray([2 * np.pi, -2 * np.pi, 0, 0])), rtol=1e-5)


def test_tiny_double_pendulum_budget_runs_end_to_end_with_finite_numbers():
    preset = dataclasses.replace(R.PRESETS["tiny"], lnn_steps=30, lnn_rollouts=4, lnn_t_end=3.0)
    for label in ("LNN", "baseline"):
        res = R.run_dp(label, 0, preset)
        for k in ("test_loss", "final_train_loss", "energy_error", "energy_error_median"):
            assert np.isfinite(res[k]) and res[k] >= 0, (label, k, res[k])
        assert res["n_nonfinite_rollouts"] == 0 and res["n_params"] > 0
