"""One optax training loop for every model, and ensembles trained in one compiled program.

The loop is pure at the JAX boundary: the model is split with `nnx.split`
into a graph definition, its trainable `nnx.Param`s and the rest; each jitted
call runs a chunk of `eval_every` steps under `lax.scan`, then evaluates the
validation loss. Minibatches depend only on `(key, step)`, so a run resumed
from a checkpoint replays exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import PRNGKeyArray

from ._base import AbstractModel


class TrainingDiverged(RuntimeError):
    """The loss became non-finite. The model keeps its last finite parameters.

    Attributes: `step` (the first step with a non-finite loss or update),
    `last_finite_loss`, and `model` (the model holding the last finite parameters).
    """

    def __init__(self, step: int, last_finite_loss: float, model=None, member: int | None = None):
        who = "" if member is None else f" (ensemble member {member})"
        super().__init__(
            f"training diverged{who} at step {step}: the loss became non-finite; "
            f"last finite loss {last_finite_loss:.6g}; the last finite parameters were kept"
        )
        self.step, self.last_finite_loss, self.model, self.member = step, last_finite_loss, model, member


@dataclasses.dataclass(frozen=True)
class _Config:
    steps: int
    batch_size: int
    lr: float
    eval_every: int
    patience: int | None
    grad_clip: float
    warmup: int
    precision: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _config(steps, batch_size, lr, eval_every, patience, grad_clip, warmup, precision) -> _Config:
    """The run's configuration; `warmup` defaults to 5% of `steps`."""
    return _Config(steps=int(steps), batch_size=int(batch_size), lr=float(lr), eval_every=int(eval_every),
                   patience=patience, grad_clip=float(grad_clip),
                   warmup=int(warmup if warmup is not None else max(1, steps // 20)), precision=precision)


# --------------------------------------------------------------------------- checks
def _validate(model, dataset, *, steps, batch_size, lr, eval_every, patience, precision):
    if not isinstance(model, AbstractModel):
        raise ValueError(f"model must be one of this package's models, got {type(model).__name__}")
    if not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    if not isinstance(eval_every, (int, np.integer)) or eval_every <= 0:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    if patience is not None and (not isinstance(patience, (int, np.integer)) or patience < 1):
        raise ValueError(f"patience must be None or a positive integer, got {patience!r}")
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be 'float32' or 'float64', got {precision!r}")
    if precision == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("precision='float64' needs jax_enable_x64: jax.config.update('jax_enable_x64', True)")
    if dataset.state_dim != model.state_dim:
        raise ValueError(
            f"dataset state_dim {dataset.state_dim} does not match the model's state_dim {model.state_dim}"
        )
    system = getattr(dataset, "system", None)
    if model.needs_canonical and system is not None and not system.second_order:
        raise ValueError(
            f"{type(model).__name__} needs a canonical (q, p) state, but {type(system).__name__} "
            "is a first-order system"
        )
    for name in ("train", "val"):
        if not np.all(np.isfinite(dataset.split(name))):
            raise ValueError(f"dataset.{name} contains NaN or inf")


# --------------------------------------------------------------------------- pure core
def _windows_of(data, length, max_windows=256):
    """Deterministic, evenly spaced windows `(M, length, d)` from `(N, T, d)` (for validation)."""
    n, t, _ = data.shape
    starts = np.arange(0, t - length + 1, max(1, length))
    idx = [(i, s) for i in range(n) for s in starts]
    if len(idx) > max_windows:
        idx = [idx[j] for j in np.linspace(0, len(idx) - 1, max_windows).astype(int)]
    return np.stack([data[i, s : s + length] for i, s in idx]) if idx else data[:, :length]


def _make_optimizer(cfg: _Config):
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, warmup_steps=max(1, cfg.warmup), decay_steps=max(cfg.steps, cfg.warmup + 1),
        end_value=cfg.lr * 0.01,
    )
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(sched))


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _init_state(params, opt):
    f = jnp.result_type(float)
    return {
        "params": params,
        "opt_state": opt.init(params),
        "best_params": params,
        "step": jnp.asarray(0, jnp.int32),
        "best_val": jnp.asarray(jnp.inf, f),
        "bad_evals": jnp.asarray(0, jnp.int32),
        "stopped": jnp.asarray(False),
        "diverged": jnp.asarray(False),
        "diverged_step": jnp.asarray(-1, jnp.int32),
        "last_loss": jnp.asarray(jnp.nan, f),
    }


def _build_chunk(graphdef, opt, cfg: _Config, window: int, has_val: bool):
    """Returns `chunk(state, rest, key, train, val_windows, n_steps) -> (state, mean_loss, val)`."""

    def loss_fn(params, rest, windows):
        return nnx.merge(graphdef, params, rest).loss(windows)

    def sample(key, step, train):
        k = jax.random.fold_in(key, step)
        k_i, k_s = jax.random.split(k)
        n, t, d = train.shape
        idx = jax.random.randint(k_i, (cfg.batch_size,), 0, n)
        start = jax.random.randint(k_s, (cfg.batch_size,), 0, t - window + 1)
        return jax.vmap(lambda i, s: jax.lax.dynamic_slice(train[i], (s, 0), (window, d)))(idx, start)

    def chunk(state, rest, key, train, val_windows, n_steps):
        def body(st, _):
            active = ~st["stopped"] & ~st["diverged"]
            windows = sample(key, st["step"], train)
            loss, grads = jax.value_and_grad(loss_fn)(st["params"], rest, windows)
            updates, new_opt = opt.update(grads, st["opt_state"], st["params"])
            new_params = optax.apply_updates(st["params"], updates)
            finite = jnp.isfinite(loss) & _all_finite(new_params)
            ok = active & finite
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
            st = dict(st)
            st["params"] = keep(new_params, st["params"])
            st["opt_state"] = keep(new_opt, st["opt_state"])
            st["diverged_step"] = jnp.where(active & ~finite, st["step"], st["diverged_step"])
            st["diverged"] = st["diverged"] | (active & ~finite)
            st["last_loss"] = jnp.where(ok, loss, st["last_loss"])
            st["step"] = st["step"] + ok.astype(jnp.int32)
            return st, jnp.where(ok, loss, jnp.nan)

        was_active = ~state["stopped"] & ~state["diverged"]
        state, losses = jax.lax.scan(body, state, None, length=n_steps)
        mean_loss = jnp.nanmean(losses)
        if has_val:
            val = loss_fn(state["params"], rest, val_windows)
            evaluate = was_active & ~state["diverged"]
            improved = evaluate & jnp.isfinite(val) & (val < state["best_val"])
            state["best_params"] = jax.tree.map(
                lambda a, b: jnp.where(improved, a, b), state["params"], state["best_params"]
            )
            state["best_val"] = jnp.where(improved, val, state["best_val"])
            state["bad_evals"] = jnp.where(improved, 0, state["bad_evals"] + evaluate.astype(jnp.int32))
            if cfg.patience is not None:
                state["stopped"] = state["stopped"] | (state["bad_evals"] >= cfg.patience)
        else:
            val = jnp.asarray(jnp.nan, mean_loss.dtype)
            state["best_params"] = state["params"]
        state["stopped"] = state["stopped"] | (state["step"] >= cfg.steps)
        return state, mean_loss, val

    return chunk


# --------------------------------------------------------------------------- checkpoints
class _Checkpoints:
    """Orbax checkpoints of the training state, plus a JSON-lines log and the run's fingerprint."""

    def __init__(self, directory, fingerprint: dict):
        import orbax.checkpoint as ocp

        self.dir = Path(directory).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        fp_path = self.dir / "run.json"
        if fp_path.exists():
            stored = json.loads(fp_path.read_text())
            if stored != fingerprint:
                diff = {k: (stored.get(k), v) for k, v in fingerprint.items() if stored.get(k) != v}
                raise ValueError(
                    f"checkpoint_dir {self.dir} holds a run with different arguments {diff}; "
                    "use a fresh directory"
                )
        else:
            tmp = fp_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(fingerprint, sort_keys=True))
            tmp.replace(fp_path)
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        if jax.process_count() > 1:  # every process checkpoints its own runs, independently
            me = jax.process_index()
            (self.dir / "state").mkdir(exist_ok=True)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=2, create=False,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process{me}"),
            )
        self.mngr = ocp.CheckpointManager(self.dir / "state", options=options)
        self.log = self.dir / "log.jsonl"

    def restore(self, template):
        step = self.mngr.latest_step()
        if step is None:
            if self.log.exists():  # records of a run killed before its first checkpoint
                self._rewrite_log([])
            return None, []
        leaves, treedef = jax.tree.flatten(template)
        abstract = {str(i): jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                    for i, x in enumerate(leaves)}
        restored = self.mngr.restore(step, args=self._ocp.args.StandardRestore(abstract))
        state = jax.tree.unflatten(treedef, [restored[str(i)] for i in range(len(leaves))])
        history = []
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interruption
                    continue
                if rec["chunk"] <= step:
                    history.append(rec)
        self._rewrite_log(history)
        return (state, step), history

    def _rewrite_log(self, history):
        tmp = self.log.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
        tmp.replace(self.log)

    def save(self, chunk: int, state, record: dict):
        # The log line first: a run killed before the checkpoint lands leaves a record that
        # `restore` drops (its chunk is past the latest step), never a checkpoint without one.
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")
        leaves = jax.tree.leaves(state)
        if jax.process_count() > 1:  # host-local arrays: saved as NumPy by this process alone
            leaves = [np.asarray(x) for x in leaves]
        self.mngr.save(chunk, args=self._ocp.args.StandardSave({str(i): x for i, x in enumerate(leaves)}))
        self.mngr.wait_until_finished()

    def close(self):
        self.mngr.close()


