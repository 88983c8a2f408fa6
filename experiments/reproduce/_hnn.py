"""**HNN (Greydanus, Dzamba and Yosinski 2019): ideal mass-spring and ideal pendulum**, set up as
the authors' *code* did (`experiment-spring/data.py`, `experiment-pend/data.py`, `train.py` and
the `analyze-*.ipynb` notebooks); where the paper text says otherwise, the code wins:

- Hamiltonians: spring `H = q^2 + p^2` (the paper writes `q^2/2 + p^2/2`, i.e. the code has
  k = 2, m = 1/2); pendulum `H = 3(1 - cos q) + p^2` (the paper: m = l = 1, g = 3, which
  would be `p^2/2`).
- 50 trajectories, the first 25 for training and the last 25 for testing, each from a random
  direction in the `(q, p)` plane at a radius drawn from U[0.1, 1.0] (spring; the paper says
  "energies in [0.2, 1]") or U[1.3, 2.3] (pendulum); `t` in [0, 3] at 30 (spring) or 45
  (pendulum) points; Gaussian noise of std 0.1 added to q and p. The random draws follow the
  code's order with `np.random.RandomState(seed)`, so seed 0 reproduces their data set up to the
  ODE solver's error (they used `solve_ivp`, rtol 1e-10; here RK4 in float64 with h <= 1e-3).
- Targets: the noise-free analytic time derivatives at the noise-free states (the noise is on the
  inputs only), as their code did.
- Models: an MLP 2 -> 200 -> 200 -> out (tanh, orthogonal weight initialisation; the paper calls
  it three layers). Baseline: the MLP predicts `(q', p')` (`models.NeuralODE`); HNN: the MLP is
  `H` and the field its symplectic gradient (`models.HNN`). Normalisation statistics stay at
  0/1. 2000 full-batch Adam steps, lr 1e-3, L2 weight decay 1e-4 (torch's coupled
  `weight_decay`), float32, trained by `models.fit` on the full batch `(x, dx)` with
  `loss=derivative_mse` and `optimizer=hnn_optimizer()`.
- `test_loss`: MSE of the predicted derivatives on the 25 test trajectories.
- `energy_mse`: as in the notebooks: 15 initial states with each coordinate uniform in
  +-[0.2, 1.0] (note: lower energies than the pendulum's training radii), the true and the
  learned fields integrated over t in [0, 20] and compared at 100 times; per rollout the mean
  over time of `(H(x_true(t)) - H(x_model(t)))^2` with the code's `H`; the mean over rollouts.
  The learned fields are integrated with RK4 (h ~ 0.01) on a time axis stretched by
  `1 + 0.9 * 0.1` ("rescale time to compensate for noise effects, as described in appendix",
  the notebook's `integrate_models`); `--no-time-rescale` turns that off.
- `energy_error` (no published counterpart): `|H(x_model(20)) - H(x_true(20))| / H(x_0)`, mean
  over rollouts. `energy_mse_q2p2`: the same rollouts scored with the spring notebook's
  `energy_loss`, which compares `q^2 + p^2` (for the pendulum not conserved, so phase errors
  count): it matches the published pendulum HNN figure, which suggests that the pendulum
  notebook reused that function.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dynamics
import models

from ._common import n_params, rollout
from ._presets import MODELS, Preset


def _spring_h(q, p):
    return jnp.sum(q**2 + p**2)


def _pendulum_h(q, p):
    return jnp.sum(3.0 * (1.0 - jnp.cos(q)) + p**2)


HNN_TASKS = {
    # name: (code's Hamiltonian, radius range, time span, samples per trajectory)
    "mass_spring": dict(h=_spring_h, radius=(0.1, 1.0), t_span=(0.0, 3.0), timescale=10),
    "pendulum": dict(h=_pendulum_h, radius=(1.3, 2.3), t_span=(0.0, 3.0), timescale=15),
}
NOISE_STD = 0.1


def hnn_energy(task: str, y):
    """The code's Hamiltonian of states `(..., 2)` (float64 numpy in, numpy out)."""
    y = np.asarray(y)
    q, p = y[..., 0], y[..., 1]
    return q**2 + p**2 if task == "mass_spring" else 3.0 * (1.0 - np.cos(q)) + p**2


