"""Benchmark sections for the learners: an LSTM training step against PyTorch, LSTM ensembles,
and HNN ensembles against separate fits. Each returns a JSON-ready dict of measured numbers."""

from __future__ import annotations

import statistics
import time


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved_medians(runs: dict, repeats: int) -> dict:
    """Median wall time of each `setup, fn = runs[name]` (only `fn` timed), the runs taken in
    turn, so that load from other processes falls on all of them alike."""
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, (setup, fn) in runs.items():
            setup()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _jax_lstm_step(hidden, batch, seq, channels, members=1, call="batch"):
    """A jitted teacher-forced training step (Adam) of `models.LSTM` through its `__call__`;
    `members > 1` trains that many LSTMs at once (vmap over stacked parameters; `fit` runs a
    single model the same way, as one member). `call="batch"`: the batch `(B, T, d)` in one
    call (one time-major scan, as `LSTM.loss` runs it); `"vmap"`: `jax.vmap` over sequences."""
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
        pred = model(x[:, :-1]) if call == "batch" else jax.vmap(model)(x[:, :-1])
        return jnp.mean((pred - x[:, 1:]) ** 2)

    def step(p, s, x):
        loss_value, g = jax.value_and_grad(loss)(p, x)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss_value

    if members == 1:  # one LSTM: no member axis at all, as `fit` runs one model

        def single(p, s, x):
            sq = lambda t: jax.tree.map(lambda a: a[0], t)  # noqa: E731
            return jax.tree.map(lambda a: a[None], step(sq(p), sq(s), x[0]))

        fn = jax.jit(single)
    else:
        fn = jax.jit(jax.vmap(step))
    t0 = time.perf_counter()
    compiled = fn.lower(params, opt_state, xs).compile()
    compile_s = time.perf_counter() - t0
    state = [params, opt_state]

    def run():
        p, s, loss_value = compiled(state[0], state[1], xs)
        jax.block_until_ready(loss_value)
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


def lstm_step(*, hidden=128, batch=64, seq=200, channels=8, repeats=20) -> dict:
    """One LSTM training step against `torch.nn.LSTM` (oneDNN on the CPU) of the same sizes.

    JAX runs the batch through `LSTM.__call__` in one call (`jax_step_seconds`) and, for
    comparison, vmapped over sequences (`jax_vmap_step_seconds`). Torch runs with as many
    threads as CPUs and with one thread; `speedup_vs_torch` is against the faster of the two
    (on a loaded machine, oneDNN's spinning threads can make the many-thread run far slower).
    All runs are interleaved; medians over `repeats`."""
    import os

    import torch

    n_cpu = max(1, os.cpu_count() or 1)
    jax_run, compile_s = _jax_lstm_step(hidden, batch, seq, channels)
    jax_vmap_run, _ = _jax_lstm_step(hidden, batch, seq, channels, call="vmap")
    torch_run = _torch_lstm_step(hidden, batch, seq, channels)
    threads = lambda n: lambda: torch.set_num_threads(n)  # noqa: E731
    runs = {
        "jax": (lambda: None, jax_run),
        "jax_vmap": (lambda: None, jax_vmap_run),
        "torch": (threads(n_cpu), torch_run),
        "torch_1": (threads(1), torch_run),
    }
    for setup, fn in runs.values():  # warm-up (torch: both thread pools)
        setup()
        fn()
    t = _interleaved_medians(runs, repeats)
    t_torch_best = min(t["torch"], t["torch_1"])
    torch.set_num_threads(n_cpu)
    return {
        "sizes": {"hidden": hidden, "batch": batch, "seq": seq, "channels": channels},
        "jax_step_seconds": t["jax"],
        "jax_vmap_step_seconds": t["jax_vmap"],
        "torch_step_seconds": t["torch"],
        "torch_1_thread_step_seconds": t["torch_1"],
        "jax_compile_seconds": compile_s,
        "speedup_vs_torch": t_torch_best / t["jax"],
        "speedup_vmap_vs_torch": t_torch_best / t["jax_vmap"],
        "torch_version": torch.__version__,
        "torch_threads": n_cpu,
        "repeats": repeats,
        "goal": ">= 1.0",
    }


