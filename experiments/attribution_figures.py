"""Figures of the attribution study, drawn from the stored arrays (no training, no attribution)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import metrics  # noqa: E402
from .runs import Output  # noqa: E402


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _records(out: Output):
    """`(record, maps, probe arrays)` of every attributed run of the first seed attributed (the
    maps and spectra drawn are one seed's; the bar figures and `attribution_summary.md` have
    every seed), in the runs' directory order."""
    found = []
    for result in out.results():
        rec_path = result.with_name("attribution.json")
        if rec_path.exists():
            found.append((result, json.loads(rec_path.read_text())))
    if not found:
        return
    first = min(int(rec.get("seed", 0)) for _, rec in found)
    for result, rec in found:
        if int(rec.get("seed", 0)) != first:
            continue
        npz, probes = result.with_name("attribution.npz"), result.with_name("probes.npz")
        maps = dict(np.load(npz)) if npz.exists() else {}
        yield rec, maps, (dict(np.load(probes)) if probes.exists() else {})


def lag_maps(out: Output, path: Path):
    recs = [(r, m) for r, m, _ in _records(out) if "lag_map_inside" in m]
    if not recs:
        return None
    fig, axes = plt.subplots(len(recs), 3, figsize=(11, 2.3 * len(recs) + 0.6), squeeze=False)
    for row, (rec, m) in zip(axes, recs):
        for ax, split in zip(row[:2], ("inside", "beyond")):
            if f"lag_map_{split}" in m:
                im = ax.imshow(
                    m[f"lag_map_{split}"].T, aspect="auto", cmap="viridis", origin="lower"
                )
                fig.colorbar(im, ax=ax, fraction=0.04)
            ax.set_title(f"{rec['model']}: |d q₁/d context| ({split})", fontsize=8)
            ax.set_xlabel("time lag (steps before t_C)", fontsize=8)
            ax.set_ylabel("oscillator", fontsize=8)
        true = np.stack([m.get("true_row_inside", np.nan), m.get("true_row_beyond", np.nan)])
        im = row[2].imshow(true.T, aspect="auto", cmap="viridis", origin="lower")
        fig.colorbar(im, ax=row[2], fraction=0.04)
        row[2].set_xticks([0, 1], ["inside", "beyond"], fontsize=8)
        row[2].set_title("truth: |d q₁(t)/d y(t_C)| (lag 0)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_ci(rows, value: str, **match) -> tuple[float, float]:
    """Mean and 95% half-width over the seeds of `value` in the rows matching `match`."""
    picked = [r for r in rows if all(str(r[k]) == str(v) for k, v in match.items())]
    return metrics.mean_ci(metrics.column(picked, value))


def coupling_recovery(out: Output, path: Path):
    """Coupling-graph AUROC of each model's attributions, one panel per n_train: the mean over
    the seeds, with the 95% interval as an error bar."""
    rows = [r for r in _read(out.attribution_csv) if r.get("method") not in (None, "", "-")]
    if not rows:
        return None
    labels = list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    n_trains = sorted({int(r["n_train"]) for r in rows})
    fig, axes = plt.subplots(
        len(n_trains),
        1,
        figsize=(max(7, 0.5 * len(labels)), 3.6 * len(n_trains) + 1.0),
        squeeze=False,
    )
    x = np.arange(len(labels))
    for ax, n_train in zip(axes[:, 0], n_trains):
        seeds = len({r["seed"] for r in rows if int(r["n_train"]) == n_train})
        for j, split in enumerate(("inside", "beyond")):
            stats = [
                _mean_ci(rows, "coupling_auroc", model=m, method=meth, split=split, n_train=n_train)
                for m, meth in labels
            ]
            mean, half = np.array(stats).T
            ax.bar(
                x + (j - 0.5) * 0.4,
                mean,
                0.4,
                yerr=np.where(np.isfinite(half), half, 0.0),
                capsize=2,
                label=f"{split} the training window",
            )
        ax.axhline(0.5, color="0.5", ls=":", lw=1)
        ax.set_ylabel("coupling-graph AUROC")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"n_train = {n_train}: mean over {seeds} seed(s), 95% interval", fontsize=9)
        ax.set_xticks(x, [] if ax is not axes[-1, 0] else [f"{m}\n{meth}" for m, meth in labels])
    axes[-1, 0].tick_params(axis="x", labelrotation=60, labelsize=7)
    for label in axes[-1, 0].get_xticklabels():
        label.set_ha("right")
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.suptitle("Recovering the true coupling graph from each model's attributions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def auroc_by_horizon(out: Output, path: Path):
    recs = [(r, m) for r, m, _ in _records(out) if "saliency_auroc_by_horizon" in m]
    if not recs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (rec, m) in enumerate(recs):
        ax.plot(m["ts_abs"], m["saliency_auroc_by_horizon"], label=rec["model"], color=f"C{i}")
    ax.plot(
        recs[0][1]["ts_abs"],
        recs[0][1]["true_auroc_by_horizon"],
        color="black",
        ls="--",
        label="true Jacobian",
    )
    ax.set_xscale("log")
    ax.set_xlabel("forecast time t")
    ax.set_ylabel("coupling AUROC (saliency)")
    ax.set_title("Graph recovery against the forecast horizon")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probes(out: Output, path: Path):
    """The LSTM's linear probes (the first model probed inside and beyond the window, at its
    largest n_train): the mean R² over the seeds with the 95% interval as an error bar."""
    rows = [r for r in _read(out.probes_csv) if r["split"] in ("inside", "beyond")]
    if not rows:
        return None
    model = rows[0]["model"]
    n_train = max(int(r["n_train"]) for r in rows if r["model"] == model)
    rows = [r for r in rows if r["model"] == model and int(r["n_train"]) == n_train]
    seeds = len({r["seed"] for r in rows})
    quantities = list(dict.fromkeys(r["quantity"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(quantities)), 4.5))
    x = np.arange(len(quantities))
    for j, (split, key) in enumerate(
        (("inside", "r2"), ("beyond", "r2"), ("inside", "control_r2"))
    ):
        mean, half = np.array([_mean_ci(rows, key, quantity=q, split=split) for q in quantities]).T
        ax.bar(
            x + (j - 1) * 0.27,
            np.clip(mean, -0.2, 1),
            0.27,
            yerr=np.where(np.isfinite(half), half, 0.0),
            capsize=2,
            label=(
                f"{'random-network control' if key == 'control_r2' else 'trained LSTM'} ({split})"
            ),
        )
    ax.set_xticks(x, quantities, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("probe R² (clipped at −0.2)")
    ax.set_title(
        f"Linear probes of the {model}'s hidden state (n_train = {n_train}; "
        f"mean over {seeds} seed(s), 95% interval)",
        fontsize=9,
    )
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dissection_and_pca(out: Output, path: Path):
    recs = [(r, p) for r, _, p in _records(out) if "pca_inside" in p]
    if not recs:
        return None
    rec, p = recs[0]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    iou = p["dissection_iou"]
    top = np.argsort(-iou.max(1))[:16]
    im = a1.imshow(iou[top], aspect="auto", cmap="magma")
    fig.colorbar(im, ax=a1, fraction=0.04)
    a1.set_xticks(
        range(iou.shape[1]), p["dissection_concepts"], rotation=60, ha="right", fontsize=7
    )
    a1.set_yticks(range(len(top)), [f"unit {u}" for u in top], fontsize=7)
    a1.set_title(f"{rec['model']}: unit dissection (IoU, top units)")
    a2.scatter(*p["pca_inside"].T, s=2, alpha=0.4, label="inside the training window")
    a2.scatter(*p["pca_beyond"].T, s=2, alpha=0.4, label="beyond it (free-running)")
    a2.set_xlabel("PC 1 (fitted inside)")
    a2.set_ylabel("PC 2")
    a2.set_title(
        f"hidden states: residual ratio {float(p['residual_ratio']):.2g}, "
        f"distance ratio {float(p['distance_ratio']):.2g}",
        fontsize=9,
    )
    a2.legend(fontsize=8, frameon=False, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(e: float) -> str:
    return f"{e:.2g}" if np.isfinite(e) else "n/a"


def spectra(out: Output, fig_dir: Path) -> list[Path]:
    """`spectra_<system>.png`: the system's true normal-mode frequencies (vertical lines), the
    DMD of each n_train's training data, and each model's linearisation at rest (its field's
    Jacobian; for a model without a field, the DMD of its forecasts from small amplitudes), one
    row each, with the median relative error of the matched frequencies in the label."""
    by_system: dict[str, list] = {}
    for rec, _, p in _records(out):
        if "true_modes" in p and ("linearisation_frequencies" in p or "dmd_frequencies" in p):
            by_system.setdefault(rec["system"], []).append((rec, p))
    made = []
    for system, recs in sorted(by_system.items()):
        recs.sort(key=lambda rp: (int(rp[0]["n_train"]), rp[0]["model"]))
        true = np.asarray(recs[0][1]["true_modes"], float)
        errs = {
            (rec["model"], int(rec["n_train"]), r["quantity"]): float(r["r2"])
            for rec, _ in recs
            for r in rec.get("probes", [])
            if r.get("quantity") in ("linearisation_freq_rel_error", "dmd_freq_rel_error")
            and r.get("r2") not in (None, "")
        }
        rows = []  # (label, frequencies, style)
        for n_train in dict.fromkeys(int(rec["n_train"]) for rec, _ in recs):
            dmd = next((p for rec, p in recs if int(rec["n_train"]) == n_train), {})
            if "dmd_frequencies" in dmd:
                model = next(r["model"] for r, _ in recs if int(r["n_train"]) == n_train)
                e = errs.get((model, n_train, "dmd_freq_rel_error"), np.nan)
                rows.append(
                    (
                        f"DMD of the data (n_train={n_train}), err {_fmt(e)}",
                        dmd["dmd_frequencies"],
                        "data",
                    )
                )
        for rec, p in recs:
            if "linearisation_frequencies" not in p:
                continue
            how = str(p.get("linearisation_method", "jacobian"))
            e = errs.get(
                (rec["model"], int(rec["n_train"]), "linearisation_freq_rel_error"), np.nan
            )
            rows.append(
                (
                    f"{rec['model']} (n_train={rec['n_train']}, "
                    f"{'Jacobian' if how == 'jacobian' else 'forecast DMD'}), err {_fmt(e)}",
                    p["linearisation_frequencies"],
                    "model",
                )
            )
        if not rows:
            continue
        hi = 1.6 * float(true.max())
        fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.6))
        for k, w in enumerate(true):
            ax.axvline(
                w, color="0.35", ls="--", lw=1, label="true normal modes" if k == 0 else None
            )
        for i, (label, freqs, kind) in enumerate(rows):
            f = np.asarray(freqs, float)
            inside = f[f <= hi]
            ax.scatter(
                inside,
                np.full(inside.shape, i),
                marker="s" if kind == "data" else "o",
                s=36,
                color="black" if kind == "data" else f"C{i % 10}",
                zorder=3,
            )
            if (f > hi).any():
                ax.annotate(
                    f"+{int((f > hi).sum())} →",
                    (hi, i),
                    xytext=(-4, 0),
                    textcoords="offset points",
                    ha="right",
                    va="center",
                    fontsize=7,
                )
            if f.size == 0:
                ax.annotate(
                    "no oscillatory eigenvalues",
                    (0.02 * hi, i),
                    va="center",
                    fontsize=7,
                    color="0.4",
                )
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlim(0, hi)
        ax.set_xlabel("angular frequency ω (rad per unit time)")
        ax.set_title(
            f"{system}: linear spectra at rest against the true normal modes\n"
            "(err: median relative error of the matched frequencies)",
            fontsize=9,
        )
        ax.legend(fontsize=8, frameon=False, loc="upper right")
        ax.grid(axis="x", color="0.9")
        fig.tight_layout()
        path = fig_dir / f"spectra_{system}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def draw_all(out: Output) -> list[Path]:
    fig_dir = out.figures
    fig_dir.mkdir(parents=True, exist_ok=True)
    made = [
        lag_maps(out, fig_dir / "attribution_maps.png"),
        coupling_recovery(out, fig_dir / "coupling_recovery.png"),
        auroc_by_horizon(out, fig_dir / "auroc_by_horizon.png"),
        probes(out, fig_dir / "probes.png"),
        dissection_and_pca(out, fig_dir / "dissection_pca.png"),
        *spectra(out, fig_dir),
    ]
    return [p for p in made if p is not None]
