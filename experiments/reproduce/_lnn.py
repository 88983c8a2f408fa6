"""**LNN (Cranmer et al. 2020): double-pendulum energy conservation.** m1 = m2 = l1 = l2 = 1,
g = 9.8. As in the paper's notebooks, training states are drawn uniformly (angles in [0, 2pi),
angular velocities in [-10, 10]) with fresh batches every step, the targets are the analytic
accelerations, the loss is L1, the LNN is a softplus MLP (3 hidden layers in the paper) and the
baseline, an MLP from `(q, q')` to `q''` (`models.SecondOrderNODE`, the paper's
`baseline_eom`), a ReLU one; Adam runs with a one-cycle schedule (peak 1e-3); the angles are
wrapped to [-pi, pi) before they enter either network. Both are trained by `models.fit` without
data (`dataset=None`): the loss `dp_loss(batch)` draws its states from the key `fit` hands it at
each step. The budget is far below the paper's (600 units, ~300 epochs x 2000 minibatches of
512): each preset states its reduction in the `notes` column. Ours, not the paper's: the inputs
scaled by the training distribution's standard deviations (`lnn_normalise`), the gradients
clipped (`lnn_grad_clip`), and the LNN's kinetic prior and relative Tikhonov threshold
(`models.LNN`, `lnn_eps`).

`energy_error` is the paper's metric: `|E(y_model(T)) - E(y_true(T))| / 29.4` (29.4 = the
largest potential energy) at T = 100, the mean over 40 rollouts from the notebook's kind of
start (angles uniform in [0, 2pi), velocities uniform in [0, 0.1)), sampled 10 times per unit
time as in the paper and integrated with RK4 at h = 0.1 / lnn_substeps (h = 0.00625 in `full`:
the metric's floor with the true field is ~1e-5; the paper used odeint). `energy_mse` is the
mean over rollouts and time of `(E_model - E_true)^2`; `test_loss` the mean absolute
acceleration error on fresh random states (the L1 loss per component); `energy_error_median`
the median over rollouts (the mean is dominated by runaways).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dynamics
import models

from ._common import n_params, rollout
from ._presets import Preset

MAX_POTENTIAL = 29.4  # (m1 + m2) g l1 + m2 g l2 - the LNN paper's energy scale


def _wrap(q):
    return (q + jnp.pi) % (2 * jnp.pi) - jnp.pi


def wrapped_field(model) -> Callable:
    """The model's field with the angles wrapped to [-pi, pi) first (the LNN code wraps q)."""

    def field(y):
        return model.field(jnp.concatenate([_wrap(y[:2]), y[2:]]))

    return field


def dp_states(key, n: int):
    """Training/test states as in the LNN notebooks (`get_derivative_dataset`): angles uniform
    in [0, 2pi), angular velocities uniform in [-10, 10]."""
    kq, kw = jax.random.split(key)
    q = jax.random.uniform(kq, (n, 2), minval=0.0, maxval=2 * jnp.pi)
    w = jax.random.uniform(kw, (n, 2), minval=-10.0, maxval=10.0)
    return jnp.concatenate([q, w], axis=-1)


def dp_accelerations(y):
    system = dynamics.DoublePendulum()
    return jax.vmap(lambda s: system.vector_field(0.0, s))(y)[:, 2:]


def dp_l1_loss(model, batch, key, *, batch_size: int):
    """The LNN notebooks' objective: L1 error of the accelerations at `batch_size` fresh random
    states drawn from `key` (the `loss` of `models.fit`; `batch` is None: there are no data)."""
    del batch
    y = dp_states(key, batch_size)
    return jnp.mean(jnp.abs(jax.vmap(wrapped_field(model))(y)[:, 2:] - dp_accelerations(y)))


@functools.cache
def dp_loss(batch_size: int) -> Callable:
    """`dp_l1_loss` for one batch size; cached, so that `models.fit` compiles once per size."""
    return functools.partial(dp_l1_loss, batch_size=batch_size)


@functools.cache
def lnn_optimizer(
    steps: int, peak: float = 1e-3, clip: float = 1.0
) -> optax.GradientTransformation:
    """Adam with a one-cycle schedule peaking at `peak` (the LNN notebooks' OneCycleLR, 1e-3),
    after clipping the gradients to global norm `clip` (`inf`: none, as in the notebooks).

    The clipping is ours: without it, near the schedule's peak, the LNN's loss jumped from 12 to
    38 and stayed at the level of predicting no acceleration (width 128, batch 256, 2000
    steps); the notebooks instead skipped non-finite updates and restarted unlucky seeds."""
    adam = optax.adam(optax.cosine_onecycle_schedule(steps, peak_value=peak))
    return adam if math.isinf(clip) else optax.chain(optax.clip_by_global_norm(clip), adam)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _dp_test_loss(state, *, graphdef):
    model = nnx.merge(graphdef, state)
    y = dp_states(jax.random.key(99_999), 4096)
    return jnp.mean(jnp.abs(jax.vmap(wrapped_field(model))(y)[:, 2:] - dp_accelerations(y)))


