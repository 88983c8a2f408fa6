"""The extrapolation study: every model on every system, inside versus beyond the training window.

`python -m experiments.extrapolation --preset quick [--out DIR]`

For every system, model and seed (DESIGN.md section 6): fit on `train`; take
the first `C` states of each `test` trajectory as context and forecast to
`t_end`; score `interp_nmse` over `(t_C, t_train]`, `extrap_nmse` over
`(t_train, t_end]`, `ood_nmse` on `test_ood`, `vpt` and `energy_drift`.
Each run writes its own directory (`runs/<system>/<model>/seed<k>/`) atomically;
a rerun skips finished runs and resumes interrupted trainings from their
checkpoints. A run whose training diverges is recorded as failed, with the
reason, and the study goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import time
import traceback
from pathlib import Path

import numpy as np

from . import metrics as M
from ._runtime import environment, setup_jax, write_csv_atomic, write_json_atomic, write_text_atomic
from .presets import Preset, SystemSpec, get_preset, parse_model_label

COLUMNS = (
    "system", "model", "seed", "status", "interp_nmse", "extrap_nmse", "ood_nmse", "vpt",
    "energy_drift", "sync_error", "train_seconds", "n_params", "reason",
)
_N_SAMPLE = 3  # trajectories whose forecasts are stored for the figures


class NotApplicable(Exception):
    """A model that cannot be fitted to a system (e.g. an HNN on a first-order system)."""


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")


# --------------------------------------------------------------------------- data
def load_or_make_dataset(spec: SystemSpec, preset: Preset, seed: int, out: Path):
    import jax

    import dynamics

    path = out / "data" / f"{spec.name}_n{spec.n}_seed{seed}.npz"
    if path.exists():
        try:
            return dynamics.Dataset.load(path)
        except ValueError as e:  # corrupted: rebuild it (it is deterministic)
            print(f"[data] {path} is unusable ({e}); rebuilding")
    ds = dynamics.make_dataset(
        spec.build(), key=jax.random.key(seed), n_train=preset.n_train, n_val=preset.n_val,
        n_test=preset.n_test, dt=preset.dt, t_train=preset.t_train, t_end=preset.t_end,
        noise=preset.noise, ood_scale=preset.ood_scale,
    )
    ds.save(path)
    return ds


# --------------------------------------------------------------------------- models
def build_model(label: str, system, preset: Preset, spec: SystemSpec, *, seed: int):
    from flax import nnx

    import models

    name, k = parse_model_label(label)
    d = system.state_dim
    rngs = nnx.Rngs(seed)
    canonical = name != "LSTM" and name != "NeuralODE"
    if canonical and not system.second_order:
        raise NotApplicable(f"{name} needs a canonical (q, p) state; {type(system).__name__} is first order")
    if name == "LSTM":
        return models.LSTM(d, hidden=preset.hidden, rngs=rngs)
    if name == "OscillatorModel":
        k = d // 2 if k == "n" else k
        return models.OscillatorModel(d, k=k, kind=spec.kind, window=preset.window, rngs=rngs)
    return getattr(models, name)(d, width=preset.width, depth=2, window=preset.window, rngs=rngs)


def model_label(label: str, system) -> str:
    name, k = parse_model_label(label)
    return f"OscillatorModel(k={system.state_dim // 2})" if k == "n" else label


def n_params(model) -> int:
    from flax import nnx

    import jax

    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def batch_forecast(model, contexts: np.ndarray, n_steps: int) -> np.ndarray:
    """Forecasts from every context `(N, C, d)` at once (one compiled, vmapped call)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)
    dtype = jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype

    @jax.jit
    def run(state, ctx):
        return jax.vmap(lambda c: nnx.merge(graphdef, state).forecast(c, n_steps))(ctx)

    return np.asarray(run(state, jnp.asarray(contexts, dtype)), dtype=np.float64)


