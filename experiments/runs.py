"""Where everything lives under `--out`, and what makes a stored result valid.

`RunKey` names one run (system, model, seed, n_train) together with the hash
of everything that determines it; `Output` is the only place where paths under
`--out` are spelled:

```
<out>/config.json  metrics.csv  summary.md  timings.json  attribution.csv  probes.csv
<out>/data/<system>/seed<k>_n<N>.npz             datasets (their metadata carry their config)
<out>/runs/<system>/<model>/n<N>/seed<k>/       result.json config.json arrays.npz model.npz
                                                history.json checkpoint/  attribution.json
                                                attribution.npz probes.npz
<out>/figures/                                  figures (unless --figures says otherwise)
```

A finished run is reused only when the hash stored in its `result.json`
equals the current one; otherwise its directory is cleared (stale
checkpoints included) and it is recomputed, and the log says why.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

from .specs import ModelSpec, SystemSpec, config_hash

#: preset settings that determine a dataset
DATA_FIELDS = ("n_val", "n_test", "dt", "t_train", "t_end", "noise", "ood_scale")
#: preset settings that determine training and scoring (besides the data and the model)
RUN_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "lr_grid",
    "width_grid",
    "pilot",
    "eval_every",
    "context",
)


def slug(label: str) -> str:
    """A label as a directory name: `OscillatorModel(k=2)` -> `OscillatorModel_k=2`."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")


def data_config(spec: SystemSpec, system, preset, *, seed: int, n_train: int) -> dict:
    """Everything that determines a dataset: the system, the seed, the sizes and times."""
    return {
        "system": spec.describe(system),
        "seed": seed,
        "n_train": n_train,
        **{f: getattr(preset, f) for f in DATA_FIELDS},
    }


def run_config(
    spec: SystemSpec, system, model: ModelSpec, preset, *, seed: int, n_train: int
) -> dict:
    """Everything that determines a run: its data, the model as built, training and scoring."""
    return {
        "data": data_config(spec, system, preset, seed=seed, n_train=n_train),
        "model": model.describe(system, spec, preset),
        **{f: getattr(preset, f) for f in RUN_FIELDS},
    }


@dataclasses.dataclass(frozen=True)
class RunKey:
    """One run of the study and the hash of its configuration."""

    system: str
    model: str
    seed: int
    n_train: int
    config_hash: str

    @classmethod
    def of(cls, spec: SystemSpec, system, model: ModelSpec, preset, *, seed: int, n_train: int):
        cfg = run_config(spec, system, model, preset, seed=seed, n_train=n_train)
        return cls(spec.name, model.label_for(system), seed, n_train, config_hash(cfg)), cfg

    def describe(self) -> str:
        return f"{self.system} {self.model} n_train={self.n_train} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class Output:
    """The tree under one `--out` directory (see the module docstring)."""

    root: Path
    figures_dir: Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # ---- study-wide files
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.md"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def attribution_csv(self) -> Path:
        return self.root / "attribution.csv"

    @property
    def probes_csv(self) -> Path:
        return self.root / "probes.csv"

    @property
    def attribution_summary(self) -> Path:
        return self.root / "attribution_summary.md"

    @property
    def figures(self) -> Path:
        return Path(self.figures_dir) if self.figures_dir is not None else self.root / "figures"

    def data(self, system: str, *, seed: int, n_train: int) -> Path:
        return self.root / "data" / slug(system) / f"seed{seed}_n{n_train}.npz"

    # ---- one run
    def run_dir(self, key: RunKey) -> Path:
        return (
            self.root
            / "runs"
            / slug(key.system)
            / slug(key.model)
            / f"n{key.n_train}"
            / f"seed{key.seed}"
        )

    def run_file(self, key: RunKey, name: str) -> Path:
        """`result.json`, `config.json`, `arrays.npz`, `model.npz`, `history.json`,
        `attribution.json`, `attribution.npz`, `probes.npz` or `checkpoint`."""
        return self.run_dir(key) / name

    def results(self) -> list[Path]:
        """Every stored `result.json` (for readers that redraw without a preset)."""
        return sorted((self.root / "runs").glob("*/*/n*/seed*/result.json"))

    def stored_result(
        self, key: RunKey, config: dict | None = None, *, log=print, discard_stale: bool = True
    ) -> dict | None:
        """The finished result of `key`, or None. A result stored under another configuration
        is stale: with `discard_stale` (what a run that is about to recompute it wants) its
        directory is cleared (checkpoints included) and the log says why (which settings
        changed, where `config`, the current configuration, is given); without it (a reader
        such as `experiments.extrapolation.load_model`) nothing is touched."""
        path = self.run_file(key, "result.json")
        row = _read_json(path) if path.exists() else None
        stored = None if row is None else row.get("config_hash")
        if stored == key.config_hash:
            return row
        if not discard_stale:
            return None
        if not path.exists():
            cfg = self.run_file(key, "config.json")
            if cfg.exists() and _stored_hash(cfg) != key.config_hash:
                log(
                    f"[runs] {key.describe()}: an interrupted run of another configuration is "
                    "discarded (its checkpoints would not match)"
                )
                shutil.rmtree(self.run_dir(key), ignore_errors=True)
            return None
        changed = _changed(self.run_file(key, "config.json"), config)
        log(
            f"[runs] {key.describe()}: the stored result has config hash {stored}, the current "
            f"configuration {key.config_hash}{changed}; recomputing"
        )
        shutil.rmtree(self.run_dir(key), ignore_errors=True)
        return None


def _read_json(path: Path):
    """The parsed contents of `path`, or None where it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stored_hash(path: Path) -> str | None:
    row = _read_json(path)
    return None if row is None else row.get("config_hash")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _changed(stored_config: Path, config: dict | None) -> str:
    """` (changed: steps 60 -> 40, ...)` from a run's stored `config.json` and the current one."""
    if config is None:
        return ""
    try:
        old = _flatten(json.loads(stored_config.read_text())["config"])
    except (OSError, ValueError, KeyError):
        return ""
    from .specs import jsonable

    new = _flatten(jsonable(config))
    diff = [
        f"{k} {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return f" (changed: {', '.join(diff[:6])}{', ...' if len(diff) > 6 else ''})" if diff else ""
