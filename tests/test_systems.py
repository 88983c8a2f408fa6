"""The systems' physics: vector fields, energies, exact solutions and known behaviour.

Every vector field is checked against an independent implementation of the
equations in DESIGN.md section 4 (plain NumPy loops, a numerical solve of the
bordered linear system, autodiff Euler-Lagrange), every conservative system is
checked to conserve its energy, and the dissipative and phase systems are
checked against textbook behaviour (the Van der Pol limit cycle, the Kuramoto
transition, Huygens' anti-phase synchronisation).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (  # noqa: F401
    BATCH,
    CONSERVATIVE,
    N_TIMES,
    SYSTEMS,
    TIGHT,
    _random_coupling,
    random_system,
    solve,
)

import dynamics as d


# -------------------------------------------------------------- vector fields
def _loop_field(system, y):
    """The right-hand sides of DESIGN.md section 4, written out with explicit loops."""
    y = np.asarray(y)
    if isinstance(system, d.Kuramoto):
        om, k = np.asarray(system.omega), np.asarray(system.coupling)
        n = om.shape[0]
        return np.array(
            [om[i] + sum(k[i, j] * np.sin(y[j] - y[i]) for j in range(n)) for i in range(n)]
        )
    if isinstance(system, d.HuygensClocks):
        n = system.n_oscillators
        th, x, w, u = y[:n], y[n], y[n + 1 : 2 * n + 1], y[2 * n + 1]
        om = np.asarray(system.omega)
        gamma, mu, theta0, bo, bg, m = (
            float(getattr(system, a))
            for a in ("gamma", "mu", "theta0", "beam_omega", "beam_gamma", "mass_ratio")
        )
        # unknowns (theta_1'', ..., theta_n'', x''): the bordered linear system, solved numerically
        a = np.eye(n + 1)
        a[:n, n] = np.cos(th)
        a[n, :n] = m * np.cos(th)
        rhs = np.empty(n + 1)
        for i in range(n):
            rhs[i] = (
                -(om[i] ** 2) * np.sin(th[i])
                - gamma * w[i]
                + mu * (1 - th[i] ** 2 / theta0**2) * w[i]
            )
        rhs[n] = m * sum(w[i] ** 2 * np.sin(th[i]) for i in range(n)) - bo**2 * x - bg * u
        acc = np.linalg.solve(a, rhs)
        return np.concatenate([w, [u], acc])
    om, k = np.asarray(system.omega), np.asarray(system.coupling)
    n = om.shape[0]
    q, p = y[:n], y[n:]
    acc = np.empty(n)
    for i in range(n):
        restoring = np.sin(q[i]) if isinstance(system, d.CoupledPendulums) else q[i]
        acc[i] = -(om[i] ** 2) * restoring - sum(k[i, j] * (q[i] - q[j]) for j in range(n))
        if isinstance(system, d.CoupledVanDerPol):
            acc[i] += float(system.mu) * (1 - q[i] ** 2) * p[i]
    return np.concatenate([p, acc])


@pytest.mark.parametrize("seed", [0, 1])
def test_vector_fields_match_the_equations(seed, getkey):
    rng = np.random.default_rng(seed)
    n = 4
    om, k = rng.uniform(0.5, 2.0, n), _random_coupling(rng, n)
    systems = [
        d.HarmonicChain(om, k),
        d.CoupledPendulums(om, k),
        d.CoupledVanDerPol(om, rng.uniform(0.1, 3.0), k),
        d.Kuramoto(rng.normal(size=n), k),
        d.HuygensClocks(
            rng.uniform(0.8, 1.2, 3),
            gamma=rng.uniform(0, 0.1),
            mu=rng.uniform(0, 0.5),
            theta0=rng.uniform(0.1, 0.5),
            beam_omega=rng.uniform(0.5, 2),
            beam_gamma=rng.uniform(0, 1),
            mass_ratio=rng.uniform(0.01, 0.3),
        ),
    ]
    for system in systems:
        ys = system.sample_initial_states(getkey(), 5, scale=2.0)
        ys = ys + 0.3 * rng.normal(size=ys.shape)  # nonzero velocities for Huygens too
        got = jax.jit(jax.vmap(lambda y: system.vector_field(0.0, y)))(ys)
        for y, f in zip(ys, got):
            np.testing.assert_allclose(
                f, _loop_field(system, y), rtol=1e-12, atol=1e-12, err_msg=type(system).__name__
            )


def test_hamiltonian_vector_field_is_canonical():
    system = d.HamiltonianSystem(lambda q, p: 0.5 * jnp.sum(p**2) + 0.25 * jnp.sum(q**4), 3)
    y = jnp.asarray(np.random.default_rng(0).normal(size=6))
    q, p = y[:3], y[3:]
    np.testing.assert_allclose(
        system.vector_field(0.0, y), jnp.concatenate([p, -(q**3)]), rtol=1e-14
    )
    assert system.state_dim == 6 and system.n_oscillators == 3


@pytest.mark.parametrize("seed", range(3))
def test_double_pendulum_is_euler_lagrange_of_its_lagrangian(seed):
    """`vector_field` equals `qdd = (d2L/dqd2)^-1 (dL/dq - d2L/dqd dq qd)` computed by autodiff."""
    rng = np.random.default_rng(seed)
    m1, m2, l1, l2 = rng.uniform(0.3, 3.0, 4)
    system = d.DoublePendulum(m1, m2, l1, l2, g=rng.uniform(1.0, 20.0))
    lag = system.lagrangian

    def accelerations(y):
        q, qd = y[:2], y[2:]
        mass = jax.hessian(lag, argnums=1)(q, qd)
        dl_dq = jax.grad(lag, argnums=0)(q, qd)
        mixed = jax.jacfwd(jax.grad(lag, argnums=1), argnums=0)(q, qd)  # d/dq of dL/dqd
        return jnp.linalg.solve(mass, dl_dq - mixed @ qd)

    ys = jnp.asarray(rng.uniform(-3.0, 3.0, (16, 4)))
    got = jax.jit(jax.vmap(lambda y: system.vector_field(0.0, y)))(ys)
    want = jax.jit(jax.vmap(accelerations))(ys)
    np.testing.assert_allclose(got[:, :2], ys[:, 2:], rtol=0, atol=0)
    np.testing.assert_allclose(got[:, 2:], want, rtol=1e-10, atol=1e-10)
    # and the energy is T - V for that Lagrangian
    e = system.energy(ys)
    kinetic = system.kinetic(ys)
    lagr = jax.vmap(lambda y: lag(y[:2], y[2:]))(ys)
    np.testing.assert_allclose(e, 2 * kinetic - lagr, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------- exact solution
def test_harmonic_chain_matches_its_exact_solution(getkey):
    """simulate against the normal-mode solution over 20 periods of the slowest mode."""
    system = random_system("HarmonicChain")
    nu, _ = system.normal_modes()
    t_end = 20 * 2 * np.pi / float(nu.min())
    y0 = system.sample_initial_states(getkey(), BATCH)
    ts, sim = solve(system, y0, t_end)
    exact = system.exact_solution(y0, ts)
    assert sim.shape == exact.shape == (BATCH, N_TIMES, system.state_dim)
    err = jnp.linalg.norm(sim - exact, axis=-1).max(axis=-1)
    scale = jnp.linalg.norm(exact, axis=-1).max(axis=-1)
    assert bool(jnp.all(err / scale <= 1e-7)), err / scale


def test_exact_solution_solves_the_ode(getkey):
    """The normal-mode formula starts at y0 and satisfies dy/dt = f(y) (checked with a JVP in t)."""
    system = random_system("HarmonicChain")
    y0 = system.sample_initial_states(getkey(), 1)[0]
    ts = jnp.linspace(0.0, 30.0, 61)
    ys, dys = jax.jvp(lambda t: system.exact_solution(y0, t), (ts,), (jnp.ones_like(ts),))
    np.testing.assert_allclose(ys[0], y0, rtol=1e-13, atol=1e-13)
    f = jax.vmap(lambda y: system.vector_field(0.0, y))(ys)
    np.testing.assert_allclose(dys, f, rtol=1e-10, atol=1e-10)
    # modes: A V = V diag(nu^2)
    nu, vecs = system.normal_modes()
    np.testing.assert_allclose(system.stiffness() @ vecs, vecs * nu[None, :] ** 2, atol=1e-12)


# ------------------------------------------------------------------- energy
def _energy_above_ground(system, ys):
    ground = system.energy(jnp.zeros(system.state_dim))
    return system.energy(ys) - ground


@pytest.mark.parametrize("name", CONSERVATIVE)
def test_energy_is_conserved(name, getkey):
    """Relative drift of the energy (above the ground state) <= 1e-7 over t = 100."""
    system = random_system(name)
    assert system.conservative or name == "UndampedHuygensClocks"  # conservative only undamped
    y0 = system.sample_initial_states(getkey(), BATCH)
    if name == "UndampedHuygensClocks":  # let the beam move too
        y0 = y0.at[:, -1].set(0.1)
    _, ys = solve(system, y0, 100.0)
    e = _energy_above_ground(system, ys)
    assert e.shape == (BATCH, N_TIMES)
    assert bool(jnp.all(e[:, 0] > 0))
    rel = jnp.abs(e - e[:, :1]) / e[:, :1]
    assert float(rel.max()) <= 1e-7, float(rel.max())
    # energy is batched over leading axes exactly like a per-state evaluation
    one = jax.vmap(jax.vmap(lambda y: system.energy(y)))(ys)
    np.testing.assert_allclose(system.energy(ys), one, rtol=1e-14)


def test_damped_clocks_lose_energy(getkey):
    """Guard against the conservation test being vacuous: friction must drain the energy."""
    system = d.HuygensClocks([1.0, 1.1], gamma=0.2, mu=0.0, beam_gamma=0.5)
    y0 = system.sample_initial_states(getkey(), BATCH)
    _, ys = solve(system, y0, 50.0)
    e = system.energy(ys)
    assert bool(jnp.all(jnp.diff(e, axis=-1) <= 1e-12))
    assert bool(jnp.all(e[:, -1] < 0.5 * e[:, 0]))


# --------------------------------------------- Hamiltonian system, by example
def test_hamiltonian_system_reproduces_coupled_pendulums(getkey):
    pend, ham = random_system("CoupledPendulums"), random_system("HamiltonianSystem")
    ys = pend.sample_initial_states(getkey(), BATCH)
    np.testing.assert_allclose(
        jax.vmap(lambda y: ham.vector_field(0.0, y))(ys),
        jax.vmap(lambda y: pend.vector_field(0.0, y))(ys),
        rtol=1e-12,
        atol=1e-12,
    )
    _, a = solve(pend, ys, 20.0)
    _, b = solve(ham, ys, 20.0)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    graph = np.asarray(pend.coupling_graph())
    np.testing.assert_array_equal(graph, (np.asarray(pend.coupling) > 0).astype(float))
    assert 0 < graph.sum() < graph.size - len(graph)  # neither empty nor complete
    # (jitted: the same code, but eager autodiff Hessians cost seconds of op-by-op compiles)
    np.testing.assert_array_equal(eqx.filter_jit(lambda s: s.coupling_graph())(ham), graph)
    np.testing.assert_allclose(ham.energy(a), pend.energy(a), rtol=1e-14)


def test_coupling_graphs():
    k = d.ring_coupling(5, 0.2)
    k[0, 2] = k[2, 0] = 0.0
    for system in (d.HarmonicChain(np.ones(5), k), d.Kuramoto(np.zeros(5), k)):
        g = np.asarray(system.coupling_graph())
        np.testing.assert_array_equal(g, (k > 0).astype(float))
    clocks = d.HuygensClocks(np.ones(3))
    np.testing.assert_array_equal(clocks.coupling_graph(), np.ones((3, 3)) - np.eye(3))
    np.testing.assert_array_equal(d.DoublePendulum().coupling_graph(), [[0, 1], [1, 0]])
    # an uncoupled Hamiltonian has an empty graph
    free = d.HamiltonianSystem(lambda q, p: 0.5 * jnp.sum(p**2 + q**2), 3)
    np.testing.assert_array_equal(
        eqx.filter_jit(lambda s: s.coupling_graph())(free), np.zeros((3, 3))
    )


# ------------------------------------------------------- initial conditions
@pytest.mark.parametrize(
    "system",
    [
        d.HarmonicChain([1.0, 2.0], d.chain_coupling(2, 0.1)),
        d.CoupledPendulums([1.0, 2.0], d.chain_coupling(2, 0.1)),
        d.CoupledVanDerPol([1.0, 2.0], 1.0, d.chain_coupling(2, 0.1)),
        d.HuygensClocks([1.0, 1.0]),
        d.DoublePendulum(),
        d.HamiltonianSystem(lambda q, p: 0.5 * jnp.sum(p**2 + q**2), 2),
        d.Kuramoto([1.0, -1.0, 0.5], d.all_to_all_coupling(3, 0.1)),
    ],
    ids=lambda s: type(s).__name__,
)
def test_sample_initial_states(system, getkey):
    key = getkey()
    y = system.sample_initial_states(key, 64)
    assert y.shape == (64, system.state_dim)
    assert bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(y, system.sample_initial_states(key, 64))  # deterministic
    assert not np.array_equal(y, system.sample_initial_states(getkey(), 64))
    y_ood = system.sample_initial_states(getkey(), 64, scale=2.0)
    if system.has_energy:
        e = _energy_above_ground(system, y)
        e_ood = _energy_above_ground(system, y_ood)
        assert float(e_ood.mean()) > 1.5 * float(e.mean())
    else:
        assert float(jnp.abs(y_ood).mean()) > 1.5 * float(jnp.abs(y).mean())


@pytest.mark.parametrize("amplitude", [0.5, 2.0])
def test_double_pendulum_amplitude_sets_the_initial_range(amplitude, getkey):
    """`|theta_i|, |w_i| <= amplitude * scale`, filling the range; a static field, in
    `parameters()` (so in the hash and the dataset metadata), not a pytree leaf."""
    system = d.DoublePendulum(amplitude=amplitude)
    for scale in (1.0, 2.0):
        y = np.asarray(system.sample_initial_states(getkey(), 2000, scale=scale))
        assert np.abs(y).max() <= amplitude * scale
        assert np.abs(y).max() > 0.98 * amplitude * scale
    assert system.parameters()["amplitude"] == amplitude
    assert d.DoublePendulum(**system.parameters()).amplitude == amplitude
    assert len(jax.tree.leaves(system)) == 5  # m1, m2, l1, l2, g
    f = jax.jit(lambda s, y: s.vector_field(0.0, y))
    np.testing.assert_allclose(f(system, jnp.ones(4)), system.vector_field(0.0, jnp.ones(4)))


@pytest.mark.parametrize("amplitude", [0.0, -1.0, float("nan"), float("inf"), "big"])
def test_double_pendulum_amplitude_must_be_positive(amplitude):
    with pytest.raises(ValueError, match="amplitude"):
        d.DoublePendulum(amplitude=amplitude)


def test_sample_initial_states_under_jit(getkey):
    """Sampling works inside `jax.jit` (n static), and gives the same states as eagerly."""
    system = random_system("HuygensClocks")
    key = getkey()
    jitted = jax.jit(lambda k: system.sample_initial_states(k, 3, scale=1.5))(key)
    np.testing.assert_allclose(jitted, system.sample_initial_states(key, 3, scale=1.5), rtol=1e-15)


def test_systems_are_pytrees_through_jit_and_grad(getkey):
    """A system passes through jit and is differentiable with respect to its parameters."""
    system = d.CoupledPendulums([1.0, 1.5, 2.0], d.chain_coupling(3, 0.2))
    y = system.sample_initial_states(getkey(), 1)[0]
    f = jax.jit(lambda s, y: s.vector_field(0.0, y))
    np.testing.assert_allclose(f(system, y), system.vector_field(0.0, y), rtol=1e-15)
    grads = eqx.filter_grad(lambda s: s.energy(y))(system)
    q = y[:3]
    # dE/d omega_i = 2 omega_i (1 - cos q_i)
    np.testing.assert_allclose(grads.omega, 2 * system.omega * (1 - jnp.cos(q)), rtol=1e-12)


# ----------------------------------------------------------- known physics
@pytest.mark.parametrize("mu", [0.2, 1.0, 3.0])
def test_van_der_pol_limit_cycle_amplitude_is_two(mu):
    """From inside and from outside, a single Van der Pol oscillator settles on amplitude ~2.

    Three uncoupled oscillators (`coupling = 0`) are three independent single
    oscillators; solving them as one system reuses the compiled solver of the
    coupled `random_system("CoupledVanDerPol")`.
    """
    single = d.CoupledVanDerPol([1.0], mu, [[0.0]])
    system = d.CoupledVanDerPol(np.ones(3), mu, np.zeros((3, 3)))
    q0 = np.array(
        [
            [0.1, 4.0, 1.0],
            [0.01, 3.0, -2.5],
            [-0.5, 0.0, 2.0],
            [1.0, 2.0, 3.0],
            [-3.0, 0.2, 0.0],
            [0.0, 0.0, 0.3],
        ]
    )
    p0 = np.roll(q0, 1, axis=0)[:BATCH]
    y0 = np.concatenate([q0[:BATCH], p0], axis=-1)
    for y in y0[:2]:  # the uncoupled system is the single oscillator, component by component
        f3 = np.asarray(system.vector_field(0.0, y))
        for i in range(3):
            np.testing.assert_allclose(
                single.vector_field(0.0, y[[i, 3 + i]]), f3[[i, 3 + i]], rtol=1e-15
            )
    _, ys = solve(system, y0, 300.0, rtol=1e-8, atol=1e-8)  # settle on the cycle
    _, ys = solve(system, ys[:, -1], 20.0, rtol=1e-8, atol=1e-8)  # then sample it every 0.2
    amplitude = jnp.abs(ys[..., :3]).max(axis=1)
    np.testing.assert_allclose(amplitude, 2.0, rtol=0.03)


def test_kuramoto_synchronises_under_strong_coupling_only(getkey):
    n = 20
    omega = np.random.default_rng(0).normal(0.0, 1.0, n)  # spread ~1
    strong = d.Kuramoto(omega, d.all_to_all_coupling(n, 10.0 / n))  # K n = 10 >> spread
    weak = d.Kuramoto(omega, d.all_to_all_coupling(n, 0.2 / n))  # K n = 0.2 << spread
    y0 = strong.sample_initial_states(getkey(), BATCH, scale=2.0)  # phases all round the circle
    ts, ys = solve(strong, y0, 100.0, rtol=1e-8, atol=1e-8)
    r_strong = strong.order_parameter(ys)
    r_weak = weak.order_parameter(solve(weak, y0, 100.0, rtol=1e-8, atol=1e-8)[1])
    late = ts >= 50.0
    assert r_strong.shape == (BATCH, N_TIMES)
    assert float(r_strong[:, late].min()) > 0.9
    assert float(r_weak[:, late].mean()) < 0.5
    assert bool(jnp.all((r_weak >= 0) & (r_weak <= 1 + 1e-12)))


def test_huygens_clocks_fall_into_anti_phase(getkey):
    """Two identical clocks started out of step end up swinging in anti-phase (phase difference
    ±pi).

    `sample_initial_states` starts the clocks at rest, so its phase differences
    are exactly 0 or pi; here its amplitudes are kept and each clock is given a
    random phase, so that the starts are genuinely out of step.
    """
    system = d.HuygensClocks([1.0, 1.0])
    n_states = BATCH
    amp = jnp.abs(system.sample_initial_states(getkey(), n_states)[:, :2])
    phase = jnp.asarray(np.random.default_rng(0).uniform(-np.pi, np.pi, (n_states, 2)))
    th, w = amp * jnp.cos(phase), -amp * jnp.sin(phase)  # (theta, -w/omega) at angle `phase`
    zeros = jnp.zeros((n_states, 1))
    y0 = jnp.concatenate([th, zeros, w, zeros], axis=-1)
    pd0 = jnp.abs(system.phase_difference(y0))
    assert float(pd0.min()) < np.pi / 2  # some starts are closer to in-phase than to anti-phase

    ts, ys = solve(system, y0, 1000.0)
    late = ts >= 900.0
    pd = jnp.abs(system.phase_difference(ys[:, late]))
    assert float(pd.min()) > np.pi - 0.05, pd.min(axis=-1)
    # the clocks are still running (the escapement sustains them), not stopped
    swing = jnp.abs(ys[:, late, :2]).max(axis=1)
    assert bool(jnp.all(swing > system.theta0)), swing
