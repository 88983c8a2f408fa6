"""A small causal (decoder-only) Transformer over a sliding window of the last states."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from ._autoregressive import AutoregressiveModel, check_rollout
from ._common import check_state_dim, lift


def _sinusoidal(length: int, d_model: int) -> np.ndarray:
    """`P[p, 2i] = sin(p / 10000^(2i/D))`, `P[p, 2i+1] = cos(p / 10000^(2i/D))` (Vaswani et al.
    2017), shape `(length, D)`."""
    pos = np.arange(length)[:, None]
    freq = 10000.0 ** (-np.arange(0, d_model, 2) / d_model)
    out = np.zeros((length, d_model))
    out[:, 0::2] = np.sin(pos * freq)
    out[:, 1::2] = np.cos(pos * freq)[:, : d_model // 2]
    return out


class _Block(nnx.Module):
    """A pre-layer-norm decoder block: `x <- x + MHA(LN(x))` under a causal mask (position `j`
    attends to positions `<= j`), then `x <- x + W_2 gelu(W_1 LN(x) + b_1) + b_2`."""

    def __init__(self, d_model: int, heads: int, mlp: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=heads, in_features=d_model, decode=False, keep_rngs=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.fc1 = nnx.Linear(d_model, mlp, rngs=rngs)
        self.fc2 = nnx.Linear(mlp, d_model, rngs=rngs)

    def __call__(self, x: Float[Array, "L D"], *, last_only: bool = False) -> Float[Array, "_ D"]:
        """`x (L, D)`; with `last_only`, only the last position's output `(1, D)` (its query
        attends to every key, which the causal mask allows it anyway)."""
        h = self.ln1(x)
        if last_only:
            x = x[-1:] + self.attn(h[-1:], h, h)
        else:
            x = x + self.attn(h, mask=nnx.make_causal_mask(jnp.arange(x.shape[0])))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class Transformer(AutoregressiveModel):
    r"""A causal (decoder-only) Transformer over the last `W = context` normalised states
    `z = (y - m) / s`, predicting the increment.

    For a window `z_{t-L+1}, ..., z_t` (`L <= W`, oldest first, at positions `0..L-1`):
    `x_j = W_e z_j + b_e + P_j` (a linear embedding of each state and a learned or
    sinusoidal positional embedding `P`, `(W, d_model)`), `layers` pre-layer-norm blocks of
    causal multi-head self-attention (`heads` heads) and an MLP of `mlp` GELU units
    (`_Block`), whose residual stream at the last position is the feature vector `h_t`, and
    the residual readout `z_{t+1} = z_t + W_out h_t + b_out` (`W_out` starts at zero: the
    untrained model predicts persistence). There is no final layer norm before the readout:
    it would make `h_t` nearly invariant to the scale of the states, and the increment of an
    oscillator is proportional to its amplitude; through the residual stream the readout
    holds a linear map of the last state, `W_out W_e z_t`, plus the blocks' corrections.

    - `model(xs)` (`xs (T, d)` or a batch) returns the teacher-forced next-step predictions:
      the prediction of `z_{t+1}` reads the last `min(W, t + 1)` states (so the first `W`
      predictions are those of one causal pass over `z_0..z_{W-1}`; later ones slide a full
      window of `W`, exactly the windows the forecast reads).
    - `forecast(context, n_steps)` needs at least `W` context states (`min_context = W`):
      it slides the window of the last `W` states, appending each prediction.
    - The state of `run` / `cell` is the buffer of the last (up to `W`) states read.

    Training: the LSTM's objective applies unchanged (`AutoregressiveModel.loss`), with the
    warm-up equal to the context (`warmup = W`): the teacher-forced next-step MSE over the
    window (each prediction from its own window of the last `W` states, as above) plus
    `rollout` free-running steps after reading the first `W` states of the window, fed back
    through the sliding window as in the forecast. So the same `rollout_recipe` (and stopping
    rule) as the LSTM trains it. A teacher-forced pass over a window of `T` states costs
    `T - W + 1` window evaluations, and a free step one (the positions shift as the window
    slides, so no key/value cache can be reused).
    """

    def __init__(
        self,
        state_dim: int,
        *,
        context: int = 20,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 2,
        mlp: int | None = None,
        positional: str = "learned",
        rollout: int = 40,
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim)
        mlp = 4 * d_model if mlp is None else mlp
        for name, v in (
            ("context", context),
            ("d_model", d_model),
            ("heads", heads),
            ("layers", layers),
            ("mlp", mlp),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        if positional not in ("learned", "sinusoidal"):
            raise ValueError(f"positional must be 'learned' or 'sinusoidal', got {positional!r}")
        check_rollout(context, rollout)
        super().__init__(state_dim)
        self.context, self.d_model, self.n_layers = int(context), int(d_model), int(layers)
        self.min_context = self.context
        self.warmup, self.rollout = self.context, int(rollout)
        self.positional = positional
        self.embed = nnx.Linear(state_dim, d_model, rngs=rngs)
        self.pos = (
            nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, d_model)))
            if positional == "learned"
            else None
        )
        self.blocks = nnx.List([_Block(d_model, heads, mlp, rngs=rngs) for _ in range(layers)])
        self.w_out = nnx.Param(jnp.zeros((d_model, state_dim)))
        self.b_out = nnx.Param(jnp.zeros(state_dim))

    def _positions(self, length: int, dtype) -> Array:
        if self.pos is None:
            return jnp.asarray(_sinusoidal(length, self.d_model), dtype)
        return self.pos[...][:length].astype(dtype)

    def features(self, window: Float[Array, "L d"], *, last_only: bool = False):
        """The residual stream after the last block, `(L, d_model)`, of a normalised window
        `(L, d)`, `L <= W` (position `j` reads states `0..j`); with `last_only`, the last
        position's `(1, d_model)`."""
        if not 1 <= window.shape[0] <= self.context:
            raise ValueError(f"a window holds 1 to {self.context} states, got {window.shape[0]}")
        x = self.embed(window)
        x = x + self._positions(window.shape[0], x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=last_only and i == self.n_layers - 1)
        return x

    def _readout(self, h, z):
        out = h @ self.w_out[...]
        return z + out + lift(self.b_out[...], out.ndim)

    def init_state(self, batch_shape: tuple[int, ...] = ()) -> Float[Array, "*B 0 d"]:
        """The empty buffer `(*batch_shape, 0, d)`: nothing read yet."""
        return jnp.zeros((*batch_shape, 0, self.state_dim), self._dtype())

    def run(self, zs: Float[Array, "*B T d"], state: Float[Array, "*B L d"]):
        """Reads normalised inputs `zs (T, d)` after the buffered states `state (L, d)`
        (teacher forcing); returns the features `(T, d_model)`, the next-step predictions
        `(T, d)` (each from the last `<= W` states up to it) and the buffer of the last
        `min(W, L + T)` states. A batch `(B, T, d)` with a batched buffer gives `(B, T, .)`."""
        if zs.ndim not in (2, 3) or state.ndim != zs.ndim:
            raise ValueError(
                f"inputs must have shape (T, d) or (B, T, d) with a buffer of the same rank, "
                f"got {tuple(zs.shape)} and {tuple(state.shape)}"
            )
        if zs.ndim == 3:
            return jax.vmap(self._run_one)(zs, state)
        return self._run_one(zs, state)

    def _run_one(self, zs, state):
        w = self.context
        seq = jnp.concatenate([state.astype(zs.dtype), zs])
        s, l0 = seq.shape[0], state.shape[0]
        feats = [self.features(seq[: min(w, s)])]  # one causal pass over the first window
        if s > w:  # then one full window of the last W states per later position
            idx = np.arange(w, s)[:, None] + np.arange(-w + 1, 1)[None, :]
            feats.append(jax.vmap(lambda x: self.features(x, last_only=True)[0])(seq[idx]))
        h = jnp.concatenate(feats)[l0:]
        return h, self._readout(h, zs), seq[-w:]

    def cell(self, z: Float[Array, "*B d"], state: Float[Array, "*B L d"]):
        """One step: appends `z` to the buffer (dropping the oldest state once it holds `W`; a
        buffer of `L < W` states keeps sliding at `L`) and predicts from it; returns the
        features, `zhat_next` and the new buffer."""
        if z.ndim == 2:
            return jax.vmap(self.cell)(z, state)
        keep = min(self.context, max(state.shape[0], 1))
        buf = jnp.concatenate([state.astype(z.dtype), z[None]])[-keep:]
        h = self.features(buf, last_only=True)[0]
        return h, self._readout(h, z), buf
