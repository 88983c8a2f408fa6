"""Hidden-state geometry: PCA, and how far states beyond the training window leave the
manifold of those inside it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._checks import check_int
from ._misc import as_matrix, numpy_rng


class PCA(NamedTuple):
    """Principal components of hidden states: `mean` `(H,)`, `components` `(k, H)` (orthonormal
    rows, by decreasing variance), `explained_variance` `(k,)` (sample variance along each,
    divisor `N - 1`) and `explained_variance_ratio` `(k,)` (fraction of the total variance)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray


def pca_fit(h: Float[ArrayLike, "N H"], *, n_components: int | None = None) -> PCA:
    """PCA by the SVD of the centred states `h - mean = U S V^T`: the components are the
    rows of `V^T`, the variances `S^2 / (N - 1)`. `n_components=None` keeps `min(N, H)`."""
    x = as_matrix("h", h)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 states, got {n}")
    kmax = min(n, d)
    k = kmax if n_components is None else check_int("n_components", n_components, minimum=1)
    if k > kmax:
        raise ValueError(f"n_components must be <= min(N, H) = {kmax}, got {k}")
    mu = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    var = s**2 / (n - 1)
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    return PCA(
        mean=mu, components=vt[:k], explained_variance=var[:k], explained_variance_ratio=ratio[:k]
    )


def pca_transform(pca: PCA, h: Float[ArrayLike, "N H"]) -> Float[np.ndarray, "N k"]:
    """Coordinates `(h - mean) V_k^T` of states in the principal subspace."""
    x = as_matrix("h", h)
    if x.shape[1] != pca.mean.shape[0]:
        raise ValueError(
            f"h must have {pca.mean.shape[0]} columns like the fitted states, got {x.shape}"
        )
    return (x - pca.mean) @ pca.components.T


class ManifoldDeparture(NamedTuple):
    r"""The result of `manifold_departure`.

    - `residual_ratio`: mean squared residual off the top-`k` subspace of the
      beyond-states over that of held-out inside states (`> 1`: leaving the manifold);
    - `distance_ratio`: the same ratio for the mean Mahalanobis distance inside the subspace
      (`> 1`: moving beyond the inside spread along the manifold);
    - `residual_inside`, `residual_beyond`, `distance_inside`, `distance_beyond`: the means;
    - `residuals_beyond`, `distances_beyond` `(N2,)`: per beyond-state values, in units of
      the held-out inside means (ratios per state, e.g. to plot against the horizon);
    - `explained_variance_ratio`: fraction of the inside variance the subspace captures;
    - `pca`: the fitted `PCA`.
    """

    residual_ratio: float
    distance_ratio: float
    residual_inside: float
    residual_beyond: float
    distance_inside: float
    distance_beyond: float
    residuals_beyond: np.ndarray
    distances_beyond: np.ndarray
    explained_variance_ratio: float
    pca: PCA


def manifold_departure(
    h_inside: Float[ArrayLike, "N1 H"],
    h_beyond: Float[ArrayLike, "N2 H"],
    *,
    n_components: int,
    holdout: float = 0.2,
    key: PRNGKeyArray | int | None = None,
) -> ManifoldDeparture:
    r"""How far hidden states beyond the training window leave the manifold of those inside it.

    A random `holdout` fraction of the inside states (chosen with `key`) is set
    aside; PCA on the rest gives the mean `mu`, the top-`k` components `V_k`
    (`k = n_components`) and their variances `lambda_j`. For a state `x`:

    - residual off the subspace: `r(x) = |(x - mu) - V_k^T V_k (x - mu)|^2`;
    - Mahalanobis distance inside it: `d(x) = sqrt(sum_j c_j^2 / lambda_j)`,
      `c = V_k (x - mu)`.

    `residual_ratio = mean r(beyond) / mean r(held-out inside)` and
    `distance_ratio = mean d(beyond) / mean d(held-out inside)`. Both are about
    1 when the beyond-states come from the inside distribution; a residual
    ratio well above 1 means the extrapolating network visits directions its
    training-window states never used, a distance ratio above 1 (with a
    residual ratio near 1) means it moves along the manifold but further out.
    The held-out denominator is floored at `1e-12` times the total inside
    variance (states lying exactly in a `k`-dimensional subspace).
    """
    x_in = as_matrix("h_inside", h_inside)
    x_out = as_matrix("h_beyond", h_beyond)
    if x_out.shape[1] != x_in.shape[1]:
        raise ValueError(
            "h_inside and h_beyond must have the same number of units, "
            f"got {x_in.shape[1]} and {x_out.shape[1]}"
        )
    k = check_int("n_components", n_components, minimum=1)
    if k >= x_in.shape[1]:
        raise ValueError(
            f"n_components must be < H = {x_in.shape[1]} (the full space leaves no residual), "
            f"got {k}"
        )
    if not 0 < float(holdout) < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
    n = x_in.shape[0]
    n_hold = int(round(float(holdout) * n))
    if n_hold < 1 or n - n_hold < k + 1:
        raise ValueError(
            f"too few inside states ({n}) for holdout={holdout} and n_components={k}: "
            f"need >= 1 held out and >= {k + 1} to fit"
        )
    perm = numpy_rng(key).permutation(n)
    fit, held = x_in[perm[n_hold:]], x_in[perm[:n_hold]]
    pca = pca_fit(fit, n_components=k)
    total_var = float(np.sum(np.var(fit, axis=0, ddof=1)))

    def measures(x):
        c = (x - pca.mean) @ pca.components.T
        res = np.sum((x - pca.mean) ** 2, axis=1) - np.sum(c**2, axis=1)
        lam = np.maximum(pca.explained_variance, 1e-300)
        return np.maximum(res, 0.0), np.sqrt(np.sum(c**2 / lam, axis=1))

    r_in, d_in = measures(held)
    r_out, d_out = measures(x_out)
    r_in_mean = max(float(r_in.mean()), 1e-12 * total_var, np.finfo(np.float64).tiny)
    d_in_mean = max(float(d_in.mean()), np.finfo(np.float64).tiny)
    return ManifoldDeparture(
        residual_ratio=float(r_out.mean()) / r_in_mean,
        distance_ratio=float(d_out.mean()) / d_in_mean,
        residual_inside=float(r_in.mean()),
        residual_beyond=float(r_out.mean()),
        distance_inside=float(d_in.mean()),
        distance_beyond=float(d_out.mean()),
        residuals_beyond=r_out / r_in_mean,
        distances_beyond=d_out / d_in_mean,
        explained_variance_ratio=float(np.sum(pca.explained_variance_ratio)),
        pca=pca,
    )
