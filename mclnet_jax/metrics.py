"""Re-identification retrieval metrics: CMC, mAP and mINP, vectorised.

From a distance matrix (smaller = closer), in the three flavours of the
community's evaluation code: `sysu_metrics` (SYSU-MM01), `standard_metrics`
(RegDB, Market style) and `llcm_metrics` (LLCM). Queries without a positive are
skipped; ties in distance are broken by gallery order (a stable sort).
Definitions: docs/evaluation.md, "Metrics".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mclnet_jax import _ranking

__all__ = [
    "RetrievalMetrics",
    "l2_normalize",
    "llcm_metrics",
    "negative_inner_product",
    "standard_metrics",
    "sysu_metrics",
]


@dataclasses.dataclass(frozen=True)
class RetrievalMetrics:
    """Metrics of one query set against one gallery.

    Attributes:
        cmc: [max_rank] float64, fraction of valid queries whose first
            correct match is within rank k+1 (`cmc[0]` is rank-1 accuracy).
        mAP: mean average precision over valid queries, in [0, 1].
        mINP: mean inverse negative penalty over valid queries, in [0, 1].
        num_queries: number of queries given.
        num_valid_queries: queries with at least one positive in the gallery
            after the removal (the others are skipped).
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_queries: int
    num_valid_queries: int

    def rank(self, k: int) -> float:
        """Rank-k accuracy (1-based k), a fraction in [0, 1]."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(
                f"rank k={k} is outside 1..{len(self.cmc)}; compute the "
                "metrics with a larger max_rank."
            )
        return float(self.cmc[k - 1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (fractions, not percent)."""
        return {
            "cmc": [float(x) for x in self.cmc],
            "mAP": float(self.mAP),
            "mINP": float(self.mINP),
            "num_queries": int(self.num_queries),
            "num_valid_queries": int(self.num_valid_queries),
        }


def l2_normalize(features: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm.

    Args:
        features: [N, D] float.
        eps: lower bound on the norm (all-zero rows stay zero).

    Returns:
        [N, D] float32 (float64 input stays float64).
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(
            f"features must be [N, D], got shape {features.shape}."
        )
    if not np.issubdtype(features.dtype, np.floating):
        features = features.astype(np.float32)
    elif features.dtype != np.float64:
        features = features.astype(np.float32, copy=False)
    norms = np.sqrt(np.einsum("nd,nd->n", features, features))
    return features / np.maximum(norms, eps)[:, None].astype(features.dtype)


def negative_inner_product(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    *,
    normalize: bool = True,
) -> np.ndarray:
    """Distance matrix `-q @ g.T` as the community code computes it.

    Args:
        query_features: [Q, D] float.
        gallery_features: [G, D] float.
        normalize: L2-normalise the rows first (the community protocol; with
            unit rows this is cosine distance minus 1, up to sign).

    Returns:
        [Q, G] float32 (float64 if both inputs are float64); smaller =
        closer.
    """
    q = np.asarray(query_features)
    g = np.asarray(gallery_features)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            "query_features and gallery_features must be [Q, D] and [G, D] "
            f"with the same D, got {q.shape} and {g.shape}."
        )
    if normalize:
        q, g = l2_normalize(q), l2_normalize(g)
    dist = q @ g.T
    np.negative(dist, out=dist)
    return dist


def sysu_metrics(
    distmat: np.ndarray,
    *,
    query_ids: np.ndarray,
    gallery_ids: np.ndarray,
    query_cams: np.ndarray,
    gallery_cams: np.ndarray,
    max_rank: int = 20,
) -> RetrievalMetrics:
    """SYSU-MM01 metrics (the community's `eval_sysu` protocol).

    For queries from camera 3 all camera-2 gallery images are removed; CMC
    on the ranked identities with repeats removed, mAP and mINP on the image
    ranking after the removal.

    Args:
        distmat: [Q, G] float, finite; smaller = closer.
        query_ids: [Q] int identities.
        gallery_ids: [G] int identities.
        query_cams: [Q] int cameras (SYSU: 3 or 6).
        gallery_cams: [G] int cameras (SYSU: 1, 2, 4, 5).
        max_rank: length of the returned CMC.

    Returns:
        `RetrievalMetrics`.

    Raises:
        ValueError: on malformed inputs or if no query has a positive.
    """
    dist, qid, gid, qcam, gcam = _check_inputs(
        distmat,
        query_ids,
        gallery_ids,
        query_cams,
        gallery_cams,
        max_rank,
        cams_required=True,
    )
    return _evaluate(
        dist, qid, gid, qcam, gcam, max_rank=max_rank, flavour="sysu"
    )


def standard_metrics(
    distmat: np.ndarray,
    *,
    query_ids: np.ndarray,
    gallery_ids: np.ndarray,
    query_cams: np.ndarray | None = None,
    gallery_cams: np.ndarray | None = None,
    max_rank: int = 20,
) -> RetrievalMetrics:
    """Standard re-id metrics (the community's `eval_regdb` / Market style).

    Gallery items with the query's identity and camera are removed (if
    cameras are given); CMC, mAP and mINP on the image ranking.

    Args:
        distmat: [Q, G] float, finite; smaller = closer.
        query_ids: [Q] int identities.
        gallery_ids: [G] int identities.
        query_cams: [Q] int cameras, or None (then nothing is removed).
        gallery_cams: [G] int cameras, or None (both or neither).
        max_rank: length of the returned CMC.

    Returns:
        `RetrievalMetrics`.

    Raises:
        ValueError: on malformed inputs or if no query has a positive.
    """
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError(
            "Pass both query_cams and gallery_cams, or neither (then no "
            "same-camera removal is done)."
        )
    dist, qid, gid, qcam, gcam = _check_inputs(
        distmat,
        query_ids,
        gallery_ids,
        query_cams,
        gallery_cams,
        max_rank,
        cams_required=False,
    )
    return _evaluate(
        dist, qid, gid, qcam, gcam, max_rank=max_rank, flavour="standard"
    )


