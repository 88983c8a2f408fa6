"""models.recipes and the pieces of `fit` they rest on: the long-horizon validation rollout,
patience with a minimum improvement, the schedule, compile-once, the stages' bookkeeping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dynamics as d
import models as m
from models._common import savgol_derivative_weights
from models.train import _schedule

C = 5  # validation context


@pytest.fixture(scope="module")
def ds():
    system = d.CoupledPendulums(omega=[1.0, 1.3, 1.7], coupling=d.chain_coupling(3, 0.3))
    return d.make_dataset(
        system,
        key=jax.random.key(0),
        n_train=8,
        n_val=4,
        n_test=3,
        dt=0.1,
        t_train=5.0,
        t_end=10.0,
        relative_noise=0.01,
    )


def _node(seed=0):
    return m.NeuralODE(6, width=16, depth=1, rngs=nnx.Rngs(seed))


# ------------------------------------------------------------------ Savitzky-Golay weights
@pytest.mark.parametrize("window", [3, 5, 9, 15])
def test_savgol_weights_differentiate_polynomials_exactly(window):
    """Independent check: the derivative of a cubic at the window's centre (exact for every
    window >= 5; the central difference of window 3 is exact for quadratics)."""
    c = savgol_derivative_weights(window)
    j = np.arange(window) - window // 2
    degree = 2 if window == 3 else 3
    coef = np.random.default_rng(0).normal(size=degree + 1)
    values = np.polyval(coef, j)
    assert np.dot(c, values) == pytest.approx(np.polyval(np.polyder(coef), 0.0), rel=1e-10)
    assert c.sum() == pytest.approx(0.0, abs=1e-12)


def test_savgol_window_three_is_the_central_difference():
    np.testing.assert_allclose(savgol_derivative_weights(3), [-0.5, 0.0, 0.5], atol=1e-14)


@pytest.mark.parametrize("window", [2, 4, 1])
def test_savgol_refuses_even_or_short_windows(window):
    with pytest.raises(ValueError, match="odd"):
        savgol_derivative_weights(window)


# ------------------------------------------------------------------ the derivative window
def test_smoothing_window_error_is_leave_one_out_by_refitting():
    """Independent check of the closed form: refitting the local cubic without its centre
    (np.polyfit on the other w - 1 points) and predicting the centre gives the same error
    ordering; the window with the lowest refitted error is the one chosen."""
    rng = np.random.default_rng(0)
    t = 0.05 * np.arange(120)
    y = np.stack([np.sin(3.0 * t), np.cos(1.3 * t)], -1)[None] + 0.01 * rng.normal(size=(1, 120, 2))
    scale = y.reshape(-1, 2).std(0)
    windows = (5, 7, 9, 11, 13, 15)
    refit = {}
    for w in windows:
        h = w // 2
        j = np.arange(-h, h + 1)
        keep = j != 0
        errs = []
        for c in range(h, 120 - h):
            seg = y[0, c - h : c + h + 1]
            pred = [np.polyval(np.polyfit(j[keep], seg[keep, k], 3), 0.0) for k in range(2)]
            errs.append(((seg[h] - np.array(pred)) / scale) ** 2)
        refit[w] = float(np.mean(errs))
    assert m.smoothing_window(y, windows) == min(refit, key=refit.get)


def test_smoothing_window_is_wide_for_noisy_slow_motion_and_narrow_for_fast():
    rng = np.random.default_rng(1)
    t = 0.05 * np.arange(200)
    slow = np.sin(1.0 * t)[None, :, None] + 0.01 * rng.normal(size=(1, 200, 1))
    fast = np.sin(6.0 * t)[None, :, None] + 0.001 * rng.normal(size=(1, 200, 1))
    assert m.smoothing_window(slow, (5, 7, 9, 11, 13, 15)) == 15
    assert m.smoothing_window(fast, (5, 7, 9, 11, 13, 15)) == 5
    # windows longer than the records are skipped
    assert m.smoothing_window(slow[:, :9], (5, 7, 9, 11, 13, 15)) in (5, 7, 9)


def test_the_derivative_stage_uses_and_records_the_window_chosen_from_the_data(ds):
    recipe = m.recipes.ode_recipe(ds.n_train_steps, budget=200, context=C, eval_every=100)
    assert recipe.stages[0].window_choices == (5, 7, 9, 11, 13, 15)
    fixed = m.recipes.ode_recipe(ds.n_train_steps, budget=200, derivative_window=9)
    assert fixed.stages[0].window == 9 and fixed.stages[0].window_choices is None
    one = dataclasses.replace(recipe, stages=recipe.stages[:1])
    _, res = one.fit(_node(), ds, key=jax.random.key(0))
    chosen = m.smoothing_window(ds.train, (5, 7, 9, 11, 13, 15))
    assert {r["window"] for r in res.history} == {chosen}
    with pytest.raises(ValueError, match="odd"):
        m.Stage("derivative", None, 15, 10, window_choices=(6,))


# ------------------------------------------------------------------ fit: schedule, validation
def test_schedule_equals_optax_warmup_cosine():
    """The schedule is written with array arguments (so compiled steps do not depend on them);
    it must equal optax's own warm-up cosine schedule."""
    ref = optax.warmup_cosine_decay_schedule(
        0.0, 3e-3, warmup_steps=50, decay_steps=1000, end_value=3e-5
    )
    for count in (0, 1, 25, 49, 50, 51, 300, 999, 1000, 1500):
        assert float(_schedule(count, 3e-3, 50, 1000)) == pytest.approx(
            float(ref(count)), rel=1e-6, abs=1e-12
        )


