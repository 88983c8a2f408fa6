r"""Attribution for any JAX function, scored against the simulator's ground truth.

Every method works on a plain function `fn` that maps **one** input array `x`
to a scalar; batch with `jax.vmap`, compile with `jax.jit`, differentiate with
`jax.grad`. Argument checks are static (shapes, dtypes, Python numbers) and
raise `ValueError` before anything is traced; nothing inspects traced values.

Gradient methods
    `saliency`, `gradient_x_input`, `integrated_gradients` (with the quadrature
    rules of Captum and a correct trapezoid rule, see `quadrature`),
    `integrated_gradients_with_delta`, `completeness_delta`, `smoothgrad`,
    `vargrad`.
Perturbation
    `occlusion` over time windows of a `(T, D)` sequence.
Relevance propagation
    `lstm_lrp`: LRP for a stacked LSTM with the gate rule of Arras et al. 2017;
    `lstm_forward` is the forward pass it explains.
Faithfulness
    `infidelity`, `max_sensitivity` (Yeh et al. 2019) and `randomisation_check`
    (the cascading model-parameter randomisation test of Adebayo et al. 2018).
Ground truth
    `true_jacobian` (`d y(t) / d y0` through `dynamics.simulate`),
    `oscillator_scores`, `coupling_auroc`, `spearman`, `jacobian_spearman` and
    `score_by_horizon` (scores inside versus beyond the training window).

Sums over many evaluation points (path steps, noise samples, windows) run in
chunks of `chunk_size` points: `jax.vmap` inside a chunk, `jax.lax.scan` over
chunks, so memory grows with `chunk_size`, not with the number of points.

Each eager call compiles its own program (the function `fn` is new to JAX on
every call). To explain many inputs, `jax.vmap` over them or wrap the call in
`jax.jit` once, e.g. `ig = jax.jit(lambda x: integrated_gradients(fn, x))`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

import dynamics

__all__ = [
    "HorizonScores",
    "RandomisationResult",
    "QUADRATURE_METHODS",
    "completeness_delta",
    "coupling_auroc",
    "gradient_x_input",
    "infidelity",
    "integrated_gradients",
    "integrated_gradients_with_delta",
    "jacobian_spearman",
    "lstm_forward",
    "lstm_lrp",
    "max_sensitivity",
    "occlusion",
    "oscillator_scores",
    "quadrature",
    "randomisation_check",
    "saliency",
    "score_by_horizon",
    "smoothgrad",
    "spearman",
    "true_jacobian",
    "vargrad",
]

ScalarFn = Callable[[Float[Array, "*shape"]], Float[Array, ""]]

#: The integration rules of `integrated_gradients`.
QUADRATURE_METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)

_DEFAULT_CHUNK = 64


# --------------------------------------------------------------------------- #
# Static checks and small helpers
# --------------------------------------------------------------------------- #


def _is_traced(v) -> bool:
    return isinstance(v, jax.core.Tracer)


def _as_float(name: str, x) -> Array:
    """`x` as a JAX array of a floating dtype (integers become the default float)."""
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"{name} must be an array, got {type(x).__name__}") from e
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def _check_scalar_fn(fn: Callable, x: Array, name: str = "fn") -> None:
    """Raises unless `fn(x)` is a floating scalar (checked with `jax.eval_shape`)."""
    if not callable(fn):
        raise ValueError(f"{name} must be callable, got {type(fn).__name__}")
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(
            f"{name} must map x to a scalar array, got a {type(out).__name__} "
            f"(for a vector output, explain one entry: lambda x: model(x)[target])"
        )
    if out.shape != ():
        raise ValueError(
            f"{name} must map x to a scalar, got output shape {out.shape} "
            f"(explain one entry, e.g. lambda x: model(x)[target], or a sum)"
        )
    if not jnp.issubdtype(out.dtype, jnp.inexact):
        raise ValueError(f"{name} must return a floating-point scalar, got dtype {out.dtype}")


def _check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a Python integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_nonnegative(name: str, value) -> None:
    """Checks a scalar hyperparameter where it is concrete (traced values pass)."""
    if _is_traced(value):
        return
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    v = float(arr)
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {v!r}")


def _baseline(x: Array, baseline) -> Array:
    """Checks `baseline` (`None` means zeros; a scalar is broadcast; otherwise the
    shape must equal `x`'s) and returns it as an array; broadcast it with `_like`."""
    if baseline is None:
        return jnp.zeros((), x.dtype)
    b = jnp.asarray(baseline, dtype=x.dtype)
    if b.shape not in ((), x.shape):
        raise ValueError(f"baseline must be a scalar or have the shape of x {x.shape}, got shape {b.shape}")
    return b


def _like(b: Array, x: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(b, x.dtype), x.shape)


def _safe_div(a: Array, b: Array) -> Array:
    """`a / b`, and 0 where `b == 0` (no NaN, also in gradients)."""
    zero = b == 0
    return jnp.where(zero, 0.0, a / jnp.where(zero, 1.0, b))


def _chunks(points: Any, chunk_size: int):
    """Splits the leading axis (static length `N`) of every leaf of `points` into
    `m` chunks of `c` points, padding the last chunk with copies of the first
    point (so padded evaluations stay finite). Returns the chunks, a validity
    mask of shape `(m, c)`, and `N`."""
    n = jax.tree.leaves(points)[0].shape[0]
    c = max(1, min(int(chunk_size), n))
    m = -(-n // c)
    pad = m * c - n

    def split(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)], axis=0)
        return a.reshape(m, c, *a.shape[1:])

    return jax.tree.map(split, points), (np.arange(m * c) < n).reshape(m, c), n


def _chunked_reduce(g: Callable, points: Any, *, chunk_size: int) -> Any:
    """`sum_k g(points[k])` over the leading axis of `points`, `chunk_size` points at a time.

    Inside a chunk the points are `jax.vmap`ped; chunks are visited by
    `jax.lax.scan`, so memory grows with `chunk_size`, not with the number of
    points. Padded evaluations are masked out of the sum.
    """
    chunks, valid, _ = _chunks(points, chunk_size)

    def chunk_sum(pts, ok):
        out = jax.vmap(g)(pts)

        def masked(o):
            okb = jnp.asarray(ok).reshape(ok.shape + (1,) * (o.ndim - 1))
            return jnp.where(okb, o, 0).sum(0)

        return jax.tree.map(masked, out)

    if valid.shape[0] == 1:
        return chunk_sum(jax.tree.map(lambda a: a[0], chunks), valid[0])
    out_struct = jax.eval_shape(g, jax.tree.map(lambda a: a[0, 0], chunks))
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_struct)

    def body(acc, inp):
        return jax.tree.map(jnp.add, acc, chunk_sum(*inp)), None

    acc, _ = jax.lax.scan(body, init, (chunks, jnp.asarray(valid)))
    return acc


