"""Per-query ranks, AP and INP for `mclnet_jax.metrics`, vectorised.

Private. Instead of an argsort of every row, the rank of each positive is
counted directly: 1 + the kept gallery items that are closer, or equally
close with a smaller column index (a stable order). Rows are cut into
pieces of at most `SORT_CHUNK` values sorted by value only (short sorts are
cheaper per element than a long argsort), and the counts come from binary
searches vectorised over all (positive, piece) pairs. Exact ties (and, for
float64 input, values equal at float32 precision) are counted exactly
against the original values. The identity de-duplication of the SYSU and
LLCM CMC uses each identity's closest kept item: an identity precedes the
first match iff that item ranks before it. Results do not depend on the
chunk and block sizes.
"""

import numpy as np

# Largest number of matrix elements handled at once; larger problems are
# split into blocks of queries.
BLOCK_ELEMENTS = 1 << 24
# Elements per chunk in the exact tie-count fallback.
TIE_CHUNK_ELEMENTS = 1 << 22
# Longest piece of a row sorted at once (see _count_closer).
SORT_CHUNK = 512

# The SYSU protocol removes gallery camera 2 for queries from camera 3.
_SYSU_QUERY_CAMERA = 3
_SYSU_REMOVED_GALLERY_CAMERA = 2


def per_query(dist, qid, gid, qcam, gcam, *, flavour):
    """Per-query results of one query set against one gallery.

    Args:
        dist: [Q, G] float32 or float64, finite.
        qid, gid: [Q], [G] int64 identities.
        qcam, gcam: [Q], [G] int64 cameras, or None (standard flavour only).
        flavour: "sysu", "standard" or "llcm" (see `mclnet_jax.metrics`).

    Returns:
        (valid, ap, inp, first_rank), each [Q]: whether the query has a
        positive after the removal, its AP, its INP and the 1-based rank of
        its first match (SYSU, LLCM: among de-duplicated identities).
    """
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
    block = max(1, BLOCK_ELEMENTS // num_g)
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
    return valid, ap, inp, first_rank


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
        removed_rows = qcam == _SYSU_QUERY_CAMERA
        removed_cols = gcam == _SYSU_REMOVED_GALLERY_CAMERA
        if removed_rows.any() and removed_cols.any():
            dist = np.where(
                removed_rows[:, None] & removed_cols[None, :], np.inf, dist
            ).astype(dist.dtype, copy=False)
        drop = removed_rows[pos_q] & removed_cols[pos_g]
    elif qcam is not None:
        # Standard and LLCM: only same-identity items can be removed here,
        # exactly the positives seen from the same camera.
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

    if flavour in ("sysu", "llcm"):
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
            identity (see `per_query`).

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
    chunk = max(1, BLOCK_ELEMENTS // (num_u * width))
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


def _count_closer(dist, pos_q, pos_g):
    """Kept gallery items ranked before each positive (stable order).

    Each chunk of a row (see the module docstring) is sorted, and the values
    below a positive are counted by a binary search in each chunk of its
    row, vectorised over all (positive, chunk) pairs: the Python loop is
    over bisection steps only.

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
    num_chunks = -(-num_g // SORT_CHUNK)
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
    chunk = max(1, TIE_CHUNK_ELEMENTS // num_g)
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