# --------------------------------------------------------------------------- driver
def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _run(models, dataset, keys, *, cfg: _Config, checkpoint_dir, progress, log_path, strategy, desc):
    """Trains `len(models)` members at once; returns the trained models and their histories."""
    dtype = jnp.float64 if cfg.precision == "float64" else jnp.float32
    for m in models:
        m.prepare(dataset)
    graphdef, *_ = nnx.split(models[0], nnx.Param, ...)
    splits = [nnx.split(m, nnx.Param, ...)[1:] for m in models]
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[_cast(s[0], dtype) for s in splits])
    rest = jax.tree.map(lambda *xs: jnp.stack(xs), *[_cast(s[1], dtype) for s in splits])
    n_members = len(models)

    window = models[0].window_length(dataset.n_train_steps)
    train = jnp.asarray(dataset.train, dtype)
    has_val = dataset.val.shape[0] > 0
    val_windows = jnp.asarray(_windows_of(dataset.val, window) if has_val else dataset.train[:1, :window], dtype)
    key_data = jnp.stack([jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else k
                          for k in keys])
    state = jax.vmap(lambda p: _init_state(p, _make_optimizer(cfg)))(params)

    sharding = _member_sharding(n_members)
    if sharding is not None:
        state, rest, key_data = jax.device_put((state, rest, key_data), sharding)
    step_fn = _compiled_chunk(graphdef, cfg, window, has_val, strategy)

    ckpt = None
    history: list[dict] = []
    n_chunks = -(-cfg.steps // cfg.eval_every)
    start_chunk = 0
    if checkpoint_dir is not None:
        fingerprint = dict(cfg.as_dict(), model=type(models[0]).__name__, members=n_members,
                           keys=np.asarray(key_data).tolist(), window=window,
                           data=float(np.asarray(dataset.train, np.float64).sum()))
        ckpt = _Checkpoints(checkpoint_dir, fingerprint)
        restored, history = ckpt.restore(state)
        if restored is not None:
            state, start_chunk = restored
    if log_path is not None and checkpoint_dir is None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        open(log_path, "w").close()

    from tqdm.auto import tqdm

    bar = tqdm(total=n_chunks, initial=start_chunk, desc=desc, disable=not progress, leave=False)
    t0 = time.perf_counter()
    try:
        for c in range(start_chunk, n_chunks):
            if bool(jnp.all(state["stopped"] | state["diverged"])):
                break
            n_steps = min(cfg.eval_every, cfg.steps - c * cfg.eval_every)
            state, loss, val = step_fn(state, rest, key_data, train, val_windows, n_steps)
            loss, val = np.asarray(loss), np.asarray(val)
            rec = {
                "chunk": c + 1,
                "step": np.asarray(state["step"]).tolist(),
                "train_loss": [None if not np.isfinite(x) else float(x) for x in loss],
                "val_loss": [None if not np.isfinite(x) else float(x) for x in val],
                "seconds": time.perf_counter() - t0,
            }
            history.append(rec)
            if ckpt is not None:
                ckpt.save(c + 1, state, rec)
            elif log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{np.nanmean(loss):.3g}", val=f"{np.nanmean(val):.3g}")
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()

    diverged = np.asarray(state["diverged"])
    final = jax.tree.map(
        lambda best, cur: jnp.where(
            jnp.reshape(jnp.asarray(diverged), (-1,) + (1,) * (best.ndim - 1)), cur, best),
        state["best_params"], state["params"],
    ) if has_val else state["params"]
    for i, m in enumerate(models):
        nnx.update(m, jax.tree.map(lambda x: x[i], final), jax.tree.map(lambda x: x[i], rest))
    return models, history, state, diverged


@functools.lru_cache(maxsize=64)
def _compiled_chunk(graphdef, cfg: _Config, window: int, has_val: bool, strategy: str):
    """The jitted, member-batched training chunk; cached, so that repeated fits of the same
    architecture and configuration (seeds, ensembles, resumed runs) compile once."""
    chunk = _build_chunk(graphdef, _make_optimizer(cfg), cfg, window, has_val)

    def run_member(st, r, kd, train, val_windows, n_steps):
        return chunk(st, r, jax.random.wrap_key_data(kd), train, val_windows, n_steps)

    if strategy == "single":  # one member: no batching at all (a vmap of one costs ~15% on the LSTM)
        def batched(st, r, kd, train, val_windows, n):
            squeeze = lambda t: jax.tree.map(lambda x: x[0], t)  # noqa: E731
            out = run_member(squeeze(st), squeeze(r), kd[0], train, val_windows, n)
            return jax.tree.map(lambda x: x[None], out)
    elif strategy == "vmap":
        batched = jax.vmap(run_member, in_axes=(0, 0, 0, None, None, None))
    elif strategy == "map":
        def batched(st, r, kd, train, val_windows, n):
            return jax.lax.map(lambda a: run_member(*a, train, val_windows, n), (st, r, kd))
    else:
        raise ValueError(f"strategy must be 'vmap' or 'map', got {strategy!r}")
    return jax.jit(batched, static_argnums=5)


def _member_sharding(n_members: int):
    """Shards the member axis over all local devices where there are several and they divide it."""
    devices = jax.local_devices()
    n_dev = len(devices)
    while n_dev > 1 and n_members % n_dev:
        n_dev -= 1
    if n_dev <= 1:
        return None
    mesh = jax.sharding.Mesh(np.array(devices[:n_dev]), ("members",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))


def _history_of(history, i):
    return [
        {"chunk": r["chunk"], "step": r["step"][i], "train_loss": r["train_loss"][i],
         "val_loss": r["val_loss"][i], "seconds": r["seconds"]}
        for r in history
    ]


def fit(
    model: AbstractModel,
    dataset,
    *,
    steps: int,
    key: PRNGKeyArray,
    batch_size: int = 32,
    lr: float = 1e-3,
    checkpoint_dir: str | os.PathLike | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    grad_clip: float = 1.0,
    warmup: int | None = None,
    precision: str = "float32",
    progress: bool = True,
    log_path: str | os.PathLike | None = None,
):
    """Trains `model` on `dataset.train` with Adam; returns `(model, history)`.

    **Arguments:**

    - `steps`: optimisation steps; `batch_size` windows per step, each cut at a
      random position of a random training trajectory (the window length is
      the model's: whole trajectories for the LSTM, short windows for the ODE
      models).
    - `key`: PRNG key; the run is deterministic given it.
    - `lr`: peak learning rate of a linear-warm-up, cosine-decay schedule
      (`warmup` steps, default 5% of `steps`); gradients clipped to global norm
      `grad_clip`.
    - `eval_every`: steps per compiled chunk; the validation loss on `val` is
      evaluated after each, and the parameters with the lowest one are
      returned. `patience`: stop after that many evaluations without
      improvement (None: never stop early).
    - `checkpoint_dir`: orbax checkpoints after every chunk and a JSON-lines
      log; a rerun with the same arguments resumes and ends with the same
      parameters as an uninterrupted run.
    - `precision`: `"float32"` or `"float64"` (needs `jax_enable_x64`).
    - `progress`: show a progress bar; `log_path`: JSON-lines log without checkpoints.

    **Returns:** the trained model (updated in place) and a list of records
    `{chunk, step, train_loss, val_loss, seconds}`.

    **Raises:** `ValueError` for bad arguments; `TrainingDiverged` when the
    loss becomes non-finite (the model keeps its last finite parameters).
    """
    _validate(model, dataset, steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
              patience=patience, precision=precision)
    cfg = _config(steps, batch_size, lr, eval_every, patience, grad_clip, warmup, precision)
    (model,), history, state, diverged = _run(
        [model], dataset, [key], cfg=cfg, checkpoint_dir=checkpoint_dir, progress=progress,
        log_path=log_path, strategy="single", desc=type(model).__name__,
    )
    if diverged[0]:
        raise TrainingDiverged(int(state["diverged_step"][0]), float(state["last_loss"][0]), model)
    return model, _history_of(history, 0)


def fit_ensemble(
    make_model: Callable[[nnx.Rngs], AbstractModel],
    dataset,
    *,
    keys: Sequence[PRNGKeyArray],
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    checkpoint_dir: str | os.PathLike | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    grad_clip: float = 1.0,
    warmup: int | None = None,
    precision: str = "float32",
    strategy: str | None = None,
    progress: bool = True,
):
    """Trains one member per key in one compiled program; returns `(ensemble, histories)`.

    Member `i` is `make_model(nnx.Rngs(keys[i]))`, trained exactly as
    `fit(member, dataset, key=keys[i], ...)` would train it (same batches,
    same early stopping), so the result equals training each alone. The
    parameters carry a leading member axis; they are sharded over all local
    devices (a `jax.sharding` mesh over the member axis) where there are
    several. `strategy`: `"vmap"` (one batched program; the default on
    accelerators) or `"map"` (`lax.map` over members inside one program; the
    default on CPU, where a step is bound by arithmetic and batching gains
    nothing).

    **Returns:** the list of trained members and a list of per-member histories.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("keys must hold at least one PRNG key")
    models = [make_model(nnx.Rngs(k)) for k in keys]
    _validate(models[0], dataset, steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
              patience=patience, precision=precision)
    if strategy is None:
        strategy = "map" if jax.default_backend() == "cpu" else "vmap"
    cfg = _config(steps, batch_size, lr, eval_every, patience, grad_clip, warmup, precision)
    models, history, state, diverged = _run(
        models, dataset, keys, cfg=cfg, checkpoint_dir=checkpoint_dir, progress=progress,
        log_path=None, strategy=strategy, desc=f"ensemble of {len(models)}",
    )
    histories = [_history_of(history, i) for i in range(len(models))]
    if diverged.any():
        i = int(np.flatnonzero(diverged)[0])
        raise TrainingDiverged(int(state["diverged_step"][i]), float(state["last_loss"][i]), models, member=i)
    return models, histories
