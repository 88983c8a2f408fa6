"""Tests of models.attribution: closed forms, Captum's reference values, invariances,
conservation of LRP, faithfulness metrics, and scoring against the simulator."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import dynamics
from models import attribution as attr

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@pytest.fixture
def rbgkey():
    """Fresh PRNG keys of the "rbg" implementation. The methods take any key; on
    CPU, rbg kernels compile several times faster than threefry's, which keeps
    this file quick (threefry keys from `getkey` are used where shapes repeat)."""
    counter = iter(range(10**6))
    return lambda: jax.random.key(next(counter), impl="rbg")


def relu(v):
    return jnp.maximum(v, 0.0)


def basic_model2(x):
    """Captum's BasicModel2 (the IG paper's toy): ReLU(ReLU(x1) - 1 - ReLU(x2))."""
    return relu(relu(x[0]) - 1.0 - relu(x[1]))


def basic_model3(x):
    """Captum's BasicModel3, the same function written differently:
    ReLU(ReLU(x1 - 1) - ReLU(x2))."""
    return relu(relu(x[0] - 1.0) - relu(x[1]))


def smooth_net(seed=0, d=5, h=8):
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(size=(h, d)), rng.normal(size=h)
    w2 = rng.normal(size=(3, h))

    def f(x):
        return jnp.sum(jnp.tanh(w2 @ jnp.tanh(w1 @ x + b1)))

    return f, rng.normal(size=d)


# --------------------------------------------------------------------------- #
# Quadrature
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 50])
def test_quadrature_matches_captum_definitions(n):
    k = np.arange(n)
    expected = {
        "riemann_left": (k / n, np.full(n, 1 / n)),
        "riemann_right": ((k + 1) / n, np.full(n, 1 / n)),
        "riemann_middle": ((2 * k + 1) / (2 * n), np.full(n, 1 / n)),
        "gausslegendre": (
            (np.polynomial.legendre.leggauss(n)[0] + 1) / 2,
            np.polynomial.legendre.leggauss(n)[1] / 2,
        ),
    }
    for method, (a_ref, w_ref) in expected.items():
        a, w = attr.quadrature(method, n)
        np.testing.assert_allclose(a, a_ref, rtol=0, atol=1e-15, err_msg=method)
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-15, err_msg=method)
        assert np.all((a >= 0) & (a <= 1))
        np.testing.assert_allclose(w.sum(), 1.0, atol=1e-14)


@pytest.mark.parametrize("n", [2, 3, 4, 10, 101])
def test_trapezoid_weights_sum_to_one_and_integrate_linear_exactly(n):
    a, w = attr.quadrature("riemann_trapezoid", n)
    np.testing.assert_allclose(a, np.linspace(0, 1, n), atol=1e-15)
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-14)
    for c0, c1 in [(1.0, 0.0), (0.0, 1.0), (-2.5, 3.0)]:
        np.testing.assert_allclose(np.sum(w * (c0 + c1 * a)), c0 + c1 / 2, atol=1e-14)
    # Captum's trapezoid weights (step 1/n, ends halved) sum to 1 - 1/n instead
    captum_w = np.full(n, 1 / n)
    captum_w[[0, -1]] /= 2
    assert not np.isclose(captum_w.sum(), 1.0)
    if n == 4:
        np.testing.assert_allclose(w, [1 / 6, 1 / 3, 1 / 3, 1 / 6])


def test_gausslegendre_exact_for_polynomials_of_degree_2n_minus_1():
    n = 4
    a, w = attr.quadrature("gausslegendre", n)
    for deg in range(2 * n):
        np.testing.assert_allclose(np.sum(w * a**deg), 1 / (deg + 1), atol=1e-14)


# --------------------------------------------------------------------------- #
# Integrated gradients
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", METHODS)
def test_ig_captum_toy_model(method):
    x = jnp.array([3.0, 1.0])
    ig, delta = attr.integrated_gradients_with_delta(basic_model2, x, steps=500, method=method)
    np.testing.assert_allclose(ig, [1.5, -0.5], atol=5e-3)
    assert abs(float(delta)) < 5e-3
    if method == "gausslegendre":  # the returned delta is the separately computed one
        np.testing.assert_allclose(
            delta, attr.completeness_delta(basic_model2, x, ig), rtol=0, atol=1e-15
        )


def test_ig_implementation_invariance_captum_models():
    x = jnp.array([3.0, 1.0])
    a2 = attr.integrated_gradients(basic_model2, x, steps=200)
    a3 = attr.integrated_gradients(basic_model3, x, steps=200)
    np.testing.assert_allclose(a2, a3, atol=1e-3)
    np.testing.assert_allclose(a3, [1.5, -0.5], atol=1e-2)


def test_ig_implementation_invariance_reparametrised_relu_net():
    rng = np.random.default_rng(3)
    d, h = 6, 10
    w, b, v = rng.normal(size=(h, d)), rng.normal(size=h), rng.normal(size=h)
    perm = rng.permutation(h)
    scale = rng.uniform(0.2, 5.0, size=h)  # positive rescaling passes through ReLU

    def net_a(x):
        return v @ relu(w @ x + b)

    def net_b(x):
        return (v[perm] / scale[perm]) @ relu(
            (w[perm] * scale[perm, None]) @ x + b[perm] * scale[perm]
        )

    x, base = rng.normal(size=d), rng.normal(size=d)
    np.testing.assert_allclose(net_a(x), net_b(x), rtol=1e-12)
    ia = attr.integrated_gradients(net_a, x, base, steps=64)
    ib = attr.integrated_gradients(net_b, x, base, steps=64)
    np.testing.assert_allclose(ia, ib, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["riemann_left", "riemann_trapezoid", "gausslegendre"])
def test_completeness_delta_shrinks_with_steps(method):
    f, x = smooth_net()
    steps = [4, 32, 256]
    deltas = [
        abs(float(attr.integrated_gradients_with_delta(f, x, steps=s, method=method)[1]))
        for s in steps
    ]
    for prev, nxt in zip(deltas, deltas[1:]):
        assert nxt <= 1.05 * prev + 1e-12, deltas
    assert deltas[-1] < 3e-2 * deltas[0] and deltas[-1] < 1e-2
    if method != "riemann_left":  # second order or better
        assert deltas[-1] < 1e-5


@pytest.mark.parametrize(
    "method,steps",
    [("gausslegendre", 1), ("gausslegendre", 3), ("riemann_middle", 1), ("riemann_trapezoid", 2)],
)
def test_ig_quadratic_energy_closed_form(method, steps):
    rng = np.random.default_rng(1)
    m = rng.normal(size=(5, 5))
    k = m @ m.T + 5 * np.eye(5)
    x = rng.normal(size=5)

    def energy(y):
        return 0.5 * y @ k @ y

    ig, delta = attr.integrated_gradients_with_delta(energy, x, steps=steps, method=method)
    np.testing.assert_allclose(ig, x * (k @ x) / 2, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.sum(ig), x @ k @ x / 2, rtol=1e-12)
    assert abs(float(delta)) < 1e-12


def test_ig_baselines_and_single_step_identity():
    f, x = smooth_net(seed=5)
    base = np.full(x.shape, 0.3)
    # one right-endpoint step is gradient x (x - baseline), here with a scalar baseline
    # broadcast; with a zero baseline it is gradient x input
    np.testing.assert_allclose(
        attr.integrated_gradients(f, x, 0.3, steps=1, method="riemann_right"),
        (x - base) * attr.saliency(f, x),
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        attr.integrated_gradients(f, x, steps=1, method="riemann_right"),
        attr.gradient_x_input(f, x),
        rtol=1e-13,
    )
    # IG of the identity (sum) is x - baseline
    np.testing.assert_allclose(attr.integrated_gradients(jnp.sum, x, base), x - base, rtol=1e-13)


def test_ig_chunked_equals_unchunked_at_1000_steps():
    f, x = smooth_net(seed=2)
    kw = dict(steps=1000, method="riemann_trapezoid")
    full = attr.integrated_gradients(f, x, chunk_size=1000, **kw)
    for c in (64, 7):
        np.testing.assert_allclose(
            attr.integrated_gradients(f, x, chunk_size=c, **kw), full, rtol=1e-12
        )


def test_vmap_jit_grad():
    f, x0 = smooth_net(seed=4)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(3, x0.size)))
    batched = jax.vmap(lambda x: attr.integrated_gradients(f, x, steps=16))(xs)
    eager = [attr.integrated_gradients_with_delta(f, xs[i], steps=16) for i in (0, 2)]
    np.testing.assert_allclose(batched[0], eager[0][0], rtol=1e-12)
    np.testing.assert_allclose(batched[2], eager[1][0], rtol=1e-12)
    jitted = jax.jit(lambda x: attr.integrated_gradients_with_delta(f, x, steps=16))(xs[0])
    np.testing.assert_allclose(jitted[0], eager[0][0], rtol=1e-12)
    np.testing.assert_allclose(jitted[1], eager[0][1], atol=1e-12)

    # grad through saliency: d/dx sum(d/dx sum(x^3)/3) = d/dx sum(x^2) = 2x
    cube = lambda x: jnp.sum(x**3) / 3  # noqa: E731
    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(attr.saliency(cube, x)))(xs[0]), 2 * xs[0], rtol=1e-12
    )
    np.testing.assert_allclose(attr.saliency(cube, -xs[0], abs=True), xs[0] ** 2, rtol=1e-12)
    # and through IG (second order through the scan over chunks)
    g = jax.grad(lambda x: jnp.sum(attr.integrated_gradients(cube, x, steps=4, chunk_size=3)))(
        xs[0]
    )
    np.testing.assert_allclose(g, xs[0] ** 2, rtol=1e-12)  # IG_i = x_i^3 / 3 exactly

    # fn closing over traced parameters inside jit
    def model(p, x):
        return jnp.sum(jnp.tanh(p * x))

    p = jnp.linspace(0.5, 1.5, x0.size)
    out = jax.jit(lambda p, x: attr.integrated_gradients(lambda y: model(p, y), x))(p, xs[1])
    np.testing.assert_allclose(
        out, attr.integrated_gradients(lambda y: model(p, y), xs[1]), rtol=1e-12
    )


# --------------------------------------------------------------------------- #
# SmoothGrad, VarGrad, occlusion
# --------------------------------------------------------------------------- #


def test_smoothgrad_and_vargrad(getkey, rbgkey):
    f, x = smooth_net(seed=6, d=6)
    key = getkey()
    np.testing.assert_allclose(
        attr.smoothgrad(f, x, key=key, n=32, sigma=0.0), attr.saliency(f, x), rtol=1e-13
    )
    assert np.max(attr.vargrad(f, x, key=key, n=32, sigma=0.0)) < 1e-20

    rng = np.random.default_rng(7)
    m = rng.normal(size=(6, 6))
    k = m @ m.T + np.eye(6)
    xq = rng.normal(size=6)
    quad = lambda y: 0.5 * y @ k @ y  # noqa: E731  grad = K y, so grad(x + eps) = Kx + K eps
    sigma, n, key = 0.3, 2000, rbgkey()
    sg = attr.smoothgrad(quad, xq, key=key, n=n, sigma=sigma, chunk_size=500)
    tol = 5 * sigma * np.sqrt(np.diag(k @ k)) / np.sqrt(n)
    assert np.all(np.abs(sg - k @ xq) < tol)
    vg = attr.vargrad(quad, xq, key=key, n=n, sigma=sigma, chunk_size=500)
    np.testing.assert_allclose(vg, sigma**2 * np.diag(k @ k), rtol=0.15)


def _occlusion_reference(fn, x, window, stride, baseline, per_channel):
    x = np.asarray(x)
    t_len, d = x.shape
    starts = list(range(0, t_len - window + 1, stride))
    if starts[-1] != t_len - window:
        starts.append(t_len - window)
    total, count = np.zeros_like(x), np.zeros_like(x)
    channels = [[c] for c in range(d)] if per_channel else [list(range(d))]
    f0 = float(fn(jnp.asarray(x)))
    for s in starts:
        for chans in channels:
            occ = x.copy()
            occ[s : s + window, chans] = baseline
            drop = f0 - float(fn(jnp.asarray(occ)))
            total[s : s + window, chans] += drop
            count[s : s + window, chans] += 1
    return total / count


@pytest.mark.parametrize(
    "window,stride,per_channel", [(1, 1, True), (2, 2, False), (3, 2, True), (5, 1, False)]
)
def test_occlusion_against_loops(window, stride, per_channel):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(5, 3))
    w = rng.normal(size=(5, 3))

    def fn(y):
        return jnp.sum(jnp.tanh(y * w)) + jnp.sum(y[:, 0] * y[:, 1])

    got = attr.occlusion(
        fn, x, window=window, stride=stride, baseline=0.5, per_channel=per_channel, chunk_size=4
    )
    ref = _occlusion_reference(fn, x, window, stride, 0.5, per_channel)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_occlusion_linear_single_cells_is_weight_times_input():
    rng = np.random.default_rng(9)
    x, w = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    got = attr.occlusion(lambda y: jnp.sum(w * y), x, window=1, per_channel=True)
    np.testing.assert_allclose(got, w * x, rtol=1e-12)
    # per-channel baselines broadcast over time
    mu = x.mean(0)
    got = attr.occlusion(lambda y: jnp.sum(w * y), x, window=1, per_channel=True, baseline=mu)
    np.testing.assert_allclose(got, w * (x - mu), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- #
# LRP for the LSTM
# --------------------------------------------------------------------------- #


def _random_lstm(rng, d_in, hidden, d_out, *, biases=True):
    layers, d = [], d_in
    for h in hidden:
        layers.append(
            {
                "w_x": rng.normal(size=(d, 4 * h)) / np.sqrt(d),
                "w_h": rng.normal(size=(h, 4 * h)) / np.sqrt(h),
                "b": rng.normal(size=4 * h) * 0.5 if biases else np.zeros(4 * h),
            }
        )
        d = h
    return {
        "layers": layers,
        "w_out": rng.normal(size=(d, d_out)),
        "b_out": rng.normal(size=d_out) if biases else np.zeros(d_out),
    }


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _reference_lstm_lrp(params, xs, target, eps):
    """A plain numpy transcription of Arras et al.'s rules (dense matrices, explicit loops)."""

    def lrp_linear(hin, w, hout, rout):
        den = hout + eps * np.where(hout >= 0, 1.0, -1.0)
        return (hin[:, None] * w / den[None, :] * rout[None, :]).sum(axis=1)

    us, records = np.asarray(xs, float), []
    for layer in params["layers"]:
        wx, wh, b = layer["w_x"], layer["w_h"], layer["b"]
        hdim, t_len = wh.shape[0], us.shape[0]
        h, c = np.zeros((t_len + 1, hdim)), np.zeros((t_len + 1, hdim))
        gi, gf, gg, zg = (np.zeros((t_len, hdim)) for _ in range(4))
        for t in range(t_len):
            z = us[t] @ wx + h[t] @ wh + b
            gi[t], gf[t] = _sigmoid(z[:hdim]), _sigmoid(z[hdim : 2 * hdim])
            zg[t] = z[2 * hdim : 3 * hdim]
            gg[t] = np.tanh(zg[t])
            c[t + 1] = gf[t] * c[t] + gi[t] * gg[t]
            h[t + 1] = _sigmoid(z[3 * hdim :]) * np.tanh(c[t + 1])
        records.append((us, h, c, gi, gf, gg, zg))
        us = h[1:]
    y = us[-1] @ params["w_out"] + params["b_out"]
    r_out = np.zeros_like(y)
    r_out[target] = y[target]
    r_ext = np.zeros_like(us)
    r_ext[-1] = lrp_linear(us[-1], params["w_out"], y, r_out)
    for layer, (u, h, c, gi, gf, gg, zg) in zip(reversed(params["layers"]), reversed(records)):
        hdim, t_len = h.shape[1], u.shape[0]
        wxg, whg = layer["w_x"][:, 2 * hdim : 3 * hdim], layer["w_h"][:, 2 * hdim : 3 * hdim]
        rh, rc, ru = np.zeros_like(h), np.zeros_like(c), np.zeros_like(u)
        rh[1:] += r_ext
        eye = np.eye(hdim)
        for t in reversed(range(t_len)):
            rc[t + 1] += rh[t + 1]
            rc[t] += lrp_linear(gf[t] * c[t], eye, c[t + 1], rc[t + 1])
            rg = lrp_linear(gi[t] * gg[t], eye, c[t + 1], rc[t + 1])
            ru[t] = lrp_linear(u[t], wxg, zg[t], rg)
            rh[t] += lrp_linear(h[t], whg, zg[t], rg)
        r_ext = ru
    return r_ext, y


