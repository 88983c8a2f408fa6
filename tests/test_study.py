"""The study's commands: runs keyed by their configuration, presets overridable from the command
line, a user's own system and preset, resumable after SIGKILL, failures recorded, bad
configuration refused early, nothing written outside `--out`."""

import csv
import dataclasses
import functools
import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import ROOT, SUBPROCESS_TIMEOUT, study_command, subprocess_env

import dynamics
import models
from experiments import attribution, extrapolation
from experiments.presets import LSTM, OSCILLATORS_N, PRESETS, Preset, cli, get_preset
from experiments.runs import Output, RunKey
from experiments.specs import ModelSpec, OscillatorSpec, SystemSpec


def _metrics(out):
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("train_seconds")
    return rows


def _tiny(**changes) -> Preset:
    return dataclasses.replace(PRESETS["tiny"], **changes)


# --------------------------------------------------------------------------- configuration
def test_bad_preset_fails_before_any_work(tmp_path):
    out = tmp_path / "bad"
    p = subprocess.run(
        study_command("study", "--preset", "nope", "--out", str(out)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=subprocess_env(tmp_path / "c"),
    )
    assert p.returncode != 0
    assert "unknown preset 'nope'" in p.stderr
    assert not out.exists()


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="steps"):
        _tiny(steps=0)
    with pytest.raises(ValueError, match="ModelSpec"):
        _tiny(models=("LSTM",))
    with pytest.raises(ValueError, match="context"):
        _tiny(context=1000)
    with pytest.raises(ValueError, match="n_train"):
        _tiny(n_train=(4, 4))
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="cannot load preset"):
        get_preset("no_such_module:PRESET")
    with pytest.raises(ValueError, match="not an experiments.presets.Preset"):
        get_preset("experiments.presets:LSTM")
    with pytest.raises(ValueError, match="AbstractModel"):
        ModelSpec(int)
    with pytest.raises(ValueError, match="training overrides"):
        ModelSpec(models.LSTM, train={"nonsense": 1})
    with pytest.raises(ValueError, match="positive integer"):
        OscillatorSpec(k=0)


def test_labels_are_unique_per_system_and_k_counts_oscillators_not_the_beam():
    """The full preset's models resolve to distinct labels on every system; the structured model
    on Huygens' clocks has k = 2 (the clocks), and k=2 does not run twice where n = 2."""
    full = PRESETS["full"]
    extrapolation.check_labels(full)
    for spec in full.systems:
        system = spec.build()
        labels = [m.label_for(system) for m in full.models if m.applicable(system, spec) is None]
        assert len(labels) == len(set(labels)), (spec.name, labels)
        if spec.name in ("HuygensClocks", "DoublePendulum"):
            assert "OscillatorModel(k=2)" in labels and "OscillatorModel(k=3)" not in labels
            reasons = {
                m.k: m.applicable(system, spec)
                for m in full.models
                if isinstance(m, OscillatorSpec) and m.init == "lstsq"
            }
            assert reasons["n"] is None and "not fewer than" in reasons[2]
    clocks = dynamics.HuygensClocks(omega=[1.0, 1.01])
    built = OSCILLATORS_N.build(clocks, full.systems[3], full, rngs=__import__("flax").nnx.Rngs(0))
    assert built.k == 2 and built.coupling().shape == (2, 2)
    twice = dataclasses.replace(full, models=(LSTM, ModelSpec(models.NeuralODE, label="LSTM")))
    with pytest.raises(ValueError, match="appear twice"):
        extrapolation.check_labels(twice)


def test_every_preset_field_is_a_flag_and_overrides_are_recorded(capsys):
    @dataclasses.dataclass
    class Args:
        """A command."""

        progress: bool = True

    args, preset, overrides = cli(
        Args,
        [
            "--preset",
            "tiny",
            "--steps",
            "7",
            "--seeds",
            "0",
            "1",
            "--n-train",
            "1",
            "3",
            "--lr",
            "0.01",
            "--no-progress",
        ],
    )
    assert (preset.steps, preset.seeds, preset.n_train, preset.lr) == (7, (0, 1), (1, 3), 0.01)
    assert preset.systems == PRESETS["tiny"].systems and preset.name == "tiny"
    assert overrides == {"steps": 7, "seeds": (0, 1), "n_train": (1, 3), "lr": 0.01}
    assert args.progress is False
    _, same, none = cli(Args, ["--preset", "tiny"])
    assert same == PRESETS["tiny"] and none == {}
    with pytest.raises(SystemExit) as exc:
        cli(Args, ["--preset", "tiny", "--steps", "0"])
    assert exc.value.code != 0
    assert "steps must be an integer >= 1, got 0" in " ".join(capsys.readouterr().err.split())


