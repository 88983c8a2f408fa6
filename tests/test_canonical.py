"""Canonical coordinates: the systems' `to_canonical` / `from_canonical`, and the HNNs that
learn and forecast in them while being scored in the observed `(q, q')`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dynamics as d
import models as m
from experiments.extrapolation import save_model
from experiments.presets import PRESETS
from experiments.specs import ModelSpec

DP = d.DoublePendulum(m1=1.3, m2=0.7, l1=1.1, l2=0.8)
#: the clocks without damping, escapement or beam friction: conservative, `H = energy`
CLOCKS = d.HuygensClocks(omega=[1.0, 1.1], gamma=0.0, mu=0.0, beam_gamma=0.0, mass_ratio=0.2)
WIDTH = 32
STEPS = 500


def _states(system, key, shape):
    y = system.sample_initial_states(key, int(np.prod(shape)), scale=3.0)
    if isinstance(system, d.HuygensClocks):  # give the beam some motion too
        n = system.n_oscillators
        y = y.at[:, n].set(0.1).at[:, -1].set(-0.2)
    return y.reshape(*shape, system.state_dim)


def _pushed_hamiltonian_field(system, hamiltonian, y):
    """`D phi^{-1}(z) J grad H(z)` at `z = phi(y)`: a canonical Hamiltonian field seen in `y`."""
    z = system.to_canonical(y)
    dh = jax.grad(hamiltonian)(z)
    k = system.state_dim // 2
    return jax.jvp(system.from_canonical, (z,), (jnp.concatenate([dh[k:], -dh[:k]]),))[1]


# --------------------------------------------------------------------------- the transforms
@pytest.mark.parametrize("system", [DP, CLOCKS], ids=["double", "huygens"])
def test_transform_inverts_batched_jitted_and_vmapped(system, getkey):
    """`from_canonical(to_canonical(y)) = y` (and the other way round) on leading axes
    `(2, 3)`, the same under `jit` and under `vmap` of single states."""
    y = _states(system, getkey(), (2, 3))
    z = system.to_canonical(y)
    assert z.shape == y.shape
    np.testing.assert_allclose(system.from_canonical(z), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(system.to_canonical(system.from_canonical(z)), z, atol=1e-12)
    jitted = jax.jit(lambda s, yy: s.to_canonical(yy))(system, y)  # the system as an argument
    np.testing.assert_allclose(jitted, z, rtol=1e-13, atol=1e-13)
    flat = y.reshape(-1, system.state_dim)
    mapped = jax.vmap(system.to_canonical)(flat)
    np.testing.assert_allclose(mapped, z.reshape(flat.shape), rtol=1e-13, atol=1e-13)
    back = jax.jit(jax.vmap(system.from_canonical))(mapped)
    np.testing.assert_allclose(back, flat, rtol=1e-12, atol=1e-12)
    assert not np.allclose(z[..., system.state_dim // 2 :], y[..., system.state_dim // 2 :])


@pytest.mark.parametrize("system", [DP, CLOCKS], ids=["double", "huygens"])
def test_true_canonical_hamiltonian_generates_the_vector_field(system, getkey):
    """With `H(z) = E(phi^{-1}(z))` (kinetic plus potential energy in canonical coordinates),
    `J grad H` mapped back to `(q, q')` is the system's own vector field: the transform is
    the canonical one, so an HNN in `z` can represent the dynamics exactly."""
    ys = _states(system, getkey(), (6,))

    def true_h(z):
        return system.energy(system.from_canonical(z))

    pushed = jax.vmap(lambda y: _pushed_hamiltonian_field(system, true_h, y))(ys)
    truth = jax.vmap(lambda y: system.vector_field(0.0, y))(ys)
    np.testing.assert_allclose(pushed, truth, rtol=1e-10, atol=1e-10)
    # in the observed coordinates the same energy does not generate the flow
    naive = jax.vmap(lambda y: _pushed_hamiltonian_field(_Identity(system), system.energy, y))(ys)
    assert float(jnp.max(jnp.abs(naive - truth))) > 1e-2


@dataclasses.dataclass(frozen=True)
class _Identity:
    """A system's layout with the identity for its canonical transform."""

    system: d.AbstractSystem

    @property
    def state_dim(self):
        return self.system.state_dim

    def to_canonical(self, y):
        return y

    def from_canonical(self, z):
        return z


# --------------------------------------------------------------------------- the models
@pytest.fixture(scope="module")
def dp_data():
    return d.make_dataset(
        DP,
        key=jax.random.key(0),
        n_train=16,
        n_val=2,
        n_test=4,
        dt=0.05,
        t_train=2.0,
        t_end=4.0,
    )


def _fit(model, ds, steps=STEPS):
    model, _ = m.fit(
        model,
        ds,
        key=jax.random.key(1),
        steps=steps,
        lr=1e-2,
        batch_size=64,
        precision="float64",
        progress=False,
    )
    return model


def _hnn(**kw):
    return m.HNN(4, width=WIDTH, depth=2, objective="derivative", rngs=nnx.Rngs(0), **kw)


