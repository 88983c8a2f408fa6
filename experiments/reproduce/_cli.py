"""The command line: `python -m experiments.reproduce [--preset tiny|quick|full] [--out DIR]
[--<budget> VALUE ...]`, every budget of the preset a flag of its own."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Literal

import jax
import tyro

from .._runtime import setup_jax
from ._presets import PRESETS, TASKS, Preset
from ._report import summary_markdown
from ._run import run

PresetName = Literal["tiny", "quick", "full"]
DEFAULT_PRESET = "quick"


@dataclasses.dataclass(frozen=True)
class Command:
    """Reproduces the HNN paper's mass-spring and pendulum table and the LNN double-pendulum
    energy error. `--preset` picks the defaults of the budgets, each of which is a flag of its
    own (`--hnn-steps 500 --lnn-seeds 0 1`); they enter the configuration hash that a rerun's
    stored results must match to be reused."""

    budgets: tyro.conf.OmitArgPrefixes[Preset]
    preset: PresetName = DEFAULT_PRESET
    """tiny (tests, seconds), quick (~1-2 min on a laptop CPU) or full (the paper's HNN set-up, \
several seeds)"""
    out: Path | None = None
    """output directory (default results/<preset>/)"""
    tasks: tuple[Literal["mass_spring", "pendulum", "double_pendulum"], ...] = TASKS
    """which reproductions to run"""
    force: bool = False
    """recompute rows that are already complete"""


def parse(argv=None) -> Command:
    """The command line, with the defaults of the preset that `--preset` names (an unknown name
    is refused by the parser, before any work)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default=DEFAULT_PRESET)
    name = first.parse_known_args(argv)[0].preset
    name = name if name in PRESETS else DEFAULT_PRESET  # the full parse below rejects it
    return tyro.cli(Command, args=argv, default=Command(budgets=PRESETS[name], preset=name))


def main(argv=None) -> list[dict]:
    cmd = parse(argv)
    preset = cmd.budgets
    setup_jax()  # the shared compilation cache ...
    # ... but the papers trained in float32; data are made in float64
    jax.config.update("jax_enable_x64", False)
    out = cmd.out or Path("results") / preset.name
    rows = run(preset, out, tasks=cmd.tasks, force=cmd.force)
    print(summary_markdown(rows, preset, {}))
    print(
        f"[reproduce] wrote {out / 'reproduce.csv'}, {out / 'reproduce.md'}, "
        f"{out / 'reproduce.json'}"
    )
    return rows