def llcm_metrics(
    distmat: np.ndarray,
    *,
    query_ids: np.ndarray,
    gallery_ids: np.ndarray,
    query_cams: np.ndarray,
    gallery_cams: np.ndarray,
    max_rank: int = 20,
) -> RetrievalMetrics:
    """LLCM metrics (the LLCM reference code's `eval_llcm` protocol).

    Gallery items with the query's identity and camera are removed (LLCM
    numbers its cameras across modalities: a visible and an infrared image
    of camera 4 are from one camera); CMC on the ranked identities with
    repeats removed, as `sysu_metrics`; mAP and mINP on the image ranking
    after the removal.

    Args:
        distmat: [Q, G] float, finite; smaller = closer.
        query_ids: [Q] int identities.
        gallery_ids: [G] int identities.
        query_cams: [Q] int cameras (LLCM: 1..9).
        gallery_cams: [G] int cameras (LLCM: 1..9).
        max_rank: length of the returned CMC.

    Returns:
        `RetrievalMetrics`.

    Raises:
        ValueError: on malformed inputs or if no query has a positive.
    """
    dist, qid, gid, qcam, gcam = _check_inputs(
        distmat,
        query_ids,
        gallery_ids,
        query_cams,
        gallery_cams,
        max_rank,
        cams_required=True,
    )
    return _evaluate(
        dist, qid, gid, qcam, gcam, max_rank=max_rank, flavour="llcm"
    )


def _check_inputs(
    distmat,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    max_rank,
    *,
    cams_required,
):
    """Checked inputs: float32/float64 distances and int64 labels (or None)."""
    dist = np.asarray(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be [Q, G], got shape {dist.shape}.")
    if not (
        np.issubdtype(dist.dtype, np.floating)
        or np.issubdtype(dist.dtype, np.integer)
    ):
        raise ValueError(f"distmat must be numeric, got dtype {dist.dtype}.")
    if dist.dtype not in (np.float32, np.float64):
        dist = dist.astype(
            np.float32 if dist.dtype == np.float16 else np.float64
        )
    num_q, num_g = dist.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(
            f"distmat is empty (shape {dist.shape}): need at least one "
            "query and one gallery item."
        )
    # A sum is a cheap finiteness test (NaN / inf propagate); only if it
    # fails (or overflows) is every element checked.
    with np.errstate(over="ignore", invalid="ignore"):
        total = dist.sum(dtype=np.float64)
    if not np.isfinite(total) and not np.all(np.isfinite(dist)):
        raise ValueError(
            "distmat contains NaN or infinite values; check the features "
            "(e.g. NaNs from a diverged model)."
        )
    if (
        isinstance(max_rank, bool)
        or not isinstance(max_rank, (int, np.integer))
        or max_rank < 1
    ):
        raise ValueError(f"max_rank must be a positive int, got {max_rank!r}.")

    def as_int(name, x, n):
        if x is None:
            if cams_required:
                raise ValueError(f"{name} is required.")
            return None
        x = np.asarray(x)
        if x.ndim != 1 or x.shape[0] != n:
            raise ValueError(
                f"{name} must be a 1-D array of length {n} (matching "
                f"distmat {dist.shape}), got shape {x.shape}."
            )
        if not np.issubdtype(x.dtype, np.integer):
            if np.issubdtype(x.dtype, np.floating) and np.all(x == np.round(x)):
                x = x.astype(np.int64)
            else:
                raise ValueError(f"{name} must hold integers, got {x.dtype}.")
        return x.astype(np.int64, copy=False)

    return (
        dist,
        as_int("query_ids", query_ids, num_q),
        as_int("gallery_ids", gallery_ids, num_g),
        as_int("query_cams", query_cams, num_q),
        as_int("gallery_cams", gallery_cams, num_g),
    )


def _evaluate(dist, qid, gid, qcam, gcam, *, max_rank, flavour):
    """Aggregates `_ranking.per_query` into `RetrievalMetrics`."""
    num_q = dist.shape[0]
    valid, ap, inp, first_rank = _ranking.per_query(
        dist, qid, gid, qcam, gcam, flavour=flavour
    )
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"None of the {num_q} queries has a matching identity in the "
            "gallery (after the camera removal), so no metric is defined; "
            "check that query and gallery identities overlap."
        )
    # cmc[k] = fraction of valid queries whose first match has rank <= k+1.
    hist = np.bincount(
        np.minimum(first_rank[valid], max_rank + 1) - 1, minlength=max_rank + 1
    )[:max_rank]
    cmc = np.cumsum(hist) / num_valid
    return RetrievalMetrics(
        cmc=cmc,
        mAP=float(ap[valid].mean()),
        mINP=float(inp[valid].mean()),
        num_queries=num_q,
        num_valid_queries=num_valid,
    )