def test_lstm_lrp_matches_reference_and_forward():
    rng = np.random.default_rng(10)
    params = _random_lstm(rng, 3, [5, 4], 2)
    xs = rng.normal(size=(6, 3))
    ref, y = _reference_lstm_lrp(params, xs, target=1, eps=1e-3)
    np.testing.assert_allclose(attr.lstm_forward(params, xs), y, rtol=1e-12)
    np.testing.assert_allclose(
        attr.lstm_lrp(params, xs, target=1, eps=1e-3), ref, rtol=1e-9, atol=1e-12
    )


def test_lstm_lrp_conservation_float64():
    rng = np.random.default_rng(11)
    params = _random_lstm(rng, 3, [5, 4], 2, biases=False)
    xs = rng.normal(size=(6, 3))
    y = attr.lstm_forward(params, xs)
    for target in range(2):
        r = attr.lstm_lrp(params, xs, target=target, eps=1e-12)
        assert r.shape == xs.shape and r.dtype == jnp.float64
        np.testing.assert_allclose(jnp.sum(r), y[target], rtol=1e-6)
    # with biases the absorbed share closes the balance exactly, whatever eps
    params = _random_lstm(rng, 3, [5, 4], 2, biases=True)
    y = attr.lstm_forward(params, xs)
    for eps in (1e-9, 0.1):
        r, absorbed = attr.lstm_lrp(params, xs, target=0, eps=eps, return_absorbed=True)
        np.testing.assert_allclose(jnp.sum(r) + absorbed, y[0], rtol=1e-10)
    assert abs(float(absorbed)) > 1e-3  # biases really absorb a share


