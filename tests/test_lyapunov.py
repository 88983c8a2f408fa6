"""`dynamics.lyapunov_exponent` against known exponents: chaos, regular motion, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Lorenz63

import dynamics as d


class _Decay(d.AbstractSystem):
    """`y' = -diag(rates) y`: the tangent decays as `exp(-min(rates) t)`."""

    rates: tuple[float, ...] = (0.3, 1.0)

    has_energy = False
    second_order = False

    @property
    def n_oscillators(self) -> int:
        return len(self.rates)

    @property
    def state_dim(self) -> int:
        return len(self.rates)

    def vector_field(self, t, y):
        return -jnp.asarray(self.rates) * y

    def coupling_graph(self):
        return jnp.zeros((2, 2))

    def sample_initial_states(self, key, n, *, scale=1.0):
        return jnp.ones((n, 2)) * scale


def test_lorenz63_exponent_is_the_known_one():
    """The largest exponent of Lorenz63 at the classic parameters is 0.9056 (Sprott 2003)."""
    lam = float(d.lyapunov_exponent(Lorenz63(), jnp.ones(3), dt=0.1, n_steps=2000, n_transient=100))
    assert lam == pytest.approx(0.906, rel=0.05)


def test_renormalising_less_often_gives_the_same_exponent():
    """Exactly so on a linear flow; on Lorenz63 up to the chaos that amplifies the solver's
    different steps (the tangent's direction converges, the trajectory does not)."""
    for every in (1, 10):
        lam = float(
            d.lyapunov_exponent(_Decay(), jnp.ones(2), dt=0.5, n_steps=200, renormalise_every=every)
        )
        assert lam == pytest.approx(-0.3 - np.log(np.sqrt(2.0)) / 100.0, rel=1e-5)
    kw = dict(dt=0.05, n_steps=4000, n_transient=200)
    a = float(d.lyapunov_exponent(Lorenz63(), jnp.ones(3), renormalise_every=1, **kw))
    b = float(d.lyapunov_exponent(Lorenz63(), jnp.ones(3), renormalise_every=4, **kw))
    assert a == pytest.approx(b, rel=0.02)


def test_harmonic_chain_has_zero_exponent():
    chain = d.HarmonicChain([1.0, 1.2, 0.9], d.chain_coupling(3, 0.3))
    y0 = jnp.array([0.3, 0.0, -0.2, 0.0, 0.1, 0.0])
    lam = float(d.lyapunov_exponent(chain, y0, dt=0.1, n_steps=5000))
    assert abs(lam) < 0.02


def test_double_pendulum_regular_at_small_and_chaotic_at_large_amplitude():
    dp = d.DoublePendulum()
    small = float(d.lyapunov_exponent(dp, jnp.array([0.1, 0.05, 0.0, 0.0]), dt=0.1, n_steps=5000))
    large = float(d.lyapunov_exponent(dp, jnp.array([2.0, 2.5, 0.0, 0.0]), dt=0.1, n_steps=5000))
    print(f"double pendulum: lambda {small:.4f} at small amplitude, {large:.3f} at (2, 2.5)")
    assert abs(small) < 0.02
    assert large > 0.5


def test_a_contracting_system_has_the_rate_of_its_slowest_direction():
    lam = float(d.lyapunov_exponent(_Decay(), jnp.array([1.0, 1.0]), dt=0.5, n_steps=200))
    # log|u(T)| / T with u = (exp(-0.3 T), exp(-T)) / sqrt(2): -0.3 up to log(sqrt 2) / T
    assert lam == pytest.approx(-0.3 - np.log(np.sqrt(2.0)) / 100.0, rel=1e-5)


@pytest.mark.ill_typed
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_steps=0), "n_steps"),
        (dict(n_steps=10.0), "n_steps"),
        (dict(dt=0.0), "dt"),
        (dict(dt=-0.1), "dt"),
        (dict(dt=float("nan")), "dt"),
        (dict(n_transient=-1), "n_transient"),
        (dict(renormalise_every=0), "renormalise_every"),
        (dict(n_steps=10, renormalise_every=3), "multiple"),
        (dict(y0=np.ones(4)), "y0"),
        (dict(y0=np.array([1.0, np.nan, 1.0])), "y0"),
        (dict(tangent0=np.zeros(3)), "tangent0"),
        (dict(solver="euler"), "solver"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(y0=np.ones(3), dt=0.1, n_steps=10)
    args.update(kwargs)
    y0 = args.pop("y0")
    with pytest.raises(ValueError, match=match):
        d.lyapunov_exponent(Lorenz63(), y0, **args)
    with pytest.raises(ValueError, match="system"):
        d.lyapunov_exponent("lorenz", np.ones(3), dt=0.1, n_steps=10)
