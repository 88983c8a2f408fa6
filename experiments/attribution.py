"""The attribution study: what the trained models attend to, scored against the simulator.

`python -m experiments.attribution --preset quick [--out DIR]`

For every model of the preset (every seed and n_train; a model the
extrapolation study has already trained under the current configuration is
reused, one it has not is trained first) and a few test trajectories, the forecast
`yhat(t_C + h)` is attributed to the context with saliency, gradient times
input and integrated gradients (zero baseline: the system at rest), pooled
over the context's time lags into a `(D, D)` matrix per horizon `h`, and
scored against the simulator's own sensitivities `d y(t_C + h) / d y(t_C)`
(`models.attribution.true_jacobian`) and its coupling graph: coupling-graph
AUROC and Spearman correlation with the true Jacobian, separately inside and
beyond the training window. The simulator's Jacobian is with respect to the
last context state only, so `saliency_last_state` (the forecast's saliency with
respect to that state alone) compares like with like, while the pooled methods
measure the sensitivity to a uniform shift of the whole context; how the
saliency mass spreads over older lags (`older_lag_fraction`, `mean_lag`, on the
saliency rows) says how far back a model looks. Coupling AUROC is NaN (n/a)
where the true graph has no non-edges; the Spearman correlation is still
reported. The structured model's learned coupling matrix is scored directly too.
The LSTM's hidden states are probed (`models.probes`); every model's linearisation at rest,
and the DMD of the training data, are compared with the system's normal modes, and SINDy's
identified equations with the true ones.
Writes `attribution.csv` and `probes.csv` (a row per seed), `attribution_summary.md` (mean
and 95% interval over the seeds), the arrays behind the figures and the figures.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from . import metrics
from ._runtime import setup_jax, write_csv_atomic, write_json_atomic, write_text_atomic
from .presets import Preset, cli
from .runs import Output
from .specs import config_hash

ATTR_COLUMNS = (
    "system",
    "model",
    "n_train",
    "seed",
    "method",
    "split",
    "coupling_auroc",
    "jacobian_spearman",
    "n_traj",
    "older_lag_fraction",
    "mean_lag",
    "reason",
)
PROBE_COLUMNS = (
    "system",
    "model",
    "n_train",
    "seed",
    "quantity",
    "split",
    "r2",
    "control_r2",
    "reason",
)
#: `saliency_last_state` is the saliency with respect to the last context state alone, the
#: quantity the simulator's Jacobian `d y(t_C + h) / d y(t_C)` is; the others are pooled over
#: every context lag (the sensitivity to a uniform shift of the whole context)
METHODS = ("saliency", "saliency_last_state", "gradient_x_input", "integrated_gradients")


class NothingToAttribute(RuntimeError):
    """No model of the preset could be trained and attributed (all n/a or failed)."""


def _forecast_attributions(model, context, horizons, *, ig_steps: int = 16):
    """Attributions of `yhat(t_C + h)` to the context for every horizon `h`, in one program:
    the saliency `J[h, a, c, b] = d yhat_a(h) / d context[c, b]` `(nh, D, C, D)` (kept per lag
    for the lag maps), and gradient x input and integrated gradients (zero baseline, Gauss-
    Legendre nodes) pooled over the context's time lags, `(nh, D, D)` each, and the saliency
    with respect to the last context state alone, `J[:, :, -1, :]`."""
    import jax
    import jax.numpy as jnp

    from models.attribution import quadrature

    n_max = int(horizons.max()) + 1
    idx = jnp.asarray(horizons)

    def jac(ctx):  # (nh, D, C, D); `forecast_jacobian` is as cheap as the model allows
        return model.forecast_jacobian(ctx, n_max)[idx]

    full = jac(context)
    alphas, weights = quadrature("gausslegendre", ig_steps)
    dt = context.dtype
    along = jax.lax.map(lambda a: jac(a * context), jnp.asarray(alphas, dt))  # the path's nodes
    ig = jnp.tensordot(jnp.asarray(weights, dt), along, axes=1) * context[None, None]
    return full, {
        "saliency": full.sum(2),
        "saliency_last_state": full[:, :, -1, :],
        "gradient_x_input": (full * context[None, None]).sum(2),
        "integrated_gradients": ig.sum(2),
    }


def lag_spread(full: np.ndarray) -> tuple[float, float]:
    """How far back a model looks: from the saliency `full (nh, D, C, D)`, the share of the
    attribution mass `m_c = sum_{h,a,b} |J[h, a, c, b]|` on the context states before the last
    one, `1 - m_{C-1} / sum_c m_c`, and the mass-weighted mean lag `sum_c (C-1-c) m_c / sum_c
    m_c` in steps. A learner of the flow map needs only the last state (0 and 0); weight on
    older states is a measurable sign of reading the record rather than the state."""
    mass = np.abs(np.asarray(full, np.float64)).sum(axis=(0, 1, 3))
    total = mass.sum()
    if not np.isfinite(total) or total <= 0:
        return float("nan"), float("nan")
    lags = np.arange(mass.size)[::-1]
    return float(1.0 - mass[-1] / total), float((lags * mass).sum() / total)


def attribute_model(model, ds, preset: Preset):
    """Scores of every method for one model; also returns the maps drawn in the figures."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import models
    from models import attribution as A

    system, C, dt = ds.system, preset.context, ds.dt
    n_traj, n_horizons = min(preset.attr_traj, ds.test.shape[0]), preset.attr_horizons
    t_c = ds.ts[C - 1]
    total = len(ds.ts) - C
    # steps after the context
    horizons = np.unique(np.geomspace(1, total, n_horizons).astype(int)) - 1
    ts_abs = t_c + (horizons + 1) * dt
    graph = np.asarray(system.coupling_graph())
    fwd = jax.jit(
        lambda ctx: _forecast_attributions(model, ctx, horizons, ig_steps=preset.ig_steps)
    )
    rows, maps = [], {}
    true_all = []
    for i in range(n_traj):
        y_c = jnp.asarray(ds.test[i, C - 1])
        tj = A.true_jacobian(
            system, y_c, jnp.concatenate([jnp.asarray([t_c]), jnp.asarray(ts_abs)])
        )[1:]
        true_all.append(np.asarray(tj))
    dtype = jax.tree.leaves(nnx.state(model))[0].dtype
    per: dict[str, list] = {m: [] for m in METHODS}
    inside_h = ts_abs <= ds.t_train
    spread: dict[str, list] = {"inside": [], "beyond": []}
    for i in range(n_traj):
        full, attrs = fwd(jnp.asarray(ds.test[i, :C], dtype))
        full = np.asarray(full, dtype=np.float64)
        if i == 0:
            full0 = full
        for split, mask in (("inside", inside_h), ("beyond", ~inside_h)):
            if mask.any():
                spread[split].append(lag_spread(full[mask]))
        for method in METHODS:
            attr = np.asarray(attrs[method], dtype=np.float64)
            if not np.all(np.isfinite(attr)):
                continue
            per[method].append(
                A.score_by_horizon(
                    attr, true_all[i], graph, ts_abs, ds.t_train, state_layout=system
                )
            )
            if i == 0:
                maps[method] = attr
    for method in METHODS:
        scores = per[method]
        for split in ("inside", "beyond"):
            au = [float(getattr(s, f"auroc_{split}")) for s in scores]
            sp = [float(getattr(s, f"spearman_{split}")) for s in scores]
            lag = np.asarray(spread[split], float).reshape(-1, 2) if method == "saliency" else None
            rows.append(
                {
                    "method": method,
                    "split": split,
                    "coupling_auroc": float(metrics.nanmean(au)),
                    "jacobian_spearman": float(metrics.nanmean(sp)),
                    "n_traj": len(scores),
                    "older_lag_fraction": float(metrics.nanmean(lag[:, 0]))
                    if lag is not None
                    else np.nan,
                    "mean_lag": float(metrics.nanmean(lag[:, 1])) if lag is not None else np.nan,
                }
            )
        if scores:
            maps[f"{method}_auroc_by_horizon"] = metrics.nanmean(
                [np.asarray(s.auroc) for s in scores], 0
            )
            maps[f"{method}_spearman_by_horizon"] = metrics.nanmean(
                [np.asarray(s.spearman) for s in scores], 0
            )
            maps["true_auroc_by_horizon"] = metrics.nanmean(
                [np.asarray(s.true_auroc) for s in scores], 0
            )
    per = per["saliency"]
    # saliency of q_1 over (time lag, oscillator) at the last horizon inside and beyond the window
    member = A.oscillator_membership(system, ds.state_dim)
    for split, h_idx in (
        ("inside", np.flatnonzero(ts_abs <= ds.t_train)),
        ("beyond", np.flatnonzero(ts_abs > ds.t_train)),
    ):
        if h_idx.size:
            lag = full0[h_idx[-1], 0]  # (C, D): d yhat_1(h) / d context
            maps[f"lag_map_{split}"] = (np.abs(lag) @ member.T)[::-1]  # lag 0 first
            maps[f"true_row_{split}"] = np.abs(true_all[0][h_idx[-1]][0]) @ member.T
    maps["true_jacobian"] = true_all[0]
    if per:  # the ceiling: the coupling graph read off the simulator's own Jacobian
        inside = ts_abs <= ds.t_train
        ta = metrics.nanmean([np.asarray(s.true_auroc) for s in per], 0)
        for split, mask in (("inside", inside), ("beyond", ~inside)):
            rows.append(
                {
                    "method": "true_jacobian",
                    "split": split,
                    "coupling_auroc": float(metrics.nanmean(ta[mask])) if mask.any() else np.nan,
                    "jacobian_spearman": 1.0,
                    "n_traj": len(per),
                }
            )
    maps["ts_abs"] = ts_abs
    learned = model.coupling() if isinstance(model, models.OscillatorModel) else None
    if (
        learned is not None
        and learned.shape == graph.shape
        and 0 < graph.sum() < graph.size - len(graph)
    ):
        auroc = float(A.coupling_auroc(np.asarray(learned), graph))
        for split in ("inside", "beyond"):
            rows.append(
                {
                    "method": "learned_coupling",
                    "split": split,
                    "coupling_auroc": auroc,
                    "jacobian_spearman": np.nan,
                    "n_traj": 0,
                }
            )
    return rows, maps