def _chunked_map(g: Callable, points: Any, *, chunk_size: int) -> Any:
    """`stack_k g(points[k])`, evaluated `chunk_size` points at a time (`vmap` inside
    a chunk, `lax.scan` over chunks). For small outputs (scalars per point)."""
    chunks, valid, n = _chunks(points, chunk_size)
    if valid.shape[0] == 1:
        out = jax.vmap(g)(jax.tree.map(lambda a: a[0], chunks))
    else:
        _, out = jax.lax.scan(lambda carry, pts: (carry, jax.vmap(g)(pts)), None, chunks)
        out = jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), out)
    return jax.tree.map(lambda o: o[:n], out)


# --------------------------------------------------------------------------- #
# Gradients
# --------------------------------------------------------------------------- #


def saliency(
    fn: ScalarFn, x: Float[ArrayLike, "*shape"], *, abs: bool = False
) -> Float[Array, "*shape"]:
    r"""The gradient `d fn / d x` at `x` (Simonyan et al. 2014).

    With `abs=True` its elementwise magnitude `|d fn / d x|` (Captum's default;
    here the signed gradient is the default).
    """
    x = _as_float("x", x)
    _check_scalar_fn(fn, x)
    g = jax.grad(fn)(x)
    return jnp.abs(g) if abs else g