def test_validation_rollout_is_the_forecast_nmse_of_val(ds):
    """With `val_context`, the validation loss is the forecast of every val trajectory from its
    first C states to its end, squared errors over the per-coordinate variance of val:
    recomputed here independently from the model's own `forecast`."""
    model, hist = m.fit(
        _node(),
        ds,
        key=jax.random.key(1),
        steps=20,
        eval_every=20,
        val_context=C,
        precision="float64",
        progress=False,
    )
    val = np.asarray(ds.val)
    pred = np.stack([np.asarray(model.forecast(v[:C], val.shape[1] - C)) for v in val])
    var = val.reshape(-1, val.shape[-1]).var(0)
    expected = np.mean((pred - val[:, C:]) ** 2 / var)
    assert hist[-1]["val_loss"] == pytest.approx(expected, rel=1e-9)
    assert hist[-1]["best_val"] == pytest.approx(expected, rel=1e-9)


def test_window_and_val_context_are_checked(ds):
    with pytest.raises(ValueError, match="window=99"):
        m.fit(_node(), ds, key=jax.random.key(1), steps=2, window=99, progress=False)
    with pytest.raises(ValueError, match="val_context=51"):
        m.fit(_node(), ds, key=jax.random.key(1), steps=2, val_context=51, progress=False)
    with pytest.raises(ValueError, match="min_delta"):
        m.TrainConfig(steps=2, min_delta=1.5)


def test_patience_ignores_improvements_below_min_delta(ds):
    """A learning rate too small to move the validation loss by 50%: with `min_delta=0.5` the
    rule fires after `patience` evaluations (converged, early), without it the run goes on."""
    kw = dict(
        key=jax.random.key(1),
        steps=400,
        eval_every=20,
        lr=1e-6,
        patience=2,
        val_context=C,
        progress=False,
    )
    _, strict = m.fit(_node(), ds, min_delta=0.5, **kw)
    _, plain = m.fit(_node(), ds, **kw)
    assert strict[-1]["converged"] and strict[-1]["step"] == 60  # 1 first + 2 bad evaluations
    assert plain[-1]["step"] > strict[-1]["step"]


def test_compiled_steps_are_shared_across_learning_rates_and_budgets(ds):
    """The second fit differs only in lr, budget and patience: no compilation at all."""
    kw = dict(key=jax.random.key(1), eval_every=10, val_context=C, progress=False)
    _, first = m.fit(_node(), ds, steps=20, lr=1e-3, **kw)
    _, second = m.fit(_node(1), ds, steps=30, lr=3e-3, patience=2, **kw)
    assert first[-1]["compile_seconds"] > 0.1
    assert second[-1]["compile_seconds"] < 0.05 * first[-1]["compile_seconds"], (
        first[-1]["compile_seconds"],
        second[-1]["compile_seconds"],
    )


# ------------------------------------------------------------------ recipes
def _two_stage(second_lr_scale):
    return m.Recipe(
        stages=(
            m.Stage("derivative", m.recipes.derivative_objective, 5, 400, patience=None),
            m.Stage("window 10", m.recipes.trajectory_objective, 10, 60, lr_scale=second_lr_scale),
        ),
        context=C,
        eval_every=20,
        batch_size=16,
        lr=1e-2,
    )