def dp_eval_states(seed: int, n: int) -> np.ndarray:
    """Rollout starts as in the LNN notebook's energy cell (`new_get_dataset`): angles uniform
    in [0, 2pi), angular velocities uniform in [0, 0.1) (nearly at rest; energies between
    -29.4 and +29.4). Drawn from a seeded NumPy generator (the notebook used
    `jax.random.PRNGKey(i)`, i = 0..39)."""
    rs = np.random.RandomState(20_000 + seed)
    q = rs.uniform(0.0, 2 * np.pi, (n, 2))
    w = rs.uniform(0.0, 0.1, (n, 2))
    return np.concatenate([q, w], axis=-1)


def run_dp(label: str, seed: int, preset: Preset) -> dict:
    system = dynamics.DoublePendulum()
    rngs = nnx.Rngs(seed)
    kw = dict(width=preset.lnn_width, depth=preset.lnn_depth, objective="derivative", rngs=rngs)
    if label == "LNN":
        model = models.LNN(4, eps=preset.lnn_eps, **kw)
    else:  # the baseline notebook's MLP is a ReLU network ('relu_relu')
        model = models.SecondOrderNODE(4, linear=False, **kw)  # the paper's plain MLP
        model.net.activation = jax.nn.relu
    key = jax.random.key(1000 + seed)
    if preset.lnn_normalise:  # the standard deviations of the uniform training distribution
        model.std[...] = jnp.asarray([np.pi, np.pi, 10.0, 10.0], jnp.float32) / np.sqrt(3.0)

    t0 = time.perf_counter()
    model, history = models.fit(
        model,
        None,
        key=key,
        steps=preset.lnn_steps,
        eval_every=100,
        optimizer=lnn_optimizer(preset.lnn_steps, preset.lnn_lr, preset.lnn_grad_clip),
        loss=dp_loss(preset.lnn_batch),
        progress=False,
    )
    train_s = time.perf_counter() - t0
    graphdef, state = nnx.split(model)
    test_loss = float(_dp_test_loss(state, graphdef=graphdef))

    y0 = dp_eval_states(seed, preset.lnn_rollouts)
    n_steps = int(round(preset.lnn_t_end * 10))  # 10 frames per unit time, as in the paper
    # the true energy is conserved exactly: E_true(t) = E(y0) (the paper took it from an odeint
    # solve)
    t1 = time.perf_counter()
    pred = rollout(model, wrapped_field, y0, n_steps, 0.1, preset.lnn_substeps)
    rollout_s = time.perf_counter() - t1
    with jax.enable_x64(True):
        e_true = np.asarray(system.energy(jnp.asarray(y0, jnp.float64)))[:, None]
        e_pred = np.asarray(system.energy(jnp.asarray(pred, jnp.float64)))
    finite = np.all(np.isfinite(e_pred), axis=1)
    # a rollout that ran away (non-finite energy) has an infinite error: the median stays
    # defined while fewer than half run away; the mean is reported as nan (see the notes)
    err_t = np.where(np.isfinite(e_pred), np.abs(e_pred - e_true) / MAX_POTENTIAL, np.inf)
    return dict(
        test_loss=test_loss,
        final_train_loss=history[-1]["train_loss"],  # mean over the last (up to) 100 steps
        energy_error=float(np.mean(err_t[:, -1])) if finite.all() else float("nan"),
        energy_error_median=float(np.median(err_t[:, -1])),
        energy_error_time_mean=float(np.mean(err_t)) if finite.all() else float("nan"),
        energy_mse=float(np.mean((e_pred - e_true) ** 2)) if finite.all() else float("nan"),
        n_nonfinite_rollouts=int((~finite).sum()),
        train_seconds=train_s,
        rollout_seconds=rollout_s,
        n_params=n_params(model),
    )


def integrator_floor(preset: Preset) -> float:
    """The same RK4 rollouts with the true double-pendulum field in float32: the metric's floor."""
    system = dynamics.DoublePendulum()
    y0 = dp_eval_states(0, preset.lnn_rollouts)
    n_steps = int(round(preset.lnn_t_end * 10))
    y0j = jnp.asarray(y0, jnp.float32)
    ys = jax.jit(
        jax.vmap(
            lambda y: models.integrate(
                lambda s: system.vector_field(0.0, s), y, n_steps, 0.1, substeps=preset.lnn_substeps
            )
        )
    )(y0j)
    pred = np.concatenate([y0[:, None], np.asarray(ys, np.float64)], axis=1)
    with jax.enable_x64(True):
        e = np.asarray(system.energy(jnp.asarray(pred, jnp.float64)))
        e0 = np.asarray(system.energy(jnp.asarray(y0, jnp.float64)))
    return float(np.mean(np.abs(e[:, -1] - e0)) / MAX_POTENTIAL)
