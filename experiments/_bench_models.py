"""Benchmark sections for the learners: an LSTM training step against PyTorch, LSTM ensembles,
and HNN ensembles against separate fits. Each returns a JSON-ready dict of measured numbers."""

from __future__ import annotations

import statistics
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _jax_lstm_step(hidden, batch, seq, channels, members=1):
    """A jitted teacher-forced training step (Adam) of `models.LSTM` through its `__call__`;
    `members > 1` trains that many LSTMs at once (vmap over stacked parameters)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import models

    def make(seed):
        m = models.LSTM(channels, hidden=hidden, rngs=nnx.Rngs(seed))
        m.dt = 0.05
        return nnx.split(m, nnx.Param, ...)

    splits = [make(s) for s in range(members)]
    graphdef = splits[0][0]
    params = jax.tree.map(lambda *x: jnp.stack(x), *[s[1] for s in splits])
    rest = splits[0][2]
    opt = optax.adam(1e-3)
    opt_state = jax.vmap(opt.init)(params)
    xs = jax.random.normal(jax.random.key(0), (members, batch, seq + 1, channels), jnp.float32)

    def loss(p, x):
        model = nnx.merge(graphdef, p, rest)
        pred = jax.vmap(model)(x[:, :-1])
        return jnp.mean((pred - x[:, 1:]) ** 2)

    def step(p, s, x):
        l, g = jax.value_and_grad(loss)(p, x)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, l

    fn = jax.jit(jax.vmap(step))
    t0 = time.perf_counter()
    compiled = fn.lower(params, opt_state, xs).compile()
    compile_s = time.perf_counter() - t0
    state = [params, opt_state]

    def run():
        p, s, l = compiled(state[0], state[1], xs)
        jax.block_until_ready(l)
        state[0], state[1] = p, s

    run()
    return run, compile_s


def _torch_lstm_step(hidden, batch, seq, channels):
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(channels, hidden, batch_first=True)
    head = torch.nn.Linear(hidden, channels)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
    xs = torch.randn(batch, seq + 1, channels)

    def run():
        opt.zero_grad(set_to_none=True)
        out, _ = lstm(xs[:, :-1])
        pred = xs[:, :-1] + head(out)
        loss = torch.mean((pred - xs[:, 1:]) ** 2)
        loss.backward()
        opt.step()

    run()
    return run


def lstm_step(*, hidden=128, batch=64, seq=200, channels=8, repeats=10) -> dict:
    """One LSTM training step against `torch.nn.LSTM` (oneDNN on the CPU) of the same sizes."""
    import torch

    torch.set_num_threads(max(1, __import__("os").cpu_count() or 1))
    jax_run, compile_s = _jax_lstm_step(hidden, batch, seq, channels)
    torch_run = _torch_lstm_step(hidden, batch, seq, channels)
    t_jax = _median_time(jax_run, repeats)
    t_torch = _median_time(torch_run, repeats)
    return {
        "sizes": {"hidden": hidden, "batch": batch, "seq": seq, "channels": channels},
        "jax_step_seconds": t_jax, "torch_step_seconds": t_torch, "jax_compile_seconds": compile_s,
        "speedup_vs_torch": t_torch / t_jax, "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "goal": ">= 1.0",
    }


def lstm_ensemble(*, members=8, hidden=128, batch=64, seq=200, channels=8, repeats=5) -> dict:
    """`members` LSTMs trained at once (vmap over stacked parameters) against `torch.nn.LSTM`
    training them one after another: throughput in member-steps per second."""
    jax_run, compile_s = _jax_lstm_step(hidden, batch, seq, channels, members=members)
    torch_run = _torch_lstm_step(hidden, batch, seq, channels)
    t_jax = _median_time(jax_run, repeats)
    t_torch = _median_time(torch_run, repeats) * members
    return {
        "members": members, "jax_seconds_all_members": t_jax, "torch_seconds_all_members_in_turn": t_torch,
        "throughput_ratio_vs_torch": t_torch / t_jax, "jax_compile_seconds": compile_s, "goal": ">= 1.0 (CPU)",
    }


def hnn_ensemble(*, members=32, width=64, steps=200) -> dict:
    """`fit_ensemble` of `members` HNNs against `members` separate `fit` calls, compilation
    included, for each ensemble strategy."""
    import jax
    from flax import nnx

    import dynamics
    import models

    system = dynamics.CoupledPendulums(omega=[1.0, 1.1], coupling=dynamics.chain_coupling(2, 0.2))
    ds = dynamics.make_dataset(system, key=jax.random.key(0), n_train=16, n_val=4, n_test=2,
                               dt=0.1, t_train=5.0, t_end=10.0)
    keys = [jax.random.key(i) for i in range(members)]
    make = lambda rngs: models.HNN(ds.state_dim, width=width, depth=2, rngs=rngs)  # noqa: E731
    kw = dict(steps=steps, batch_size=32, lr=1e-3, eval_every=steps, progress=False)
    out = {"members": members, "width": width, "steps": steps}
    t0 = time.perf_counter()
    for k in keys:
        models.fit(make(nnx.Rngs(k)), ds, key=k, **kw)
    out["separate_fits_seconds"] = time.perf_counter() - t0
    for strategy in ("map", "vmap"):
        t0 = time.perf_counter()
        models.fit_ensemble(make, ds, keys=keys, strategy=strategy, **kw)
        out[f"fit_ensemble_{strategy}_seconds"] = time.perf_counter() - t0
        out[f"speedup_{strategy}"] = out["separate_fits_seconds"] / out[f"fit_ensemble_{strategy}_seconds"]
    out["goal"] = "fit_ensemble never slower than separate fits on the CPU (default strategy)"
    out["default_strategy"] = "map" if jax.default_backend() == "cpu" else "vmap"
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(lstm_step(), indent=2))
