"""One optax training loop for every model, and ensembles trained in one compiled program.

The loop is pure at the JAX boundary: the model is split with `nnx.split`
into a graph definition, its trainable `nnx.Param`s and the rest; each jitted
call runs a chunk of `eval_every` steps under `lax.scan`, then evaluates the
validation loss. Minibatches and loss keys depend only on `(key, step)`, so a
run resumed from a checkpoint replays exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractModel

#: `loss(model, batch, key) -> scalar`: see `fit`
Loss = Callable[[nnx.Module, Any, PRNGKeyArray], Float[Array, ""]]


class TrainingDiverged(RuntimeError):
    """The loss became non-finite. The model keeps its last finite parameters.

    Attributes: `step` (the first step with a non-finite loss or update),
    `last_finite_loss`, and `model` (the model holding the last finite parameters); `message`
    replaces the default text (a closed-form fit says which of its candidates blew up).
    """

    def __init__(
        self,
        step: int,
        last_finite_loss: float,
        model=None,
        member: int | None = None,
        message: str | None = None,
    ):
        who = "" if member is None else f" (ensemble member {member})"
        super().__init__(
            message
            or (
                f"training diverged{who} at step {step}: the loss became non-finite; "
                f"last finite loss {last_finite_loss:.6g}; the last finite parameters were kept"
            )
        )
        self.step, self.last_finite_loss, self.model, self.member = (
            step,
            last_finite_loss,
            model,
            member,
        )


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The configuration of one training run, shared by `fit` and `fit_ensemble` (and
    recorded in the checkpoint directory, which a rerun resumes only if it matches).

    **Fields:**

    - `steps`: optimisation steps (required; no default length suits every model).
    - `batch_size`: windows per step, each cut at a random position of a random
      training trajectory (ignored for full-batch data; see `fit`).
    - `lr`: peak learning rate of the default optimizer's linear-warm-up,
      cosine-decay schedule (to `lr / 100` at `steps`), over `warmup` steps
      (None: 5% of `steps`); gradients clipped to global norm `grad_clip`
      (`inf`: no clipping). These three configure only the default optimizer.
    - `eval_every`: steps per compiled chunk; the validation loss is evaluated
      (and a checkpoint written) after each.
    - `patience`: stop after that many evaluations without improvement of the
      validation loss (None: never stop early); `min_delta`: an improvement
      counts towards patience only when it lowers the best validation loss by
      more than this fraction of it (the best parameters are kept on any
      improvement).
    - `lr_decay`: None (the cosine schedule above) or a factor `gamma` in (0, 1):
      the **plateau schedule** (needs `patience`). The default optimizer warms up
      to `lr` and then holds it (no cosine decay); when `patience` evaluations
      bring no improvement by more than `min_delta`, the rate is multiplied by
      `gamma` and training continues from the best parameters so far, until it
      has been lowered `lr_decays` times; the next plateau, at the smallest rate
      `lr * gamma**lr_decays`, stops the run. A run stopped so has converged in
      the strict sense that lowering the rate brought nothing more; one that
      runs out of `steps` first has not. (With `optimizer=`, the factor scales
      that optimizer's updates.)
    - `hold`: the last `hold` of the `steps` hold the cosine schedule's final
      rate `lr / 100` (the decay ends at `steps - hold`), and `patience` counts
      only evaluations there, from the best validation loss reached by then:
      the run converges when `patience` evaluations at the smallest rate bring
      no improvement by more than `min_delta`, and is never stopped on the
      noise of the high rates before. 0: patience counts everywhere.
    - `precision`: `"float32"` or `"float64"` (needs `jax_enable_x64`): the
      dtype of the parameters and the data during training.
    - `window`: the length of the windows cut from the training trajectories
      (None: the model's own `window_length`); the stages of a recipe set it
      (a curriculum of window lengths).
    - `val_context`: None (validate on the loss over evenly spaced `val`
      windows) or `C`: validate on the long-horizon rollout instead, i.e.
      forecast every `val` trajectory from its first `C` states to its end and
      take the mean squared error, each coordinate divided by its variance over
      `val` (the study's `val_rollout_nmse`; the test protocol on held-out states).

    **Raises:** `ValueError` naming the field and the value for a bad value.
    """

    # NumPy scalars are accepted and stored as plain Python numbers
    steps: int | np.integer
    batch_size: int | np.integer = 32
    lr: float | np.floating = 1e-3
    eval_every: int | np.integer = 100
    patience: int | np.integer | None = None
    grad_clip: float | np.floating = 1.0
    warmup: int | np.integer | None = None
    precision: Literal["float32", "float64"] = "float32"
    window: int | np.integer | None = None
    val_context: int | np.integer | None = None
    min_delta: float | np.floating = 0.0
    lr_decay: float | np.floating | None = None
    lr_decays: int | np.integer = 2
    hold: int | np.integer = 0

    def __post_init__(self):
        def bad(field, requirement):
            raise ValueError(
                f"TrainConfig: {field} must be {requirement}, got {getattr(self, field)!r}"
            )

        for field in ("steps", "batch_size", "eval_every"):
            if not _is_int(getattr(self, field)) or getattr(self, field) < 1:
                bad(field, "a positive integer")
        if self.patience is not None and (not _is_int(self.patience) or self.patience < 1):
            bad("patience", "None or a positive integer")
        if self.warmup is not None and (not _is_int(self.warmup) or self.warmup < 0):
            bad("warmup", "None or a non-negative integer")
        for field in ("window", "val_context"):
            value = getattr(self, field)
            if value is not None and (not _is_int(value) or value < 1):
                bad(field, "None or a positive integer")
        if not isinstance(self.lr, (int, float, np.integer, np.floating)) or not (
            math.isfinite(self.lr) and self.lr > 0
        ):
            bad("lr", "finite and > 0")
        if (
            not isinstance(self.grad_clip, (int, float, np.integer, np.floating))
            or not self.grad_clip > 0
        ):
            bad("grad_clip", "> 0 (inf: no clipping)")
        if not isinstance(self.min_delta, (int, float, np.integer, np.floating)) or not (
            0 <= self.min_delta < 1
        ):
            bad("min_delta", "a fraction in [0, 1)")
        if self.lr_decay is not None:
            if not isinstance(self.lr_decay, (int, float, np.integer, np.floating)) or not (
                0 < self.lr_decay < 1
            ):
                bad("lr_decay", "None or a factor in (0, 1)")
            if self.patience is None:
                bad("lr_decay", "None without patience (a plateau is patience evaluations)")
            object.__setattr__(self, "lr_decay", float(self.lr_decay))
        if not _is_int(self.lr_decays) or self.lr_decays < 0:
            bad("lr_decays", "a non-negative integer")
        if not _is_int(self.hold) or not 0 <= self.hold < self.steps:
            bad("hold", "an integer in [0, steps)")
        if self.hold and (self.patience is None or self.lr_decay is not None):
            bad("hold", "0 without patience or with lr_decay (it holds the cosine's final rate)")
        if self.precision not in ("float32", "float64"):
            bad("precision", "'float32' or 'float64'")
        # plain Python numbers: hashable like the originals, and JSON-serialisable for the
        # checkpoint
        for field, cast in (
            ("steps", int),
            ("batch_size", int),
            ("eval_every", int),
            ("lr", float),
            ("grad_clip", float),
            ("min_delta", float),
            ("lr_decays", int),
            ("hold", int),
        ):
            object.__setattr__(self, field, cast(getattr(self, field)))
        for field in ("patience", "warmup", "window", "val_context"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, int(getattr(self, field)))

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(1, self.steps // 20)

    def as_dict(self) -> dict:
        """The fields, with `warmup` resolved (as recorded in a checkpoint directory)."""
        return dict(dataclasses.asdict(self), warmup=self.warmup_steps)


_DEFAULT_OPTIMIZER_FIELDS = ("lr", "warmup", "grad_clip")


def _resolve_config(
    config: TrainConfig | None, overrides: dict, *, custom_optimizer: bool = False
) -> TrainConfig:
    """`config` (or the defaults) with `overrides` (TrainConfig field names) replaced."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"the configuration keywords are TrainConfig's fields: {', '.join(sorted(names))}"
        )
    if custom_optimizer:
        unused = [k for k in _DEFAULT_OPTIMIZER_FIELDS if k in overrides]
        if unused:
            raise ValueError(
                f"{', '.join(unused)} configure(s) the default optimizer and would be ignored "
                "with optimizer=; put them into your optimizer instead"
            )
    if config is None:
        if "steps" not in overrides:
            raise ValueError("steps is required: pass steps=N or config=TrainConfig(steps=N)")
        return TrainConfig(**overrides)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides)


def _is_trajectories(dataset) -> bool:
    """A `dynamics.Dataset` (or anything shaped like one): trajectories to cut windows from."""
    return all(hasattr(dataset, a) for a in ("train", "val", "dt", "state_dim", "n_train_steps"))


# --------------------------------------------------------------------------- checks
def _validate(
    model, dataset, config: TrainConfig | None = None, /, *, loss: Loss | None = None, **overrides
) -> TrainConfig:
    """Checks the model and the data against each other (before anything touches the model);
    returns the run's configuration."""
    cfg = _resolve_config(config, overrides)
    if cfg.precision == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "precision='float64' needs jax_enable_x64: jax.config.update('jax_enable_x64', True)"
        )
    if not _is_trajectories(dataset):
        if loss is None:
            raise ValueError(
                f"a dataset that is not a trajectory Dataset ({type(dataset).__name__}) "
                "needs loss=: fit cannot cut windows from it"
            )
        if not isinstance(model, nnx.Module):
            raise ValueError(f"model must be an nnx.Module, got {type(model).__name__}")
        for leaf in jax.tree.leaves(dataset):
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and not np.all(
                np.isfinite(np.asarray(leaf))
            ):
                raise ValueError("the data contain NaN or inf")
        return cfg
    if not isinstance(model, AbstractModel):
        raise ValueError(f"model must be one of this package's models, got {type(model).__name__}")
    if dataset.state_dim != model.state_dim:
        raise ValueError(
            f"dataset state_dim {dataset.state_dim} does not match "
            f"the model's state_dim {model.state_dim}"
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
    n_t = np.shape(dataset.train)[1]
    if cfg.window is not None and cfg.window > n_t:
        raise ValueError(
            f"TrainConfig: window={cfg.window} is longer than the training trajectories "
            f"({n_t} states)"
        )
    if cfg.val_context is not None and cfg.val_context >= np.shape(dataset.val)[1]:
        raise ValueError(
            f"TrainConfig: val_context={cfg.val_context} leaves nothing to forecast in "
            f"val trajectories of {np.shape(dataset.val)[1]} states"
        )
    return cfg


# --------------------------------------------------------------------------- pure core
def _windows_of(data, length, max_windows=256):
    """Deterministic, evenly spaced windows `(M, length, d)` from `(N, T, d)` (for validation)."""
    n, t, _ = data.shape
    starts = np.arange(0, t - length + 1, max(1, length))
    idx = [(i, s) for i in range(n) for s in starts]
    if len(idx) > max_windows:
        idx = [idx[j] for j in np.linspace(0, len(idx) - 1, max_windows).astype(int)]
    return np.stack([data[i, s : s + length] for i, s in idx]) if idx else data[:, :length]


def _schedule(count, lr, warmup, total):
    """Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to `lr / 100` at
    `total` (optax's `warmup_cosine_decay_schedule`, written so that every argument may be an
    array: the compiled training step does not depend on their values)."""
    count = jnp.asarray(count, jnp.result_type(float))
    warmup = jnp.maximum(jnp.asarray(warmup, count.dtype), 1.0)
    decay = jnp.maximum(jnp.asarray(total, count.dtype) - warmup, 1.0)
    progress = jnp.clip((count - warmup) / decay, 0.0, 1.0)
    cosine = lr * (0.01 + 0.99 * 0.5 * (1 + jnp.cos(jnp.pi * progress)))
    return jnp.where(count < warmup, lr * count / warmup, cosine)


def _adam_on_schedule(lr, warmup, total, grad_clip, factor):
    """`factor`: the plateau schedule's multiplier of the rate (`fit` sets it in the state)."""
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.scale_by_adam(),
        optax.scale_by_schedule(lambda count: -_schedule(count, lr * factor, warmup, total)),
    )


