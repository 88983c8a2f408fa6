"""Input validation: every bad input raises `ValueError` naming the offending field.

Nothing here integrates anything: validation must happen before the solver.
Property tests (hypothesis) cover whole families of bad parameters, and check
that valid parameters are never rejected.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import dynamics as d

NAN, INF = float("nan"), float("inf")
OSCILLATORS = [d.HarmonicChain, d.CoupledPendulums, d.CoupledVanDerPol]
hyp = settings(deadline=None, max_examples=60)


def build(cls, omega, coupling):
    """Builds any of the `omega, coupling` systems (Van der Pol needs a `mu` too)."""
    if cls is d.CoupledVanDerPol:
        return cls(omega, 1.0, coupling)
    return cls(omega, coupling)


GOOD_OMEGA = [1.0, 1.5, 2.0]
GOOD_K = d.chain_coupling(3, 0.2)


# ----------------------------------------------------------- constructors
@pytest.mark.parametrize("cls", [*OSCILLATORS, d.Kuramoto])
@pytest.mark.parametrize(
    "omega",
    [[[1.0, 2.0, 3.0]], 1.0, [], [1.0, NAN, 2.0], [1.0, INF, 2.0], ["a", "b", "c"]],
    ids=["2d", "scalar", "empty", "nan", "inf", "text"],
)
def test_bad_omega(cls, omega):
    with pytest.raises(ValueError, match="omega"):
        build(cls, omega, GOOD_K)


@pytest.mark.parametrize("cls", OSCILLATORS)
@pytest.mark.parametrize("bad", [0.0, -1.0, -1e-300])
def test_non_positive_omega(cls, bad):
    with pytest.raises(ValueError, match="omega must be > 0"):
        build(cls, [1.0, bad, 2.0], GOOD_K)


def test_kuramoto_accepts_any_real_omega():
    system = d.Kuramoto([-2.0, 0.0, 3.0], GOOD_K)
    assert system.n_oscillators == 3


def _with(k, i, j, value, symmetric=True):
    k = np.array(k, dtype=float)
    k[i, j] = value
    if symmetric:
        k[j, i] = value
    return k


@pytest.mark.parametrize("cls", [*OSCILLATORS, d.Kuramoto])
@pytest.mark.parametrize(
    "coupling, why",
    [
        (np.zeros((4, 4)), "shape"),
        (np.zeros(3), "dimension"),
        (_with(GOOD_K, 0, 2, NAN), "finite"),
        (_with(GOOD_K, 0, 2, INF), "finite"),
        (_with(GOOD_K, 0, 1, 0.3, symmetric=False), "symmetric"),
        (_with(GOOD_K, 0, 2, -0.1), "non-negative"),
        (_with(GOOD_K, 1, 1, 0.1), "zero diagonal"),
    ],
    ids=["shape", "1d", "nan", "inf", "asymmetric", "negative", "diagonal"],
)
def test_bad_coupling(cls, coupling, why):
    with pytest.raises(ValueError, match=f"coupling.*{why}"):
        build(cls, [1.0, 1.0, 1.0], coupling)


@pytest.mark.parametrize("mu", [-0.1, NAN, INF, [1.0, 2.0]])
def test_bad_van_der_pol_mu(mu):
    with pytest.raises(ValueError, match="mu"):
        d.CoupledVanDerPol(GOOD_OMEGA, mu, GOOD_K)


@pytest.mark.parametrize(
    "field, value",
    [
        ("gamma", -0.01),
        ("mu", -0.1),
        ("theta0", 0.0),
        ("theta0", -0.2),
        ("beam_omega", -1.0),
        ("beam_gamma", -0.5),
        ("mass_ratio", 0.0),
        ("mass_ratio", -0.05),
        ("gamma", NAN),
        ("mass_ratio", INF),
        ("beam_omega", [1.0, 2.0]),
    ],
)
def test_bad_huygens_parameters(field, value):
    with pytest.raises(ValueError, match=field):
        d.HuygensClocks([1.0, 1.0], **{field: value})


@pytest.mark.parametrize("omega", [[1.0, 0.0], [-1.0, 1.0], [1.0, NAN], [[1.0, 1.0]]])
def test_bad_huygens_omega(omega):
    with pytest.raises(ValueError, match="omega"):
        d.HuygensClocks(omega)


@pytest.mark.parametrize("n, mass_ratio", [(2, 0.5), (2, 0.6), (4, 0.25), (1, 1.0), (3, 2.0)])
def test_huygens_mass_ratio_times_n_below_one(n, mass_ratio):
    with pytest.raises(ValueError, match=r"mass_ratio \* n must be < 1"):
        d.HuygensClocks(np.ones(n), mass_ratio=mass_ratio)


@pytest.mark.parametrize(
    "field, value",
    [
        ("m1", 0.0),
        ("m2", -1.0),
        ("l1", 0.0),
        ("l2", -0.5),
        ("g", -9.8),
        ("m1", NAN),
        ("l2", INF),
        ("g", [9.8]),
    ],
)
def test_bad_double_pendulum(field, value):
    with pytest.raises(ValueError, match=field):
        d.DoublePendulum(**{field: value})


def test_double_pendulum_allows_zero_gravity():
    assert d.DoublePendulum(g=0.0).state_dim == 4


@pytest.mark.ill_typed  # "H", n=1.5, n="2"
def test_bad_hamiltonian_system():
    with pytest.raises(ValueError, match="hamiltonian"):
        d.HamiltonianSystem("H", 2)
    with pytest.raises(ValueError, match="hamiltonian must return a scalar"):
        d.HamiltonianSystem(lambda q, p: q * p, 2)
    for n in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            d.HamiltonianSystem(lambda q, p: jnp.sum(q * p), n)


@pytest.mark.ill_typed  # n=2.0
@pytest.mark.parametrize("graph", [d.chain_coupling, d.ring_coupling, d.all_to_all_coupling])
def test_bad_graph_arguments(graph):
    for n in (1, 0, 2.0):
        with pytest.raises(ValueError, match="n must be an integer"):
            graph(n, 0.1)
    for kappa in (-0.1, NAN, INF):
        with pytest.raises(ValueError, match="kappa"):
            graph(3, kappa)


@pytest.mark.ill_typed  # n=2.0
@pytest.mark.parametrize(
    "system",
    [
        d.HarmonicChain(GOOD_OMEGA, GOOD_K),
        d.HuygensClocks([1.0, 1.0]),
        d.DoublePendulum(),
        d.Kuramoto(GOOD_OMEGA, GOOD_K),
        d.HamiltonianSystem(lambda q, p: jnp.sum(p**2), 2),
    ],
    ids=lambda s: type(s).__name__,
)
def test_bad_sample_arguments(system):
    key = jax.random.key(0)
    for n in (0, -3, 2.0):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            system.sample_initial_states(key, n)
    for scale in (0.0, -1.0, INF, NAN):
        with pytest.raises(ValueError, match="scale"):
            system.sample_initial_states(key, 4, scale=scale)


# ----------------------------------------------------------------- simulate
SYSTEM = d.CoupledPendulums(GOOD_OMEGA, GOOD_K)
Y0 = np.zeros((2, 6))
TS = np.linspace(0.0, 1.0, 5)


@pytest.mark.parametrize(
    "ts, why",
    [
        ([0.0, 1.0, 0.5], "strictly increasing"),
        ([0.0, 1.0, 1.0], "strictly increasing"),
        ([1.0, 0.0], "strictly increasing"),
        ([0.0], "at least two"),
        pytest.param([[0.0, 1.0]], "dimension", marks=pytest.mark.ill_typed),
        ([0.0, NAN], "finite"),
        ([0.0, INF], "finite"),
    ],
)
def test_bad_times(ts, why):
    with pytest.raises(ValueError, match=f"ts.*{why}"):
        d.simulate(SYSTEM, Y0, ts)


@pytest.mark.parametrize(
    "y0, why",
    [
        (np.zeros(5), "shape"),
        (np.zeros((2, 7)), "shape"),
        (np.zeros((2, 3, 4)), "shape"),
        pytest.param(0.0, "shape", marks=pytest.mark.ill_typed),
        (np.full(6, NAN), "finite"),
        (_with(np.zeros((2, 6)), 1, 3, INF, symmetric=False), "finite"),
    ],
    ids=["short", "long", "batched-short", "scalar", "nan", "inf"],
)
def test_bad_initial_states(y0, why):
    with pytest.raises(ValueError, match=f"y0.*{why}"):
        d.simulate(SYSTEM, y0, TS)


@pytest.mark.ill_typed  # max_steps=1.5, a lambda for the system
def test_bad_solver_arguments():
    for kwargs, field in [
        (dict(rtol=0.0), "rtol"),
        (dict(rtol=-1e-8), "rtol"),
        (dict(atol=NAN), "atol"),
        (dict(atol=INF), "atol"),
        (dict(solver="euler"), "solver"),
        (dict(max_steps=0), "max_steps"),
        (dict(max_steps=1.5), "max_steps"),
    ]:
        with pytest.raises(ValueError, match=field):
            d.simulate(SYSTEM, Y0, TS, **kwargs)
    with pytest.raises(ValueError, match="system"):
        d.simulate(lambda t, y: -y, Y0, TS)


def test_exact_solution_validates():
    chain = d.HarmonicChain(GOOD_OMEGA, GOOD_K)
    with pytest.raises(ValueError, match="y0"):
        chain.exact_solution(np.zeros(5), TS)
    with pytest.raises(ValueError, match="ts"):
        chain.exact_solution(np.zeros(6), TS[::-1])


# ------------------------------------------------------------- make_dataset
DATASET = dict(n_train=2, n_val=1, n_test=1, dt=0.1, t_train=1.0, t_end=2.0)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(t_train=1.05), "t_train"),
        (dict(t_end=2.03), "t_end"),
        (dict(t_end=0.5), "t_end"),
        (dict(dt=0.0), "dt"),
        (dict(dt=-0.1), "dt"),
        (dict(dt=0.3, t_train=0.1, t_end=0.3), "t_train"),  # t_train shorter than one step
        (dict(t_train=NAN), "t_train"),
        (dict(n_train=0), "n_train"),
        pytest.param(dict(n_train=2.0), "n_train", marks=pytest.mark.ill_typed),
        (dict(n_val=-1), "n_val"),
        (dict(n_test=0), "n_test"),
        (dict(noise=-0.01), "noise"),
        (dict(ood_scale=0.0), "ood_scale"),
    ],
)
def test_bad_dataset_arguments(change, field):
    with pytest.raises(ValueError, match=field):
        d.make_dataset(SYSTEM, key=jax.random.key(0), **{**DATASET, **change})


@pytest.mark.ill_typed  # None for the system
def test_dataset_needs_a_system():
    with pytest.raises(ValueError, match="system"):
        d.make_dataset(None, key=jax.random.key(0), **DATASET)


# -------------------------------------------------------- property tests
finite_positive = st.floats(min_value=1e-3, max_value=1e3)
non_positive = st.floats(max_value=0.0) | st.just(-INF)  # includes -0.0 and tiny negatives
bad_scalar = st.floats(max_value=0.0, allow_nan=False) | st.just(NAN) | st.just(INF)


@st.composite
def omega_with_a_non_positive_entry(draw):
    good = draw(st.lists(finite_positive, min_size=0, max_size=5))
    i = draw(st.integers(0, len(good)))
    return [*good[:i], draw(non_positive), *good[i:]]


@st.composite
def valid_coupling(draw, n):
    k = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            k[i, j] = k[j, i] = draw(st.floats(min_value=0.0, max_value=1e3))
    return k


@hyp
@given(
    omega=omega_with_a_non_positive_entry(), cls=st.sampled_from(OSCILLATORS + [d.HuygensClocks])
)
def test_property_any_non_positive_omega_raises(omega, cls):
    with pytest.raises(ValueError, match="omega"):
        if cls is d.HuygensClocks:
            d.HuygensClocks(omega, mass_ratio=0.5 / len(omega))
        else:
            build(cls, omega, np.zeros((len(omega), len(omega))))


@hyp
@given(
    data=st.data(),
    n=st.integers(2, 6),
    delta=st.floats(min_value=1e-6, max_value=1e3) | st.floats(min_value=-1e3, max_value=-1e-6),
    cls=st.sampled_from(OSCILLATORS + [d.Kuramoto]),
)
def test_property_any_asymmetric_coupling_raises(data, n, delta, cls):
    k = data.draw(valid_coupling(n))
    i, j = data.draw(st.sampled_from([(i, j) for i in range(n) for j in range(n) if i != j]))
    k[i, j] += delta
    assume(abs(k[i, j] - k[j, i]) > 1e-9 * max(1.0, abs(k[j, i])))
    with pytest.raises(ValueError, match="coupling must be symmetric"):
        build(cls, np.ones(n), k)


@hyp
@given(data=st.data(), n=st.integers(2, 6), value=st.floats(max_value=-1e-300) | st.just(-INF))
def test_property_any_negative_or_non_finite_coupling_raises(data, n, value):
    k = data.draw(valid_coupling(n))
    i, j = data.draw(st.sampled_from([(i, j) for i in range(n) for j in range(n) if i != j]))
    k[i, j] = k[j, i] = data.draw(st.just(value) | st.just(NAN) | st.just(INF))
    with pytest.raises(ValueError, match="coupling"):
        d.HarmonicChain(np.ones(n), k)


@hyp
@given(n=st.integers(1, 8), mass_ratio=st.floats(min_value=1e-6, max_value=1e6))
def test_property_mass_ratio_at_or_above_one_over_n_raises(n, mass_ratio):
    assume(Fraction(mass_ratio) * n >= 1)  # exact arithmetic: no rounding in the premise
    with pytest.raises(ValueError, match="mass_ratio"):
        d.HuygensClocks(np.ones(n), mass_ratio=mass_ratio)


@hyp
@given(
    field=st.sampled_from(["gamma", "mu", "theta0", "beam_omega", "beam_gamma", "mass_ratio"]),
    value=bad_scalar,
)
def test_property_bad_huygens_scalar_raises(field, value):
    allowed_zero = field in ("gamma", "mu", "beam_omega", "beam_gamma")
    assume(not (allowed_zero and value == 0.0))
    with pytest.raises(ValueError, match=field):
        d.HuygensClocks([1.0, 1.0], **{field: value})


@hyp
@given(
    data=st.data(),
    n=st.integers(1, 6),
    cls=st.sampled_from(OSCILLATORS + [d.Kuramoto, d.HuygensClocks]),
)
def test_property_valid_parameters_are_accepted(data, n, cls):
    """No false positives: physical parameters always construct, and the system is usable."""
    omega = np.array(data.draw(st.lists(finite_positive, min_size=n, max_size=n)))
    if cls is d.HuygensClocks:
        m = data.draw(st.floats(min_value=1e-6, max_value=0.99 / n))
        system = d.HuygensClocks(omega, mass_ratio=m)
    else:
        system = build(cls, omega, data.draw(valid_coupling(n)))
    assert system.n_oscillators == n
    np.testing.assert_array_equal(system.omega, omega)


@hyp
@given(ts=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=8))
def test_property_non_increasing_times_raise(ts):
    assume(np.any(np.diff(ts) <= 0))
    with pytest.raises(ValueError, match="ts must be strictly increasing"):
        d.simulate(SYSTEM, Y0, ts)
