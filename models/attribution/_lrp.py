"""Layer-wise relevance propagation through a stacked LSTM (Arras et al. 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._lstm_kernel import cell_update, gates
from ._misc import as_float, check_nonnegative, safe_div


def _check_lstm(params, xs) -> None:
    if not isinstance(params, dict) or not {"layers", "w_out", "b_out"} <= set(params):
        raise ValueError('params must be a dict with keys "layers", "w_out", "b_out"')
    layers = params["layers"]
    if not isinstance(layers, (list, tuple)) or len(layers) == 0:
        raise ValueError("params['layers'] must be a non-empty list of layer dicts")
    if xs.ndim != 2 or xs.shape[0] < 1:
        raise ValueError(f"xs must have shape (T, D_in) with T >= 1, got {xs.shape}")
    d_in = xs.shape[1]
    for k, layer in enumerate(layers):
        try:
            wx, wh, b = (jnp.shape(layer[name]) for name in ("w_x", "w_h", "b"))
        except (KeyError, TypeError):
            raise ValueError(
                f'params["layers"][{k}] must be a dict with keys "w_x", "w_h", "b"'
            ) from None
        h = wh[0] if len(wh) == 2 else -1
        if wx != (d_in, 4 * h) or wh != (h, 4 * h) or b != (4 * h,):
            raise ValueError(
                f"layer {k}: expected w_x ({d_in}, 4H), w_h (H, 4H), b (4H,); "
                f"got w_x {wx}, w_h {wh}, b {b}"
            )
        d_in = h
    wo, bo = jnp.shape(params["w_out"]), jnp.shape(params["b_out"])
    if len(wo) != 2 or wo[0] != d_in or bo != (wo[1],):
        raise ValueError(
            f"w_out must have shape ({d_in}, D_out) and b_out (D_out,), got {wo} and {bo}"
        )


def _lstm_layer(layer, us):
    """One LSTM layer over a sequence; returns `h_t` and what LRP needs at every step."""
    w_x, w_h, b = layer["w_x"], layer["w_h"], layer["b"]
    hdim = w_h.shape[0]
    zeros = jnp.zeros(hdim, us.dtype)

    def step(carry, u):
        h, c = carry
        z = u @ w_x + h @ w_h + b
        i, f, g, o = gates(z)  # the model's own gate function (models.LSTM.cell)
        h_new, c_new = cell_update((i, f, g, o), c)
        zg = z[2 * hdim : 3 * hdim]
        return (h_new, c_new), (h_new, dict(u=u, h=h, c=c, i=i, f=f, g=g, zg=zg, c_new=c_new))

    _, (hs, saved) = jax.lax.scan(step, (zeros, zeros), us)
    return hs, saved


def lstm_forward(params: dict, xs: Float[ArrayLike, "T D_in"]) -> Float[Array, " D_out"]:
    r"""The stacked LSTM that `lstm_lrp` explains; returns the readout after the last step.

    Per layer, with gate order `(i, f, g, o)` in the columns of `w_x`, `w_h`, `b`:

    `z_t = u_t w_x + h_{t-1} w_h + b`, `i = sigmoid(z^i)`, `f = sigmoid(z^f)`,
    `g = tanh(z^g)`, `o = sigmoid(z^o)`,
    `c_t = f * c_{t-1} + i * g`, `h_t = o * tanh(c_t)`, `h_0 = c_0 = 0`,

    where `u_t` is `x_t` for the first layer and the previous layer's `h_t`
    above it. Output: `h_T w_out + b_out`.
    """
    xs = as_float("xs", xs)
    _check_lstm(params, xs)
    return _lstm_forward(params, xs)


@jax.jit
def _lstm_forward(params, xs):
    us = xs
    for layer in params["layers"]:
        us, _ = _lstm_layer(layer, us)
    return us[-1] @ params["w_out"] + params["b_out"]


def _stab(z, eps):
    """The epsilon-rule denominator `z + eps * sign(z)` with `sign(0) = +1`."""
    return z + eps * jnp.where(z >= 0, 1.0, -1.0)


def _lrp_layer_backward(layer, saved, rh_ext, eps):
    """Relevance of one layer's inputs `u_t` from the relevance `rh_ext` on its `h_t`."""
    w_x, w_h, b = layer["w_x"], layer["w_h"], layer["b"]
    hdim = w_h.shape[0]
    gate = slice(2 * hdim, 3 * hdim)
    wxg, whg, bg = w_x[:, gate], w_h[:, gate], b[gate]

    def step(carry, inp):
        rh_rec, rc_rec, absorbed = carry
        s, rh_in = inp
        rh = rh_in + rh_rec
        rc = rc_rec + rh  # h_t = o * tanh(c_t): all of h_t's relevance goes to c_t
        # c_t = f * c_{t-1} + i * g: epsilon rule over the two summands,
        # then each product hands all its relevance to its signal.
        q = safe_div(rc, _stab(s["c_new"], eps))
        rc_prev = s["f"] * s["c"] * q
        rg = s["i"] * s["g"] * q
        absorbed = absorbed + jnp.sum((_stab(s["c_new"], eps) - s["c_new"]) * q)
        # g = tanh(z^g) passes relevance on unchanged; z^g = u w_xg + h w_hg + b_g
        qg = safe_div(rg, _stab(s["zg"], eps))
        ru = s["u"] * (wxg @ qg)
        rh_prev = s["h"] * (whg @ qg)
        absorbed = absorbed + jnp.sum((_stab(s["zg"], eps) - s["zg"] + bg) * qg)
        return (rh_prev, rc_prev, absorbed), ru

    zero = jnp.zeros(hdim, rh_ext.dtype)
    init = (zero, zero, jnp.zeros((), rh_ext.dtype))
    (_, _, absorbed), ru = jax.lax.scan(step, init, (saved, rh_ext), reverse=True)
    return ru, absorbed


