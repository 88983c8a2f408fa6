"""The study's commands: resumable after SIGKILL, failures recorded, bad config refused early."""

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import extrapolation
from experiments.presets import PRESETS, get_preset, parse_model_label

ROOT = Path(__file__).resolve().parents[1]


def _env(cache):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    return env


def _cmd(out):
    return [sys.executable, "-m", "experiments.extrapolation", "--preset", "tiny", "--out", str(out)]


def _metrics(out):
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("train_seconds")
    return rows


def test_bad_preset_fails_before_any_work(tmp_path):
    out = tmp_path / "bad"
    p = subprocess.run([sys.executable, "-m", "experiments.study", "--preset", "nope", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=_env(tmp_path / "c"))
    assert p.returncode != 0
    assert "unknown preset 'nope'" in p.stderr
    assert not out.exists()


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="steps"):
        dataclasses.replace(PRESETS["tiny"], steps=0)
    with pytest.raises(ValueError, match="unknown model"):
        dataclasses.replace(PRESETS["tiny"], models=("Transformer",))
    with pytest.raises(ValueError, match="context"):
        dataclasses.replace(PRESETS["tiny"], context=1000)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    assert parse_model_label("OscillatorModel(k=3)") == ("OscillatorModel", 3)


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    cache = tmp_path / "cache"
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(ref), cwd=ROOT, env=_env(cache), check=True, capture_output=True, timeout=900)

    proc = subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # wait until the first run is finished and the second one has saved a checkpoint mid-training
    deadline = time.time() + 600
    lstm_ckpt = out / "runs" / "CoupledPendulums_n2" / "LSTM" / "seed0" / "checkpoint" / "state"
    while time.time() < deadline and proc.poll() is None:
        if lstm_ckpt.exists() and any(p.name.isdigit() for p in lstm_ckpt.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.csv").exists()
    first = out / "runs" / "CoupledPendulums_n2" / "OscillatorModel_k=2" / "seed0" / "result.json"
    assert first.exists()
    stamp = first.stat().st_mtime_ns

    subprocess.run(_cmd(out), cwd=ROOT, env=_env(cache), check=True, capture_output=True, timeout=900)
    assert first.stat().st_mtime_ns == stamp, "a finished run was recomputed"
    a, b = _metrics(ref), _metrics(out)
    assert [r["model"] for r in a] == [r["model"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("interp_nmse", "extrap_nmse", "ood_nmse", "vpt", "energy_drift"):
            np.testing.assert_allclose(float(ra[k]), float(rb[k]), rtol=1e-6, err_msg=k)


def test_diverging_model_is_recorded_and_the_study_goes_on(tmp_path):
    preset = dataclasses.replace(PRESETS["tiny"], name="diverge", lr=1e12,
                                 models=("OscillatorModel(k=2)",), steps=40, eval_every=20)
    rows = extrapolation.run(preset, tmp_path, progress=False)
    assert rows[0]["status"] == "failed" and "diverged" in rows[0]["reason"]
    assert (tmp_path / "metrics.csv").exists()
    # the failure is a finished result: a rerun does not train again
    (result,) = tmp_path.glob("runs/*/*/seed0/result.json")
    stamp = result.stat().st_mtime_ns
    again = extrapolation.run(preset, tmp_path, progress=False)
    assert result.stat().st_mtime_ns == stamp
    assert [(r["status"], r["reason"]) for r in again] == [(r["status"], r["reason"]) for r in rows]


def test_whole_study_writes_attribution_and_probes(tmp_path):
    """`experiments.study` end to end on the tiny preset: extrapolation, attribution, probes, figures."""
    out, figs = tmp_path / "out", tmp_path / "figs"
    subprocess.run([sys.executable, "-m", "experiments.study", "--preset", "tiny", "--out", str(out),
                    "--figures", str(figs), "--no-progress"], cwd=ROOT, env=_env(tmp_path / "cache"),
                   check=True, capture_output=True, timeout=900)
    with open(out / "attribution.csv") as f:
        attr = list(csv.DictReader(f))
    for col in ("system", "model", "method", "split", "coupling_auroc", "jacobian_spearman"):
        assert col in attr[0]
    assert {r["split"] for r in attr} == {"inside", "beyond"}
    # every model is scored with every method, beside the simulator's own ceiling; the structured
    # model's learned coupling is scored too (two pendulums: one edge, no non-edge, so AUROC is NaN)
    methods = {(r["model"], r["method"]) for r in attr}
    for model in ("OscillatorModel(k=2)", "LSTM"):
        for method in ("saliency", "gradient_x_input", "integrated_gradients", "true_jacobian"):
            assert (model, method) in methods
    assert ("OscillatorModel(k=2)", "learned_coupling") in methods
    with open(out / "probes.csv") as f:
        probes = list(csv.DictReader(f))
    assert {"model", "quantity", "r2", "control_r2"} <= set(probes[0])
    assert any(r["quantity"] == "energy" for r in probes)
    for name in ("motivating_CoupledPendulums.png", "coupling_recovery.png", "probes.png", "interp_vs_extrap.png"):
        assert (figs / name).stat().st_size > 1000
    # figures are redrawn from stored results alone
    redrawn = tmp_path / "redrawn"
    subprocess.run([sys.executable, "-m", "experiments.figures", "--preset", "tiny", "--out", str(out),
                    "--figures", str(redrawn)], cwd=ROOT, env=_env(tmp_path / "cache"), check=True,
                   capture_output=True, timeout=300)
    assert (redrawn / "motivating_CoupledPendulums.png").exists()