@pytest.fixture(scope="module")
def trained(dp_data):
    """An HNN trained (derivative regression) in canonical coordinates, and the same HNN
    trained on the raw `(q, q')` (the dataset's system hidden from it)."""
    canon = _fit(_hnn(), dp_data)
    raw = _fit(_hnn(), dataclasses.replace(dp_data, system=None))
    return canon, raw


def _field_nmse(model, ys):
    truth = jax.vmap(lambda y: DP.vector_field(0.0, y))(ys)
    pred = jax.vmap(model.observed_field)(ys)
    return float(jnp.mean((pred - truth) ** 2) / jnp.mean(truth**2))


def _batch_forecast(model, contexts, n_steps):
    """As `experiments.extrapolation.batch_forecast`: `jit` + `vmap` on `nnx.split`/`merge`."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ctx):
        return jax.vmap(lambda c: nnx.merge(graphdef, state).forecast(c, n_steps))(ctx)

    return run(state, jnp.asarray(contexts))


def test_prepare_adopts_the_systems_coordinates(dp_data):
    """`prepare` takes the transform from `dataset.system`; `mean`, `std` are those of `z`."""
    model = _hnn()
    assert model.coordinates is None
    model.prepare(dp_data)
    assert isinstance(model.coordinates, d.DoublePendulum)
    z = np.asarray(DP.to_canonical(jnp.asarray(dp_data.train))).reshape(-1, 4)
    np.testing.assert_allclose(model.mean[...], z.mean(0), rtol=1e-10)
    np.testing.assert_allclose(model.std[...], z.std(0), rtol=1e-10)
    y = jnp.asarray(dp_data.test[0, :5])
    np.testing.assert_allclose(model.to_observed(model.to_model(y)), y, rtol=1e-12)
    # a dataset without a system, or one whose (q, q') is canonical: the observed coordinates
    bare = _hnn()
    bare.prepare(dataclasses.replace(dp_data, system=None))
    assert bare.coordinates is None
    chain = d.HarmonicChain(omega=[1.0, 1.2], coupling=[[0.0, 0.1], [0.1, 0.0]])
    bare.prepare(dataclasses.replace(dp_data, system=chain))
    assert bare.coordinates is None
    with pytest.raises(ValueError, match="canonical coordinates of DoublePendulum"):
        model.prepare(dataclasses.replace(dp_data, system=chain))


def test_canonical_hnn_learns_what_the_raw_one_cannot(trained, dp_data):
    """At the same budget, the HNN in `z` fits the true field (in observed coordinates) far
    better than the HNN on raw `(q, q')`, whose `J grad H(y)` is divergence free where the
    true flow in `(q, q')` is not."""
    canon, raw = trained
    ys = jnp.asarray(dp_data.test[:, ::4].reshape(-1, 4))
    e_canon, e_raw = _field_nmse(canon, ys), _field_nmse(raw, ys)
    print(f"field nmse after {STEPS} steps: canonical {e_canon:.3g}, raw (q, q') {e_raw:.3g}")
    assert e_canon < 0.25 * e_raw
    assert e_canon < 0.05


def test_trained_hnn_forecasts_in_observed_coordinates(trained, dp_data):
    """The forecast is in `(q, q')`: its first state is the true next state to within a small
    error, it agrees with the learned flow in `z` mapped back, and its true energy drifts far
    less than an untrained HNN's."""
    canon, _ = trained
    ctx = jnp.asarray(dp_data.test[:, :3])
    n = 40
    fc = _batch_forecast(canon, ctx, n)
    assert fc.shape == (4, n, 4)
    np.testing.assert_allclose(fc[0], canon.forecast(ctx[0], n), rtol=1e-10, atol=1e-12)
    nxt = jnp.asarray(dp_data.test[:, 3])
    first_err = float(jnp.mean(jnp.max(jnp.abs(fc[:, 0] - nxt), axis=-1)))
    step = float(jnp.mean(jnp.max(jnp.abs(nxt - ctx[:, -1]), axis=-1)))  # one step's change
    print(f"first forecast state: mean max error {first_err:.3g}, one-step change {step:.3g}")
    assert first_err < 0.15 * step
    zs = canon.rollout(DP.to_canonical(ctx[0, -1]), n)
    np.testing.assert_allclose(fc[0], DP.from_canonical(zs), rtol=1e-10, atol=1e-12)

    # differentiable as the attribution study uses it: only the last context state matters
    jac = jax.jit(jax.jacfwd(lambda c: canon.forecast(c, 3)))(ctx[0])
    assert jac.shape == (3, 4, 3, 4) and bool(jnp.all(jnp.isfinite(jac)))
    assert float(jnp.max(jnp.abs(jac[:, :, :-1]))) == 0.0
    assert float(jnp.max(jnp.abs(jac[:, :, -1]))) > 0.1

    untrained = _hnn()
    untrained.prepare(dp_data)
    e0 = DP.energy(ctx[:, -1])[:, None]

    def drift(forecast):
        return float(jnp.mean(jnp.abs(DP.energy(forecast) - e0)))

    d_trained, d_untrained = drift(fc), drift(_batch_forecast(untrained, ctx, n))
    print(f"true energy drift over {n} steps: trained {d_trained:.3g}, untrained {d_untrained:.3g}")
    assert d_trained < 0.1 * d_untrained