def gradient_x_input(fn: ScalarFn, x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""Gradient times input, `x_i * d fn / d x_i` (Shrikumar et al. 2016).

    This is integrated gradients with a zero baseline and a single
    right-endpoint step; it is exact (complete) for functions that are
    homogeneous of degree one, such as bias-free ReLU networks.
    """
    x = _as_float("x", x)
    _check_scalar_fn(fn, x)
    return x * jax.grad(fn)(x)


# --------------------------------------------------------------------------- #
# Integrated gradients
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=64)
def _quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(steps, dtype=np.float64)
    if method == "riemann_left":
        alphas, weights = k / steps, np.full(steps, 1.0 / steps)
    elif method == "riemann_right":
        alphas, weights = (k + 1) / steps, np.full(steps, 1.0 / steps)
    elif method == "riemann_middle":
        alphas, weights = (k + 0.5) / steps, np.full(steps, 1.0 / steps)
    elif method == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
    else:  # gausslegendre
        nodes, w = np.polynomial.legendre.leggauss(steps)
        alphas, weights = 0.5 * (1.0 + nodes), 0.5 * w
    alphas.setflags(write=False)
    weights.setflags(write=False)
    return alphas, weights


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes `alpha_k` in `[0, 1]` and weights `w_k` with `int_0^1 h ~ sum_k w_k h(alpha_k)`.

    With `n = steps` and `k = 0, ..., n-1`:

    - `"riemann_left"`: `alpha_k = k/n`, `w_k = 1/n`;
    - `"riemann_right"`: `alpha_k = (k+1)/n`, `w_k = 1/n`;
    - `"riemann_middle"`: `alpha_k = (k+1/2)/n`, `w_k = 1/n`;
    - `"gausslegendre"`: numpy's Gauss-Legendre nodes `t_k` and weights `v_k` on
      `[-1, 1]` mapped to `[0, 1]`: `alpha_k = (1 + t_k)/2`, `w_k = v_k/2`.
      Exact for polynomials of degree `2n - 1`.

    These four are Captum's definitions (which require `n >= 2` for the
    Riemann rules; here `n = 1` is allowed too).

    - `"riemann_trapezoid"`: the composite trapezoid rule on `n >= 2` equally
      spaced nodes, `alpha_k = k/(n-1)`, `w_k = 1/(n-1)` with the first and last
      weight halved. Exact for linear integrands. (Captum uses these nodes with
      step `1/n`, so its weights sum to `1 - 1/n`; not copied here.)

    Every rule's weights sum to 1. Returns read-only float64 numpy arrays.
    """
    if method not in QUADRATURE_METHODS:
        raise ValueError(f"method must be one of {QUADRATURE_METHODS}, got {method!r}")
    steps = _check_int("steps", steps, minimum=1)
    if method == "riemann_trapezoid" and steps < 2:
        raise ValueError(f"riemann_trapezoid needs steps >= 2 (both end points), got {steps}")
    return _quadrature(method, steps)


def _ig_and_delta(fn, x, baseline, steps, method, chunk_size):
    x = _as_float("x", x)
    _check_scalar_fn(fn, x)
    b = _baseline(x, baseline)
    alphas, weights = quadrature(method, steps)
    chunk_size = _check_int("chunk_size", chunk_size, minimum=1)
    grad = jax.grad(fn)

    @jax.jit
    def run(x, b, alphas, weights):
        b = _like(b, x)
        delta = x - b

        def weighted_grad(p):
            a, w = p
            return w * grad(b + a * delta)

        attr = delta * _chunked_reduce(weighted_grad, (alphas, weights), chunk_size=chunk_size)
        return attr, jnp.sum(attr) - (fn(x) - fn(b))

    return run(x, b, jnp.asarray(alphas, x.dtype), jnp.asarray(weights, x.dtype))


def integrated_gradients(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    baseline: Float[ArrayLike, "*shape"] | float | None = None,
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int = _DEFAULT_CHUNK,
) -> Float[Array, "*shape"]:
    r"""Integrated gradients (Sundararajan et al. 2017).

    `IG_i(x) = (x_i - b_i) int_0^1 (d fn / d x_i)(b + alpha (x - b)) d alpha`
    `       ~ (x_i - b_i) sum_k w_k (d fn / d x_i)(b + alpha_k (x - b))`

    with the nodes and weights of `quadrature(method, steps)`. Completeness:
    `sum_i IG_i = fn(x) - fn(b)` up to the quadrature error (see
    `integrated_gradients_with_delta`).

    **Arguments:**

    - `fn`: maps one input `x` to a scalar.
    - `x`: the input explained.
    - `baseline`: `b`; zeros when `None`; a scalar is broadcast.
    - `steps`, `method`: the quadrature rule.
    - `chunk_size`: path points evaluated at once (`vmap` within a chunk,
      `lax.scan` over chunks); memory is bounded by `chunk_size`, not `steps`.
    """
    attr, _ = _ig_and_delta(fn, x, baseline, steps, method, chunk_size)
    return attr


def completeness_delta(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    attr: Float[ArrayLike, "*shape"],
    baseline: Float[ArrayLike, "*shape"] | float | None = None,
) -> Float[Array, ""]:
    r"""`sum(attr) - (fn(x) - fn(baseline))`: zero for a complete attribution."""
    x = _as_float("x", x)
    _check_scalar_fn(fn, x)
    attr = jnp.asarray(attr)
    if attr.shape != x.shape:
        raise ValueError(f"attr must have the shape of x {x.shape}, got {attr.shape}")
    b = _baseline(x, baseline)
    return jax.jit(lambda x, attr, b: jnp.sum(attr) - (fn(x) - fn(_like(b, x))))(x, attr, b)


def integrated_gradients_with_delta(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    baseline: Float[ArrayLike, "*shape"] | float | None = None,
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int = _DEFAULT_CHUNK,
) -> tuple[Float[Array, "*shape"], Float[Array, ""]]:
    r"""`integrated_gradients` and its completeness delta `sum(IG) - (fn(x) - fn(b))`.

    The delta is the quadrature error of the path integral; it tends to 0 as
    `steps` grows (like `1/steps` for the left and right rules, `1/steps^2`
    for the midpoint and trapezoid rules on smooth `fn`, faster for
    Gauss-Legendre). Kinks of ReLU networks along the path slow all rules down.
    """
    return _ig_and_delta(fn, x, baseline, steps, method, chunk_size)


# --------------------------------------------------------------------------- #
# Noise averaging
# --------------------------------------------------------------------------- #


def _normal_noise(key, n, x):
    """`n` draws of `N(0, I)` shaped like `x`, generated up front.

    One call to `jax.random.normal` for all draws: its compiled kernel is
    cached per shape, and the result does not depend on `chunk_size`. It holds
    `n * x.size` numbers, the same as the input batch Captum would build.
    """
    return jax.random.normal(key, (n, *x.shape), x.dtype)


def _sum_noise_grads(fn, x, eps, sigma, shift, chunk_size, *, squares: bool):
    grad = jax.grad(fn)

    def one(e):
        g = grad(x + sigma * e) - shift
        return (g, g * g) if squares else g

    return _chunked_reduce(one, eps, chunk_size=chunk_size)


def _check_noise_args(fn, x, n, sigma, chunk_size):
    x = _as_float("x", x)
    _check_scalar_fn(fn, x)
    n = _check_int("n", n, minimum=1)
    _check_nonnegative("sigma", sigma)
    chunk_size = _check_int("chunk_size", chunk_size, minimum=1)
    return x, n, chunk_size


def smoothgrad(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    n: int = 50,
    sigma: float = 0.1,
    chunk_size: int = _DEFAULT_CHUNK,
) -> Float[Array, "*shape"]:
    r"""SmoothGrad (Smilkov et al. 2017): `(1/n) sum_k grad fn(x + eps_k)`, `eps_k ~ N(0, sigma^2 I)`.

    `sigma` is an absolute standard deviation in the units of `x` (Captum's
    `stdevs`), not a fraction of the input range. `sigma = 0` gives `saliency`.
    """
    x, n, chunk_size = _check_noise_args(fn, x, n, sigma, chunk_size)
    eps = _normal_noise(key, n, x)
    run = jax.jit(lambda x, eps, sigma: _sum_noise_grads(fn, x, eps, sigma, 0.0, chunk_size, squares=False) / n)
    return run(x, eps, sigma)


def vargrad(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    n: int = 50,
    sigma: float = 0.1,
    chunk_size: int = _DEFAULT_CHUNK,
) -> Float[Array, "*shape"]:
    r"""VarGrad (Adebayo et al. 2018): the elementwise variance of `grad fn(x + eps_k)` over the noise.

    `Var_k[g_k] = (1/n) sum_k (g_k - s)^2 - ((1/n) sum_k (g_k - s))^2` with
    `eps_k ~ N(0, sigma^2 I)`: the population variance (`1/n`, as Captum),
    computed in one pass around the shift `s = grad fn(x)` to limit
    cancellation. `sigma = 0` gives zeros.
    """
    x, n, chunk_size = _check_noise_args(fn, x, n, sigma, chunk_size)
    eps = _normal_noise(key, n, x)

    @jax.jit
    def run(x, eps, sigma):
        s1, s2 = _sum_noise_grads(fn, x, eps, sigma, jax.grad(fn)(x), chunk_size, squares=True)
        mean = s1 / n
        return jnp.maximum(s2 / n - mean * mean, 0.0)

    return run(x, eps, sigma)


# --------------------------------------------------------------------------- #
# Occlusion
# --------------------------------------------------------------------------- #


def _window_starts(length: int, window: int, stride: int) -> np.ndarray:
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:  # cover the tail too
        starts.append(length - window)
    return np.asarray(starts)


def occlusion(
    fn: ScalarFn,
    x: Float[ArrayLike, "T D"],
    *,
    window: int,
    stride: int = 1,
    baseline: Float[ArrayLike, "..."] | float = 0.0,
    per_channel: bool = False,
    chunk_size: int = _DEFAULT_CHUNK,
) -> Float[Array, "T D"]:
    r"""Occlusion over time windows of a sequence `x` of shape `(T, D)` (Zeiler and Fergus 2014).

    A window `W` covers the time steps `s, ..., s + window - 1`, for every
    channel (`per_channel=False`) or for one channel `d` (`per_channel=True`).
    Occluding it replaces `x` by `baseline` there. The attribution of an entry
    is the output drop averaged over the windows that cover it:

    `A_{t,d} = mean_{W ∋ (t,d)} [fn(x) - fn(x with W occluded)]`.

    Window starts are `0, stride, 2 stride, ...` up to `T - window`, plus
    `T - window` itself when the stride does not land there, so every time
    step is covered. `baseline` is a scalar or any array broadcastable to
    `(T, D)` (e.g. per-channel means of shape `(D,)`).
    """
    x = _as_float("x", x)
    if x.ndim != 2:
        raise ValueError(f"occlusion needs x of shape (T, D), got shape {x.shape}")
    _check_scalar_fn(fn, x)
    T, D = x.shape
    window = _check_int("window", window, minimum=1)
    stride = _check_int("stride", stride, minimum=1)
    chunk_size = _check_int("chunk_size", chunk_size, minimum=1)
    if window > T:
        raise ValueError(f"window must be <= the sequence length T={T}, got {window}")
    b = jnp.asarray(baseline, x.dtype)
    try:
        if np.broadcast_shapes(b.shape, x.shape) != x.shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"baseline must broadcast to the shape of x {x.shape}, got shape {b.shape}") from None

    starts = _window_starts(T, window, stride)
    counts = np.zeros(T)
    for s in starts:
        counts[s : s + window] += 1
    if per_channel:
        st, ch = np.repeat(starts, D), np.tile(np.arange(D), len(starts))
    else:
        st, ch = starts, np.full(len(starts), -1)

    @jax.jit
    def run(x, b, st, ch, counts):
        b = _like(b, x)
        t_idx = jnp.arange(T)[:, None]
        d_idx = jnp.arange(D)[None, :]
        f0 = fn(x)

        def one(p):
            s, c = p
            mask = (t_idx >= s) & (t_idx < s + window) & ((c < 0) | (d_idx == c))
            return (f0 - fn(jnp.where(mask, b, x))) * mask.astype(x.dtype)

        total = _chunked_reduce(one, (st, ch), chunk_size=chunk_size)
        return total / counts[:, None]

    return run(x, b, jnp.asarray(st), jnp.asarray(ch), jnp.asarray(counts, x.dtype))