def test_lstm_lrp_gate_rule_by_hand():
    """T = 1, H = 1: c = i g, h = o tanh(c), y = w h. All relevance reaches g's
    pre-activation z^g = x . w_g, so R_k = y x_k w_gk / z^g whatever the gates."""
    rng = np.random.default_rng(12)
    w_x = rng.normal(size=(2, 4))
    params = {
        "layers": [{"w_x": w_x, "w_h": rng.normal(size=(1, 4)), "b": np.zeros(4)}],
        "w_out": np.array([[1.7]]),
        "b_out": np.zeros(1),
    }
    x = np.array([[0.8, -0.3]])
    y = float(attr.lstm_forward(params, x)[0])
    zg = x[0] @ w_x[:, 2]
    expected = y * x[0] * w_x[:, 2] / zg
    np.testing.assert_allclose(attr.lstm_lrp(params, x, target=0, eps=0.0)[0], expected, rtol=1e-12)
    # changing the input and output gates changes y but not how it is split
    w2 = w_x.copy()
    w2[:, 0] *= -3.0
    w2[:, 3] += 1.0
    p2 = {**params, "layers": [{**params["layers"][0], "w_x": w2}]}
    y2 = float(attr.lstm_forward(p2, x)[0])
    assert abs(y2 - y) > 1e-3
    np.testing.assert_allclose(
        attr.lstm_lrp(p2, x, target=0, eps=0.0)[0], y2 * x[0] * w_x[:, 2] / zg, rtol=1e-12
    )


