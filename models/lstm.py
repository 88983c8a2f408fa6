"""An autoregressive LSTM: the black box of the motivating experiment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ._autoregressive import AutoregressiveModel
from ._common import check_state_dim, lift
from ._lstm_kernel import cell_update, gates, lstm_layer as _fast_lstm_layer


def _lstm_step(w_x, w_h, b, x, h, c):
    """One LSTM step; gate order (i, f, g, o):
    `i, f, o = sigmoid(.)`, `g = tanh(.)`, `c_t = f c_{t-1} + i g`, `h_t = o tanh(c_t)`."""
    xw = x @ w_x
    return cell_update(gates(xw + lift(b, xw.ndim) + h @ w_h), c)


def _lstm_layer(w_x, w_h, b, xs, h0, c0):
    """One LSTM layer over a sequence `xs (T, d_in)` (see `_lstm_step`): the plain-autodiff
    reference. The model runs `_lstm_kernel.lstm_layer` (same values, faster derivative).

    The input projection `xs @ w_x + b` is computed for all steps at once,
    outside the recurrence; only `h @ w_h` stays in the scan.
    """
    pre = xs @ w_x
    pre = pre + lift(b, pre.ndim)

    def step(carry, z):
        h, c = carry
        h, c = cell_update(gates(z + h @ w_h), c)
        return (h, c), h

    (h, c), hs = jax.lax.scan(step, (h0, c0), pre)
    return hs, (h, c)


class LSTM(AutoregressiveModel):
    r"""Autoregressive LSTM over normalised states `z = (y - m) / s`.

    `layers` stacked LSTM layers of `hidden` units (gate order i, f, g, o;
    forget-gate bias initialised to 1) and a linear readout predict the next
    state residually: `z_{t+1} = z_t + W_out h_t + b_out`.

    - `lstm(xs)` with `xs` of shape `(T, state_dim)` returns the teacher-forced
      next-step predictions, shape `(T, state_dim)`; a batch `(B, T, state_dim)`
      gives `(B, T, state_dim)`, as `jax.vmap(lstm)` would, but faster (one
      time-major scan over the batch).
    - `forecast(context, n_steps)` warms up on the context, then feeds its own
      predictions back.
    - The pieces, for analysis code (`models.probes`, `models.attribution`):
      `normalise` / `denormalise`, `init_state`, `run` (teacher-forced over a
      sequence), `cell` (one step of the stack) and `free_run` (predictions fed
      back), all in normalised units; `lrp_params` for `attribution.lstm_lrp`.

    Objective, on windows of `warmup + rollout + 1` states cut from the
    training trajectories: teacher forcing (next-step mean squared error over
    the window) plus rollout fine-tuning (after a teacher-forced warm-up of
    `warmup` steps, `rollout` free-running steps are compared with the data).
    Both terms are in normalised units and weighted equally. (The forecast, the free
    run and the objective are `AutoregressiveModel`'s, shared with `models.GRU` and
    `models.Transformer`.)
    """

    min_context = 1

    def __init__(
        self,
        state_dim: int,
        *,
        hidden: int = 64,
        layers: int = 1,
        warmup: int = 20,
        rollout: int = 40,
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim)
        if hidden < 1 or layers < 1:
            raise ValueError(
                f"hidden and layers must be >= 1, got hidden={hidden}, layers={layers}"
            )
        super().__init__(state_dim)
        self.hidden, self.layers = int(hidden), int(layers)
        self.warmup, self.rollout = int(warmup), int(rollout)
        init = jax.nn.initializers.glorot_uniform()
        ws_x, ws_h, bs = [], [], []
        d_in = state_dim
        for _ in range(layers):
            ws_x.append(nnx.Param(init(rngs.params(), (d_in, 4 * hidden))))
            ws_h.append(
                nnx.Param(jax.nn.initializers.orthogonal()(rngs.params(), (hidden, 4 * hidden)))
            )
            bs.append(nnx.Param(jnp.zeros(4 * hidden).at[hidden : 2 * hidden].set(1.0)))
            d_in = hidden
        self.w_x, self.w_h, self.b = nnx.List(ws_x), nnx.List(ws_h), nnx.List(bs)
        self.w_out = nnx.Param(jnp.zeros((hidden, state_dim)))
        self.b_out = nnx.Param(jnp.zeros(state_dim))

    # ----------------------------------------------------------------- core
    # The stack, step by step: with `x^0_t = z_t` (normalised input) and per layer `l`
    # (gate order i, f, g, o; `sigma` the logistic function),
    #   `a^l_t = x^{l-1}_t W_x^l + h^l_{t-1} W_h^l + b^l`,
    #   `i, f, o = sigma(a^l_t[i|f|o])`, `g = tanh(a^l_t[g])`,
    #   `c^l_t = f c^l_{t-1} + i g`, `h^l_t = x^l_t = o tanh(c^l_t)`,
    # and the residual readout `zhat_{t+1} = z_t + h^L_t W_out + b_out`.
    def init_state(self, batch_shape: tuple[int, ...] = ()) -> list[tuple[Array, Array]]:
        """The zero state `[(h_1, c_1), ..., (h_L, c_L)]`, each of shape `(*batch_shape, hidden)`,
        in the parameters' dtype: `h_0 = c_0 = 0` in every layer."""
        z = jnp.zeros((*batch_shape, self.hidden), self.w_out[...].dtype)
        return [(z, z) for _ in range(self.layers)]

    def run(self, zs: Float[Array, "*B T d"], state: list[tuple[Array, Array]]):
        """Reads normalised inputs `zs (T, d)` (teacher forcing) from `state`.

        Returns the top layer's hidden states `h^L_t (T, hidden)`, the next-step predictions
        `zhat_{t+1} = z_t + h^L_t W_out + b_out (T, d)` and the final state. A batch
        `zs (B, T, d)` with a batched state (`init_state((B,))`) gives `(B, T, .)` and runs as
        one time-major scan (the layout `_lstm_kernel.lstm_layer` is fast in).
        """
        if zs.ndim not in (2, 3):
            raise ValueError(f"inputs must have shape (T, d) or (B, T, d), got {tuple(zs.shape)}")
        batched = zs.ndim == 3
        x = jnp.swapaxes(zs, 0, 1) if batched else zs
        new_state = []
        for layer in range(self.layers):
            x, s = _fast_lstm_layer(
                self.w_x[layer][...], self.w_h[layer][...], self.b[layer][...], x, *state[layer]
            )
            new_state.append(s)
        out = x @ self.w_out[...]
        out = out + lift(self.b_out[...], out.ndim)
        if batched:
            x, out = jnp.swapaxes(x, 0, 1), jnp.swapaxes(out, 0, 1)
        return x, zs + out, new_state

    def cell(self, z: Float[Array, "*B d"], state: list[tuple[Array, Array]]):
        """One step of the whole stack on one normalised input `z (d,)` (or a batch `(B, d)`
        with a batched state): returns the top hidden state `h^L_t`, the prediction
        `zhat_{t+1} = z + h^L_t W_out + b_out` and the new state `[(h_l, c_l), ...]`."""
        x = z
        new_state = []
        for layer in range(self.layers):
            h, c = state[layer]
            h, c = _lstm_step(
                self.w_x[layer][...], self.w_h[layer][...], self.b[layer][...], x, h, c
            )
            new_state.append((h, c))
            x = h
        out = x @ self.w_out[...]
        return x, z + out + lift(self.b_out[...], out.ndim), new_state

    def lrp_params(self) -> dict:
        """The parameters in the layout of `models.attribution.lstm_lrp` (normalised units;
        the readout explains the residual `z_{t+1} - z_t`)."""
        return {
            "layers": [
                {"w_x": self.w_x[layer][...], "w_h": self.w_h[layer][...], "b": self.b[layer][...]}
                for layer in range(self.layers)
            ],
            "w_out": self.w_out[...],
            "b_out": self.b_out[...],
        }
