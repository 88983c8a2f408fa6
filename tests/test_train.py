"""models.fit and models.fit_ensemble: determinism, resuming after a real kill, divergence,
early stopping, ensembles (batched, mapped, sharded over four simulated devices) and the log.

One small dataset and one small architecture throughout, so that most fits reuse one
compiled training chunk.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dynamics as d
import models as m
import models.train as train_mod

ARCH = dict(width=8, depth=1, window=5)
FIT = dict(steps=60, eval_every=5, batch_size=8, lr=1e-2, precision="float64", progress=False)
N_CHUNKS = FIT["steps"] // FIT["eval_every"]
SEEDS = [10, 11, 12, 13]
ROOT = Path(__file__).resolve().parents[1]


def make_model(rngs):
    return m.NeuralODE(6, **ARCH, rngs=rngs)


def fit_one(ds, seed, **kwargs):
    key = jax.random.key(seed)
    return m.fit(make_model(nnx.Rngs(key)), ds, key=key, **{**FIT, **kwargs})


def params_of(model) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def assert_same_params(a: dict, b: dict, rtol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if rtol == 0:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-12, err_msg=k)


def out_kernel(params: dict) -> np.ndarray:
    return next(v for k, v in params.items() if "['out']['kernel']" in k)


def curve(history):
    return [(r["chunk"], r["step"], r["train_loss"], r["val_loss"]) for r in history]


@pytest.fixture(scope="module")
def ds():
    system = d.HarmonicChain(np.array([1.0, 1.3, 1.7]), d.chain_coupling(3, 0.3))
    return d.make_dataset(system, key=jax.random.key(0), n_train=8, n_val=4, n_test=3, dt=0.1, t_train=5.0,
                          t_end=10.0, noise=0.01)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def solo(ds, workdir):
    """Members 0 and 1 trained alone (member 0 also writes a JSON-lines log)."""
    out = []
    for i in range(2):
        log = workdir / f"solo{i}.jsonl" if i == 0 else None
        model, history = fit_one(ds, SEEDS[i], log_path=log)
        out.append((params_of(model), history))
    return out


# ------------------------------------------------------------------ determinism and the log
def test_same_key_gives_identical_parameters(ds, solo, workdir):
    model, history = fit_one(ds, SEEDS[0], log_path=workdir / "solo0.jsonl")
    assert_same_params(params_of(model), solo[0][0])
    assert curve(history) == curve(solo[0][1])
    # and another key gives other parameters
    assert not np.array_equal(out_kernel(solo[0][0]), out_kernel(solo[1][0]))


def test_json_lines_log_has_one_record_per_chunk(solo, workdir):
    """Rewritten, not appended to, by the rerun above."""
    _, history = solo[0]
    records = [json.loads(line) for line in (workdir / "solo0.jsonl").read_text().splitlines()]
    assert len(history) == N_CHUNKS
    assert [r["chunk"] for r in records] == list(range(1, N_CHUNKS + 1))
    assert [r["step"] for r in records] == [[FIT["eval_every"] * (i + 1)] for i in range(N_CHUNKS)]
    for rec, h in zip(records, history):
        assert rec["train_loss"] == [h["train_loss"]] and rec["val_loss"] == [h["val_loss"]]
        assert np.isfinite(rec["train_loss"][0]) and np.isfinite(rec["val_loss"][0])
        assert rec["seconds"] >= 0


# ------------------------------------------------------------------ resume after SIGKILL
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_num_cpu_devices", 4)
    cfg = json.loads(sys.argv[1])
    jax.config.update("jax_compilation_cache_dir", cfg["cache"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import numpy as np
    from flax import nnx
    import dynamics as d
    import models as m

    ds = d.Dataset.load(cfg["data"])
    key = jax.random.key(cfg["seed"])
    model = m.NeuralODE(ds.state_dim, **cfg["arch"], rngs=nnx.Rngs(key))
    model, history = m.fit(model, ds, key=key, checkpoint_dir=cfg["ckpt"], **cfg["fit"])
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    np.savez(cfg["out"], **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})
    with open(cfg["out"] + ".json", "w") as f:
        json.dump(history, f)
    """
)


