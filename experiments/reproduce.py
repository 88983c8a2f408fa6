"""Reproductions of the HNN and LNN papers' headline numbers, beside the published figures.

`python -m experiments.reproduce [--preset tiny|quick|full] [--out DIR]` (default `results/<preset>/`)

**HNN (Greydanus, Dzamba and Yosinski 2019): ideal mass-spring and ideal pendulum**, set up as
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
  `weight_decay`), float32.
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

**LNN (Cranmer et al. 2020): double-pendulum energy conservation.** m1 = m2 = l1 = l2 = 1,
g = 9.8. As in the paper's notebooks, training states are drawn uniformly (angles over a full
turn, angular velocities in [-10, 10]) with fresh batches every step, the targets are the
analytic accelerations, the loss is L1, the networks are softplus MLPs (3 hidden layers in the
paper) and Adam runs with a one-cycle schedule (peak 1e-3); the angles are wrapped before they
enter either network. Baseline: an MLP from `(q, q')` to `q''` (`models.SecondOrderNODE`, the
paper's `baseline_eom`); LNN: `models.LNN`. The budget is far below the paper's (600 units,
~300 epochs x 2000 minibatches of 512): each preset states its reduction in the `notes` column.
`energy_error` is the paper's metric: `|E(y_model(T)) - E(y_true(T))| / 29.4` (29.4 = the
largest potential energy) at T = 100, the mean over 40 rollouts from random initial states,
sampled 10 times per unit time as in the paper and integrated with RK4 at h = 0.1 / lnn_substeps
(h = 0.00625 in `full`: the metric's floor with the true field is ~1e-5; the paper used
odeint). `energy_mse` is the mean over rollouts and time of `(E_model - E_true)^2`; `test_loss`
the mean absolute acceleration error on fresh random states (the L1 loss per component);
`energy_error_median` the median over rollouts (the mean is dominated by runaways).

Outputs in `--out`: `reproduce.csv` (one row per task and model, the mean over seeds, with
`*_std` over seeds and the published numbers beside them), `reproduce.md`, `reproduce.json`
(configuration, environment, git commit, per-seed results) and `reproduce_runs.json` (per-seed
results, so that a rerun resumes where it stopped). A rerun skips rows already complete for the
same configuration; every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dynamics
import models
from models._common import integrate

from ._runtime import environment, setup_jax, write_json_atomic, write_text_atomic

TASKS = ("mass_spring", "pendulum", "double_pendulum")
MODELS = {"mass_spring": ("baseline", "HNN"), "pendulum": ("baseline", "HNN"),
          "double_pendulum": ("baseline", "LNN")}
COLUMNS = (
    "task", "model", "test_loss", "energy_mse", "energy_error",
    "published_test_loss", "published_energy_mse", "published_energy_error",
    "test_loss_std", "energy_mse_std", "energy_error_std", "energy_mse_q2p2", "energy_error_median",
    "seeds", "n_params", "train_seconds", "config", "notes",
)
#: the papers' numbers (HNN: README table of greydanus/hamiltonian-nn, single seed, +- standard
#: error over points or rollouts; LNN: the notebooks' outputs, ~0.4 % against ~7-9 %)
PUBLISHED = {
    ("mass_spring", "baseline"): dict(test_loss=3.6656e-02, energy_mse=1.7077e-01),
    ("mass_spring", "HNN"): dict(test_loss=3.5928e-02, energy_mse=3.8416e-04),
    ("pendulum", "baseline"): dict(test_loss=3.5273e-02, energy_mse=4.1519e-02),
    ("pendulum", "HNN"): dict(test_loss=3.5586e-02, energy_mse=2.4852e-02),
    ("double_pendulum", "baseline"): dict(energy_error=0.08),
    ("double_pendulum", "LNN"): dict(energy_error=0.0043),
}
_VERSION = 1  # bump when a change to this file changes the numbers (invalidates stored rows)
MAX_POTENTIAL = 29.4  # (m1 + m2) g l1 + m2 g l2 - the LNN paper's energy scale


# ---------------------------------------------------------------------------------- presets
@dataclasses.dataclass(frozen=True)
class Preset:
    """Budgets of one reproduction run (everything else is the papers' set-up)."""

    name: str
    hnn_steps: int = 2000
    hnn_seeds: tuple[int, ...] = (0, 1, 2)
    hnn_energy_rollouts: int = 15
    lnn_steps: int = 3000
    lnn_batch: int = 128
    lnn_width: int = 64
    lnn_depth: int = 3
    lnn_seeds: tuple[int, ...] = (0, 1)
    lnn_rollouts: int = 40
    lnn_t_end: float = 100.0
    lnn_substeps: int = 16
    lnn_lr: float = 1e-3
    lnn_normalise: bool = False
    time_rescale: bool = True

    def task_config(self, task: str) -> dict:
        keys = (("hnn_steps", "hnn_seeds", "hnn_energy_rollouts", "time_rescale") if task != "double_pendulum"
                else ("lnn_steps", "lnn_batch", "lnn_width", "lnn_depth", "lnn_seeds", "lnn_rollouts",
                      "lnn_t_end", "lnn_substeps", "lnn_lr", "lnn_normalise"))
        return {"task": task, "version": _VERSION, **{k: getattr(self, k) for k in keys}}

    def config_hash(self, task: str) -> str:
        return hashlib.sha256(json.dumps(self.task_config(task), sort_keys=True).encode()).hexdigest()[:12]

    def seeds(self, task: str) -> tuple[int, ...]:
        return self.lnn_seeds if task == "double_pendulum" else self.hnn_seeds

    def notes(self, task: str) -> str:
        if task == "double_pendulum":
            return (f"REDUCED budget: {self.lnn_steps} Adam steps x batch {self.lnn_batch}, "
                    f"{self.lnn_depth}x{self.lnn_width} softplus MLP (paper: ~600k steps x 512, 3x600); "
                    f"{self.lnn_rollouts} rollouts to t={self.lnn_t_end:g} (paper: 40 to t=100)")
        base = "paper set-up" if self.hnn_steps == 2000 else f"REDUCED: {self.hnn_steps} steps (paper 2000)"
        return f"{base}; {len(self.hnn_seeds)} seed(s) (paper: 1); {self.hnn_energy_rollouts} energy rollouts"


PRESETS = {
    "tiny": Preset("tiny", hnn_steps=150, hnn_seeds=(0,), hnn_energy_rollouts=4, lnn_steps=20, lnn_batch=16,
                   lnn_width=8, lnn_depth=2, lnn_seeds=(0,), lnn_rollouts=2, lnn_t_end=2.0, lnn_substeps=1),
    "quick": Preset("quick", hnn_steps=1000, hnn_seeds=(0,), lnn_steps=1000, lnn_batch=128, lnn_width=32,
                    lnn_seeds=(0,), lnn_rollouts=20, lnn_substeps=8),
    "full": Preset("full", hnn_steps=2000, hnn_seeds=(0, 1, 2), lnn_steps=3000, lnn_batch=128, lnn_width=64,
                   lnn_seeds=(0, 1)),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


# ------------------------------------------------------------------ HNN tasks: the systems
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
    return jax.vmap(lambda y: integrate(field, y, n_steps, dt, substeps=substeps))(y0)


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
    return dict(x=flat(noisy[:split]), dx=flat(dx[:split]), test_x=flat(noisy[split:]),
                test_dx=flat(dx[split:]), clean=clean, noisy=noisy, t=ts, y0=y0s, radius=radii)


def hnn_eval_states(seed: int, n: int) -> np.ndarray:
    """The notebooks' rollout starts: each coordinate uniform in +-[0.2, 1.0]."""
    rs = np.random.RandomState(10_000 + seed)
    x0 = rs.rand(n, 2) * 1.6 - 0.8
    return x0 + 0.2 * np.sign(x0)


# -------------------------------------------------------------------------- training loop
def orthogonal_init(mlp, key) -> None:
    """The HNN code's initialisation: orthogonal weight matrices (biases as built: zero)."""
    init = jax.nn.initializers.orthogonal()
    layers = list(mlp.hidden) + [mlp.out]
    for layer, k in zip(layers, jax.random.split(key, len(layers))):
        layer.kernel[...] = init(k, layer.kernel.shape, layer.kernel.dtype)


@functools.partial(jax.jit, static_argnames=("graphdef", "loss_fn", "optimizer"))
def _train_chunk(params, opt_state, rest, keys, batch, *, graphdef, loss_fn, optimizer):
    def one(carry, k):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch, k))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.lax.scan(one, (params, opt_state), keys)


