"""A fast LSTM layer: the recurrence with a hand-written derivative.

`lstm_layer(w_x, w_h, b, xs, h0, c0) -> (hs, (h, c))` computes what
`models.lstm._lstm_layer` computes (gate order i, f, g, o; equal up to
rounding), and is cheaper to train:

- Gate nonlinearities: one `tanh` over the whole `(..., 4H)` gate block,
  `a = s tanh(s z) + 1 - s` with `s = 1/2` on the i, f, o gates
  (`sigmoid(x) = (1 + tanh(x / 2)) / 2`) and `s = 1` on g, instead of three
  logistics and a tanh on slices. Its derivative is `s^2 (1 - tanh^2)`.
- The input projection `x_t W_x` stays inside the scan: precomputing it for
  all steps (as `_lstm_layer` does) writes and reads back a `(T, B, 4H)`
  array, which on the CPU cost more than it saved.
- The derivative is a `jax.custom_jvp` whose tangent is a linear scan that
  carries only `(dh, dc)`. The forward scan saves, per step, the coefficients
  of the linearised cell (the gates and `tanh c` folded with the activations'
  derivatives) and the rows `[h_{t-1}, x_t, 1]`; nothing is recomputed. JAX
  transposes the rule for reverse mode: a backward scan that propagates
  `(dh, dc)` with one `(B, 4H) x (4H, H)` product per step and, in the same
  step, accumulates all weight gradients with one more product,
  `[dW_h; dW_x; db] += [h_{t-1}, x_t, 1]^T dz_t`. For a batch laid out
  `(T, B, d)` those rows are stored transposed, `(H + d + 1, B)`, so that this
  is a plain `(H + d + 1, B) @ (B, 4H)` product.

  Why not one large weight-gradient product after the backward scan (as
  cuDNN does)? On the CPU it was slower here: it needs the gate gradients of
  all steps, `(T, B, 4H)`, written to fresh memory and read back (page
  faults and memory traffic cost more than the product saves), and under
  `jax.vmap` XLA transposes that array before the product. Why a
  `custom_jvp` rather than a `custom_vjp`: forward mode (`jax.jacfwd`,
  `jax.jvp`, used on `LSTM.forecast`) and higher derivatives keep working,
  and under `jax.vmap` the weight gradients stay one product over the batch
  instead of per-sequence products summed afterwards.

Shapes: `xs (T, ..., d_in)`, `h0, c0 (..., H)` (broadcast to the batch),
`w_x (d_in, 4H)`, `w_h (H, 4H)`, `b (4H,)`: batch dims `...` after the time
axis are carried through, so a batch of sequences runs as one `(T, B, d)`
call (the fast layout), and `jax.vmap` over single sequences works too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero


def gates(z):
    """The gate activations of pre-activations `z (..., 4H)`, gate order (i, f, g, o):
    `i, f, o = sigmoid(z^{i,f,o})`, `g = tanh(z^g)`. The plain form that the reference layer
    (`models.lstm._lstm_layer`, `LSTM.cell`) and the LRP of `models.attribution` use; the fast
    layer below computes the same values with one fused `tanh`."""
    hdim = z.shape[-1] // 4
    i = jax.nn.sigmoid(z[..., :hdim])
    f = jax.nn.sigmoid(z[..., hdim : 2 * hdim])
    g = jnp.tanh(z[..., 2 * hdim : 3 * hdim])
    o = jax.nn.sigmoid(z[..., 3 * hdim :])
    return i, f, g, o


def cell_update(acts, c):
    """`(h_t, c_t)` from the gate activations `acts = (i, f, g, o)` and `c_{t-1}`:
    `c_t = f c_{t-1} + i g`, `h_t = o tanh(c_t)`."""
    i, f, g, o = acts
    c = f * c + i * g
    return o * jnp.tanh(c), c


def _scales(hdim, dtype):
    """`s` of the fused activation `a = s tanh(s z) + (1 - s)`."""
    half = jnp.full((hdim,), 0.5, dtype)
    return jnp.concatenate([half, half, jnp.ones((hdim,), dtype), half])


def _t(a):
    """`(..., B, n) -> (..., n, B)`: batched rows stored transposed."""
    return jnp.swapaxes(a, -1, -2)


def _mm(a, w, transposed: bool):
    """`a @ w` for `a (..., n)`, or for `a` stored transposed `(..., n, B)`. In the
    transposed layout the transpose of this product (reverse mode: `a^T @ ct`) is a plain
    `(n, B) @ (B, m)` product instead of one contracting the leading dims."""
    if transposed:
        return jnp.einsum("...nb,nm->...bm", a, w)
    return a @ w


def _forward(w_x, w_h, b, xs, h0, c0, *, save: bool, pack: bool = False):
    """The recurrence; with `save`, also the per-step coefficients of the linearised cell,
    and with `pack` the rows `[h_{t-1}, x_t, 1]` that multiply `[dW_h; dW_x; db]`."""
    hdim = w_h.shape[0]
    batched = xs.ndim > 2  # per-step rows (B, .): store the packed rows transposed
    # the per-gate vectors lifted to the rank of a step's rows `(..., 4H)` (explicit broadcasting)
    lead = (None,) * (xs.ndim - 2)
    s = _scales(hdim, w_h.dtype)[lead]
    one_minus_s = 1 - s
    b = b[lead]

    def step(carry, x):
        h_prev, c_prev = carry
        z = x @ w_x + b + h_prev @ w_h
        t = jnp.tanh(z * s)
        a = t * s + one_minus_s
        i, f, g, o = (a[..., k * hdim : (k + 1) * hdim] for k in range(4))
        c = f * c_prev + i * g
        tc = jnp.tanh(c)
        h = o * tc
        if not save:
            return (h, c), h
        # coefficients of the linearised cell (see `_lstm_layer_jvp`)
        d = (s * s) * (1 - t * t)
        dd = [d[..., k * hdim : (k + 1) * hdim] for k in range(4)]
        kp = jnp.stack([g * dd[0], c_prev * dd[1], i * dd[2], tc * dd[3]], axis=-2)
        q = o * (1 - tc * tc)
        if not pack:
            return (h, c), (h, kp, f, q, None)
        rows = jnp.concatenate(
            [h_prev, x.astype(h_prev.dtype), jnp.ones(h_prev.shape[:-1] + (1,), h_prev.dtype)],
            axis=-1,
        )
        return (h, c), (h, kp, f, q, _t(rows) if batched else rows)

    h0 = jnp.broadcast_to(h0, xs.shape[1:-1] + (hdim,))
    c0 = jnp.broadcast_to(c0, xs.shape[1:-1] + (hdim,))
    return jax.lax.scan(step, (h0, c0), xs)


@jax.custom_jvp
def lstm_layer(w_x, w_h, b, xs, h0, c0):
    """One LSTM layer over `xs (T, ..., d_in)` from the state `(h0, c0)`; returns the hidden
    states `hs (T, ..., H)` and the final state `(h, c)`. Same values as
    `models.lstm._lstm_layer`; see the module docstring for the derivative."""
    (h, c), hs = _forward(w_x, w_h, b, xs, h0, c0, save=False)
    return hs, (h, c)


def _lstm_layer_jvp(primals, tangents):
    w_x, w_h, b, xs, h0, c0 = primals
    dw_x, dw_h, db, dxs, dh0, dc0 = tangents
    hdim = w_h.shape[0]
    dtype = jnp.result_type(w_h, xs)
    batched = xs.ndim > 2
    zero = lambda t: isinstance(t, SymbolicZero)  # noqa: E731
    weights = not (zero(dw_h) and zero(dw_x) and zero(db))
    (h, c), (hs, kp, f, q, rows) = _forward(w_x, w_h, b, xs, h0, c0, save=True, pack=weights)

    # Linearised cell, with u = kp * dz (per gate block k = i, f, g, o):
    #   dc_t = f dc_{t-1} + u_i + u_f + u_g,   dh_t = u_o + q dc_t,
    #   dz_t = dh_{t-1} W_h + [h_{t-1}, x_t, 1] [dW_h; dW_x; db] + dx_t W_x.
    # The last two terms are the only place the weights' and inputs' tangents enter; the
    # transpose of the first accumulates all weight gradients with one product per step.
    seqs, terms = [], []  # per-step sequences and the matrices they multiply
    if weights:
        inst = lambda t, like: jnp.zeros(like.shape, like.dtype) if zero(t) else t  # noqa: E731
        seqs.append(rows)
        terms.append(
            (jnp.concatenate([inst(dw_h, w_h), inst(dw_x, w_x), inst(db, b)[None]]), batched)
        )
    if not zero(dxs):
        seqs.append(dxs)
        terms.append((w_x, False))
    lead = hs.shape[1:-1]
    lead_axes = (None,) * len(lead)  # lifts the (4, 1) gate masks to the rank of `u`
    dh0 = jnp.zeros(lead + (hdim,), dtype) if zero(dh0) else jnp.broadcast_to(dh0, lead + (hdim,))
    dc0 = jnp.zeros(lead + (hdim,), dtype) if zero(dc0) else jnp.broadcast_to(dc0, lead + (hdim,))
    gate_sum = jnp.asarray([1, 1, 1, 0], dtype)[lead_axes + (slice(None), None)]
    gate_o = jnp.asarray([0, 0, 0, 1], dtype)[lead_axes + (slice(None), None)]

    def step(carry, x):
        dh, dc = carry
        kp_t, f_t, q_t, seq_t = x
        dz = dh @ w_h
        for a, (w, transposed) in zip(seq_t, terms):
            dz = dz + _mm(a, w, transposed)
        u = kp_t * dz.reshape(dz.shape[:-1] + (4, hdim))
        dc = f_t * dc + jnp.sum(u * gate_sum, axis=-2)
        dh = jnp.sum(u * gate_o, axis=-2) + q_t * dc
        return (dh, dc), dh

    (dh_t, dc_t), dhs = jax.lax.scan(step, (dh0, dc0), (kp, f, q, seqs))
    return (hs, (h, c)), (dhs, (dh_t, dc_t))


lstm_layer.defjvp(_lstm_layer_jvp, symbolic_zeros=True)