def test_help_lists_presets_and_fields_with_their_defaults(tmp_path):
    p = subprocess.run(
        study_command("study", "--preset", "tiny", "--help"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=subprocess_env(tmp_path / "c"),
    )
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    for name in ("tiny", "quick", "full"):
        assert name in text
    fields = [
        f.name for f in dataclasses.fields(Preset) if f.name not in ("name", "systems", "models")
    ]
    for f in fields:
        assert f"--{f.replace('_', '-')}" in text, f
    assert "(default: 60)" in text  # tiny's steps


# --------------------------------------------------------------------------- runs and their keys
def test_rerun_reuses_only_an_unchanged_configuration(tmp_path, capsys):
    out = Output(tmp_path)
    preset = _tiny(models=(OSCILLATORS_N,), steps=20, eval_every=10)
    (row,) = extrapolation.run(preset, out, progress=False)
    key, _ = RunKey.of(
        preset.systems[0], preset.systems[0].build(), OSCILLATORS_N, preset, seed=0, n_train=8
    )
    result = out.run_file(key, "result.json")
    data = out.data(preset.systems[0].name, seed=0, n_train=8)
    stamps = result.stat().st_mtime_ns, data.stat().st_mtime_ns
    again = extrapolation.run(preset, out, progress=False)
    assert (result.stat().st_mtime_ns, data.stat().st_mtime_ns) == stamps, (
        "an unchanged run was recomputed"
    )
    assert json.dumps(again, sort_keys=True) == json.dumps([row], sort_keys=True)

    changed = dataclasses.replace(preset, steps=30)
    capsys.readouterr()
    (row2,) = extrapolation.run(changed, out, progress=False)
    log = capsys.readouterr().out
    assert "recomputing" in log and "steps 20 -> 30" in log
    assert row2["config_hash"] != row["config_hash"]
    assert json.loads(result.read_text())["config_hash"] == row2["config_hash"]
    assert data.stat().st_mtime_ns == stamps[1], "the data did not change and must not be rebuilt"

    # a data field changes the dataset too, which is rebuilt (its metadata carry its config)
    (row3,) = extrapolation.run(dataclasses.replace(changed, n_val=3), out, progress=False)
    assert "rebuilding" in capsys.readouterr().out
    ds = dynamics.Dataset.load(data)
    assert ds.val.shape[0] == 3 and ds.metadata["study_config"]["n_val"] == 3
    assert row3["config_hash"] not in (row["config_hash"], row2["config_hash"])


def test_loading_a_model_under_another_configuration_deletes_nothing(tmp_path):
    """`load_model` only reads: asked for a configuration that is not the stored one it raises
    `FileNotFoundError` and leaves the finished run in place (before, it cleared the run's
    directory as a stale result, losing finished work to a read)."""
    out = Output(tmp_path)
    preset = _tiny(models=(OSCILLATORS_N,), steps=20, eval_every=10)
    spec = preset.systems[0]
    (row,) = extrapolation.run(preset, out, progress=False)
    key, _ = RunKey.of(spec, spec.build(), OSCILLATORS_N, preset, seed=0, n_train=8)
    files = sorted(p.name for p in out.run_dir(key).iterdir())
    assert {"result.json", "model.npz"} <= set(files)
    with pytest.raises(FileNotFoundError, match="another configuration is left as it is"):
        extrapolation.load_model(
            spec,
            OSCILLATORS_N,
            dataclasses.replace(preset, steps=30),
            seed=0,
            n_train=8,
            output=out,
        )
    assert sorted(p.name for p in out.run_dir(key).iterdir()) == files
    model, _, loaded_key = extrapolation.load_model(
        spec, OSCILLATORS_N, preset, seed=0, n_train=8, output=out
    )
    assert loaded_key.config_hash == row["config_hash"]


class _ShortRecipeNODE(models.NeuralODE):
    """A user's model whose recipe is its own: the parent's, with one stage's budget cut."""

    derivative_share = 1.0

    def recipe(self, n_train_steps, *, budget, **kwargs):
        recipe = super().recipe(n_train_steps, budget=budget, **kwargs)
        first = dataclasses.replace(
            recipe.stages[0], steps=max(1, int(recipe.stages[0].steps * self.derivative_share))
        )
        return dataclasses.replace(recipe, stages=(first, *recipe.stages[1:]))


def test_a_changed_recipe_changes_the_run_key(monkeypatch):
    """The recipe is part of what determines a run: a model class whose `recipe` now gives
    another budget gets another hash (its stored runs are not reused), though its class,
    constructor arguments and the preset are unchanged; the same recipe gives the same hash."""
    preset = _tiny()
    spec = preset.systems[0]
    mspec = ModelSpec(_ShortRecipeNODE, kwargs={"width": 8, "depth": 1})

    def key():
        return RunKey.of(spec, spec.build(), mspec, preset, seed=0, n_train=8)

    (before, cfg), (same, _) = key(), key()
    assert same.config_hash == before.config_hash
    stages = cfg["model"]["recipe"]["stages"]
    assert stages[0]["name"] == "derivative" and stages[0]["steps"] == preset.steps
    monkeypatch.setattr(_ShortRecipeNODE, "derivative_share", 0.5)
    after, cfg = key()
    assert cfg["model"]["recipe"]["stages"][0]["steps"] == preset.steps // 2
    assert after.config_hash != before.config_hash


def test_seeds_trained_as_one_ensemble_equal_seeds_trained_one_by_one(tmp_path):
    """`ensemble_seeds=True` (the default on accelerators): each model's two seeds, each with
    its own data, pilots over a learning-rate grid and its own chosen rate, train as one
    ensemble; every run's scores equal those of the seeds trained one by one (float32
    training: up to rounding), the ensemble's checkpoints are removed, and a rerun of either
    policy reuses the runs. Training both seeds on the first seed's data, or at one rate,
    fails it."""
    preset = _tiny(seeds=(0, 1), lr_grid=(3e-3, 3e-2), pilot=0.5, steps=60, eval_every=20)
    rows = {}
    for policy in (False, True):
        out = Output(tmp_path / str(policy))
        rows[policy] = extrapolation.run(
            dataclasses.replace(preset, ensemble_seeds=policy), out, progress=False
        )
        assert not list((tmp_path / str(policy)).rglob("ensemble_seed*"))
        assert not list((tmp_path / str(policy)).rglob("checkpoint"))
    assert [extrapolation.ensembles_seeds(dataclasses.replace(preset, ensemble_seeds=True), m)
            for m in preset.models] == [True, True]  # fmt: skip
    for a, b in zip(rows[False], rows[True], strict=True):
        assert (a["model"], a["seed"], a["status"], a["choice"]) == (
            b["model"], b["seed"], b["status"], b["choice"]
        )  # fmt: skip
        for c in ("interp_nmse", "extrap_nmse", "val_rollout_nmse", "ood_nmse"):
            assert b[c] == pytest.approx(a[c], rel=2e-3), (a["model"], a["seed"], c)
        assert (a["steps_run"], a["converged"]) == (b["steps_run"], b["converged"])
    # the seeds differ, so equality is not the same run twice
    by_model = {}
    for r in rows[True]:
        by_model.setdefault(r["model"], []).append(r["interp_nmse"])
    assert all(x[0] != x[1] for x in by_model.values())
    # reused by either policy: nothing retrained
    out = Output(tmp_path / "True")
    stamps = sorted(p.stat().st_mtime_ns for p in out.results())
    again = extrapolation.run(
        dataclasses.replace(preset, ensemble_seeds=False), out, progress=False
    )
    assert sorted(p.stat().st_mtime_ns for p in out.results()) == stamps
    assert json.dumps(again, sort_keys=True) == json.dumps(rows[True], sort_keys=True)
    # every seed is attributed, and the summary gives the interval over the two
    attr = attribution.run(
        dataclasses.replace(preset, attr_traj=1, attr_horizons=3, ig_steps=2), out, progress=False
    )
    assert {(r["model"], r["seed"]) for r in attr} == {
        (r["model"], r["seed"]) for r in rows[True] if r["status"] == "ok"
    }
    with open(out.probes_csv) as f:
        assert {int(r["seed"]) for r in csv.DictReader(f)} == {0, 1}
    summary = out.attribution_summary.read_text()
    row = next(
        line
        for line in summary.splitlines()
        if "| saliency | inside | 2 |" in line and "LSTM" in line
    )
    vals = [
        float(r["coupling_auroc"])
        for r in attr
        if (r["model"], r["method"], r["split"]) == ("LSTM", "saliency", "inside")
    ]
    assert len(vals) == 2
    assert row.split("|")[7].strip().startswith(f"{np.mean(vals):.3g}")


def test_a_stale_checkpoint_of_another_configuration_is_not_resumed(tmp_path, capsys):
    out = Output(tmp_path)
    preset = _tiny(models=(OSCILLATORS_N,), steps=20, eval_every=10)
    spec = preset.systems[0]
    key, _ = RunKey.of(
        spec, spec.build(), OSCILLATORS_N, dataclasses.replace(preset, steps=40), seed=0, n_train=8
    )
    # an interrupted run of steps=40 left its config and a checkpoint behind
    (out.run_file(key, "checkpoint") / "junk").mkdir(parents=True)
    out.run_file(key, "config.json").write_text(json.dumps({"config_hash": key.config_hash}))
    (row,) = extrapolation.run(preset, out, progress=False)
    assert row["status"] == "ok"
    assert "interrupted run of another configuration" in capsys.readouterr().out
    assert not (out.run_file(key, "checkpoint") / "junk").exists()


def test_a_users_own_system_model_and_preset_run_through_the_study(tmp_path, monkeypatch):
    """A system subclass with a non-plain layout, defined outside the package, and a preset in
    the user's own module, loaded with `--preset module:NAME`."""
    (tmp_path / "my_study.py").write_text(
        textwrap.dedent("""
        import functools
        import models
        from experiments.presets import Preset, LSTM
        from experiments.specs import ModelSpec, OscillatorSpec, SystemSpec
        from helpers import ClocksOnAShelf

        SHELF = SystemSpec("ShelfClocks", functools.partial(ClocksOnAShelf, omega=[1.0, 1.2, 0.9]),
                           oscillator_kind="harmonic")
        MINE = Preset(name="mine", systems=(SHELF,),
                      models=(ModelSpec(models.NeuralODE, kwargs={"width": 8, "depth": 1},
                                        label="MyODE"),
                              OscillatorSpec(k=2)),
                      seeds=(0,), n_train=(4,), n_val=2, n_test=3, t_train=2.0, t_end=4.0, dt=0.1,
                      context=5, steps=20, eval_every=10, batch_size=4, window=5)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    preset = get_preset("my_study:MINE")
    out = Output(tmp_path / "out")
    rows = extrapolation.run(preset, out, progress=False)
    assert [(r["model"], r["status"]) for r in rows] == [
        ("MyODE", "ok"),
        ("OscillatorModel(k=2)", "n/a"),
    ]
    assert np.isfinite(rows[0]["interp_nmse"]) and "odd state of 7" in rows[1]["reason"]
    # its dataset reloads with the user's class (module:qualname in the metadata)
    ds = dynamics.Dataset.load(out.data("ShelfClocks", seed=0, n_train=4))
    assert type(ds.system).__name__ == "ClocksOnAShelf" and ds.state_dim == 7
    # attribution and probes read the declared layout: the shelf belongs to no oscillator
    rows = attribution.run(
        dataclasses.replace(preset, attr_traj=1, attr_horizons=3, ig_steps=2), out, progress=False
    )
    assert {r["method"] for r in rows} >= {"saliency", "true_jacobian"}
    assert all(r.get("reason", "") in ("", None) for r in rows)
    inside = [
        float(r["coupling_auroc"])
        for r in rows
        if r["method"] == "true_jacobian" and r["split"] == "inside"
    ]
    assert inside and np.isfinite(inside[0])


def test_attribution_on_an_empty_directory_trains_what_it_needs_or_fails_loudly(tmp_path):
    out = tmp_path / "fresh"
    p = subprocess.run(
        study_command(
            "attribution", "--preset", "tiny", "--out", str(out), "--steps", "20", "--no-progress"
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=subprocess_env(tmp_path / "c"),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out / "attribution.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"OscillatorModel(k=3)", "LSTM"}
    assert (out / "figures" / "coupling_recovery.png").exists()
    # nothing applicable: a named error, no table
    kuramoto = SystemSpec(
        "Kuramoto",
        functools.partial(dynamics.Kuramoto, omega=[0.1, 0.2], coupling=[[0.0, 0.1], [0.1, 0.0]]),
    )
    none = _tiny(systems=(kuramoto,), models=(ModelSpec(models.HNN),))
    with pytest.raises(attribution.NothingToAttribute, match="n/a or failed"):
        attribution.run(none, Output(tmp_path / "none"), progress=False)
    assert not (tmp_path / "none" / "attribution.csv").exists()


def _has_checkpoint(ckpt: Path) -> bool:
    """Whether a finished checkpoint step (`final/stage<i>/state/<n>`) is on disk. Orbax writes a
    step into a temporary directory and renames it, so a directory seen while walking the tree
    may be gone a moment later: that reads as "not yet"."""
    try:
        return any(p.name.isdigit() for p in ckpt.glob("final/stage*/state/*"))
    except FileNotFoundError:
        return False


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    cache = tmp_path / "cache"
    ref, out = tmp_path / "ref", tmp_path / "killed"
    # a budget of 3000, validated every 20: a long window in which the second run is killed
    # mid-training, however loaded the machine (the poll below may sleep for seconds)
    cmd = functools.partial(
        study_command,
        "extrapolation",
        "--preset",
        "tiny",
        "--steps",
        "3000",
        "--eval-every",
        "20",
        "--workers",
        "1",
        "--no-progress",
        "--out",
    )
    subprocess.run(
        cmd(str(ref)),
        cwd=ROOT,
        env=subprocess_env(cache),
        check=True,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
    )

    # one worker takes the runs dearest first (ModelSpec.cost): the first two in that order
    preset = _tiny(steps=3000, eval_every=20)
    todo = extrapolation.jobs(preset)
    (spec0, m0, s0, n0), (spec1, m1, s1, n1) = sorted(todo, key=lambda j: -j[1].cost)[:2]
    first_key, _ = RunKey.of(spec0, spec0.build(), m0, preset, seed=s0, n_train=n0)
    second_key, _ = RunKey.of(spec1, spec1.build(), m1, preset, seed=s1, n_train=n1)
    proc = subprocess.Popen(
        cmd(str(out)),
        cwd=ROOT,
        env=subprocess_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # wait until the first run is finished and the second has saved a checkpoint mid-training
    ckpt = Output(out).run_file(second_key, "checkpoint")  # .../final/stage<i>/state/<n>
    first = Output(out).run_file(first_key, "result.json")
    deadline = time.time() + SUBPROCESS_TIMEOUT
    while time.time() < deadline and proc.poll() is None:
        if first.exists() and _has_checkpoint(ckpt):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.csv").exists()
    assert first.exists()
    stamp = first.stat().st_mtime_ns

    subprocess.run(
        cmd(str(out)),
        cwd=ROOT,
        env=subprocess_env(cache),
        check=True,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert first.stat().st_mtime_ns == stamp, "a finished run was recomputed"
    a, b = _metrics(ref), _metrics(out)
    assert [r["model"] for r in a] == [r["model"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("interp_nmse", "extrap_nmse", "ood_nmse", "vpt", "energy_drift"):
            np.testing.assert_allclose(float(ra[k]), float(rb[k]), rtol=1e-6, err_msg=k)


def test_diverging_model_is_recorded_and_the_study_goes_on(tmp_path):
    preset = _tiny(name="diverge", lr=1e12, models=(OSCILLATORS_N,), steps=40, eval_every=20)
    out = Output(tmp_path)
    rows = extrapolation.run(preset, out, progress=False)
    assert rows[0]["status"] == "failed" and "diverged" in rows[0]["reason"]
    assert out.metrics.exists()
    # the failure is a finished result: a rerun does not train again
    (result,) = out.results()
    stamp = result.stat().st_mtime_ns
    again = extrapolation.run(preset, out, progress=False)
    assert result.stat().st_mtime_ns == stamp
    assert [(r["status"], r["reason"]) for r in again] == [(r["status"], r["reason"]) for r in rows]


# --------------------------------------------------------------------------- end to end
def test_whole_study_writes_attribution_and_probes_under_out(tmp_path):
    """`experiments.study` end to end on the tiny preset: extrapolation, attribution, probes,
    figures, all under `--out` (figures in `<out>/figures/`); nothing in the repository's
    `figures/` changes."""
    readme_figures = {p: p.stat().st_mtime_ns for p in (ROOT / "figures").rglob("*.png")}
    out = tmp_path / "out"
    subprocess.run(
        study_command("study", "--preset", "tiny", "--out", str(out), "--no-progress"),
        cwd=ROOT,
        env=subprocess_env(tmp_path / "cache"),
        check=True,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "figures").rglob("*.png")} == readme_figures
    figs = out / "figures"
    timings = json.loads((out / "timings.json").read_text())
    # the runs' compilation is its own share of their time, both measured
    assert 0 < timings["compile_seconds_sum"] and 0 < timings["train_seconds_sum"]
    with open(out / "attribution.csv") as f:
        attr = list(csv.DictReader(f))
    for col in (
        "system",
        "model",
        "n_train",
        "method",
        "split",
        "coupling_auroc",
        "jacobian_spearman",
    ):
        assert col in attr[0]
    assert {r["split"] for r in attr} == {"inside", "beyond"}
    # every model is scored with every method, beside the simulator's own ceiling; the structured
    # model's learned coupling is scored too (a chain of three: the pair (1, 3) is a non-edge)
    methods = {(r["model"], r["method"]) for r in attr}
    for model in ("OscillatorModel(k=3)", "LSTM"):
        for method in ("saliency", "gradient_x_input", "integrated_gradients", "true_jacobian"):
            assert (model, method) in methods
    learned = [float(r["coupling_auroc"]) for r in attr if r["method"] == "learned_coupling"]
    assert learned and learned[0] == 1.0
    with open(out / "probes.csv") as f:
        probes = list(csv.DictReader(f))
    assert {"model", "quantity", "r2", "control_r2"} <= set(probes[0])
    assert any(r["quantity"] == "energy" for r in probes)
    # linear spectra against the normal modes: every model linearised at rest, and the DMD of
    # the data; the structured model (least-squares identified, then trained) within 5%
    spectra = {
        (r["model"], r["quantity"]): r
        for r in probes
        if r["quantity"] in ("linearisation_freq_rel_error", "dmd_freq_rel_error")
    }
    for model in ("OscillatorModel(k=3)", "LSTM"):
        lin = spectra[(model, "linearisation_freq_rel_error")]
        assert lin["split"] == "rest_state"
        assert np.isfinite(float(lin["r2"])) or lin["reason"]
        dmd = spectra[(model, "dmd_freq_rel_error")]
        assert dmd["split"] == "observed" and 0 <= float(dmd["r2"]) < 0.2
    assert float(spectra[("OscillatorModel(k=3)", "linearisation_freq_rel_error")]["r2"]) < 0.05
    for name in (
        "motivating_CoupledPendulums.png",
        "coupling_recovery.png",
        "probes.png",
        "interp_vs_extrap.png",
        "spectra_CoupledPendulums.png",
    ):
        assert (figs / name).stat().st_size > 1000
    # figures are redrawn from stored results alone, where --figures says
    redrawn = tmp_path / "redrawn"
    subprocess.run(
        study_command("figures", "--preset", "tiny", "--out", str(out), "--figures", str(redrawn)),
        cwd=ROOT,
        env=subprocess_env(tmp_path / "cache"),
        check=True,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert (redrawn / "motivating_CoupledPendulums.png").exists()


#: sub-presets of `full` that between them run every model and every system (the whole product,
#: 105 runs, about 11 minutes on 2 cores, is the slow case; the covers take about 6)
_FULL_COVERS = {
    # every model on the system with the most structure (a beam that is no oscillator,
    # escapements, two clocks: OscillatorModel(k=n) and (k=2) coincide)
    "every_model": "systems=(HUYGENS2,)",
    # every system with the models whose set-up depends on the system most (k = n, canonical
    # coordinates)
    "every_system": "models=(OSCILLATORS_N, HNN)",
}


@pytest.mark.parametrize(
    "cover",
    ["every_model", "every_system", pytest.param("all_pairs", marks=pytest.mark.slow)],
)
def test_the_full_preset_runs_end_to_end_from_the_command_line(tmp_path, monkeypatch, cover):
    """The (system, model) pairs of the `full` preset (a cover of them, or all of them), through
    `experiments.study` with tiny budgets set by flags: each run ends `ok` or `n/a` with a
    reason, no label repeats on a system, and attribution, probes and figures come out (steps
    that cannot run at these sizes are recorded with their reason)."""
    change = _FULL_COVERS.get(cover, "")
    (tmp_path / f"full_{cover}.py").write_text(  # a module per cover: imports are cached
        "import dataclasses\n"
        "from experiments.presets import PRESETS, HUYGENS2, OSCILLATORS_N, HNN\n"
        f"PRESET = dataclasses.replace(PRESETS['full'], name='{cover}', {change})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    preset = get_preset(f"full_{cover}:PRESET")
    out = tmp_path / "full"
    # 16 training states: the fewest with which every model applies (the ESN's washout is 10)
    flags = [
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--seeds",
        "0",
        "--n-train",
        "2",
        "--n-val",
        "1",
        "--n-test",
        "2",
        "--t-train",
        "1.5",
        "--t-end",
        "3",
        "--dt",
        "0.1",
        "--context",
        "3",
        "--window",
        "3",
        "--width",
        "4",
        "--hidden",
        "4",
        "--batch-size",
        "2",
        "--attr-traj",
        "1",
        "--attr-horizons",
        "2",
        "--ig-steps",
        "2",
    ]
    p = subprocess.run(
        study_command(
            "study", "--preset", f"full_{cover}:PRESET", "--out", str(out), "--no-progress", *flags
        ),
        cwd=ROOT,
        env=subprocess_env(tmp_path / "cache", PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert p.returncode == 0, p.stderr[-5000:]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(preset.systems) * len(preset.models)
    assert {r["status"] for r in rows} <= {"ok", "n/a"}, [
        (r["system"], r["model"], r["reason"]) for r in rows if r["status"] not in ("ok", "n/a")
    ]
    assert all(r["reason"] for r in rows if r["status"] == "n/a")
    for system in {r["system"] for r in rows}:
        labels = [r["model"] for r in rows if r["system"] == system]
        assert len(labels) == len(set(labels)), labels
    huygens = {r["model"]: r["status"] for r in rows if r["system"] == "HuygensClocks"}
    assert huygens["OscillatorModel(k=2)"] == "ok" and "OscillatorModel(k=3)" not in huygens
    with open(out / "attribution.csv") as f:
        attributed = {(r["system"], r["model"]) for r in csv.DictReader(f)}
    assert attributed == {(r["system"], r["model"]) for r in rows if r["status"] == "ok"}
    assert (out / "figures" / "interp_vs_extrap.png").exists()


def test_the_readme_example_of_a_users_system_model_and_preset_runs(tmp_path):
    """The README's `mystudy.py`, executed as written, plugs into the study."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n# mystudy.py") + len("```python\n")
    namespace: dict = {}
    exec(compile(text[start : text.index("```\n", start)], "mystudy.py", "exec"), namespace)
    preset = dataclasses.replace(
        namespace["PRESET"],
        models=namespace["PRESET"].models[1:],
        seeds=(0,),
        n_train=(2,),
        n_val=1,
        n_test=2,
        t_train=2.0,
        t_end=3.0,
        dt=0.1,
        context=5,
        steps=20,
        eval_every=10,
        width=8,
        window=5,
    )
    with jax.numpy_rank_promotion("allow"):  # a user's code runs with JAX's default settings
        rows = extrapolation.run(preset, Output(tmp_path), progress=False)
    assert [(r["model"], r["status"]) for r in rows] == [
        ("OscillatorModel(k=3)", "ok"),
        ("MyODE", "ok"),
    ]
    system = preset.systems[0].build()
    assert system.conservative and system.natural_frequencies().shape == (3,)


def test_the_true_linear_coupling_is_read_off_the_declared_layout():
    """The learned-parameter figure compares the structured model's coupling with this."""
    from experiments.presets import HUYGENS2, KURAMOTO8, PENDULUMS4

    pendulums = PENDULUMS4.build()
    np.testing.assert_allclose(
        extrapolation._linear_coupling(pendulums), pendulums.coupling, atol=1e-12
    )
    huygens = HUYGENS2.build()
    clocks = extrapolation._linear_coupling(huygens)
    # through the beam's inertia, at rest: d theta_i'' / d theta_j = -m omega_j^2 / (1 - m n)
    m, om = float(huygens.mass_ratio), np.asarray(huygens.omega)
    expected = -m * om[None, :] ** 2 / (1 - m * 2) * (1 - np.eye(2))
    np.testing.assert_allclose(clocks, expected, rtol=1e-10)
    assert extrapolation._linear_coupling(KURAMOTO8.build()) is None