def train(model, loss_fn: Callable, batch, steps: int, optimizer, key, *, chunk: int = 100):
    """Minimises `loss_fn(model, batch, key)` for `steps` Adam steps, `chunk` steps per dispatch.

    `loss_fn` and `optimizer` are static arguments of one module-level jitted function, so
    models of the same structure (other seeds) reuse its compilation. Returns the trained
    model and the loss of every step."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = optimizer.init(params)
    history, done = [], 0
    while done < steps:
        n = min(chunk, steps - done)
        keys = jax.random.split(jax.random.fold_in(key, done), chunk)[:n]
        (params, opt_state), losses = _train_chunk(params, opt_state, rest, keys, batch, graphdef=graphdef,
                                                   loss_fn=loss_fn, optimizer=optimizer)
        history.append(np.asarray(losses))
        done += n
    hist = np.concatenate(history) if history else np.zeros(0)
    if not np.all(np.isfinite(hist)):
        raise FloatingPointError(f"training diverged at step {int(np.argmin(np.isfinite(hist)))}")
    return nnx.merge(graphdef, params, rest), hist


@functools.lru_cache(maxsize=None)
def hnn_optimizer():
    """torch.optim.Adam(lr=1e-3, weight_decay=1e-4): L2 added to the gradient, then Adam."""
    return optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-3))


@functools.lru_cache(maxsize=None)
def lnn_optimizer(steps: int, peak: float = 1e-3):
    """Adam with a one-cycle schedule peaking at `peak` (the LNN notebooks' OneCycleLR, 1e-3)."""
    return optax.adam(optax.cosine_onecycle_schedule(steps, peak_value=peak))


def n_params(model) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


@functools.partial(jax.jit, static_argnames=("graphdef", "field_fn", "n_steps", "substeps"))
def _rollout(state, y0, dt, *, graphdef, field_fn, n_steps, substeps):
    model = nnx.merge(graphdef, state)
    return jax.vmap(lambda y: integrate(field_fn(model), y, n_steps, dt, substeps=substeps))(y0)


def rollout(model, field_fn: Callable, y0: np.ndarray, n_steps: int, dt: float, substeps: int) -> np.ndarray:
    """RK4 rollouts of `field_fn(model)` from each row of `y0`: `(N, n_steps + 1, d)`, with the start."""
    y0 = jnp.asarray(y0, jnp.float32)
    graphdef, state = nnx.split(model)
    ys = _rollout(state, y0, jnp.float32(dt), graphdef=graphdef, field_fn=field_fn, n_steps=n_steps,
                  substeps=substeps)
    return np.concatenate([np.asarray(y0)[:, None], np.asarray(ys)], axis=1).astype(np.float64)


def plain_field(model) -> Callable:
    return model.field


def derivative_mse(model, batch, _key):
    x, dx = batch
    return jnp.mean((jax.vmap(model.field)(x) - dx) ** 2)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _derivative_mse(state, x, dx, *, graphdef):
    return derivative_mse(nnx.merge(graphdef, state), (x, dx), None)


def eval_mse(model, x, dx) -> float:
    graphdef, state = nnx.split(model)
    return float(_derivative_mse(state, x, dx, graphdef=graphdef))


# ----------------------------------------------------------------------------- HNN runs
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
            model = models.HNN(2, width=200, depth=2, objective="derivative", rngs=rngs)
        else:
            model = models.NeuralODE(2, width=200, depth=2, objective="derivative", rngs=rngs)
        orthogonal_init(model.net, jax.random.fold_in(key, 1))

        t0 = time.perf_counter()
        model, hist = train(model, derivative_mse, (x, dx), preset.hnn_steps, hnn_optimizer(), key)
        train_s = time.perf_counter() - t0
        test_loss, train_loss = eval_mse(model, tx, tdx), eval_mse(model, x, dx)
        pred = rollout(model, plain_field, x0, len(t_eval) - 1, dt, substeps)
        e_pred = hnn_energy(task, pred)
        per_rollout = np.mean((e_true - e_pred) ** 2, axis=1)
        # diagnostic: the spring notebook's `energy_loss` compares q^2 + p^2 instead of H
        sq = np.mean(((true**2).sum(-1) - (pred**2).sum(-1)) ** 2, axis=1)
        out[label] = dict(
            test_loss=test_loss, train_loss=train_loss, energy_mse=float(per_rollout.mean()),
            energy_mse_per_rollout=per_rollout.tolist(), energy_mse_q2p2=float(sq.mean()),
            energy_error=float(np.mean(np.abs(e_pred[:, -1] - e_true[:, -1]) / e_true[:, 0])),
            train_seconds=train_s, n_params=n_params(model), final_train_loss_history=float(hist[-1]),
        )
    return out


# --------------------------------------------------------------------- double pendulum
def _wrap(q):
    return (q + jnp.pi) % (2 * jnp.pi) - jnp.pi


def wrapped_field(model) -> Callable:
    """The model's field with the angles wrapped to [-pi, pi) first (the LNN code wraps q)."""
    def field(y):
        return model.field(jnp.concatenate([_wrap(y[:2]), y[2:]]))
    return field


def dp_states(key, n: int):
    """Training/test states as in the LNN notebooks: angles over a full turn, velocities in [-10, 10]."""
    kq, kw = jax.random.split(key)
    q = jax.random.uniform(kq, (n, 2), minval=-jnp.pi, maxval=jnp.pi)
    w = jax.random.uniform(kw, (n, 2), minval=-10.0, maxval=10.0)
    return jnp.concatenate([q, w], axis=-1)


def dp_accelerations(y):
    system = dynamics.DoublePendulum()
    return jax.vmap(lambda s: system.vector_field(0.0, s))(y)[:, 2:]


def dp_l1_loss(model, _batch, key, *, batch_size: int):
    """The LNN notebooks' objective: L1 error of the accelerations at fresh random states."""
    y = dp_states(key, batch_size)
    return jnp.mean(jnp.abs(jax.vmap(wrapped_field(model))(y)[:, 2:] - dp_accelerations(y)))


@functools.lru_cache(maxsize=None)
def dp_loss(batch_size: int) -> Callable:
    return functools.partial(dp_l1_loss, batch_size=batch_size)  # cached: one compilation per size


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _dp_test_loss(state, *, graphdef):
    model = nnx.merge(graphdef, state)
    y = dp_states(jax.random.key(99_999), 4096)
    return jnp.mean(jnp.abs(jax.vmap(wrapped_field(model))(y)[:, 2:] - dp_accelerations(y)))


def dp_eval_states(seed: int, n: int) -> np.ndarray:
    """Rollout starts: at rest, angles uniform in [-3pi/4, 3pi/4] (covers the LNN code's
    default start (3pi/7, 3pi/4, 0, 0)); energies between -29.4 and ~+17."""
    rs = np.random.RandomState(20_000 + seed)
    q = rs.uniform(-0.75 * np.pi, 0.75 * np.pi, (n, 2))
    return np.concatenate([q, np.zeros((n, 2))], axis=-1)


def run_dp(label: str, seed: int, preset: Preset) -> dict:
    system = dynamics.DoublePendulum()
    rngs = nnx.Rngs(seed)
    cls = models.LNN if label == "LNN" else models.SecondOrderNODE
    model = cls(4, width=preset.lnn_width, depth=preset.lnn_depth, objective="derivative", rngs=rngs)
    key = jax.random.key(1000 + seed)
    if preset.lnn_normalise:  # the standard deviations of the uniform training distribution
        model.std.value = jnp.asarray([np.pi, np.pi, 10.0, 10.0], jnp.float32) / np.sqrt(3.0)

    t0 = time.perf_counter()
    optimizer = lnn_optimizer(preset.lnn_steps, preset.lnn_lr)
    model, hist = train(model, dp_loss(preset.lnn_batch), None, preset.lnn_steps, optimizer, key)
    train_s = time.perf_counter() - t0
    test_loss = float(_dp_test_loss(nnx.split(model)[1], graphdef=nnx.split(model)[0]))

    y0 = dp_eval_states(seed, preset.lnn_rollouts)
    n_steps = int(round(preset.lnn_t_end * 10))  # 10 frames per unit time, as in the paper
    # the true energy is conserved exactly: E_true(t) = E(y0) (the paper took it from an odeint solve)
    t1 = time.perf_counter()
    pred = rollout(model, wrapped_field, y0, n_steps, 0.1, preset.lnn_substeps)
    rollout_s = time.perf_counter() - t1
    with jax.enable_x64(True):
        e_true = np.asarray(system.energy(jnp.asarray(y0, jnp.float64)))[:, None]
        e_pred = np.asarray(system.energy(jnp.asarray(pred, jnp.float64)))
    finite = np.all(np.isfinite(e_pred), axis=1)
    err_t = np.abs(e_pred - e_true) / MAX_POTENTIAL
    return dict(
        test_loss=test_loss, final_train_loss=float(hist[-100:].mean()),
        energy_error=float(np.mean(err_t[:, -1])) if finite.all() else float("nan"),
        energy_error_median=float(np.median(err_t[:, -1])),
        energy_error_time_mean=float(np.mean(err_t)),
        energy_mse=float(np.mean((e_pred - e_true) ** 2)), n_nonfinite_rollouts=int((~finite).sum()),
        train_seconds=train_s, rollout_seconds=rollout_s, n_params=n_params(model),
    )


def integrator_floor(preset: Preset) -> float:
    """The same RK4 rollouts with the true double-pendulum field in float32: the metric's floor."""
    system = dynamics.DoublePendulum()
    y0 = dp_eval_states(0, preset.lnn_rollouts)
    n_steps = int(round(preset.lnn_t_end * 10))
    y0j = jnp.asarray(y0, jnp.float32)
    ys = jax.jit(jax.vmap(lambda y: integrate(lambda s: system.vector_field(0.0, s), y, n_steps, 0.1,
                                              substeps=preset.lnn_substeps)))(y0j)
    pred = np.concatenate([y0[:, None], np.asarray(ys, np.float64)], axis=1)
    with jax.enable_x64(True):
        e = np.asarray(system.energy(jnp.asarray(pred, jnp.float64)))
        e0 = np.asarray(system.energy(jnp.asarray(y0, jnp.float64)))
    return float(np.mean(np.abs(e[:, -1] - e0)) / MAX_POTENTIAL)


# ----------------------------------------------------------------------------- results
def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _cell(column: str, value):
    if value is None:
        return ""
    optional = column in ("energy_mse_q2p2", "energy_error_median")
    if optional and isinstance(value, float) and not math.isfinite(value):
        return ""  # not defined for this task
    return value


def write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]), r["model"] != "baseline")):
        w.writerow({k: _cell(k, r.get(k)) for k in COLUMNS})
    write_text_atomic(path, buf.getvalue())