def test_a_stage_that_makes_things_worse_is_undone(ds):
    """A second stage at a learning rate far too high worsens the validation rollout: the recipe
    ends with the first stage's parameters and reports its validation loss."""
    model, res = _two_stage(300.0).fit(_node(), ds, key=jax.random.key(2))
    stage_best = {
        s: min(r["best_val"] for r in res.history if r["stage"] == s)
        for s in ("derivative", "window 10")
    }
    assert stage_best["window 10"] > stage_best["derivative"], stage_best
    assert res.best_stage == "derivative"
    assert res.val_rollout_nmse == pytest.approx(stage_best["derivative"])
    again, _ = m.fit(
        model, ds, key=jax.random.key(3), steps=1, lr=1e-12, val_context=C, progress=False
    )
    # the stored parameters are the derivative stage's: one negligible step reproduces its val
    assert _[-1]["val_loss"] == pytest.approx(stage_best["derivative"], rel=1e-3)


def test_the_plateau_replay_is_fits_own_stopping_rule(ds):
    """`models.recipes._plateaued` judges a stage without a rule (`patience=None`) by `fit`'s
    rule at the default patience (4), from the `bad_evals` that `fit` records: on the records
    of a fit that that rule stopped, it fires at the last evaluation and not one earlier."""
    from models.recipes import _plateaued

    _, records = m.fit(
        _node(),
        ds,
        key=jax.random.key(1),
        steps=2000,
        eval_every=20,
        lr=1e-6,
        patience=4,
        min_delta=0.5,
        val_context=C,
        progress=False,
    )
    assert records[-1]["converged"] and records[-1]["step"] == 100  # 1 first + 4 bad
    free = m.Stage("derivative", None, 5, 2000, patience=None, min_delta=0.5)
    assert _plateaued(records, free)
    assert not _plateaued(records[:-1], free)


def test_converged_is_the_kept_stages_verdict_not_the_last_stages(ds):
    """The derivative stage is cut off while its validation rollout still falls and is kept;
    the second stage, at a rate that only makes things worse, stops by its rule at once. The
    run is not converged (it was when `converged` was the last stage's verdict). The first
    stage alone, at a rate too small to move anything, ends on a plateau: converged (it was
    not, a stage without a rule never stopping by one)."""
    falling = m.Recipe(
        stages=(
            m.Stage("derivative", m.recipes.derivative_objective, 5, 100, patience=None),
            m.Stage("window 10", m.recipes.trajectory_objective, 10, 400, lr_scale=300.0),
        ),
        context=C,
        eval_every=20,
        batch_size=16,
        lr=1e-2,
    )
    _, res = falling.fit(_node(), ds, key=jax.random.key(2))
    first = [r["val_loss"] for r in res.history if r["stage"] == "derivative"]
    assert first[-1] < 0.9 * first[-3], first  # still falling when its budget ran out
    assert res.history[-1]["converged"] and res.best_stage == "derivative"
    assert not res.converged
    flat = dataclasses.replace(falling, stages=falling.stages[:1], lr=1e-9)
    _, res = flat.fit(_node(), ds, key=jax.random.key(2))
    assert not res.history[-1]["converged"] and res.converged


def test_a_plateau_stage_lowers_its_rate_before_it_converges(ds):
    """A stage with `lr_decay` trains on the plateau schedule: its records show the rate
    lowered `lr_decays` times before the rule stops it, and the run is converged only by the
    plateau at the smallest rate. Its description (the run key's input) names the schedule;
    a cosine stage's description is what it was before the schedule existed."""
    plateau = m.Recipe(
        stages=(
            m.Stage(
                "derivative",
                m.recipes.derivative_objective,
                5,
                4000,
                patience=2,
                lr_decay=0.1,
                lr_decays=2,
            ),
        ),
        context=C,
        eval_every=20,
        batch_size=16,
        lr=1e-2,
    )
    _, res = plateau.fit(_node(), ds, key=jax.random.key(2))
    factors = [r["lr_factor"] for r in res.history]
    np.testing.assert_allclose(sorted(set(factors), reverse=True), [1.0, 0.1, 0.01], rtol=1e-6)
    assert res.converged and res.history[-1]["converged"] and res.steps_run < 4000
    assert [r["converged"] for r in res.history].count(True) == 1
    (stage,) = plateau.describe()["stages"]
    assert (stage["lr_decay"], stage["lr_decays"]) == (0.1, 2)
    cosine = dataclasses.replace(plateau.stages[0], lr_decay=None)
    (described,) = dataclasses.replace(plateau, stages=(cosine,)).describe()["stages"]
    assert "lr_decay" not in described and "lr_decays" not in described


def test_recipe_result_bookkeeping(ds):
    model, res = _two_stage(0.3).fit(_node(), ds, key=jax.random.key(2))
    assert res.steps_run == sum(
        max(r["step"] for r in res.history if r["stage"] == s) for s in ("derivative", "window 10")
    )
    assert res.train_seconds >= 0 and res.compile_seconds >= 0
    assert np.isfinite(res.val_rollout_nmse)
    assert {r["stage"] for r in res.history} == {"derivative", "window 10"}


