"""The largest Lyapunov exponent of a system, by the Benettin method."""

from __future__ import annotations

import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _validate as v
from ._base import AbstractSystem
from ._simulate import _SOLVERS, SimulationError


def _variational_field(system):
    """`(y, u)' = (f(t, y), J_f(t, y) u)`: the flow and its tangent (the variational
    equation), the Jacobian-vector product by forward-mode autodiff."""

    def field(t, yu, args):
        y, u = yu
        return jax.jvp(lambda z: system.vector_field(t, z), (y,), (u,))

    return field


@functools.partial(
    jax.jit, static_argnames=("n_transient", "n_blocks", "every", "max_steps", "solver")
)
def _benettin(system, y0, u0, dt, rtol, atol, *, n_transient, n_blocks, every, max_steps, solver):
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    make_solver = _SOLVERS[solver]

    def solve(term, t0, t1, y):
        sol = diffrax.diffeqsolve(
            term,
            make_solver(),
            t0=t0,
            t1=t1,
            dt0=None,
            y0=y,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=controller,
            max_steps=max_steps,
            throw=False,
        )
        ok = sol.result == diffrax.RESULTS.successful
        return jax.tree.map(lambda a: a[-1], sol.ys), ok

    # the transient: the state alone, so that the tangent starts on the attractor
    state_term = diffrax.ODETerm(lambda t, y, args: system.vector_field(t, y))
    y, ok0 = solve(state_term, 0.0, n_transient * dt, y0) if n_transient else (y0, True)

    tangent_term = diffrax.ODETerm(_variational_field(system))
    t_start = n_transient * dt
    span = every * dt

    def block(carry, i):
        y, u, ok = carry
        t0 = t_start + i * span
        (y, u), ok_i = solve(tangent_term, t0, t0 + span, (y, u))
        norm = jnp.linalg.norm(u)
        return (y, u / norm, ok & ok_i), jnp.log(norm)

    (_, _, ok), logs = jax.lax.scan(block, (y, u0, ok0), jnp.arange(n_blocks))
    return jnp.sum(logs) / (n_blocks * span), ok


def lyapunov_exponent(
    system: AbstractSystem,
    y0: Float[ArrayLike, " state_dim"],
    *,
    dt: float,
    n_steps: int,
    renormalise_every: int = 1,
    n_transient: int = 0,
    tangent0: Float[ArrayLike, " state_dim"] | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    max_steps: int = 100_000,
    solver: str = "tsit5",
) -> Float[Array, ""]:
    r"""The largest Lyapunov exponent from `y0`, by the Benettin method.

    The state and a tangent vector `u` are integrated together, the tangent by the
    variational equation of the flow,

    `y' = f(t, y)`, `u' = J_f(t, y) u`  (`J_f = df/dy`, by forward-mode autodiff),

    with the project's adaptive diffrax solver. After a transient of `n_transient`
    steps of the state alone, the run covers `n_steps` steps of `dt`, i.e. the time
    `T = n_steps dt`; every `renormalise_every` steps (a block of length
    `tau = renormalise_every dt`) the tangent's growth `g_k = |u(t_k)|` over the block is
    recorded and `u` rescaled to unit length, so that it never overflows. The estimate is

    `lambda = (1 / T) sum_k log g_k`,

    which tends to the largest exponent as `T -> infinity` for almost every start of the
    tangent: `> 0` for chaos, `0` (as `log(T) / T` for shear, `1/T` for a bounded tangent)
    on a regular, quasi-periodic orbit, `< 0` towards a fixed point. A whole run is one
    compiled `lax.scan` over the blocks.

    **Arguments:**

    - `system`: any system of this package.
    - `y0`: the initial state, shape `(state_dim,)`.
    - `dt`: the step, > 0; `n_steps`: steps measured (>= 1, a multiple of
      `renormalise_every`); `n_transient`: steps discarded first (>= 0).
    - `tangent0`: the initial tangent (default: all ones), normalised; it must not be zero.
    - `rtol`, `atol`, `max_steps`, `solver`: as in `simulate` (`max_steps` per block).

    **Returns:** the exponent, a scalar, in inverse time units (`1/lambda` is the
    Lyapunov time).

    **Raises:** `ValueError` for bad input; `SimulationError` if a solve fails.
    """
    if not isinstance(system, AbstractSystem):
        raise ValueError(f"system must be a dynamics system, got {type(system).__name__}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {sorted(_SOLVERS)}, got {solver!r}")
    for name, value, least in (
        ("n_steps", n_steps, 1),
        ("renormalise_every", renormalise_every, 1),
        ("n_transient", n_transient, 0),
        ("max_steps", max_steps, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if n_steps % renormalise_every:
        raise ValueError(
            f"n_steps must be a multiple of renormalise_every, got n_steps={n_steps} and "
            f"renormalise_every={renormalise_every}"
        )
    for name, value in (("dt", dt), ("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    y0 = v.as_float_array("y0", y0, shape=(system.state_dim,))
    if tangent0 is None:
        u0 = jnp.ones_like(y0)
    else:
        u0 = v.as_float_array("tangent0", tangent0, shape=(system.state_dim,))
    norm = float(jnp.linalg.norm(u0))
    if not norm > 0:
        raise ValueError("tangent0 must not be zero")
    f0 = system.vector_field(0.0, y0)
    if not bool(jnp.all(jnp.isfinite(f0))):
        raise SimulationError(f"the vector field is non-finite at the initial state {y0!r}")
    lam, ok = _benettin(
        system,
        y0,
        u0 / norm,
        float(dt),
        float(rtol),
        float(atol),
        n_transient=n_transient,
        n_blocks=n_steps // renormalise_every,
        every=renormalise_every,
        max_steps=max_steps,
        solver=solver,
    )
    if not (bool(ok) and np.isfinite(float(lam))):
        raise SimulationError(
            f"the tangent solve failed (step limit max_steps={max_steps} per block, or a "
            "non-finite state)"
        )
    return lam
