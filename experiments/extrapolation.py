"""The extrapolation study: every model on every system, inside versus beyond the training window.

`python -m experiments.extrapolation --preset quick [--out DIR] [--steps 300 --seeds 0 1 ...]`

For every system, model, seed and number of training trajectories (DESIGN.md
section 6): fit on `train`; take the first `C` states of each `test`
trajectory as context and forecast to `t_end`; score `interp_nmse` over
`(t_C, t_train]`, `extrap_nmse` over `(t_train, t_end]`, `ood_nmse` on
`test_ood`, `vpt` and, for conservative systems, `energy_drift`. Each run
writes its own directory (`experiments.runs.Output.run_dir`) atomically, keyed
by the hash of its configuration: a rerun reuses a finished run only when the
hash matches, recomputes it otherwise (saying why), and resumes interrupted
trainings from their checkpoints. A model that does not apply to a system is
recorded as `n/a` with the reason; a run whose training diverges as `failed`,
and the study goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import shutil
import time
import traceback
from pathlib import Path

import numpy as np

from . import metrics
from ._runtime import (
    environment,
    setup_jax,
    temporary_name,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from .presets import Preset, cli
from .runs import Output, RunKey, data_config
from .specs import ModelSpec, SystemSpec, config_hash, jsonable
from .training import train_model

COLUMNS = (
    "system",
    "model",
    "seed",
    "n_train",
    "status",
    "interp_nmse",
    "extrap_nmse",
    "ood_nmse",
    "vpt",
    "vpt_censored",
    "smape",
    "smape_vpt",
    "energy_drift",
    "sync_error",
    "amplitude_error",
    "phase_lock_error",
    "angular_nmse",
    "lyapunov_exponent",
    "vpt_lyapunov",
    "cont_interp_nmse",
    "cont_extrap_nmse",
    "cont_vpt",
    "cont_vpt_censored",
    "coverage_extrap",
    "cont_coverage_extrap",
    "coverage_ood",
    "val_rollout_nmse",
    "steps_run",
    "converged",
    "train_seconds",
    "compile_seconds",
    "n_params",
    "choice",
    "reason",
)
_TEXT_COLUMNS = (
    "system",
    "model",
    "status",
    "reason",
    "choice",
    "converged",
    "vpt_censored",
    "cont_vpt_censored",
)
_N_SAMPLE = 3  # trajectories whose forecasts are stored for the figures


# --------------------------------------------------------------------------- data
def load_or_make_dataset(
    spec: SystemSpec,
    preset: Preset,
    *,
    seed: int,
    n_train: int,
    output: Output,
    system=None,
    log=print,
):
    """The dataset of `(spec, seed, n_train)`, from the cache when its stored generation config
    equals the current one, otherwise (re)built and stored."""
    import jax

    import dynamics

    system = spec.build() if system is None else system
    cfg = data_config(spec, system, preset, seed=seed, n_train=n_train)
    want = config_hash(cfg)
    path = output.data(spec.name, seed=seed, n_train=n_train)
    if path.exists():
        try:
            ds = dynamics.Dataset.load(path, system=system)
            have = ds.metadata.get("study_config_hash")
            if have == want:
                return ds
            log(
                f"[data] {path} was generated with config hash {have}, "
                f"the current one is {want}; rebuilding"
            )
        except ValueError as e:  # corrupted: rebuild it (it is deterministic)
            log(f"[data] {path} is unusable ({e}); rebuilding")
    ds = dynamics.make_dataset(
        system,
        key=jax.random.key(seed),
        n_train=n_train,
        n_val=preset.n_val,
        n_test=preset.n_test,
        dt=preset.dt,
        t_train=preset.t_train,
        t_end=preset.t_end,
        relative_noise=preset.noise,
        ood_scale=preset.ood_scale,
    )
    ds.metadata.update(study_config=cfg, study_config_hash=want)
    ds.save(path)
    return ds


# --------------------------------------------------------------------------- the sweep
def jobs(preset: Preset) -> list[tuple[SystemSpec, ModelSpec, int, int]]:
    """Every (system, model, seed, n_train) of the preset, in a fixed order."""
    return [
        (s, m, seed, n)
        for s in preset.systems
        for n in preset.n_train
        for seed in preset.seeds
        for m in preset.models
    ]


def check_labels(preset: Preset) -> None:
    """Labels of the models that apply to a system must be unique on it (no two runs pooled
    under one name)."""
    for spec in preset.systems:
        system = spec.build()
        labels = [m.label_for(system) for m in preset.models if m.applicable(system, spec) is None]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(
                f"preset {preset.name!r}: models {dup} appear twice on {spec.name}; "
                "give them distinct ModelSpec labels"
            )


def n_params(model) -> int:
    import jax
    from flax import nnx

    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


@functools.cache
def _forecaster():
    """`run(graphdef, state, contexts, n_steps)`, jitted once per process: its compiled
    programs are keyed by the architecture (`graphdef`), the shapes and `n_steps`, so the
    splits of one run and the runs of one architecture share them."""
    import jax
    from flax import nnx

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def run(graphdef, state, ctx, n_steps):
        return jax.vmap(lambda c: nnx.merge(graphdef, state).forecast(c, n_steps))(ctx)

    return run


def batch_forecast(model, contexts: np.ndarray, n_steps: int) -> np.ndarray:
    """Forecasts from every context `(N, C, d)` at once (one compiled, vmapped call)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)
    dtype = jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype
    out = _forecaster()(graphdef, state, jnp.asarray(contexts, dtype), int(n_steps))
    return np.asarray(out, dtype=np.float64)


