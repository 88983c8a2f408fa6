"""Datasets with interpolation and extrapolation splits, saved as one checksummed `.npz`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
import zipfile
from importlib import metadata as _md
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from . import _validate as v
from ._base import AbstractSystem
from ._simulate import simulate

_SPLITS = ("train", "val", "test", "test_ood", "test_continuation")
_FORMAT = 2  # 2: test_continuation


def _package_version() -> str:
    try:
        return _md.version("oscillator-dynamics-study")
    except _md.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Trajectories of one system on a uniform time grid `ts = dt * arange(T)`.

    - `train`: `(n_train, T_train, state_dim)`, noisy, times `[0, t_train]`;
    - `val`: `(n_val, T_train, state_dim)`, held-out initial states, noisy like
      `train` (what a practitioner would really hold out), `[0, t_train]`;
    - `test`: `(n_test, T, state_dim)`, held-out initial states, clean, `[0, t_end]`;
    - `test_ood`: like `test` but initial states drawn with `scale=ood_scale`
      (higher energies than seen in training);
    - `test_continuation`: `(n_continuation, T, state_dim)`, the clean
      trajectories of the first `n_continuation` *training* initial states over
      `[0, t_end]`: the continuation protocol, in which a model forecasts the
      records it was trained on beyond the training window (with one training
      trajectory, the motivating experiment).

    `T_train = round(t_train / dt) + 1`; `ts[:T_train]` are the training times.
    """

    system: AbstractSystem | None
    ts: np.ndarray
    t_train: float
    dt: float
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_ood: np.ndarray
    metadata: dict
    test_continuation: np.ndarray | None = None

    def __post_init__(self):
        if self.test_continuation is None:  # a dataset built without one: no continuation
            empty = np.zeros((0, len(self.ts), self.train.shape[-1]), self.test.dtype)
            object.__setattr__(self, "test_continuation", empty)

    @property
    def n_train_steps(self) -> int:
        return self.train.shape[1]

    @property
    def ts_train(self) -> np.ndarray:
        return self.ts[: self.n_train_steps]

    @property
    def t_end(self) -> float:
        return float(self.ts[-1])

    @property
    def state_dim(self) -> int:
        return self.train.shape[-1]

    def split(self, name: str) -> np.ndarray:
        if name not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {name!r}")
        return getattr(self, name)

    # ---------------------------------------------------------------- save/load
    def _arrays(self) -> dict[str, np.ndarray]:
        return {"ts": self.ts, **{s: getattr(self, s) for s in _SPLITS}}

    def save(self, path: str | Path) -> Path:
        """Writes one `.npz`: the arrays and a JSON metadata record with a SHA-256 checksum.

        The file is written to a temporary name and renamed, so an interrupted
        save never leaves a half-written dataset under `path`.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        meta = dict(self.metadata)
        meta.update(
            format=_FORMAT,
            t_train=self.t_train,
            dt=self.dt,
            package_version=_package_version(),
            system=_describe_system(self.system),
        )
        arrays = {k: np.ascontiguousarray(a) for k, a in self._arrays().items()}
        meta["checksum"] = _checksum(arrays, meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own: concurrent writers of the same dataset (several processes of one
        # study) must not rename each other's temporary file away
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, metadata=np.array(json.dumps(meta, sort_keys=True)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, system: AbstractSystem | None = None) -> Dataset:
        """Reads a file written by `save`, verifying its checksum.

        `system` is needed only for a `HamiltonianSystem` (a Python callable
        cannot be stored); other systems are rebuilt from the metadata.

        **Raises:** `ValueError` if the file is missing pieces, truncated or altered.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                missing = {"metadata", "ts", *_SPLITS} - names
                if missing:
                    raise ValueError(f"dataset file {path} lacks {sorted(missing)}")
                meta = json.loads(str(z["metadata"]))
                arrays = {k: z[k] for k in ("ts", *_SPLITS)}
        except ValueError:
            raise
        except (OSError, zipfile.BadZipFile, EOFError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(
                f"dataset file {path} is unreadable (truncated or corrupted): {e}"
            ) from e
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"dataset file {path} has format {meta.get('format')!r}, this version reads "
                f"format {_FORMAT} (with test_continuation): regenerate it"
            )
        stored = meta.pop("checksum", None)
        actual = _checksum(arrays, meta)
        if stored != actual:
            raise ValueError(
                f"dataset file {path} failed its checksum "
                f"(stored {stored!r}, computed {actual!r}): "
                "it was altered or corrupted"
            )
        sys_meta = meta.get("system")
        if system is None:
            system = _rebuild_system(sys_meta)
        elif sys_meta and sys_meta.get("class") not in (
            type(system).__qualname__,
            type(system).__name__,
        ):
            raise ValueError(
                f"system is a {type(system).__name__} but the file holds a {sys_meta.get('class')}"
            )
        return cls(
            system=system,
            ts=arrays["ts"],
            t_train=float(meta["t_train"]),
            dt=float(meta["dt"]),
            metadata=meta,
            **{s: arrays[s] for s in _SPLITS},
        )


