"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised in numpy.

`k_reciprocal_distance(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6,
lambda_value=0.3)` takes the same arguments and returns the same [Q, G]
matrix as the `re_ranking` function that re-id code bases copy from the
authors' Python version:

1. The original distance is the [N, N] matrix (N = Q + G) assembled from
   `[[q_q, q_g], [q_g.T, g_g]]`, SQUARED (callers pass plain distances);
   every column is divided by its maximum and the result is transposed, so
   row i is column i over its maximum (for a symmetric input: row i over
   its own maximum).
2. `ranks[i]` orders all N items by that row, nearest first.
3. The k-reciprocal set R(i, k) holds the j among the k + 1 nearest of i
   that have i among their k + 1 nearest (normally i itself too).
4. The expanded set R*(i) adds to R(i, k1) the set R(c, round(k1 / 2)) of
   every candidate c in R(i, k1) for which |R(c, k1/2) & R(i, k1)| >
   2/3 |R(c, k1/2)| (rounding half to even, as `np.around`: k1 = 5 gives
   2). The overlap is taken with the unexpanded R(i, k1).
5. V[i, j] = exp(-d[i, j]) / sum over R*(i) for j in R*(i), 0 elsewhere.
6. Local query expansion (skipped when k2 == 1): V[i] becomes the mean of
   the rows V[j] of its k2 nearest items (itself included).
7. For the query rows only: s[i, j] = sum_k min(V[i, k], V[j, k]) and the
   Jaccard distance 1 - s / (2 - s) (the rows of V sum to 1, so 2 - s is
   the sum of the maxima).
8. Result: `(1 - lambda) * jaccard + lambda * d`, query rows x gallery
   columns.

Numerical choices (where we differ from the copied code, and why):

* Everything is computed in float64 and returned as float64. The copied
  code stores the distances, V and the Jaccard distance in float32 (older
  feature-based copies, e.g. reid-strong-baseline/AGW, in float16), so its
  values differ from ours by about 1e-7 relative (float16: 1e-3), which
  can only matter for near-ties.
* Ties are broken by index: among equal distances the item with the
  smaller index (queries first, then the gallery, in the given order)
  ranks first. The copied code uses `np.argsort`'s default quicksort,
  whose order among exact ties is unspecified; without exact ties the
  rankings, and hence the sets, are the same.
* `2/3 |R|` is compared exactly in integers (3 * overlap > 2 * size); for
  the set sizes that occur (below 400) this equals the float comparison.
* The min-sum of step 7 runs over the (sparse) non-zeros, like the
  original's inverted index; only the gallery columns are computed.

Cost for N ~ 4,100 (SYSU 3,803 + 301; RegDB 2,060 + 2,060): one [N, N]
float64 distance matrix (about 135 MB) plus a few [N, N] bool matrices;
V is kept sparse. See benchmarks/evaluation.py for timings.

`euclidean_distance(a, b)` gives the plain distances to pass in from
features. For L2-normalised features it is sqrt(2 - 2 cos), whose square
(what the function works on) is the squared Euclidean distance that the
feature-based copies (reid-strong-baseline, AGW) compute themselves.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

__all__ = ["RerankParams", "euclidean_distance", "k_reciprocal_distance"]

# Expanded (query row, gallery column) pairs per Jaccard block: bounds the
# temporary memory (~5 arrays of this many 8-byte values).
_JACCARD_BLOCK_PAIRS = 4_000_000


