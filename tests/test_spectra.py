"""Tests of models.probes' linear spectra: DMD, the linearisation of a model at a rest state, and
the match against the true normal modes."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

import dynamics
import models
from models import probes as P
from models._common import integrate

OMEGA = np.array([1.0, 1.3, 1.7])
KAPPA = dynamics.chain_coupling(3, 0.3)


def _linear_flow(a, x0s, n, dt):
    """`x_{t+1} = expm(A dt) x_t` from each `x0` `(N, d)`: `(N, n + 1, d)`."""
    step = scipy.linalg.expm(np.asarray(a) * dt)
    out = [np.asarray(x0s, float)]
    for _ in range(n):
        out.append(out[-1] @ step.T)
    return np.stack(out, axis=1)


def _coupled_linear(damping=0.1):
    """Two coupled damped linear oscillators `q'' = -K q - gamma q'`, with their closed-form
    eigenvalues: `mu = -gamma/2 +- i sqrt(k - gamma^2/4)` for each eigenvalue `k` of `K`."""
    stiffness = np.array([[2.0, -0.5], [-0.5, 1.5]])
    a = np.block([[np.zeros((2, 2)), np.eye(2)], [-stiffness, -damping * np.eye(2)]])
    k = np.linalg.eigvalsh(stiffness)
    omega = np.sqrt(k - damping**2 / 4)
    return a, np.sort(omega)[::-1], -damping / 2


# --------------------------------------------------------------------------- dmd
def test_dmd_of_a_damped_oscillator_recovers_sigma_and_omega():
    sigma, omega, dt = -0.07, 2.3, 0.05
    a = np.array([[sigma, omega], [-omega, sigma]])  # eigenvalues sigma +- i omega
    traj = _linear_flow(a, [[1.0, 0.3]], 200, dt)[0]  # one (T, d) trajectory
    s = P.dmd(traj, dt=dt)
    assert s.dt == dt and s.eigenvalues.shape == (2,) and s.modes.shape == (2, 2)
    np.testing.assert_allclose(s.frequencies, [omega, omega], rtol=1e-8)
    np.testing.assert_allclose(s.decay_rates, [sigma, sigma], rtol=1e-8)
    np.testing.assert_allclose(s.eigenvalues, np.exp((sigma + np.array([1j, -1j]) * omega) * dt))
    np.testing.assert_allclose(s.oscillatory, [omega], rtol=1e-8)


def test_dmd_of_coupled_oscillators_pooled_over_trajectories():
    a, omega, sigma = _coupled_linear()
    dt = 0.1
    trajs = _linear_flow(a, np.random.default_rng(0).standard_normal((3, 4)), 40, dt)
    s = P.dmd(trajs, dt=dt, rank=4)
    np.testing.assert_allclose(s.oscillatory, omega, rtol=1e-8)
    np.testing.assert_allclose(s.decay_rates, sigma, rtol=1e-8, atol=1e-10)
    # the exact modes are eigenvectors of A's one-step map: expm(A dt) Phi = Phi Lambda
    step = scipy.linalg.expm(a * dt)
    np.testing.assert_allclose(step @ s.modes, s.modes * s.eigenvalues[None], atol=1e-9)
    # a truncated DMD of the same data: rank 2 keeps one pair, within [min, max] of the truth
    two = P.dmd(trajs, dt=dt, rank=2)
    assert two.eigenvalues.shape == (2,)
    cmp = P.match_normal_modes(s, omega)
    np.testing.assert_allclose(cmp.relative_error, 0, atol=1e-8)


def test_dmd_frequency_is_per_unit_time_not_per_step():
    """The same continuous dynamics sampled at two steps gives the same frequencies (dropping
    the `/ dt` would make them differ by the ratio of the steps)."""
    a, omega, _ = _coupled_linear()
    x0 = np.random.default_rng(1).standard_normal((2, 4))
    s1 = P.dmd(_linear_flow(a, x0, 60, 0.1), dt=0.1)
    s2 = P.dmd(_linear_flow(a, x0, 120, 0.05), dt=0.05)
    np.testing.assert_allclose(s1.oscillatory, omega, rtol=1e-8)
    np.testing.assert_allclose(s2.oscillatory, omega, rtol=1e-8)


@pytest.mark.ill_typed  # wrong shapes and types on purpose
def test_dmd_bad_input():
    good = np.random.default_rng(0).standard_normal((2, 10, 3))
    for bad, match in (
        (np.zeros(5), "shape"),
        (np.zeros((2, 1, 3)), "T >= 2"),
        (np.zeros((1, 2, 3, 4)), "shape"),
        (np.where(np.arange(60).reshape(2, 10, 3) == 7, np.nan, good), "NaN"),
        ("abc", "numeric"),
    ):
        with pytest.raises(ValueError, match=match):
            P.dmd(bad, dt=0.1)
    for dt in (0.0, -1.0, np.nan, "x"):
        with pytest.raises(ValueError, match="dt"):
            P.dmd(good, dt=dt)
    for rank in (0, 4, 2.5, True):
        with pytest.raises(ValueError, match="rank"):
            P.dmd(good, dt=0.1, rank=rank)
    # a singular snapshot matrix: one direction excited, rank 3 asked for
    line = np.outer(np.linspace(1, 2, 10), [1.0, 2.0, 3.0])[None]
    with pytest.raises(ValueError, match="numerical rank 1"):
        P.dmd(line, dt=0.1, rank=3)
    with pytest.raises(ValueError, match="all zero"):
        P.dmd(np.zeros((1, 5, 2)), dt=0.1)


# --------------------------------------------------------------------------- linearisation
class _LinearField(models.ODEModel):
    """An ODE model whose field is a given linear map `y' = A y`."""

    def __init__(self, a):
        super().__init__(a.shape[0])
        self.a = nnx.Param(jnp.asarray(a))

    def field(self, y):
        return self.a[...] @ y


def test_jacobian_spectrum_of_a_linear_field_is_its_eigenvalues():
    a, omega, sigma = _coupled_linear()
    model = _LinearField(a)
    s = P.linearisation_spectrum(model, np.zeros(4))
    assert s.dt is None
    lam = np.linalg.eigvals(a)
    np.testing.assert_allclose(np.sort_complex(s.eigenvalues), np.sort_complex(lam), atol=1e-12)
    np.testing.assert_allclose(s.oscillatory, omega, rtol=1e-12)
    np.testing.assert_allclose(s.decay_rates, sigma, rtol=1e-12)
    # a rest state away from 0 changes nothing for a linear field
    s2 = P.linearisation_spectrum(model, np.ones(4))
    np.testing.assert_allclose(s2.eigenvalues, s.eigenvalues, atol=1e-12)
    cmp = P.match_normal_modes(s, omega[::-1])
    np.testing.assert_allclose(cmp.model_freqs, omega[::-1], rtol=1e-12)
    np.testing.assert_allclose(cmp.decay_rates, sigma, rtol=1e-12)
    # fast-decaying directions can be ignored
    gone = P.match_normal_modes(s, omega, min_decay_rate=0.0)
    assert np.all(np.isnan(gone.relative_error))


def test_forecast_route_agrees_with_the_jacobian_route():
    """The DMD of an ODE model's own forecasts from contexts near the rest state equals the
    spectrum of its field's Jacobian (the RK4 map of step dt is `exp(J dt)` to O(dt^5))."""
    a, omega, sigma = _coupled_linear()
    model = _LinearField(a)
    model.dt = 0.1
    contexts = 1e-2 * np.random.default_rng(2).standard_normal((5, 3, 4))
    fc = P.forecast_spectrum(model, contexts, n_steps=40, rank=4)
    jac = P.linearisation_spectrum(model, np.zeros(4))
    assert fc.dt == 0.1
    np.testing.assert_allclose(fc.oscillatory, jac.oscillatory, rtol=1e-5)
    np.testing.assert_allclose(fc.decay_rates, jac.decay_rates, rtol=1e-3, atol=1e-5)


