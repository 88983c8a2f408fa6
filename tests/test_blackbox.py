"""models.GRU and models.Transformer: the LSTM's sibling black boxes.

Shapes, the autoregressive definition of the forecast, causality, argument checks, training by
the LSTM's recipe on a small harmonic chain (absolute accuracy, and better than the
zero-parameter extrapolator `2 y_t - y_{t-1}`), and determinism given the key.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dynamics as d
import models as m

DIM = 4  # two oscillators
DT = 0.1
N_CONTEXT = 5  # the forecast's context, and the Transformer's window W
N_FORECAST = 20

MAKE = {
    "GRU": lambda r, **kw: m.GRU(DIM, hidden=16, warmup=N_CONTEXT, rollout=5, rngs=r, **kw),
    "Transformer": lambda r, **kw: m.Transformer(
        DIM, context=N_CONTEXT, d_model=16, heads=2, layers=2, rollout=5, rngs=r, **kw
    ),
}


@pytest.fixture(scope="module")
def chain():
    system = d.HarmonicChain(np.array([1.0, 1.4]), d.chain_coupling(2, 0.3))
    return d.make_dataset(
        system, key=jax.random.key(0), n_train=8, n_val=4, n_test=4, dt=DT, t_train=5.0, t_end=10.0
    )


def _random_readout(model, seed=0):
    """A readout that is not zero (the untrained readout is: the model would predict
    persistence, and every structural test would pass trivially)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    model.w_out.set_value(0.3 * jax.random.normal(k1, model.w_out[...].shape))
    model.b_out.set_value(0.1 * jax.random.normal(k2, model.b_out[...].shape))
    return model


@pytest.fixture(params=sorted(MAKE))
def untrained(request, chain):
    model = MAKE[request.param](nnx.Rngs(0))
    model.prepare(chain)
    return request.param, _random_readout(model)


# ------------------------------------------------------------------ structure
def test_shapes_of_the_call_the_hidden_states_and_the_forecast(untrained, chain):
    name, model = untrained
    xs = jnp.asarray(chain.test[:3, :30])
    pred = model(xs[0])
    assert pred.shape == (30, DIM) and bool(jnp.all(jnp.isfinite(pred)))
    batched = model(xs)
    assert batched.shape == (3, 30, DIM)
    np.testing.assert_allclose(batched[1], model(xs[1]), rtol=1e-10, atol=1e-12)
    width = model.hidden if name == "GRU" else model.d_model
    assert model.hidden_states(xs[0]).shape == (30, width)
    fc = model.forecast(xs[0, :N_CONTEXT], N_FORECAST)
    assert fc.shape == (N_FORECAST, DIM) and bool(jnp.all(jnp.isfinite(fc)))
    fc_h, hs = model.forecast_hidden(xs[0, :N_CONTEXT], N_FORECAST)
    np.testing.assert_allclose(fc_h, fc, rtol=1e-12)
    assert hs.shape == (N_FORECAST, width)
    # batched forecasts through the pure nnx.split / nnx.merge boundary agree with single ones
    graphdef, state = nnx.split(model)
    run = jax.jit(jax.vmap(lambda c: nnx.merge(graphdef, state).forecast(c, N_FORECAST)))
    np.testing.assert_allclose(
        run(xs[:, :N_CONTEXT])[2],
        model.forecast(xs[2, :N_CONTEXT], N_FORECAST),
        rtol=1e-9,
        atol=1e-12,
    )


@pytest.mark.parametrize("context_len", [N_CONTEXT, N_CONTEXT + 7])
def test_the_forecast_feeds_its_own_predictions_back(untrained, chain, context_len):
    """The forecast is the autoregressive iteration of the teacher-forced call:
    `yhat_{k+1} = model(context ++ yhat_1..yhat_k)[-1]` (the Transformer: from the last W
    states of that sequence)."""
    _, model = untrained
    context = jnp.asarray(chain.test[0, :context_len])
    fc = model.forecast(context, 3)
    seq = context
    for k in range(3):  # eager calls, one compilation per length: few
        nxt = model(seq)[-1]
        np.testing.assert_allclose(fc[k], nxt, rtol=1e-9, atol=1e-10)
        seq = jnp.concatenate([seq, nxt[None]])