# --------------------------------------------------------------------------- #
# LRP for the LSTM
# --------------------------------------------------------------------------- #


def _check_lstm(params, xs) -> None:
    if not isinstance(params, dict) or not {"layers", "w_out", "b_out"} <= set(params):
        raise ValueError('params must be a dict with keys "layers", "w_out", "b_out"')
    layers = params["layers"]
    if not isinstance(layers, (list, tuple)) or len(layers) == 0:
        raise ValueError("params['layers'] must be a non-empty list of layer dicts")
    if xs.ndim != 2 or xs.shape[0] < 1:
        raise ValueError(f"xs must have shape (T, D_in) with T >= 1, got {xs.shape}")
    d_in = xs.shape[1]
    for k, layer in enumerate(layers):
        try:
            wx, wh, b = (jnp.shape(layer[name]) for name in ("w_x", "w_h", "b"))
        except (KeyError, TypeError):
            raise ValueError(f'params["layers"][{k}] must be a dict with keys "w_x", "w_h", "b"') from None
        h = wh[0] if len(wh) == 2 else -1
        if wx != (d_in, 4 * h) or wh != (h, 4 * h) or b != (4 * h,):
            raise ValueError(
                f"layer {k}: expected w_x ({d_in}, 4H), w_h (H, 4H), b (4H,); "
                f"got w_x {wx}, w_h {wh}, b {b}"
            )
        d_in = h
    wo, bo = jnp.shape(params["w_out"]), jnp.shape(params["b_out"])
    if len(wo) != 2 or wo[0] != d_in or bo != (wo[1],):
        raise ValueError(f"w_out must have shape ({d_in}, D_out) and b_out (D_out,), got {wo} and {bo}")


def _lstm_layer(layer, us):
    """One LSTM layer over a sequence; returns `h_t` and what LRP needs at every step."""
    w_x, w_h, b = layer["w_x"], layer["w_h"], layer["b"]
    hdim = w_h.shape[0]
    zeros = jnp.zeros(hdim, us.dtype)

    def step(carry, u):
        h, c = carry
        z = u @ w_x + h @ w_h + b
        zi, zf, zg, zo = jnp.split(z, 4)
        i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        return (h_new, c_new), (h_new, dict(u=u, h=h, c=c, i=i, f=f, g=g, zg=zg, c_new=c_new))

    _, (hs, saved) = jax.lax.scan(step, (zeros, zeros), us)
    return hs, saved


def lstm_forward(params: dict, xs: Float[ArrayLike, "T D_in"]) -> Float[Array, " D_out"]:
    r"""The stacked LSTM that `lstm_lrp` explains; returns the readout after the last step.

    Per layer, with gate order `(i, f, g, o)` in the columns of `w_x`, `w_h`, `b`:

    `z_t = u_t w_x + h_{t-1} w_h + b`, `i = sigmoid(z^i)`, `f = sigmoid(z^f)`,
    `g = tanh(z^g)`, `o = sigmoid(z^o)`,
    `c_t = f * c_{t-1} + i * g`, `h_t = o * tanh(c_t)`, `h_0 = c_0 = 0`,

    where `u_t` is `x_t` for the first layer and the previous layer's `h_t`
    above it. Output: `h_T w_out + b_out`.
    """
    xs = _as_float("xs", xs)
    _check_lstm(params, xs)
    return _lstm_forward(params, xs)


@jax.jit
def _lstm_forward(params, xs):
    us = xs
    for layer in params["layers"]:
        us, _ = _lstm_layer(layer, us)
    return us[-1] @ params["w_out"] + params["b_out"]


def _stab(z, eps):
    """The epsilon-rule denominator `z + eps * sign(z)` with `sign(0) = +1`."""
    return z + eps * jnp.where(z >= 0, 1.0, -1.0)