@dataclasses.dataclass(frozen=True)
class RerankParams:
    """Parameters of `k_reciprocal_distance` (the paper's defaults)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self):
        _check_params(self.k1, self.k2, self.lambda_value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "k1": int(self.k1),
            "k2": int(self.k2),
            "lambda_value": float(self.lambda_value),
        }

    def describe(self) -> str:
        return f"k1={self.k1}, k2={self.k2}, lambda={self.lambda_value:g}"


def _check_params(k1, k2, lambda_value) -> None:
    for name, value in (("k1", k1), ("k2", k2)):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or value < 1
        ):
            raise ValueError(
                f"{name} must be a positive int, got {value!r} "
                "(the paper uses k1=20, k2=6)."
            )
    if (
        isinstance(lambda_value, bool)
        or not isinstance(lambda_value, numbers.Real)
        or not 0.0 <= float(lambda_value) <= 1.0
    ):
        raise ValueError(
            f"lambda_value must be a number in [0, 1], got "
            f"{lambda_value!r} (the paper uses 0.3)."
        )


def _as_distances(
    name: str, value, shape: tuple[int, int] | None
) -> np.ndarray:
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a real [rows, columns] array of "
            f"distances, got {type(value).__name__}."
        ) from None
    if out.ndim != 2 or 0 in out.shape:
        raise ValueError(
            f"{name} must be a non-empty 2-D array, got shape {out.shape}."
        )
    if shape is not None and out.shape != shape:
        raise ValueError(
            f"{name} must have shape {shape} (from q_g_dist [Q, G]: q_q_dist "
            f"is [Q, Q], g_g_dist is [G, G]), got {out.shape}."
        )
    if not np.all(np.isfinite(out)):
        raise ValueError(
            f"{name} has non-finite values (NaN or inf): "
            "re-ranking needs finite distances."
        )
    if np.any(out < 0):
        raise ValueError(
            f"{name} has negative values (min {out.min():g}): pass "
            "non-negative distances, e.g. euclidean_distance(features), not "
            "negative inner products."
        )
    return out


def k_reciprocal_distance(
    q_g_dist,
    q_q_dist,
    g_g_dist,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query-gallery distances (see the module docstring).

    Args:
        q_g_dist: [Q, G] query-gallery distances (non-negative, plain, not
            squared: the function squares them).
        q_q_dist: [Q, Q] query-query distances.
        g_g_dist: [G, G] gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhoods.
        k2: size of the local query expansion (1: none).
        lambda_value: weight of the original distance.

    Returns:
        [Q, G] float64 re-ranked distances, smaller = closer.

    Raises:
        ValueError: for bad shapes, non-finite or negative distances, bad
            parameters, or a column of the assembled matrix that is all
            zero (it cannot be normalised).
    """
    _check_params(k1, k2, lambda_value)
    q_g = _as_distances("q_g_dist", q_g_dist, None)
    num_q, num_g = q_g.shape
    q_q = _as_distances("q_q_dist", q_q_dist, (num_q, num_q))
    g_g = _as_distances("g_g_dist", g_g_dist, (num_g, num_g))
    n = num_q + num_g

    plain = np.block([[q_q, q_g], [q_g.T, g_g]])
    # Squaring is monotonic on non-negative floats: max of squares = square
    # of the max, exactly.
    col_max = np.square(plain.max(axis=0))
    if np.any(col_max == 0):
        bad = np.flatnonzero(col_max == 0)
        raise ValueError(
            f"items {bad[:5].tolist()} (rows of [q_q, q_g; q_g.T, g_g]) are "
            "at distance 0 from everything: the column normalisation is "
            "undefined. Are all the features identical?"
        )
    dist = _squared_transposed(plain)
    del plain
    dist /= col_max[:, None]

    k_fwd = min(n, k1 + 1)
    k_half = min(n, int(np.around(k1 / 2)) + 1)
    ranks = _nearest(dist, min(n, max(k1 + 1, k2)))
    rows = np.arange(n)[:, None]

    # recip[i, a]: ranks[i, a] is in R(i, k1). member: R(i, k1) as a matrix.
    fwd = ranks[:, :k_fwd]
    recip = _reciprocal(fwd)
    member = np.zeros((n, n), bool)
    member[np.broadcast_to(rows, fwd.shape)[recip], fwd[recip]] = True

    # The half sets R(c, k1/2) of every forward neighbour c of every i.
    half = ranks[:, :k_half]
    half_recip = _reciprocal(half)
    cand_items = half[fwd]  # [N, k_fwd, k_half]
    cand_valid = half_recip[fwd]
    size = cand_valid.sum(axis=-1)
    overlap = (cand_valid & member[rows[..., None], cand_items]).sum(axis=-1)
    accept = recip & (3 * overlap > 2 * size)
    expanded = member  # the overlaps above used the unexpanded sets
    add = accept[..., None] & cand_valid
    expanded[
        np.broadcast_to(rows[..., None], add.shape)[add], cand_items[add]
    ] = True

    # V as sparse rows (row-major COO), Gaussian weights normalised per row.
    v_row, v_col = np.nonzero(expanded)
    del member, expanded
    weight = np.exp(-dist[v_row, v_col])
    v_val = weight / np.bincount(v_row, weight, minlength=n)[v_row]

    if k2 != 1:
        v_row, v_col, v_val = _query_expansion(
            v_row, v_col, v_val, ranks[:, : min(n, k2)], n
        )

    similarity = _min_sum(v_row, v_col, v_val, num_q, n)
    jaccard = 1.0 - similarity / (2.0 - similarity)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]


def _squared_transposed(x: np.ndarray, block: int = 256) -> np.ndarray:
    """x.T ** 2, contiguous, in column blocks (a cache-friendlier transpose
    than one strided copy of the whole matrix)."""
    out = np.empty(x.shape[::-1], x.dtype)
    for start in range(0, x.shape[0], block):
        np.square(x[start : start + block].T, out=out[:, start : start + block])
    return out


