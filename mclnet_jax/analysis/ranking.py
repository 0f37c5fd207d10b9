"""Rank lists: which queries to show, their top-k, and the figure.

Gallery items are ranked as the metrics rank them (distance, ties by gallery
order) after the protocol's removal; borders are green for the query's
identity and red for others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mclnet_jax.analysis import canvas

# Border colours (RGB, 0..255) of the rank lists.
HIT_COLOR = (0, 160, 0)
MISS_COLOR = (220, 0, 0)
QUERY_COLOR = (40, 40, 40)


@dataclasses.dataclass(frozen=True)
class RankLists:
    """The top-k lists of the queries shown in a rank-list figure.

    Attributes:
        query: [n] int64 rows of the distance matrix (query positions),
            rank-1 successes first, then failures, each ascending.
        gallery: [n, k] int64 columns (gallery positions), closest first,
            excluded gallery items never appear.
        distance: [n, k] float32 distances of those pairs.
        hit: [n, k] bool, the gallery item has the query's identity.
        failure: [n] bool, the rank-1 item is another identity.
        num_valid: queries that have a match in the gallery (the pool the
            selection was drawn from; the others are skipped as in the
            metric).
        num_failures: rank-1 failures among the valid queries.
    """

    query: np.ndarray
    gallery: np.ndarray
    distance: np.ndarray
    hit: np.ndarray
    failure: np.ndarray
    num_valid: int
    num_failures: int


def _excluded(flavour: str, qid, gid, qcam, gcam) -> np.ndarray:
    """[Q, G] bool: gallery items the metric removes for each query."""
    if flavour == "sysu":
        # The SYSU evaluation drops camera 2 for camera-3 queries.
        return (qcam == 3)[:, None] & (gcam == 2)[None, :]
    if flavour == "standard":
        return (qid[:, None] == gid[None, :]) & (qcam[:, None] == gcam[None, :])
    raise ValueError(f"flavour must be 'sysu' or 'standard', got {flavour!r}.")


def rank_lists(
    distmat,
    *,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    flavour: str,
    num_queries: int = 8,
    top_k: int = 10,
    seed: int = 0,
) -> RankLists:
    """Chooses queries to show and their top-k gallery items.

    Gallery items are ranked by distance, ties by gallery order (as the
    metrics do), after removing what the protocol removes ("sysu": camera 2
    for camera-3 queries; "standard": same identity and camera). Queries
    with no match left are skipped. Of the rest, `num_queries // 2` rank-1
    failures are drawn (all of them if fewer) and rank-1 successes fill the
    other places (failures again if successes run out), with
    `np.random.default_rng(seed)`.

    Args:
        distmat: [Q, G] float, smaller = closer.
        query_ids, gallery_ids: [Q], [G] int identities.
        query_cams, gallery_cams: [Q], [G] int cameras.
        flavour: "sysu" or "standard" (see above).
        num_queries: queries to show (fewer if fewer are valid).
        top_k: gallery items per query (fewer if the gallery is smaller).
        seed: seed of the draw.

    Returns:
        `RankLists`.
    """
    dist = np.asarray(distmat)
    if dist.ndim != 2 or 0 in dist.shape:
        raise ValueError(
            f"distmat must be a non-empty [Q, G] matrix, got "
            f"shape {dist.shape}."
        )
    if not np.all(np.isfinite(dist)):
        raise ValueError(
            "distmat contains NaN or infinite values; check the features."
        )
    num_q, num_g = dist.shape
    qid = canvas.as_1d_int("query_ids", query_ids, num_q)
    gid = canvas.as_1d_int("gallery_ids", gallery_ids, num_g)
    qcam = canvas.as_1d_int("query_cams", query_cams, num_q)
    gcam = canvas.as_1d_int("gallery_cams", gallery_cams, num_g)
    num_queries = canvas.check_positive_int("num_queries", num_queries)
    top_k = canvas.check_positive_int("top_k", top_k)

    removed = _excluded(flavour, qid, gid, qcam, gcam)
    same = qid[:, None] == gid[None, :]
    valid = np.any(same & ~removed, axis=1)
    if not valid.any():
        raise ValueError(
            "no query has a matching identity in the gallery (after the "
            "protocol's removal): nothing to show."
        )
    masked = np.where(removed, np.inf, dist.astype(np.float64))
    # Stable: equal distances keep gallery order, as in the metrics.
    order = np.argsort(masked, axis=1, kind="stable")
    first = order[:, 0]
    failure = valid & (gid[first] != qid)
    failures = np.flatnonzero(failure)
    successes = np.flatnonzero(valid & ~failure)

    rng = np.random.default_rng(seed)
    n_fail = min(failures.size, num_queries // 2)
    n_succ = min(successes.size, num_queries - n_fail)
    n_fail = min(failures.size, num_queries - n_succ)
    chosen_succ = np.sort(rng.choice(successes, n_succ, replace=False))
    chosen_fail = np.sort(rng.choice(failures, n_fail, replace=False))
    rows = np.concatenate([chosen_succ, chosen_fail]).astype(np.int64)

    # Only kept items are shown: at most the number kept for that row.
    k = int(min(top_k, np.min((~removed[rows]).sum(axis=1))))
    cols = order[rows, :k]
    return RankLists(
        query=rows,
        gallery=cols.astype(np.int64),
        distance=np.take_along_axis(dist[rows], cols, axis=1).astype(
            np.float32
        ),
        hit=gid[cols] == qid[rows][:, None],
        failure=failure[rows],
        num_valid=int(valid.sum()),
        num_failures=int(failures.size),
    )


def draw_rank_lists(
    path: str,
    lists: RankLists,
    *,
    query_images,
    gallery_images,
    title: str = "",
    query_labels: Sequence[str] | None = None,
) -> str:
    """Draws rank lists: one row per query, its top-k to the right.

    Args:
        path: output PNG.
        lists: from `rank_lists`.
        query_images: [n, H, W, 3] the images of `lists.query`, float in
            [0, 1] or uint8.
        gallery_images: [n, k, H, W, 3] the images of `lists.gallery`.
        title: figure title.
        query_labels: [n] text under each query (e.g. identity, camera).

    Returns:
        `path`.
    """
    n, k = lists.gallery.shape
    query_images = canvas.to_uint8(query_images)
    gallery_images = canvas.to_uint8(gallery_images)
    if query_images.ndim != 4 or query_images.shape[0] != n:
        raise ValueError(
            f"query_images must be [n={n}, H, W, 3], got shape "
            f"{query_images.shape}."
        )
    if gallery_images.ndim != 5 or gallery_images.shape[:2] != (n, k):
        raise ValueError(
            f"gallery_images must be [n={n}, k={k}, H, W, 3], "
            f"got shape {gallery_images.shape}."
        )
    if query_labels is not None and len(query_labels) != n:
        raise ValueError(
            f"query_labels needs {n} entries, got {len(query_labels)}."
        )
    height, width = query_images.shape[1:3]
    cell_h = 1.15
    cell_w = cell_h * width / height
    gap = 0.3 * cell_w
    # Room for the space between frames (wspace: a quarter of a cell).
    fig_w = 1.25 * (k + 1) * cell_w + gap + 0.4
    fig_h = n * (cell_h + 0.35) + (0.55 if title else 0.25)
    fig = canvas.new_figure(fig_w, fig_h)
    grid = fig.add_gridspec(
        n,
        k + 2,
        width_ratios=[cell_w, gap] + [cell_w] * k,
        left=0.2 / fig_w,
        right=1 - 0.2 / fig_w,
        top=1 - (0.5 if title else 0.2) / fig_h,
        bottom=0.3 / fig_h,
        wspace=0.25,
        hspace=0.45,
    )
    if title:
        fig.suptitle(title, fontsize=8)

    # A white margin between picture and frame, so that the frame stands
    # out against red or green in the picture.
    margin = 0.08 * width

    def show(ax, image, color, label, linewidth):
        ax.imshow(image)
        ax.set_xlim(-0.5 - margin, width - 0.5 + margin)
        ax.set_ylim(height - 0.5 + margin, -0.5 - margin)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(canvas.rgb(color))
            spine.set_linewidth(linewidth)
        ax.set_xlabel(label, fontsize=6, labelpad=2)

    for i in range(n):
        ax = fig.add_subplot(grid[i, 0])
        label = query_labels[i] if query_labels is not None else ""
        show(ax, query_images[i], QUERY_COLOR, label, 1.0)
        # Black text: the only pure green / red pixels are the borders.
        ax.set_title(
            "rank-1 miss" if lists.failure[i] else "rank-1 hit",
            fontsize=6,
            pad=2,
        )
        for j in range(k):
            ax = fig.add_subplot(grid[i, j + 2])
            color = HIT_COLOR if lists.hit[i, j] else MISS_COLOR
            show(
                ax,
                gallery_images[i, j],
                color,
                f"{lists.distance[i, j]:.3f}",
                3.0,
            )
            if i == 0:
                ax.set_title(str(j + 1), fontsize=6, pad=2)
    return canvas.save(fig, path)


def rank_list_figure(
    path: str,
    distmat,
    *,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    flavour: str,
    load_images: Callable[[np.ndarray], Any],
    query_index=None,
    gallery_index=None,
    num_queries: int = 8,
    top_k: int = 10,
    seed: int = 0,
    title: str = "",
) -> tuple[str, RankLists]:
    """`rank_lists`, then `draw_rank_lists` with the images it needs.

    Args:
        path: output PNG.
        distmat, query_ids, gallery_ids, query_cams, gallery_cams, flavour,
            num_queries, top_k, seed: see `rank_lists`.
        load_images: `load_images(indices [m] int) -> [m, H, W, 3]` images
            (float in [0, 1] or uint8) of the given split positions.
        query_index: [Q] split positions of the queries (default 0..Q-1).
        gallery_index: [G] split positions of the gallery (default 0..G-1).
        title: figure title.

    Returns:
        (path, the `RankLists` drawn).
    """
    dist = np.asarray(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be [Q, G], got shape {dist.shape}.")
    q_index = (
        np.arange(dist.shape[0])
        if query_index is None
        else canvas.as_1d_int("query_index", query_index, dist.shape[0])
    )
    g_index = (
        np.arange(dist.shape[1])
        if gallery_index is None
        else canvas.as_1d_int("gallery_index", gallery_index, dist.shape[1])
    )
    lists = rank_lists(
        dist,
        query_ids=query_ids,
        gallery_ids=gallery_ids,
        query_cams=query_cams,
        gallery_cams=gallery_cams,
        flavour=flavour,
        num_queries=num_queries,
        top_k=top_k,
        seed=seed,
    )
    n, k = lists.gallery.shape
    wanted = np.concatenate(
        [q_index[lists.query], g_index[lists.gallery].ravel()]
    )
    images = canvas.to_uint8(load_images(wanted))
    labels = [
        f"id {int(np.asarray(query_ids)[r])} cam "
        f"{int(np.asarray(query_cams)[r])}"
        for r in lists.query
    ]
    draw_rank_lists(
        path,
        lists,
        query_images=images[:n],
        gallery_images=images[n:].reshape((n, k) + images.shape[1:]),
        title=title,
        query_labels=labels,
    )
    return path, lists
