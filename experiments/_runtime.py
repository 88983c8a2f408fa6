"""Process set-up shared by the experiment commands: float64, the compilation cache, provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax


def setup_jax(cache_dir: str | os.PathLike | None = None) -> None:
    """Enables float64 (the simulator works to 1e-8 tolerances) and a persistent compilation
    cache, so that a second run compiles little."""
    jax.config.update("jax_enable_x64", True)
    cache = Path(cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR", ".jax_cache")).absolute()
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    import flax
    import jaxlib
    import numpy as np
    import optax

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary file beside `path`, unique to this process and call: concurrent writers of
    the same file (the processes of a multi-host study) never rename each other's file away."""
    import uuid

    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    tmp.replace(path)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.write_text(text)
    tmp.replace(path)


def write_csv_atomic(path: Path, columns, rows) -> None:
    """Writes `rows` (dicts) with the given columns, replacing `path` atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_text_atomic(path, buf.getvalue())
