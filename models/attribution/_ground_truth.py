"""Ground truth from the simulator: its sensitivities, the coupling graph, and scores of an
attribution against them."""

from __future__ import annotations

import functools
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

import dynamics

from .._checks import is_traced
from ._layout import StateLayout, pool, resolve_groups
from ._misc import as_float


def true_jacobian(
    system: dynamics.AbstractSystem,
    y0: Float[ArrayLike, " D"],
    ts: Float[ArrayLike, " T"],
    **simulate_kwargs,
) -> Float[Array, "T D D"]:
    r"""The simulator's sensitivities `J[t, a, b] = d y_a(ts[t]) / d y0_b`.

    Forward-mode differentiation (`jax.jacfwd`, with
    `adjoint=diffrax.ForwardMode()`) through `dynamics.simulate` started at
    `ts[0]` (so `J[0]` is the identity). `simulate_kwargs` (`rtol`, `atol`,
    `solver`, `max_steps`) are passed on. Batch over `y0` with `jax.vmap`.
    """
    if not isinstance(system, dynamics.AbstractSystem):
        raise ValueError(f"system must be a dynamics system, got {type(system).__name__}")
    y0 = as_float("y0", y0)
    if y0.shape != (system.state_dim,):
        raise ValueError(
            f"y0 must have shape ({system.state_dim},), got {y0.shape}; vmap for batches"
        )
    if "adjoint" in simulate_kwargs:
        raise ValueError("true_jacobian sets adjoint=diffrax.ForwardMode() itself")

    def trajectory(y):
        return dynamics.simulate(system, y, ts, adjoint=diffrax.ForwardMode(), **simulate_kwargs)

    return jax.jacfwd(trajectory)(y0)


def _rankdata(a: Array) -> Array:
    """1-based ranks of the flattened `a`; tied values get the average of their ranks."""
    a = jnp.ravel(a)
    s = jnp.sort(a)
    lo = jnp.searchsorted(s, a, side="left")
    hi = jnp.searchsorted(s, a, side="right")
    return (lo + hi + 1).astype(jnp.result_type(float)) / 2