def test_lstm_lrp_vmap_jit():
    rng = np.random.default_rng(13)
    params = _random_lstm(rng, 3, [5, 4], 2)
    xs = rng.normal(size=(4, 6, 3))
    batched = jax.jit(jax.vmap(lambda s: attr.lstm_lrp(params, s, target=1)))(xs)
    for b in range(4):
        np.testing.assert_allclose(batched[b], attr.lstm_lrp(params, xs[b], target=1), rtol=1e-12)


# --------------------------------------------------------------------------- #
# Faithfulness
# --------------------------------------------------------------------------- #


def test_infidelity(getkey):
    rng = np.random.default_rng(14)
    w = rng.normal(size=6)
    x = rng.normal(size=6)
    linear = lambda y: w @ y + 2.0  # noqa: E731
    exact = attr.saliency(linear, x)
    assert float(attr.infidelity(linear, x, exact, key=getkey(), n=32, sigma=0.5)) < 1e-25
    assert float(attr.infidelity(linear, x, 2 * exact, key=getkey(), n=32, sigma=0.5)) > 1e-2

    f, x = smooth_net(seed=15, d=6)
    ig = attr.integrated_gradients(f, x)
    key = getkey()
    plain = attr.infidelity(f, x, ig, key=key, n=32, sigma=0.2)
    norm = attr.infidelity(f, x, ig, key=key, n=32, sigma=0.2, normalize=True)
    assert 0 <= float(norm) <= float(plain)
    # normalised infidelity does not change when attributions are scaled
    np.testing.assert_allclose(
        attr.infidelity(f, x, 100 * ig, key=key, n=32, sigma=0.2, normalize=True), norm, rtol=1e-9
    )


