"""Tests of models.probes: probes, dissection, hidden-state PCA and LSTM fixed points."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
from flax import nnx

import dynamics
from models import LSTM, probes as P
from models.probes._ridge import _ridge_predict_all  # unit test of the solver itself

# --------------------------------------------------------------------------- probes


def _planted(n=600, h=32, k=2, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.standard_normal((n, k))
    nuisance = rng.standard_normal((n, 3))  # other directions the hidden states also carry
    w = rng.standard_normal((k, h))
    v = rng.standard_normal((3, h))
    hidden = target @ w + nuisance @ v + noise * rng.standard_normal((n, h))
    return hidden, target, rng


def test_probe_recovers_planted_quantity(getkey):
    hidden, target, _ = _planted()
    res = P.ridge_probe(hidden, target, key=getkey())
    assert res.r2.shape == (2,)
    assert np.all(res.r2 > 0.9)
    assert res.predictions.shape == target.shape
    assert res.alphas.shape == (5, 2)
    # a vector target gives one R^2; a fixed alpha works too
    one = P.ridge_probe(hidden, target[:, 0], alpha=1e-3, n_folds=4, key=1)
    assert one.r2.shape == (1,) and one.r2[0] > 0.9


def test_probe_finds_nothing_in_noise(getkey):
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((400, 32))
    target = rng.standard_normal((400, 2))
    res = P.ridge_probe(hidden, target, key=getkey())
    assert np.all(res.r2 < 0.1)


def test_probe_matches_closed_form_ridge():
    # one fold's prediction equals the textbook ridge solution on standardised features
    rng = np.random.default_rng(2)
    xtr, xte = rng.standard_normal((50, 6)) * 3 + 1, rng.standard_normal((7, 6)) * 3 + 1
    ytr = rng.standard_normal((50, 1))
    lam = 0.1
    mu, sd = xtr.mean(0), xtr.std(0)
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    w = np.linalg.solve(a.T @ a + 50 * lam * np.eye(6), a.T @ (ytr - ytr.mean()))
    got = _ridge_predict_all(xtr, ytr, xte, [lam])[0]
    np.testing.assert_allclose(got, b @ w + ytr.mean(), rtol=1e-10, atol=1e-12)


def test_grouped_folds_keep_groups_together():
    hidden, target, _ = _planted(n=300)
    groups = np.repeat(np.arange(10), 30)
    res = P.ridge_probe(hidden, target, groups=groups, key=3)
    for g in range(10):
        assert np.unique(res.folds[groups == g]).size == 1
    assert np.all(res.r2 > 0.9)
    with pytest.raises(ValueError, match="distinct groups"):
        P.ridge_probe(hidden, target, groups=np.repeat(np.arange(3), 100), key=3)


def test_probe_with_control_and_report(getkey):
    hidden, target, rng = _planted(n=500)
    control = rng.standard_normal((500, 16))
    key = getkey()
    c = P.probe_with_control(hidden, target, control_hidden=control, key=key)
    assert c.r2_mean > 0.9 and c.control_r2_mean < 0.1 and c.selectivity > 0.8
    np.testing.assert_array_equal(c.probe.folds, c.control.folds)  # paired folds
    rows = P.probe_report(
        hidden, {"a": target[:, 0], "ab": target}, control_hidden=control, key=key
    )
    assert [r["quantity"] for r in rows] == ["a", "ab"]
    assert rows[1]["n_components"] == 2
    assert rows[1]["r2"] == pytest.approx(c.r2_mean)
    assert rows[1]["control_r2"] == pytest.approx(c.control_r2_mean)
    no_control = P.probe_report(hidden, {"a": target[:, 0]}, key=key)
    assert np.isnan(no_control[0]["control_r2"])


@pytest.mark.ill_typed  # unpaired rows, a 1-D hidden
def test_probe_validation():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="n_folds"):
        P.ridge_probe(x[:4], np.zeros(4), n_folds=5)
    with pytest.raises(ValueError, match="paired"):
        P.ridge_probe(x, np.zeros(9))
    with pytest.raises(ValueError, match=r"shape \(N, H\)"):
        P.ridge_probe(np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        P.ridge_probe(np.full((10, 3), np.nan), np.zeros(10))
    with pytest.raises(ValueError, match="alpha"):
        P.ridge_probe(x, np.zeros(10), alpha=-1.0)
    with pytest.raises(ValueError, match="n_folds"):
        P.ridge_probe(x, np.zeros(10), n_folds=1)
    with pytest.raises(ValueError, match="rows"):
        P.probe_with_control(x, np.zeros(10), control_hidden=np.zeros((9, 3)))
    with pytest.raises(ValueError, match="mapping"):
        P.probe_report(x, {})


def test_random_features_control(tiny_lstm):
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((3, 20, 2)))
    h = P.random_features_control(tiny_lstm, xs, key=jax.random.key(5))
    assert h.shape == (3, 20, 8)
    h0 = P.random_features_control(tiny_lstm, xs[0], key=jax.random.key(5))
    np.testing.assert_allclose(h[0], h0, rtol=1e-12)
    assert not np.allclose(h0, tiny_lstm.hidden_states(xs[0]))  # different weights
    with pytest.raises(ValueError, match="xs"):
        P.random_features_control(tiny_lstm, xs[..., :1], key=0)


# --------------------------------------------------------------------------- targets


def test_physical_targets_harmonic_chain():
    omega = jnp.array([1.0, 1.5, 2.0])
    sys = dynamics.HarmonicChain(omega, dynamics.chain_coupling(3, 0.3))
    y = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 6))
    t = P.physical_targets(sys, y)
    np.testing.assert_allclose(t["energy"], np.asarray(sys.energy(jnp.asarray(y))), rtol=1e-12)
    for i in range(3):
        np.testing.assert_array_equal(t[f"q_{i + 1}"], y[:, i])
        np.testing.assert_array_equal(t[f"p_{i + 1}"], y[:, 3 + i])
        phi = np.arctan2(-y[:, 3 + i] / float(omega[i]), y[:, i])
        np.testing.assert_allclose(
            t[f"phase_{i + 1}"], np.stack([np.cos(phi), np.sin(phi)], -1), rtol=1e-12
        )
    assert "angle_1" not in t
    # a free oscillator's phase advances as omega t
    single = dynamics.HarmonicChain(jnp.array([2.0]), jnp.zeros((1, 1)))
    ts = np.linspace(0.0, 1.0, 5)
    traj = np.stack([0.3 * np.cos(2.0 * ts), -0.6 * np.sin(2.0 * ts)], axis=-1)
    ph = P.physical_targets(single, traj)["phase_1"]
    np.testing.assert_allclose(np.unwrap(np.arctan2(ph[:, 1], ph[:, 0])), 2.0 * ts, atol=1e-10)
    with pytest.raises(ValueError, match="states"):
        P.physical_targets(sys, y[:, :5])


def test_physical_targets_other_systems():
    rng = np.random.default_rng(0)
    kur = dynamics.Kuramoto(jnp.array([1.0, 1.2]), dynamics.all_to_all_coupling(2, 0.5))
    t = P.physical_targets(kur, rng.uniform(-3, 3, (10, 2)))
    assert set(t) == {"order_parameter", "phase_1", "phase_2"}
    hc = dynamics.HuygensClocks(jnp.array([1.0, 1.2]))
    y = rng.uniform(-0.3, 0.3, (10, 6))
    t = P.physical_targets(hc, y)
    assert {"energy", "q_1", "p_2", "angle_1", "beam_x", "beam_v"} <= set(t)
    d = t["phase_2"], t["phase_1"]
    diff = np.arctan2(d[0][:, 1], d[0][:, 0]) - np.arctan2(d[1][:, 1], d[1][:, 0])
    np.testing.assert_allclose(
        np.cos(diff), np.cos(np.asarray(hc.phase_difference(jnp.asarray(y)))), atol=1e-12
    )


class _ChainWithDrift(dynamics.AbstractSystem):
    """A user's system with a non-plain layout, declared: `y = (q_1, q_2, q_3, s, p_1, p_2, p_3)`,
    a harmonic chain plus a decaying drift coordinate `s' = -s` that belongs to no oscillator."""

    omega: jax.Array = eqx.field(converter=jnp.asarray, default=(1.0, 1.5, 2.0))
    kappa: float = 0.3

    @property
    def n_oscillators(self):
        return 3

    @property
    def state_dim(self):
        return 7

    def vector_field(self, t, y):
        q, s, p = y[:3], y[3], y[4:]
        lap = jnp.array([q[0] - q[1], 2 * q[1] - q[0] - q[2], q[2] - q[1]])
        return jnp.concatenate([p, -s[None], -(self.omega**2) * q - self.kappa * lap])

    def energy(self, y):
        q, p = y[..., :3], y[..., 4:]
        return 0.5 * jnp.sum(p**2 + jnp.broadcast_to(self.omega**2, q.shape) * q**2, axis=-1)

    def coupling_graph(self):
        return jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def sample_initial_states(self, key, n, *, scale=1.0):
        return jax.random.uniform(key, (n, 7), minval=-scale, maxval=scale)

    def oscillator_groups(self):
        return ((0, 4), (1, 5), (2, 6))

    def split_state(self, y):
        return y[..., :3], y[..., 4:], {"drift": y[..., 3]}

    def natural_frequencies(self):
        return 2.0 * self.omega  # deliberately not `omega`: the targets must use this


class _Undeclared(_ChainWithDrift):
    """The same non-plain state, but the layout is not declared (the base-class defaults)."""

    oscillator_groups = dynamics.AbstractSystem.oscillator_groups
    split_state = dynamics.AbstractSystem.split_state
    natural_frequencies = dynamics.AbstractSystem.natural_frequencies


def test_physical_targets_follow_a_declared_user_layout():
    sys = _ChainWithDrift()
    y = np.random.default_rng(3).uniform(-1, 1, (40, 7))
    t = P.physical_targets(sys, y)
    assert set(t) == {"energy", "drift"} | {
        f"{k}_{i}" for k in ("phase", "q", "p") for i in (1, 2, 3)
    }
    np.testing.assert_array_equal(t["drift"], y[:, 3])  # the extras entry, by its name
    np.testing.assert_allclose(t["energy"], np.asarray(sys.energy(jnp.asarray(y))), rtol=1e-12)
    for i in range(3):
        np.testing.assert_array_equal(t[f"q_{i + 1}"], y[:, i])
        # after the drift, not y[:, 3 + i]
        np.testing.assert_array_equal(t[f"p_{i + 1}"], y[:, 4 + i])
        # natural_frequencies()
        phi = np.arctan2(-y[:, 4 + i] / (2.0 * float(sys.omega[i])), y[:, i])
        np.testing.assert_allclose(
            t[f"phase_{i + 1}"], np.stack([np.cos(phi), np.sin(phi)], -1), rtol=1e-12
        )
    c = P.physical_concepts(sys, y)
    phi = np.arctan2(-y[:, 4:] / (2.0 * np.asarray(sys.omega)), y[:, :3])
    np.testing.assert_array_equal(
        c["in_step"], np.abs(np.angle(np.exp(1j * (phi[:, 0] - phi[:, 1])))) < np.pi / 8
    )


def test_an_undeclared_non_plain_layout_raises_instead_of_guessing():
    sys = _Undeclared()
    y = np.zeros((5, 7))
    with pytest.raises(ValueError, match="split_state"):
        P.physical_targets(sys, y)
    with pytest.raises(ValueError, match="split_state"):
        P.physical_concepts(sys, y)


def test_huygens_targets_come_from_the_declared_layout(monkeypatch):
    """The beam enters through `split_state`'s extras, the phases through
    `natural_frequencies()`."""
    hc = dynamics.HuygensClocks(jnp.array([1.0, 1.2]))
    y = np.random.default_rng(1).uniform(-0.3, 0.3, (30, 6))  # (theta_1, theta_2, x, w_1, w_2, v)
    t = P.physical_targets(hc, y)
    np.testing.assert_array_equal(t["beam_x"], y[:, 2])
    np.testing.assert_array_equal(t["beam_v"], y[:, 5])
    np.testing.assert_array_equal(t["p_2"], y[:, 4])
    # another declared frequency moves the phases: they are read from natural_frequencies()
    monkeypatch.setattr(
        dynamics.HuygensClocks, "natural_frequencies", lambda self: jnp.array([0.5, 3.0])
    )
    t2 = P.physical_targets(hc, y)
    for i, w in enumerate((0.5, 3.0)):
        phi = np.arctan2(-y[:, 3 + i] / w, y[:, i])
        np.testing.assert_allclose(
            t2[f"phase_{i + 1}"], np.stack([np.cos(phi), np.sin(phi)], -1), rtol=1e-12
        )
    # ... and extras are taken generically: a renamed beam is a renamed target
    monkeypatch.setattr(
        dynamics.HuygensClocks,
        "split_state",
        lambda self, y: (y[..., :2], y[..., 3:5], {"cart": y[..., 2], "cart_speed": y[..., 5]}),
    )
    t3 = P.physical_targets(hc, y)
    assert {"cart", "cart_speed"} <= set(t3) and "beam_x" not in t3
    np.testing.assert_array_equal(t3["cart_speed"], y[:, 5])


def test_physical_concepts():
    sys = dynamics.HarmonicChain(jnp.array([1.0, 1.3]), dynamics.chain_coupling(2, 0.2))
    y = np.random.default_rng(0).uniform(-0.5, 0.5, (400, 4))
    c = P.physical_concepts(sys, y)
    sectors = np.stack([c[f"phase_sector_{k}"] for k in range(1, 5)])
    np.testing.assert_array_equal(sectors.sum(0), 1)  # a partition
    assert c["high_energy"].mean() == pytest.approx(0.25, abs=0.01)
    phi = np.arctan2(-y[:, 2:] / np.array([1.0, 1.3]), y[:, :2])
    d = np.angle(np.exp(1j * (phi[:, 0] - phi[:, 1])))
    np.testing.assert_array_equal(c["in_step"], np.abs(d) < np.pi / 8)
    assert not np.any(c["in_step"] & c["anti_phase"])


# --------------------------------------------------------------------------- dissection


def test_dissection_finds_planted_unit():
    rng = np.random.default_rng(0)
    n = 2000
    concept = np.zeros(n, bool)
    concept[rng.choice(n, 20, replace=False)] = True  # 1% of samples: the top-1% mask
    other = rng.random(n) < 0.3
    acts = rng.standard_normal((n, 6)) * 0.1
    acts[:, 2] = np.where(concept, 1.0 + rng.random(n), rng.random(n) * 0.5)
    res = P.dissect(acts, {"planted": concept, "other": other})  # N >= 1000: quantile 0.99
    assert res.iou.shape == (6, 2)
    assert res.best_concept[2] == "planted"
    assert res.iou[2, 0] == pytest.approx(1.0)
    assert res.iou[2, 1] < 0.1
    assert np.all(np.delete(res.iou[:, 0], 2) < 0.2)
    assert res.table[0]["unit"] == 2 and res.table[0]["iou"] == pytest.approx(1.0)
    assert res.iou_chance[2, 0] < 0.05
    # matched thresholds: a unit firing on a 30% concept scores 1 only when its mask is that big
    acts[:, 4] = other + 0.01 * rng.random(n)
    assert P.dissect(acts, {"other": other}).iou[4, 0] < 0.1
    m = P.dissect(acts, {"planted": concept, "other": other}, quantile="matched")
    assert m.iou[4, 1] == pytest.approx(1.0) and m.iou[2, 0] == pytest.approx(1.0)


@pytest.mark.ill_typed  # unpaired rows, a float concept
def test_dissection_validation():
    with pytest.raises(ValueError, match="shape"):
        P.dissect(np.zeros((10, 2)), {"a": np.zeros(9, bool)})
    with pytest.raises(ValueError, match="quantile"):
        P.dissect(np.zeros((10, 2)), {"a": np.zeros(10, bool)}, quantile=1.5)
    with pytest.raises(ValueError, match="boolean"):
        P.dissect(np.zeros((10, 2)), {"a": np.full(10, 0.5)})


# --------------------------------------------------------------------------- PCA


def test_pca_fit():
    rng = np.random.default_rng(0)
    x = (
        rng.standard_normal((200, 3))
        @ np.diag([3.0, 1.0, 0.1])
        @ scipy.linalg.qr(rng.standard_normal((3, 3)))[0]
    )
    pca = P.pca_fit(x, n_components=2)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(
        pca.explained_variance, np.var(P.pca_transform(pca, x), axis=0, ddof=1)
    )
    assert pca.explained_variance_ratio.sum() > 0.99


def test_manifold_departure(unchecked):
    rng = np.random.default_rng(0)
    h, k = 20, 3
    basis = scipy.linalg.qr(rng.standard_normal((h, h)))[0]
    on, off = basis[:, :k], basis[:, k:]

    def states(n, off_scale, shift=0.0):
        return (rng.standard_normal((n, k)) + shift) @ on.T + off_scale * rng.standard_normal(
            (n, h - k)
        ) @ off.T

    inside = states(1000, 0.01)
    same = P.manifold_departure(inside, states(500, 0.01), n_components=k, key=0)
    assert 0.8 < same.residual_ratio < 1.25 and 0.8 < same.distance_ratio < 1.25
    beyond = P.manifold_departure(inside, states(500, 0.5), n_components=k, key=0)
    assert beyond.residual_ratio > 100
    along = P.manifold_departure(inside, states(500, 0.01, shift=4.0), n_components=k, key=0)
    assert along.distance_ratio > 2 and along.residual_ratio < 1.5
    assert beyond.residuals_beyond.shape == (500,)
    assert beyond.explained_variance_ratio > 0.99
    with pytest.raises(ValueError, match="n_components"):
        P.manifold_departure(inside, inside, n_components=h)
    with unchecked(), pytest.raises(ValueError, match="same number of units"):
        P.manifold_departure(inside, inside[:, :5], n_components=2)


# --------------------------------------------------------------------------- fixed points


@pytest.fixture(scope="module")
def tiny_lstm():
    lstm = LSTM(2, hidden=8, rngs=nnx.Rngs(0))
    lstm.dt = 0.1
    # the initial readout is zero, which makes every z a fixed point; a random readout
    # makes the fixed points isolated
    lstm.w_out.set_value(jnp.asarray(np.random.default_rng(1).standard_normal((8, 2)) * 0.3))
    lstm.b_out.set_value(jnp.asarray([0.05, -0.02]))
    return lstm


def test_lstm_fixed_points_are_fixed_and_spectra_match_finite_differences(tiny_lstm):
    lstm = tiny_lstm
    fp = P.lstm_fixed_points(lstm, key=jax.random.key(0), n_starts=8, steps=200)
    assert fp.points.shape[0] >= 1
    amap = P.lstm_autonomous_map(lstm)
    assert amap.dim == 2 + 2 * 8
    for x, lam, r in zip(fp.points, fp.eigenvalues, fp.residuals):
        assert np.linalg.norm(np.asarray(amap.step(x)) - x) < 1e-6 and r < 1e-6
        eps = 1e-6
        fd = np.stack(
            [
                (np.asarray(amap.step(x + eps * e)) - np.asarray(amap.step(x - eps * e)))
                / (2 * eps)
                for e in np.eye(amap.dim)
            ],
            axis=1,
        )
        lam_fd = np.linalg.eigvals(fd)
        cost = np.abs(lam[:, None] - lam_fd[None, :])
        i, j = scipy.optimize.linear_sum_assignment(cost)
        assert cost[i, j].max() < 1e-5
    np.testing.assert_allclose(fp.frequencies, np.abs(np.angle(fp.eigenvalues)) / 0.1)
    np.testing.assert_allclose(fp.decay_rates, np.log(np.abs(fp.eigenvalues)) / 0.1)
    np.testing.assert_allclose(fp.states, fp.points[:, :2])  # mean 0, std 1
    # starts from a forecast find the same kind of points
    fp2 = P.lstm_fixed_points(lstm, key=1, n_starts=4, context=np.zeros((5, 2)), n_forecast=50)
    assert fp2.n_starts == 4 and np.all(fp2.residuals < 1e-6)


def test_lstm_fixed_points_validation(tiny_lstm, unchecked):
    lstm = nnx.clone(tiny_lstm)
    lstm.dt = None
    with pytest.raises(ValueError, match="dt"):
        P.lstm_fixed_points(lstm, key=0)
    with pytest.raises(ValueError, match="starts"):
        P.lstm_fixed_points(tiny_lstm, key=0, starts=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="context"):
        P.lstm_fixed_points(tiny_lstm, key=0, context=np.zeros((3, 5)))
    with unchecked(), pytest.raises(ValueError, match="lstm"):
        P.lstm_fixed_points(object(), key=0)


def test_compare_to_normal_modes_recovers_rotation_frequencies():
    dt = 0.05
    omegas = np.array([0.7, 1.9, 3.3])
    blocks = []
    for w, r in zip(omegas, [0.999, 0.99, 1.0]):
        c, s = np.cos(w * dt), np.sin(w * dt)
        blocks.append(r * np.array([[c, -s], [s, c]]))
    blocks.append(np.array([[0.5]]))  # a decaying real direction
    m = scipy.linalg.block_diag(*blocks)
    q = np.random.default_rng(0).standard_normal(m.shape)
    lam = np.linalg.eigvals(q @ m @ np.linalg.inv(q))  # the same map in other coordinates
    cmp = P.compare_to_normal_modes(lam, omegas[::-1], dt)
    np.testing.assert_allclose(cmp.model_freqs, omegas[::-1], rtol=1e-9)
    assert np.all(cmp.relative_error < 1e-9)
    np.testing.assert_allclose(cmp.decay_rates, np.log([1.0, 0.99, 0.999]) / dt, atol=1e-9)
    # fast-decaying candidates can be excluded
    cmp2 = P.compare_to_normal_modes(lam, np.array([0.7]), dt, min_modulus=0.995)
    assert cmp2.model_freqs[0] == pytest.approx(0.7)
    real_only = P.compare_to_normal_modes(np.array([0.5, 0.9]), np.array([1.0]), dt)
    assert np.isnan(real_only.model_freqs[0])
    with pytest.raises(ValueError, match="dt"):
        P.compare_to_normal_modes(lam, omegas, 0.0)


def test_compare_to_normal_modes_harmonic_chain_propagator():
    # the exact one-step map of a harmonic chain has eigenvalues exp(+-i omega_k dt)
    sys = dynamics.HarmonicChain(jnp.array([1.0, 1.4, 0.8]), dynamics.chain_coupling(3, 0.5))
    a = np.asarray(sys.stiffness())
    gen = np.block([[np.zeros((3, 3)), np.eye(3)], [-a, np.zeros((3, 3))]])
    dt = 0.1
    lam = np.linalg.eigvals(scipy.linalg.expm(gen * dt))
    true, _ = sys.normal_modes()
    cmp = P.compare_to_normal_modes(lam, np.asarray(true), dt)
    assert np.all(cmp.relative_error < 1e-10)
    np.testing.assert_allclose(cmp.decay_rates, 0.0, atol=1e-10)