#: the version of what an attribution record holds: part of its hash, so that records written
#: before a change to the attributions or probes are recomputed (from the trained model, which
#: is reused). 2: linear spectra and SINDy coefficient rows for every model. 3: the record
#: names its seed (every seed is attributed).
RECORD_VERSION = 3


def attribute_run(spec, mspec, preset: Preset, seed: int, n_train: int, output: Output, row: dict):
    """The attribution record of one finished run (`attribution.json` in its directory): reused
    when its hash matches, computed otherwise; None for a run that is not `ok`. Every seed is
    attributed, so that the scores have intervals over seeds. Fits the signature of
    `experiments.extrapolation.job`'s `then`, so the study attributes each run in the worker
    that trained it."""
    from . import extrapolation

    if row["status"] != "ok":
        return None
    model, ds, key = extrapolation.load_model(
        spec, mspec, preset, seed=seed, n_train=n_train, output=output
    )
    attr_settings = {f: getattr(preset, f) for f in (*Preset.ATTRIBUTION_FIELDS, "context")}
    h = config_hash({"run": key.config_hash, "version": RECORD_VERSION, **attr_settings})
    done = output.run_file(key, "attribution.json")
    rec = json.loads(done.read_text()) if done.exists() else None
    if rec is not None and rec.get("config_hash") == h:
        return rec
    rec = {
        "system": spec.name,
        "model": key.model,
        "n_train": n_train,
        "seed": seed,
        "config_hash": h,
    }
    try:
        r, maps = attribute_model(model, ds, preset)
        np.savez(output.run_file(key, "attribution.npz"), **maps)
    except (ValueError, RuntimeError) as e:
        r = [{"method": "-", "split": "-", "reason": f"{type(e).__name__}: {e}"}]
    rec["rows"] = r
    try:
        rec["probes"] = probe_model(model, ds, preset, output.run_file(key, "probes.npz"))
    except ValueError as e:  # a step that cannot run at these sizes
        rec["probes"] = [{"quantity": "-", "split": "-", "reason": f"probes skipped: {e}"}]
    write_json_atomic(done, rec)
    return rec


