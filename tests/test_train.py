"""models.fit and models.fit_ensemble: determinism, resuming after a real kill, divergence,
early stopping, ensembles (batched, mapped, sharded over four simulated devices) and the log.

One small dataset and one small architecture throughout, so that most fits reuse one
compiled training chunk.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dynamics as d
import models as m
import models.train as train_mod

ARCH = dict(width=8, depth=1, window=5)
FIT = dict(steps=300, eval_every=5, batch_size=8, lr=1e-2, precision="float64", progress=False)
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
    return d.make_dataset(
        system,
        key=jax.random.key(0),
        n_train=8,
        n_val=4,
        n_test=3,
        dt=0.1,
        t_train=5.0,
        t_end=10.0,
        noise=0.01,
    )


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
    model, history = m.fit(
        model, ds, key=key, checkpoint_dir=cfg["ckpt"], checkpoint_every=0.0, **cfg["fit"]
    )
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    np.savez(cfg["out"], **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})
    with open(cfg["out"] + ".json", "w") as f:
        json.dump(history, f)
    """
)


def _launch(workdir, ds_path, ckpt, out):
    cfg = dict(
        data=str(ds_path),
        seed=SEEDS[0],
        arch=ARCH,
        fit=FIT,
        ckpt=str(ckpt),
        out=str(out),
        cache=str(workdir / "xla_cache"),
    )
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _saved_steps(ckpt):
    state = Path(ckpt) / "state"
    return (
        sorted(int(p.name) for p in state.iterdir() if p.name.isdigit()) if state.exists() else []
    )


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
    records = [
        json.loads(line) for line in (resumed["ckpt"] / "log.jsonl").read_text().splitlines()
    ]
    assert [r["chunk"] for r in records] == list(range(1, N_CHUNKS + 1))


def test_rerun_of_a_finished_run_restores_it(ds, resumed):
    model, history = fit_one(ds, SEEDS[0], checkpoint_dir=resumed["ckpt"])
    assert_same_params(params_of(model), resumed["params"])
    assert curve(history) == curve(resumed["history"])


def test_throttled_checkpoints_keep_the_last_chunk_and_a_rerun_restores_it(
    ds, solo, workdir, monkeypatch
):
    """With `checkpoint_every` longer than the run, only the last chunk is checkpointed (the
    log still has every chunk), the result equals the run without checkpoints, and a rerun
    restores it without a training step; a run interrupted before its first checkpoint
    starts again from scratch and still ends where the uninterrupted run does."""
    ckpt = workdir / "ckpt_throttled"
    model, history = fit_one(ds, SEEDS[0], checkpoint_dir=ckpt, checkpoint_every=1e9)
    assert _saved_steps(ckpt) == [N_CHUNKS]
    records = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    assert [r["chunk"] for r in records] == list(range(1, N_CHUNKS + 1))
    assert_same_params(params_of(model), solo[0][0])
    assert curve(history) == curve(solo[0][1])

    def no_training(*args, **kwargs):
        def chunk(*a, **k):
            raise AssertionError("a finished run was trained again")

        return chunk

    with monkeypatch.context() as patch:
        patch.setattr(train_mod, "_compiled_chunk", no_training)
        rerun, rerun_history = fit_one(ds, SEEDS[0], checkpoint_dir=ckpt, checkpoint_every=1e9)
    assert_same_params(params_of(rerun), solo[0][0])
    assert curve(rerun_history) == curve(solo[0][1])

    cut = workdir / "ckpt_throttled_cut"
    original_save = train_mod._Checkpoints.save

    def interrupted_save(self, chunk, state, record, **kw):
        original_save(self, chunk, state, record, **kw)
        if chunk == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_mod._Checkpoints, "save", interrupted_save)
        with pytest.raises(KeyboardInterrupt):
            fit_one(ds, SEEDS[0], checkpoint_dir=cut, checkpoint_every=1e9)
    assert _saved_steps(cut) == []
    resumed, resumed_history = fit_one(ds, SEEDS[0], checkpoint_dir=cut, checkpoint_every=1e9)
    assert_same_params(params_of(resumed), solo[0][0])
    assert curve(resumed_history) == curve(solo[0][1])


@pytest.mark.parametrize(
    "change", [dict(lr=2e-2), dict(steps=125), dict(batch_size=4), dict(seed=99)]
)
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
        m.fit(
            model,
            ds,
            key=key,
            **{**FIT, "lr": 1e30, "steps": 20, "eval_every": 10, "precision": "float32"},
        )
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


