"""Test configuration: float64 for numerical tests, implicit rank promotion an error, and four
simulated CPU devices.

Both settings must be applied before JAX initialises its backend, so they live
at import time of this file, which pytest loads before any test module.
"""

import contextlib
import gc
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
try:  # the modern spelling; the XLA flag above covers older versions
    jax.config.update("jax_num_cpu_devices", 4)
except (AttributeError, RuntimeError):  # pragma: no cover
    pass

import jaxtyping  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "ill_typed: the test passes a badly typed argument on purpose (jaxtyping checks off)",
    )


@contextlib.contextmanager
def _unchecked():
    """The jaxtyping checks off for a call that passes a badly typed or shaped argument on purpose,
    to test the `ValueError` the function itself raises: what a user, who runs without the checks,
    sees. The checks (a test-time instrument) would answer first with their `TypeError`."""
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture(autouse=True)
def _ill_typed(request):
    """A test (or parameter set) marked `ill_typed` runs without the jaxtyping checks."""
    if request.node.get_closest_marker("ill_typed") is None:
        yield
        return
    with _unchecked():
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module.

    Each XLA CPU executable keeps its machine code in memory mappings of its own, and the
    jit caches keep every executable alive: one process that ran the whole suite reached
    64,000 mappings (Linux's default `vm.max_map_count` is 65,530) two-thirds of the way
    through, where LLVM's next allocation failed and the process died of a segmentation
    fault inside `backend_compile`. Cleared between modules, the count stayed near 1,300."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def unchecked():
    """`with unchecked(): ...`: one deliberately ill-typed call without the jaxtyping checks."""
    return _unchecked


@pytest.fixture
def getkey():
    """Hands out a fresh PRNG key on each call, deterministically per test."""
    counter = iter(range(10**6))

    def _getkey():
        return jax.random.key(next(counter))

    return _getkey
