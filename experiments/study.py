"""The main job: `python -m experiments.study --preset quick`.

Runs the extrapolation study, the attribution study and the figures for a
preset, writing everything under `--out` (default `results/<preset>/`) and
the figures under `figures/<preset>/`, then prints the summary table. A rerun
skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ._runtime import setup_jax, write_json_atomic
from .presets import get_preset


@dataclasses.dataclass
class Args:
    """Runs the whole study for a preset."""

    preset: str = "quick"
    """tiny (tests), quick (a laptop CPU, minutes) or full (one GPU)"""
    out: Path | None = None
    """output directory (default results/<preset>/)"""
    figures: Path | None = None
    """figure directory (default figures/<preset>/)"""
    attribution: bool = True
    """also run the attribution study"""
    progress: bool = True


def main(argv=None) -> None:
    import tyro

    from . import extrapolation, figures

    args = tyro.cli(Args, args=argv)
    preset = get_preset(args.preset)  # a bad name fails here, before any work
    setup_jax()
    out = args.out or Path("results") / preset.name
    fig_dir = args.figures or Path("figures") / preset.name
    t0 = time.perf_counter()
    rows = extrapolation.run(preset, out, progress=args.progress)
    t_extrap = time.perf_counter() - t0
    timings = {"extrapolation_seconds": t_extrap}
    if args.attribution:
        try:
            from . import attribution
        except ImportError:  # pragma: no cover - the attribution study is optional
            attribution = None
        if attribution is not None:
            t1 = time.perf_counter()
            attribution.run(preset, out, progress=args.progress)
            timings["attribution_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    made = figures.draw_all(out, fig_dir, preset.t_train)
    timings["figures_seconds"] = time.perf_counter() - t2
    timings["total_seconds"] = time.perf_counter() - t0
    write_json_atomic(out / "timings.json", timings)
    print(extrapolation.summary_markdown(rows))
    print(f"figures: {', '.join(str(p) for p in made)}")
    print(f"wall time {timings['total_seconds']:.1f} s (extrapolation {t_extrap:.1f} s); results in {out}")


if __name__ == "__main__":
    main()