def test_teacher_forced_predictions_are_causal(untrained, chain):
    """The prediction of `y_{t+1}` reads nothing after `y_t` (the causal mask of the
    Transformer, the recurrence of the GRU)."""
    _, model = untrained
    xs = jnp.asarray(chain.test[0, :12])
    pred = model(xs)
    for t in (0, 2, N_CONTEXT - 2, 8):
        changed = xs.at[t + 1 :].add(1.0)
        np.testing.assert_allclose(model(changed)[: t + 1], pred[: t + 1], rtol=1e-10, atol=1e-12)
        assert not np.allclose(model(changed)[t + 1], pred[t + 1])


def test_transformer_reads_its_receptive_field_of_states(chain):
    """Each layer attends to the last W positions, so beyond the first `R = layers (W - 1) + 1`
    states a prediction depends on the last R states only (the state R back changes it, older
    ones do not), and equals the forecast's first step from those R states: the key/value
    cache gives what a fresh pass over them gives."""
    model = _random_readout(MAKE["Transformer"](nnx.Rngs(0)))
    model.prepare(chain)
    r = model.receptive_field
    assert r == 2 * (N_CONTEXT - 1) + 1 and model.min_context == N_CONTEXT
    xs = jnp.asarray(chain.test[1, :15])
    pred = model(xs)
    t = 12
    window = xs[t - r + 1 : t + 1]
    np.testing.assert_allclose(model.forecast(window, 1)[0], pred[t], rtol=1e-9, atol=1e-12)
    older = xs.at[: t - r + 1].add(1.0)
    np.testing.assert_allclose(model(older)[t], pred[t], rtol=1e-10, atol=1e-12)
    assert not np.allclose(model(xs.at[t - r + 1].add(1.0))[t], pred[t])


