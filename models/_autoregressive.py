"""The autoregressive black boxes' shared plumbing: normalised units, teacher forcing, free
running, the forecast and the objective (`models.LSTM`, `models.GRU`, `models.Transformer`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractModel
from ._checks import is_traced
from ._common import lift


class AutoregressiveModel(AbstractModel):
    r"""A next-state map over normalised states `z = (y - m) / s` (the training statistics).

    A subclass gives the sequence model itself, in normalised units, and a linear readout
    `w_out` (whose dtype is the parameters'):

    - `init_state(batch_shape)`: the state before anything is read;
    - `run(zs, state)`: reads `zs (T, d)` (or a batch `(B, T, d)` with a batched state) with
      teacher forcing; returns the top-layer features `h_t`, the next-step predictions
      `zhat_{t+1}` (each from `z_t` and what came before it) and the state after the last read;
    - `cell(z, state)`: one such step on one input; returns `(h, zhat_next, new_state)`.

    From these, this class makes the forecast (read the context, then feed each prediction
    back: `z_{k+1} = zhat(z_k)`), the teacher-forced call `model(xs)`, and the objective
    `loss(windows)`, on windows of `warmup + rollout + 1` states cut from the training
    trajectories: teacher forcing (the next-step mean squared error over the window) plus
    rollout fine-tuning (after a teacher-forced warm-up of `warmup` steps, `rollout`
    free-running steps compared with the data), both in normalised units and weighted
    equally. Trained by `models.recipes.rollout_recipe` (the rollout grows with the window).

    Subclasses set `warmup` and `rollout` (ints) in their constructor.
    """

    def _dtype(self):
        return self.w_out[...].dtype

    def init_state(self, batch_shape: tuple[int, ...] = ()) -> Any:
        raise NotImplementedError

    def run(self, zs, state):
        raise NotImplementedError

    def cell(self, z, state):
        raise NotImplementedError

    def normalise(self, y: Float[Array, "*B d"]) -> Float[Array, "*B d"]:
        """`z = (y - m) / s` with the training statistics `m = mean`, `s = std`, cast to the
        parameters' dtype (so float64 inputs meet float32 weights cleanly)."""
        m, s = lift(self.mean[...], y.ndim), lift(self.std[...], y.ndim)
        return ((y - m) / s).astype(self._dtype())

    def denormalise(self, z: Float[Array, "*B d"]) -> Float[Array, "*B d"]:
        """`y = z s + m`, the inverse of `normalise` (physical units)."""
        return z * lift(self.std[...], z.ndim) + lift(self.mean[...], z.ndim)

    def __call__(self, xs: Float[Array, "*B T d"]) -> Float[Array, "*B T d"]:
        """The teacher-forced next-step predictions of `xs (T, d)` (or a batch), physical units."""
        _, pred, _ = self.run(self.normalise(xs), self.init_state(xs.shape[:-2]))
        return self.denormalise(pred)

    def hidden_states(self, xs: Float[Array, "*B T d"]) -> Float[Array, "*B T hidden"]:
        """Top-layer hidden states `h_t` while reading `xs` (teacher-forced); `xs (T, d)`
        or a batch `(B, T, d)`."""
        hs, _, _ = self.run(self.normalise(xs), self.init_state(xs.shape[:-2]))
        return hs

    def free_run(self, z_last: Float[Array, "*B d"], state, n_steps: int):
        """Free-running: feeds each prediction back as the next input, `z_{k+1} = zhat(z_k)`,
        for `n_steps` steps from `z_0 = z_last` (the last teacher-forced prediction) and
        `state`. Returns the inputs read, `(z_0, ..., z_{n-1})` `(n_steps, *B, d)`, which are
        the forecast in normalised units, and the top hidden state after each read
        `(n_steps, *B, hidden)`."""

        def step(carry, _):
            z, st = carry
            h, pred, st = self.cell(z, st)
            return (pred, st), (z, h)

        (_, _), (zs, hs) = jax.lax.scan(step, (z_last, state), None, length=n_steps)
        return zs, hs

    def _check_context(self, context, n_steps):
        """`_check_forecast`, and (for a context whose values are known, not traced) finite
        values: a NaN would only come back as a forecast of NaNs."""
        context = self._check_forecast(context, n_steps)
        if not is_traced(context) and not np.all(np.isfinite(np.asarray(context))):
            raise ValueError(f"{type(self).__name__}: the context contains NaN or inf")
        return context

    def forecast(self, context: Float[ArrayLike, "C d"], n_steps: int) -> Float[Array, "n_steps d"]:
        """Reads the context (teacher-forced), then feeds its own predictions back."""
        context = self._check_context(context, n_steps)
        _, pred, state = self.run(self.normalise(context), self.init_state())
        zs, _ = self.free_run(pred[-1], state, int(n_steps))
        return self.denormalise(zs)

    def forecast_hidden(self, context, n_steps: int):
        """Like `forecast`, but also returns the top-layer hidden states `(n_steps, hidden)`
        produced while reading each forecast step back in."""
        context = self._check_context(context, n_steps)
        _, pred, state = self.run(self.normalise(context), self.init_state())
        zs, hs = self.free_run(pred[-1], state, int(n_steps))
        return self.denormalise(zs), hs

    # ------------------------------------------------------------ training
    def window_length(self, n_train_steps: int) -> int:
        return min(n_train_steps, self.warmup + self.rollout + 1)

    def recipe(self, n_train_steps: int, *, budget: int, **recipe_kwargs):
        """`models.recipes.rollout_recipe`: its own objective on windows of growing length
        (the free rollout grows with the window, up to `rollout` steps)."""
        from .recipes import rollout_recipe

        return rollout_recipe(n_train_steps, budget=budget, **recipe_kwargs)

    def loss(self, windows: Float[Array, "B W d"]) -> Float[Array, ""]:
        """Per window of `W` states: the teacher-forced next-step MSE over the window plus the
        MSE of `r = min(rollout, W - 1 - w)` free-running steps after a teacher-forced warm-up
        of `w = min(warmup, W - 2)` states (normalised units; the batch mean)."""
        zs = self.normalise(windows)
        batch = zs.shape[:1]
        _, pred, _ = self.run(zs[:, :-1], self.init_state(batch))
        tf = jnp.mean((pred - zs[:, 1:]) ** 2, axis=(1, 2))
        w = min(self.warmup, zs.shape[1] - 2)
        r = min(self.rollout, zs.shape[1] - 1 - w)
        if r < 1:
            return jnp.mean(tf)
        _, pw, st = self.run(zs[:, :w], self.init_state(batch))
        free, _ = self.free_run(pw[:, -1], st, r)  # (r, B, d)
        return jnp.mean(
            tf + jnp.mean((jnp.swapaxes(free, 0, 1) - zs[:, w : w + r]) ** 2, axis=(1, 2))
        )


def check_rollout(warmup: int, rollout: int) -> None:
    """`warmup` and `rollout` of the objective must be positive integers."""
    for name, v in (("warmup", warmup), ("rollout", rollout)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
