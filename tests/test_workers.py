"""experiments.workers: parallel jobs give the serial results, in the order of the jobs."""

import operator
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments.workers import SINGLE_THREAD_XLA, available_cores, map_jobs, release_if_crowded


def _where(x):
    """A job that reports what its process looks like."""
    return x * x, os.getpid(), os.environ.get("XLA_FLAGS", ""), sorted(os.sched_getaffinity(0))


def _fails(x):
    if x == 2:
        raise ValueError("job 2 failed")
    return x


def test_parallel_results_equal_serial_ones_in_job_order():
    jobs = [(i,) for i in range(6)]
    seen = []
    out = map_jobs(
        _where, jobs, workers=2, order=[5, 4, 3, 2, 1, 0], on_result=lambda i, r: seen.append(i)
    )
    assert [r[0] for r in out] == [i * i for i in range(6)]
    assert sorted(seen) == list(range(6))
    pids = {r[1] for r in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # other processes did the work
    for _, _, flags, cores in out:
        assert SINGLE_THREAD_XLA in flags  # each worker runs XLA single-threaded ...
        assert len(cores) == 1 and cores[0] in available_cores()  # ... pinned to one core
    serial = map_jobs(_where, jobs, workers=1)
    assert [r[0] for r in serial] == [r[0] for r in out]
    assert {r[1] for r in serial} == {os.getpid()}


def test_a_failing_job_raises_its_own_error():
    with pytest.raises(ValueError, match="job 2 failed"):
        map_jobs(_fails, [(i,) for i in range(4)], workers=2)


def test_unpicklable_jobs_run_here_and_say_why():
    said = []
    out = map_jobs(lambda x: x + 1, [(1,), (2,)], workers=2, log=said.append)
    assert out == [2, 3] and "cannot be pickled" in said[0]
    with pytest.raises(ValueError, match="permutation"):
        map_jobs(operator.neg, [(1,), (2,)], workers=1, order=[0, 0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/maps")
def test_a_process_crowded_with_compiled_programs_drops_them():
    """`release_if_crowded` clears the jit caches past its share of the kernel's limit on
    memory mappings (the cause of a segmentation fault in long processes), and only then."""
    f = jax.jit(lambda x: jnp.sin(x) + 1.0)
    f(jnp.ones(3))
    assert f._cache_size() == 1
    assert not release_if_crowded(share=2.0)  # no process holds twice the limit
    assert f._cache_size() == 1
    assert release_if_crowded(share=0.0)
    assert f._cache_size() == 0