def test_plateau_schedule_lowers_the_rate_then_stops_at_the_smallest(ds):
    """The backwards validation set again: every plateau (`patience=1`) first halves the rate
    (`lr_decay=0.5`) and restarts from the best parameters, twice (`lr_decays=2`); the plateau
    at the quarter rate stops the run, and only that record says converged. Without the
    schedule the first plateau stops it."""
    backwards = dataclasses.replace(ds, val=np.ascontiguousarray(ds.val[:, ::-1]))
    key = jax.random.key(SEEDS[0])
    run = {**FIT, "patience": 1, "lr_decay": 0.5, "lr_decays": 2}
    model, history = m.fit(make_model(nnx.Rngs(key)), backwards, key=key, **run)
    factors = [r["lr_factor"] for r in history]
    print("rate factors:", factors)
    assert history[-1]["step"] < FIT["steps"]
    assert sorted(set(factors), reverse=True) == [1.0, 0.5, 0.25]
    assert factors == sorted(factors, reverse=True)  # the rate is only ever lowered
    assert [r["converged"] for r in history] == [False] * (len(history) - 1) + [True]
    # each decay and the stop come at an evaluation without improvement
    vals = [r["val_loss"] for r in history]
    for k in range(1, len(history)):
        if factors[k] < factors[k - 1] or k == len(history) - 1:
            assert vals[k] >= min(vals[:k]), k
    window = model.window_length(ds.n_train_steps)
    val_loss = float(model.loss(jnp.asarray(train_mod._windows_of(backwards.val, window))))
    np.testing.assert_allclose(val_loss, min(vals), rtol=1e-10)
    # without the schedule, the first plateau is the end
    _, plain = m.fit(make_model(nnx.Rngs(key)), backwards, key=key, **{**FIT, "patience": 1})
    assert len(plain) < len(history) and all(r["lr_factor"] == 1.0 for r in plain)
    # a budget that ends before the smallest rate's plateau has not converged
    _, short = m.fit(
        make_model(nnx.Rngs(key)), backwards, key=key, **{**run, "steps": len(plain) * 5}
    )
    assert short[-1]["step"] == len(plain) * 5 and not any(r["converged"] for r in short)


def test_hold_counts_patience_only_at_the_final_rate(ds):
    """The backwards validation set: with `patience=1` the first evaluation after the best
    stops a plain run; with `hold=100` of 300 steps nothing stops it on the cosine (the rate
    is high there) and the first evaluation in the hold, at the final rate, does. The decay
    ends where the hold begins, and the rate is `lr / 100` throughout it."""
    backwards = dataclasses.replace(ds, val=np.ascontiguousarray(ds.val[:, ::-1]))
    key = jax.random.key(SEEDS[0])
    run = {**FIT, "patience": 1}
    _, plain = m.fit(make_model(nnx.Rngs(key)), backwards, key=key, **run)
    _, held = m.fit(make_model(nnx.Rngs(key)), backwards, key=key, **{**run, "hold": 100})
    assert plain[-1]["step"] < 200
    hold_from = FIT["steps"] - 100
    assert held[-1]["step"] == hold_from + FIT["eval_every"] and held[-1]["converged"]
    assert not any(r["converged"] or r["bad_evals"] for r in held[:-1])
    cfg = m.TrainConfig(steps=300, lr=1e-2, hold=100, patience=1)
    total = float(train_mod._default_optimizer(cfg).init({}).hyperparams["total"])
    assert total == hold_from
    rates = [float(train_mod._schedule(c, 1e-2, cfg.warmup_steps, total)) for c in (200, 250, 300)]
    np.testing.assert_allclose(rates, 1e-4, rtol=1e-12)