def test_non_ode_model_goes_through_its_forecasts(unchecked):
    """A model with only `forecast` (here an exact linear one-step map, not an `ODEModel`)
    gets the DMD of its forecasts; without contexts it is refused."""
    a, omega, sigma = _coupled_linear()
    step = jnp.asarray(scipy.linalg.expm(a * 0.1))
    rest = np.array([0.5, -0.5, 0.0, 0.0])

    class Stepper(nnx.Module):  # y_{t+1} = rest + M (y_t - rest): an equilibrium at `rest`
        def __init__(self):
            self.dt = 0.1
            self.m = nnx.Param(step)
            self.rest = nnx.Variable(jnp.asarray(rest))

        def forecast(self, context, n_steps):
            def body(y, _):
                y = self.rest[...] + self.m[...] @ (y - self.rest[...])
                return y, y

            return jax.lax.scan(body, context[-1], None, length=n_steps)[1]

    model = Stepper()
    ctx = rest + 0.1 * np.random.default_rng(3).standard_normal((4, 2, 4))
    s = P.linearisation_spectrum(model, rest, contexts=ctx, n_steps=30)
    assert s.dt == 0.1
    np.testing.assert_allclose(s.oscillatory, omega, rtol=1e-8)
    np.testing.assert_allclose(s.decay_rates, sigma, rtol=1e-8)
    with pytest.raises(ValueError, match="contexts"):
        P.linearisation_spectrum(model, np.zeros(4))
    with unchecked(), pytest.raises(ValueError, match="rest_state"):
        P.linearisation_spectrum(_LinearField(a), np.zeros(3))
    with unchecked(), pytest.raises(ValueError, match="NaN"):
        P.linearisation_spectrum(_LinearField(a), np.full(4, np.nan))
    with unchecked(), pytest.raises(ValueError, match="contexts"):
        P.forecast_spectrum(model, np.zeros((2, 4)), n_steps=3)
    with pytest.raises(ValueError, match="n_steps"):
        P.forecast_spectrum(model, ctx, n_steps=0)
    unfit = Stepper()
    unfit.dt = None
    with pytest.raises(ValueError, match="dt"):
        P.forecast_spectrum(unfit, ctx, n_steps=3)
    with unchecked(), pytest.raises(ValueError, match="Spectrum"):
        P.match_normal_modes(np.zeros(3), omega)
    with pytest.raises(ValueError, match="true_freqs"):
        P.match_normal_modes(s, np.array([-1.0]))


