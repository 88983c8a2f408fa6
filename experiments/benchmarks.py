"""Benchmarks: how fast the exact simulators are, against the obvious alternatives.

Run with `python -m experiments.benchmarks`. Every section is one function
`bench_<name>(args) -> dict` registered in `SECTIONS`; its result is merged
into `<out>/benchmarks.json` under `"sections"/<name>`, so a run of one section
never clobbers the stored results of another. The file's structure is

    {"environment": {...}, "sections": {"simulate": {...}, ...}}

**Section `simulate`.** `dynamics.simulate` (diffrax Tsit5, JIT-compiled and
vmapped over a batch of initial states) against `scipy.integrate.solve_ivp`
on the same problem at the same tolerances: 4 pendulums on a chain, `t` in
`[0, 40]` sampled at 801 times, `rtol = atol = 1e-8`, float64 on both sides.
Compilation is timed separately and excluded; the batched solve is timed with
`jax.block_until_ready`. Timing runs in interleaved rounds (each round times
every contender once, so that load from other work hits all of them alike);
the medians over rounds are reported. `solve_ivp` gets one call
per initial state with a vectorised NumPy right-hand side (the fastest way to
use it; the same field, checked against `system.vector_field`), with RK45 (the
same order as Tsit5) and DOP853; it is timed on a subset of the states and
reported per trajectory. Both sides report their step counts, so the speed-up
can be read as work per step times number of steps. On a GPU (or with
`--large-batch N` anywhere) it also times one large batch.

**The learners' sections** (`experiments._bench_models`): `lstm_step` (one
LSTM training step through `model(batch)`, through `jax.vmap(model)` and as
`fit` runs it, several steps per call, against `torch.nn.LSTM`: oneDNN on the
CPU, cuDNN where JAX runs on a GPU), `lstm_step_heap_reuse` (the same in a
process whose glibc keeps freed memory), `lstm_ensemble` (8 LSTMs at once
against 8 torch steps in turn), `lstm_ensemble_scaling` (throughput as the
number of members grows, to 1,024 on a GPU), `hnn_ensemble`, `ig_memory` and
`study` (the quick study's wall time). Without torch installed, the LSTM
sections report JAX alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import dynamics
from dynamics import _simulate

from . import _bench_models


# ---------------------------------------------------------------------- helpers
def environment() -> dict:
    """Versions, device and machine: enough to tell whether two runs are comparable."""
    import diffrax
    import equinox
    import jaxlib

    try:
        import scipy

        scipy_version = scipy.__version__
    except ImportError:  # pragma: no cover
        scipy_version = None
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "diffrax": diffrax.__version__,
        "equinox": equinox.__version__,
        "scipy": scipy_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '?')}",
        "n_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "eqx_on_error": os.environ.get("EQX_ON_ERROR", ""),
        # other work on the machine inflates timings: record how busy it was
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `fn` (which must block until its work is done)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


# ------------------------------------------------------------ section: simulate
def _pendulum_problem(n: int = 4, kappa: float = 0.5, seed: int = 0):
    """The benchmark problem: `n` pendulums on a chain, frequencies drawn once from a seeded RNG."""
    rng = np.random.default_rng(seed)
    omega = rng.uniform(0.8, 1.2, n)
    return dynamics.CoupledPendulums(omega, dynamics.chain_coupling(n, kappa))


def _numpy_field(system: dynamics.CoupledPendulums) -> Callable:
    """`system.vector_field` in plain NumPy (what a careful scipy user would write)."""
    omega2 = np.asarray(system.omega) ** 2
    k = np.asarray(system.coupling)
    lap = np.diag(k.sum(axis=1)) - k
    n = omega2.shape[0]

    def f(t, y):
        q, p = y[:n], y[n:]
        return np.concatenate([p, -omega2 * np.sin(q) - lap @ q])

    return f


def bench_simulate(args: argparse.Namespace) -> dict:
    """`dynamics.simulate` against `scipy.integrate.solve_ivp` on the same problem, both in
    float64."""
    x64 = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        return _bench_simulate(args)
    finally:
        jax.config.update("jax_enable_x64", x64)


def _bench_simulate(args: argparse.Namespace) -> dict:
    from scipy.integrate import solve_ivp

    rtol = atol = 1e-8
    t_end, n_times = 40.0, 801
    batch, n_scipy = args.batch, args.scipy_subset
    system = _pendulum_problem()
    ts = jnp.linspace(0.0, t_end, n_times)
    ts_np = np.asarray(ts)
    y0 = system.sample_initial_states(jax.random.key(args.seed), batch)
    y0_np = np.asarray(y0)

    f_np = _numpy_field(system)
    probe = y0_np[0]
    if not np.allclose(
        f_np(0.0, probe), np.asarray(system.vector_field(0.0, probe)), rtol=1e-13, atol=1e-13
    ):
        raise AssertionError("the NumPy right-hand side disagrees with system.vector_field")

    def run_jax(y, solver="tsit5"):
        return jax.block_until_ready(
            dynamics.simulate(system, y, ts, rtol=rtol, atol=atol, solver=solver)
        )

    subset = y0_np[:n_scipy]

    def run_scipy(method):
        return [
            solve_ivp(f_np, (0.0, t_end), y, method=method, t_eval=ts_np, rtol=rtol, atol=atol)
            for y in subset
        ]

    # Tsit5 (order 5, the default) and Dopri8 (order 8): the same orders as RK45 and DOP853.
    solvers = {"tsit5": ("Tsit5", 6), "dopri8": ("Dopri8", 12)}  # FSAL: new evaluations per step
    methods = ("RK45", "DOP853")
    compile_s, outs = {}, {}
    for solver in solvers:
        t0 = time.perf_counter()
        outs[solver] = run_jax(y0, solver)  # compiles
        compile_s[solver] = time.perf_counter() - t0
    sols = {m: run_scipy(m) for m in methods}  # warm-up, and the solutions to compare
    for m, ss in sols.items():
        if not all(sol.success for sol in ss):
            raise RuntimeError(f"solve_ivp({m}) failed on the benchmark problem")

    # Interleaved rounds: every round times each contender once, so that a change in the
    # machine's load hits all of them alike; per-round ratios are reported besides the medians.
    times: dict[str, list[float]] = {k: [] for k in (*solvers, *methods)}
    for _ in range(args.repeats):
        for solver in solvers:
            times[solver] += _time(lambda: run_jax(y0, solver), 1)
        for m in methods:
            times[m] += _time(lambda: run_scipy(m), 1)
    per_traj = {k: [t / (batch if k in solvers else n_scipy) for t in v] for k, v in times.items()}

    rows = {}
    for solver, (label, stages) in solvers.items():
        steps = _simulate.num_steps(system, y0, ts, rtol=rtol, atol=atol, solver=solver)
        rows[solver] = {
            "solver": f"diffrax.{label} + PIDController, vmapped, jit",
            "compile_s": compile_s[solver],
            **_summary(times[solver]),
            "per_trajectory_s": statistics.median(per_traj[solver]),
            "steps_mean": float(steps.mean()),
            "steps_max": int(steps.max()),
            "fevals_per_trajectory_approx": float(stages * steps.mean()),
            "max_abs_difference_to_tsit5": float(jnp.max(jnp.abs(outs[solver] - outs["tsit5"]))),
        }
    ys = outs["tsit5"]
    result: dict = {
        "problem": {
            "system": "CoupledPendulums",
            "n_oscillators": system.n_oscillators,
            "omega": np.asarray(system.omega).tolist(),
            "coupling": "chain, kappa=0.5",
            "t_span": [0.0, t_end],
            "n_times": n_times,
            "rtol": rtol,
            "atol": atol,
            "batch": batch,
            "dtype": str(ys.dtype),
            "rounds": args.repeats,
        },
        "simulate": rows["tsit5"],
        "simulate_dopri8": rows["dopri8"],
        "scipy": {},
    }
    for m in methods:
        # accepted steps: a run without t_eval returns every step's endpoint
        accepted = [
            len(solve_ivp(f_np, (0.0, t_end), y, method=m, rtol=rtol, atol=atol).t) - 1
            for y in subset
        ]
        ratios = {s: [a / b for a, b in zip(per_traj[m], per_traj[s])] for s in solvers}
        result["scipy"][m] = {
            "n_trajectories_timed": n_scipy,
            **_summary(times[m]),
            "per_trajectory_s": statistics.median(per_traj[m]),
            "nfev_mean": float(np.mean([sol.nfev for sol in sols[m]])),
            "accepted_steps_mean": float(np.mean(accepted)),
            "max_abs_difference_to_simulate": float(
                max(np.max(np.abs(sol.y.T - np.asarray(ys[i]))) for i, sol in enumerate(sols[m]))
            ),
            # solve_ivp time per trajectory / simulate's: the ratio of medians, and the per-round
            # ratios
            "speedup_of_simulate": statistics.median(per_traj[m])
            / rows["tsit5"]["per_trajectory_s"],
            "speedup_of_simulate_dopri8": statistics.median(per_traj[m])
            / rows["dopri8"]["per_trajectory_s"],
            "speedup_of_simulate_per_round": ratios["tsit5"],
            "speedup_of_simulate_dopri8_per_round": ratios["dopri8"],
        }

    big = args.large_batch or (args.gpu_batch if jax.default_backend() == "gpu" else None)
    if big:
        yb = system.sample_initial_states(jax.random.key(args.seed + 1), big)
        t0 = time.perf_counter()
        run_jax(yb)
        big_compile = time.perf_counter() - t0
        big_times = _time(lambda: run_jax(yb), max(3, args.repeats // 2))
        result["large_batch"] = {
            "backend": jax.default_backend(),
            "batch": big,
            "compile_s": big_compile,
            **_summary(big_times),
            "trajectories_per_s": big / statistics.median(big_times),
        }
    return result


def _print_simulate(res: dict) -> None:
    p = res["problem"]
    print(
        f"\n== simulate: {p['n_oscillators']} pendulums, t in {p['t_span']}, "
        f"{p['n_times']} samples, "
        f"rtol=atol={p['rtol']:g}, {p['dtype']}, simulate batch {p['batch']}"
    )
    print("steps: simulate counts accepted + rejected steps, solve_ivp accepted steps only;")
    print(
        "speed-up: solve_ivp time per trajectory / simulate (Tsit5) time, and / simulate (Dopri8)"
    )
    print(
        f"{'method':<26}{'per traj (ms)':>14}{'steps':>8}{'nfev':>8}"
        f"{'vs Tsit5':>10}{'vs Dopri8':>10}"
    )
    for name, key in (("simulate Tsit5", "simulate"), ("simulate Dopri8", "simulate_dopri8")):
        s = res[key]
        print(
            f"{name:<26}{1e3 * s['per_trajectory_s']:>14.3f}{s['steps_mean']:>8.0f}"
            f"{s['fevals_per_trajectory_approx']:>8.0f}{'':>10}{'':>10}"
        )
    for m, r in res["scipy"].items():
        print(
            f"{'solve_ivp ' + m:<26}{1e3 * r['per_trajectory_s']:>14.3f}"
            f"{r['accepted_steps_mean']:>8.0f}{r['nfev_mean']:>8.0f}"
            f"{r['speedup_of_simulate']:>9.1f}x{r['speedup_of_simulate_dopri8']:>9.1f}x"
        )
    print(
        f"compile (excluded above): Tsit5 {res['simulate']['compile_s']:.2f} s, "
        f"Dopri8 {res['simulate_dopri8']['compile_s']:.2f} s"
    )
    if "large_batch" in res:
        g = res["large_batch"]
        print(f"{g['backend']}, batch {g['batch']}: {g['trajectories_per_s']:.0f} trajectories/s")


def _print_generic(name: str, res: dict, prefix: str = "") -> None:
    """Prints a section's numbers as `key: value` lines (for sections without their own table)."""
    if not prefix:
        print(f"\n== {name}")
    for k, v in res.items():
        if isinstance(v, dict):
            _print_generic(name, v, prefix=f"{prefix}{k}.")
        elif isinstance(v, float):
            print(f"{prefix}{k}: {v:.4g}")
        elif isinstance(v, list) and all(isinstance(r, dict) for r in v):
            for i, r in enumerate(v):
                _print_generic(name, r, prefix=f"{prefix}{k}[{i}].")
        elif not isinstance(v, list):
            print(f"{prefix}{k}: {v}")