@pytest.mark.parametrize("default_optimizer", [True, False])
def test_plateau_factor_scales_every_step(ds, default_optimizer):
    """The factor multiplies the rate: one chunk at rate 1e-2 with the factor at 0.5 moves
    the parameters exactly as the rate 5e-3 (same batches, same start), for the default
    optimizer (Adam on the schedule, the factor a hyperparameter in its state) and for a
    custom one (plain SGD, the factor on its updates)."""
    model = make_model(nnx.Rngs(0))
    model.prepare(ds)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cfg = m.TrainConfig(steps=20, batch_size=8, warmup=1, precision="float64")
    train = jnp.asarray(ds.train)

    def chunk(rate, factor):
        if default_optimizer:
            opt = train_mod._default_optimizer(dataclasses.replace(cfg, lr=rate))
        else:
            opt = optax.sgd(rate)
        run = train_mod._build_chunk(
            graphdef, opt, cfg, 5, train_mod._model_loss, default_optimizer=default_optimizer
        )
        state = {**train_mod._init_state(params, opt), **train_mod._limits(cfg)}
        state["lr_factor"] = jnp.asarray(factor, state["lr_factor"].dtype)
        state, _ = run(state, rest, jax.random.key(3), train, 20)
        return state["params"]

    halved, half_rate, full = chunk(1e-2, 0.5), chunk(5e-3, 1.0), chunk(1e-2, 1.0)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15), halved, half_rate
    )

    def moved(p):
        pairs = zip(jax.tree.leaves(p), jax.tree.leaves(params))
        return sum(float(jnp.sum((x - y) ** 2)) for x, y in pairs)

    assert moved(full) > 2 * moved(halved)


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
        models, histories = m.fit_ensemble(
            make_model, ds, keys=keys, strategy=strategy, **{k: v for k, v in FIT.items()}
        )
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
        np.testing.assert_allclose(
            [r["train_loss"] for r in histories[i]],
            [r["train_loss"] for r in solo[i][1]],
            rtol=1e-6,
        )


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


def test_fit_ensemble_refuses_bad_input(ds, unchecked):
    with pytest.raises(ValueError, match="keys"):
        m.fit_ensemble(make_model, ds, keys=[], steps=10)
    # a strategy outside the annotated Literal, on purpose
    with pytest.raises(ValueError, match="strategy"), unchecked():
        m.fit_ensemble(
            make_model, ds, keys=[jax.random.key(0)], steps=10, strategy="pmap", progress=False
        )
    with pytest.raises(ValueError, match="steps"):
        m.fit_ensemble(make_model, ds, keys=[jax.random.key(0)], steps=0)


def _other_data(ds, key):
    return d.make_dataset(
        ds.system,
        key=jax.random.key(key),
        n_train=8,
        n_val=4,
        n_test=3,
        dt=0.1,
        t_train=5.0,
        t_end=10.0,
        noise=0.01,
    )


@pytest.mark.parametrize("strategy", ["map", "vmap"])
def test_members_on_their_own_data_and_rates_equal_fits_alone(ds, strategy):
    """`fit_members` with one dataset and one learning rate per member (the study's seeds):
    each member ends where `fit` on its own data, at its own rate, ends."""
    datasets = [ds, _other_data(ds, 5)]
    keys = [jax.random.key(s) for s in SEEDS[:2]]
    lrs = [1e-2, 3e-3]
    kw = dict(FIT, steps=60)
    alone = [
        m.fit(make_model(nnx.Rngs(k)), x, key=k, **dict(kw, lr=lr))
        for k, x, lr in zip(keys, datasets, lrs)
    ]
    members, histories = m.fit_members(
        [make_model(nnx.Rngs(k)) for k in keys],
        datasets,
        keys=keys,
        lrs=lrs,
        strategy=strategy,
        **{k: v for k, v in kw.items() if k != "lr"},
    )
    for (model, hist), member, h in zip(alone, members, histories):
        assert_same_params(params_of(member), params_of(model), rtol=1e-7)
        np.testing.assert_allclose(
            [r["val_loss"] for r in h], [r["val_loss"] for r in hist], rtol=1e-7
        )
    # the members' normalisation comes from their own data
    assert not np.allclose(np.asarray(members[0].mean[...]), np.asarray(members[1].mean[...]))


def test_fit_members_refuses_data_and_rates_that_do_not_fit(ds):
    keys = [jax.random.key(0), jax.random.key(1)]
    two = lambda: [make_model(nnx.Rngs(k)) for k in keys]  # noqa: E731
    kw = dict(steps=10, progress=False)
    with pytest.raises(ValueError, match="3 datasets for 2 members"):
        m.fit_members(two(), [ds, ds, ds], keys=keys, **kw)
    short = d.make_dataset(
        ds.system, key=jax.random.key(3), n_train=8, n_val=4, n_test=3, dt=0.1,
        t_train=4.0, t_end=10.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="train has shape"):
        m.fit_members(two(), [ds, short], keys=keys, **kw)
    with pytest.raises(ValueError, match="one positive learning rate per member"):
        m.fit_members(two(), ds, keys=keys, lrs=[1e-3], **kw)
    with pytest.raises(ValueError, match="cannot apply to optimizer"):
        m.fit_members(two(), ds, keys=keys, lrs=[1e-3, 1e-3], optimizer=optax.sgd(1e-3), **kw)
    with pytest.raises(ValueError, match="one key per member"):
        m.fit_members(two(), ds, keys=keys[:1], **kw)
    other = [make_model(nnx.Rngs(0)), m.NeuralODE(6, width=4, depth=1, rngs=nnx.Rngs(1))]
    with pytest.raises(ValueError, match="share one architecture"):
        m.fit_members(other, ds, keys=keys, **kw)


