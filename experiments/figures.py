"""Every figure of the study, redrawn from stored results without training anything.

`python -m experiments.figures --preset quick [--out results/quick] [--figures DIR]`

Figures go to `<out>/figures/` unless `--figures` says otherwise. Where a
study has several `n_train`, the motivating figure (`motivating_<system>.png`,
a training record continued) shows each system's smallest, the error against
`n_train` figure all of them, and the others the largest.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from . import metrics  # noqa: E402
from .extrapolation import is_converged, read_metrics  # noqa: E402
from .presets import cli  # noqa: E402
from .runs import Output  # noqa: E402

_COLORS = {
    "truth": "black",
    "LSTM": "tab:red",
    "NeuralODE": "tab:orange",
    "SecondOrderNODE": "tab:brown",
    "HNN": "tab:blue",
    "LNN": "tab:cyan",
    "DissipativeHNN": "tab:purple",
    "NVAR": "tab:pink",
    "ESN": "tab:gray",
    "GRU": "salmon",
    "Transformer": "gold",
    "SINDy": "navy",
    "ParametricModel": "lime",
}
#: an nmse above this is drawn at it (marked ^): a forecast that blew up says no more by its size
_NMSE_CAP = 1e3


def _capped(x, cap: float = _NMSE_CAP) -> np.ndarray:
    """`x` with everything above `cap`, inf and NaN (a forecast that blew up) set to `cap`, so
    that a log axis can draw it."""
    x = np.asarray(x, dtype=float)
    return np.minimum(np.nan_to_num(x, nan=cap, posinf=cap), cap)


def _color(model: str, i: int = 0):
    """A fixed colour per model; the structured model is green with the most oscillators
    (`k = n`) and olive with fewer."""
    if model.startswith("OscillatorModel"):
        if model == _color.k_max:
            return "tab:green"
        return "darkseagreen" if "agnostic" in model else "olive"
    return _COLORS.get(model.split("(")[0], f"C{i % 10}")


_color.k_max = None


def _set_k_max(models):
    osc = _osc_labels(models)
    _color.k_max = osc[0] if osc else None


def load_runs(out: Output, n_train: dict[str, int] | None = None) -> dict:
    """`{(system, model): [arrays of each seed]}` for every finished run that stored arrays
    (only `n_train[system]` where given)."""
    import json

    runs: dict = {}
    for res in out.results():
        row = json.loads(res.read_text())
        arr = res.parent / "arrays.npz"
        if row.get("status") != "ok" or not arr.exists():
            continue
        if n_train is not None and int(row["n_train"]) != n_train.get(row["system"]):
            continue
        with np.load(arr) as z:
            runs.setdefault((row["system"], row["model"]), []).append(
                dict(z) | {"seed": row["seed"], "n_train": int(row["n_train"])}
            )
    return runs


def _oscillators(model: str) -> int | None:
    m = re.fullmatch(r"OscillatorModel\(k=(\d+)\)", model)
    return int(m.group(1)) if m else None


def _osc_labels(models):
    return sorted(
        [m for m in models if _oscillators(m) is not None], key=lambda m: -_oscillators(m)
    )


def motivating(runs, system, t_train, path: Path, coord: int = 0, prefix: str = "cont_"):
    """The motivating figure: one record (the first of `test_continuation` with
    `prefix="cont_"`, of `test` with `prefix=""`), truth against each model's forecast from its
    first `C` states, over `[0, t_end]` with the training window shaded."""
    models = [m for (s, m) in runs if s == system]
    # the structured models (the exact-structure ParametricModel where it ran), then the black
    # box and the constraint-imposing network of the talk
    order = _osc_labels(models) + [m for m in ("ParametricModel", "LSTM", "HNN") if m in models]
    order = [m for m in order if f"{prefix}sample_true" in runs[(system, m)][0]]
    if not order:
        return None
    first = runs[(system, order[0])][0]
    true, ts_f = first[f"{prefix}sample_true"][0], first["ts_forecast"]
    dt = ts_f[1] - ts_f[0]
    ts = dt * np.arange(true.shape[0])
    n_train = first.get("n_train")
    fig, axes = plt.subplots(len(order), 1, figsize=(9, 1.7 * len(order) + 0.6), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (i, m) in zip(axes, enumerate(order)):
        r = runs[(system, m)][0]
        ax.axvspan(0, t_train, color="0.9", lw=0)
        ax.plot(ts, true[:, coord], color="black", lw=1.2, label="truth")
        ax.plot(
            r["ts_forecast"],
            r[f"{prefix}sample_pred"][0][:, coord],
            color=_color(m, i),
            lw=1.2,
            ls="--",
            label=m,
        )
        # on the truth's scale: a forecast that blows up leaves the axes rather than flattening
        # the truth
        lo, hi = float(true[:, coord].min()), float(true[:, coord].max())
        pad = 0.5 * max(hi - lo, 1e-6)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_ylabel("q₁")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    axes[-1].set_xlabel("t (training window shaded)")
    axes[-1].set_xlim(0, ts[-1])
    what = (
        f"a training record (n_train = {n_train}) continued"
        if prefix == "cont_"
        else "a held-out initial state"
    )
    fig.suptitle(f"{system}: {what}, forecast from its first states")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def extrapolation_vs_n_train(rows, path: Path):
    """`extrap_nmse` (held-out initial states) and `cont_extrap_nmse` (the training records
    continued) against `n_train`, each model's mean over seeds with its 95% interval; open
    markers for runs not converged."""
    from .metrics import mean_ci

    systems = sorted({r["system"] for r in rows})
    if len({int(r["n_train"]) for r in rows}) < 2:
        return None
    fig, axes = plt.subplots(
        len(systems), 2, figsize=(11, 3.8 * len(systems)), squeeze=False, sharey="row"
    )
    for row_axes, system in zip(axes, systems):
        ok = [r for r in rows if r["system"] == system and r["status"] == "ok"]
        models = list(dict.fromkeys(r["model"] for r in ok))
        for ax, (col, title) in zip(
            row_axes,
            (
                ("extrap_nmse", "held-out initial states"),
                ("cont_extrap_nmse", "the training records continued"),
            ),
        ):
            for i, m in enumerate(models):
                ns = sorted({int(r["n_train"]) for r in ok if r["model"] == m})
                stats = [
                    mean_ci([r[col] for r in ok if r["model"] == m and int(r["n_train"]) == n])
                    for n in ns
                ]
                conv = [
                    all(is_converged(r) for r in ok if r["model"] == m and int(r["n_train"]) == n)
                    for n in ns
                ]
                mean = np.array([s[0] for s in stats])
                half = np.nan_to_num(np.array([s[1] for s in stats]))
                capped = mean > _NMSE_CAP
                mean, half = np.minimum(mean, _NMSE_CAP), np.where(capped, 0.0, half)
                c = _color(m, i)
                ax.errorbar(
                    ns,
                    mean,
                    yerr=np.minimum(half, 0.99 * mean),
                    color=c,
                    label=m,
                    capsize=2,
                    lw=1.2,
                )
                for n, y, k, cap in zip(ns, mean, conv, capped):
                    ax.scatter(
                        n,
                        y,
                        color=c if k else "white",
                        edgecolor=c,
                        zorder=3,
                        s=22,
                        marker="^" if cap else "o",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("n_train (training trajectories)")
            ax.set_title(f"{system}: {title}")
        row_axes[0].set_ylabel("extrap_nmse over (t_train, t_end]")
        row_axes[1].legend(fontsize=7, frameon=False)
    fig.text(
        0.99,
        0.005,
        f"open markers: not converged; bars: 95% interval over seeds; ^: above {_NMSE_CAP:g}, "
        "drawn at it",
        ha="right",
        va="bottom",
        fontsize=7,
        color="0.3",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def coverage_vs_error(rows, path: Path):
    """Extrapolation error against the coverage of what is forecast (the median distance of
    the true states beyond `t_train` to their nearest training state, in training stds): one
    point per run, held-out (filled) and continuation (open) records, every n_train; a dotted
    line joins a run's two protocols. Whether a model fails beyond the window when the
    window's states are far from the data, or whenever it is beyond the window, reads off the
    slope."""
    systems = sorted({r["system"] for r in rows})
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    fig, axes = plt.subplots(1, len(systems), figsize=(6 * len(systems), 4.5), squeeze=False)
    for ax, system in zip(axes[0], systems):
        mine = [r for r in ok if r["system"] == system]
        models = list(dict.fromkeys(r["model"] for r in mine))
        for i, m in enumerate(models):
            c = _color(m, i)
            for j, r in enumerate(r for r in mine if r["model"] == m):
                x = (float(r["coverage_extrap"]), float(r["cont_coverage_extrap"]))
                y = np.minimum((float(r["extrap_nmse"]), float(r["cont_extrap_nmse"])), _NMSE_CAP)
                ax.plot(x, y, ":", color=c, lw=0.8)
                ax.scatter(x[0], y[0], color=c, s=22, label=m if j == 0 else None)
                ax.scatter(x[1], y[1], facecolor="white", edgecolor=c, s=22)
        ax.set_yscale("log")
        ax.set_xlabel("coverage: distance of the states beyond t_train to the training data")
        ax.set_ylabel("extrap_nmse over (t_train, t_end]")
        ax.set_title(f"{system}: filled held-out, open continuation")
        ax.axhline(_NMSE_CAP, color="0.6", lw=0.6, ls="--")
        ax.text(
            ax.get_xlim()[0],
            _NMSE_CAP,
            f" above {_NMSE_CAP:g}: drawn at it",
            fontsize=7,
            va="bottom",
            color="0.4",
        )
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def nmse_over_time(runs, system, t_train, path: Path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, ((s, m), rs) in enumerate(sorted(runs.items())):
        if s != system:
            continue
        # a forecast that blew up (nmse overflowing to inf, or NaN) is drawn at the cap
        curves = _capped(np.stack([r["nmse_test"] for r in rs]))
        ax.semilogy(
            rs[0]["ts_forecast"],
            np.exp(np.mean(np.log(curves + 1e-300), 0)),
            color=_color(m, i),
            label=m,
        )
    ax.axhline(_NMSE_CAP, color="0.6", lw=0.6, ls="--")
    ax.axvline(t_train, color="0.4", ls=":", lw=1)
    ax.set_xlabel("t")
    ax.set_ylabel("nmse(t)")
    ax.set_title(
        f"{system}: normalised error over time (dotted: end of training window; "
        f"dashed: {_NMSE_CAP:g}, where blown-up forecasts are drawn)"
    )
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _hatch_unconverged(ax, bars, rows, system, models) -> list:
    """Hatches the bars of `(system, model)`s with a finished run that is not converged (its
    kept stage stopped at its budget, the validation rollout still improving: not a result);
    returns the legend handle that says so (none where every run converged)."""
    unconverged = {
        m
        for m in models
        for r in rows
        if r["system"] == system and r["model"] == m and r["status"] == "ok"
        if not is_converged(r)
    }
    for bar, m in zip(bars, models):
        if m in unconverged:
            bar.set_hatch("//")
            bar.set_edgecolor("0.2")
    if not unconverged:
        return []
    return [Patch(facecolor="white", edgecolor="0.2", hatch="//", label="hatched: not converged")]


def interp_vs_extrap(rows, path: Path):
    systems = sorted({r["system"] for r in rows})
    fig, axes = plt.subplots(
        1, len(systems), figsize=(max(6, 5 * len(systems)), 4.5), squeeze=False
    )
    for ax, system in zip(axes[0], systems):
        models = [m for m in dict.fromkeys(r["model"] for r in rows if r["system"] == system)]
        x = np.arange(len(models))
        bars = []
        for j, (col, lab) in enumerate(
            (
                ("interp_nmse", "inside (interp)"),
                ("extrap_nmse", "beyond (extrap)"),
                ("ood_nmse", "unseen energies (ood)"),
            )
        ):
            vals = [
                metrics.nanmean(
                    [
                        r[col]
                        for r in rows
                        if r["system"] == system and r["model"] == m and r["status"] == "ok"
                    ]
                )
                for m in models
            ]
            # a mean that blew up is drawn at the cap (the line says so)
            vals = [v if np.isnan(v) else float(_capped(v)) for v in vals]
            bars += list(ax.bar(x + (j - 1) * 0.27, vals, 0.27, label=lab))
        hatched = _hatch_unconverged(ax, bars, rows, system, models * 3)
        ax.axhline(_NMSE_CAP, color="0.6", lw=0.6, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(x, models, rotation=30, ha="right", fontsize=8)
        ax.set_title(system)
        ax.set_ylabel("nmse")
        ax.legend(handles=ax.get_legend_handles_labels()[0] + hatched, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def energy_drift(runs, system, path: Path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for i, ((s, m), rs) in enumerate(sorted(runs.items())):
        if s != system or "energy_drift" not in rs[0]:
            continue
        ax.semilogy(
            rs[0]["ts_forecast"],
            _capped(np.mean([r["energy_drift"] for r in rs], 0)) + 1e-16,
            color=_color(m, i),
            label=m,
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("t")
    ax.set_ylabel("|E(ŷ_t) − E(y_0)| / |E(y_0)|")
    ax.set_title(f"{system}: energy drift of the forecasts (blown-up ones drawn at {_NMSE_CAP:g})")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def valid_prediction_time(rows, path: Path):
    systems = sorted({r["system"] for r in rows})
    fig, axes = plt.subplots(1, len(systems), figsize=(max(6, 5 * len(systems)), 4), squeeze=False)
    for ax, system in zip(axes[0], systems):
        models = list(dict.fromkeys(r["model"] for r in rows if r["system"] == system))
        vals = [
            [
                r["vpt"]
                for r in rows
                if r["system"] == system and r["model"] == m and r["status"] == "ok"
            ]
            for m in models
        ]
        bars = ax.bar(
            range(len(models)),
            [np.mean(v) if v else np.nan for v in vals],
            yerr=[np.std(v) if len(v) > 1 else 0 for v in vals],
            color=[_color(m, i) for i, m in enumerate(models)],
        )
        hatched = _hatch_unconverged(ax, bars, rows, system, models)
        if hatched:  # room above the bars for it
            ax.set_ylim(top=1.15 * ax.get_ylim()[1])
            ax.legend(handles=hatched, fontsize=8, frameon=False, loc="upper left")
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("valid prediction time / t_train")
        ax.set_title(system)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def learned_parameters(runs, system, path: Path):
    cands = [
        (m, rs)
        for (s, m), rs in runs.items()
        if s == system
        and m.startswith("OscillatorModel")
        and "true_coupling" in rs[0]
        and rs[0]["learned_frequencies"].shape == rs[0]["true_frequencies"].shape
        and rs[0]["learned_coupling"].shape == rs[0]["true_coupling"].shape
    ]
    if not cands:
        return None
    m, rs = cands[0]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
    for r in rs:
        a1.scatter(r["true_frequencies"], r["learned_frequencies"], color="tab:green")
        iu = np.triu_indices_from(r["true_coupling"], 1)
        a2.scatter(r["true_coupling"][iu], r["learned_coupling"][iu], color="tab:green")
    for a, title in ((a1, "frequencies ω"), (a2, "couplings κ_ij (i<j)")):
        lo, hi = a.get_xlim()
        lo, hi = min(lo, a.get_ylim()[0]), max(hi, a.get_ylim()[1])
        a.plot([lo, hi], [lo, hi], color="0.5", ls=":")
        a.set_xlabel("true")
        a.set_ylabel("learned")
        a.set_title(f"{m}: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_all(out: Output, t_train: float) -> list[Path]:
    figures = out.figures
    figures.mkdir(parents=True, exist_ok=True)
    all_rows = read_metrics(out)
    systems = {r["system"] for r in all_rows}
    sizes = {s: [int(r["n_train"]) for r in all_rows if r["system"] == s] for s in systems}
    largest = {s: max(n) for s, n in sizes.items()}
    smallest = {s: min(n) for s, n in sizes.items()}
    rows = [r for r in all_rows if int(r["n_train"]) == largest[r["system"]]]
    runs = load_runs(out, largest)
    few = load_runs(out, smallest)
    _set_k_max({r["model"] for r in rows})
    made = [
        extrapolation_vs_n_train(all_rows, figures / "extrapolation_vs_n_train.png"),
        coverage_vs_error(all_rows, figures / "coverage_vs_error.png"),
    ]
    for system in sorted(systems):
        tag = system
        made += [
            motivating(few, system, t_train, figures / f"motivating_{tag}.png"),
            motivating(runs, system, t_train, figures / f"heldout_{tag}.png", prefix=""),
            nmse_over_time(runs, system, t_train, figures / f"nmse_{tag}.png"),
            energy_drift(runs, system, figures / f"energy_drift_{tag}.png"),
            learned_parameters(runs, system, figures / f"learned_parameters_{tag}.png"),
        ]
    made += [
        interp_vs_extrap(rows, figures / "interp_vs_extrap.png"),
        valid_prediction_time(rows, figures / "valid_prediction_time.png"),
    ]
    if out.attribution_csv.exists():
        from .attribution_figures import draw_all as draw_attribution

        made += draw_attribution(out)
    return [p for p in made if p is not None]


@dataclasses.dataclass
class Args:
    """Redraws every figure of a preset from its stored results (no training)."""

    out: Path | None = None
    """results directory (default results/<preset>/)"""
    figures: Path | None = None
    """figure directory (default <out>/figures/)"""


def main(argv=None) -> None:
    args, preset, _ = cli(Args, argv)
    out = Output(args.out or Path("results") / preset.name, args.figures)
    if not out.metrics.exists():
        raise SystemExit(
            f"no results in {out.root}: "
            f"run `python -m experiments.study --preset {preset.name}` first"
        )
    for p in draw_all(out, preset.t_train):
        print(p)


if __name__ == "__main__":
    main()
