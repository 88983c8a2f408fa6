"""The physical quantities and binary concepts of a system's states, read through the layout
the system declares."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

import dynamics

from .._checks import check_int
from ._misc import as_matrix

#: The observables (`system.observables`) that are probe targets in their own right; the others
#: (e.g. the clocks' phase differences) are functions of the phases probed per oscillator.
_OBSERVABLE_TARGETS = ("energy", "order_parameter")


class _Coords(NamedTuple):
    q: np.ndarray  # (N, n): the coordinate of each oscillator (its phase if first order)
    p: np.ndarray | None  # (N, n): the velocities; None for a first-order state
    # (N, n), in (-pi, pi]; None for a first-order state that is not an angle
    phase: np.ndarray | None
    angles: bool  # whether q are angles
    extra: dict[str, np.ndarray]  # the coordinates that belong to no oscillator, by name
    observables: dict[str, np.ndarray]  # those of _OBSERVABLE_TARGETS the system has


def _coords(system: dynamics.AbstractSystem, states) -> _Coords:
    """Splits `states` by the layout `system` declares (`split_state`, `natural_frequencies`,
    `angular`, `observables`); an undeclared non-plain layout raises `ValueError`."""
    if not isinstance(system, dynamics.AbstractSystem):
        raise ValueError(f"system must be a dynamics.AbstractSystem, got {type(system).__name__}")
    y = as_matrix("states", states)
    if y.shape[1] != system.state_dim:
        raise ValueError(
            f"states must have shape (N, {system.state_dim}) for {type(system).__name__}, "
            f"got {y.shape}"
        )
    n = system.n_oscillators
    yj = jnp.asarray(y)  # the system's methods take JAX arrays
    try:
        q, p, extras = system.split_state(yj)
        omega = None if p is None else np.asarray(system.natural_frequencies(), dtype=np.float64)
    except NotImplementedError as e:
        raise ValueError(
            f"cannot split the state of {type(system).__name__} into oscillators: {e}"
        ) from e
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (y.shape[0], n):
        raise ValueError(
            f"{type(system).__name__}.split_state gave q of shape {q.shape}, "
            f"expected {(y.shape[0], n)}"
        )
    extra = {str(k): np.asarray(v, dtype=np.float64) for k, v in extras.items()}
    obs = system.observables(yj)
    obs = {k: np.asarray(obs[k], dtype=np.float64) for k in _OBSERVABLE_TARGETS if k in obs}
    if p is None:
        # first order: the state of each oscillator is one coordinate (Kuramoto: its phase)
        phase = np.angle(np.exp(1j * q)) if system.angular else None
        return _Coords(q, None, phase, system.angular, extra, obs)
    p = np.asarray(p, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(
            f"{type(system).__name__}.split_state gave p of shape {p.shape}, expected {q.shape}"
        )
    if omega.shape != (n,):
        raise ValueError(
            f"{type(system).__name__}.natural_frequencies() must have shape ({n},), "
            f"got {omega.shape}"
        )
    omega = np.where(np.isfinite(omega) & (omega > 0), omega, 1.0)
    return _Coords(q, p, np.arctan2(-p / omega, q), system.angular, extra, obs)


def physical_targets(
    system: dynamics.AbstractSystem, states: Float[ArrayLike, "N state_dim"]
) -> dict[str, np.ndarray]:
    r"""The physical quantities a probe may look for, one entry per quantity (float64 NumPy).

    Everything is read through the layout the system declares
    (`split_state`, `natural_frequencies`, `angular`, `observables`), so a
    user's `dynamics.AbstractSystem` gets its targets without any change here.
    Oscillators are numbered from 1. For second-order systems, with
    `(q, p, extras) = system.split_state(states)` (`p_i = q_i'`):

    - `"energy"` `(N,)` where the system's `observables` have it;
    - `"phase_i"` `(N, 2)`: `(cos phi_i, sin phi_i)` with
      `phi_i = atan2(-p_i / omega_i, q_i)`, the angle of the oscillator in its
      normalised phase plane (`phi_i = omega_i t + const` for a free harmonic
      oscillator; the convention of `HuygensClocks.phase_difference`), where
      `omega = system.natural_frequencies()` (1 where that is not positive);
    - `"q_i"`, `"p_i"` `(N,)`;
    - `"angle_i"` `(N, 2)`: `(cos q_i, sin q_i)` where `q` are angles
      (`system.angular`: coupled pendulums, Huygens' clocks, double pendulum);
    - every entry of `extras` under its own name (Huygens' clocks: `"beam_x"`
      and `"beam_v"`).

    For first-order systems `q` is the state of each oscillator. Where it is
    an angle (Kuramoto) `"phase_i"` is `(cos q_i, sin q_i)`; otherwise `"q_i"`
    `(N,)`. Plus `"order_parameter"` where the system's `observables` have it
    (Kuramoto: `r = |mean_j e^{i theta_j}|`).

    Raises `ValueError` for a system whose state is not the plain `concat(q, p)`
    (or `theta`) and that does not declare its layout (`split_state`).
    """
    c = _coords(system, states)
    out: dict[str, np.ndarray] = {}
    if "energy" in c.observables:
        out["energy"] = c.observables["energy"]
    if "order_parameter" in c.observables:
        out["order_parameter"] = c.observables["order_parameter"]
    n = c.q.shape[1]
    if c.phase is not None:
        for i in range(n):
            out[f"phase_{i + 1}"] = np.stack(
                [np.cos(c.phase[:, i]), np.sin(c.phase[:, i])], axis=-1
            )
    if c.p is not None:
        for i in range(n):
            out[f"q_{i + 1}"] = c.q[:, i].copy()
            out[f"p_{i + 1}"] = c.p[:, i].copy()
        if c.angles:
            for i in range(n):
                out[f"angle_{i + 1}"] = np.stack([np.cos(c.q[:, i]), np.sin(c.q[:, i])], axis=-1)
    elif c.phase is None:
        for i in range(n):
            out[f"q_{i + 1}"] = c.q[:, i].copy()
    out.update({k: v.copy() for k, v in c.extra.items()})
    return out


def _wrap(a):
    """Angles into `[-pi, pi)`."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def physical_concepts(
    system: dynamics.AbstractSystem,
    states: Float[ArrayLike, "N state_dim"],
    *,
    n_sectors: int = 4,
    energy_quantile: float = 0.75,
    in_step_tol: float = np.pi / 8,
    pair: tuple[int, int] = (1, 2),
) -> dict[str, np.ndarray]:
    r"""Binary physical concepts for `dissect`, each a boolean mask `(N,)`.

    With `phi_i` the phase of oscillator `i` as in `physical_targets`
    (oscillators numbered from 1):

    - `"phase_sector_k"` (`k = 1..n_sectors`): `phi_1` wrapped into
      `[-pi, pi)` lies in `[-pi + 2 pi (k-1)/n_sectors, -pi + 2 pi k/n_sectors)`;
    - `"high_energy"`: `energy > ` its `energy_quantile` quantile over the
      given states (where the system's `observables` have an energy);
    - `"in_step"`: `|wrap(phi_a - phi_b)| < in_step_tol` for the oscillators
      `pair = (a, b)`, and `"anti_phase"`: `|wrap(phi_a - phi_b - pi)| < in_step_tol`
      (where there are at least two oscillators).

    The phase concepts need phases: a first-order system whose state is not
    an angle (`angular` False) has only `"high_energy"`.
    """
    n_sectors = check_int("n_sectors", n_sectors, minimum=2)
    if not 0 < float(energy_quantile) < 1:
        raise ValueError(f"energy_quantile must be in (0, 1), got {energy_quantile!r}")
    if not 0 < float(in_step_tol) <= np.pi:
        raise ValueError(f"in_step_tol must be in (0, pi], got {in_step_tol!r}")
    c = _coords(system, states)
    out: dict[str, np.ndarray] = {}
    if c.phase is not None:
        sector = np.floor((_wrap(c.phase[:, 0]) + np.pi) / (2 * np.pi) * n_sectors).astype(int)
        sector = np.clip(sector, 0, n_sectors - 1)
        for k in range(n_sectors):
            out[f"phase_sector_{k + 1}"] = sector == k
    if "energy" in c.observables:
        e = c.observables["energy"]
        out["high_energy"] = e > np.quantile(e, float(energy_quantile))
    n = c.q.shape[1]
    if n >= 2 and c.phase is not None:
        a, b = pair
        if not (1 <= a <= n and 1 <= b <= n and a != b):
            raise ValueError(f"pair must name two different oscillators in 1..{n}, got {pair!r}")
        d = c.phase[:, a - 1] - c.phase[:, b - 1]
        out["in_step"] = np.abs(_wrap(d)) < in_step_tol
        out["anti_phase"] = np.abs(_wrap(d - np.pi)) < in_step_tol
    return out
