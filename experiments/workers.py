"""The study's runs in parallel: one worker process per CPU core, each pinned to its core and
running XLA single-threaded.

The study's programs are small (MLPs of width 128 on batches of 4 to 128, ODE solves of a few
hundred steps): XLA's intra-op threads cost more in synchronisation than they gain. Measured on
a 2-core CPU (a NeuralODE's derivative stage, 10,000 steps): 7.6 s with XLA's default threads,
4.1 s single-threaded on one core, and two such runs side by side take no longer than one. So
a study of many independent runs goes fastest with one single-threaded process per core.

`map_jobs(fn, jobs, workers=n)` runs `fn(*job)` for every job, in worker processes when
`n > 1` (started with `spawn`, so they begin from a clean interpreter, and killed with their
parent, so an interrupted study leaves no orphan training behind), in this process otherwise.
Every job's result is written by the job itself, atomically (`experiments.runs`): a killed
study resumes from what its workers finished, exactly as a serial one does.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

#: XLA flags of a worker: one intra-op thread (the worker owns one core)
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def available_cores() -> list[int]:
    """The CPU cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def default_workers() -> int:
    """One worker per available core on a CPU backend; 1 (this process) on an accelerator,
    where one process owns the device."""
    import jax

    return len(available_cores()) if jax.default_backend() == "cpu" else 1


def _die_with_parent() -> None:
    """Asks Linux to SIGKILL this process when its parent dies (`prctl(PR_SET_PDEATHSIG)`)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _init_worker(cores, cache_dir: str | None) -> None:
    _die_with_parent()
    core = cores.get()
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        pass
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREAD_XLA}".strip()
    from ._runtime import setup_jax

    setup_jax(cache_dir)


#: the share of Linux's `vm.max_map_count` past which a process drops its compiled programs
_MAPS_SHARE = 0.5


def _map_limit() -> tuple[int, int] | None:
    """(memory mappings of this process, the kernel's limit on them), or None off Linux."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f), limit
    except (OSError, ValueError):
        return None


def release_if_crowded(share: float = _MAPS_SHARE) -> bool:
    """Drops every compiled program of this process (`jax.clear_caches`) once its memory
    mappings pass `share` of the kernel's limit; returns whether it did.

    Each XLA CPU executable keeps its machine code in mappings of its own, and the jit caches
    keep every executable alive, so a long-lived process that compiles program after program
    (a worker of a large study, a test session) reaches Linux's default limit of 65,530
    mappings, where LLVM's next allocation fails and the process dies of a segmentation
    fault inside the compiler. Measured: the test suite in one process passed 64,000 mappings
    two-thirds of the way through and died there. A dropped program that is needed again
    comes back from the persistent compilation cache or is compiled anew."""
    counts = _map_limit()
    if counts is None or counts[0] < share * counts[1]:
        return False
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
    return True


def _run_job(fn: Callable[..., Any], *job) -> Any:
    try:
        return fn(*job)
    finally:
        release_if_crowded()


def _picklable(obj) -> str | None:
    try:
        pickle.dumps(obj)
    except Exception as e:  # noqa: BLE001 - any failure means: run here instead
        return f"{type(e).__name__}: {e}"
    return None


def map_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    *,
    workers: int,
    on_result: Callable[[int, Any], None] | None = None,
    order: Iterable[int] | None = None,
    log=print,
) -> list:
    """`[fn(*job) for job in jobs]`, computed by `workers` processes.

    `order` is the order in which the jobs are started (default: as given; start the
    longest first so that no core waits at the end); the results are returned in the order
    of `jobs`. `on_result(i, result)` is called in this process as each job finishes. A job
    that raises stops the map with its exception (the others' results are already stored by
    the jobs themselves). With `workers <= 1`, or jobs that cannot be sent to another
    process (a preset of lambdas), the jobs run here, one after another.
    """
    order = list(range(len(jobs)) if order is None else order)
    if sorted(order) != list(range(len(jobs))):
        raise ValueError("order must be a permutation of the job indices")
    results: list = [None] * len(jobs)
    reason = _picklable((fn, list(jobs))) if workers > 1 and len(jobs) > 1 else "serial"
    if reason is not None:
        if reason != "serial":
            log(f"[workers] running the jobs in this process: they cannot be pickled ({reason})")
        for i in order:
            results[i] = _run_job(fn, *jobs[i])
            if on_result is not None:
                on_result(i, results[i])
        return results
    ctx = multiprocessing.get_context("spawn")
    cores = ctx.Queue()
    n = min(workers, len(jobs))
    avail = available_cores()
    for w in range(n):
        cores.put(avail[w % len(avail)])
    import jax

    cache_dir = jax.config.jax_compilation_cache_dir  # the parent's, set by setup_jax
    with concurrent.futures.ProcessPoolExecutor(
        n, mp_context=ctx, initializer=_init_worker, initargs=(cores, cache_dir)
    ) as pool:
        futures = {pool.submit(_run_job, fn, *jobs[i]): i for i in order}
        try:
            for fut in concurrent.futures.as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if on_result is not None:
                    on_result(i, results[i])
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results