def _default_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """What `fit` uses without `optimizer=`: Adam on a linear-warm-up, cosine-decay schedule
    (0 -> `lr` over `warmup` steps, then down to `lr / 100` at `steps`), after clipping the
    gradients to global norm `grad_clip`. The four numbers live in the optimizer's state
    (`optax.inject_hyperparams`), so runs that differ only in them share one compiled step.
    Under the plateau schedule (`lr_decay`) the decay never starts (`total = inf`: the rate
    holds at `lr` after the warm-up, and `fit` lowers it on plateaus)."""
    total = (
        math.inf
        if config.lr_decay is not None
        else max(config.steps - config.hold, config.warmup_steps + 1)
    )
    return optax.inject_hyperparams(_adam_on_schedule)(
        lr=config.lr,
        warmup=max(1, config.warmup_steps),
        total=total,
        grad_clip=config.grad_clip,
        factor=1.0,
    )


def _model_loss(model, windows, key):
    """The default objective: the model's own `loss(windows)`."""
    del key
    return model.loss(windows)


def _all_finite(tree):
    leaves = jax.tree.leaves(tree)
    return (
        jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
        if leaves
        else jnp.asarray(True)
    )


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
        "lr_factor": jnp.asarray(1.0, f),
        "n_decays": jnp.asarray(0, jnp.int32),
    }


