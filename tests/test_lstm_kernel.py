"""The fast LSTM layer (`models._lstm_kernel.lstm_layer`, a custom derivative) against the
plain-autodiff reference `models.lstm._lstm_layer`, in float64: values, reverse- and
forward-mode derivatives, under `jax.vmap` and in the time-major batch layout, and the
model built on it (`LSTM.__call__`, `hidden_states`, `loss`) against the same model run
through the reference layer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models as m
import models.lstm as lstm_module
from models._lstm_kernel import lstm_layer
from models.lstm import _lstm_layer

T, D, H, B = 9, 3, 5, 4
TOL = dict(rtol=1e-10, atol=1e-13)
# compilation dominates these tests; LLVM's optimisations only cost time here
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOL), a, b)


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


@pytest.fixture(scope="module")
def args():
    return (
        _normal(0, (D, 4 * H), 0.6),
        _normal(1, (H, 4 * H), 0.6),
        _normal(2, (4 * H,)),
        _normal(3, (T, D)),
        _normal(4, (H,), 0.5),
        _normal(5, (H,)),
    )


def _objective(layer):
    """A scalar that reads every output (all hidden states and the final state), nonlinearly."""

    def f(*a):
        hs, (h, c) = layer(*a)
        weights = jnp.broadcast_to(jnp.arange(hs.shape[-1]), hs.shape)
        return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(h**2) + jnp.sum(jnp.cos(c))

    return f


def test_values_and_reverse_mode(args):
    assert args[0].dtype == jnp.float64

    @_jit
    def run(args):
        def both(layer):
            f = _objective(layer)
            # all derivatives at once, and some alone (symbolic-zero tangents for the rest)
            return (
                layer(*args),
                jax.grad(f, argnums=range(6))(*args),
                [jax.grad(f, argnums=i)(*args) for i in (1, 3, 4)],
            )

        return both(lstm_layer), both(_lstm_layer)

    fast, ref = run(args)
    _close(fast, ref)


def test_forward_mode_and_second_order(args):
    tangents = jax.tree.map(
        lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), args
    )

    @_jit
    def run(args, tangents):
        def both(layer):
            jvp = jax.jvp(layer, args, tangents)
            jac = jax.jacfwd(lambda xs: layer(*args[:3], xs, *args[4:])[0])(args[3])
            # Hessian-vector product through the custom rule
            hvp = jax.jvp(jax.grad(_objective(layer), argnums=1), args, tangents)[1]
            return jvp, jac, hvp

        return both(lstm_layer), both(_lstm_layer)

    fast, ref = run(args, tangents)
    _close(fast, ref)


def test_vmap_and_time_major_batch(args):
    w_x, w_h, b, _, _, c0 = args
    xb, hb = _normal(6, (B, T, D)), _normal(7, (B, H))

    def batched(layer):
        def f(w_x, w_h, b, xb, hb, c0):
            return jnp.sum(jax.vmap(lambda x, h: _objective(layer)(w_x, w_h, b, x, h, c0))(xb, hb))

        return f

    # the same batch laid out time-major, (T, B, D), in one call; c0 broadcast to the batch
    def time_major(w_x, w_h, b, xb, hb, c0):
        hs, (h, c) = lstm_layer(w_x, w_h, b, jnp.swapaxes(xb, 0, 1), hb, c0)
        hs = jnp.swapaxes(hs, 0, 1)
        weights = jnp.arange(H)[None, None, :]
        return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(h**2) + jnp.sum(jnp.cos(c))

    @_jit
    def run(a):
        vg = lambda f: jax.value_and_grad(f, argnums=range(6))(*a)  # noqa: E731
        return vg(batched(_lstm_layer)), vg(batched(lstm_layer)), vg(time_major)

    ref, fast_vmap, fast_time_major = run((w_x, w_h, b, xb, hb, c0))
    _close(fast_vmap, ref)
    _close(fast_time_major, ref)


def test_zero_length_sequence(args):
    w_x, w_h, b, _, h0, c0 = args
    hs, (h, c) = lstm_layer(w_x, w_h, b, jnp.zeros((0, D)), h0, c0)
    assert hs.shape == (0, H)
    _close((h, c), (h0, c0))
    g = jax.grad(lambda h0: jnp.sum(lstm_layer(w_x, w_h, b, jnp.zeros((0, D)), h0, c0)[1][0] ** 2))(
        h0
    )
    _close(g, 2 * h0)


def _model(layers):
    lstm = m.LSTM(D, hidden=H, layers=layers, warmup=4, rollout=3, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(lstm, nnx.Param, ...)
    # non-trivial readout and biases (the readout starts at zero)
    leaves, tree = jax.tree.flatten(params)
    leaves = [p + _normal(10 + i, p.shape, 0.3) for i, p in enumerate(leaves)]
    lstm = nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)
    lstm.mean.set_value(jnp.array([0.1, -0.2, 0.3]))
    lstm.std.set_value(jnp.array([1.5, 0.7, 1.1]))
    lstm.dt = 0.1
    return lstm


def _reference_loss(lstm, windows):
    """`LSTM.loss` as it was written before the batched pass: vmapped over windows."""
    zs = lstm.normalise(windows)

    def one(z):
        _, pred, _ = lstm.run(z[:-1], lstm.init_state())
        tf = jnp.mean((pred - z[1:]) ** 2)
        w = min(lstm.warmup, z.shape[0] - 2)
        r = min(lstm.rollout, z.shape[0] - 1 - w)
        if r < 1:
            return tf
        _, pw, st = lstm.run(z[:w], lstm.init_state())
        free, _ = lstm.free_run(pw[-1], st, r)
        return tf + jnp.mean((free - z[w : w + r]) ** 2)

    return jnp.mean(jax.vmap(one)(zs))


def test_model_matches_the_reference_layer(monkeypatch):
    lstm = _model(layers=2)
    xb, windows = _normal(8, (B, T, D)), _normal(9, (B, 9, D))
    graphdef, params, rest = nnx.split(lstm, nnx.Param, ...)

    def run(p, reference: bool):
        model = nnx.merge(graphdef, p, rest)
        outputs = model(xb[0]), model(xb), model.hidden_states(xb)
        loss = (
            (lambda p: _reference_loss(nnx.merge(graphdef, p, rest), windows))
            if reference
            else (lambda p: nnx.merge(graphdef, p, rest).loss(windows))
        )
        return outputs, jax.value_and_grad(loss)(p)

    @_jit
    def both(p):
        fast = run(p, False)
        with monkeypatch.context() as patch:  # the model on the reference layer
            patch.setattr(lstm_module, "_fast_lstm_layer", _lstm_layer)
            return fast, run(p, True)

    fast, ref = both(params)
    assert fast[0][1].shape == (B, T, D) and fast[0][2].shape == (B, T, H)
    _close(fast[0][1][0], fast[0][0])  # a batch through __call__ is the single sequences
    # outputs, and the batched loss is the old per-window loss, derivative included
    _close(fast, ref)


def test_model_refuses_other_ranks():
    lstm = _model(1)
    with pytest.raises(ValueError, match=r"\(T, d\) or \(B, T, d\)"):
        lstm(jnp.zeros((2, 2, T, D)))


def test_public_step_methods_agree():
    """`cell` stepped by hand equals `run` (two implementations of the stack), `free_run` feeds
    the predictions back, and `denormalise` inverts `normalise`."""
    lstm = _model(layers=2)
    ys = _normal(21, (6, D))
    zs = lstm.normalise(ys)
    np.testing.assert_allclose(lstm.denormalise(zs), ys, rtol=1e-12, atol=1e-12)
    hs, preds, final = lstm.run(zs, lstm.init_state())
    state = lstm.init_state()
    assert len(state) == 2 and state[0][0].shape == (H,)
    for t in range(zs.shape[0]):
        h, pred, state = lstm.cell(zs[t], state)
        _close(h, hs[t])
        _close(pred, preds[t])
    _close(state, final)
    free, free_h = lstm.free_run(preds[-1], final, 3)
    h1, p1, _ = lstm.cell(preds[-1], final)
    _close(free[0], preds[-1])
    _close(free[1], p1)
    _close(free_h[0], h1)
    _close(lstm.denormalise(free), lstm.forecast(ys, 3))