def test_the_cache_stepped_one_state_at_a_time_equals_one_pass(chain):
    """`cell` stepped from the empty cache (partly filled for the first W - 1 states, then
    sliding) gives the features, predictions and cache of one teacher-forced `run`, also when
    the pass starts from a cache."""
    model = _random_readout(MAKE["Transformer"](nnx.Rngs(0)))
    model.prepare(chain)
    zs = model.normalise(jnp.asarray(chain.test[2, :13]))
    hs, preds, final = model.run(zs, model.init_state())
    state = model.init_state()
    for t in range(zs.shape[0]):
        h, p, state = model.cell(zs[t], state)
        np.testing.assert_allclose(h, hs[t], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(p, preds[t], rtol=1e-9, atol=1e-12)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(final)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    _, first, mid = model.run(zs[:4], model.init_state())
    _, rest, _ = model.run(zs[4:], mid)
    np.testing.assert_allclose(jnp.concatenate([first, rest]), preds, rtol=1e-9, atol=1e-12)


def test_the_objective_is_teacher_forcing_plus_a_free_rollout(untrained, chain):
    """`loss(windows)` is the mean over windows of the teacher-forced next-step MSE plus the
    MSE of the forecast from the window's first `warmup` states (normalised units): the
    rollout term feeds predictions back, not the truth."""
    _, model = untrained
    windows = jnp.asarray(chain.train[:3, 4:15])  # 11 states: warm-up 5, rollout 5
    s = model.std[...][None]
    expected = []
    for win in windows:
        tf = jnp.mean(((model(win[:-1]) - win[1:]) / s) ** 2)
        free = jnp.mean(((model.forecast(win[: model.warmup], model.rollout) - win[5:10]) / s) ** 2)
        expected.append(tf + free)
    np.testing.assert_allclose(model.loss(windows), np.mean(expected), rtol=1e-9)


# ------------------------------------------------------------------ argument checks
@pytest.mark.ill_typed
@pytest.mark.parametrize(
    "context, n_steps, match",
    [
        (np.zeros((N_CONTEXT, DIM + 1)), 3, "context must have shape"),
        (np.zeros(DIM), 3, "context must have shape"),
        (np.zeros((N_CONTEXT, DIM)), 0, "n_steps"),
        (np.full((N_CONTEXT, DIM), np.nan), 3, "NaN or inf"),
        (np.r_[np.zeros((N_CONTEXT - 1, DIM)), np.full((1, DIM), np.inf)], 3, "NaN or inf"),
    ],
)
def test_forecast_refuses_bad_contexts(untrained, context, n_steps, match):
    _, model = untrained
    with pytest.raises(ValueError, match=match):
        model.forecast(context, n_steps)


def test_forecast_refuses_a_too_short_context(untrained):
    name, model = untrained
    short = N_CONTEXT - 1 if name == "Transformer" else 0
    with pytest.raises(ValueError, match=f"at least {model.min_context} states"):
        model.forecast(np.zeros((short, DIM)), 3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: m.GRU(DIM, hidden=0, rngs=nnx.Rngs(0)), "hidden"),
        (lambda: m.GRU(DIM, rollout=0, rngs=nnx.Rngs(0)), "rollout"),
        (lambda: m.GRU(0, rngs=nnx.Rngs(0)), "state_dim"),
        (lambda: m.Transformer(DIM, d_model=30, heads=4, rngs=nnx.Rngs(0)), "divisible"),
        (lambda: m.Transformer(DIM, context=0, rngs=nnx.Rngs(0)), "context"),
        (lambda: m.Transformer(DIM, layers=0, rngs=nnx.Rngs(0)), "layers"),
        (lambda: m.Transformer(DIM, positional="rotary", rngs=nnx.Rngs(0)), "positional"),
    ],
)
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_alibi_positions_work_too(chain):
    """ALiBi's fixed slopes instead of the learned bias: no position parameters, and the
    forecast still the autoregressive iteration of the teacher-forced call."""
    model = _random_readout(MAKE["Transformer"](nnx.Rngs(0), positional="alibi"))
    model.prepare(chain)
    assert all(b.attn.bias is None for b in model.blocks)
    context = jnp.asarray(chain.test[0, :N_CONTEXT])
    fc = model.forecast(context, 2)
    np.testing.assert_allclose(fc[0], model(context)[-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        fc[1], model(jnp.concatenate([context, fc[:1]]))[-1], rtol=1e-9, atol=1e-12
    )


# ------------------------------------------------------------------ training
def _recipe(steps):
    """The LSTM's training in tests/test_models.py: its own objective on windows of 11 states,
    stopped early on the validation rollout from `N_CONTEXT` states."""
    return m.Recipe(
        stages=(m.Stage("own loss", None, 11, steps),),
        context=N_CONTEXT,
        eval_every=100,
        batch_size=16,
        lr=1e-2,
    )


def _nmse(pred, true):
    var = np.var(np.asarray(true).reshape(-1, true.shape[-1]), axis=0)
    return float(np.mean((np.asarray(pred) - np.asarray(true)) ** 2 / var))


def _straight_line(contexts, n_steps):
    """`y_{t+1} = 2 y_t - y_{t-1}`, iterated: the straight line through the last two states."""
    step = contexts[:, -1] - contexts[:, -2]
    return contexts[:, -1:] + step[:, None] * np.arange(1, n_steps + 1)[None, :, None]


#: the absolute accuracy over N_FORECAST steps (2 time units) of held-out trajectories
FORECAST_NMSE = 3e-2


@pytest.mark.parametrize("name", sorted(MAKE))
def test_trained_by_the_lstm_recipe_they_forecast_accurately(name, chain):
    start = time.perf_counter()
    model, result = _recipe(800).fit(
        MAKE[name](nnx.Rngs(0)), chain, key=jax.random.key(1), precision="float64"
    )
    seconds = time.perf_counter() - start
    assert model.dt == DT and np.isfinite(result.val_rollout_nmse)
    contexts = jnp.asarray(chain.test[:, :N_CONTEXT])
    true = chain.test[:, N_CONTEXT : N_CONTEXT + N_FORECAST]
    graphdef, state = nnx.split(model)
    fc = jax.jit(jax.vmap(lambda c: nnx.merge(graphdef, state).forecast(c, N_FORECAST)))(contexts)
    trained = _nmse(fc, true)
    line = _nmse(_straight_line(np.asarray(contexts), N_FORECAST), true)
    print(
        f"{name}: forecast nmse {trained:.2e} (2y_t - y_(t-1): {line:.2e}); "
        f"{result.steps_run} steps, {seconds:.1f} s, converged={result.converged}"
    )
    assert trained < FORECAST_NMSE, trained
    assert trained < 0.1 * line, (trained, line)


@pytest.mark.parametrize("name", sorted(MAKE))
def test_training_is_deterministic_given_the_key(name, chain):
    def train(seed, key):
        model, _ = m.fit(
            MAKE[name](nnx.Rngs(seed)),
            chain,
            key=jax.random.key(key),
            steps=40,
            eval_every=20,
            batch_size=8,
            window=11,
            precision="float64",
            progress=False,
        )
        return jax.tree.leaves(nnx.state(model, nnx.Param))

    a, b, c = train(0, 1), train(0, 1), train(0, 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))