def _limits(cfg: TrainConfig):
    """The budget, the patience (`2**30`: none) and the plateau schedule (`lr_decays = 0`:
    none), held in the state rather than compiled in."""
    f = jnp.result_type(float)
    plateau = cfg.lr_decay is not None
    return {
        "max_steps": jnp.asarray(cfg.steps, jnp.int32),
        "patience": jnp.asarray(2**30 if cfg.patience is None else cfg.patience, jnp.int32),
        "min_delta": jnp.asarray(cfg.min_delta, f),
        "patience_val": jnp.asarray(jnp.inf, f),
        "lr_decay": jnp.asarray(cfg.lr_decay if plateau else 1.0, f),
        "max_decays": jnp.asarray(cfg.lr_decays if plateau else 0, jnp.int32),
        "hold_from": jnp.asarray(cfg.steps - cfg.hold if cfg.hold else 0, jnp.int32),
    }


#: the loss key of step `s` is `fold_in(fold_in(key, s), _LOSS_KEY)`; `split(fold_in(key, s))`
#: cuts the windows (`fold_in(k, 1)` would be the second half of `split(k)`, hence 2)
_LOSS_KEY = 2
#: validation calls the loss with `fold_in(key, _VAL_KEY)`, one key for the whole run
_VAL_KEY = 2**31 - 1


def _inverse_variance(val: np.ndarray) -> np.ndarray:
    """`1 / var` per coordinate over every state of `val` `(N, T, d)` (tiny variances floored to
    1): the normaliser of the validation rollout."""
    var = np.asarray(val, np.float64).reshape(-1, np.shape(val)[-1]).var(0)
    return 1.0 / np.where(var > 1e-12 * max(1.0, float(var.max())), var, 1.0)


def _rollout_nmse(model, val, inv_var, context: int):
    """The long-horizon validation criterion: every `val` trajectory `(N, T, d)` forecast from
    its first `context` states to its end, squared errors times `inv_var` (the inverse
    per-coordinate variance over `val`), averaged."""
    pred = jax.vmap(lambda c: model.forecast(c, val.shape[1] - context))(val[:, :context])
    return jnp.mean((pred - val[:, context:]) ** 2 * jnp.reshape(inv_var, (1, 1, -1)))