def _attribution_job(spec, mspec, preset, seed, n_train, output):
    from . import extrapolation

    row = extrapolation.run_one(spec, mspec, preset, seed=seed, n_train=n_train, output=output)
    return attribute_run(spec, mspec, preset, seed, n_train, output, row)


def run(preset: Preset, output: Output, *, progress: bool = True, workers: int = 1) -> list[dict]:
    """Attributes every model of the preset (every seed and n_train), training first what
    has not been trained under the current configuration (`workers` at a time); reuses
    attributions whose hash matches. A model that cannot be attributed or probed is recorded
    with the reason. Writes `attribution.csv` and `probes.csv` (a row per seed) and
    `attribution_summary.md` (mean and 95% interval over seeds).

    **Raises:** `NothingToAttribute` when no model could be trained and attributed."""
    from .workers import map_jobs

    todo = [
        (spec, mspec, preset, seed, n_train, output)
        for seed in preset.seeds
        for spec in preset.systems
        for n_train in preset.n_train
        for mspec in preset.models
    ]
    order = sorted(
        range(len(todo)), key=lambda i: (preset.seeds.index(todo[i][3]), -todo[i][1].cost)
    )
    recs = map_jobs(_attribution_job, todo, workers=workers, order=order)
    rows, probe_rows = [], []
    for (_, _, _, seed, n_train, _), rec in zip(todo, recs):
        if rec is None:
            continue
        meta = {"system": rec["system"], "model": rec["model"], "n_train": n_train, "seed": seed}
        rows += [{**meta, **r} for r in rec["rows"]]
        probe_rows += [{**meta, **r} for r in rec["probes"]]
        if progress:
            best = [r for r in rec["rows"] if r["split"] == "inside"]
            print(
                f"[attribution] {rec['model']} n_train={n_train} seed {seed}: "
                + ", ".join(f"{r['method']} AUROC {r['coupling_auroc']:.2f}" for r in best),
                flush=True,
            )
    if not rows:
        raise NothingToAttribute(
            f"no model of preset {preset.name!r} could be trained and attributed in {output.root} "
            "(every run is n/a or failed: see its result.json)"
        )
    write_csv_atomic(output.attribution_csv, ATTR_COLUMNS, rows)
    write_csv_atomic(output.probes_csv, PROBE_COLUMNS, probe_rows)
    write_text_atomic(output.attribution_summary, summary_markdown(rows, probe_rows))
    return rows


