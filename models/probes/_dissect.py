"""Network dissection (Bau et al. 2017): hidden units against binary concepts, by IoU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import ArrayLike, Bool, Float

from ._misc import as_matrix


class Dissection(NamedTuple):
    """The result of `dissect`.

    - `concepts`: the concept names, in column order;
    - `thresholds` `(H,)`: each unit's activation threshold;
    - `iou` `(H, C)`: IoU of each unit's mask with each concept;
    - `iou_chance` `(H, C)`: the IoU expected of independent masks of the same sizes;
    - `best_concept` (H names), `best_iou` `(H,)`: each unit's best concept;
    - `table`: rows `{"unit", "concept", "iou", "iou_chance", "threshold", "unit_fraction",
      "concept_fraction"}`, one per unit (its best concept), sorted by IoU, largest first.
    """

    concepts: tuple[str, ...]
    thresholds: np.ndarray
    iou: np.ndarray
    iou_chance: np.ndarray
    best_concept: tuple[str, ...]
    best_iou: np.ndarray
    table: list[dict[str, Any]]


def dissect(
    activations: Float[ArrayLike, "N H"],
    concepts: Mapping[str, Bool[ArrayLike, " N"]],
    *,
    quantile: float | str | None = None,
) -> Dissection:
    r"""Network dissection (Bau et al. 2017) of `H` units against binary concepts.

    Unit `u`'s mask is `M_u = {t : a_{t,u} > T_u}` with `T_u` the `quantile`
    quantile of its activations over the `N` samples; concept `c`'s mask is
    `C_c`. The score is `IoU(u, c) = |M_u & C_c| / |M_u | C_c|` (0 where the
    union is empty), and each unit is labelled by its best concept.

    `quantile=None` takes `0.99` when `N >= 1000` and `0.9` below (so that the
    mask keeps at least ~10 samples); Bau et al. use `0.995` on millions of
    pixels. Note that `IoU <= min(|M|, |C|) / max(|M|, |C|)`: a top-1% mask
    cannot score high on a concept that covers a quarter of the samples.
    `quantile="matched"` sets, per unit and concept, `T_{u,c}` so that the mask
    is as large as the concept (quantile `1 - |C_c| / N`), which removes that
    cap; `thresholds` then holds the mask of each unit's best concept.

    Only large positive activations count, as in the original method; to
    dissect the negative side too, pass `concatenate([a, -a], axis=1)`.
    `iou_chance` is the IoU expected of independent masks of sizes `m` and
    `c`: `(mc/N) / (m + c - mc/N)`.
    """
    a = as_matrix("activations", activations)
    n, h = a.shape
    if not isinstance(concepts, Mapping) or not concepts:
        raise ValueError("concepts must be a non-empty mapping name -> boolean mask (N,)")
    names = tuple(str(k) for k in concepts)
    cols = []
    for name, m in concepts.items():
        m = np.asarray(m)
        if m.shape != (n,):
            raise ValueError(
                f"concept {name!r} must be a mask of shape ({n},), got shape {m.shape}"
            )
        if m.dtype != bool:
            if not np.all((m == 0) | (m == 1)):
                raise ValueError(f"concept {name!r} must be boolean (or 0/1)")
            m = m.astype(bool)
        cols.append(m)
    cmask = np.stack(cols, axis=1)  # (N, C)
    csize = cmask.sum(axis=0).astype(np.float64)

    if quantile is None:
        quantile = 0.99 if n >= 1000 else 0.9
    if isinstance(quantile, str):
        if quantile != "matched":
            raise ValueError(
                f"quantile must be a number in (0, 1), None or 'matched', got {quantile!r}"
            )
        thr_uc = np.empty((h, len(names)))
        for j, cs in enumerate(csize):
            q = 1.0 - cs / n
            thr_uc[:, j] = np.quantile(a, q, axis=0) if cs > 0 else np.inf
        masks = a[:, :, None] > thr_uc[None]  # (N, H, C)
        inter = np.einsum("nhc,nc->hc", masks.astype(np.float64), cmask.astype(np.float64))
        msize = masks.sum(axis=0).astype(np.float64)
    else:
        q = float(quantile)
        if not 0 < q < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
        thr = np.quantile(a, q, axis=0)
        umask = a > thr  # (N, H)
        inter = umask.T.astype(np.float64) @ cmask.astype(np.float64)
        msize = np.broadcast_to(umask.sum(axis=0).astype(np.float64)[:, None], inter.shape)
    union = msize + csize[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    e_inter = msize * csize[None, :] / n
    e_union = msize + csize[None, :] - e_inter
    iou_chance = np.where(e_union > 0, e_inter / np.where(e_union > 0, e_union, 1.0), 0.0)

    best = np.argmax(iou, axis=1)
    best_iou = iou[np.arange(h), best]
    thresholds = thr_uc[np.arange(h), best] if isinstance(quantile, str) else thr
    table = [
        {
            "unit": int(u),
            "concept": names[best[u]],
            "iou": float(best_iou[u]),
            "iou_chance": float(iou_chance[u, best[u]]),
            "threshold": float(thresholds[u]),
            "unit_fraction": float(msize[u, best[u]] / n),
            "concept_fraction": float(csize[best[u]] / n),
        }
        for u in np.argsort(-best_iou, kind="stable")
    ]
    return Dissection(
        concepts=names,
        thresholds=np.asarray(thresholds, dtype=np.float64),
        iou=iou,
        iou_chance=iou_chance,
        best_concept=tuple(names[b] for b in best),
        best_iou=best_iou,
        table=table,
    )