def _checksum(arrays: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    body = {k: val for k, val in meta.items() if k != "checksum"}
    h.update(json.dumps(body, sort_keys=True).encode())
    return h.hexdigest()


def _describe_system(system) -> dict | None:
    """The system's class (module and qualified name, so a user's own subclass is found again)
    and constructor arguments; `params` is None where they cannot be stored (a callable)."""
    if system is None:
        return None
    cls = type(system)
    try:
        params = system.parameters()
        json.dumps(params)
    except (TypeError, ValueError):
        params = None  # e.g. the callable of a HamiltonianSystem: pass `system=` to `load`
    return {"class": cls.__qualname__, "module": cls.__module__, "params": params}


def _rebuild_system(desc):
    if desc is None:
        return None
    import importlib

    import dynamics

    name = desc["class"]
    try:
        where = importlib.import_module(desc["module"]) if "module" in desc else dynamics
    except ImportError as e:
        raise ValueError(
            f"dataset metadata names system module {desc['module']!r}, "
            f"which cannot be imported: {e}"
        ) from e
    cls = where
    for part in name.split("."):
        cls = getattr(cls, part, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, AbstractSystem)):
        raise ValueError(f"unknown system class {name!r} in dataset metadata")
    if desc.get("params") is None:
        return None  # its parameters cannot be stored (a callable); pass `system=` to `load`
    return cls(**desc["params"])


def make_dataset(
    system: AbstractSystem,
    *,
    key: PRNGKeyArray,
    n_train: int,
    n_val: int,
    n_test: int,
    dt: float,
    t_train: float,
    t_end: float,
    noise: float = 0.0,
    relative_noise: float = 0.0,
    ood_scale: float = 2.0,
    n_continuation: int | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-8,
) -> Dataset:
    """Simulates a dataset with interpolation (`[0, t_train]`) and extrapolation
    (`(t_train, t_end]`) splits.

    Initial states come from `system.sample_initial_states` (scale 1 for
    `train`, `val`, `test`; `ood_scale` for `test_ood`). `noise` is the
    standard deviation of independent Gaussian noise added to every coordinate
    of `train` and `val` (absolute, as in the HNN paper); `relative_noise`
    adds noise whose standard deviation is that fraction of each coordinate's
    standard deviation over the clean training trajectories (the study's
    observation noise: `relative_noise=0.01` is 1% of each coordinate's
    spread). `test` and `test_ood` are clean. `test_continuation` holds the
    clean trajectories of the first `n_continuation` training initial states
    (default `min(n_train, n_test)`) over `[0, t_end]`, simulated with the others
    (their first `T_train` states are `train`'s before its noise).
    """
    if not isinstance(system, AbstractSystem):
        raise ValueError(f"system must be a dynamics system, got {type(system).__name__}")
    for name, n, lo in (("n_train", n_train, 1), ("n_val", n_val, 0), ("n_test", n_test, 1)):
        if not isinstance(n, (int, np.integer)) or n < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {n!r}")
    # validated, then kept as Python floats (float32 would spoil `t_train / dt`)
    v.scalar("dt", dt, positive=True), v.scalar("t_train", t_train, positive=True)
    v.scalar("t_end", t_end, positive=True), v.scalar("noise", noise, nonnegative=True)
    v.scalar("relative_noise", relative_noise, nonnegative=True)
    v.scalar("ood_scale", ood_scale, positive=True)
    if n_continuation is None:
        n_continuation = min(n_train, n_test)
    if not isinstance(n_continuation, (int, np.integer)) or not 1 <= n_continuation <= n_train:
        raise ValueError(
            f"n_continuation must be an integer in [1, n_train={n_train}], got {n_continuation!r}"
        )
    dt, t_train, t_end, noise, ood_scale = map(float, (dt, t_train, t_end, noise, ood_scale))
    if not t_end >= t_train:
        raise ValueError(f"t_end must be >= t_train, got t_end={t_end!r} < t_train={t_train!r}")
    n_tr = round(t_train / dt)
    n_end = round(t_end / dt)
    for name, t, steps in (("t_train", t_train, n_tr), ("t_end", t_end, n_end)):
        if steps < 1 or abs(steps * dt - t) > 1e-9 * max(1.0, t):
            raise ValueError(f"{name}={t!r} must be a positive multiple of dt={dt!r}")
    ts = dt * np.arange(n_end + 1)

    k_in, k_ood, k_noise = jax.random.split(key, 3)
    y0 = system.sample_initial_states(k_in, int(n_train + n_val + n_test))
    y0_ood = system.sample_initial_states(k_ood, int(n_test), scale=ood_scale)
    ys = np.asarray(simulate(system, jnp.concatenate([y0, y0_ood]), ts, rtol=rtol, atol=atol))
    train = ys[:n_train, : n_tr + 1]
    continuation = ys[:n_continuation]
    val = ys[n_train : n_train + n_val, : n_tr + 1]
    test = ys[n_train + n_val : n_train + n_val + n_test]
    test_ood = ys[n_train + n_val + n_test :]
    relative_noise = float(relative_noise)
    if noise > 0 or relative_noise > 0:
        # per coordinate: the absolute part plus the relative part of the clean spread
        sigma = noise + relative_noise * train.reshape(-1, train.shape[-1]).std(0)
        kt, kv = jax.random.split(k_noise)
        train = train + sigma * np.asarray(jax.random.normal(kt, train.shape, dtype=train.dtype))
        val = val + sigma * np.asarray(jax.random.normal(kv, val.shape, dtype=val.dtype))
    meta = dict(
        seed=np.asarray(jax.random.key_data(key)).ravel().tolist(),
        n_train=int(n_train),
        n_val=int(n_val),
        n_test=int(n_test),
        t_end=t_end,
        noise=noise,
        relative_noise=relative_noise,
        ood_scale=ood_scale,
        n_continuation=int(n_continuation),
        rtol=rtol,
        atol=atol,
    )
    return Dataset(
        system=system,
        ts=ts,
        t_train=t_train,
        dt=dt,
        train=train,
        val=val,
        test=test,
        test_ood=test_ood,
        metadata=meta,
        test_continuation=continuation,
    )