def save_model(model, path: Path) -> None:
    """Stores every variable of a trained model (parameters and statistics) and its `dt`."""
    import jax
    from flax import nnx

    leaves = jax.tree.leaves(nnx.state(model))
    tmp = temporary_name(path, ".tmp.npz")
    np.savez(tmp, dt=np.asarray(model.dt), **{f"v{i}": np.asarray(x) for i, x in enumerate(leaves)})
    tmp.replace(path)


def load_model(
    spec: SystemSpec, mspec: ModelSpec, preset: Preset, *, seed: int, n_train: int, output: Output
):
    """Rebuilds a model trained by `run_one` from its stored variables (no training); returns
    `(model, dataset, key)`. Raises `FileNotFoundError` when no finished run of the current
    configuration is stored."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    system = spec.build()
    key, _ = RunKey.of(spec, system, mspec, preset, seed=seed, n_train=n_train)
    path = output.run_file(key, "model.npz")
    stored = output.stored_result(key, discard_stale=False)  # a reader deletes nothing
    if stored is None or not path.exists():
        raise FileNotFoundError(
            f"no trained model of {key.describe()} under the current configuration at {path} "
            "(a run stored there under another configuration is left as it is)"
        )
    ds = load_or_make_dataset(
        spec, preset, seed=seed, n_train=n_train, output=output, system=system
    )
    # built as trained: with the learning rate and width chosen on val
    chosen = dataclasses.replace(preset, **json.loads(stored.get("choice") or "{}"))
    model = mspec.build(system, spec, chosen, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    with np.load(path) as z:
        n_stored = sum(1 for f in z.files if f.startswith("v"))
        if n_stored != len(leaves):
            raise ValueError(
                f"{path} holds {n_stored} variables, but {key.describe()} as built now has "
                f"{len(leaves)}: the model was stored by another version of its class"
            )
        stored = [jnp.asarray(z[f"v{i}"]) for i in range(len(leaves))]
        dt = float(z["dt"])
    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, stored))
    model.dt = dt
    return model, ds, key


def _write_arrays(path: Path, arrays: dict) -> None:
    tmp = temporary_name(path, ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _start(spec, mspec, preset, system, *, seed, n_train, output, log):
    """`(key, row, done)`: the run's key, its fresh row (config.json written; `n/a` recorded
    where the model does not apply) and whether `row` is already final."""
    key, cfg = RunKey.of(spec, system, mspec, preset, seed=seed, n_train=n_train)
    done = output.stored_result(key, cfg, log=log)
    if done is not None:
        return key, done, True
    write_json_atomic(
        output.run_file(key, "config.json"),
        {"config_hash": key.config_hash, "config": jsonable(cfg), "preset": preset.name},
    )
    row = {c: float("nan") for c in COLUMNS}
    row.update(
        system=spec.name,
        model=key.model,
        seed=seed,
        n_train=n_train,
        status="ok",
        reason="",
        config_hash=key.config_hash,
    )
    reason = mspec.applicable(system, spec)
    if reason is not None:
        row.update(status="n/a", reason=reason)
        write_json_atomic(output.run_file(key, "result.json"), row)
        return key, row, True
    return key, row, False


def _failed(row: dict, e: Exception) -> None:
    import models

    if isinstance(e, models.TrainingDiverged):
        row.update(status="failed", reason=str(e))
    else:
        row.update(status="failed", reason=f"{type(e).__name__}: {e}")
        traceback.print_exception(e)


def _finish(key, row, output: Output, preset: Preset, model=None, info=None, ds=None) -> dict:
    """Scores a trained model into `row` and stores its files (or only the row of a failed
    run, `model` None); writes `result.json` last and removes the checkpoints."""
    if model is not None:
        try:
            res = info["result"]
            row.update(
                n_params=n_params(model),
                choice=json.dumps(info["choice"], sort_keys=True),
                val_rollout_nmse=res.val_rollout_nmse,
                steps_run=res.steps_run,
                converged=bool(res.converged),
                train_seconds=res.train_seconds,
                compile_seconds=res.compile_seconds,
            )
            scores, arrays = score(model, ds, preset)
            row.update(scores)
            write_json_atomic(
                output.run_file(key, "history.json"),
                {
                    "choice": info["choice"],
                    "pilots": info["pilots"],
                    "recipe": info["recipe"],
                    "best_stage": res.best_stage,
                    "records": res.history,
                },
            )
            save_model(model, output.run_file(key, "model.npz"))
            _write_arrays(output.run_file(key, "arrays.npz"), arrays)
        except (ValueError, FloatingPointError, RuntimeError) as e:
            _failed(row, e)
    write_json_atomic(output.run_file(key, "result.json"), row)
    # finished: the result is the record
    shutil.rmtree(output.run_dir(key) / "checkpoint", ignore_errors=True)
    return row


def run_one(
    spec: SystemSpec,
    mspec: ModelSpec,
    preset: Preset,
    *,
    seed: int,
    n_train: int,
    output: Output,
    progress: bool = False,
    log=print,
) -> dict:
    """Trains and scores one run; returns its row (and stores its arrays and model)."""
    system = spec.build()
    key, row, done = _start(
        spec, mspec, preset, system, seed=seed, n_train=n_train, output=output, log=log
    )
    if done:
        return row
    try:
        ds = load_or_make_dataset(
            spec, preset, seed=seed, n_train=n_train, output=output, system=system, log=log
        )
        model, info = train_model(
            spec,
            mspec,
            system,
            preset,
            ds,
            seed=seed,
            checkpoint_dir=output.run_file(key, "checkpoint"),
            progress=progress,
        )
    except (ValueError, FloatingPointError, RuntimeError) as e:  # TrainingDiverged included
        _failed(row, e)
        return _finish(key, row, output, preset)
    return _finish(key, row, output, preset, model, info, ds)


def ensembles_seeds(preset: Preset, mspec: ModelSpec) -> bool:
    """Whether the study trains this model's seeds (at one system and n_train) as one ensemble:
    `preset.ensemble_seeds` where set; by default on accelerators only. On a 2-core CPU a
    three-member ensemble trains only 1.0 to 1.3 times faster than three fits (which share
    their compiled programs anyway), and a study with its seeds as ensembles ran 1.11 times
    slower than without (its jobs are three times coarser for the two workers; README,
    "Seeds as one ensemble, measured"). Closed-form models never (nothing to batch)."""
    import jax

    if getattr(mspec.cls, "closed_form", False) or len(preset.seeds) < 2:
        return False
    if preset.ensemble_seeds is not None:
        return bool(preset.ensemble_seeds)
    return jax.default_backend() != "cpu"


def run_seeds(
    spec: SystemSpec,
    mspec: ModelSpec,
    preset: Preset,
    *,
    seeds,
    n_train: int,
    output: Output,
    progress: bool = False,
    log=print,
) -> list[dict]:
    """The runs of `seeds` (one system, model and n_train) with the seeds still to train trained
    as one ensemble (`experiments.training.train_models`); returns their rows, in the order of
    `seeds`, as `run_one` would give them. An ensemble whose training diverges is retrained
    seed by seed, so that only the diverging seed is recorded as failed."""
    system = spec.build()
    started = [
        _start(spec, mspec, preset, system, seed=s, n_train=n_train, output=output, log=log)
        for s in seeds
    ]
    todo = [j for j, (_, _, done) in enumerate(started) if not done]
    if len(todo) < 2:
        return [
            row
            if done
            else run_one(
                spec,
                mspec,
                preset,
                seed=s,
                n_train=n_train,
                output=output,
                progress=progress,
                log=log,
            )
            for s, (_, row, done) in zip(seeds, started)
        ]
    import models

    from .training import train_models

    todo_seeds = [seeds[j] for j in todo]
    group = output.run_dir(started[todo[0]][0]).parent / (
        "ensemble_seed" + "-".join(str(s) for s in todo_seeds)
    )
    try:
        datasets = [
            load_or_make_dataset(
                spec, preset, seed=s, n_train=n_train, output=output, system=system, log=log
            )
            for s in todo_seeds
        ]
        trained = train_models(
            spec,
            mspec,
            system,
            preset,
            datasets,
            seeds=todo_seeds,
            checkpoint_dir=group / "checkpoint",
            progress=progress,
        )
    except models.TrainingDiverged as e:
        log(
            f"[ensemble] {spec.name} {mspec.label_for(system)} n_train={n_train}: {e}; "
            "training the seeds one by one"
        )
        shutil.rmtree(group, ignore_errors=True)
        return [
            run_one(
                spec,
                mspec,
                preset,
                seed=s,
                n_train=n_train,
                output=output,
                progress=progress,
                log=log,
            )
            for s in seeds
        ]
    rows = [row for _, row, _ in started]
    for j, ds, (model, info) in zip(todo, datasets, trained):
        key, row, _ = started[j]
        rows[j] = _finish(key, row, output, preset, model, info, ds)
    shutil.rmtree(group, ignore_errors=True)
    return rows


def _linear_coupling(system) -> np.ndarray | None:
    """The true linear coupling at rest in the system's declared layout: with the force
    `-kappa_ij (q_i - q_j)` on oscillator `i`, `kappa_ij = d p_i' / d q_j` (i != j) at `y = 0`;
    None for first-order systems."""
    import jax
    import jax.numpy as jnp

    if not system.second_order:
        return None
    groups = system.oscillator_groups()
    jac = np.asarray(jax.jacfwd(lambda y: system.vector_field(0.0, y))(jnp.zeros(system.state_dim)))
    q_idx, p_idx = [g[0] for g in groups], [g[1] for g in groups]
    k = jac[np.ix_(p_idx, q_idx)].copy()
    np.fill_diagonal(k, 0.0)
    return k


#: the largest Lyapunov exponent of each (system, initial states, step, horizon) measured in
#: this process: a system's runs share their test states, so it is measured once per worker
_LYAPUNOV_CACHE: dict[tuple, float] = {}
_LYAPUNOV_STATES = 4  # test initial states whose exponents are pooled (median)
_LYAPUNOV_HORIZONS = 10  # the exponent is measured over 10 t_end


def _lyapunov(system, y0s: np.ndarray, dt: float, t_end: float) -> float:
    """The median over the initial states `y0s` of the system's largest Lyapunov exponent
    (`dynamics.lyapunov_exponent`, over `10 t_end`, renormalised every 10 steps of `dt`); NaN
    where the solve fails."""
    import dynamics

    every = 10
    n_blocks = max(1, round(_LYAPUNOV_HORIZONS * t_end / (every * dt)))
    try:
        params = json.dumps(jsonable(system.parameters()), sort_keys=True)
    except (TypeError, ValueError):  # a callable field: measured afresh (no stable key)
        params = None
    key = (_qualname_of(system), params, y0s.tobytes(), dt, t_end)
    if params is not None and key in _LYAPUNOV_CACHE:
        return _LYAPUNOV_CACHE[key]
    lams = []
    for y0 in y0s:
        try:
            lam = dynamics.lyapunov_exponent(
                system, y0, dt=dt, n_steps=every * n_blocks, renormalise_every=every
            )
            lams.append(float(lam))
        except (ValueError, dynamics.SimulationError):
            lams.append(float("nan"))
    value = float(np.median(lams))
    if params is not None:
        _LYAPUNOV_CACHE[key] = value
    return value


def _qualname_of(system) -> str:
    return f"{type(system).__module__}.{type(system).__qualname__}"


def score(model, ds, preset: Preset) -> tuple[dict, dict]:
    """Forecasts every evaluation split from its first `C` states; returns the metrics and the
    arrays the figures are drawn from (DESIGN.md section 6).

    Two protocols: the held-out one (`test`, and `test_ood` at higher energies) and the
    continuation one (`test_continuation`, the training records themselves continued,
    `cont_*`). Every nmse is normalised by the test set's per-coordinate variance. Beside the
    extrapolation errors, the coverage of what is forecast: the median distance of the true
    states beyond the training window to their nearest training state, in units of the
    training data's per-coordinate std (`coverage_extrap`, `cont_coverage_extrap`,
    `coverage_ood`).

    The metrics right for each kind of system, on the held-out `test` split over the whole
    forecast `(t_C, t_end]`, read from what the system declares (no `isinstance`):

    - `energy_drift` where it is `conservative`;
    - `amplitude_error` where it is `self_sustained` (the limit-cycle amplitude over the last
      quarter of the forecast, `metrics.limit_cycle_amplitude_error`);
    - `phase_lock_error` where its `observables` hold `phase_difference*` (Huygens' clocks):
      `metrics.phase_lock_error` over `(t_C, t_end]`, averaged over the differences. With
      the default clocks that horizon covers only the start of their locking (anti-phase
      takes hundreds of time units), so it scores whether the forecast follows the slow drift
      of the phase difference, not the locked state;
    - `sync_error` where it has an `order_parameter`, and `angular_nmse` (the nmse on
      `(cos theta, sin theta)` over `(t_train, t_end]`) where its state is first-order phases
      (`angular` and not `second_order`: Kuramoto);
    - `lyapunov_exponent`, the median largest exponent of the first test states (over
      `10 t_end`), for every system, and `vpt_lyapunov = vpt * lambda` (the valid time in
      Lyapunov times, `vpt` in time units) where the forecast horizon spans at least one
      Lyapunov time, `lambda (t_end - t_C) >= 1` (the double pendulum in its chaotic
      regime); NaN elsewhere, where Lyapunov times mean nothing."""
    import jax.numpy as jnp

    import models

    system, C = ds.system, preset.context
    ts = ds.ts
    horizon = len(ts) - C
    t_f = ts[C:]
    t_c = float(ts[C - 1])  # the last context state: valid times are measured from it
    inside = t_f <= ds.t_train + 1e-9
    out, arrays = {}, {"ts_forecast": t_f}
    test = np.asarray(ds.test, dtype=np.float64)
    var = test.reshape(-1, test.shape[-1]).var(0)
    var = np.where(var > 0, var, 1.0)
    train_states = np.asarray(ds.train, np.float64).reshape(-1, test.shape[-1])
    scale = train_states.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    for split, prefix in (("test", ""), ("test_continuation", "cont_"), ("test_ood", "ood_")):
        true = np.asarray(ds.split(split), dtype=np.float64)
        if true.shape[0] == 0:  # a dataset without continuation records
            continue
        pred = batch_forecast(model, true[:, :C], horizon)
        curve = metrics.nmse_curve(pred, true[:, C:], var)
        arrays[f"nmse_{split}"] = curve
        beyond = true[:, C:][:, ~inside].reshape(-1, true.shape[-1])
        if split == "test_ood":
            out["ood_nmse"] = float(np.mean(curve))
            out["coverage_ood"] = metrics.coverage(
                true[:, C:].reshape(-1, true.shape[-1]), train_states, scale
            )
            continue
        out[f"{prefix}interp_nmse"] = float(np.mean(curve[inside]))
        out[f"{prefix}extrap_nmse"] = float(np.mean(curve[~inside]))
        vpt, censored = metrics.valid_prediction_time(pred, true[:, C:], t_f, t_c)
        out[f"{prefix}vpt"] = vpt / ds.t_train
        out[f"{prefix}vpt_censored"] = bool(censored)
        if split == "test":
            lam = _lyapunov(system, test[:_LYAPUNOV_STATES, 0], float(ds.dt), float(ts[-1]))
            out["lyapunov_exponent"] = lam
            if lam * (float(t_f[-1]) - t_c) >= 1.0:
                out["vpt_lyapunov"] = vpt * lam
            out["smape"] = float(np.mean(metrics.smape_curve(pred, true[:, C:])))
            out["smape_vpt"] = metrics.smape_valid_time(pred, true[:, C:], t_f, t_c)[0] / (
                ds.t_train
            )
        out[f"{prefix}coverage_extrap"] = metrics.coverage(beyond, train_states, scale)
        arrays[f"{prefix}sample_pred"] = pred[:_N_SAMPLE]
        arrays[f"{prefix}sample_true"] = true[:_N_SAMPLE]
        if split != "test":
            continue
        obs_pred = system.observables(jnp.asarray(pred))
        obs_true = system.observables(jnp.asarray(true))
        if system.conservative and "energy" in obs_pred:
            drift = metrics.energy_drift_curve(
                np.asarray(obs_pred["energy"]),
                np.asarray(obs_true["energy"])[:, 0],
                ground=float(system.ground_energy()),
            )
            arrays["energy_drift"] = drift
            out["energy_drift"] = float(np.mean(drift))
        if "order_parameter" in obs_pred:
            r_err = np.abs(
                np.asarray(obs_pred["order_parameter"])
                - np.asarray(obs_true["order_parameter"])[:, C:]
            )
            arrays["sync_error"] = r_err.mean(0)
            out["sync_error"] = float(r_err.mean())
        if system.angular and not system.second_order:  # the state is the phases
            angular = metrics.angular_nmse_curve(pred, true[:, C:])
            arrays["angular_nmse"] = angular
            out["angular_nmse"] = float(np.mean(angular[~inside]))
        if system.self_sustained:
            out["amplitude_error"] = metrics.limit_cycle_amplitude_error(
                pred, true[:, C:], system.oscillator_groups()
            )
        phase_keys = sorted(k for k in obs_pred if k.startswith("phase_difference"))
        if phase_keys:
            out["phase_lock_error"] = float(
                np.mean(
                    [
                        metrics.phase_lock_error(
                            np.asarray(obs_pred[k]), np.asarray(obs_true[k])[:, C:]
                        )
                        for k in phase_keys
                    ]
                )
            )
    if isinstance(model, models.OscillatorModel):
        arrays["learned_frequencies"] = np.asarray(model.frequencies())
        arrays["learned_coupling"] = np.asarray(model.coupling())
        arrays["true_frequencies"] = np.asarray(system.natural_frequencies())
        k = _linear_coupling(system)
        if k is not None:
            arrays["true_coupling"] = k
    return out, arrays


# --------------------------------------------------------------------------- the study
def job(spec, mspec, preset, seeds, n_train, output, then=None) -> tuple[list[dict], float]:
    """The runs of `seeds` (one system, model and n_train) as one job of
    `experiments.workers.map_jobs`: `run_seeds` as one ensemble where `ensembles_seeds` says
    so, otherwise `run_one` seed by seed; then `then(spec, mspec, preset, seed, n_train,
    output, row)` for each, where given (the study's attribution of the run, in the same
    worker); returns `(rows, seconds)`."""
    t0 = time.perf_counter()
    if len(seeds) > 1:
        rows = run_seeds(spec, mspec, preset, seeds=seeds, n_train=n_train, output=output)
    else:
        rows = [run_one(spec, mspec, preset, seed=seeds[0], n_train=n_train, output=output)]
    if then is not None:
        for seed, row in zip(seeds, rows):
            then(spec, mspec, preset, seed, n_train, output, row)
    return rows, time.perf_counter() - t0


def job_groups(preset: Preset) -> list[tuple[SystemSpec, ModelSpec, tuple[int, ...], int]]:
    """The runs of `jobs` as jobs: `(system, model, seeds, n_train)`, the seeds together where
    `ensembles_seeds`, one job per seed otherwise."""
    out = []
    for s in preset.systems:
        for n in preset.n_train:
            for m in preset.models:
                if ensembles_seeds(preset, m):
                    out.append((s, m, tuple(preset.seeds), n))
                else:
                    out.extend((s, m, (seed,), n) for seed in preset.seeds)
    return out


def run(
    preset: Preset,
    output: Output,
    *,
    progress: bool = True,
    overrides: dict | None = None,
    workers: int = 1,
    then=None,
) -> list[dict]:
    """Every run of the preset (`jobs`, grouped into the jobs of `job_groups`), `workers` at a
    time (`experiments.workers`; seed by seed, the dearest models, by `ModelSpec.cost`, first);
    writes `metrics.csv` and
    `summary.md` and returns the rows in the order of `jobs`."""
    from .workers import map_jobs

    check_labels(preset)
    output.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        output.config,
        {"preset": preset.as_dict(), "overrides": overrides or {}, "environment": environment()},
    )
    todo = job_groups(preset)
    # one seed's jobs before the next seed's, the dearest first: concurrent workers then
    # compile different programs, and a later seed finds its programs in the compilation cache
    order = sorted(
        range(len(todo)),
        key=lambda i: (preset.seeds.index(todo[i][2][0]), -todo[i][1].cost * len(todo[i][2])),
    )
    done = [0]
    n_runs = sum(len(seeds) for _, _, seeds, _ in todo)

    def report(i, result):
        (spec, _, seeds, n_train), (rows, seconds) = todo[i], result
        for seed, row in zip(seeds, rows):
            done[0] += 1
            if progress:
                print(
                    f"[{done[0]}/{n_runs}] {spec.name} {row['model']} n_train={n_train} "
                    f"seed {seed}: {row['status']} interp {row['interp_nmse']:.3g} "
                    f"extrap {row['extrap_nmse']:.3g} ({seconds:.1f} s"
                    + (f" for {len(seeds)} seeds" if len(seeds) > 1 else "")
                    + ")",
                    flush=True,
                )

    results = map_jobs(
        job,
        [(s, m, preset, seeds, n, output, then) for s, m, seeds, n in todo],
        workers=workers,
        on_result=report,
        order=order,
    )
    by_run = {
        (s.name, id(m), n, seed): row
        for (s, m, seeds, n), (rows, _) in zip(todo, results)
        for seed, row in zip(seeds, rows)
    }
    rows = [by_run[(s.name, id(m), n, seed)] for s, m, seed, n in jobs(preset)]
    write_metrics(rows, output)
    return rows


def write_metrics(rows: list[dict], output: Output) -> None:
    write_csv_atomic(output.metrics, COLUMNS, rows)
    write_text_atomic(output.summary, summary_markdown(rows))


def read_metrics(output: Output) -> list[dict]:
    with open(output.metrics) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in COLUMNS:
            if k not in _TEXT_COLUMNS:
                r[k] = float(r[k]) if r[k] not in ("", "nan") else float("nan")
    return rows


def is_converged(row: dict) -> bool:
    """Whether a run's recorded `converged` is true (a bool in memory and in `result.json`,
    the string `True` once read back from `metrics.csv`)."""
    return _is_true(row.get("converged"))


def _censored_flag(column: str) -> str | None:
    return {"vpt": "vpt_censored", "cont_vpt": "cont_vpt_censored"}.get(column)


def _is_true(value) -> bool:
    return value is True or str(value) in ("True", "true", "1")


def summary_markdown(rows: list[dict]) -> str:
    """A table of every system, model and n_train: mean and 95% interval over seeds."""
    cols = (
        "interp_nmse",
        "extrap_nmse",
        "cont_extrap_nmse",
        "ood_nmse",
        "vpt",
        "cont_vpt",
        "coverage_extrap",
        "cont_coverage_extrap",
        "energy_drift",
    )
    # the metrics of particular kinds of system, where some row has them
    cols += tuple(
        c
        for c in (
            "amplitude_error",
            "phase_lock_error",
            "sync_error",
            "angular_nmse",
            "vpt_lyapunov",
        )
        if any(np.isfinite(float(r.get(c, np.nan))) for r in rows if r["status"] == "ok")
    )
    lines = [
        "| system | model | n_train | seeds | converged | " + " | ".join(cols) + " |",
        "|" + "---|" * (5 + len(cols)),
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["model"], int(r["n_train"])), []).append(r)
    for (system, model, n_train), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        cells = []
        for c in cols:
            m, h = metrics.mean_ci([r.get(c, np.nan) for r in ok])
            flag = _censored_flag(c)
            # a censored valid time (most of the seeds never left the threshold) is a bound
            bound = (
                ">= "
                if flag and ok and 2 * sum(_is_true(r.get(flag)) for r in ok) > len(ok)
                else ""
            )
            cells.append(
                "-"
                if not np.isfinite(m)
                else bound + (f"{m:.3g}" if not np.isfinite(h) else f"{m:.3g} ± {h:.2g}")
            )
        bad = sorted({r["status"] for r in rs if r["status"] != "ok"})
        status = f"{len(ok)}/{len(rs)}" + (f" ({', '.join(bad)})" if bad else "")
        n_conv = sum(is_converged(r) for r in ok)
        conv = f"{n_conv}/{len(ok)}" + ("" if n_conv == len(ok) else " **not converged**")
        lines.append(
            f"| {system} | {model} | {n_train} | {status} | {conv} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    lines.append(
        "Mean ± half-width of the 95% Student-t interval over seeds (no interval for one seed). "
        "`cont_*`: the continuation protocol (the training records continued); `coverage_*`: "
        "median distance of the true states beyond the training window to the nearest "
        "training state, in training stds. "
        "`vpt` (from t_C, in units of t_train; `>=`: censored, the forecast never left the "
        "threshold within the horizon) and "
        "nmse normalised per coordinate by the test-set variance; "
        "`energy_drift` only for conservative systems. `converged`: the runs whose kept "
        "parameters come from a training stage that stopped by its rule (the validation rollout "
        "no longer improving by 1% at the stage's final learning rate) before its budget ran "
        "out; a row **not converged** measures the budget, not the model."
    )
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Args:
    """Runs the extrapolation study for a preset."""

    out: Path | None = None
    """output directory (default results/<preset>/)"""
    workers: int | None = None
    """parallel runs (default: one per CPU core on a CPU, 1 on an accelerator)"""
    progress: bool = True


def main(argv=None) -> None:
    from .workers import default_workers

    args, preset, overrides = cli(Args, argv)
    setup_jax()
    output = Output(args.out or Path("results") / preset.name)
    workers = default_workers() if args.workers is None else args.workers
    rows = run(preset, output, progress=args.progress, overrides=overrides, workers=workers)
    print(summary_markdown(rows))


if __name__ == "__main__":
    main()