def save_model(model, path: Path) -> None:
    """Stores every variable of a trained model (parameters and statistics) and its `dt`."""
    import jax
    from flax import nnx

    leaves = jax.tree.leaves(nnx.state(model))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, dt=np.asarray(model.dt), **{f"v{i}": np.asarray(x) for i, x in enumerate(leaves)})
    tmp.replace(path)


def load_model(out: Path, spec: SystemSpec, label: str, seed: int, preset: Preset):
    """Rebuilds a model trained by `run_one` from its stored variables (no training)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    path = out / "runs" / f"{spec.name}_n{spec.n}" / _slug(label) / f"seed{seed}" / "model.npz"
    if not path.exists():
        raise FileNotFoundError(f"no trained model at {path}: run the extrapolation study first")
    ds = load_or_make_dataset(spec, preset, seed, out)
    model = build_model(label, ds.system, preset, spec, seed=seed)
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    with np.load(path) as z:
        stored = [jnp.asarray(z[f"v{i}"]) for i in range(len(leaves))]
        dt = float(z["dt"])
    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, stored))
    model.dt = dt
    return model, ds


# --------------------------------------------------------------------------- one run
def run_one(spec: SystemSpec, label: str, seed: int, preset: Preset, out: Path, *, progress=False) -> dict:
    """Trains and scores one (system, model, seed); returns its row (and stores its arrays)."""
    import jax

    import models

    run_dir = out / "runs" / f"{spec.name}_n{spec.n}" / _slug(label) / f"seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())

    ds = load_or_make_dataset(spec, preset, seed, out)
    system = ds.system
    row = {c: float("nan") for c in COLUMNS}
    row.update(system=spec.name, model=model_label(label, system), seed=seed, status="ok", reason="")
    arrays: dict[str, np.ndarray] = {}
    try:
        model = build_model(label, system, preset, spec, seed=seed)
        row["n_params"] = n_params(model)
        steps = preset.lstm_steps if isinstance(model, models.LSTM) else preset.steps
        t0 = time.perf_counter()
        model, history = models.fit(
            model, ds, steps=steps, key=jax.random.key(1000 + seed), batch_size=preset.batch_size,
            lr=preset.lr, eval_every=preset.eval_every, checkpoint_dir=run_dir / "checkpoint",
            progress=progress,
        )
        row["train_seconds"] = time.perf_counter() - t0
        row.update(score(model, ds, preset, arrays))
        write_json_atomic(run_dir / "history.json", history)
        save_model(model, run_dir / "model.npz")
    except NotApplicable as e:
        row.update(status="n/a", reason=str(e))
    except models.TrainingDiverged as e:
        row.update(status="failed", reason=str(e))
    except (ValueError, FloatingPointError, RuntimeError) as e:
        row.update(status="failed", reason=f"{type(e).__name__}: {e}")
        traceback.print_exc()
    if arrays:
        tmp = run_dir / "arrays.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(run_dir / "arrays.npz")
    write_json_atomic(run_dir / "config.json", {"preset": preset.as_dict(), "system": spec.name,
                                                "model": label, "seed": seed})
    write_json_atomic(result_path, row)
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # finished: the result is the record
    return row


def score(model, ds, preset: Preset, arrays: dict) -> dict:
    """Forecasts `test` and `test_ood` from their first `C` states and computes the metrics."""
    system, C = ds.system, preset.context
    ts = ds.ts
    horizon = len(ts) - C
    out = {}
    for split in ("test", "test_ood"):
        true = np.asarray(ds.split(split), dtype=np.float64)
        pred = batch_forecast(model, true[:, :C], horizon)
        var = true.reshape(-1, true.shape[-1]).var(0)
        var = np.where(var > 0, var, 1.0)
        curve = M.nmse_curve(pred, true[:, C:], var)
        arrays[f"nmse_{split}"] = curve
        if split == "test":
            t_f = ts[C:]
            inside = t_f <= ds.t_train + 1e-9
            out["interp_nmse"] = float(np.mean(curve[inside]))
            out["extrap_nmse"] = float(np.mean(curve[~inside]))
            out["vpt"] = M.valid_prediction_time(pred, true[:, C:], ts[C:], ts[C - 1]) / ds.t_train
            arrays["ts_forecast"] = t_f
            arrays["sample_pred"] = pred[:_N_SAMPLE]
            arrays["sample_true"] = true[:_N_SAMPLE]
            if system.has_energy:
                e_pred = np.asarray(system.energy(pred))
                e0 = np.asarray(system.energy(true[:, 0]))
                drift = M.energy_drift_curve(e_pred, e0)
                arrays["energy_drift"] = drift
                out["energy_drift"] = float(np.mean(drift))
            if hasattr(system, "order_parameter"):
                r_err = np.abs(np.asarray(system.order_parameter(pred)) - np.asarray(system.order_parameter(true[:, C:])))
                arrays["sync_error"] = r_err.mean(0)
                out["sync_error"] = float(r_err.mean())
        else:
            out["ood_nmse"] = float(np.mean(curve))
    if hasattr(model, "frequencies"):
        arrays["learned_frequencies"] = np.asarray(model.frequencies())
        arrays["learned_coupling"] = np.asarray(model.coupling())
        if hasattr(system, "omega"):
            arrays["true_frequencies"] = np.asarray(system.omega)
        if hasattr(system, "coupling") and not callable(getattr(system, "coupling")):
            arrays["true_coupling"] = np.asarray(system.coupling)
    return out


# --------------------------------------------------------------------------- the study
def run(preset: Preset, out: Path, *, progress: bool = True) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"preset": preset.as_dict(), "environment": environment()})
    rows = []
    jobs = [(s, m, seed) for s in preset.systems for seed in preset.seeds for m in preset.models]
    for i, (spec, label, seed) in enumerate(jobs, 1):
        t0 = time.perf_counter()
        row = run_one(spec, label, seed, preset, out)
        rows.append(row)
        if progress:
            print(f"[{i}/{len(jobs)}] {spec.name} {row['model']} seed {seed}: {row['status']} "
                  f"interp {row['interp_nmse']:.3g} extrap {row['extrap_nmse']:.3g} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    write_metrics(rows, out)
    return rows


def write_metrics(rows: list[dict], out: Path) -> None:
    write_csv_atomic(out / "metrics.csv", COLUMNS, rows)
    write_text_atomic(out / "summary.md", summary_markdown(rows))


def read_metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in COLUMNS:
            if k not in ("system", "model", "status", "reason"):
                r[k] = float(r[k]) if r[k] not in ("", "nan") else float("nan")
    return rows


def summary_markdown(rows: list[dict]) -> str:
    """A table of every system and model: mean and 95% interval over seeds."""
    cols = ("interp_nmse", "extrap_nmse", "ood_nmse", "vpt", "energy_drift")
    lines = ["| system | model | seeds | " + " | ".join(cols) + " |",
             "|" + "---|" * (3 + len(cols))]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["model"]), []).append(r)
    for (system, model), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        cells = []
        for c in cols:
            m, h = M.mean_ci([r[c] for r in ok])
            cells.append("-" if not np.isfinite(m) else (f"{m:.3g}" if not np.isfinite(h) else f"{m:.3g} ± {h:.2g}"))
        status = f"{len(ok)}/{len(rs)}" + ("" if len(ok) == len(rs) else f" ({', '.join(sorted({r['status'] for r in rs if r['status'] != 'ok'}))})")
        lines.append(f"| {system} | {model} | {status} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± half-width of the 95% Student-t interval over seeds (no interval for one seed). "
                 "`vpt` in units of t_train; nmse normalised per coordinate by the test-set variance.")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Args:
    """Runs the extrapolation study for a preset."""

    preset: str = "quick"
    """tiny, quick or full"""
    out: Path | None = None
    """output directory (default results/<preset>/)"""
    progress: bool = True


def main(argv=None) -> None:
    import tyro

    args = tyro.cli(Args, args=argv)
    preset = get_preset(args.preset)
    setup_jax()
    out = args.out or Path("results") / preset.name
    rows = run(preset, out, progress=args.progress)
    print(summary_markdown(rows))


if __name__ == "__main__":
    main()
