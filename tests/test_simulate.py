"""`dynamics.simulate`: accuracy against SciPy, batching, failures, transformations.

The systems and the shared solve come from `test_systems` (the same instances,
so that both modules hit one compiled solver per system).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BATCH, N_TIMES, SYSTEMS, TIGHT, random_system, solve
from scipy.integrate import solve_ivp

import dynamics as d
from dynamics import _simulate


# ---------------------------------------------------------- against SciPy
@pytest.mark.parametrize("name", SYSTEMS)
def test_matches_scipy_dop853(name, getkey):
    """Every system, random parameters: simulate agrees with solve_ivp(DOP853) at
    rtol=atol=1e-12."""
    system = random_system(name)
    y0 = system.sample_initial_states(getkey(), BATCH)
    if system.second_order:  # start with some motion everywhere (Huygens samples start at rest)
        y0 = y0 + 0.1 * np.random.default_rng(0).normal(size=y0.shape)
    ts, ys = solve(system, y0, 20.0)
    field = jax.jit(lambda y: system.vector_field(0.0, y))

    def f(t, y):
        return np.asarray(field(y))

    for i in range(3):
        ref = solve_ivp(
            f,
            (0.0, float(ts[-1])),
            np.asarray(y0[i]),
            method="DOP853",
            t_eval=np.asarray(ts),
            rtol=1e-12,
            atol=1e-12,
        )
        assert ref.success, ref.message
        scale = max(1.0, float(np.abs(ref.y).max()))
        err = float(np.abs(np.asarray(ys[i]) - ref.y.T).max())
        assert err <= 1e-7 * scale, (name, i, err, scale)


# ---------------------------------------------------------------- batching
def test_batched_equals_one_at_a_time(getkey):
    system = random_system("CoupledPendulums")
    dim = system.state_dim
    y0 = system.sample_initial_states(getkey(), 6).reshape(2, 3, dim)
    ts, ys = solve(system, y0, 20.0)
    assert ys.shape == (2, 3, N_TIMES, dim)
    for i in range(2):
        for j in range(3):
            _, one = solve(system, y0[i, j], 20.0)
            assert one.shape == (N_TIMES, dim)
            np.testing.assert_allclose(ys[i, j], one, rtol=1e-10, atol=1e-12)
    # the first saved state is the initial state
    np.testing.assert_array_equal(ys[..., 0, :], y0)


def test_time_origin_and_input_types(getkey):
    """The solve starts at ts[0]; autonomous systems only see elapsed time; lists are accepted."""
    system = random_system("CoupledPendulums")
    y0 = system.sample_initial_states(getkey(), BATCH)
    ts, ys = solve(system, y0, 20.0)
    shifted = d.simulate(system, np.asarray(y0).tolist(), (ts + 5.0).tolist(), **TIGHT)
    np.testing.assert_allclose(shifted, ys, rtol=0, atol=1e-8)  # another step sequence


def test_num_steps_counts_work(getkey):
    system = random_system("CoupledPendulums")
    y0 = system.sample_initial_states(getkey(), BATCH)
    ts = jnp.linspace(0.0, 20.0, N_TIMES)
    tight = _simulate.num_steps(system, y0, ts, **TIGHT)
    loose = _simulate.num_steps(system, y0, ts, solver="dopri8", rtol=1e-6, atol=1e-6)
    assert tight.shape == loose.shape == (BATCH,)
    assert np.issubdtype(tight.dtype, np.integer)
    assert np.all(loose > 0) and np.all(tight > loose)


# ---------------------------------------------------------------- failures
_BLOW_UP = d.HamiltonianSystem(lambda q, p: 0.5 * jnp.sum(p**2) - 0.25 * jnp.sum(q**4), 1)
"""`q'' = q^3`: from `(1, 1)` the solution blows up in finite time (t < 1)."""


def test_failed_solve_raises_simulation_error():
    ts = jnp.linspace(0.0, 5.0, 11)
    y0 = jnp.array([[1.0, 1.0], [0.1, 0.0], [1.0, 1.0]])  # the middle one is a harmless oscillation
    with pytest.raises(d.SimulationError, match=r"2 of 3 trajectories.*max_steps=1000") as info:
        d.simulate(_BLOW_UP, y0, ts, max_steps=1000)
    assert "flat index 0" in str(info.value)
    assert isinstance(info.value, RuntimeError)


@pytest.mark.slow
def test_failed_solve_under_jit_is_non_finite():
    """Under a transformation no error can be raised; the failed trajectory is non-finite
    instead."""
    ts = jnp.linspace(0.0, 5.0, 11)
    y0 = jnp.array([[1.0, 1.0], [0.1, 0.0], [1.0, 1.0]])
    ys = jax.jit(lambda y: d.simulate(_BLOW_UP, y, ts, max_steps=1000))(y0)
    assert not bool(jnp.all(jnp.isfinite(ys[0])))
    assert not bool(jnp.all(jnp.isfinite(ys[2])))
    assert bool(jnp.all(jnp.isfinite(ys[1])))


# -------------------------------------------------------- transformations
@pytest.mark.slow
def test_gradient_with_respect_to_parameters_matches_exact_solution(getkey):
    """Reverse-mode gradients through simulate equal those through the closed-form solution."""
    system = random_system("HarmonicChain")
    y0 = system.sample_initial_states(getkey(), 2)
    ts = jnp.linspace(0.0, 10.0, 21)

    def loss(sys, trajectory):
        return jnp.mean(trajectory(sys) ** 2)

    g_sim = eqx.filter_grad(loss)(system, lambda s: d.simulate(s, y0, ts, **TIGHT))
    g_exact = eqx.filter_grad(loss)(system, lambda s: s.exact_solution(y0, ts))
    np.testing.assert_allclose(g_sim.omega, g_exact.omega, rtol=1e-6, atol=1e-9)
    # only the symmetric part is meaningful: the coupling is a symmetric matrix, and the two
    # paths split d/d(kappa_ij + kappa_ji) differently between the two entries
    sym = lambda g: g + g.T  # noqa: E731
    np.testing.assert_allclose(sym(g_sim.coupling), sym(g_exact.coupling), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_forward_mode_jacobian_matches_exact_solution(getkey):
    system = random_system("HarmonicChain")
    y0 = system.sample_initial_states(getkey(), 1)[0]
    ts = jnp.linspace(0.0, 10.0, 21)
    jac_sim = jax.jacfwd(
        lambda y: d.simulate(system, y, ts, adjoint=diffrax.ForwardMode(), **TIGHT)[-1]
    )(y0)
    jac_exact = jax.jacfwd(lambda y: system.exact_solution(y, ts)[-1])(y0)
    np.testing.assert_allclose(jac_sim, jac_exact, rtol=1e-7, atol=1e-9)


def test_non_finite_field_at_the_start_is_refused_at_once():
    """A field that is NaN at the initial state fails before the solver spends its step budget."""
    system = d.HamiltonianSystem(lambda q, p: jnp.sum(p**2) / 2 + jnp.sum(jnp.log(q)), 1)
    with pytest.raises(d.SimulationError, match="non-finite .* initial state"):
        d.simulate(system, jnp.array([0.0, 1.0]), jnp.linspace(0.0, 1.0, 5))