def lstm_lrp(
    params: dict,
    xs: Float[ArrayLike, "T D_in"],
    *,
    target: int,
    eps: float = 1e-6,
    return_absorbed: bool = False,
) -> Float[Array, "T D_in"] | tuple[Float[Array, "T D_in"], Float[Array, ""]]:
    r"""Layer-wise relevance propagation through a stacked LSTM (Arras et al. 2017).

    Explains `y = lstm_forward(params, xs)[target]` (the last step's readout)
    by relevances `R_{t,d}` of the inputs `xs[t, d]`. `params` is
    `{"layers": [{"w_x": (D_in, 4H), "w_h": (H, 4H), "b": (4H,)}, ...],
    "w_out": (H, D_out), "b_out": (D_out,)}`, gate order `(i, f, g, o)`; see
    `lstm_forward`.

    Rules, with `s(z) = z + eps sign(z)` (`sign(0) = +1`):

    - Linear maps `z_j = sum_i a_i w_ij + b_j` (the readout and the
      pre-activation `z^g`) use the epsilon rule
      `R_i = sum_j a_i w_ij / s(z_j) R_j`.
    - The cell accumulator `c_t = f c_{t-1} + i g` splits `R_{c_t}` over its two
      summands by the same rule (identity weights, no bias).
    - Gate rule ("signal takes all"): in `i * g`, `f * c_{t-1}` and
      `o * tanh(c_t)` the whole relevance goes to the signal (`g`, `c_{t-1}`,
      `c_t`); the sigmoid gates `i`, `f`, `o` get none, so `x_t` and `h_{t-1}`
      receive relevance only through `z^g`. `tanh` passes relevance unchanged.
    - Relevance that reaches `h_{t-1}` (from step `t`'s `z^g`) and from the
      layer above adds up; the first layer's `u_t = x_t` relevance is returned.

    **Conservation.** Each rule keeps `sum_i R_i = R_j (z_j - b_j) / s(z_j)`;
    the rest, `R_j (b_j + eps sign z_j) / s(z_j)`, is *absorbed* by the bias
    and the stabiliser and not redistributed (bias relevance absorbed). The
    initial states `h_0 = c_0 = 0` receive exactly zero. Hence

    `sum_{t,d} R_{t,d} + absorbed = y`

    exactly, and with zero biases and `eps -> 0` the absorbed share vanishes:
    `sum R = y`. The absorbed share is the sum, over every neuron, of its
    relevance times its bias-plus-stabiliser fraction of its pre-activation;
    `return_absorbed=True` also returns it.
    """
    xs = as_float("xs", xs)
    _check_lstm(params, xs)
    d_out = jnp.shape(params["w_out"])[1]
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise ValueError(f"target must be a Python integer, got {target!r}")
    if not 0 <= target < d_out:
        raise ValueError(f"target must be in [0, {d_out}), got {target}")
    check_nonnegative("eps", eps)

    rel, absorbed = _lstm_lrp(params, xs, jnp.asarray(target), eps)
    return (rel, absorbed) if return_absorbed else rel


@jax.jit
def _lstm_lrp(params, xs, target, eps):
    us, saved_all = xs, []
    for layer in params["layers"]:
        hs, saved = _lstm_layer(layer, us)
        saved_all.append(saved)
        us = hs
    h_last = us[-1]
    w = params["w_out"][:, target]
    bias = params["b_out"][target]
    y = h_last @ w + bias
    q = safe_div(y, _stab(y, eps))
    rh = jnp.zeros_like(us).at[-1].set(h_last * w * q)
    absorbed = (_stab(y, eps) - y + bias) * q
    for layer, saved in zip(reversed(params["layers"]), reversed(saved_all)):
        rh, ab = _lrp_layer_backward(layer, saved, rh, eps)
        absorbed = absorbed + ab
    return rh, absorbed