def _lrp_layer_backward(layer, saved, rh_ext, eps):
    """Relevance of one layer's inputs `u_t` from the relevance `rh_ext` on its `h_t`."""
    w_x, w_h, b = layer["w_x"], layer["w_h"], layer["b"]
    hdim = w_h.shape[0]
    gate = slice(2 * hdim, 3 * hdim)
    wxg, whg, bg = w_x[:, gate], w_h[:, gate], b[gate]

    def step(carry, inp):
        rh_rec, rc_rec, absorbed = carry
        s, rh_in = inp
        rh = rh_in + rh_rec
        rc = rc_rec + rh  # h_t = o * tanh(c_t): all of h_t's relevance goes to c_t
        # c_t = f * c_{t-1} + i * g: epsilon rule over the two summands,
        # then each product hands all its relevance to its signal.
        q = _safe_div(rc, _stab(s["c_new"], eps))
        rc_prev = s["f"] * s["c"] * q
        rg = s["i"] * s["g"] * q
        absorbed = absorbed + jnp.sum((_stab(s["c_new"], eps) - s["c_new"]) * q)
        # g = tanh(z^g) passes relevance on unchanged; z^g = u w_xg + h w_hg + b_g
        qg = _safe_div(rg, _stab(s["zg"], eps))
        ru = s["u"] * (wxg @ qg)
        rh_prev = s["h"] * (whg @ qg)
        absorbed = absorbed + jnp.sum((_stab(s["zg"], eps) - s["zg"] + bg) * qg)
        return (rh_prev, rc_prev, absorbed), ru

    zero = jnp.zeros(hdim, rh_ext.dtype)
    init = (zero, zero, jnp.zeros((), rh_ext.dtype))
    (_, _, absorbed), ru = jax.lax.scan(step, init, (saved, rh_ext), reverse=True)
    return ru, absorbed


def lstm_lrp(
    params: dict,
    xs: Float[ArrayLike, "T D_in"],
    *,
    target: int,
    eps: float = 1e-6,
    return_absorbed: bool = False,
) -> Float[Array, "T D_in"] | tuple[Float[Array, "T D_in"], Float[Array, ""]]:
    r"""Layer-wise relevance propagation through a stacked LSTM (Arras et al. 2017).

    Explains `y = lstm_forward(params, xs)[target]` (the last step's readout)
    by relevances `R_{t,d}` of the inputs `xs[t, d]`. `params` is
    `{"layers": [{"w_x": (D_in, 4H), "w_h": (H, 4H), "b": (4H,)}, ...],
    "w_out": (H, D_out), "b_out": (D_out,)}`, gate order `(i, f, g, o)`; see
    `lstm_forward`.

    Rules, with `s(z) = z + eps sign(z)` (`sign(0) = +1`):

    - Linear maps `z_j = sum_i a_i w_ij + b_j` (the readout and the
      pre-activation `z^g`) use the epsilon rule
      `R_i = sum_j a_i w_ij / s(z_j) R_j`.
    - The cell accumulator `c_t = f c_{t-1} + i g` splits `R_{c_t}` over its two
      summands by the same rule (identity weights, no bias).
    - Gate rule ("signal takes all"): in `i * g`, `f * c_{t-1}` and
      `o * tanh(c_t)` the whole relevance goes to the signal (`g`, `c_{t-1}`,
      `c_t`); the sigmoid gates `i`, `f`, `o` get none, so `x_t` and `h_{t-1}`
      receive relevance only through `z^g`. `tanh` passes relevance unchanged.
    - Relevance that reaches `h_{t-1}` (from step `t`'s `z^g`) and from the
      layer above adds up; the first layer's `u_t = x_t` relevance is returned.

    **Conservation.** Each rule keeps `sum_i R_i = R_j (z_j - b_j) / s(z_j)`;
    the rest, `R_j (b_j + eps sign z_j) / s(z_j)`, is *absorbed* by the bias
    and the stabiliser and not redistributed (bias relevance absorbed). The
    initial states `h_0 = c_0 = 0` receive exactly zero. Hence

    `sum_{t,d} R_{t,d} + absorbed = y`

    exactly, and with zero biases and `eps -> 0` the absorbed share vanishes:
    `sum R = y`. The absorbed share is the sum, over every neuron, of its
    relevance times its bias-plus-stabiliser fraction of its pre-activation;
    `return_absorbed=True` also returns it.
    """
    xs = _as_float("xs", xs)
    _check_lstm(params, xs)
    d_out = jnp.shape(params["w_out"])[1]
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise ValueError(f"target must be a Python integer, got {target!r}")
    if not 0 <= target < d_out:
        raise ValueError(f"target must be in [0, {d_out}), got {target}")
    _check_nonnegative("eps", eps)

    rel, absorbed = _lstm_lrp(params, xs, jnp.asarray(target), eps)
    return (rel, absorbed) if return_absorbed else rel


@jax.jit
def _lstm_lrp(params, xs, target, eps):
    us, saved_all = xs, []
    for layer in params["layers"]:
        hs, saved = _lstm_layer(layer, us)
        saved_all.append(saved)
        us = hs
    h_last = us[-1]
    w = params["w_out"][:, target]
    bias = params["b_out"][target]
    y = h_last @ w + bias
    q = _safe_div(y, _stab(y, eps))
    rh = jnp.zeros_like(us).at[-1].set(h_last * w * q)
    absorbed = (_stab(y, eps) - y + bias) * q
    for layer, saved in zip(reversed(params["layers"]), reversed(saved_all)):
        rh, ab = _lrp_layer_backward(layer, saved, rh, eps)
        absorbed = absorbed + ab
    return rh, absorbed


# --------------------------------------------------------------------------- #
# Faithfulness
# --------------------------------------------------------------------------- #


def infidelity(
    fn: ScalarFn,
    x: Float[ArrayLike, "*shape"],
    attr: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    n: int = 64,
    sigma: float = 0.1,
    normalize: bool = False,
    chunk_size: int = _DEFAULT_CHUNK,
) -> Float[Array, ""]:
    r"""Infidelity (Yeh et al. 2019) with Gaussian perturbations.

    With `I_k ~ N(0, sigma^2 I)`, `d_k = I_k . attr` and
    `D_k = fn(x) - fn(x - I_k)`, the Monte-Carlo estimate

    `INFD = (1/n) sum_k (d_k - D_k)^2`.

    For a linear `fn` and `attr = grad fn` it is 0. With `normalize=True`
    (Captum's `normalize`) the attribution is first rescaled by the
    least-squares factor `beta = sum_k d_k D_k / sum_k d_k^2` (0 if the
    denominator is 0), i.e. `min_beta (1/n) sum_k (beta d_k - D_k)^2`, which does
    not change when `attr` is scaled by a constant. The default is the
    unnormalised definition of Yeh et al.

    The `n` pairs `(d_k, D_k)` are kept and the squares formed from them
    (Captum expands the square into three running sums, which cancels
    catastrophically when the infidelity is small).
    """
    x = _as_float("x", x)
    _check_scalar_fn(fn, x)
    attr = jnp.asarray(attr, x.dtype)
    if attr.shape != x.shape:
        raise ValueError(f"attr must have the shape of x {x.shape}, got {attr.shape}")
    n = _check_int("n", n, minimum=1)
    _check_nonnegative("sigma", sigma)
    chunk_size = _check_int("chunk_size", chunk_size, minimum=1)
    perts = _normal_noise(key, n, x)

    @jax.jit
    def run(x, attr, perts, sigma):
        perts = sigma * perts
        f0 = fn(x)

        def one(pert):
            return jnp.sum(pert * attr), f0 - fn(x - pert)

        d, diff = _chunked_map(one, perts, chunk_size=chunk_size)
        if normalize:
            d = d * _safe_div(jnp.sum(d * diff), jnp.sum(d * d))
        return jnp.mean((d - diff) ** 2)

    return run(x, attr, perts, sigma)