def _lstm_sizes(args: argparse.Namespace) -> dict:
    return dict(zip(("hidden", "batch", "seq", "channels"), args.lstm_sizes))


def _scaling_members(args: argparse.Namespace) -> tuple[int, ...]:
    """`--members`, or 1 to 1,024 members on a GPU and 1 to 8 on a CPU."""
    if args.members:
        return tuple(args.members)
    if jax.default_backend() == "gpu":
        return (1, 8, 64, 256, 1024)
    return (1, 2, 4, 8)


#: name -> (run, print) for each section. A new section is a function `run(args) -> dict`
#: (JSON-ready) and, optionally, a function printing its table (None: `_print_generic`),
#: e.g. `SECTIONS["lstm_step"] = (lambda args: _bench_models.lstm_step(), None)`.
SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[dict], None] | None]] = {
    "simulate": (bench_simulate, _print_simulate),
    "lstm_step": (
        lambda args: _bench_models.lstm_step(**_lstm_sizes(args), repeats=max(args.repeats, 10)),
        None,
    ),
    "lstm_step_heap_reuse": (
        lambda args: _bench_models.lstm_step_heap_reuse(
            **_lstm_sizes(args), repeats=max(args.repeats, 10)
        ),
        None,
    ),
    "lstm_ensemble": (
        lambda args: _bench_models.lstm_ensemble(**_lstm_sizes(args), repeats=args.repeats),
        None,
    ),
    "lstm_ensemble_scaling": (
        lambda args: _bench_models.lstm_ensemble_scaling(
            **_lstm_sizes(args), members=_scaling_members(args), repeats=min(args.repeats, 3)
        ),
        None,
    ),
    "hnn_ensemble": (lambda args: _bench_models.hnn_ensemble(), None),
    "ig_memory": (lambda args: _bench_models.ig_memory(), None),
    "study": (lambda args: _bench_models.study_wall_time(), None),
}


