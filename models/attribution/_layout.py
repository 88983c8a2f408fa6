"""Which state coordinates belong to which oscillator, and pooling `(D, D)` maps to oscillators.

The layout is declared by the system (`dynamics.AbstractSystem.oscillator_groups()`) or given
as explicit index groups; only the two plain layouts are ever inferred from the sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

import dynamics

from .._checks import check_int

#: A state layout: `"auto"`, `"qp"`, `"first_order"`, a `dynamics.AbstractSystem` (its
#: `oscillator_groups()`), or one sequence of state indices per oscillator.
StateLayout = str | dynamics.AbstractSystem | Sequence[Sequence[int]]

_LAYOUT_NAMES = ("auto", "qp", "first_order")


def system_groups(system: dynamics.AbstractSystem, dim: int) -> tuple[tuple[int, ...], ...]:
    """`system.oscillator_groups()`, checked against a state of size `dim`; a system that has
    a non-plain layout but does not declare it raises `ValueError`."""
    if dim != system.state_dim:
        raise ValueError(
            f"{type(system).__name__} has state_dim={system.state_dim}, "
            f"but the map has {dim} coordinates"
        )
    try:
        groups = system.oscillator_groups()
    except NotImplementedError as e:
        raise ValueError(f"the state layout of {type(system).__name__} is not declared: {e}") from e
    return check_groups(groups, len(groups), dim)


def check_groups(groups, n: int, dim: int) -> tuple[tuple[int, ...], ...]:
    """`groups` as a tuple of `n` tuples of state indices in `[0, dim)`."""
    try:
        out = tuple(tuple(int(i) for i in g) for g in groups)
    except (TypeError, ValueError):
        raise ValueError(
            f"state_layout groups must be sequences of integer indices, got {groups!r}"
        ) from None
    if len(out) != n:
        raise ValueError(
            f"state_layout must list {n} index groups (one per oscillator), got {len(out)}"
        )
    if any(len(g) == 0 for g in out):
        raise ValueError(f"every oscillator needs at least one state index, got {out!r}")
    if any(not 0 <= i < dim for g in out for i in g):
        raise ValueError(f"state_layout indices must lie in [0, {dim}), got {out!r}")
    return out


def resolve_groups(state_layout: StateLayout, n: int, dim: int) -> tuple[tuple[int, ...], ...]:
    """The state indices of each of `n` oscillators in a state of size `dim`.

    - a `dynamics.AbstractSystem`: its declared `oscillator_groups()` (it must have `n`
      oscillators and `state_dim == dim`);
    - `"qp"`: `{q_i, p_i} = {i, n + i}` of `y = concat(q, p)` (`dim = 2n`);
    - `"first_order"`: `{i}` (`dim = n`, e.g. Kuramoto);
    - `"auto"`: one of those two plain layouts, from `dim`; any other size raises
      `ValueError`: pass the system, or its `oscillator_groups()`, instead;
    - a sequence of `n` index sequences: any grouping.
    """
    if isinstance(state_layout, dynamics.AbstractSystem):
        if state_layout.n_oscillators != n:
            raise ValueError(
                f"{type(state_layout).__name__} has {state_layout.n_oscillators} oscillators, "
                f"expected n={n}"
            )
        return system_groups(state_layout, dim)
    if isinstance(state_layout, str):
        if state_layout not in _LAYOUT_NAMES:
            raise ValueError(
                f"state_layout must be {', '.join(map(repr, _LAYOUT_NAMES))}, "
                "a dynamics.AbstractSystem "
                f"or one list of state indices per oscillator, got {state_layout!r}"
            )
        layout = state_layout
        if layout == "auto":
            if dim == n:
                layout = "first_order"
            elif dim == 2 * n:
                layout = "qp"
            else:
                raise ValueError(
                    f"cannot infer the state layout of {dim} coordinates for n={n} oscillators: "
                    "only the "
                    f"plain layouts (D = n or 2n) are inferred; pass state_layout=system (a "
                    f"dynamics.AbstractSystem) or its oscillator_groups()"
                )
        expected = n if layout == "first_order" else 2 * n
        if dim != expected:
            raise ValueError(
                f"state_layout {layout!r} needs {expected} coordinates for n={n}, got {dim}"
            )
        if layout == "first_order":
            return tuple((i,) for i in range(n))
        return tuple((i, n + i) for i in range(n))
    return check_groups(state_layout, n, dim)


def membership(groups: Sequence[Sequence[int]], dim: int) -> np.ndarray:
    """The unchecked `(n, dim)` 0/1 matrix of `oscillator_membership`."""
    m = np.zeros((len(groups), dim))
    for k, g in enumerate(groups):
        m[k, list(g)] = 1.0
    return m


def oscillator_membership(
    groups: Sequence[Sequence[int]] | dynamics.AbstractSystem, dim: int
) -> Float[np.ndarray, "n dim"]:
    r"""The `(n, dim)` 0/1 matrix `M[i, a] = 1` iff state coordinate `a` belongs to oscillator `i`.

    `groups` is one sequence of state indices per oscillator, or a
    `dynamics.AbstractSystem` (its declared `oscillator_groups()`, with
    `state_dim == dim`). Coordinates in no group (the beam of Huygens' clocks)
    have a zero column. Pool a `(D_out, D_in)` map `A` to oscillators with
    `M_out |A| M_in^T` (what `oscillator_scores` does), or a `(C, D)` map over
    time lags with `|A| M^T`.
    """
    dim = check_int("dim", dim, minimum=1)
    if isinstance(groups, dynamics.AbstractSystem):
        g = system_groups(groups, dim)
    else:
        g = check_groups(groups, len(groups), dim)
    return membership(g, dim)


def pool(a: Array, groups_out, groups_in) -> Array:
    """`M_out |a| M_in^T` for already checked groups (traceable in `a`)."""
    m_out = jnp.asarray(membership(groups_out, a.shape[0]), a.dtype)
    m_in = jnp.asarray(membership(groups_in, a.shape[1]), a.dtype)
    return m_out @ jnp.abs(a) @ m_in.T


def oscillator_scores(
    attr_jac: Float[ArrayLike, "D_out D_in"],
    n: int,
    *,
    state_layout: StateLayout = "auto",
) -> Float[Array, "n n"]:
    r"""Pools a state-level sensitivity or attribution matrix to oscillators.

    `S[i, j] = sum_{a in C_i} sum_{b in C_j} |A[a, b]|`, where `C_i` are the
    coordinates of oscillator `i` (see `oscillator_membership`). `state_layout`
    says which they are:

    - a `dynamics.AbstractSystem`: its declared `oscillator_groups()` (e.g.
      `{theta_i, theta_i'} = {i, n + 1 + i}` for Huygens' clocks, whose beam
      coordinates belong to no oscillator);
    - `"qp"`: `{q_i, p_i} = {i, n + i}` (state `concat(q, p)`, `D = 2n`);
    - `"first_order"`: `{i}` (e.g. Kuramoto, `D = n`);
    - a list of `n` index lists: any grouping;
    - `"auto"` (default): `"first_order"` when `D = n`, `"qp"` when `D = 2n`;
      any other size raises `ValueError` (nothing else is guessed: pass the
      system or its `oscillator_groups()`).

    Row `i` is the affected oscillator, column `j` the influencing one.
    """
    a = jnp.asarray(attr_jac)
    n = check_int("n", n, minimum=1)
    if a.ndim != 2:
        raise ValueError(f"attr_jac must be a (D_out, D_in) matrix, got shape {a.shape}")
    g_out = resolve_groups(state_layout, n, a.shape[0])
    g_in = g_out if a.shape[1] == a.shape[0] else resolve_groups(state_layout, n, a.shape[1])
    return pool(a, g_out, g_in)
