"""Running the study across several hosts with `jax.distributed`.

Each process initialises `jax.distributed` (coordinator address, number of
processes and its own index; on Slurm, Open MPI or a TPU pod these are found
automatically), takes every `process_count`-th run of the study's sweep
(system x model x seed) and writes its runs into the shared output
directory; the runs are independent, so nothing is exchanged but a final
barrier, after which process 0 writes `metrics.csv` and `summary.md` from every
run. Within a process, `models.fit_ensemble` shards ensemble members over the
process's local devices. A rerun skips finished runs, so a failed host is
simply restarted.

On two hosts sharing `/shared/results`:

```
# host 0
python -m experiments.multihost --preset full --out /shared/results/full \\
    --coordinator host0:12345 --num-processes 2 --process-id 0
# host 1
python -m experiments.multihost --preset full --out /shared/results/full \\
    --coordinator host0:12345 --num-processes 2 --process-id 1
```

then `python -m experiments.figures --preset full --out /shared/results/full`.
With `--num-processes 1` (the default) it runs everything in one process.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ._runtime import setup_jax
from .presets import Preset, cli
from .runs import Output


def my_jobs(preset: Preset, process_index: int, process_count: int) -> list[tuple]:
    """This process's share of the sweep: a round-robin split, disjoint and complete."""
    from .extrapolation import jobs

    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} not in [0, {process_count})")
    return jobs(preset)[process_index::process_count]


def run(
    preset: Preset, output: Output, *, process_index: int = 0, process_count: int = 1, progress=True
):
    from . import extrapolation

    extrapolation.check_labels(preset)
    output.root.mkdir(parents=True, exist_ok=True)
    for spec, mspec, seed, n_train in my_jobs(preset, process_index, process_count):
        row = extrapolation.run_one(spec, mspec, preset, seed=seed, n_train=n_train, output=output)
        if progress:
            print(
                f"[process {process_index}] {spec.name} {row['model']} "
                f"n_train={n_train} seed {seed}: "
                f"{row['status']}",
                flush=True,
            )
    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("study runs finished")
    if process_index == 0:  # every run is finished and stored: this reads them back
        rows = [
            extrapolation.run_one(spec, mspec, preset, seed=seed, n_train=n_train, output=output)
            for spec, mspec, seed, n_train in my_jobs(preset, 0, 1)
        ]
        extrapolation.write_metrics(rows, output)
        return rows
    return None


@dataclasses.dataclass
class Args:
    """Runs this process's share of the study (see the module docstring)."""

    out: Path | None = None
    """output directory shared by every process (default results/<preset>/)"""
    coordinator: str | None = None
    """address host:port of process 0's coordinator (None: found by jax where it can)"""
    num_processes: int = 1
    process_id: int = 0
    progress: bool = True


def main(argv=None) -> None:
    import jax

    args, preset, _ = cli(Args, argv, default_preset="full")
    setup_jax()
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    run(
        preset,
        Output(args.out or Path("results") / preset.name),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        progress=args.progress,
    )


if __name__ == "__main__":
    main()