# ------------------------------------------------------------------------- main
def write_results(out: Path, env: dict, sections: dict[str, dict]) -> Path:
    """Merges `sections` into `out/benchmarks.json` by section key (others are kept)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "benchmarks.json"
    data = {"environment": {}, "sections": {}}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"warning: {path} is not valid JSON; starting a new file", file=sys.stderr)
        data.setdefault("sections", {})
    data["environment"] = env
    for name, res in sections.items():
        data["sections"][name] = {**res, "environment": env}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.benchmarks", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks"), help="output directory")
    ap.add_argument(
        "--sections",
        nargs="+",
        default=[k for k in SECTIONS if k != "study"],
        choices=list(SECTIONS),
        help="sections to run ('study' reruns the quick study twice and is not in the default set)",
    )
    ap.add_argument("--batch", type=int, default=256, help="initial states solved by simulate")
    ap.add_argument("--scipy-subset", type=int, default=16, help="states solved by solve_ivp")
    ap.add_argument(
        "--repeats", type=int, default=7, help="timed rounds (each times every contender once)"
    )
    ap.add_argument("--gpu-batch", type=int, default=65_536, help="large batch timed on a GPU")
    ap.add_argument(
        "--large-batch",
        type=int,
        default=None,
        help="time simulate's large batch at this size on any backend (default: --gpu-batch, "
        "on a GPU only)",
    )
    ap.add_argument(
        "--lstm-sizes",
        type=int,
        nargs=4,
        default=(128, 64, 200, 8),
        metavar=("HIDDEN", "BATCH", "SEQ", "CHANNELS"),
        help="sizes of the LSTM sections",
    )
    ap.add_argument(
        "--members",
        type=int,
        nargs="+",
        default=None,
        help="ensemble sizes of lstm_ensemble_scaling (default: 1 to 1,024 on a GPU, 1 to 8 on a "
        "CPU)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--pin-cpu",
        type=int,
        default=None,
        metavar="CPU",
        help="run the whole process (XLA's threads included) on this one CPU: both sides then get "
        "one core, and timings on a busy machine are steadier (Linux only)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.pin_cpu is not None:  # before `environment()` starts JAX's backend and its threads
        os.sched_setaffinity(0, {args.pin_cpu})
    env = environment()
    env["cpu_affinity"] = (
        sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    )
    print(
        f"jax {env['jax']} (jaxlib {env['jaxlib']}), {env['device']}, {env['cpu_count']} CPUs, "
        f"{env['platform']}, {env['date']}"
    )
    results = {}
    for name in args.sections:
        run, show = SECTIONS[name]
        results[name] = run(args)
        if show is None:
            _print_generic(name, results[name])
        else:
            show(results[name])
    path = write_results(args.out, env, results)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