def test_max_sensitivity(rbgkey):
    rng = np.random.default_rng(16)
    w = rng.normal(size=5)
    x = rng.normal(size=5)
    linear = lambda y: w @ y  # noqa: E731
    assert (
        float(
            attr.max_sensitivity(
                lambda y: attr.saliency(linear, y), x, key=rbgkey(), n=8, radius=0.1
            )
        )
        == 0.0
    )
    f, x = smooth_net(seed=16)
    s_small = attr.max_sensitivity(lambda y: attr.saliency(f, y), x, key=rbgkey(), n=8, radius=1e-3)
    s_big = attr.max_sensitivity(lambda y: attr.saliency(f, y), x, key=rbgkey(), n=8, radius=0.3)
    assert 0 < float(s_small) < float(s_big)


def _structured_mlp(rng, d=32, h=32):
    decay = np.exp(-np.arange(d) / 5.0)  # inputs matter less and less: a strongly structured map
    return {
        "l1": {"w": rng.normal(size=(h, d)) * decay, "b": rng.normal(size=h) * 0.1},
        "l2": {"w": rng.normal(size=(h, h)) / np.sqrt(h), "b": np.zeros(h)},
        "out": {"w": rng.normal(size=h) / np.sqrt(h)},
    }


def _mlp(p, x):
    h = jnp.tanh(p["l1"]["w"] @ x + p["l1"]["b"])
    h = jnp.tanh(p["l2"]["w"] @ h + p["l2"]["b"])
    return p["out"]["w"] @ h


def test_randomisation_check_flags_parameter_blind_explanations(rbgkey):
    rng = np.random.default_rng(17)
    params = _structured_mlp(rng)
    x = rng.normal(size=32)
    order = ["out", "l2", "l1"]

    def grad_expl(p, y):
        return attr.saliency(lambda z: _mlp(p, z), y)

    res = attr.randomisation_check(grad_expl, params, x, key=rbgkey(), layer_order=order)
    assert res.correlations.shape == (3,)
    assert float(res.correlations[-1]) < 0.5 and bool(res.passes)
    assert float(res.correlations[-1]) < float(res.correlations[0])

    blind = attr.randomisation_check(lambda p, y: y, params, x, key=rbgkey(), layer_order=order)
    np.testing.assert_allclose(blind.correlations, 1.0)
    assert not bool(blind.passes)

    # tuple paths into nested containers; the cascade randomises in the given order
    nested = {"layers": [params["l1"], params["l2"]], "out": params["out"]}
    expl = lambda p, y: p["layers"][0]["w"][0] * y  # noqa: E731  depends on the bottom layer only
    res2 = attr.randomisation_check(
        expl, nested, x, key=rbgkey(), layer_order=["out", ("layers", 1), ("layers", 0)]
    )
    np.testing.assert_allclose(res2.correlations[:2], 1.0)
    assert float(res2.correlations[2]) < 0.5 and bool(res2.passes)