# ------------------------------------------------------------------ TrainConfig
CONFIG_FIELDS = {k: v for k, v in FIT.items() if k != "progress"}
#: the configuration without the default optimizer's fields (they are refused beside optimizer=)
NO_OPT_FIELDS = {k: v for k, v in FIT.items() if k not in ("lr",)}


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        pytest.param("steps", 2.5, marks=pytest.mark.ill_typed),  # a wrong type
        ("steps", True),
        ("batch_size", -1),
        ("lr", 0.0),
        ("lr", float("nan")),
        pytest.param("lr", "0.1", marks=pytest.mark.ill_typed),  # a wrong type
        ("eval_every", 0),
        ("patience", 0),
        ("grad_clip", 0.0),
        ("grad_clip", float("nan")),
        ("warmup", -1),
        ("lr_decay", 1.0),
        ("lr_decay", 0.5),  # without patience: no plateau to detect
        ("lr_decays", -1),
        ("hold", 10),  # the whole budget
        ("hold", 5),  # without patience: nothing to count in it
        pytest.param("precision", "float16", marks=pytest.mark.ill_typed),  # a wrong type
    ],
)
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"{field} must .* got {re.escape(repr(value))}"):
        m.TrainConfig(**{"steps": 10, field: value})


def test_train_config_holds_plain_numbers_and_resolves_warmup():
    cfg = m.TrainConfig(steps=np.int64(200), batch_size=np.int32(4), lr=np.float32(0.5))
    assert type(cfg.steps) is int and type(cfg.batch_size) is int and type(cfg.lr) is float
    assert cfg.warmup_steps == 10 and cfg.as_dict()["warmup"] == 10
    assert dataclasses.replace(cfg, warmup=3).as_dict()["warmup"] == 3
    json.dumps(cfg.as_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3


def test_unknown_or_missing_configuration_keywords_are_refused(ds):
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="'stepz'"):
        m.fit(make_model(nnx.Rngs(key)), ds, key=key, stepz=10, progress=False)
    with pytest.raises(TypeError, match="'learning_rate'"):
        m.fit_ensemble(make_model, ds, keys=[key], steps=10, learning_rate=1e-3, progress=False)
    with pytest.raises(ValueError, match="steps is required"):
        m.fit(make_model(nnx.Rngs(key)), ds, key=key, progress=False)
    with pytest.raises(ValueError, match="lr .*default optimizer"):
        m.fit(make_model(nnx.Rngs(key)), ds, key=key, steps=10, lr=1e-3, optimizer=optax.sgd(1e-3))
    with pytest.raises(TypeError, match="TrainConfig"):
        m.fit(make_model(nnx.Rngs(key)), ds, key=key, config=dict(steps=10))


def test_config_object_equals_keywords_and_overrides_replace_fields(ds, solo):
    cfg = m.TrainConfig(**CONFIG_FIELDS)
    key = jax.random.key(SEEDS[0])
    model, history = m.fit(make_model(nnx.Rngs(key)), ds, key=key, config=cfg, progress=False)
    assert_same_params(params_of(model), solo[0][0])
    assert curve(history) == curve(solo[0][1])
    # a keyword replaces the config's field
    model, history = m.fit(
        make_model(nnx.Rngs(key)),
        ds,
        key=key,
        config=dataclasses.replace(cfg, steps=10),
        steps=FIT["steps"],
        progress=False,
    )
    assert_same_params(params_of(model), solo[0][0])


