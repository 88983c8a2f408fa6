"""The multi-host study: the sweep is split across processes that meet at one barrier."""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.multihost import my_jobs
from experiments.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def test_jobs_are_split_disjoint_and_complete():
    preset = PRESETS["full"]
    everything = my_jobs(preset, 0, 1)
    shares = [my_jobs(preset, i, 3) for i in range(3)]
    assert sorted(map(repr, sum(shares, []))) == sorted(map(repr, everything))
    assert len(everything) == len(preset.systems) * len(preset.models) * len(preset.seeds)
    with pytest.raises(ValueError, match="process index"):
        my_jobs(preset, 3, 3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_one_machine(tmp_path):
    """A real `jax.distributed` run: two processes on this machine split the tiny sweep."""
    port = _free_port()
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "experiments.multihost", "--preset", "tiny", "--out", str(tmp_path / "out"),
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert "[process 0]" in outputs[0] and "[process 1]" in outputs[1]
    with open(tmp_path / "out" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == set(PRESETS["tiny"].models)
    assert all(r["status"] == "ok" for r in rows)
