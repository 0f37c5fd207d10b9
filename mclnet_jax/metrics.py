"""Re-identification retrieval metrics: CMC, mAP and mINP, vectorised.

Two flavours of the community's evaluation code are implemented, both from a
distance matrix (smaller = closer):

* **SYSU flavour** (`sysu_metrics`, the SYSU-MM01 evaluation): for a query
  from camera 3, every gallery image from camera 2 is discarded (all
  identities, not only the query's). The CMC is computed on the ranked list
  of gallery *identities* with repeats removed (first occurrence kept); mAP
  and mINP are computed on the image ranking after the removal.
* **Standard flavour** (`standard_metrics`, RegDB / Market style): gallery
  images with the query's identity *and* camera are discarded (nothing is
  discarded when no cameras are given, or for RegDB where query and gallery
  cameras differ). CMC, mAP and mINP are all computed on the image ranking.

Common to both:

* AP = mean over the query's positives of (positives up to and including
  rank r) / r; INP = (number of positives) / (rank of the last positive);
  ranks are 1-based positions in the ranking after the removal.
* Queries without any positive left in the gallery are skipped, and all
  averages are over the remaining ("valid") queries. If every query is
  skipped a `ValueError` is raised.
* Ties in distance are broken by gallery order (a stable sort: the gallery
  item with the smaller column index ranks first). The community code uses
  `np.argsort` (an unstable quicksort), so with exactly tied distances its
  order, and hence its numbers, may differ from ours; without ties the
  numbers are identical.
* CMC entries beyond the length of a query's ranked list (fewer than
  `max_rank` gallery items or identities) keep the list's last value, which
  is 1 for every valid query (the community code would produce a ragged
  array there).

Nothing here loops over queries in Python. Instead of an argsort of every
row, the rank of each positive is computed directly: rank = 1 + (number of
kept gallery items that are closer, or equally close with a smaller column
index). Rows are cut into pieces of at most 512 values that are sorted by
value only (short sorts are several times faster per element than a long
argsort), and the counts come from binary searches vectorised over all
(positive, piece) pairs. Exact ties (and, for float64 input, values that
only differ beyond float32 precision) are detected and counted exactly
against the original values. The SYSU identity de-duplication uses each
identity's closest kept item: an identity precedes the first match iff that
item ranks before it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "RetrievalMetrics",
    "l2_normalize",
    "negative_inner_product",
    "standard_metrics",
    "sysu_metrics",
]

# Largest number of matrix elements handled at once; larger problems are
# split into blocks of queries (results do not depend on the block size).
_BLOCK_ELEMENTS = 1 << 24
# Elements per chunk in the exact tie-count fallback.
_TIE_CHUNK_ELEMENTS = 1 << 22
# Longest piece of a row sorted at once (see _count_closer).
_SORT_CHUNK = 512


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
    mAP: float  # pylint: disable=invalid-name
    mINP: float  # pylint: disable=invalid-name
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
    ranking after the removal. See the module docstring for ties and skips.

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


# ---------------------------------------------------------------------------
# Implementation.


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


def _count_closer(dist, pos_q, pos_g):
    """Kept gallery items ranked before each positive (stable order).

    Every row is cut into chunks of at most _SORT_CHUNK values, each chunk
    is sorted (numpy sorts short rows several times faster per element
    than long ones), and the values below a positive are counted by a
    binary search in each chunk of its row, vectorised over all
    (positive, chunk) pairs: the Python loop is over bisection steps only.

    Args:
        dist: [Q, G] float32/float64 with removed items set to +inf.
        pos_q, pos_g: [P] int64 row / column of each positive.

    Returns:
        [P] int64 counts: #{g: dist[q, g] < v} + #{g < pos_g: dist[q, g] == v}
        where v = dist[q, pos_g].
    """
    num_q, num_g = dist.shape
    if dist.dtype == np.float32:
        dist32 = dist
    else:
        with np.errstate(over="ignore"):  # huge values become inf: handled
            dist32 = dist.astype(np.float32)
    needles = dist32[pos_q, pos_g]
    num_chunks = -(-num_g // _SORT_CHUNK)
    width = -(-num_g // num_chunks)
    # +inf padding is never below a finite positive.
    chunks = np.full((num_q, num_chunks * width), np.inf, np.float32)
    chunks[:, :num_g] = dist32
    chunks = chunks.reshape(num_q * num_chunks, width)
    chunks.sort(axis=1)
    flat = chunks.ravel()
    last = flat.size - 1

    # Lower bound of each needle in each chunk of its row.
    start = (
        (pos_q * num_chunks)[:, None] + np.arange(num_chunks)
    ).ravel() * width
    value = np.repeat(needles, num_chunks)
    lo, hi = start.copy(), start + width
    for _ in range(int(width).bit_length()):
        active = lo < hi
        mid = (lo + hi) >> 1
        go_right = active & (flat[np.minimum(mid, last)] < value)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    counts = (lo - start).reshape(-1, num_chunks).sum(axis=1)
    # The positive itself is one value equal to the needle; another one (in
    # any chunk) means a tie, or for float64 input a float32-level near-tie:
    # those are counted exactly against the original values.
    end = start + width
    equal_first = (lo < end) & (flat[np.minimum(lo, last)] == value)
    equal_second = (lo + 1 < end) & (flat[np.minimum(lo + 1, last)] == value)
    ambiguous = (
        equal_first.reshape(-1, num_chunks).sum(axis=1) > 1
    ) | equal_second.reshape(-1, num_chunks).any(axis=1)
    idx = np.flatnonzero(ambiguous)
    if idx.size:
        counts[idx] = _count_closer_exact(dist, pos_q[idx], pos_g[idx])
    return counts


def _count_closer_exact(dist, pos_q, pos_g):
    num_g = dist.shape[1]
    chunk = max(1, _TIE_CHUNK_ELEMENTS // num_g)
    columns = np.arange(num_g)
    out = np.empty(pos_q.shape[0], dtype=np.int64)
    for start in range(0, pos_q.shape[0], chunk):
        q = pos_q[start : start + chunk]
        g = pos_g[start : start + chunk]
        rows = dist[q]
        v = rows[np.arange(q.shape[0]), g][:, None]
        closer = (rows < v) | ((rows == v) & (columns[None, :] < g[:, None]))
        out[start : start + chunk] = closer.sum(axis=1)
    return out


def _evaluate(dist, qid, gid, qcam, gcam, *, max_rank, flavour):
    num_q, num_g = dist.shape
    # Gallery columns grouped by identity (column order kept inside a group).
    uniq, g_group = np.unique(gid, return_inverse=True)
    by_group = np.argsort(g_group, kind="stable")
    group_size = np.bincount(g_group, minlength=uniq.size)
    group_start = np.concatenate([[0], np.cumsum(group_size)[:-1]])

    q_group = np.searchsorted(uniq, qid)
    q_group_c = np.minimum(q_group, uniq.size - 1)
    has_group = uniq[q_group_c] == qid

    ap = np.zeros(num_q)
    inp = np.zeros(num_q)
    first_rank = np.zeros(num_q, dtype=np.int64)
    valid = np.zeros(num_q, dtype=bool)
    block = max(1, _BLOCK_ELEMENTS // num_g)
    for start in range(0, num_q, block):
        sl = slice(start, min(num_q, start + block))
        out = _evaluate_block(
            dist[sl],
            qid[sl],
            gid,
            None if qcam is None else qcam[sl],
            gcam,
            q_group=q_group_c[sl],
            has_group=has_group[sl],
            by_group=by_group,
            group_size=group_size,
            group_start=group_start,
            flavour=flavour,
        )
        valid[sl], ap[sl], inp[sl], first_rank[sl] = out

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


def _evaluate_block(
    dist,
    qid,
    gid,
    qcam,
    gcam,
    *,
    q_group,
    has_group,
    by_group,
    group_size,
    group_start,
    flavour,
):
    """Per-query (valid, AP, INP, CMC rank) for a block of queries."""
    num_q, num_g = dist.shape
    rows = np.arange(num_q)
    # All (query, gallery) pairs with the same identity, grouped by query.
    n_same = np.where(has_group, group_size[q_group], 0)
    pos_q = np.repeat(rows, n_same).astype(np.int64)
    offset = np.arange(pos_q.size) - np.repeat(
        np.cumsum(n_same) - n_same, n_same
    )
    pos_g = by_group[group_start[q_group[pos_q]] + offset].astype(np.int64)

    if flavour == "sysu":
        removed_rows = qcam == 3
        removed_cols = gcam == 2
        if removed_rows.any() and removed_cols.any():
            dist = np.where(
                removed_rows[:, None] & removed_cols[None, :], np.inf, dist
            ).astype(dist.dtype, copy=False)
        drop = removed_rows[pos_q] & removed_cols[pos_g]
    elif qcam is not None:
        # Only same-identity items can be removed here: exactly the
        # positives seen from the same camera.
        drop = qcam[pos_q] == gcam[pos_g]
        if drop.any():
            dist = dist.copy()
            dist[pos_q[drop], pos_g[drop]] = np.inf
    else:
        drop = np.zeros(pos_q.shape, dtype=bool)
    pos_q, pos_g = pos_q[~drop], pos_g[~drop]

    num_pos = np.bincount(pos_q, minlength=num_q)
    valid = num_pos > 0
    ap = np.zeros(num_q)
    inp = np.zeros(num_q)
    cmc_rank = np.zeros(num_q, dtype=np.int64)
    if pos_q.size == 0:
        return valid, ap, inp, cmc_rank

    ranks = _count_closer(dist, pos_q, pos_g) + 1  # 1-based, after removal
    order = np.lexsort((ranks, pos_q))
    pos_q, pos_g, ranks = pos_q[order], pos_g[order], ranks[order]
    starts = np.cumsum(num_pos) - num_pos  # first positive of each query
    ends = starts + num_pos - 1
    k = np.arange(pos_q.size) - starts[pos_q] + 1  # positives so far
    ap = np.bincount(pos_q, weights=k / ranks, minlength=num_q)
    ap[valid] /= num_pos[valid]
    inp[valid] = num_pos[valid] / ranks[ends[valid]]
    cmc_rank[valid] = ranks[starts[valid]]

    if flavour == "sysu":
        # Computed for every row (invalid rows get column 0 and are
        # ignored): cheaper than copying out the valid rows.
        first_g = np.where(valid, pos_g[np.minimum(starts, pos_g.size - 1)], 0)
        before = _distinct_identities_before(
            dist,
            first_g,
            q_group,
            by_group=by_group,
            group_start=group_start,
            group_size=group_size,
        )
        cmc_rank[valid] = before[valid] + 1
    return valid, ap, inp, cmc_rank


def _distinct_identities_before(
    dist, first_g, own_group, *, by_group, group_start, group_size
):
    """Number of other identities ranked before each query's first match.

    An identity precedes the first match (column f, distance d) iff one of
    its kept items has distance < d, or == d with a column index < f. Its
    position in the de-duplicated identity ranking is that count + 1.

    Args:
        dist: [Q, G] distances, removed items +inf.
        first_g: [Q] column of each query's first match.
        own_group: [Q] index of each query's identity among the gallery's.
        by_group, group_start, group_size: gallery columns grouped by
            identity (see `_evaluate`).

    Returns:
        [Q] int64 counts.
    """
    num_q, num_g = dist.shape
    # [U, S] columns of each identity's items, padded by repeating the
    # identity's first column (harmless for min / any). A padded gather is
    # much faster than ufunc.reduceat along rows.
    num_u, width = group_size.shape[0], int(group_size.max())
    slot = np.minimum(np.arange(width)[None, :], group_size[:, None] - 1)
    members = by_group[group_start[:, None] + slot]
    chunk = max(1, _BLOCK_ELEMENTS // (num_u * width))
    columns = np.arange(num_g)
    count = np.empty(num_q, dtype=np.int64)
    for start in range(0, num_q, chunk):
        block = dist[start : start + chunk]
        first, own = (
            first_g[start : start + chunk],
            own_group[start : start + chunk],
        )
        rows = np.arange(block.shape[0])
        d_first = block[rows, first][:, None]
        group_min = block[:, members].min(axis=2)  # [n, U]
        precedes = group_min < d_first
        tie = group_min == d_first
        tie[rows, own] = False
        tie_rows = np.flatnonzero(tie.any(axis=1))
        if tie_rows.size:
            earlier_equal = (block[tie_rows] == d_first[tie_rows]) & (
                columns[None, :] < first[tie_rows, None]
            )
            precedes[tie_rows] |= earlier_equal[:, members].any(axis=2)
        precedes[rows, own] = False
        count[start : start + chunk] = precedes.sum(axis=1)
    return count