def max_sensitivity(
    explain_fn: Callable[[Float[Array, "*shape"]], Float[Array, "..."]],
    x: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    n: int = 16,
    radius: float = 0.02,
    chunk_size: int = _DEFAULT_CHUNK,
) -> Float[Array, ""]:
    r"""Max-sensitivity (Yeh et al. 2019) over an `L_inf` ball of radius `radius`.

    `SENS = max_k ||e(x + d_k) - e(x)||_F / ||e(x)||_F`, `d_k ~ U([-radius, radius]^shape)`,

    for an explanation `e = explain_fn` (e.g. `lambda x: saliency(fn, x)`).
    As in Captum, the ratio is not normalised where `||e(x)|| = 0`.
    """
    x = _as_float("x", x)
    if not callable(explain_fn):
        raise ValueError(f"explain_fn must be callable, got {type(explain_fn).__name__}")
    n = _check_int("n", n, minimum=1)
    _check_nonnegative("radius", radius)
    chunk_size = _check_int("chunk_size", chunk_size, minimum=1)
    ds = jax.random.uniform(key, (n, *x.shape), x.dtype, minval=-1.0, maxval=1.0)

    @jax.jit
    def run(x, ds, radius):
        ds = radius * ds
        e0 = explain_fn(x)

        def one(d):
            return jnp.sqrt(jnp.sum((explain_fn(x + d) - e0) ** 2))

        worst = jnp.max(_chunked_map(one, ds, chunk_size=chunk_size))
        norm0 = jnp.sqrt(jnp.sum(e0**2))
        return jnp.where(norm0 > 0, _safe_div(worst, norm0), worst)

    return run(x, ds, radius)


def _rankdata(a: Array) -> Array:
    """1-based ranks of the flattened `a`; tied values get the average of their ranks."""
    a = jnp.ravel(a)
    s = jnp.sort(a)
    lo = jnp.searchsorted(s, a, side="left")
    hi = jnp.searchsorted(s, a, side="right")
    return (lo + hi + 1).astype(jnp.result_type(float)) / 2