def test_fit_and_fit_ensemble_agree_on_one_config(ds):
    """One TrainConfig, with the patience and warm-up fields set, a custom loss and optimizer."""
    cfg = m.TrainConfig(
        steps=30, batch_size=4, lr=5e-3, eval_every=10, patience=2, warmup=3, precision="float64"
    )
    keys = [jax.random.key(s) for s in SEEDS[:2]]
    alone = [
        params_of(m.fit(make_model(nnx.Rngs(k)), ds, key=k, config=cfg, progress=False)[0])
        for k in keys
    ]
    members, _ = m.fit_ensemble(
        make_model, ds, keys=keys, config=cfg, strategy="map", progress=False
    )
    for a, b in zip(alone, members):
        assert_same_params(a, params_of(b), rtol=1e-10)
    assert not np.allclose(out_kernel(alone[0]), out_kernel(alone[1]))


# ------------------------------------------------------------------ optimizer= and loss=
def test_custom_optimizer_is_used(ds, solo):
    key = jax.random.key(SEEDS[0])
    initial = params_of(make_model(nnx.Rngs(key)))
    frozen, _ = m.fit(
        make_model(nnx.Rngs(key)), ds, key=key, optimizer=optax.sgd(0.0), **NO_OPT_FIELDS
    )
    assert_same_params(params_of(frozen), initial)  # a zero learning rate: nothing moves
    sgd, history = m.fit(
        make_model(nnx.Rngs(key)), ds, key=key, optimizer=optax.sgd(1e-2), **NO_OPT_FIELDS
    )
    sgd = params_of(sgd)
    assert not np.allclose(out_kernel(sgd), out_kernel(initial))
    assert not np.allclose(out_kernel(sgd), out_kernel(solo[0][0]))  # and not what Adam gives
    assert history[-1]["val_loss"] < history[0]["val_loss"]  # but it learns


class Scalar(nnx.Module):
    """One learnable number (or vector): the simplest model a custom loss can train."""

    def __init__(self, shape=()):
        self.w = nnx.Param(jnp.zeros(shape))


def test_custom_loss_is_used_on_trajectories(ds):
    """A loss whose minimum is known (every parameter 0.5) on the dataset's windows."""
    shapes = []

    def to_half(model, windows, key):
        shapes.append(windows.shape)  # at tracing
        return sum(jnp.sum((p - 0.5) ** 2) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))

    key = jax.random.key(SEEDS[0])
    model, history = m.fit(
        make_model(nnx.Rngs(key)),
        ds,
        key=key,
        loss=to_half,
        optimizer=optax.sgd(0.25),
        **NO_OPT_FIELDS,
    )
    for name, p in params_of(model).items():
        np.testing.assert_allclose(p, 0.5, atol=1e-12, err_msg=name)
    assert history[-1]["val_loss"] < 1e-20  # validation uses the same loss
    assert shapes[0] == (FIT["batch_size"], ARCH["window"], ds.state_dim)  # the drawn windows
    assert shapes[-1][1:] == (ARCH["window"], ds.state_dim)  # the validation windows