@functools.partial(jax.jit, static_argnames=("task", "n_steps", "substeps"))
def _solve_rk4(y0, dt, *, task, n_steps, substeps):
    system = dynamics.HamiltonianSystem(HNN_TASKS[task]["h"], 1)
    field = functools.partial(system.vector_field, 0.0)
    return jax.vmap(lambda y: models.integrate(field, y, n_steps, dt, substeps=substeps))(y0)


def _solve(task: str, y0: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """True trajectories `(N, T, 2)` on the uniform grid `ts`, in float64: classical RK4 with steps
    of at most 1e-3 (global error ~1e-12 here; the code used `solve_ivp` with rtol 1e-10)."""
    dt = float(ts[1] - ts[0])
    if not np.allclose(np.diff(ts), dt):
        raise ValueError("_solve needs a uniform time grid")
    with jax.enable_x64(True):
        y0 = jnp.asarray(y0, jnp.float64)
        ys = _solve_rk4(y0, dt, task=task, n_steps=len(ts) - 1, substeps=int(math.ceil(dt / 1e-3)))
        return np.concatenate([np.asarray(y0)[:, None], np.asarray(ys)], axis=1)


def hnn_true_field(task: str, y: np.ndarray) -> np.ndarray:
    """`(q', p') = (dH/dp, -dH/dq)` of the code's Hamiltonian, for states `(..., 2)`."""
    q, p = y[..., 0], y[..., 1]
    dp = -2.0 * q if task == "mass_spring" else -3.0 * np.sin(q)
    return np.stack([2.0 * p, dp], axis=-1)


def hnn_dataset(task: str, seed: int, *, samples: int = 50, test_split: float = 0.5) -> dict:
    """The HNN code's data set: `samples` noisy trajectories, the first half for training.

    Returns `x`, `dx` (train inputs and targets, `(N*T, 2)`), `test_x`, `test_dx`, and for
    inspection `clean` (`(samples, T, 2)`, noise-free), `noisy`, `t`, `y0` and `radius`.
    """
    spec = HNN_TASKS[task]
    t0, t1 = spec["t_span"]
    n_t = int(spec["timescale"] * (t1 - t0))
    ts = np.linspace(t0, t1, n_t)
    rs = np.random.RandomState(seed)  # the code's draws, in the code's order
    y0s, radii, noise = [], [], []
    lo, hi = spec["radius"]
    for _ in range(samples):
        y0 = rs.rand(2) * 2 - 1
        radius = rs.rand() * (hi - lo) + lo
        y0s.append(y0 / np.sqrt((y0**2).sum()) * radius)
        radii.append(radius)
        noise.append(np.stack([rs.randn(n_t), rs.randn(n_t)], axis=-1) * NOISE_STD)
    y0s, radii, noise = np.array(y0s), np.array(radii), np.array(noise)
    clean = _solve(task, y0s, ts)
    noisy = clean + noise
    dx = hnn_true_field(task, clean)  # targets: noise-free derivatives at the noise-free states
    split = int(samples * test_split)
    flat = lambda a: a.reshape(-1, 2)  # noqa: E731
    return dict(
        x=flat(noisy[:split]),
        dx=flat(dx[:split]),
        test_x=flat(noisy[split:]),
        test_dx=flat(dx[split:]),
        clean=clean,
        noisy=noisy,
        t=ts,
        y0=y0s,
        radius=radii,
    )


def hnn_eval_states(seed: int, n: int) -> np.ndarray:
    """The notebooks' rollout starts: each coordinate uniform in +-[0.2, 1.0]."""
    rs = np.random.RandomState(10_000 + seed)
    x0 = rs.rand(n, 2) * 1.6 - 0.8
    return x0 + 0.2 * np.sign(x0)


# ------------------------------------------------------------------------------ training
def orthogonal_init(mlp: models.MLP, key) -> None:
    """The HNN code's initialisation: orthogonal weight matrices (biases as built: zero)."""
    init = jax.nn.initializers.orthogonal()
    layers = list(mlp.hidden) + [mlp.out]
    for layer, k in zip(layers, jax.random.split(key, len(layers))):
        layer.kernel[...] = init(k, layer.kernel.shape, layer.kernel.dtype)


@functools.cache
def hnn_optimizer() -> optax.GradientTransformation:
    """torch.optim.Adam(lr=1e-3, weight_decay=1e-4): L2 added to the gradient, then Adam.
    Cached: one object, so that every seed reuses `models.fit`'s compilation."""
    return optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-3))