def _table_over_seeds(rows: list[dict], keys: tuple, values: tuple) -> list[str]:
    """A markdown table of `rows` grouped by `keys` (first-seen order): the number of seeds and,
    for each of `values`, the mean ± half-width of the 95% Student-t interval over them
    (`metrics.mean_ci`; no interval for one seed, `-` where there is no finite value). The rows
    may be dicts of numbers or read back from the CSV files (strings, empty where missing)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    lines = [
        "| " + " | ".join(keys) + " | seeds | " + " | ".join(values) + " |",
        "|" + "---|" * (len(keys) + 1 + len(values)),
    ]
    for group, rs in groups.items():
        cells = []
        for v in values:
            m, h = metrics.mean_ci(metrics.column(rs, v))
            cells.append(
                "-"
                if not np.isfinite(m)
                else f"{m:.3g}" + (f" ± {h:.2g}" if np.isfinite(h) else "")
            )
        n_seeds = len({r["seed"] for r in rs})
        lines.append(f"| {' | '.join(map(str, group))} | {n_seeds} | {' | '.join(cells)} |")
    return lines


def summary_markdown(rows: list[dict], probe_rows: list[dict]) -> str:
    """The attribution and probe scores of every system, model, n_train, method (quantity) and
    split: mean ± half-width of the 95% interval over the seeds attributed."""
    keys = ("system", "model", "n_train")
    lines = _table_over_seeds(
        [r for r in rows if r.get("method") not in (None, "-")],
        (*keys, "method", "split"),
        ("coupling_auroc", "jacobian_spearman", "older_lag_fraction", "mean_lag"),
    )
    lines += [""] + _table_over_seeds(
        [r for r in probe_rows if r.get("quantity") not in (None, "-")],
        (*keys, "quantity", "split"),
        ("r2", "control_r2"),
    )
    lines += [
        "",
        "Mean ± half-width of the 95% Student-t interval over the seeds (no interval for one "
        "seed). `coupling_auroc`: the true coupling graph read off the attributions; "
        "`jacobian_spearman`: rank correlation with the simulator's Jacobian; "
        "`older_lag_fraction`, `mean_lag`: the saliency mass on context states before the last "
        "one. Probe rows: `r2` of the trained model, `control_r2` of its random-network "
        "control (for the spectra rows, `r2` holds the relative frequency error).",
    ]
    return "\n".join(lines) + "\n"


def _rest_jacobian(system) -> np.ndarray:
    """The Jacobian of the system's vector field at the rest state `y = 0`, `(d, d)`."""
    import jax
    import jax.numpy as jnp

    return np.asarray(
        jax.jacfwd(lambda y: system.vector_field(0.0, y))(jnp.zeros(system.state_dim)), np.float64
    )