def test_spearman_and_auroc_against_scipy():
    rng = np.random.default_rng(18)
    a = rng.integers(0, 5, size=40).astype(float)  # many ties
    b = a + rng.integers(0, 3, size=40)
    np.testing.assert_allclose(
        attr.spearman(a, b), scipy.stats.spearmanr(a, b).statistic, rtol=1e-12
    )
    c = rng.normal(size=40)
    np.testing.assert_allclose(attr.spearman(c, -(c**3)), -1.0, rtol=1e-12)

    n = 6
    scores = rng.integers(0, 4, size=(n, n)).astype(float)
    graph = (rng.uniform(size=(n, n)) < 0.4).astype(float)
    off = ~np.eye(n, dtype=bool)
    s, g = scores[off], graph[off]
    pos, neg = s[g == 1], s[g == 0]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    np.testing.assert_allclose(attr.coupling_auroc(scores, graph), brute, rtol=1e-12)
    u = scipy.stats.mannwhitneyu(pos, neg).statistic
    np.testing.assert_allclose(
        attr.coupling_auroc(scores, graph), u / (len(pos) * len(neg)), rtol=1e-12
    )
    # the diagonal is ignored
    scores2 = scores.copy()
    np.fill_diagonal(scores2, 100.0)
    np.testing.assert_allclose(attr.coupling_auroc(scores2, graph), brute, rtol=1e-12)


# --------------------------------------------------------------------------- #
# Ground truth from the simulator
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def chain():
    n = 4
    system = dynamics.HarmonicChain(
        omega=np.linspace(1.0, 1.6, n), coupling=dynamics.chain_coupling(n, 0.5)
    )
    y0 = jnp.array([0.3, -0.2, 0.4, 0.1, 0.2, 0.5, -0.6, 0.3])
    ts = jnp.array([0.0, 0.1, 0.5, 1.0, 1.5, 2.0, 3.0])
    jac = attr.true_jacobian(system, y0, ts, rtol=1e-10, atol=1e-10)
    return system, y0, ts, jac


def test_true_jacobian_equals_state_transition_matrix(chain):
    system, y0, ts, jac = chain
    assert jac.shape == (7, 8, 8)
    exact = jax.jit(jax.jacfwd(lambda y: system.exact_solution(y, ts)))(y0)
    np.testing.assert_allclose(jac, exact, atol=1e-6)
    np.testing.assert_allclose(jac[0], np.eye(8), atol=1e-12)


def test_coupling_recovered_from_true_sensitivities(chain):
    system, y0, ts, jac = chain
    graph = system.coupling_graph()
    n = system.n_oscillators
    # t -> 0 limit: the vector field's Jacobian pools exactly to the graph
    field_jac = jax.jit(jax.jacfwd(lambda y: system.vector_field(0.0, y)))(y0)
    scores = attr.oscillator_scores(field_jac, n)
    np.testing.assert_array_equal(np.asarray(scores * (1 - np.eye(n)) > 0), np.asarray(graph > 0))
    assert float(attr.coupling_auroc(scores, graph)) == 1.0
    # a short horizon (t = 0.1), before indirect coupling fills in
    assert float(attr.coupling_auroc(attr.oscillator_scores(jac[1], n), graph)) == 1.0


def test_score_by_horizon(chain):
    system, y0, ts, jac = chain
    graph = system.coupling_graph()
    res = attr.score_by_horizon(jac, jac, graph, ts, 1.0)
    np.testing.assert_allclose(res.spearman, 1.0, rtol=1e-12)
    np.testing.assert_allclose(res.auroc, res.true_auroc)
    assert float(res.auroc[0]) == 0.5  # identity at t = 0: every off-diagonal score ties
    inside, beyond = np.asarray(ts) <= 1.0, np.asarray(ts) > 1.0
    np.testing.assert_allclose(res.auroc_inside, np.asarray(res.auroc)[inside].mean(), rtol=1e-12)
    np.testing.assert_allclose(res.auroc_beyond, np.asarray(res.auroc)[beyond].mean(), rtol=1e-12)
    # a noisy attribution scores lower against the truth
    noise = np.random.default_rng(1).normal(size=jac.shape) * 0.3
    res2 = attr.score_by_horizon(jac + noise, jac, graph, ts, 1.0)
    assert float(res2.spearman_beyond) < 1.0 and float(res2.spearman_inside) < 1.0


def test_oscillator_scores_layouts():
    a = np.arange(16.0).reshape(4, 4) - 8
    s = attr.oscillator_scores(a, 2, state_layout="qp")
    ab = np.abs(a)
    np.testing.assert_allclose(s[0, 1], ab[0, 1] + ab[0, 3] + ab[2, 1] + ab[2, 3])
    np.testing.assert_allclose(attr.oscillator_scores(a, 4), ab)  # first order: D = n
    np.testing.assert_allclose(attr.oscillator_scores(a, 2, state_layout=[[0, 2], [1, 3]]), s)
    # Huygens' clocks (theta1, theta2, x, w1, w2, v): the layout comes from the system
    clocks = dynamics.HuygensClocks(jnp.array([1.0, 1.2]))
    h = attr.oscillator_scores(np.ones((6, 6)), 2, state_layout=clocks)
    np.testing.assert_allclose(h, 4.0)
    np.testing.assert_allclose(
        attr.oscillator_scores(np.ones((6, 6)), 2, state_layout=[[0, 3], [1, 4]]), h
    )
    # ... and is never guessed from D = 2n + 2
    with pytest.raises(ValueError, match="oscillator_groups"):
        attr.oscillator_scores(np.ones((6, 6)), 2)
    with pytest.raises(ValueError, match="state_layout"):
        attr.oscillator_scores(a, 2, state_layout="huygens")


