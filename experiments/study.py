"""The main job: `python -m experiments.study --preset quick [--steps 300 --seeds 0 1 2 ...]`.

Runs the extrapolation study, the attribution study and the figures for a
preset, writing everything under `--out` (default `results/<preset>/`), the
figures in `<out>/figures/` unless `--figures` says otherwise, then prints the
summary table. Every preset field is a flag; the overrides are recorded in
`config.json` and in each run's hash. A rerun reuses finished runs whose
configuration is unchanged and resumes interrupted ones.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from ._runtime import setup_jax, write_json_atomic
from .presets import cli
from .runs import Output


@dataclasses.dataclass
class Args:
    """Runs the whole study for a preset: tiny (tests), quick (a laptop CPU, minutes),
    standard (every system, a CPU for hours) or full (one GPU)."""

    out: Path | None = None
    """output directory (default results/<preset>/)"""
    figures: Path | None = None
    """figure directory (default <out>/figures/)"""
    attribution: bool = True
    """also run the attribution study"""
    workers: int | None = None
    """parallel runs (default: one per CPU core on a CPU, 1 on an accelerator; see
    experiments.workers)"""
    progress: bool = True


def main(argv=None) -> None:
    from . import attribution, extrapolation, figures
    from .workers import default_workers

    args, preset, overrides = cli(Args, argv)  # a bad preset or value fails here, before any work
    setup_jax()
    output = Output(args.out or Path("results") / preset.name, args.figures)
    workers = default_workers() if args.workers is None else args.workers
    t0 = time.perf_counter()
    # each worker attributes the runs it trained, while the others still train
    rows = extrapolation.run(
        preset,
        output,
        progress=args.progress,
        overrides=overrides,
        workers=workers,
        then=attribution.attribute_run if args.attribution else None,
    )
    timings = {"runs_seconds": time.perf_counter() - t0, "workers": workers}
    # the runs' own training and compilation (their recipes; pilots, scoring and attribution
    # not included), summed over the runs of this invocation and any reused
    for column in ("train_seconds", "compile_seconds"):
        timings[f"{column}_sum"] = float(
            sum(r[column] for r in rows if r["status"] == "ok" and math.isfinite(r[column]))
        )
    if args.attribution:
        t1 = time.perf_counter()
        try:  # collects the attributions made above (and makes any that are missing)
            attribution.run(preset, output, progress=args.progress, workers=workers)
        except attribution.NothingToAttribute as e:
            print(f"[attribution] {e}")
        timings["attribution_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    made = figures.draw_all(output, preset.t_train)
    timings["figures_seconds"] = time.perf_counter() - t2
    timings["total_seconds"] = time.perf_counter() - t0
    write_json_atomic(output.timings, timings)
    print(extrapolation.summary_markdown(rows))
    print(f"figures: {', '.join(str(p) for p in made)}")
    print(
        f"wall time {timings['total_seconds']:.1f} s (training, scoring and attributing the "
        f"runs {timings['runs_seconds']:.1f} s on {workers} worker(s)); results in {output.root}"
    )


if __name__ == "__main__":
    main()