def _normal_mode_frequencies(system) -> np.ndarray:
    """The system's linear normal-mode frequencies: the positive imaginary parts of the
    eigenvalues of its vector field's Jacobian at the rest state `y = 0` (none for a system
    whose linearisation does not oscillate)."""
    im = np.linalg.eigvals(_rest_jacobian(system)).imag
    return np.sort(im[im > 1e-9])


#: the contexts of the forecast-DMD spectrum (models without a vector field) start this far
#: from rest, in units of the training data's per-coordinate standard deviation: small enough
#: for the linear regime of the pendulums (a frequency shift of about 1e-3), large enough
#: that a float32 LSTM's forecasts are not dominated by its own offset (on CoupledPendulums a
#: trained LSTM's median error was 0.05, 0.02, 0.008 at amplitudes 0.02, 0.05, 0.2)
SPECTRUM_AMPLITUDE = 0.2
#: how many such contexts (random directions, a fixed seed)
SPECTRUM_CONTEXTS = 8
SPECTRUM_FAILURES = (ValueError, np.linalg.LinAlgError, NotImplementedError, FloatingPointError)


def _small_amplitude_contexts(system, ds, n_context: int) -> np.ndarray:
    """`SPECTRUM_CONTEXTS` contexts of `n_context` states about the rest state `y* = 0`: the
    true linearised flow `y(t) = expm(J t) delta` (`J` the field's Jacobian at rest, exact to
    `O(|delta|^2)` at these amplitudes, and free of any ODE solve) from random `delta` of size
    `SPECTRUM_AMPLITUDE` training standard deviations per coordinate, `(N, C, d)`."""
    import scipy.linalg

    step = scipy.linalg.expm(_rest_jacobian(system) * ds.dt)
    std = np.asarray(ds.train, np.float64).reshape(-1, ds.state_dim).std(0)
    rng = np.random.default_rng(0)
    x = (
        SPECTRUM_AMPLITUDE
        * np.where(std > 0, std, 1.0)
        * rng.standard_normal((SPECTRUM_CONTEXTS, ds.state_dim))
    )
    states = [x]
    for _ in range(n_context - 1):
        states.append(states[-1] @ step.T)
    return np.stack(states, axis=1)


def _mode_row(quantity: str, split: str, cmp) -> dict:
    """A probes.csv row of the median relative error of the matched normal-mode frequencies."""
    err = np.asarray(cmp.relative_error)
    row = {"quantity": quantity, "split": split, "control_r2": np.nan}
    if not np.all(np.isfinite(err)):
        return row | {"r2": np.nan, "reason": "no oscillatory eigenvalues"}
    return row | {"r2": float(np.median(err))}