def lstm_ensemble(*, members=8, hidden=128, batch=64, seq=200, channels=8, repeats=5) -> dict:
    """`members` LSTMs trained at once (vmap over stacked parameters) against `torch.nn.LSTM`
    training them one after another: throughput in member-steps per second."""
    jax_run, compile_s = _jax_lstm_step(hidden, batch, seq, channels, members=members)
    torch_run = _torch_lstm_step(hidden, batch, seq, channels)
    t_jax = _median_time(jax_run, repeats)
    t_torch = _median_time(torch_run, repeats) * members
    return {
        "members": members,
        "jax_seconds_all_members": t_jax,
        "torch_seconds_all_members_in_turn": t_torch,
        "throughput_ratio_vs_torch": t_torch / t_jax,
        "jax_compile_seconds": compile_s,
        "goal": ">= 1.0 (CPU)",
    }


def hnn_ensemble(*, members=32, width=64, steps=200) -> dict:
    """`fit_ensemble` of `members` HNNs against `members` separate `fit` calls, compilation
    included, for each ensemble strategy."""
    import jax
    from flax import nnx

    import dynamics
    import models

    system = dynamics.CoupledPendulums(omega=[1.0, 1.1], coupling=dynamics.chain_coupling(2, 0.2))
    ds = dynamics.make_dataset(
        system,
        key=jax.random.key(0),
        n_train=16,
        n_val=4,
        n_test=2,
        dt=0.1,
        t_train=5.0,
        t_end=10.0,
    )
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
        out[f"speedup_{strategy}"] = (
            out["separate_fits_seconds"] / out[f"fit_ensemble_{strategy}_seconds"]
        )
    out["goal"] = "fit_ensemble never slower than separate fits on the CPU (default strategy)"
    out["default_strategy"] = "map" if jax.default_backend() == "cpu" else "vmap"
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(lstm_step(), indent=2))


def ig_memory(*, steps=1000, seq=200, hidden=128, channels=8, chunk_sizes=(16, 64, 1000)) -> dict:
    """Peak temporary memory of the compiled integrated-gradients program on an LSTM over
    `seq`-step sequences with `steps` path steps, for several chunk sizes (XLA's own memory
    analysis of the compiled program; `chunk_size = steps` is the unchunked baseline)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import models
    from models import attribution as A

    lstm = models.LSTM(channels, hidden=hidden, rngs=nnx.Rngs(0))
    lstm.dt = 0.05
    xs = jax.random.normal(jax.random.key(0), (seq, channels), jnp.float32)
    fn = lambda x: lstm(x)[-1, 0]  # noqa: E731
    out = {"steps": steps, "seq": seq, "hidden": hidden, "method": "gausslegendre"}
    for c in chunk_sizes:
        f = jax.jit(lambda x, c=c: A.integrated_gradients(fn, x, steps=steps, chunk_size=c))
        mem = f.lower(xs).compile().memory_analysis()
        out[f"temp_bytes_chunk_{c}"] = (
            int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else None
        )
    return out


def study_wall_time(*, preset="quick") -> dict:
    """The quick study's wall time from a cold compilation cache and again from a warm one
    (fresh output directories both times, so everything is recomputed)."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    out = {"preset": preset}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(Path(tmp) / "cache"))
        for run in ("cold_cache", "warm_cache"):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "experiments.study",
                    "--preset",
                    preset,
                    "--out",
                    str(Path(tmp) / run),
                    "--figures",
                    str(Path(tmp) / f"fig_{run}"),
                    "--no-progress",
                ],
                check=True,
                env=env,
                capture_output=True,
            )
            out[f"{run}_seconds"] = time.perf_counter() - t0
    return out