# --------------------------------------------------------------------------- on a real system
@pytest.fixture(scope="module")
def pendulum_data():
    """Noise-free CoupledPendulums trajectories (RK4 with 20 substeps: independent of the
    simulator's solver) as a minimal dataset, and the true normal modes: the square roots of
    the eigenvalues of `diag(omega^2) + L`, `L` the coupling's Laplacian."""
    system = dynamics.CoupledPendulums(OMEGA, KAPPA)
    dt, n = 0.1, 50
    y0 = jnp.asarray(system.sample_initial_states(jax.random.key(0), 8))
    train = jax.vmap(
        lambda y: jnp.concatenate(
            [y[None], integrate(lambda x: system.vector_field(0.0, x), y, n, dt, substeps=20)]
        )
    )(y0)
    lap = np.diag(KAPPA.sum(1)) - KAPPA
    modes = np.sqrt(np.linalg.eigvalsh(np.diag(OMEGA**2) + lap))
    return types.SimpleNamespace(train=np.asarray(train), dt=dt, system=system), modes


def test_fitted_oscillator_model_recovers_the_normal_modes_a_random_node_misses(pendulum_data):
    """The structured model identified from the data (its least-squares initialisation, a fit
    of the accelerations on its own features) has the true normal modes at rest within 1%; a
    NeuralODE at its random initialisation does not (so the bound can fail). The DMD of the
    data itself (a linear fit of large-amplitude, nonlinear trajectories) lands in between."""
    ds, modes = pendulum_data
    fitted = models.OscillatorModel(6, k=3, kind="pendulum", rngs=nnx.Rngs(0))
    fitted.prepare(ds)
    random = models.NeuralODE(6, width=16, rngs=nnx.Rngs(0))
    random.prepare(ds)
    errs = {}
    for name, model in (("fitted", fitted), ("random", random)):
        s = P.linearisation_spectrum(model, np.zeros(6))
        errs[name] = float(np.median(P.match_normal_modes(s, modes).relative_error))
    errs["dmd"] = float(
        np.median(P.match_normal_modes(P.dmd(ds.train, dt=ds.dt, rank=6), modes).relative_error)
    )
    print(errs)
    assert errs["fitted"] < 0.01
    assert errs["random"] > 0.05
    assert errs["dmd"] < 0.05
    # the forecast route on the fitted model agrees with its Jacobian
    fitted.dt = ds.dt
    ctx = 1e-3 * np.random.default_rng(0).standard_normal((6, 2, 6))
    fc = P.forecast_spectrum(fitted, ctx, n_steps=60, rank=6)
    jac = P.linearisation_spectrum(fitted, np.zeros(6))
    np.testing.assert_allclose(fc.oscillatory, jac.oscillatory, rtol=1e-4)


def test_canonical_and_latent_models_linearise_in_their_own_coordinates(pendulum_data):
    """An HNN's field is in canonical coordinates and an `OscillatorModel(k < n)`'s in its latent
    ones: the Jacobian is taken at `to_model(rest)`, of the field's own dimension."""
    ds, _ = pendulum_data
    hnn = models.HNN(6, width=8, rngs=nnx.Rngs(0))
    hnn.prepare(ds)
    s = P.linearisation_spectrum(hnn, np.zeros(6))
    assert s.eigenvalues.shape == (6,) and np.all(np.isfinite(s.eigenvalues))
    small = models.OscillatorModel(6, k=2, kind="pendulum", rngs=nnx.Rngs(0))
    small.prepare(ds)
    s2 = P.linearisation_spectrum(small, np.zeros(6))
    assert s2.eigenvalues.shape == (4,)
    # the latent field at rest: two coupled harmonic oscillators, `u'' = -(diag(omega^2) + L) u
    # - gamma u'`, whose frequencies for small damping are the roots of that matrix's eigenvalues
    om, kappa = np.asarray(small.frequencies()), np.asarray(small.coupling())
    gamma = np.asarray(small.damping())
    stiff = np.diag(om**2) + np.diag(kappa.sum(1)) - kappa
    a = np.block([[np.zeros((2, 2)), np.eye(2)], [-stiff, -np.diag(gamma)]])
    np.testing.assert_allclose(
        np.sort(s2.oscillatory), np.sort(np.linalg.eigvals(a).imag[::1])[2:], rtol=1e-10
    )
