"""An autoregressive GRU: the LSTM's sibling black box with a gated recurrent unit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ._autoregressive import AutoregressiveModel, check_rollout
from ._common import check_state_dim, lift


def _gru_update(ax, h, w_h, b_hn):
    r"""One GRU update from the input projection `ax = x W_x + b` (gate order r, z, n):
    `r = sigma(ax_r + h W_hr)`, `u = sigma(ax_z + h W_hz)`,
    `n = tanh(ax_n + r * (h W_hn + b_hn))`, `h' = (1 - u) n + u h`."""
    hidden = h.shape[-1]
    ah = h @ w_h
    r = jax.nn.sigmoid(ax[..., :hidden] + ah[..., :hidden])
    u = jax.nn.sigmoid(ax[..., hidden : 2 * hidden] + ah[..., hidden : 2 * hidden])
    n = jnp.tanh(ax[..., 2 * hidden :] + r * (ah[..., 2 * hidden :] + lift(b_hn, ah.ndim)))
    return (1 - u) * n + u * h


def _gru_layer(w_x, w_h, b, b_hn, xs, h0):
    """One GRU layer over a time-major sequence `xs (T, *B, d_in)` from `h0 (*B, hidden)`
    (see `_gru_update`); the input projection is computed for all steps at once, outside the
    recurrence. Returns `hs (T, *B, hidden)` and the last `h`."""
    ax = xs @ w_x
    ax = ax + lift(b, ax.ndim)

    def step(h, a):
        h = _gru_update(a, h, w_h, b_hn)
        return h, h

    h, hs = jax.lax.scan(step, h0, ax)
    return hs, h


class GRU(AutoregressiveModel):
    r"""Autoregressive GRU over normalised states `z = (y - m) / s`.

    `layers` stacked GRU layers of `hidden` units (Cho et al. 2014, in the convention of
    PyTorch and Flax): with `x^0_t = z_t` and per layer

    `r_t = sigma(x_t W_xr + h_{t-1} W_hr + b_r)`, `u_t = sigma(x_t W_xz + h_{t-1} W_hz + b_z)`,
    `n_t = tanh(x_t W_xn + b_n + r_t * (h_{t-1} W_hn + b_hn))`,
    `h_t = (1 - u_t) n_t + u_t h_{t-1}` (the next layer's input),

    and a linear readout predicting the next state residually, as the LSTM's:
    `z_{t+1} = z_t + W_out h^L_t + b_out` (the readout starts at zero: the untrained model
    predicts persistence). The same interface and training as `models.LSTM`: `gru(xs)`
    teacher-forced, `forecast(context, n_steps)` warming up on the context and then feeding
    its predictions back, the objective (teacher forcing plus a free rollout of `rollout`
    steps after `warmup`) and `models.recipes.rollout_recipe` (see `AutoregressiveModel`).
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
        if not isinstance(hidden, int) or not isinstance(layers, int) or hidden < 1 or layers < 1:
            raise ValueError(
                f"hidden and layers must be integers >= 1, got hidden={hidden!r}, layers={layers!r}"
            )
        check_rollout(warmup, rollout)
        super().__init__(state_dim)
        self.hidden, self.layers = int(hidden), int(layers)
        self.warmup, self.rollout = int(warmup), int(rollout)
        init = jax.nn.initializers.glorot_uniform()
        ws_x, ws_h, bs, bs_hn = [], [], [], []
        d_in = state_dim
        for _ in range(layers):
            ws_x.append(nnx.Param(init(rngs.params(), (d_in, 3 * hidden))))
            ws_h.append(
                nnx.Param(jax.nn.initializers.orthogonal()(rngs.params(), (hidden, 3 * hidden)))
            )
            bs.append(nnx.Param(jnp.zeros(3 * hidden)))
            bs_hn.append(nnx.Param(jnp.zeros(hidden)))
            d_in = hidden
        self.w_x, self.w_h = nnx.List(ws_x), nnx.List(ws_h)
        self.b, self.b_hn = nnx.List(bs), nnx.List(bs_hn)
        self.w_out = nnx.Param(jnp.zeros((hidden, state_dim)))
        self.b_out = nnx.Param(jnp.zeros(state_dim))

    def init_state(self, batch_shape: tuple[int, ...] = ()) -> list[Array]:
        """The zero state `[h_1, ..., h_L]`, each `(*batch_shape, hidden)`, in the parameters'
        dtype."""
        return [jnp.zeros((*batch_shape, self.hidden), self._dtype()) for _ in range(self.layers)]

    def _layer(self, layer: int):
        return (
            self.w_x[layer][...],
            self.w_h[layer][...],
            self.b[layer][...],
            self.b_hn[layer][...],
        )

    def run(self, zs: Float[Array, "*B T d"], state: list[Array]):
        """Reads normalised inputs `zs (T, d)` (teacher forcing) from `state`; returns the top
        layer's hidden states `(T, hidden)`, the next-step predictions
        `zhat_{t+1} = z_t + h^L_t W_out + b_out (T, d)` and the final state. A batch
        `zs (B, T, d)` with a batched state gives `(B, T, .)` (one time-major scan)."""
        if zs.ndim not in (2, 3):
            raise ValueError(f"inputs must have shape (T, d) or (B, T, d), got {tuple(zs.shape)}")
        batched = zs.ndim == 3
        x = jnp.swapaxes(zs, 0, 1) if batched else zs
        new_state = []
        for layer in range(self.layers):
            x, h = _gru_layer(*self._layer(layer), x, state[layer])
            new_state.append(h)
        out = x @ self.w_out[...]
        out = out + lift(self.b_out[...], out.ndim)
        if batched:
            x, out = jnp.swapaxes(x, 0, 1), jnp.swapaxes(out, 0, 1)
        return x, zs + out, new_state

    def cell(self, z: Float[Array, "*B d"], state: list[Array]):
        """One step of the stack on one normalised input `z (d,)` (or a batch `(B, d)`):
        returns `h^L_t`, the prediction `z + h^L_t W_out + b_out` and the new state."""
        x = z
        new_state = []
        for layer in range(self.layers):
            w_x, w_h, b, b_hn = self._layer(layer)
            ax = x @ w_x
            x = _gru_update(ax + lift(b, ax.ndim), state[layer], w_h, b_hn)
            new_state.append(x)
        out = x @ self.w_out[...]
        return x, z + out + lift(self.b_out[...], out.ndim), new_state
