"""Benchmark sections for the learners: an LSTM training step against PyTorch, LSTM ensembles,
and HNN ensembles against separate fits. Each returns a JSON-ready dict of measured numbers."""

from __future__ import annotations

import statistics
import time
from pathlib import Path


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


def _jax_lstm_step(hidden, batch, seq, channels, members=1, call="batch", steps_per_call=1):
    """A jitted teacher-forced training step (Adam) of `models.LSTM` through its `__call__`;
    `members > 1` trains that many LSTMs at once (vmap over stacked parameters; `fit` runs a
    single model the same way, as one member). `call="batch"`: the batch `(B, T, d)` in one
    call (one time-major scan, as `LSTM.loss` runs it); `"vmap"`: `jax.vmap` over sequences.
    `steps_per_call > 1` runs that many steps per compiled call under `lax.scan`, as
    `models.fit` runs its chunks (then XLA allocates the call's temporary memory once for all
    of them).

    Returns `run()` (one call, blocking), the compile time, and `state()`: the current
    `(params, opt_state)`."""
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

    def steps(p, s, x):
        if steps_per_call == 1:
            return step(p, s, x)

        def body(carry, _):
            p, s = carry
            p, s, loss_value = step(p, s, x)
            return (p, s), loss_value

        (p, s), losses = jax.lax.scan(body, (p, s), None, length=steps_per_call)
        return p, s, losses[-1]

    if members == 1:  # one LSTM: no member axis at all, as `fit` runs one model

        def single(p, s, x):
            sq = lambda t: jax.tree.map(lambda a: a[0], t)  # noqa: E731
            return jax.tree.map(lambda a: a[None], steps(sq(p), sq(s), x[0]))

        fn = jax.jit(single)
    else:
        fn = jax.jit(jax.vmap(steps))
    t0 = time.perf_counter()
    compiled = fn.lower(params, opt_state, xs).compile()
    compile_s = time.perf_counter() - t0
    state = [params, opt_state]

    def run():
        p, s, loss_value = compiled(state[0], state[1], xs)
        jax.block_until_ready(loss_value)
        state[0], state[1] = p, s

    run()
    return run, compile_s, lambda: tuple(state)