#: the compilation events of `jax.monitoring` (tracing, lowering, XLA) that `fit` times
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class _CompileTimer:
    """Seconds spent compiling (tracing, lowering and XLA) while the context is open, from the
    events `jax.monitoring` reports (a persistent-cache hit reports no backend compile)."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, event, duration, **_):
        if event in _COMPILE_EVENTS:
            self.seconds += duration

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def _build_chunk(
    graphdef, opt, cfg: TrainConfig, window: int | None, loss: Loss, *, default_optimizer: bool
):
    """Returns `chunk(state, rest, key, train, n_steps) -> (state, mean_loss)`: `n_steps`
    optimisation steps under `lax.scan` (a member that has stopped or diverged stays put).
    The plateau schedule's `lr_factor` multiplies the default optimizer's rate (its `factor`
    hyperparameter: a scalar product, so a factor of 1 leaves every step bit for bit as it
    was) or, with `default_optimizer=False`, a custom optimizer's updates.

    `window` is the window length for trajectory data, None for full-batch data (every step
    sees all of `train`). Compiled code depends on `cfg` only through `batch_size`; the budget,
    the patience and the default optimizer's numbers are values in the state."""

    def loss_fn(params, rest, batch, key):
        return loss(nnx.merge(graphdef, params, rest), batch, key)

    def sample(key, step, train):
        k = jax.random.fold_in(key, step)
        loss_key = jax.random.fold_in(k, _LOSS_KEY)
        if window is None:
            return train, loss_key
        k_i, k_s = jax.random.split(k)
        n, t, d = train.shape
        idx = jax.random.randint(k_i, (cfg.batch_size,), 0, n)
        start = jax.random.randint(k_s, (cfg.batch_size,), 0, t - window + 1)
        windows = jax.vmap(lambda i, s: jax.lax.dynamic_slice(train[i], (s, 0), (window, d)))(
            idx, start
        )
        return windows, loss_key

    def chunk(state, rest, key, train, n_steps):
        def body(st, _):
            active = ~st["stopped"] & ~st["diverged"]
            batch, loss_key = sample(key, st["step"], train)
            loss, grads = jax.value_and_grad(loss_fn)(st["params"], rest, batch, loss_key)
            opt_state = st["opt_state"]
            if default_optimizer:
                hyper = opt_state.hyperparams
                factor = st["lr_factor"].astype(hyper["factor"].dtype)
                opt_state = opt_state._replace(hyperparams={**hyper, "factor": factor})
            updates, new_opt = opt.update(grads, opt_state, st["params"])
            if not default_optimizer:
                updates = jax.tree.map(lambda u: u * st["lr_factor"].astype(u.dtype), updates)
            new_params = optax.apply_updates(st["params"], updates)
            finite = jnp.isfinite(loss) & _all_finite(new_params)
            ok = active & finite
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
            st = dict(st)
            st["params"] = keep(new_params, st["params"])
            st["opt_state"] = keep(new_opt, st["opt_state"])
            st["diverged_step"] = jnp.where(active & ~finite, st["step"], st["diverged_step"])
            st["diverged"] = st["diverged"] | (active & ~finite)
            st["last_loss"] = jnp.where(ok, loss, st["last_loss"])
            st["step"] = st["step"] + ok.astype(jnp.int32)
            return st, jnp.where(ok, loss, jnp.nan)

        state, losses = jax.lax.scan(body, state, None, length=n_steps)
        return state, jnp.nanmean(losses)

    return chunk


def _build_evaluate(graphdef, has_val: bool, val_context: int | None, loss: Loss | None):
    """Returns `evaluate(state, rest, key, val_batch, was_active) -> (state, val)`: the
    validation criterion after a chunk (the loss on validation windows, or with `val_context`
    the rollout nmse), the best parameters so far, early stopping and the budget. Compiled
    once per architecture and criterion, whatever the stage's windows, loss or budget."""

    def evaluate(state, rest, key, val_batch, was_active):
        state = dict(state)
        if has_val:
            model = nnx.merge(graphdef, state["params"], rest)
            if val_context is None:
                val = loss(model, val_batch, jax.random.fold_in(key, _VAL_KEY))
            else:
                val = _rollout_nmse(model, *val_batch, val_context)
            evaluate_now = was_active & ~state["diverged"]
            improved = evaluate_now & jnp.isfinite(val) & (val < state["best_val"])
            state["best_params"] = jax.tree.map(
                lambda a, b: jnp.where(improved, a, b), state["params"], state["best_params"]
            )
            state["best_val"] = jnp.where(improved, val, state["best_val"])
            # patience counts evaluations without an improvement by more than min_delta (with
            # a hold, only those in it: before, every improvement moves the reference)
            counting = evaluate_now & (state["step"] > state["hold_from"])
            significant = improved & (val < state["patience_val"] * (1 - state["min_delta"]))
            state["patience_val"] = jnp.where(
                significant | (improved & ~counting), val, state["patience_val"]
            )
            state["bad_evals"] = jnp.where(
                significant, 0, state["bad_evals"] + counting.astype(jnp.int32)
            )
            # a plateau: lower the rate and go on from the best parameters while the plateau
            # schedule allows (never without it: max_decays 0), else stop
            plateau = state["bad_evals"] >= state["patience"]
            decay = plateau & (state["n_decays"] < state["max_decays"])
            state["params"] = jax.tree.map(
                lambda a, b: jnp.where(decay, a, b), state["best_params"], state["params"]
            )
            state["lr_factor"] = jnp.where(
                decay, state["lr_factor"] * state["lr_decay"], state["lr_factor"]
            )
            state["n_decays"] = state["n_decays"] + decay.astype(jnp.int32)
            state["patience_val"] = jnp.where(decay, state["best_val"], state["patience_val"])
            state["bad_evals"] = jnp.where(decay, 0, state["bad_evals"])
            state["stopped"] = state["stopped"] | (plateau & ~decay)
        else:
            val = jnp.asarray(jnp.nan, state["best_val"].dtype)
            state["best_params"] = state["params"]
        state["stopped"] = state["stopped"] | (state["step"] >= state["max_steps"])
        return state, val

    return evaluate


# --------------------------------------------------------------------------- checkpoints
#: the default of `fit(checkpoint_every=)`: at most one checkpoint per this many seconds
CHECKPOINT_SECONDS = 30.0


class _Checkpoints:
    """Orbax checkpoints of the training state, plus a JSON-lines log and the run's fingerprint.

    `save` logs every chunk but checkpoints only once `every` seconds have passed since the
    last checkpoint (or the start), and always after the last chunk: an orbax save of a small
    training state costs 50 to 100 ms of CPU, more than a chunk of 500 derivative steps of a
    width-128 MLP (measured: 40 checkpoints added 4.0 s to a 1.75 s fit)."""

    def __init__(self, directory, fingerprint: dict, every: float = CHECKPOINT_SECONDS):
        import orbax.checkpoint as ocp

        self.every = float(every)
        self._last = time.monotonic()

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
                max_to_keep=2,
                create=False,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process{me}"
                ),
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
        abstract = {
            str(i): jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            for i, x in enumerate(leaves)
        }
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

    def save(self, chunk: int, state, record: dict, *, final: bool = True):
        """Logs `record`; checkpoints `state` if `final` (the last chunk of the run) or `every`
        seconds have passed since the last checkpoint."""
        # The log line first: a run killed before the checkpoint lands leaves a record that
        # `restore` drops (its chunk is past the latest step), never a checkpoint without one.
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")
        if not final and time.monotonic() - self._last < self.every:
            return
        leaves = jax.tree.leaves(state)
        if jax.process_count() > 1:  # host-local arrays: saved as NumPy by this process alone
            leaves = [np.asarray(x) for x in leaves]
        self.mngr.save(
            chunk, args=self._ocp.args.StandardSave({str(i): x for i, x in enumerate(leaves)})
        )
        self.mngr.wait_until_finished()
        self._last = time.monotonic()

    def close(self):
        self.mngr.close()