def _spectrum_rows(model, ds, preset: Preset, arrays: dict) -> list[dict]:
    """Linear spectra against the system's normal modes (none where its linearisation at rest
    does not oscillate): `dmd_freq_rel_error` (split `observed`, the DMD of the run's training
    trajectories with rank `state_dim`: the data's own linear fit, the baseline to beat) and
    `linearisation_freq_rel_error` (split `rest_state`: the model linearised at `y* = 0`,
    `models.probes.linearisation_spectrum`: its field's Jacobian for an ODE model, the DMD of
    its forecasts from `_small_amplitude_contexts` otherwise), each the median over the true
    modes of `|omega_matched - omega_k| / omega_k`. A step that fails gives a row with a
    reason. The frequencies go to `arrays`."""
    import models
    from models import probes as P

    system = ds.system
    true_modes = _normal_mode_frequencies(system)
    if not true_modes.size:
        return []
    arrays["true_modes"] = true_modes
    rows = []
    try:
        spec = P.dmd(ds.train, dt=ds.dt, rank=ds.state_dim)
        arrays["dmd_frequencies"] = spec.oscillatory
        arrays["dmd_eigenvalues"] = spec.eigenvalues
        rows.append(
            _mode_row("dmd_freq_rel_error", "observed", P.match_normal_modes(spec, true_modes))
        )
    except SPECTRUM_FAILURES as e:
        rows.append(_failed("dmd_freq_rel_error", "observed", e))
    try:
        rest = np.zeros(ds.state_dim)
        if isinstance(model, models.ODEModel):
            spec = P.linearisation_spectrum(model, rest)
        else:
            n_steps = max(ds.n_train_steps - preset.context, 2 * ds.state_dim)
            contexts = _small_amplitude_contexts(system, ds, preset.context)
            spec = P.linearisation_spectrum(
                model, rest, contexts=contexts, n_steps=n_steps, rank=ds.state_dim
            )
        arrays["linearisation_frequencies"] = spec.oscillatory
        arrays["linearisation_eigenvalues"] = spec.eigenvalues
        arrays["linearisation_method"] = np.asarray(
            "jacobian" if spec.dt is None else "forecast_dmd"
        )
        rows.append(
            _mode_row(
                "linearisation_freq_rel_error",
                "rest_state",
                P.match_normal_modes(spec, true_modes),
            )
        )
    except SPECTRUM_FAILURES as e:
        rows.append(_failed("linearisation_freq_rel_error", "rest_state", e))
    return rows


def _failed(quantity: str, split: str, e: Exception) -> dict:
    return {
        "quantity": quantity,
        "split": split,
        "r2": np.nan,
        "control_r2": np.nan,
        "reason": f"{type(e).__name__}: {e}",
    }


def _sindy_rows(model, system) -> list[dict]:
    """The identified equations against the true ones (`models.score_coefficients`), split
    `coefficients`: one row per score, or one row with the reason where the true equations are
    not known in the model's library."""
    import models

    try:
        score = models.score_coefficients(model, system)
    except ValueError as e:
        return [_failed("sindy_max_true_error", "coefficients", e)]
    return [
        {
            "quantity": f"sindy_{name}",
            "split": "coefficients",
            "r2": float(getattr(score, name)),
            "control_r2": np.nan,
        }
        for name in ("max_true_error", "n_missed", "n_spurious", "spurious_l1")
    ]


def probe_model(model, ds, preset: Preset, path: Path) -> list[dict]:
    """The probes.csv rows of one run; stores the arrays behind the figures at `path`.

    Every model: its linear spectrum at rest and the DMD of its training data against the
    system's normal modes (`_spectrum_rows`). SINDy: its identified equations against the true
    ones (`_sindy_rows`). The LSTM: also probes, dissection, hidden-state PCA and fixed points
    (`_lstm_rows`; not with fewer than two test trajectories, too few for grouped
    cross-validation)."""
    import models

    arrays: dict = {}
    rows = _spectrum_rows(model, ds, preset, arrays)
    if isinstance(model, models.SINDy):
        rows += _sindy_rows(model, ds.system)
    if isinstance(model, models.LSTM) and ds.test.shape[0] >= 2:
        rows += _lstm_rows(model, ds, preset, arrays)
    np.savez(path, **arrays)
    return rows