class _ChainWithDrift(dynamics.AbstractSystem):
    """A user's system with a non-plain layout, declared: `y = (q_1, q_2, q_3, p_1, p_2, p_3, s)`,
    a harmonic chain (edges 1-2, 2-3) plus a decaying drift `s' = -s` that drives every `p_i`
    (placed last, so that the old `2n + 2` guess `(i, n + 1 + i)` would pick the wrong indices)."""

    declared: bool = eqx.field(static=True, default=True)

    @property
    def n_oscillators(self):
        return 3

    @property
    def state_dim(self):
        return 7

    def vector_field(self, t, y):
        q, p, s = y[:3], y[3:6], y[6]
        lap = jnp.array([q[0] - q[1], 2 * q[1] - q[0] - q[2], q[2] - q[1]])
        return jnp.concatenate(
            [p, -(jnp.array([1.0, 1.5, 2.0]) ** 2) * q - 0.3 * lap + s, -s[None]]
        )

    def coupling_graph(self):
        return jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def sample_initial_states(self, key, n, *, scale=1.0):
        return jax.random.uniform(key, (n, 7), minval=-scale, maxval=scale)

    def oscillator_groups(self):
        if not self.declared:
            return super().oscillator_groups()  # the base class: refuses a non-plain layout
        return ((0, 3), (1, 4), (2, 5))


def test_a_declared_user_layout_pools_by_its_groups():
    sys = _ChainWithDrift()
    a = np.random.default_rng(0).normal(size=(7, 7))
    ab, groups = np.abs(a), ((0, 3), (1, 4), (2, 5))
    expected = np.array([[ab[np.ix_(gi, gj)].sum() for gj in groups] for gi in groups])
    np.testing.assert_allclose(attr.oscillator_scores(a, 3, state_layout=sys), expected, rtol=1e-12)
    np.testing.assert_allclose(
        attr.oscillator_scores(a, 3, state_layout=[list(g) for g in groups]), expected
    )
    m = attr.oscillator_membership(sys, 7)
    np.testing.assert_array_equal(
        m, [[1, 0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 1, 0]]
    )
    np.testing.assert_array_equal(attr.oscillator_membership(groups, 7), m)
    # end to end: the simulator's own sensitivities recover the chain, through the system's groups
    ts = jnp.array([0.0, 0.2, 0.4])
    jac = attr.true_jacobian(sys, jnp.array([0.1, -0.2, 0.3, 0.0, 0.1, -0.1, 0.5]), ts)
    res = attr.score_by_horizon(jac, jac, sys.coupling_graph(), ts, 0.3, state_layout=sys)
    assert float(res.true_auroc[1]) == 1.0
    np.testing.assert_allclose(res.auroc, res.true_auroc)