def test_stored_variables_reload_to_the_same_forecast(trained, dp_data, tmp_path):
    """As the study stores and reloads a model (`save_model`; rebuilt by its `ModelSpec` with
    the same constructor arguments, `nnx.merge` of the stored leaves, no `prepare`): the
    reloaded model forecasts identically, in the same coordinates."""
    canon, _ = trained
    path = tmp_path / "model.npz"
    save_model(canon, path)
    spec = ModelSpec(m.HNN, kwargs={"width": WIDTH, "depth": 2, "objective": "derivative"})
    fresh = spec.build(DP, None, None, rngs=nnx.Rngs(7))
    assert isinstance(fresh.coordinates, d.DoublePendulum)
    graphdef, state = nnx.split(fresh)
    leaves, treedef = jax.tree.flatten(state)
    assert treedef == jax.tree.structure(nnx.state(canon))
    with np.load(path) as z:
        assert len([k for k in z.files if k.startswith("v")]) == len(leaves)
        stored = [jnp.asarray(z[f"v{i}"]) for i in range(len(leaves))]
        dt = float(z["dt"])
    loaded = nnx.merge(graphdef, jax.tree.unflatten(treedef, stored))
    loaded.dt = dt
    ctx = jnp.asarray(dp_data.test[:, :3])
    np.testing.assert_array_equal(_batch_forecast(loaded, ctx, 20), _batch_forecast(canon, ctx, 20))


def test_identity_coordinates_leave_the_model_unchanged(dp_data):
    """On a system whose `(q, q')` is canonical nothing is stored and the field is used as is."""
    chain = d.HarmonicChain(omega=[1.0, 1.2], coupling=[[0.0, 0.1], [0.1, 0.0]])
    model = m.HNN(4, width=8, depth=1, coordinates=chain, rngs=nnx.Rngs(0))
    plain = m.HNN(4, width=8, depth=1, rngs=nnx.Rngs(0))
    assert model.coordinates is None
    assert jax.tree.structure(nnx.state(model)) == jax.tree.structure(nnx.state(plain))
    spec = ModelSpec(m.HNN, kwargs={"width": 8, "depth": 1})
    preset = PRESETS["tiny"]
    assert "coordinates" not in spec.describe(chain, None, preset)
    assert spec.describe(DP, None, preset)["coordinates"] == "canonical"
    model.dt = plain.dt = 0.05
    y = jnp.asarray(dp_data.test[0, :2])
    np.testing.assert_array_equal(model.forecast(y, 5), plain.forecast(y, 5))
    np.testing.assert_allclose(model.observed_field(y[0]), model.field(y[0]), rtol=1e-14)


def test_dissipative_hnn_works_in_canonical_coordinates(dp_data):
    """`DissipativeHNN` maps the same way: statistics of `z`, forecasts in `(q, q')` starting
    at the context, `objective="trajectory"` too, and a short fit lowers its loss."""
    model = m.DissipativeHNN(4, width=16, depth=1, window=4, rngs=nnx.Rngs(0))
    model.prepare(dp_data)
    assert isinstance(model.coordinates, d.DoublePendulum)
    windows = jnp.asarray(dp_data.train[:4, :4])
    before = float(model.loss(windows))
    z_loss = m.ODEModel.trajectory_loss(model, DP.to_canonical(windows))
    np.testing.assert_allclose(before, z_loss, rtol=1e-12)
    ctx = jnp.asarray(dp_data.test[:2, :1])
    fc = _batch_forecast(model, ctx, 3)
    np.testing.assert_allclose(
        fc[0], DP.from_canonical(model.rollout(DP.to_canonical(ctx[0, 0]), 3)), rtol=1e-12
    )
    fitted = _fit(model, dp_data, steps=30)
    assert float(fitted.loss(windows)) < before


def test_clocks_on_their_beam_forecast_through_the_transform(getkey):
    """On the Huygens clocks (given as `coordinates=`) the forecast is `phi^{-1}` of the flow
    of `phi(y_C)`, and the loss that of the windows in `z`, for both HNNs."""
    y = _states(CLOCKS, getkey(), (2, 5))
    for cls in (m.HNN, m.DissipativeHNN):
        model = cls(6, width=8, depth=1, window=5, coordinates=CLOCKS, rngs=nnx.Rngs(0))
        model.dt = 0.1
        fc = model.forecast(y[0, :2], 4)
        np.testing.assert_allclose(
            fc, CLOCKS.from_canonical(model.rollout(CLOCKS.to_canonical(y[0, 1]), 4)), rtol=1e-12
        )
        np.testing.assert_allclose(
            model.loss(y), m.ODEModel.trajectory_loss(model, CLOCKS.to_canonical(y)), rtol=1e-12
        )
    with pytest.raises(ValueError, match="state_dim"):
        m.HNN(4, coordinates=CLOCKS, rngs=nnx.Rngs(0))