def _nearest(dist: np.ndarray, k: int) -> np.ndarray:
    """[N, k] int64: each row's k nearest columns by (distance, index)."""
    n = dist.shape[1]
    if k >= n:
        return np.argsort(dist, axis=1, kind="stable")
    part = np.argpartition(dist, k - 1, axis=1)[:, :k]
    part_dist = np.take_along_axis(dist, part, axis=1)
    top = np.take_along_axis(
        part, np.lexsort((part, part_dist), axis=1), axis=1
    )
    # argpartition keeps an arbitrary subset of the values tied with the
    # k-th; rows where such a tie crosses the cut are sorted in full.
    kth = np.take_along_axis(dist, top[:, -1:], axis=1)
    tied = np.count_nonzero(dist <= kth, axis=1) > k
    if tied.any():
        top[tied] = np.argsort(dist[tied], axis=1, kind="stable")[:, :k]
    return top


def _reciprocal(neighbours: np.ndarray) -> np.ndarray:
    """[N, k] bool: neighbours[i, a] has i among its own k neighbours."""
    n = neighbours.shape[0]
    is_neighbour = np.zeros((n, n), bool)
    is_neighbour[np.arange(n)[:, None], neighbours] = True
    return is_neighbour[neighbours, np.arange(n)[:, None]]


def _ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for every (s, l), vectorised."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.arange(total) + np.repeat(starts - offsets, lengths)


def _query_expansion(v_row, v_col, v_val, neighbours, n):
    """Row i becomes the mean of the rows `neighbours[i]` (sparse COO)."""
    counts = np.bincount(v_row, minlength=n)
    row_start = np.cumsum(counts) - counts
    src = neighbours.ravel()
    lengths = counts[src]
    pos = _ragged_positions(row_start[src], lengths)
    dest = np.repeat(np.repeat(np.arange(n), neighbours.shape[1]), lengths)
    key, inverse = np.unique(dest * n + v_col[pos], return_inverse=True)
    value = np.bincount(inverse.ravel(), v_val[pos]) / neighbours.shape[1]
    return key // n, key % n, value


def _min_sum(v_row, v_col, v_val, num_q, n):
    """[Q, G] sum over k of min(V[i, k], V[Q + j, k]) (sparse V, COO)."""
    num_g = n - num_q
    in_gallery = v_row >= num_q
    # Gallery rows grouped by column k (the inverted index).
    g_order = np.argsort(v_col[in_gallery], kind="stable")
    g_row = v_row[in_gallery][g_order] - num_q
    g_val = v_val[in_gallery][g_order]
    g_count = np.bincount(v_col[in_gallery], minlength=n)
    g_start = np.cumsum(g_count) - g_count
    # Query entries (row-major, so each query's entries are contiguous).
    q_row, q_col, q_val = (x[~in_gallery] for x in (v_row, v_col, v_val))
    cost = np.cumsum(g_count[q_col])
    out = np.zeros((num_q, num_g))
    start = 0
    while start < q_row.size:
        # A block of whole query rows with about _JACCARD_BLOCK_PAIRS pairs.
        base = cost[start - 1] if start else 0
        stop = max(
            int(
                np.searchsorted(cost, base + _JACCARD_BLOCK_PAIRS, side="right")
            ),
            start + 1,
        )
        stop = min(
            int(np.searchsorted(q_row, q_row[stop - 1], side="right")),
            q_row.size,
        )
        first = int(q_row[start])
        lengths = g_count[q_col[start:stop]]
        pos = _ragged_positions(g_start[q_col[start:stop]], lengths)
        pairs = (
            np.repeat(q_row[start:stop] - first, lengths) * num_g + g_row[pos]
        )
        mins = np.minimum(np.repeat(q_val[start:stop], lengths), g_val[pos])
        num_rows = int(q_row[stop - 1]) - first + 1
        out[first : first + num_rows] = np.bincount(
            pairs, mins, minlength=num_rows * num_g
        ).reshape(num_rows, num_g)
        start = stop
    return out


def euclidean_distance(a, b=None) -> np.ndarray:
    """[A, B] float64 Euclidean distances between the rows of a and b.

    sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)), the inner products at the input
    precision (float32 features: float32 matmul), the rest in float64. With
    `b` omitted: the distances within `a`, with an exact zero diagonal.
    For unit rows this is sqrt(2 - 2 cos).
    """
    a = np.asarray(a)
    same = b is None
    b = a if same else np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must be [A, D] and [B, D] with the same "
            f"D, got shapes {a.shape} and {b.shape}."
        )
    if not (
        np.issubdtype(a.dtype, np.floating)
        and np.issubdtype(b.dtype, np.floating)
    ):
        a, b = a.astype(np.float64), b.astype(np.float64)
    sq_a = np.einsum("nd,nd->n", a, a, dtype=np.float64)
    sq_b = sq_a if same else np.einsum("nd,nd->n", b, b, dtype=np.float64)
    sq = sq_a[:, None] + sq_b[None, :] - 2.0 * (a @ b.T).astype(np.float64)
    np.maximum(sq, 0.0, out=sq)
    if same:
        np.fill_diagonal(sq, 0.0)
    return np.sqrt(sq, out=sq)