# --------------------------------------------------------------------------- driver
def _cast(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _mean_of_finite(x) -> str:
    finite = x[np.isfinite(x)]
    return f"{finite.mean():.3g}" if finite.size else "-"


def _name_of(fn) -> str:
    """`module.qualname` of a function (of the wrapped one for a `functools.partial`)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _run(
    models,
    datasets,
    keys,
    *,
    cfg: TrainConfig,
    optimizer,
    loss,
    checkpoint_dir,
    progress,
    log_path,
    strategy,
    desc,
    lrs=None,
    checkpoint_every: float = CHECKPOINT_SECONDS,
):
    """Trains `len(models)` members at once; returns the trained models and their histories.

    `datasets` holds one dataset shared by every member, or one per member (stacked along the
    member axis: the same shapes); `lrs`, one peak learning rate per member of the default
    optimizer (held in its state, so the compiled program is shared), or None for `cfg.lr`."""
    dtype = jnp.float64 if cfg.precision == "float64" else jnp.float32
    dataset = datasets[0]
    per_member = len(datasets) > 1
    trajectories = _is_trajectories(dataset)
    if trajectories:
        for i, m in enumerate(models):
            m.prepare(datasets[i if per_member else 0])
    graphdef, *_ = nnx.split(models[0], nnx.Param, ...)
    splits = [nnx.split(m, nnx.Param, ...) for m in models]
    if any(g != graphdef for g, *_ in splits[1:]):
        raise ValueError(
            "the members of an ensemble must share one architecture (and, once prepared on "
            "their data, the same static attributes such as dt)"
        )
    splits = [s[1:] for s in splits]
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[_cast(s[0], dtype) for s in splits])
    rest = jax.tree.map(lambda *xs: jnp.stack(xs), *[_cast(s[1], dtype) for s in splits])
    n_members = len(models)

    if trajectories:
        window = cfg.window or models[0].window_length(dataset.n_train_steps)
        has_val = dataset.val.shape[0] > 0

        def val_batch_of(ds):
            if has_val and cfg.val_context is not None:
                val = np.asarray(ds.val, np.float64)
                return (jnp.asarray(val, dtype), jnp.asarray(_inverse_variance(val), dtype))
            return jnp.asarray(
                _windows_of(ds.val, window) if has_val else ds.train[:1, :window], dtype
            )

        train_of = lambda ds: jnp.asarray(ds.train, dtype)  # noqa: E731
        data_sum = float(sum(np.asarray(ds.train, np.float64).sum() for ds in datasets))
    else:  # full-batch data: handed to the loss whole at every step; no validation
        window, has_val = None, False
        val_batch_of = lambda ds: None  # noqa: E731
        train_of = lambda ds: _cast(jax.tree.map(jnp.asarray, ds), dtype)  # noqa: E731
        data_sum = float(
            sum(np.asarray(x, np.float64).sum() for ds in datasets for x in jax.tree.leaves(ds))
        )
    if per_member:  # a leading member axis on the data too
        train = jax.tree.map(lambda *xs: jnp.stack(xs), *[train_of(ds) for ds in datasets])
        val_batch = jax.tree.map(lambda *xs: jnp.stack(xs), *[val_batch_of(ds) for ds in datasets])
    else:
        train, val_batch = train_of(dataset), val_batch_of(dataset)
    key_data = jnp.stack(
        [
            jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else k
            for k in keys
        ]
    )
    if lrs is None:
        opt = optimizer if optimizer is not None else _default_optimizer(cfg)
        state = jax.vmap(lambda p: {**_init_state(p, opt), **_limits(cfg)})(params)
    else:  # the default optimizer, its peak learning rate in each member's state
        states = [
            {
                **_init_state(
                    jax.tree.map(lambda x: x[i], params),
                    _default_optimizer(dataclasses.replace(cfg, lr=float(lr))),
                ),
                **_limits(cfg),
            }
            for i, lr in enumerate(lrs)
        ]
        state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    sharding = _member_sharding(n_members)
    if sharding is not None:
        state, rest, key_data = jax.device_put((state, rest, key_data), sharding)
        if per_member:
            train, val_batch = jax.device_put((train, val_batch), sharding)
    train_fn = _compiled_chunk(
        graphdef, cfg.batch_size, window, strategy, loss, optimizer, per_member
    )
    val_loss = None if (has_val and cfg.val_context is not None) else loss
    eval_fn = _compiled_evaluate(graphdef, has_val, cfg.val_context, strategy, val_loss, per_member)

    ckpt = None
    history: list[dict] = []
    n_chunks = -(-cfg.steps // cfg.eval_every)
    start_chunk = 0
    if checkpoint_dir is not None:
        fingerprint = dict(
            cfg.as_dict(),
            model=type(models[0]).__name__,
            members=n_members,
            keys=np.asarray(key_data).tolist(),
            window=window,
            data=data_sum,
        )
        # recorded only when used, so that directories of default runs stay valid
        if loss is not _model_loss:
            fingerprint["loss"] = _name_of(loss)
        if optimizer is not None:
            fingerprint["optimizer"] = "custom"
        if lrs is not None:
            fingerprint["lrs"] = [float(x) for x in lrs]
        ckpt = _Checkpoints(checkpoint_dir, fingerprint, checkpoint_every)
        restored, history = ckpt.restore(state)
        if restored is not None:
            state, start_chunk = restored
    if log_path is not None and checkpoint_dir is None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        open(log_path, "w").close()

    from tqdm.auto import tqdm

    bar = tqdm(total=n_chunks, initial=start_chunk, desc=desc, disable=not progress, leave=False)
    t0 = time.perf_counter()
    timer = _CompileTimer()
    try:
        # every member stopped or diverged (a restored run may already be)
        finished = bool(jnp.all(state["stopped"] | state["diverged"]))
        for c in range(start_chunk, n_chunks):
            if finished:
                break
            n_steps = min(cfg.eval_every, cfg.steps - c * cfg.eval_every)
            with timer:
                was_active = ~state["stopped"] & ~state["diverged"]
                state, loss_value = train_fn(state, rest, key_data, train, n_steps)
                state, val = eval_fn(state, rest, key_data, was_active, val_batch)
                loss_value, val = np.asarray(loss_value), np.asarray(val)
            finished = bool(jnp.all(state["stopped"] | state["diverged"]))
            patience_fired = (
                np.asarray(state["bad_evals"]) >= cfg.patience
                if cfg.patience is not None and has_val
                else np.zeros(n_members, bool)
            )
            rec = {
                "chunk": c + 1,
                "step": np.asarray(state["step"]).tolist(),
                "train_loss": [None if not np.isfinite(x) else float(x) for x in loss_value],
                "val_loss": [None if not np.isfinite(x) else float(x) for x in val],
                "best_val": [
                    None if not np.isfinite(x) else float(x) for x in np.asarray(state["best_val"])
                ],
                "converged": patience_fired.tolist(),
                "bad_evals": np.asarray(state["bad_evals"]).tolist(),
                "lr_factor": np.asarray(state["lr_factor"]).tolist(),
                "seconds": time.perf_counter() - t0,
                "compile_seconds": timer.seconds,
            }
            history.append(rec)
            if ckpt is not None:
                ckpt.save(c + 1, state, rec, final=finished or c == n_chunks - 1)
            elif log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.update(1)
            bar.set_postfix(loss=_mean_of_finite(loss_value), val=_mean_of_finite(val))
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()

    diverged = np.asarray(state["diverged"])
    final = (
        jax.tree.map(
            lambda best, cur: jnp.where(
                jnp.reshape(jnp.asarray(diverged), (-1,) + (1,) * (best.ndim - 1)), cur, best
            ),
            state["best_params"],
            state["params"],
        )
        if has_val
        else state["params"]
    )
    for i, m in enumerate(models):
        nnx.update(m, jax.tree.map(lambda x: x[i], final), jax.tree.map(lambda x: x[i], rest))
    return models, history, state, diverged


def _over_members(fn, strategy: str, n_member: int):
    """`fn(*member_args, *shared_args)` batched over the leading member axis of its first
    `n_member` arguments: `"single"` (one member, no batching at all: a vmap of one costs
    ~15% on the LSTM), `"vmap"` or `"map"` (`lax.map`)."""
    if strategy not in ("single", "vmap", "map"):
        raise ValueError(f"strategy must be 'vmap' or 'map', got {strategy!r}")

    def batched(*args):
        members, shared = args[:n_member], args[n_member:]
        if strategy == "single":
            out = fn(*jax.tree.map(lambda x: x[0], members), *shared)
            return jax.tree.map(lambda x: x[None], out)
        if strategy == "vmap":
            return jax.vmap(lambda *m: fn(*m, *shared))(*members)
        return jax.lax.map(lambda m: fn(*m, *shared), members)

    return batched


def _cached(builder):
    """`functools.lru_cache` for the compiled programs, skipped for an unhashable custom loss
    or optimizer (compiled afresh each time)."""
    cached = functools.lru_cache(maxsize=64)(builder)

    @functools.wraps(builder)
    def get(*args):
        try:
            hash(args)
        except TypeError:
            return builder(*args)
        return cached(*args)

    return get


@_cached
def _compiled_chunk(
    graphdef, batch_size: int, window, strategy: str, loss: Loss, optimizer, per_member: bool
):
    """The jitted, member-batched training chunk `(state, rest, key_data, train, n_steps)`;
    cached, so that fits of the same architecture, window, batch size, loss and optimizer
    (seeds, ensembles, learning rates, budgets, resumed runs) compile once. `per_member`: the
    data carry the member axis too (one dataset per member)."""
    opt = optimizer if optimizer is not None else _default_optimizer(TrainConfig(steps=2))
    chunk = _build_chunk(
        graphdef,
        opt,
        TrainConfig(steps=1, batch_size=batch_size),
        window,
        loss,
        default_optimizer=optimizer is None,
    )

    def run_member(st, r, kd, train, n_steps):
        return chunk(st, r, jax.random.wrap_key_data(kd), train, n_steps)

    return jax.jit(_over_members(run_member, strategy, 4 if per_member else 3), static_argnums=4)


@_cached
def _compiled_evaluate(
    graphdef, has_val: bool, val_context, strategy: str, loss: Loss | None, per_member: bool
):
    """The jitted, member-batched validation `(state, rest, key_data, was_active, val_batch)`;
    cached like `_compiled_chunk`, and shared by every stage of a recipe."""
    evaluate = _build_evaluate(graphdef, has_val, val_context, loss)

    def run_member(st, r, kd, was_active, val_batch):
        return evaluate(st, r, jax.random.wrap_key_data(kd), val_batch, was_active)

    return jax.jit(_over_members(run_member, strategy, 5 if per_member else 4))


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
    # records of checkpoints written before best_val/converged/bad_evals/compile_seconds existed
    # lack them
    return [
        {
            "chunk": r["chunk"],
            "step": r["step"][i],
            "train_loss": r["train_loss"][i],
            "val_loss": r["val_loss"][i],
            "best_val": r["best_val"][i] if "best_val" in r else None,
            "converged": r["converged"][i] if "converged" in r else False,
            "bad_evals": r["bad_evals"][i] if "bad_evals" in r else 0,
            "lr_factor": r["lr_factor"][i] if "lr_factor" in r else 1.0,
            "seconds": r["seconds"],
            "compile_seconds": r.get("compile_seconds", 0.0),
        }
        for r in history
    ]


def fit(
    model: nnx.Module,
    dataset,
    *,
    key: PRNGKeyArray,
    config: TrainConfig | None = None,
    optimizer: optax.GradientTransformation | None = None,
    loss: Loss | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log_path: str | os.PathLike | None = None,
    checkpoint_every: float = CHECKPOINT_SECONDS,
    **overrides,
):
    """Trains `model` on `dataset`; returns `(model, history)`.

    Each step draws a minibatch, takes the gradient of the loss with respect to
    the model's `nnx.Param`s and applies the optimizer's update; every
    `eval_every` steps the validation loss is evaluated and the parameters with
    the lowest one are kept.

    **Arguments:**

    - `dataset`: a `dynamics.Dataset`: each step draws `batch_size` windows
      `(B, W, state_dim)` cut at random positions of random `train` trajectories
      (`W` is the model's `window_length`: whole trajectories for the LSTM,
      short windows for the ODE models); validation on evenly spaced windows of
      `val`; `model.prepare(dataset)` records `dt` and the normalisation
      statistics first. Or, with `loss=`, any pytree of arrays (or None),
      handed to the loss whole at every step (full-batch training, e.g.
      `(x, dx)` derivative targets); then there is no validation, `batch_size`
      and `patience` have no effect, the model is not prepared, and it may be
      any `nnx.Module`.
    - `key`: PRNG key; the run is deterministic given it. The batches and loss
      keys of step `s` depend only on `(key, s)`.
    - `config`: a `TrainConfig` (steps, batch size, learning rate, chunking,
      early stopping, precision); `**overrides`: any of its fields as keywords,
      replacing the config's (`fit(model, ds, key=k, steps=300, lr=3e-3)`
      needs no config). `steps` must be given one way or the other.
    - `optimizer`: any `optax.GradientTransformation`, updated with
      `opt.update(grads, opt_state, params)` once per step (its own schedule
      counts steps from 0). None: Adam on a linear-warm-up, cosine-decay
      schedule peaking at `lr`, after clipping the gradients to global norm
      `grad_clip`; with an optimizer of your own, passing `lr`, `warmup` or
      `grad_clip` is an error (they would be ignored).
    - `loss`: `loss(model, batch, key) -> scalar` minimised instead of
      `model.loss(windows)`. `batch` is what the step draws from `dataset`
      (above); `key` is a PRNG key of its own for each step, for losses that
      draw their own samples (fresh random states every step, say). Validation
      calls it on the validation windows with one fixed key. The default is
      `model.loss(batch)`.
    - `checkpoint_dir`: orbax checkpoints and a JSON-lines log of every chunk,
      beside `run.json`, which records the configuration (and the loss's
      name and whether the optimizer is custom). A rerun with the same
      arguments resumes and ends with the same parameters as an uninterrupted
      run; one with a different configuration is refused. The parameters of a
      custom loss or optimizer are not recorded: change them only with a fresh
      directory.
    - `checkpoint_every`: at most one checkpoint per this many seconds of wall
      time (default `CHECKPOINT_SECONDS`, 30), and one after the last chunk, so
      an interruption loses at most that much training and a finished run
      restores at once; 0 checkpoints every chunk. Not part of the
      configuration: the parameters do not depend on it.
    - `progress`: show a progress bar; `log_path`: a JSON-lines log without checkpoints.

    **Returns:** the trained model (updated in place) and a list of records
    `{chunk, step, train_loss, val_loss, best_val, converged, bad_evals, lr_factor,
    seconds, compile_seconds}`, one per chunk (`train_loss` the mean over the
    chunk's steps; `val_loss` None without validation; `best_val` the lowest so
    far; `bad_evals` the evaluations since the last improvement by more than
    `min_delta` (or since the rate was last lowered), counted with or without a
    `patience`; `converged` true once the early-stopping rule has fired, i.e.
    `bad_evals` reached `patience` (under the plateau schedule: at its smallest
    rate); `lr_factor` the plateau schedule's factor on the rate (1 without it);
    `seconds` the wall time since the start of this call and `compile_seconds`
    the part of it spent compiling).

    **Raises:** `ValueError` for a bad value (`TrainConfig` names the field) or
    data that do not suit the model; `TypeError` for an unknown keyword;
    `TrainingDiverged` when the loss becomes non-finite (the model keeps its
    last finite parameters).
    """
    cfg = _resolve_config(config, overrides, custom_optimizer=optimizer is not None)
    _validate(model, dataset, cfg, loss=loss)
    loss = _model_loss if loss is None else loss
    (model,), history, state, diverged = _run(
        [model],
        [dataset],
        [key],
        cfg=cfg,
        optimizer=optimizer,
        loss=loss,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        log_path=log_path,
        strategy="single",
        desc=type(model).__name__,
        checkpoint_every=checkpoint_every,
    )
    if diverged[0]:
        raise TrainingDiverged(int(state["diverged_step"][0]), float(state["last_loss"][0]), model)
    return model, _history_of(history, 0)


def fit_ensemble(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    dataset,
    *,
    keys: Sequence[PRNGKeyArray],
    config: TrainConfig | None = None,
    optimizer: optax.GradientTransformation | None = None,
    loss: Loss | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    strategy: Literal["vmap", "map"] | None = None,
    progress: bool = True,
    lrs: Sequence[float] | None = None,
    checkpoint_every: float = CHECKPOINT_SECONDS,
    **overrides,
):
    """Trains one member per key in one compiled program; returns `(ensemble, histories)`.

    Member `i` is `make_model(nnx.Rngs(keys[i]))`, trained exactly as
    `fit(member, dataset, key=keys[i], ...)` would train it with the same
    `config`, `optimizer`, `loss` and `**overrides` (see `fit`): same batches,
    same early stopping, so the result equals training each alone. The
    parameters carry a leading member axis; they are sharded over all local
    devices (a `jax.sharding` mesh over the member axis) where there are
    several. `strategy`: `"vmap"` (one batched program; the default on
    accelerators) or `"map"` (`lax.map` over members inside one program; the
    default on CPU, where it measured faster for three members of a NeuralODE
    or an LSTM; for 32 small HNNs `"vmap"` was faster: see the README's
    performance table). `dataset` and `lrs` as in `fit_members`.

    **Returns:** the list of trained members and a list of per-member histories.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("keys must hold at least one PRNG key")
    members = [make_model(nnx.Rngs(k)) for k in keys]
    return fit_members(
        members,
        dataset,
        keys=keys,
        config=config,
        optimizer=optimizer,
        loss=loss,
        checkpoint_dir=checkpoint_dir,
        strategy=strategy,
        progress=progress,
        lrs=lrs,
        checkpoint_every=checkpoint_every,
        **overrides,
    )