def test_custom_loss_on_full_batch_data():
    """Least squares through `fit`: any pytree of arrays is handed to the loss whole."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    w_true = np.array([0.5, -1.0, 2.0])
    data = {"x": x, "y": x @ w_true}

    def lstsq(model, batch, key):
        assert batch["x"].shape == (64, 3)
        return jnp.mean((batch["x"] @ model.w[...] - batch["y"]) ** 2)

    model, history = m.fit(
        Scalar((3,)),
        data,
        key=jax.random.key(0),
        loss=lstsq,
        steps=400,
        eval_every=100,
        lr=0.05,
        precision="float64",
        progress=False,
    )  # the default Adam schedule
    np.testing.assert_allclose(model.w[...], w_true, atol=1e-3)
    assert [r["val_loss"] for r in history] == [None] * 4  # no validation without trajectories


def test_loss_keys_depend_on_the_step_alone():
    """With `sgd(0.5)` on `sum((w - z)^2)`, each step sets `w = z`, the loss's own draw: so the
    final `w` shows the key of the last step: the same for any chunking, other for another
    step."""

    def follow(model, batch, key):
        return jnp.sum((model.w[...] - jax.random.normal(key, model.w.shape)) ** 2)

    def run(steps, eval_every, seed=0):
        model, _ = m.fit(
            Scalar((4,)),
            None,
            key=jax.random.key(seed),
            loss=follow,
            optimizer=optax.sgd(0.5),
            steps=steps,
            eval_every=eval_every,
            precision="float64",
            progress=False,
        )
        return np.asarray(model.w[...])

    a = run(6, 2)
    np.testing.assert_array_equal(a, run(6, 3))
    assert not np.allclose(a, run(5, 5))
    assert not np.allclose(a, run(6, 2, seed=1))
    assert 0.3 < np.std(np.stack([run(n, n) for n in range(1, 6)])) < 3  # fresh normal draws


def test_custom_loss_divergence_keeps_the_last_finite_parameters():
    """`w` walks from 0 towards 10, `w_k = 10 (1 - 0.9^k)`; the loss is NaN once `w > 5`, first
    at k = 7."""

    def nan_past_five(model, batch, key):
        w = model.w[...]
        return jnp.where(w > 5.0, jnp.nan, (w - 10.0) ** 2)

    model = Scalar()
    with pytest.raises(m.TrainingDiverged) as info:
        m.fit(
            model,
            None,
            key=jax.random.key(0),
            loss=nan_past_five,
            optimizer=optax.sgd(0.05),
            steps=20,
            eval_every=5,
            precision="float64",
            progress=False,
        )
    assert info.value.step == 7
    np.testing.assert_allclose(float(model.w[...]), 10 * (1 - 0.9**7), rtol=1e-12)
    np.testing.assert_allclose(info.value.last_finite_loss, (10 * 0.9**6) ** 2, rtol=1e-12)


def test_data_without_a_loss_are_refused():
    with pytest.raises(ValueError, match="needs loss="):
        m.fit(Scalar(), {"x": np.zeros(3)}, key=jax.random.key(0), steps=5)
    with pytest.raises(ValueError, match="NaN or inf"):
        m.fit(
            Scalar(),
            {"x": np.array([0.0, np.nan])},
            key=jax.random.key(0),
            steps=5,
            loss=lambda m, b, k: 0.0,
        )


def noisy_windows_loss(model, windows, key):
    """The model's loss on windows with 1% multiplicative noise drawn from the step's key."""
    return model.loss(windows * (1 + 0.01 * jax.random.normal(key, windows.shape)))


#: a custom optimizer with a schedule (its step count lives in the optimizer state)
CUSTOM_OPT = optax.chain(
    optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(1e-2, 60))
)


def test_resumed_fit_with_custom_loss_and_optimizer_equals_uninterrupted(ds, workdir, monkeypatch):
    key = jax.random.key(SEEDS[1])
    kw = dict(key=key, loss=noisy_windows_loss, optimizer=CUSTOM_OPT, **NO_OPT_FIELDS)
    whole, whole_history = m.fit(make_model(nnx.Rngs(key)), ds, **kw)

    ckpt = workdir / "ckpt_custom"
    saves = []
    original_save = train_mod._Checkpoints.save

    def interrupted_save(self, chunk, state, record, **kw):
        original_save(self, chunk, state, record, **kw)
        saves.append(chunk)
        if chunk == 4:
            raise KeyboardInterrupt  # as if killed right after the fourth checkpoint

    monkeypatch.setattr(train_mod._Checkpoints, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        m.fit(make_model(nnx.Rngs(key)), ds, checkpoint_dir=ckpt, checkpoint_every=0.0, **kw)
    assert saves == [1, 2, 3, 4]
    resumed, history = m.fit(
        make_model(nnx.Rngs(key)), ds, checkpoint_dir=ckpt, checkpoint_every=0.0, **kw
    )
    assert saves == list(range(1, N_CHUNKS + 1))  # the rerun started at chunk 5
    assert_same_params(params_of(resumed), params_of(whole))
    assert curve(history) == curve(whole_history)
    # the directory records the custom loss and optimizer: a default run is refused there
    run = json.loads((ckpt / "run.json").read_text())
    assert run["loss"].endswith("noisy_windows_loss") and run["optimizer"] == "custom"
    with pytest.raises(ValueError, match="different arguments"):
        m.fit(make_model(nnx.Rngs(key)), ds, key=key, checkpoint_dir=ckpt, **NO_OPT_FIELDS)


def test_ensemble_with_custom_loss_and_optimizer_equals_members_alone(ds):
    keys = [jax.random.key(s) for s in SEEDS[:2]]
    kw = dict(loss=noisy_windows_loss, optimizer=CUSTOM_OPT, **NO_OPT_FIELDS)
    alone = [params_of(m.fit(make_model(nnx.Rngs(k)), ds, key=k, **kw)[0]) for k in keys]
    members, _ = m.fit_ensemble(make_model, ds, keys=keys, strategy="map", **kw)
    for a, b in zip(alone, members):
        assert_same_params(a, params_of(b), rtol=1e-10)