def spearman(a: Float[ArrayLike, "*shape"], b: Float[ArrayLike, "*shape"]) -> Float[Array, ""]:
    r"""Spearman's rank correlation of the flattened `a` and `b`.

    The Pearson correlation of the ranks, ties given their average rank (as
    `scipy.stats.spearmanr`). NaN where either input is constant. Inputs must
    be finite.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.size != b.size:
        raise ValueError(f"a and b must have the same size, got {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"spearman needs at least 2 values, got {a.size}")
    return _spearman(a, b)


@jax.jit
def _spearman(a, b):
    ra, rb = _rankdata(a), _rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return jnp.sum(ra * rb) / jnp.sqrt(jnp.sum(ra * ra) * jnp.sum(rb * rb))


def _check_graph(gr) -> None:
    if not is_traced(gr) and not np.all(np.isin(np.asarray(gr), (0, 1))):
        raise ValueError("graph must contain only 0 and 1")


def coupling_auroc(
    scores: Float[ArrayLike, "n n"], graph: Float[ArrayLike, "n n"]
) -> Float[Array, ""]:
    r"""AUROC of the off-diagonal `scores` for recovering the edges of a 0/1 `graph`.

    The exact Mann-Whitney statistic
    `AUC = P(s_edge > s_non-edge) + P(s_edge = s_non-edge) / 2`
    over all pairs of an off-diagonal edge and non-edge, computed from
    tie-averaged ranks: `(sum of edge ranks - P (P + 1) / 2) / (P N)`. NaN
    when the graph has no edges or no non-edges off the diagonal.
    """
    s, gr = jnp.asarray(scores), jnp.asarray(graph)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or gr.shape != s.shape:
        raise ValueError(
            f"scores and graph must be the same (n, n) shape, got {s.shape} and {gr.shape}"
        )
    if s.shape[0] < 2:
        raise ValueError("coupling_auroc needs n >= 2 oscillators")
    _check_graph(gr)
    return _auroc(s, gr)


@jax.jit
def _auroc(s, gr):
    rows, cols = np.nonzero(~np.eye(s.shape[0], dtype=bool))
    vals, pos = s[rows, cols], gr[rows, cols] > 0.5
    ranks = _rankdata(vals)
    p = jnp.sum(pos).astype(ranks.dtype)
    neg = vals.size - p
    return (jnp.sum(jnp.where(pos, ranks, 0.0)) - p * (p + 1) / 2) / (p * neg)


def jacobian_spearman(
    attr: Float[ArrayLike, "..."], true: Float[ArrayLike, "..."]
) -> Float[Array, ""]:
    r"""`spearman(|attr|, |true|)` over all flattened entries (magnitudes only)."""
    attr, true = jnp.asarray(attr), jnp.asarray(true)
    if attr.shape != true.shape:
        raise ValueError(
            f"attr and true must have the same shape, got {attr.shape} and {true.shape}"
        )
    return spearman(jnp.abs(attr), jnp.abs(true))


class HorizonScores(NamedTuple):
    """The outcome of `score_by_horizon`.

    Per horizon `t` (shape `(T,)`): `auroc` (coupling graph from the
    attribution), `spearman` (attribution against the true Jacobian) and
    `true_auroc` (the graph recovered from the true Jacobian itself: the
    ceiling, which falls with the horizon as indirect coupling fills in).
    Means over `t <= t_train` (`*_inside`) and `t > t_train` (`*_beyond`),
    leaving out horizons where a score is NaN; NaN where a window is empty.
    """

    auroc: Float[Array, " T"]
    spearman: Float[Array, " T"]
    true_auroc: Float[Array, " T"]
    auroc_inside: Float[Array, ""]
    auroc_beyond: Float[Array, ""]
    spearman_inside: Float[Array, ""]
    spearman_beyond: Float[Array, ""]


def _masked_nanmean(v, mask):
    keep = mask & ~jnp.isnan(v)
    return jnp.sum(jnp.where(keep, v, 0.0)) / jnp.sum(keep)


def score_by_horizon(
    attr_jacs: Float[ArrayLike, "T D D"],
    true_jacs: Float[ArrayLike, "T D D"],
    graph: Float[ArrayLike, "n n"],
    ts: Float[ArrayLike, " T"],
    t_train: float,
    *,
    state_layout: StateLayout = "auto",
) -> HorizonScores:
    r"""Scores attribution matrices against the simulator, horizon by horizon.

    `attr_jacs[t]` is a model's `(D, D)` sensitivity or attribution of the
    state at time `ts[t]` to the initial (or context) state, `true_jacs[t]`
    the simulator's (`true_jacobian`). At each `t`:
    `auroc[t] = coupling_auroc(oscillator_scores(attr_jacs[t], n, state_layout=state_layout),
    graph)`
    and `spearman[t] = jacobian_spearman(attr_jacs[t], true_jacs[t])`; their
    means are reported separately inside (`ts <= t_train`) and beyond
    (`ts > t_train`) the training window. `state_layout` is as in
    `oscillator_scores`: pass the system for any layout other than the plain
    `D = n` or `2n`.
    """
    a, tj = jnp.asarray(attr_jacs), jnp.asarray(true_jacs)
    gr, ts = jnp.asarray(graph), jnp.asarray(ts)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"attr_jacs must have shape (T, D, D), got {a.shape}")
    if tj.shape != a.shape:
        raise ValueError(f"true_jacs must have the shape of attr_jacs {a.shape}, got {tj.shape}")
    if ts.shape != (a.shape[0],):
        raise ValueError(f"ts must have shape ({a.shape[0]},), got {ts.shape}")
    if gr.ndim != 2 or gr.shape[0] != gr.shape[1]:
        raise ValueError(f"graph must be (n, n), got {gr.shape}")
    _check_graph(gr)
    groups = resolve_groups(state_layout, gr.shape[0], a.shape[1])
    return _score_by_horizon(a, tj, gr, ts, t_train, groups=groups)


@functools.partial(jax.jit, static_argnames=("groups",))
def _score_by_horizon(a, tj, gr, ts, t_train, *, groups):
    def one(aj, tjac):
        return (
            _auroc(pool(aj, groups, groups), gr),
            _spearman(jnp.abs(aj), jnp.abs(tjac)),
            _auroc(pool(tjac, groups, groups), gr),
        )

    auroc, rho, true_auroc = jax.vmap(one)(a, tj)
    inside = ts <= t_train
    return HorizonScores(
        auroc=auroc,
        spearman=rho,
        true_auroc=true_auroc,
        auroc_inside=_masked_nanmean(auroc, inside),
        auroc_beyond=_masked_nanmean(auroc, ~inside),
        spearman_inside=_masked_nanmean(rho, inside),
        spearman_beyond=_masked_nanmean(rho, ~inside),
    )
