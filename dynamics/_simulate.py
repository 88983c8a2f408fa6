"""Adaptive, JIT-compiled, vmapped solves of any system with diffrax."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _validate as v
from ._base import AbstractSystem


class SimulationError(RuntimeError):
    """A solve failed: the step limit was reached or the state became non-finite."""


_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8}


@functools.partial(jax.jit, static_argnames=("max_steps", "solver", "adjoint"))
def _solve_batch(system, y0, ts, rtol, atol, *, max_steps, solver, adjoint):
    term = diffrax.ODETerm(lambda t, y, args: system.vector_field(t, y))

    def one(y):
        sol = diffrax.diffeqsolve(
            term,
            _SOLVERS[solver](),
            t0=ts[0],
            t1=ts[-1],
            dt0=None,
            y0=y,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps,
            adjoint=adjoint,
            throw=False,
        )
        ok = sol.result == diffrax.RESULTS.successful
        hit_limit = sol.result == diffrax.RESULTS.max_steps_reached
        return sol.ys, ok, hit_limit, sol.stats["num_steps"]

    return jax.vmap(one)(y0)


@jax.jit
def _field_at(system, t, ys):
    return jax.vmap(lambda y: system.vector_field(t, y))(ys)


def simulate(
    system: AbstractSystem,
    y0: Float[ArrayLike, "*batch state_dim"] | Sequence,  # (nested) lists are accepted
    ts: Float[ArrayLike, " T"] | Sequence[float],
    *,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    max_steps: int = 100_000,
    solver: str = "tsit5",
    adjoint: diffrax.AbstractAdjoint | None = None,
) -> Float[Array, "*batch T state_dim"]:
    """Integrates `dy/dt = system.vector_field(t, y)` from each `y0` and samples at `ts`.

    **Arguments:**

    - `system`: any system of this package (a pytree, so its parameters may be traced).
    - `y0`: initial states, shape `(..., state_dim)`; every leading axis is a batch axis.
    - `ts`: strictly increasing times, shape `(T,)`; the solve starts at `ts[0]`.
    - `rtol`, `atol`: tolerances of the PID step-size controller.
    - `max_steps`: step limit per trajectory.
    - `solver`: `"tsit5"` (default), `"dopri5"` or `"dopri8"`.
    - `adjoint`: a diffrax adjoint; `diffrax.ForwardMode()` for `jax.jacfwd`.

    **Returns:** the states, shape `(..., T, state_dim)`, in the dtype of
    `y0` (float64 when `jax_enable_x64` is on).

    **Raises:** `ValueError` for bad input; `SimulationError` if any solve
    fails (step limit, non-finite state). When called under a JAX
    transformation the failure cannot be checked eagerly; the solution is then
    non-finite where the solve failed.
    """
    if not isinstance(system, AbstractSystem):
        raise ValueError(f"system must be a dynamics system, got {type(system).__name__}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {sorted(_SOLVERS)}, got {solver!r}")
    if not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (np.isfinite(tol) and tol > 0):
            raise ValueError(f"{name} must be finite and > 0, got {tol!r}")
    y0 = v.states("y0", y0, system.state_dim)
    ts = v.times("ts", ts)
    dtype = jnp.result_type(y0.dtype, ts.dtype, float)
    y0, ts = jnp.asarray(y0, dtype), jnp.asarray(ts, dtype)
    batch = y0.shape[:-1]
    flat = y0.reshape(-1, system.state_dim)
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((system, flat, ts))):
        f0 = _field_at(system, ts[0], flat)
        if not bool(jnp.all(jnp.isfinite(f0))):
            i = int(np.flatnonzero(~np.all(np.isfinite(np.asarray(f0)), axis=-1))[0])
            raise SimulationError(
                "the vector field is non-finite (NaN or inf) at the initial state "
                f"(flat index {i}): "
                f"{np.asarray(flat[i])!r}"
            )
    if adjoint is None:
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    ys, ok, hit_limit, _ = _solve_batch(
        system, flat, ts, rtol, atol, max_steps=max_steps, solver=solver, adjoint=adjoint
    )
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((system, flat, ts, ys))):
        _raise_on_failure(np.asarray(ok), np.asarray(hit_limit), ys, max_steps)
    return ys.reshape(*batch, ts.shape[0], system.state_dim)


def _raise_on_failure(ok, hit_limit, ys, max_steps):
    finite = np.asarray(jnp.all(jnp.isfinite(ys), axis=(1, 2)))
    bad = np.flatnonzero(~(ok & finite))
    if bad.size == 0:
        return
    i = int(bad[0])
    if hit_limit[i]:
        why = f"the step limit max_steps={max_steps} was reached (stiff or diverging system?)"
    elif not finite[i]:
        why = "the state became non-finite (NaN or inf)"
    else:
        why = "the solver reported failure (step size collapsed or non-finite state)"
    raise SimulationError(
        f"simulation failed for {bad.size} of {ok.size} trajectories (first: flat index {i}): {why}"
    )


def num_steps(
    system: AbstractSystem, y0, ts, *, rtol=1e-8, atol=1e-8, solver="tsit5"
) -> np.ndarray:
    """Accepted-plus-rejected step counts per trajectory (for benchmarks that compare work)."""
    y0 = v.states("y0", y0, system.state_dim)
    ts = v.times("ts", ts)
    flat = jnp.asarray(y0).reshape(-1, system.state_dim)
    *_, steps = _solve_batch(
        system,
        flat,
        ts,
        rtol,
        atol,
        max_steps=100_000,
        solver=solver,
        adjoint=diffrax.RecursiveCheckpointAdjoint(),
    )
    return np.asarray(steps)