def derivative_mse(model, batch, key=None):
    """The HNN code's objective: MSE of the field at the inputs against the target derivatives
    (the `loss` of `models.fit` on the full batch `(x, dx)`; the key is unused)."""
    del key
    x, dx = batch
    return jnp.mean((jax.vmap(model.field)(x) - dx) ** 2)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _derivative_mse(state, x, dx, *, graphdef):
    return derivative_mse(nnx.merge(graphdef, state), (x, dx))


def eval_mse(model, x, dx) -> float:
    graphdef, state = nnx.split(model)
    return float(_derivative_mse(state, x, dx, graphdef=graphdef))


def plain_field(model):
    return model.field


def run_hnn_task(task: str, seed: int, preset: Preset) -> dict[str, dict]:
    """Trains the baseline and the HNN on one seed's data set; metrics per model."""
    data = hnn_dataset(task, seed)
    x, dx = jnp.asarray(data["x"], jnp.float32), jnp.asarray(data["dx"], jnp.float32)
    tx, tdx = jnp.asarray(data["test_x"], jnp.float32), jnp.asarray(data["test_dx"], jnp.float32)
    x0 = hnn_eval_states(seed, preset.hnn_energy_rollouts)
    t_eval = np.linspace(0.0, 20.0, 100)
    true = _solve(task, x0, t_eval)
    e_true = hnn_energy(task, true)
    stretch = 1.0 + 0.9 * NOISE_STD if preset.time_rescale else 1.0
    dt = (t_eval[1] - t_eval[0]) * stretch
    substeps = max(1, int(math.ceil(dt / 0.01)))
    out = {}
    for label in MODELS[task]:
        key = jax.random.key(seed)
        rngs = nnx.Rngs(seed)
        if label == "HNN":
            model = models.HNN(
                2, width=200, depth=2, objective="derivative", quadratic=False, rngs=rngs
            )
        else:
            model = models.NeuralODE(
                2, width=200, depth=2, objective="derivative", linear=False, rngs=rngs
            )
        orthogonal_init(model.net, jax.random.fold_in(key, 1))

        t0 = time.perf_counter()
        model, history = models.fit(
            model,
            (x, dx),
            key=key,
            steps=preset.hnn_steps,
            eval_every=100,
            optimizer=hnn_optimizer(),
            loss=derivative_mse,
            progress=False,
        )
        train_s = time.perf_counter() - t0
        test_loss, train_loss = eval_mse(model, tx, tdx), eval_mse(model, x, dx)
        pred = rollout(model, plain_field, x0, len(t_eval) - 1, dt, substeps)
        e_pred = hnn_energy(task, pred)
        per_rollout = np.mean((e_true - e_pred) ** 2, axis=1)
        # diagnostic: the spring notebook's `energy_loss` compares q^2 + p^2 instead of H
        sq = np.mean(((true**2).sum(-1) - (pred**2).sum(-1)) ** 2, axis=1)
        out[label] = dict(
            test_loss=test_loss,
            train_loss=train_loss,
            energy_mse=float(per_rollout.mean()),
            energy_mse_per_rollout=per_rollout.tolist(),
            energy_mse_q2p2=float(sq.mean()),
            energy_error=float(np.mean(np.abs(e_pred[:, -1] - e_true[:, -1]) / e_true[:, 0])),
            train_seconds=train_s,
            n_params=n_params(model),
            final_train_loss=history[-1]["train_loss"],  # mean over the last (up to) 100 steps
        )
    return out