def _lstm_rows(model, ds, preset: Preset, arrays: dict) -> list[dict]:
    """Probes, dissection, hidden-state PCA and fixed points of an LSTM; arrays to `arrays`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from models import probes as P

    system, C = ds.system, preset.context
    test = np.asarray(ds.test)
    n = min(8, test.shape[0])
    dtype = jax.tree.leaves(nnx.state(model))[0].dtype
    total = test.shape[1] - C
    run = jax.jit(jax.vmap(lambda c: model.forecast_hidden(c, total)))
    fc, hs = (np.asarray(a, np.float64) for a in run(jnp.asarray(test[:n, :C], dtype)))
    inside = ds.ts[C:] <= ds.t_train + 1e-9
    # hidden states while free-running, inside and beyond the training window, with the true states
    h_in, h_out = hs[:, inside].reshape(-1, hs.shape[-1]), hs[:, ~inside].reshape(-1, hs.shape[-1])
    y_in, y_out = (
        test[:n, C:][:, inside].reshape(-1, test.shape[-1]),
        test[:n, C:][:, ~inside].reshape(-1, test.shape[-1]),
    )
    g_in = np.repeat(np.arange(n), inside.sum())
    g_out = np.repeat(np.arange(n), (~inside).sum())
    ctrl = np.asarray(P.random_features_control(model, jnp.asarray(fc, dtype), key=7), np.float64)
    c_in, c_out = (
        ctrl[:, inside].reshape(-1, ctrl.shape[-1]),
        ctrl[:, ~inside].reshape(-1, ctrl.shape[-1]),
    )
    rows = []
    for split, h, c, y, g in (
        ("inside", h_in, c_in, y_in, g_in),
        ("beyond", h_out, c_out, y_out, g_out),
    ):
        try:
            report = P.probe_report(
                h,
                P.physical_targets(system, y),
                control_hidden=c,
                key=0,
                groups=g,
                n_folds=min(5, n),
            )
        except ValueError as e:  # e.g. too few trajectories for grouped cross-validation
            rows.append(
                {
                    "quantity": "-",
                    "split": split,
                    "r2": np.nan,
                    "control_r2": np.nan,
                    "reason": f"probes skipped: {e}",
                }
            )
            continue
        for r in report:
            rows.append(
                {
                    "quantity": r["quantity"],
                    "split": split,
                    "r2": float(r["r2"]),
                    "control_r2": float(r["control_r2"]),
                }
            )
    k = min(8, h_in.shape[-1] - 1)
    dep = P.manifold_departure(h_in, h_out, n_components=k, key=0)
    dis = P.dissect(h_in, P.physical_concepts(system, y_in), quantile="matched")
    pca = P.pca_fit(h_in, n_components=2)
    arrays |= {
        "pca_inside": P.pca_transform(pca, h_in),
        "pca_beyond": P.pca_transform(pca, h_out),
        "dissection_iou": np.asarray(dis.iou),
        "dissection_concepts": np.asarray(list(dis.concepts)),
        "residual_ratio": np.asarray(dep.residual_ratio),
        "distance_ratio": np.asarray(dep.distance_ratio),
    }
    rows.append(
        {
            "quantity": "manifold_residual_ratio",
            "split": "beyond",
            "r2": float(dep.residual_ratio),
            "control_r2": np.nan,
        }
    )
    rows.append(
        {
            "quantity": "manifold_distance_ratio",
            "split": "beyond",
            "r2": float(dep.distance_ratio),
            "control_r2": np.nan,
        }
    )
    true_modes = _normal_mode_frequencies(system)
    if true_modes.size:
        fp = P.lstm_fixed_points(model, key=0, context=jnp.asarray(test[0, :C], dtype), n_starts=8)
        if len(fp.eigenvalues):
            cmp = P.compare_to_normal_modes(
                np.asarray(fp.eigenvalues), np.asarray(true_modes), ds.dt, min_modulus=0.9
            )
            arrays.update(
                fixed_point_eigenvalues=np.asarray(fp.eigenvalues),
                true_modes=np.asarray(true_modes),
                matched_frequencies=np.asarray(cmp.model_freqs),
                mode_relative_error=np.asarray(cmp.relative_error),
            )
            rows.append(_mode_row("normal_mode_freq_rel_error", "fixed_point", cmp))
    return rows


@dataclasses.dataclass
class Args:
    """Runs the attribution study (training first what the extrapolation study has not)."""

    out: Path | None = None
    """output directory (default results/<preset>/)"""
    figures: Path | None = None
    """figure directory (default <out>/figures/)"""
    workers: int | None = None
    """parallel runs (default: one per CPU core on a CPU, 1 on an accelerator)"""
    progress: bool = True


def main(argv=None) -> None:
    from .workers import default_workers

    args, preset, _ = cli(Args, argv)
    setup_jax()
    output = Output(args.out or Path("results") / preset.name, args.figures)
    workers = default_workers() if args.workers is None else args.workers
    try:
        run(preset, output, progress=args.progress, workers=workers)
    except NothingToAttribute as e:
        raise SystemExit(f"error: {e}") from None
    from .attribution_figures import draw_all

    draw_all(output)
    print(output.attribution_csv.read_text())


if __name__ == "__main__":
    main()