def _torch_device() -> str:
    """`"cuda"` (cuDNN's LSTM) where JAX itself runs on a GPU and torch sees one, else `"cpu"`
    (oneDNN): the peer runs on the device the project's own numbers come from."""
    import jax
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_lstm_step(hidden, batch, seq, channels, device="cpu"):
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(channels, hidden, batch_first=True).to(device)
    head = torch.nn.Linear(hidden, channels).to(device)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
    xs = torch.randn(batch, seq + 1, channels, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        opt.zero_grad(set_to_none=True)
        out, _ = lstm(xs[:, :-1])
        pred = xs[:, :-1] + head(out)
        loss = torch.mean((pred - xs[:, 1:]) ** 2)
        loss.backward()
        opt.step()
        sync()

    run()
    return run


def _torch_or_none():
    """The `torch` module, or None where it is not installed (`make bench` installs it): the
    JAX side of the LSTM sections still runs and is reported alone."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def lstm_step(*, hidden=128, batch=64, seq=200, channels=8, repeats=20, steps_per_call=10) -> dict:
    """One LSTM training step against `torch.nn.LSTM` of the same sizes (oneDNN on the CPU,
    cuDNN where JAX runs on a GPU).

    JAX runs the batch through `LSTM.__call__` in one call (`jax_step_seconds`), vmapped over
    sequences (`jax_vmap_step_seconds`), and `steps_per_call` steps per compiled call under
    `lax.scan`, as `models.fit` runs them (`jax_fit_chunk_step_seconds`, per step). On the
    CPU, torch runs with as many threads as CPUs and with one thread; `speedup_*` are against
    the faster of the two (on a loaded machine, oneDNN's spinning threads can make the
    many-thread run far slower). All runs are interleaved; medians over `repeats`. Without
    torch installed, the JAX numbers are reported alone.

    Where the step's temporary memory is larger than glibc's largest heap block (32 MiB by
    default), every call maps fresh memory and page-faults it in: both frameworks pay for it
    per call, a `fit` chunk once per chunk. `lstm_step_heap_reuse` measures the same step with
    freed memory kept in the heap."""
    import os

    torch = _torch_or_none()
    jax_run, compile_s, _ = _jax_lstm_step(hidden, batch, seq, channels)
    jax_vmap_run, _, _ = _jax_lstm_step(hidden, batch, seq, channels, call="vmap")
    fit_run, _, _ = _jax_lstm_step(hidden, batch, seq, channels, steps_per_call=steps_per_call)
    nothing = lambda: None  # noqa: E731
    runs = {
        "jax": (nothing, jax_run),
        "jax_vmap": (nothing, jax_vmap_run),
        "jax_fit_chunk": (nothing, fit_run),
    }
    out: dict = {
        "sizes": {"hidden": hidden, "batch": batch, "seq": seq, "channels": channels},
        "steps_per_call": steps_per_call,
        "repeats": repeats,
        "jax_compile_seconds": compile_s,
        "goal": ">= 1.0",
    }
    if torch is not None:
        device = _torch_device()
        torch_run = _torch_lstm_step(hidden, batch, seq, channels, device)
        n_cpu = max(1, os.cpu_count() or 1)
        threads = lambda n: lambda: torch.set_num_threads(n)  # noqa: E731
        runs["torch"] = (threads(n_cpu), torch_run)
        if device == "cpu":
            runs["torch_1"] = (threads(1), torch_run)
        out.update(torch_version=torch.__version__, torch_device=device, torch_threads=n_cpu)
    for setup, fn in runs.values():  # warm-up (torch: both thread pools)
        setup()
        fn()
    t = _interleaved_medians(runs, repeats)
    t["jax_fit_chunk"] /= steps_per_call
    out.update(
        jax_step_seconds=t["jax"],
        jax_vmap_step_seconds=t["jax_vmap"],
        jax_fit_chunk_step_seconds=t["jax_fit_chunk"],
    )
    if torch is not None:
        torch.set_num_threads(out["torch_threads"])
        t_torch = min(t["torch"], t.get("torch_1", t["torch"]))
        out.update(
            torch_step_seconds=t["torch"],
            speedup_vs_torch=t_torch / t["jax"],
            speedup_vmap_vs_torch=t_torch / t["jax_vmap"],
            speedup_fit_chunk_vs_torch=t_torch / t["jax_fit_chunk"],
        )
        if "torch_1" in t:
            out["torch_1_thread_step_seconds"] = t["torch_1"]
    return out


#: glibc's malloc settings under which freed memory stays in the heap: no block is ever
#: mapped fresh (and page-faulted in) or returned to the system.
HEAP_REUSE_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def lstm_step_heap_reuse(*, hidden=128, batch=64, seq=200, channels=8, repeats=20) -> dict:
    """`lstm_step` rerun in a fresh process whose glibc keeps freed memory in the heap
    (`HEAP_REUSE_ENV`): the same comparison without the page faults of freshly mapped memory,
    for both frameworks alike (the setting is process-wide). Linux (glibc) only."""
    import json
    import os
    import platform
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "experiments.benchmarks", "--sections", "lstm_step"]
        cmd += ["--out", tmp, "--repeats", str(repeats)]
        cmd += ["--lstm-sizes", *map(str, (hidden, batch, seq, channels))]
        proc = subprocess.run(
            cmd, env={**os.environ, **HEAP_REUSE_ENV}, capture_output=True, text=True
        )
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        res = json.loads((Path(tmp) / "benchmarks.json").read_text())["sections"]["lstm_step"]
    res.pop("environment", None)
    # the variables are glibc's: elsewhere they change nothing and this repeats `lstm_step`
    return {"malloc_env": HEAP_REUSE_ENV, "glibc": platform.libc_ver()[0] == "glibc", **res}


def lstm_ensemble(
    *, members=8, hidden=128, batch=64, seq=200, channels=8, repeats=5, steps_per_call=4
) -> dict:
    """`members` LSTMs trained at once (vmap over stacked parameters) against `torch.nn.LSTM`
    training them one after another: throughput in member-steps per second. JAX runs one step
    per call and `steps_per_call` per call (`fit`'s chunks; per step)."""
    torch = _torch_or_none()
    jax_run, compile_s, _ = _jax_lstm_step(hidden, batch, seq, channels, members=members)
    chunk_run, _, _ = _jax_lstm_step(
        hidden, batch, seq, channels, members=members, steps_per_call=steps_per_call
    )
    nothing = lambda: None  # noqa: E731
    runs = {"jax": (nothing, jax_run), "jax_fit_chunk": (nothing, chunk_run)}
    if torch is not None:
        torch_run = _torch_lstm_step(hidden, batch, seq, channels, _torch_device())
        runs["torch"] = (nothing, lambda: [torch_run() for _ in range(members)])
    t = _interleaved_medians(runs, repeats)
    out = {
        "members": members,
        "steps_per_call": steps_per_call,
        "jax_seconds_all_members": t["jax"],
        "jax_fit_chunk_seconds_all_members": t["jax_fit_chunk"] / steps_per_call,
        "jax_compile_seconds": compile_s,
        "goal": ">= 1.0 (CPU)",
    }
    if torch is not None:
        out["torch_seconds_all_members_in_turn"] = t["torch"]
        out["throughput_ratio_vs_torch"] = t["torch"] / t["jax"]
        out["throughput_ratio_fit_chunk_vs_torch"] = (
            t["torch"] / out["jax_fit_chunk_seconds_all_members"]
        )
    return out


def lstm_ensemble_scaling(
    *, members=(1, 2, 4, 8), hidden=128, batch=64, seq=200, channels=8, repeats=3
) -> dict:
    """Throughput of `m` LSTMs trained at once (vmap over stacked parameters) as `m` grows:
    member-steps per second, and that throughput relative to one member's (where the list
    starts at one). On a GPU the
    default list runs to 1,024 members; a size that does not fit in the device's memory is
    recorded as such and ends the list."""
    rows = []
    for m in members:
        try:
            run, compile_s, _ = _jax_lstm_step(hidden, batch, seq, channels, members=m)
            t = _median_time(run, repeats)
        except Exception as e:  # XLA's RESOURCE_EXHAUSTED comes as a runtime error
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            rows.append({"members": m, "error": "out of memory"})
            break
        rows.append(
            {
                "members": m,
                "seconds_per_step": t,
                "member_steps_per_second": m / t,
                "compile_seconds": compile_s,
            }
        )
    base = rows[0].get("member_steps_per_second") if rows[0]["members"] == 1 else None
    for r in rows:
        if base and "member_steps_per_second" in r:
            r["throughput_vs_one_member"] = r["member_steps_per_second"] / base
    return {
        "sizes": {"hidden": hidden, "batch": batch, "seq": seq, "channels": channels},
        "rows": rows,
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