def test_recipe_fit_members_equals_each_member_alone(ds):
    """Three seeds, each with its own data and base learning rate, trained as one ensemble
    (the study's seeds on an accelerator) through every stage: the same parameters, validation
    losses, stopping and stage choice as three separate `Recipe.fit` calls. Dropping the
    per-member data or rates, or sharing the best-parameter bookkeeping, fails it."""
    recipe = _two_stage(0.3)
    datasets = [ds] + [
        d.make_dataset(
            ds.system,
            key=jax.random.key(k),
            n_train=8,
            n_val=4,
            n_test=3,
            dt=0.1,
            t_train=5.0,
            t_end=10.0,
            relative_noise=0.01,
        )
        for k in (1, 2)
    ]
    keys = [jax.random.key(20 + j) for j in range(3)]
    lrs = [1e-2, 3e-3, 1e-2]
    with jax.enable_x64(True):
        alone = [
            dataclasses.replace(recipe, lr=lr).fit(
                _node(j), datasets[j], key=keys[j], precision="float64"
            )
            for j, lr in enumerate(lrs)
        ]
        for strategy in ("map", "vmap"):
            members, results = recipe.fit_members(
                [_node(j) for j in range(3)],
                datasets,
                keys=keys,
                lrs=lrs,
                precision="float64",
                strategy=strategy,
            )
            for (model, res), member, r in zip(alone, members, results):
                for a, b in zip(
                    jax.tree.leaves(nnx.state(model, nnx.Param)),
                    jax.tree.leaves(nnx.state(member, nnx.Param)),
                ):
                    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-7, atol=1e-10)
                assert r.val_rollout_nmse == pytest.approx(res.val_rollout_nmse, rel=1e-7)
                assert (r.steps_run, r.converged, r.best_stage) == (
                    res.steps_run,
                    res.converged,
                    res.best_stage,
                )
    # the members differ (their own data, seeds and rates)
    finals = [r.val_rollout_nmse for _, r in alone]
    assert len(set(finals)) == 3


def test_every_model_has_a_recipe_of_its_kind():
    ode = m.NeuralODE(6, width=8, depth=1, rngs=nnx.Rngs(0)).recipe(50, budget=1000)
    assert [s.name for s in ode.stages] == ["derivative", "window 10", "window 40", "whole window"]
    assert ode.stages[-1].window is None
    # every stage holds its final rate for up to twice its patience, and stops only there
    for recipe in (ode, m.LSTM(6, hidden=8, rngs=nnx.Rngs(0)).recipe(200, budget=1000)):
        for s in recipe.stages:
            every = min(s.eval_every or recipe.eval_every, s.steps)
            cap = max(s.steps, s.patience * every)
            assert s.patience and s.hold == min(2 * s.patience * every, cap), s
            assert s.hold >= s.patience * every  # room for the rule to fire
    lstm = m.LSTM(6, hidden=8, rngs=nnx.Rngs(0)).recipe(200, budget=1000)
    assert [s.name for s in lstm.stages] == ["window 61", "window 121", "whole window"]
    latent = m.OscillatorModel(6, k=2, rngs=nnx.Rngs(0)).recipe(50, budget=1000)
    assert "derivative" not in [s.name for s in latent.stages]  # its state is not observed


def test_the_recipe_trains_a_neural_ode_to_an_absolute_accuracy(ds):
    """From random weights on noisy data, the default ODE recipe at a small budget forecasts the
    held-out trajectories far better than the untrained model and the straight line."""
    model = _node()
    recipe = model.recipe(ds.n_train_steps, budget=1500, context=C, eval_every=100, lr=1e-2)
    model, res = recipe.fit(model, ds, key=jax.random.key(4))
    test = jnp.asarray(ds.test)
    pred = jax.vmap(lambda c: model.forecast(c, 20))(test[:, :C])
    true = np.asarray(test[:, C : C + 20])
    var = true.reshape(-1, 6).var(0)
    nmse = float(np.mean((np.asarray(pred) - true) ** 2 / var))
    line = np.asarray(test[:, C - 1 : C]) + (
        np.asarray(test[:, C - 1] - test[:, C - 2])[:, None] * np.arange(1, 21)[None, :, None]
    )
    line_nmse = float(np.mean((line - true) ** 2 / var))
    print(f"recipe NeuralODE: nmse {nmse:.2e} (straight line {line_nmse:.2e}), {res.best_stage}")
    assert nmse < 2e-2 and nmse < 0.01 * line_nmse