def spearman(a: Float[ArrayLike, "*shape"], b: Float[ArrayLike, "*shape"]) -> Float[Array, ""]:
    r"""Spearman's rank correlation of the flattened `a` and `b`.

    The Pearson correlation of the ranks, ties given their average rank (as
    `scipy.stats.spearmanr`). NaN where either input is constant. Inputs must
    be finite.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.size != b.size:
        raise ValueError(f"a and b must have the same size, got {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"spearman needs at least 2 values, got {a.size}")
    return _spearman(a, b)


@jax.jit
def _spearman(a, b):
    ra, rb = _rankdata(a), _rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return jnp.sum(ra * rb) / jnp.sqrt(jnp.sum(ra * ra) * jnp.sum(rb * rb))


class RandomisationResult(NamedTuple):
    """The outcome of `randomisation_check`.

    - `correlations`: Spearman correlation between the original explanation
      and the one after each cascade stage, shape `(stages,)`.
    - `passes`: True where the correlation after the full cascade is below
      `threshold`, i.e. the explanation depends on the parameters.
    """

    correlations: Float[Array, " stages"]
    passes: Bool[Array, ""]


def _path(entry) -> tuple:
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _get_path(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set_path(tree, path, value):
    if not path:
        return value
    k, rest = path[0], path[1:]
    if isinstance(tree, dict):
        new = dict(tree)
        new[k] = _set_path(tree[k], rest, value)
        return new
    if isinstance(tree, (list, tuple)):
        new = list(tree)
        new[k] = _set_path(tree[k], rest, value)
        return type(tree)(new)
    raise ValueError(f"cannot set {path!r} inside a {type(tree).__name__}; use dicts or lists")


def _rms_normal(key: PRNGKeyArray, leaf: Array) -> Array:
    """A fresh Gaussian leaf with the root-mean-square of the old one (0 stays 0)."""
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        return leaf
    rms = jnp.sqrt(jnp.mean(leaf * leaf))
    return rms * jax.random.normal(key, leaf.shape, leaf.dtype)


def randomisation_check(
    explain_with_params: Callable[[Any, Float[Array, "*shape"]], Float[Array, "..."]],
    params: Any,
    x: Float[ArrayLike, "*shape"],
    *,
    key: PRNGKeyArray,
    layer_order: Sequence[Hashable | tuple],
    threshold: float = 0.5,
    absolute: bool = True,
    reinit: Callable[[PRNGKeyArray, Array], Array] | None = None,
    jit: bool = True,
) -> RandomisationResult:
    r"""Cascading model-parameter randomisation test (Adebayo et al. 2018).

    `params` is a pytree of layers (a dict, possibly nested); `layer_order`
    lists the layers from the top (output) down, each as a key of `params` or a
    tuple path into it (e.g. `("layers", 1)`). Stage `k` re-initialises layers
    `layer_order[0], ..., layer_order[k]` (earlier stages' random values are
    kept: the cascade) and computes

    `rho_k = spearman(|e(params, x)|, |e(params_k, x)|)`

    (signed values with `absolute=False`), `e = explain_with_params`. A
    faithful explanation changes as the model is destroyed, so `rho` drops; an
    explanation that ignores the parameters (an edge detector, the input
    itself) keeps `rho = 1`.

    `passes` is `rho_last < threshold`: after the whole cascade the
    explanation must have lost most of its rank agreement. The default
    `threshold = 0.5` is a judgement call: a random model's explanation of a
    few dozen features correlates with the original by chance at `|rho|` of
    order `1/sqrt(size)`, while explanations dominated by the input (gradient
    times input on large inputs, guided backpropagation in Adebayo et al.)
    stay well above 0.5.

    `reinit(key, leaf)` draws a new leaf; by default a Gaussian with the old
    leaf's root-mean-square (so the scale of every layer is kept and
    zero-initialised biases stay zero). With `jit=True` the explanation is
    compiled once and reused for every stage (the parameter shapes do not
    change); pass `jit=False` for an explanation that cannot be traced.
    """
    x = _as_float("x", x)
    if len(layer_order) == 0:
        raise ValueError("layer_order must name at least one layer")
    paths = [_path(e) for e in layer_order]
    for p in paths:
        try:
            _get_path(params, p)
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"layer {p if len(p) > 1 else p[0]!r} of layer_order is not in params") from None
    reinit = _rms_normal if reinit is None else reinit
    prep = jnp.abs if absolute else (lambda a: a)
    explain = jax.jit(explain_with_params) if jit else explain_with_params
    ref = prep(explain(params, x))
    current, corrs = params, []
    for k, p in enumerate(paths):
        sub = _get_path(current, p)
        leaves, treedef = jax.tree.flatten(sub)
        keys = jax.random.split(jax.random.fold_in(key, k), max(len(leaves), 1))
        new = jax.tree.unflatten(treedef, [reinit(kk, leaf) for kk, leaf in zip(keys, leaves)])
        current = _set_path(current, p, new)
        corrs.append(spearman(ref, prep(explain(current, x))))
    corrs = jnp.stack(corrs)
    return RandomisationResult(correlations=corrs, passes=corrs[-1] < threshold)


# --------------------------------------------------------------------------- #
# Ground truth from the simulator
# --------------------------------------------------------------------------- #


def true_jacobian(
    system: dynamics.AbstractSystem,
    y0: Float[ArrayLike, " D"],
    ts: Float[ArrayLike, " T"],
    **simulate_kwargs,
) -> Float[Array, "T D D"]:
    r"""The simulator's sensitivities `J[t, a, b] = d y_a(ts[t]) / d y0_b`.

    Forward-mode differentiation (`jax.jacfwd`, with
    `adjoint=diffrax.ForwardMode()`) through `dynamics.simulate` started at
    `ts[0]` (so `J[0]` is the identity). `simulate_kwargs` (`rtol`, `atol`,
    `solver`, `max_steps`) are passed on. Batch over `y0` with `jax.vmap`.
    """
    if not isinstance(system, dynamics.AbstractSystem):
        raise ValueError(f"system must be a dynamics system, got {type(system).__name__}")
    y0 = _as_float("y0", y0)
    if y0.shape != (system.state_dim,):
        raise ValueError(f"y0 must have shape ({system.state_dim},), got {y0.shape}; vmap for batches")
    if "adjoint" in simulate_kwargs:
        raise ValueError("true_jacobian sets adjoint=diffrax.ForwardMode() itself")

    def trajectory(y):
        return dynamics.simulate(system, y, ts, adjoint=diffrax.ForwardMode(), **simulate_kwargs)

    return jax.jacfwd(trajectory)(y0)


def _layout_groups(layout, n: int, dim: int) -> list[list[int]]:
    """Indices of each oscillator's coordinates in a state of size `dim`."""
    if isinstance(layout, str):
        if layout == "auto":
            if dim == n:
                layout = "first_order"
            elif dim == 2 * n:
                layout = "qp"
            elif dim == 2 * n + 2:
                layout = "huygens"
            else:
                raise ValueError(
                    f"cannot infer the state layout of {dim} coordinates for n={n} oscillators; "
                    f"pass state_layout explicitly"
                )
        expected = {"first_order": n, "qp": 2 * n, "huygens": 2 * n + 2}
        if layout not in expected:
            raise ValueError(
                f"state_layout must be 'auto', 'qp', 'first_order', 'huygens' or a list of index lists, got {layout!r}"
            )
        if dim != expected[layout]:
            raise ValueError(f"state_layout {layout!r} needs {expected[layout]} coordinates for n={n}, got {dim}")
        if layout == "first_order":
            return [[i] for i in range(n)]
        if layout == "qp":
            return [[i, n + i] for i in range(n)]
        return [[i, n + 1 + i] for i in range(n)]  # huygens: (theta, x, theta', x')
    groups = [list(map(int, g)) for g in layout]
    if len(groups) != n:
        raise ValueError(f"state_layout must list {n} index groups, got {len(groups)}")
    if any(not 0 <= i < dim for g in groups for i in g):
        raise ValueError(f"state_layout indices must lie in [0, {dim})")
    return groups


def _membership(groups, dim: int) -> np.ndarray:
    m = np.zeros((len(groups), dim))
    for k, g in enumerate(groups):
        m[k, g] = 1.0
    return m


def oscillator_scores(
    attr_jac: Float[ArrayLike, "D_out D_in"],
    n: int,
    *,
    state_layout: str | Sequence[Sequence[int]] = "auto",
) -> Float[Array, "n n"]:
    r"""Pools a state-level sensitivity or attribution matrix to oscillators.

    `S[i, j] = sum_{a in C_i} sum_{b in C_j} |A[a, b]|`, where `C_i` are the
    coordinates of oscillator `i`: `state_layout="qp"` gives `{q_i, p_i} =
    {i, n + i}` (state `concat(q, p)`), `"first_order"` gives `{i}` (e.g.
    Kuramoto, `D = n`), `"huygens"` gives `{theta_i, theta_i'} = {i, n + 1 + i}`
    (the beam coordinates are left out), a list of `n` index lists gives any
    grouping, and `"auto"` picks from `D = n`, `2n`, `2n + 2`. Row `i` is the
    affected oscillator, column `j` the influencing one.
    """
    a = jnp.asarray(attr_jac)
    n = _check_int("n", n, minimum=1)
    if a.ndim != 2:
        raise ValueError(f"attr_jac must be a (D_out, D_in) matrix, got shape {a.shape}")
    m_out = _membership(_layout_groups(state_layout, n, a.shape[0]), a.shape[0])
    m_in = _membership(_layout_groups(state_layout, n, a.shape[1]), a.shape[1])
    return jnp.asarray(m_out, a.dtype) @ jnp.abs(a) @ jnp.asarray(m_in.T, a.dtype)