def test_an_undeclared_user_layout_raises_instead_of_guessing():
    sys = _ChainWithDrift(declared=False)
    a = np.ones((7, 7))
    with pytest.raises(ValueError, match="oscillator_groups"):
        attr.oscillator_scores(a, 3)  # "auto": D = 2n + 1 is no plain layout
    with pytest.raises(ValueError, match="not declared"):
        attr.oscillator_scores(a, 3, state_layout=sys)
    with pytest.raises(ValueError, match="not declared"):
        attr.oscillator_membership(sys, 7)
    with pytest.raises(ValueError, match="oscillator_groups"):
        attr.score_by_horizon(
            np.ones((2, 7, 7)), np.ones((2, 7, 7)), sys.coupling_graph(), np.array([0.0, 1.0]), 0.5
        )
    with pytest.raises(ValueError, match="state_dim=7"):
        attr.oscillator_membership(_ChainWithDrift(), 6)
    with pytest.raises(ValueError, match="3 index groups"):
        attr.oscillator_scores(a, 3, state_layout=[[0, 4], [1, 5]])


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def test_bad_inputs_raise_clear_errors(getkey, unchecked):
    x = jnp.ones(3)
    f = jnp.sum
    with pytest.raises(ValueError, match="scalar"):
        attr.saliency(lambda y: y * 2, x)
    with pytest.raises(ValueError, match="scalar"):
        attr.integrated_gradients(lambda y: (y.sum(), y.sum()), x)
    with pytest.raises(ValueError, match="floating"):
        attr.saliency(lambda y: jnp.sum(y).astype(jnp.int32), x)
    with unchecked(), pytest.raises(ValueError, match="baseline"):
        attr.integrated_gradients(f, x, jnp.zeros(4))
    with pytest.raises(ValueError, match="steps"):
        attr.integrated_gradients(f, x, steps=0)
    with pytest.raises(ValueError, match="steps"):
        attr.quadrature("riemann_trapezoid", 1)
    with pytest.raises(ValueError, match="method"):
        attr.integrated_gradients(f, x, method="simpson")
    with pytest.raises(ValueError, match="n must be"):
        attr.smoothgrad(f, x, key=getkey(), n=0, sigma=0.1)
    with pytest.raises(ValueError, match="sigma"):
        attr.vargrad(f, x, key=getkey(), n=4, sigma=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        attr.infidelity(f, x, x, key=getkey(), n=4, sigma=-0.1)
    with unchecked(), pytest.raises(ValueError, match="attr"):
        attr.infidelity(f, x, jnp.ones(2), key=getkey(), n=4, sigma=0.1)
    with pytest.raises(ValueError, match="radius"):
        attr.max_sensitivity(lambda y: y, x, key=getkey(), n=4, radius=-1.0)
    seq = jnp.ones((5, 2))
    with pytest.raises(ValueError, match="window"):
        attr.occlusion(jnp.sum, seq, window=0)
    with pytest.raises(ValueError, match="window"):
        attr.occlusion(jnp.sum, seq, window=6)
    with pytest.raises(ValueError, match="stride"):
        attr.occlusion(jnp.sum, seq, window=2, stride=0)
    with unchecked(), pytest.raises(ValueError, match=r"\(T, D\)"):
        attr.occlusion(jnp.sum, x, window=1)
    with pytest.raises(ValueError, match="baseline"):
        attr.occlusion(jnp.sum, seq, window=1, baseline=jnp.zeros(3))
    params = _random_lstm(np.random.default_rng(0), 2, [3], 2)
    with pytest.raises(ValueError, match="w_x"):
        attr.lstm_lrp(params, jnp.ones((4, 3)), target=0)
    with pytest.raises(ValueError, match="target"):
        attr.lstm_lrp(params, jnp.ones((4, 2)), target=2)
    with pytest.raises(ValueError, match="layer"):
        attr.randomisation_check(lambda p, y: y, {"a": 1.0}, x, key=getkey(), layer_order=["b"])
    with unchecked(), pytest.raises(ValueError, match="graph"):
        attr.coupling_auroc(jnp.ones((3, 3)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="layout"):
        attr.oscillator_scores(jnp.ones((5, 5)), 2)
    with pytest.raises(ValueError, match="y0"):
        attr.true_jacobian(
            dynamics.HarmonicChain([1.0, 2.0], np.zeros((2, 2))), jnp.ones(3), jnp.linspace(0, 1, 3)
        )


def test_lag_spread_on_constructed_saliencies():
    """All mass on the last context state: nothing older (0, 0); spread evenly over C lags:
    `1 - 1/C` of it on older states at a mean lag of `(C - 1)/2` steps; all on the oldest
    state: fraction 1 at lag C - 1. Zero saliency has no spread (NaN)."""
    from experiments.attribution import lag_spread

    nh, D, C = 3, 4, 5
    last = np.zeros((nh, D, C, D))
    last[:, :, -1, :] = np.random.default_rng(0).normal(size=(nh, D, D))
    assert lag_spread(last) == (0.0, 0.0)
    even = np.ones((nh, D, C, D))
    np.testing.assert_allclose(lag_spread(even), (1 - 1 / C, (C - 1) / 2), rtol=1e-12)
    oldest = np.zeros((nh, D, C, D))
    oldest[:, :, 0, :] = -2.0  # the sign does not matter
    np.testing.assert_allclose(lag_spread(oldest), (1.0, C - 1), rtol=1e-12)
    assert all(np.isnan(lag_spread(np.zeros((nh, D, C, D)))))


def test_attribution_summary_gives_the_mean_and_interval_over_seeds():
    """`experiments.attribution.summary_markdown`: three seeds of AUROC 0.5, 0.7, 0.9 give
    0.7 ± t(0.975, 2) 0.2 / sqrt(3) = 0.7 ± 0.5; one seed gives its value without an interval;
    rows that failed (method "-") are left out."""
    from experiments.attribution import summary_markdown

    base = dict(system="S", model="M", n_train=8, method="saliency", split="inside")
    rows = [
        dict(base, seed=s, coupling_auroc=a, jacobian_spearman=0.1 * s, older_lag_fraction=0.0,
             mean_lag=0.0)
        for s, a in enumerate((0.5, 0.7, 0.9))
    ]  # fmt: skip
    rows.append(dict(base, n_train=1, seed=0, coupling_auroc=0.25, jacobian_spearman=0.5))
    rows.append(dict(base, method="-", seed=0, reason="ValueError: bad"))
    probes = [dict(base | {"quantity": "energy"}, seed=s, r2=r, control_r2=0.0)
              for s, r in enumerate((0.8, 0.9))]  # fmt: skip
    text = summary_markdown(rows, probes)
    half = scipy.stats.t.ppf(0.975, 2) * 0.2 / np.sqrt(3)
    assert f"| S | M | 8 | saliency | inside | 3 | 0.7 ± {half:.2g} | 0.1 ± " in text
    assert "| S | M | 1 | saliency | inside | 1 | 0.25 | 0.5 | - | - |" in text
    assert "| 8 | - |" not in text and "bad" not in text
    assert "| S | M | 8 | energy | inside | 2 | 0.85 ± " in text