def _launch(workdir, ds_path, ckpt, out):
    cfg = dict(data=str(ds_path), seed=SEEDS[0], arch=ARCH, fit=FIT, ckpt=str(ckpt), out=str(out),
               cache=str(workdir / "xla_cache"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=4")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _saved_steps(ckpt):
    state = Path(ckpt) / "state"
    return sorted(int(p.name) for p in state.iterdir() if p.name.isdigit()) if state.exists() else []


@pytest.fixture(scope="module")
def resumed(ds, workdir):
    """Fit in a subprocess, SIGKILL it as soon as a checkpoint has landed, rerun it to the end."""
    ds_path = ds.save(workdir / "data.npz")
    ckpt = workdir / "ckpt"
    proc = _launch(workdir, ds_path, ckpt, workdir / "killed")
    deadline = time.monotonic() + 600
    while not _saved_steps(ckpt):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 600 s")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    killed_at = _saved_steps(ckpt)
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "killed.npz").exists()
    assert killed_at and max(killed_at) < N_CHUNKS, killed_at  # really interrupted mid-run

    proc = _launch(workdir, ds_path, ckpt, workdir / "resumed")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    with np.load(workdir / "resumed.npz") as z:
        params = dict(z)
    history = json.loads((workdir / "resumed.json").read_text())
    return dict(params=params, history=history, ckpt=ckpt, killed_at=max(killed_at))


def test_resume_after_kill_matches_uninterrupted_run(resumed, solo):
    print(f"killed after chunk {resumed['killed_at']} of {N_CHUNKS}")
    assert_same_params(resumed["params"], solo[0][0])
    assert curve(resumed["history"]) == curve(solo[0][1])
    records = [json.loads(line) for line in (resumed["ckpt"] / "log.jsonl").read_text().splitlines()]
    assert [r["chunk"] for r in records] == list(range(1, N_CHUNKS + 1))


def test_rerun_of_a_finished_run_restores_it(ds, resumed):
    model, history = fit_one(ds, SEEDS[0], checkpoint_dir=resumed["ckpt"])
    assert_same_params(params_of(model), resumed["params"])
    assert curve(history) == curve(resumed["history"])


@pytest.mark.parametrize("change", [dict(lr=2e-2), dict(steps=125), dict(batch_size=4), dict(seed=99)])
def test_resume_with_different_arguments_is_refused(ds, resumed, change):
    change = dict(change)
    seed = change.pop("seed", SEEDS[0])
    with pytest.raises(ValueError, match="different arguments"):
        fit_one(ds, seed, checkpoint_dir=resumed["ckpt"], **change)


# ------------------------------------------------------------------ divergence
def test_divergence_raises_and_keeps_finite_parameters(ds):
    """In float32 (the default precision) a learning rate of 1e30 takes the weights to ~1e30
    in one step (the first step has lr 0: warm-up), and the next forward pass overflows."""
    key = jax.random.key(SEEDS[0])
    model = make_model(nnx.Rngs(key))
    with pytest.raises(m.TrainingDiverged) as info:
        m.fit(model, ds, key=key, **{**FIT, "lr": 1e30, "steps": 20, "eval_every": 10, "precision": "float32"})
    exc = info.value
    print(exc)
    assert exc.step == 2
    assert np.isfinite(exc.last_finite_loss) and exc.last_finite_loss > 0
    msg = str(exc)
    assert f"step {exc.step}" in msg and f"{exc.last_finite_loss:.6g}" in msg
    assert exc.model is model
    assert all(np.all(np.isfinite(x)) for x in params_of(model).values())
    assert isinstance(exc, RuntimeError)


# ------------------------------------------------------------------ early stopping
def test_early_stopping_returns_the_best_validated_parameters(ds):
    """A validation set the model cannot fit (the trajectories run backwards in time): its loss
    rises as the model learns the forward dynamics, so `patience=1` stops training early."""
    backwards = dataclasses.replace(ds, val=np.ascontiguousarray(ds.val[:, ::-1]))
    key = jax.random.key(SEEDS[0])
    model, history = m.fit(make_model(nnx.Rngs(key)), backwards, key=key, **{**FIT, "patience": 1})
    print(f"stopped after {history[-1]['step']} of {FIT['steps']} steps")
    assert len(history) < N_CHUNKS
    assert history[-1]["step"] < FIT["steps"]
    vals = [r["val_loss"] for r in history]
    assert vals[-1] >= min(vals[:-1])  # stopped at the first evaluation without improvement
    # the returned parameters are those with the lowest validation loss
    window = model.window_length(ds.n_train_steps)
    val_loss = float(model.loss(jnp.asarray(train_mod._windows_of(backwards.val, window))))
    np.testing.assert_allclose(val_loss, min(vals), rtol=1e-10)


# ------------------------------------------------------------------ ensembles
def _ensemble(ds, n, strategy, sharded=True):
    keys = [jax.random.key(s) for s in SEEDS[:n]]
    seen = []

    def spy(n_members):
        s = original(n_members) if sharded else None
        seen.append(s)
        return s

    original = train_mod._member_sharding
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "_member_sharding", spy)
        models, histories = m.fit_ensemble(make_model, ds, keys=keys, strategy=strategy,
                                           **{k: v for k, v in FIT.items()})
    return [params_of(x) for x in models], histories, seen


@pytest.fixture(scope="module")
def ensembles(ds):
    return {
        "map": _ensemble(ds, 4, "map"),  # sharded over the four devices
        "vmap-one-device": _ensemble(ds, 4, "vmap", sharded=False),
    }


@pytest.mark.parametrize("name", ["map", "vmap-one-device"])
def test_ensemble_equals_members_trained_alone(name, ensembles, solo):
    params, histories, _ = ensembles[name]
    for i in range(2):
        assert_same_params(params[i], solo[i][0], rtol=1e-6)
        np.testing.assert_allclose([r["train_loss"] for r in histories[i]], [r["train_loss"] for r in solo[i][1]],
                                   rtol=1e-6)


def test_sharded_ensemble_equals_single_device(ensembles):
    assert len(jax.local_devices()) == 4
    sharded, _, seen = ensembles["map"]
    single, _, seen_single = ensembles["vmap-one-device"]
    # the members were laid out over all four devices, one each
    assert len(seen) == 1 and seen[0] is not None and len(seen[0].device_set) == 4
    assert seen[0].spec == jax.sharding.PartitionSpec("members")
    assert seen_single == [None]
    # all four members (members 0 and 1 are also checked against solo fits above)
    for a, b in zip(sharded, single):
        assert_same_params(a, b, rtol=1e-10)
    # distinct members
    assert not np.allclose(out_kernel(sharded[0]), out_kernel(sharded[2]))


def test_fit_ensemble_refuses_bad_input(ds):
    with pytest.raises(ValueError, match="keys"):
        m.fit_ensemble(make_model, ds, keys=[], steps=10)
    with pytest.raises(ValueError, match="strategy"):
        m.fit_ensemble(make_model, ds, keys=[jax.random.key(0)], steps=10, strategy="pmap", progress=False)
    with pytest.raises(ValueError, match="steps"):
        m.fit_ensemble(make_model, ds, keys=[jax.random.key(0)], steps=0)