def _stat(values):
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0 or not np.all(np.isfinite(v)):
        return float("nan"), float("nan")
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else float("nan"))


def aggregate(task: str, label: str, per_seed: dict[int, dict], preset: Preset) -> dict:
    pub = PUBLISHED.get((task, label), {})
    row = dict(task=task, model=label, seeds=";".join(str(s) for s in sorted(per_seed)),
               config=preset.config_hash(task), notes=preset.notes(task))
    for m in ("test_loss", "energy_mse", "energy_error"):
        row[m], row[m + "_std"] = _stat(r.get(m) for r in per_seed.values())
        row["published_" + m] = pub.get(m)
    row["energy_mse_q2p2"] = _stat(r.get("energy_mse_q2p2") for r in per_seed.values())[0]
    row["energy_error_median"] = _stat(r.get("energy_error_median") for r in per_seed.values())[0]
    row["n_params"] = next(iter(per_seed.values()))["n_params"]
    row["train_seconds"] = _stat(r["train_seconds"] for r in per_seed.values())[0]
    if task == "double_pendulum":
        bad = sum(r.get("n_nonfinite_rollouts", 0) for r in per_seed.values())
        if bad:
            row["notes"] += f"; {bad} rollout(s) blew up (non-finite energy)"
    return row


def _fmt(x, digits=3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if not np.isfinite(x) else f"{x:.{digits}g}"


def summary_markdown(rows: list[dict], preset: Preset, extra: dict) -> str:
    lines = [
        f"# Reproductions of the HNN and LNN papers (preset `{preset.name}`)", "",
        "| task | model | test loss | published | energy MSE | published | energy error | published | seeds | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]), r["model"] != "baseline")):
        def cell(m):
            s = _fmt(r.get(m))
            sd = _fmt(r.get(m + "_std"), 2)
            return s if sd == "-" else f"{s} ± {sd}"
        lines.append(
            f"| {r['task']} | {r['model']} | {cell('test_loss')} | {_fmt(r.get('published_test_loss'))} | "
            f"{cell('energy_mse')} | {_fmt(r.get('published_energy_mse'))} | {cell('energy_error')} | "
            f"{_fmt(r.get('published_energy_error'))} | {r['seeds']} | {r['notes']} |")
    lines += [
        "",
        "Mean ± standard deviation over seeds. HNN tasks: `test loss` = MSE of the predicted "
        "derivatives on the 25 test trajectories; `energy MSE` = the notebooks' metric (15 rollouts "
        "over t in [0, 20], mean over time of the squared error of the code's H); `energy error` "
        "= relative error of H at t = 20 (no published counterpart). Double pendulum: `test loss` = "
        "mean absolute acceleration error on random states; `energy error` = the LNN paper's "
        "|E_model(T) - E_true(T)| / 29.4 at T = 100, mean over rollouts; `energy MSE` = mean over "
        "rollouts and time of (E_model - E_true)^2 (no published counterpart).",
        "",
        "Deviations from the papers: the HNN's MLP has a scalar output (theirs had two and used "
        "one); biases start at zero (torch's default is uniform); training in JAX float32 rather than "
        "PyTorch float32; data from float64 RK4 (h <= 1e-3) instead of `solve_ivp` (rtol 1e-10); rollouts "
        "with fixed-step RK4 (h ~ 0.01) instead of adaptive RK45 (rtol 1e-12). The rollout starts of "
        "the energy metric are drawn from a seeded generator (the notebooks used the global NumPy "
        "state). Double pendulum: the angles are wrapped to [-pi, pi) (the LNN code wraps to "
        "[0, 2pi), which puts the chart's cut at the hanging position); rollout starts at rest "
        "with angles in [-3pi/4, 3pi/4] (the paper does not state its 40 starts); a reduced "
        "training budget; the project's LNN solves with a Tikhonov-regularised inverse Hessian "
        "(eps 1e-3) instead of `pinv`; lecun-normal rather than the paper's tuned initialisation.",
    ]
    q2 = {f"{r['task']}/{r['model']}": r.get("energy_mse_q2p2") for r in rows if r["task"] != "double_pendulum"}
    if any(_fmt(v) != "-" for v in q2.values()):
        lines += ["", "Diagnostic (`energy_mse_q2p2` in the csv): the same rollouts scored with the spring "
                      "notebook's `energy_loss`, which compares q^2 + p^2 rather than H (the same thing for the "
                      "spring; for the pendulum q^2 + p^2 is not conserved, so it also counts phase errors): "
                  + "; ".join(f"{k} {_fmt(v)}" for k, v in q2.items()) + "."]
    dp = {r["model"]: r.get("energy_error_median") for r in rows if r["task"] == "double_pendulum"}
    if dp:
        lines += ["", "Double pendulum, median over rollouts of the final energy error (the mean is dominated "
                      "by rollouts that run away): " + "; ".join(f"{k} {_fmt(v)}" for k, v in dp.items()) + ". "
                      "At these CPU budgets both networks are far from the paper's accuracy (acceleration L1 "
                      "error ~10-20 per component against ~0.04 in the LNN baseline notebook). In a check of the "
                      "`full` preset's LNN (seed 0) the learned d2L/dq'2 had a non-positive eigenvalue at 84% of "
                      "random training states and at all 40 rollout starts (the true one is positive definite), "
                      "so the learned energy is unbounded and the LNN's rollouts run away within ~2-20 time "
                      "units: the LNN's energy conservation does not reproduce at this budget."]
    if "integrator_floor" in extra:
        lines += ["", f"RK4 floor of the double-pendulum metric (true field, same grid, float32): "
                      f"{extra['integrator_floor']:.2e}."]
    if extra.get("seed0"):
        lines += ["", "Seed 0 alone (its data set is the authors' own: same generator, same draws), "
                      "test loss / energy MSE: " + "; ".join(f"{k} {_fmt(a)} / {_fmt(b)}"
                                                             for k, (a, b) in sorted(extra["seed0"].items())) + "."]
    if "wall_seconds" in extra:
        lines += ["", f"Training time summed over the runs: {extra.get('train_seconds_total', 0):.0f} s; wall time "
                      f"of the last invocation: {extra['wall_seconds']:.0f} s (reruns skip finished runs)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- driver
def run(preset: Preset, out: Path, *, tasks=TASKS, force: bool = False, log=print) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, runs_path = out / "reproduce.csv", out / "reproduce_runs.json"
    rows = {(r["task"], r["model"]): r for r in read_rows(csv_path)}
    runs = json.loads(runs_path.read_text()) if runs_path.exists() and not force else {}
    extra: dict = {}
    wall0 = time.perf_counter()

    def save():
        write_rows(csv_path, list(rows.values()))
        write_json_atomic(runs_path, runs)
        write_json_atomic(out / "reproduce.json", {
            "preset": dataclasses.asdict(preset), "tasks": list(tasks),
            "task_configs": {t: preset.task_config(t) for t in TASKS},
            "config_hashes": {t: preset.config_hash(t) for t in TASKS},
            "environment": environment(), "published": {f"{t}/{m}": v for (t, m), v in PUBLISHED.items()},
            "runs": runs, **extra})
        write_text_atomic(out / "reproduce.md", summary_markdown(list(rows.values()), preset, extra))

    for task in tasks:
        cfg = preset.config_hash(task)
        labels = MODELS[task]
        keys = {(label, seed): f"{task}/{label}/{seed}/{cfg}" for label in labels for seed in preset.seeds(task)}
        if not force and not all(k in runs for k in keys.values()) and all(
                rows.get((task, m), {}).get("config") == cfg for m in labels):
            log(f"[reproduce] {task}: complete for this configuration, skipped")  # rows kept as they are
            continue
        if not force and all(k in runs for k in keys.values()):
            log(f"[reproduce] {task}: complete for this configuration, skipped")  # rows re-derived below
        for seed in preset.seeds(task):
            if task == "double_pendulum":
                for label in labels:
                    k = keys[(label, seed)]
                    if k not in runs:
                        log(f"[reproduce] {task} {label} seed {seed} ...")
                        runs[k] = run_dp(label, seed, preset)
                        shown = ("test_loss", "energy_error", "energy_error_median", "train_seconds")
                        log(f"[reproduce]   {json.dumps({m: runs[k][m] for m in shown})}")
                        save()
            elif not all(keys[(label, seed)] in runs for label in labels):
                log(f"[reproduce] {task} seed {seed} ...")
                res = run_hnn_task(task, seed, preset)
                for label in labels:
                    runs[keys[(label, seed)]] = res[label]
                    log(f"[reproduce]   {label}: test_loss {res[label]['test_loss']:.4e} "
                        f"energy_mse {res[label]['energy_mse']:.4e} ({res[label]['train_seconds']:.1f} s)")
                save()
        for label in labels:
            per_seed = {s: runs[keys[(label, s)]] for s in preset.seeds(task)}
            rows[(task, label)] = aggregate(task, label, per_seed, preset)
        if task == "double_pendulum":
            fk = f"integrator_floor/{cfg}"
            if fk not in runs:
                runs[fk] = integrator_floor(preset)
            extra["integrator_floor"] = runs[fk]
        save()
    current = {preset.config_hash(t) for t in TASKS}
    extra["train_seconds_total"] = sum(v.get("train_seconds", 0.0) for k, v in runs.items()
                                       if isinstance(v, dict) and k.rsplit("/", 1)[-1] in current)
    extra["seed0"] = {k.rsplit("/", 2)[0]: (v["test_loss"], v["energy_mse"]) for k, v in runs.items()
                      if isinstance(v, dict) and k.rsplit("/", 1)[-1] in current and k.split("/")[2] == "0"
                      and not k.startswith("double_pendulum")}
    extra["wall_seconds"] = time.perf_counter() - wall0
    save()
    return list(rows.values())


@dataclasses.dataclass
class Args:
    """Reproduces the HNN paper's mass-spring and pendulum table and the LNN double-pendulum energy error."""

    preset: Literal["tiny", "quick", "full"] = "quick"
    """tiny (tests, seconds), quick (~1-2 min on a laptop CPU) or full (the paper's HNN set-up, several seeds)"""
    out: Path | None = None
    """output directory (default results/<preset>/)"""
    tasks: tuple[Literal["mass_spring", "pendulum", "double_pendulum"], ...] = TASKS
    """which reproductions to run"""
    force: bool = False
    """recompute rows that are already complete"""
    time_rescale: bool = True
    """stretch the learned fields' rollout time by 1 + 0.9 * noise_std, as the HNN notebooks did"""


def main(argv=None) -> list[dict]:
    import tyro

    args = tyro.cli(Args, args=argv)
    preset = get_preset(args.preset)  # fails before any work for an unknown preset
    if not args.time_rescale:
        preset = dataclasses.replace(preset, time_rescale=False)
    setup_jax()  # the shared compilation cache ...
    jax.config.update("jax_enable_x64", False)  # ... but the papers trained in float32; data are made in float64
    out = args.out or Path("results") / preset.name
    rows = run(preset, out, tasks=args.tasks, force=args.force)
    print(summary_markdown(rows, preset, {}))
    print(f"[reproduce] wrote {out / 'reproduce.csv'}, {out / 'reproduce.md'}, {out / 'reproduce.json'}")
    return rows


if __name__ == "__main__":
    main()
