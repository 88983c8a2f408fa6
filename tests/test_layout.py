"""The state layout every system declares: groups, (q, p, extras), frequencies, observables and
the canonical transformation, checked against independent constructions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamics as d

KAPPA3 = d.chain_coupling(3, 0.2)


def _systems():
    return {
        "harmonic": d.HarmonicChain(omega=[1.0, 1.2, 0.9], coupling=KAPPA3),
        "pendulums": d.CoupledPendulums(omega=[1.0, 1.2, 0.9], coupling=KAPPA3),
        "vdp": d.CoupledVanDerPol(omega=[1.0, 1.2, 0.9], mu=0.5, coupling=KAPPA3),
        "huygens": d.HuygensClocks(omega=[1.0, 1.01, 0.99]),
        "kuramoto": d.Kuramoto(omega=[0.3, -0.2, 0.1], coupling=KAPPA3),
        "double": d.DoublePendulum(m1=1.3, m2=0.7, l1=1.1, l2=0.8),
    }


@pytest.mark.parametrize("name", list(_systems()))
def test_groups_and_split_cover_the_state_once(name, getkey):
    """Every state index is in at most one oscillator group or in `extras`; `split_state`
    returns exactly the coordinates the groups name."""
    system = _systems()[name]
    y = system.sample_initial_states(getkey(), 5)
    groups = system.oscillator_groups()
    assert len(groups) == system.n_oscillators
    q, p, extras = system.split_state(y)
    assert q.shape == (5, system.n_oscillators)
    for i, g in enumerate(groups):
        np.testing.assert_array_equal(y[:, g[0]], q[:, i])
        if system.second_order:
            assert len(g) == 2
            np.testing.assert_array_equal(y[:, g[1]], p[:, i])
        else:
            assert p is None and len(g) == 1
    used = [i for g in groups for i in g]
    assert len(set(used)) == len(used)
    assert len(used) + len(extras) == system.state_dim
    # what is left over is what extras holds
    for arr in extras.values():
        assert arr.shape == (5,)
        assert any(np.array_equal(arr, y[:, j]) for j in set(range(system.state_dim)) - set(used))


def test_huygens_layout_leaves_the_beam_out():
    clocks = d.HuygensClocks(omega=[1.0, 1.02])
    assert clocks.oscillator_groups() == ((0, 3), (1, 4))
    y = jnp.arange(6.0)
    q, p, extras = clocks.split_state(y)
    np.testing.assert_array_equal(q, [0.0, 1.0])
    np.testing.assert_array_equal(p, [3.0, 4.0])
    assert float(extras["beam_x"]) == 2.0 and float(extras["beam_v"]) == 5.0


def test_natural_frequencies():
    s = _systems()
    np.testing.assert_allclose(s["pendulums"].natural_frequencies(), [1.0, 1.2, 0.9])
    np.testing.assert_allclose(s["kuramoto"].natural_frequencies(), [0.3, -0.2, 0.1])
    dp = s["double"]
    np.testing.assert_allclose(dp.natural_frequencies(), np.sqrt(9.8 / np.array([1.1, 0.8])))
    # the default (linearisation at rest) for a user's Hamiltonian: omega^2 + the coupling springs
    om, k = np.array([1.0, 1.5]), 0.3

    def h(q, p):
        return jnp.sum(p**2) / 2 + jnp.sum(om**2 * q**2) / 2 + k * (q[0] - q[1]) ** 2 / 2

    np.testing.assert_allclose(d.HamiltonianSystem(h, 2).natural_frequencies(), np.sqrt(om**2 + k))


def test_observables_name_what_each_system_has(getkey):
    s = _systems()
    y = s["huygens"].sample_initial_states(getkey(), 4)
    obs = s["huygens"].observables(y)
    assert set(obs) == {"energy", "phase_difference_2", "phase_difference_3"}
    two = d.HuygensClocks(omega=[1.0, 1.02])
    y2 = two.sample_initial_states(getkey(), 4)
    np.testing.assert_allclose(two.observables(y2)["phase_difference_2"], two.phase_difference(y2))
    theta = s["kuramoto"].sample_initial_states(getkey(), 4)
    assert set(s["kuramoto"].observables(theta)) == {"order_parameter"}
    np.testing.assert_allclose(
        s["harmonic"].observables(jnp.ones(6))["energy"], s["harmonic"].energy(jnp.ones(6))
    )
    assert [n for n, sy in s.items() if sy.conservative] == ["harmonic", "pendulums", "double"]
    assert [n for n, sy in s.items() if sy.angular] == [
        "pendulums",
        "huygens",
        "kuramoto",
        "double",
    ]


def _huygens_lagrangian(clocks, q, qdot):
    """`L` per unit pendulum mass and length, written out from the class docstring."""
    n = clocks.n_oscillators
    th, x, w, u = q[:n], q[n], qdot[:n], qdot[n]
    m = clocks.mass_ratio
    kinetic = jnp.sum(w**2) / 2 + jnp.sum(jnp.cos(th) * w) * u + u**2 / (2 * m)
    potential = jnp.sum(clocks.omega**2 * (1 - jnp.cos(th))) + clocks.beam_omega**2 * x**2 / (2 * m)
    return kinetic - potential


@pytest.mark.parametrize("name", ["double", "huygens"])
def test_canonical_momenta_are_dL_dqdot_and_invert(name, getkey):
    system = _systems()[name]
    if name == "double":
        lag = system.lagrangian
        nq = 2
    else:
        lag = lambda q, qd: _huygens_lagrangian(system, q, qd)  # noqa: E731
        nq = system.n_oscillators + 1
    y = system.sample_initial_states(getkey(), 6, scale=3.0)
    if name == "huygens":  # give the beam some motion too
        y = y.at[:, nq - 1].set(0.1).at[:, -1].set(-0.2)
    z = system.to_canonical(y)
    p_ref = jax.vmap(lambda yy: jax.grad(lag, argnums=1)(yy[:nq], yy[nq:]))(y)
    np.testing.assert_allclose(z[:, :nq], y[:, :nq])
    np.testing.assert_allclose(z[:, nq:], p_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(system.from_canonical(z), y, rtol=1e-12, atol=1e-12)


def test_canonical_flow_preserves_phase_volume(getkey):
    """Liouville: in `(q, p)` the conservative double pendulum's flow is divergence free; in
    `(q, q')` it is not (the reason the HNN must learn in canonical coordinates)."""
    dp = _systems()["double"]

    def canonical_field(z):
        y = dp.from_canonical(z)
        return jax.jvp(dp.to_canonical, (y,), (dp.vector_field(0.0, y),))[1]

    for y in dp.sample_initial_states(getkey(), 4, scale=4.0):
        z = dp.to_canonical(y)
        assert abs(float(jnp.trace(jax.jacfwd(canonical_field)(z)))) < 1e-10
        assert abs(float(jnp.trace(jax.jacfwd(lambda yy: dp.vector_field(0.0, yy))(y)))) > 1e-3


def test_identity_canonical_for_unit_masses(getkey):
    s = _systems()["pendulums"]
    y = s.sample_initial_states(getkey(), 3)
    np.testing.assert_array_equal(s.to_canonical(y), y)
    np.testing.assert_array_equal(s.from_canonical(y), y)


class _Odd(d.AbstractSystem):
    """A user's system with a non-plain layout (an extra coordinate) that declares nothing."""

    a: float = eqx.field(static=True, default=1.0)

    @property
    def n_oscillators(self):
        return 1

    @property
    def state_dim(self):
        return 3

    def vector_field(self, t, y):
        return jnp.stack([y[1], -y[0], -y[2]])

    def coupling_graph(self):
        return jnp.zeros((1, 1))

    def sample_initial_states(self, key, n, *, scale=1.0):
        return jax.random.normal(key, (n, 3)) * scale


def test_an_undeclared_non_plain_layout_is_refused_not_guessed():
    odd = _Odd()
    for method in ("oscillator_groups", "natural_frequencies"):
        with pytest.raises(NotImplementedError, match=f"override {method}"):
            getattr(odd, method)()
    with pytest.raises(NotImplementedError, match="override split_state"):
        odd.split_state(jnp.zeros(3))