def _check_graph(gr) -> None:
    if not _is_traced(gr) and not np.all(np.isin(np.asarray(gr), (0, 1))):
        raise ValueError("graph must contain only 0 and 1")


def coupling_auroc(scores: Float[ArrayLike, "n n"], graph: Float[ArrayLike, "n n"]) -> Float[Array, ""]:
    r"""AUROC of the off-diagonal `scores` for recovering the edges of a 0/1 `graph`.

    The exact Mann-Whitney statistic
    `AUC = P(s_edge > s_non-edge) + P(s_edge = s_non-edge) / 2`
    over all pairs of an off-diagonal edge and non-edge, computed from
    tie-averaged ranks: `(sum of edge ranks - P (P + 1) / 2) / (P N)`. NaN
    when the graph has no edges or no non-edges off the diagonal.
    """
    s, gr = jnp.asarray(scores), jnp.asarray(graph)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or gr.shape != s.shape:
        raise ValueError(f"scores and graph must be the same (n, n) shape, got {s.shape} and {gr.shape}")
    if s.shape[0] < 2:
        raise ValueError("coupling_auroc needs n >= 2 oscillators")
    _check_graph(gr)
    return _auroc(s, gr)


@jax.jit
def _auroc(s, gr):
    rows, cols = np.nonzero(~np.eye(s.shape[0], dtype=bool))
    vals, pos = s[rows, cols], gr[rows, cols] > 0.5
    ranks = _rankdata(vals)
    p = jnp.sum(pos).astype(ranks.dtype)
    neg = vals.size - p
    return (jnp.sum(jnp.where(pos, ranks, 0.0)) - p * (p + 1) / 2) / (p * neg)


def jacobian_spearman(attr: Float[ArrayLike, "..."], true: Float[ArrayLike, "..."]) -> Float[Array, ""]:
    r"""`spearman(|attr|, |true|)` over all flattened entries (magnitudes only)."""
    attr, true = jnp.asarray(attr), jnp.asarray(true)
    if attr.shape != true.shape:
        raise ValueError(f"attr and true must have the same shape, got {attr.shape} and {true.shape}")
    return spearman(jnp.abs(attr), jnp.abs(true))


class HorizonScores(NamedTuple):
    """The outcome of `score_by_horizon`.

    Per horizon `t` (shape `(T,)`): `auroc` (coupling graph from the
    attribution), `spearman` (attribution against the true Jacobian) and
    `true_auroc` (the graph recovered from the true Jacobian itself: the
    ceiling, which falls with the horizon as indirect coupling fills in).
    Means over `t <= t_train` (`*_inside`) and `t > t_train` (`*_beyond`),
    leaving out horizons where a score is NaN; NaN where a window is empty.
    """

    auroc: Float[Array, " T"]
    spearman: Float[Array, " T"]
    true_auroc: Float[Array, " T"]
    auroc_inside: Float[Array, ""]
    auroc_beyond: Float[Array, ""]
    spearman_inside: Float[Array, ""]
    spearman_beyond: Float[Array, ""]


def _masked_nanmean(v, mask):
    keep = mask & ~jnp.isnan(v)
    return jnp.sum(jnp.where(keep, v, 0.0)) / jnp.sum(keep)


def score_by_horizon(
    attr_jacs: Float[ArrayLike, "T D D"],
    true_jacs: Float[ArrayLike, "T D D"],
    graph: Float[ArrayLike, "n n"],
    ts: Float[ArrayLike, " T"],
    t_train: float,
    *,
    state_layout: str | Sequence[Sequence[int]] = "auto",
) -> HorizonScores:
    r"""Scores attribution matrices against the simulator, horizon by horizon.

    `attr_jacs[t]` is a model's `(D, D)` sensitivity or attribution of the
    state at time `ts[t]` to the initial (or context) state, `true_jacs[t]`
    the simulator's (`true_jacobian`). At each `t`:
    `auroc[t] = coupling_auroc(oscillator_scores(attr_jacs[t]), graph)` and
    `spearman[t] = jacobian_spearman(attr_jacs[t], true_jacs[t])`; their means
    are reported separately inside (`ts <= t_train`) and beyond
    (`ts > t_train`) the training window.
    """
    a, tj = jnp.asarray(attr_jacs), jnp.asarray(true_jacs)
    gr, ts = jnp.asarray(graph), jnp.asarray(ts)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"attr_jacs must have shape (T, D, D), got {a.shape}")
    if tj.shape != a.shape:
        raise ValueError(f"true_jacs must have the shape of attr_jacs {a.shape}, got {tj.shape}")
    if ts.shape != (a.shape[0],):
        raise ValueError(f"ts must have shape ({a.shape[0]},), got {ts.shape}")
    if gr.ndim != 2 or gr.shape[0] != gr.shape[1]:
        raise ValueError(f"graph must be (n, n), got {gr.shape}")
    _check_graph(gr)
    groups = tuple(map(tuple, _layout_groups(state_layout, gr.shape[0], a.shape[1])))
    return _score_by_horizon(a, tj, gr, ts, t_train, groups=groups)


@functools.partial(jax.jit, static_argnames=("groups",))
def _score_by_horizon(a, tj, gr, ts, t_train, *, groups):
    n = gr.shape[0]
    layout = [list(g) for g in groups]

    def one(aj, tjac):
        return (
            _auroc(oscillator_scores(aj, n, state_layout=layout), gr),
            _spearman(jnp.abs(aj), jnp.abs(tjac)),
            _auroc(oscillator_scores(tjac, n, state_layout=layout), gr),
        )

    auroc, rho, true_auroc = jax.vmap(one)(a, tj)
    inside = ts <= t_train
    return HorizonScores(
        auroc=auroc,
        spearman=rho,
        true_auroc=true_auroc,
        auroc_inside=_masked_nanmean(auroc, inside),
        auroc_beyond=_masked_nanmean(auroc, ~inside),
        spearman_inside=_masked_nanmean(rho, inside),
        spearman_beyond=_masked_nanmean(rho, ~inside),
    )