def fit_members(
    members: Sequence[nnx.Module],
    dataset,
    *,
    keys: Sequence[PRNGKeyArray],
    config: TrainConfig | None = None,
    optimizer: optax.GradientTransformation | None = None,
    loss: Loss | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    strategy: Literal["vmap", "map"] | None = None,
    progress: bool = True,
    lrs: Sequence[float] | None = None,
    checkpoint_every: float = CHECKPOINT_SECONDS,
    **overrides,
):
    """Trains the given models (one architecture) as one ensemble, member `i` with `keys[i]`,
    exactly as `fit(members[i], ..., key=keys[i])` would; updates them in place and returns
    `(members, histories)`. `strategy`, `config`, `optimizer`, `loss`, `checkpoint_dir`,
    `checkpoint_every` and `**overrides` as in `fit_ensemble` and `fit`.

    - `dataset`: one dataset for every member, or a sequence of datasets, one per member (each
      member trains and validates on its own: the seeds of a study, whose data differ too).
      They must agree in every shape, in `dt` and in the system.
    - `lrs`: one peak learning rate per member, in place of the config's `lr`, for the default
      optimizer (the rate is a value in each member's optimizer state, so the members still
      share one compiled program); None: every member uses the config's.

    **Raises:** `ValueError` for members of different architectures, datasets that disagree
    or a wrong number of them or of `lrs`; `TrainingDiverged` naming the first member whose
    loss became non-finite (the others are trained).
    """
    members, keys = list(members), list(keys)
    if not keys:
        raise ValueError("keys must hold at least one PRNG key")
    if len(members) != len(keys):
        raise ValueError(f"{len(members)} members but {len(keys)} keys: give one key per member")
    cfg = _resolve_config(config, overrides, custom_optimizer=optimizer is not None)
    if strategy is None:
        strategy = "map" if jax.default_backend() == "cpu" else "vmap"
    if strategy not in ("vmap", "map"):
        raise ValueError(f"strategy must be 'vmap' or 'map', got {strategy!r}")
    datasets = list(dataset) if isinstance(dataset, (list, tuple)) else [dataset]
    if len(datasets) not in (1, len(members)):
        raise ValueError(
            f"{len(datasets)} datasets for {len(members)} members: give one, or one per member"
        )
    if lrs is not None:
        lrs = [float(x) for x in lrs]
        if optimizer is not None:
            raise ValueError(
                "lrs= sets the default optimizer's rate; it cannot apply to optimizer="
            )
        if len(lrs) != len(members) or not all(math.isfinite(x) and x > 0 for x in lrs):
            raise ValueError(f"lrs must hold one positive learning rate per member, got {lrs}")
    for i, m in enumerate(members):
        _validate(m, datasets[i if len(datasets) > 1 else 0], cfg, loss=loss)
    _check_alike(datasets)
    loss = _model_loss if loss is None else loss
    members, history, state, diverged = _run(
        members,
        datasets,
        keys,
        cfg=cfg,
        optimizer=optimizer,
        loss=loss,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        log_path=None,
        strategy=strategy,
        desc=f"ensemble of {len(members)}",
        lrs=lrs,
        checkpoint_every=checkpoint_every,
    )
    histories = [_history_of(history, i) for i in range(len(members))]
    if diverged.any():
        i = int(np.flatnonzero(diverged)[0])
        raise TrainingDiverged(
            int(state["diverged_step"][i]), float(state["last_loss"][i]), members, member=i
        )
    return members, histories


def _check_alike(datasets) -> None:
    """The members' datasets must stack: the same shapes (and `dt` and system, for trajectories)."""
    first = datasets[0]
    for i, ds in enumerate(datasets[1:], 1):
        if _is_trajectories(first) != _is_trajectories(ds):
            raise ValueError(f"dataset {i} is not of the same kind as dataset 0")
        if _is_trajectories(first):
            for name in ("train", "val"):
                a, b = np.shape(getattr(first, name)), np.shape(getattr(ds, name))
                if a != b:
                    raise ValueError(f"dataset {i}: {name} has shape {b}, dataset 0 has {a}")
            if not math.isclose(float(ds.dt), float(first.dt), rel_tol=1e-12):
                raise ValueError(f"dataset {i}: dt {ds.dt} differs from dataset 0's {first.dt}")
            s0, s1 = getattr(first, "system", None), getattr(ds, "system", None)
            if type(s0) is not type(s1):
                raise ValueError(
                    f"dataset {i} simulates {type(s1).__name__}, dataset 0 {type(s0).__name__}"
                )
        else:
            a = [np.shape(x) for x in jax.tree.leaves(first)]
            b = [np.shape(x) for x in jax.tree.leaves(ds)]
            if a != b or jax.tree.structure(first) != jax.tree.structure(ds):
                raise ValueError(f"dataset {i} does not have dataset 0's structure and shapes")
