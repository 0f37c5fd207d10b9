"""Figures of a trained model: rank lists, CMC curves, t-SNE, distances.

What a re-id user looks at besides the numbers, drawn into
`WORKDIR/figures/` (PNG, matplotlib's Agg renderer, so no display is needed):

* `rank_list_sysu_all.png` (SYSU-MM01 all-search, gallery of trial 0, the
  camera-3 / camera-2 exclusion of the metric applied), or for RegDB
  `rank_list_regdb_visible_to_infrared.png` and
  `rank_list_regdb_infrared_to_visible.png`: a few seeded queries (half of
  them rank-1 failures when there are any) with their top-10 gallery images,
  green border = same identity, red = other, the distance under each;
* `cmc.png`: CMC curves (rank 1..20, mean over trials) of every protocol for
  the `pool` and `bn` features, and raw pixels when the run evaluated them;
* `tsne.png`: t-SNE of the `bn` features of a few test identities (colour =
  identity, marker = modality, as the paper's Fig. 5) beside the same images
  as raw pixels: the gap between the modalities, before and after;
* `distances.png`: histograms of the distances of matching and non-matching
  pairs, within a modality and across modalities, for the same two feature
  sets;
* `README.txt`: the checkpoint, the library versions, the time taken.

Every draw (queries, identities, histogram images) is seeded. The test
features are extracted once, with the evaluation's embedding and batches;
the images shown come through the same pipeline (decoded, resized) but are
not normalised.

Every drawing function is pure (arrays and metadata in, a PNG path and the
data it drew out), so it can be used on any features; `write_figures` runs
them on a model and its test split (called at the end of training),
`analyze_workdir` on a workdir's checkpoint (`--mode=analyze`).

Distances are the evaluation's: negative inner products of L2-normalised
features (-1 = identical direction).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from mclnet_jax import evaluate as evaluate_lib
from mclnet_jax import metrics as metrics_lib

FIGURES_DIR = "figures"
# Border colours (RGB, 0..255) of the rank lists.
HIT_COLOR = (0, 160, 0)
MISS_COLOR = (220, 0, 0)
QUERY_COLOR = (40, 40, 40)
DPI = 100
_MARKERS = {evaluate_lib.VISIBLE: "o", evaluate_lib.INFRARED: "^"}
_MODALITY_NAMES = {
    evaluate_lib.VISIBLE: "visible",
    evaluate_lib.INFRARED: "infrared",
}
# Pair categories of the distance histograms: (same modality, same id).
PAIR_CATEGORIES = {
    "same modality, same identity": (True, True),
    "same modality, other identity": (True, False),
    "cross modality, same identity": (False, True),
    "cross modality, other identity": (False, False),
}
_RAW_PIXELS = "raw pixels"


def library_versions() -> dict[str, str]:
    """The versions of the drawing libraries (written with the figures)."""
    # pylint: disable=g-import-not-at-top
    import matplotlib
    import sklearn

    # pylint: enable=g-import-not-at-top
    return {
        "matplotlib": matplotlib.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _new_figure(width: float, height: float):
    """A figure on its own Agg canvas: headless, no pyplot global state."""
    # pylint: disable=g-import-not-at-top
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # pylint: enable=g-import-not-at-top
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    """Writes an RGB PNG (no alpha: a quarter smaller) with the versions."""
    # pylint: disable=g-import-not-at-top
    from PIL import Image, PngImagePlugin

    # pylint: enable=g-import-not-at-top
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    versions = library_versions()
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "Software",
        (
            f"mclnet_jax.analysis; matplotlib "
            f"{versions['matplotlib']}; scikit-learn "
            f"{versions['scikit-learn']}"
        ),
    )
    Image.fromarray(rgb).save(
        path, format="PNG", optimize=True, pnginfo=info, dpi=(DPI, DPI)
    )
    return path


def _rgb(color: Sequence[int]) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in color)


def _as_1d_int(name: str, value, n: int | None = None) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim != 1 or (n is not None and value.shape[0] != n):
        want = f"length {n}" if n is not None else "1-D"
        raise ValueError(
            f"{name} must be a 1-D array of {want}, got shape {value.shape}."
        )
    if value.size and not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {value.dtype}.")
    return value.astype(np.int64)


def _check_positive_int(name: str, value) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
    ):
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def _to_uint8(images) -> np.ndarray:
    """[..., H, W, 3] float in [0, 1] or uint8 -> uint8."""
    images = np.asarray(images)
    if images.shape[-1:] != (3,):
        raise ValueError(
            f"images must be [..., H, W, 3] RGB, got shape {images.shape}."
        )
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round(images.astype(np.float32) * 255.0), 0, 255).astype(
        np.uint8
    )


# ---------------------------------------------------------------------------
# Rank lists.


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
    qid = _as_1d_int("query_ids", query_ids, num_q)
    gid = _as_1d_int("gallery_ids", gallery_ids, num_g)
    qcam = _as_1d_int("query_cams", query_cams, num_q)
    gcam = _as_1d_int("gallery_cams", gallery_cams, num_g)
    num_queries = _check_positive_int("num_queries", num_queries)
    top_k = _check_positive_int("top_k", top_k)

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
    query_images = _to_uint8(query_images)
    gallery_images = _to_uint8(gallery_images)
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
    fig = _new_figure(fig_w, fig_h)
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
            spine.set_color(_rgb(color))
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
    return _save(fig, path)


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
        else _as_1d_int("query_index", query_index, dist.shape[0])
    )
    g_index = (
        np.arange(dist.shape[1])
        if gallery_index is None
        else _as_1d_int("gallery_index", gallery_index, dist.shape[1])
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
    images = _to_uint8(load_images(wanted))
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


# ---------------------------------------------------------------------------
# CMC curves.


def mean_cmc(results) -> dict[str, dict[str, np.ndarray]]:
    """{protocol: {feature: [R] CMC averaged over trials}} of a result.

    Args:
        results: an `evaluate.EvaluationResults`, its `to_dict()`, or a
            results JSON written by training (`{"results": to_dict()}`).
    """
    if isinstance(results, evaluate_lib.EvaluationResults):
        return {
            p: {
                f: np.mean([t.cmc for t in trials.values()], axis=0)
                for f, trials in fs.items()
            }
            for p, fs in results.per_trial.items()
        }
    if not isinstance(results, Mapping):
        raise ValueError(
            f"results must be an EvaluationResults or its to_dict(), got "
            f"{type(results).__name__}."
        )
    if "results" in results and "summary" in results:
        results = results["results"]
    out = {}
    for p, fs in results.items():
        for f, entry in fs.items():
            trials = entry.get("trials") if isinstance(entry, Mapping) else None
            if not trials:
                raise ValueError(
                    f"results[{p!r}][{f!r}] has no per-trial 'trials': pass "
                    "EvaluationResults.to_dict() or a results.json."
                )
            out.setdefault(p, {})[f] = np.mean(
                [np.asarray(t["cmc"], np.float64) for t in trials.values()],
                axis=0,
            )
    return out


def cmc_figure(
    path: str, curves: Mapping[str, Mapping[str, Any]], *, max_rank: int = 20
) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """CMC curves, one panel per protocol, one line per feature.

    Args:
        path: output PNG.
        curves: {protocol: {label: [R] CMC fractions}} (e.g. `mean_cmc`).
        max_rank: ranks drawn (1..max_rank, or fewer if a curve is shorter).

    Returns:
        (path, {protocol: {label: [r] the values drawn, fractions}}).
    """
    max_rank = _check_positive_int("max_rank", max_rank)
    if not curves or not all(curves.values()):
        raise ValueError("curves is empty: pass {protocol: {label: cmc}}.")
    protocols = sorted(curves)
    cols = min(2, len(protocols))
    rows = -(-len(protocols) // cols)
    fig = _new_figure(4.2 * cols, 3.2 * rows)
    drawn = {}
    for i, protocol in enumerate(protocols):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label in sorted(curves[protocol]):
            cmc = np.asarray(curves[protocol][label], np.float64)
            if cmc.ndim != 1 or cmc.size == 0:
                raise ValueError(
                    f"curves[{protocol!r}][{label!r}] must be a "
                    f"non-empty 1-D CMC, got shape {cmc.shape}."
                )
            cmc = cmc[:max_rank]
            ranks = np.arange(1, cmc.size + 1)
            ax.plot(
                ranks,
                100 * cmc,
                marker=".",
                markersize=3,
                linestyle="--" if label == _RAW_PIXELS else "-",
                label=f"{label} (R1 {100 * cmc[0]:.1f}%)",
            )
            drawn.setdefault(protocol, {})[label] = cmc
        ax.set_title(protocol, fontsize=9)
        ax.set_xlabel("rank", fontsize=8)
        ax.set_ylabel("matching rate (%)", fontsize=8)
        ax.set_xlim(1, max_rank)
        ax.set_ylim(0, 100)
        ax.set_xticks(
            [1, 5, 10, 15, 20]
            if max_rank == 20
            else np.unique(np.linspace(1, max_rank, 5).round())
        )
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path), drawn


# ---------------------------------------------------------------------------
# t-SNE and distance distributions.


def select_identities(
    identity,
    modality,
    *,
    num_identities: int = 10,
    max_per_modality: int = 20,
    seed: int = 0,
) -> np.ndarray:
    """Split positions of a few identities seen in both modalities.

    Draws `num_identities` identities (all if fewer) among those with images
    in both modalities, then at most `max_per_modality` images of each
    identity and modality, with `np.random.default_rng(seed)`.

    Returns:
        [n] int64 sorted positions.
    """
    identity = _as_1d_int("identity", identity)
    modality = _as_1d_int("modality", modality, identity.size)
    num_identities = _check_positive_int("num_identities", num_identities)
    max_per_modality = _check_positive_int("max_per_modality", max_per_modality)
    both = np.intersect1d(
        identity[modality == evaluate_lib.VISIBLE],
        identity[modality == evaluate_lib.INFRARED],
    )
    if both.size == 0:
        raise ValueError("no identity has images in both modalities.")
    rng = np.random.default_rng(seed)
    ids = rng.choice(both, min(num_identities, both.size), replace=False)
    out = []
    for i in np.sort(ids):
        for mod in (evaluate_lib.VISIBLE, evaluate_lib.INFRARED):
            pool = np.flatnonzero((identity == i) & (modality == mod))
            out.append(
                rng.choice(
                    pool, min(max_per_modality, pool.size), replace=False
                )
            )
    return np.sort(np.concatenate(out)).astype(np.int64)


def _check_panels(panels: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
    if not panels:
        raise ValueError("panels is empty: pass {title: [n, D] features}.")
    out = {}
    for name, value in panels.items():
        value = np.asarray(value, np.float32)
        if value.ndim != 2 or value.shape[0] != n:
            raise ValueError(
                f"panels[{name!r}] must be [n={n}, D], got shape {value.shape}."
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"panels[{name!r}] has NaN or infinite values.")
        out[name] = value
    return out


def tsne_embedding(features, *, seed: int = 0) -> np.ndarray:
    """[n, 2] t-SNE (scikit-learn) of L2-normalised features.

    PCA initialisation and at most 50 PCA dimensions first (raw pixels have
    thousands), perplexity min(30, (n - 1) / 3).
    """
    # pylint: disable=g-import-not-at-top
    import threadpoolctl  # A scikit-learn dependency.
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    # pylint: enable=g-import-not-at-top
    x = metrics_lib.l2_normalize(np.asarray(features, np.float32))
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}.")
    # One thread: on a few hundred points the OpenMP threads of the
    # Barnes-Hut gradient gain little, and on a busy machine (e.g. next to
    # the input pipeline) they spin-wait, measured >10x slower on 2 cores.
    with threadpoolctl.threadpool_limits(limits=1):
        if x.shape[1] > 50 and n > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, (n - 1) / 3.0))
        return (
            TSNE(
                n_components=2,
                perplexity=perplexity,
                init="pca",
                learning_rate="auto",
                random_state=seed,
            )
            .fit_transform(x)
            .astype(np.float32)
        )


def tsne_figure(
    path: str, panels: Mapping[str, Any], *, identity, modality, seed: int = 0
) -> tuple[str, dict[str, np.ndarray]]:
    """t-SNE panels side by side: colour = identity, marker = modality.

    Args:
        path: output PNG.
        panels: {title: [n, D] features}, the same n images in each (e.g.
            {"bn (trained)": ..., "raw pixels": ...}).
        identity: [n] int identities.
        modality: [n] int, 0 visible (circles) / 1 infrared (triangles).
        seed: t-SNE's random state.

    Returns:
        (path, {title: [n, 2] embedding}).
    """
    identity = _as_1d_int("identity", identity)
    modality = _as_1d_int("modality", modality, identity.size)
    panels = _check_panels(panels, identity.size)
    # pylint: disable-next=g-import-not-at-top
    from matplotlib import colormaps

    ids = np.unique(identity)
    cmap = colormaps["tab10" if ids.size <= 10 else "tab20"]
    colors = {i: cmap(j % cmap.N) for j, i in enumerate(ids)}
    fig = _new_figure(4.0 * len(panels), 4.3)
    embeddings = {}
    for p, (name, value) in enumerate(panels.items()):
        xy = tsne_embedding(value, seed=seed)
        embeddings[name] = xy
        ax = fig.add_subplot(1, len(panels), p + 1)
        for i in ids:
            for mod, marker in _MARKERS.items():
                sel = (identity == i) & (modality == mod)
                if sel.any():
                    ax.scatter(
                        xy[sel, 0],
                        xy[sel, 1],
                        s=16,
                        marker=marker,
                        color=colors[i],
                        edgecolors="none",
                        alpha=0.85,
                    )
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    # Legend of the markers only: the colours are just identities.
    handles = [
        fig.axes[0].scatter(
            [], [], marker=m, color="0.3", s=16, label=_MODALITY_NAMES[mod]
        )
        for mod, m in _MARKERS.items()
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False
    )
    fig.suptitle(
        f"t-SNE of {ids.size} test identities (colour = identity)", fontsize=9
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _save(fig, path), embeddings


def pair_distances(features, *, identity, modality) -> dict[str, np.ndarray]:
    """Distances of all pairs i < j, split by `PAIR_CATEGORIES`.

    Distance = -<f_i, f_j> of L2-normalised features (the evaluation's).

    Returns:
        {category: [m] float32 distances} (pairs in row-major i < j order).
    """
    identity = _as_1d_int("identity", identity)
    modality = _as_1d_int("modality", modality, identity.size)
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[0] != identity.size:
        raise ValueError(
            f"features must be [n={identity.size}, D], got shape {x.shape}."
        )
    dist = metrics_lib.negative_inner_product(x, x)
    i, j = np.triu_indices(identity.size, k=1)
    same_mod = modality[i] == modality[j]
    same_id = identity[i] == identity[j]
    d = dist[i, j]
    return {
        name: d[(same_mod == sm) & (same_id == si)]
        for name, (sm, si) in PAIR_CATEGORIES.items()
    }


def distance_histogram_figure(
    path: str, panels: Mapping[str, Any], *, identity, modality, bins: int = 50
) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """Histograms of matching / non-matching, same / cross-modality pairs.

    Args:
        path: output PNG.
        panels: {title: [n, D] features} of the same n images.
        identity: [n] int identities.
        modality: [n] int modalities.
        bins: histogram bins over [-1, 1].

    Returns:
        (path, {title: `pair_distances` of that panel}).
    """
    identity = _as_1d_int("identity", identity)
    modality = _as_1d_int("modality", modality, identity.size)
    panels = _check_panels(panels, identity.size)
    bins = _check_positive_int("bins", bins)
    from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top

    styles = {
        "same modality, same identity": ("tab:blue", "-"),
        "same modality, other identity": ("tab:blue", ":"),
        "cross modality, same identity": ("tab:red", "-"),
        "cross modality, other identity": ("tab:red", ":"),
    }
    fig = _new_figure(4.2 * len(panels), 3.6)
    out = {}
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for p, (name, value) in enumerate(panels.items()):
        groups = pair_distances(value, identity=identity, modality=modality)
        out[name] = groups
        ax = fig.add_subplot(1, len(panels), p + 1)
        handles = []
        for category, d in groups.items():
            if d.size == 0:
                continue
            color, style = styles[category]
            ax.hist(
                d,
                bins=edges,
                density=True,
                histtype="step",
                color=color,
                linestyle=style,
                linewidth=1.4,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    color=color,
                    linestyle=style,
                    linewidth=1.4,
                    label=f"{category} ({d.size}; mean {d.mean():.2f})",
                )
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("distance (negative cosine similarity)", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        # Pair distances rarely exceed 0.5: the upper right is free.
        ax.legend(handles=handles, fontsize=6, loc="upper right")
    fig.tight_layout()
    return _save(fig, path), out


# ---------------------------------------------------------------------------
# From a model and its test split.


def _display_loader(source, *, image_size, batch_size: int):
    """`load(indices) -> [m, H, W, 3] uint8` through the evaluation pipeline.

    The evaluation's decoding and resizing, normalised with mean 0 and std 1,
    i.e. pixels / 255: the images the model saw, un-normalised.
    """
    batches_fn = evaluate_lib.make_batches_fn(
        source,
        batch_size=batch_size,
        image_size=tuple(image_size),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )

    def load(indices):
        indices = np.asarray(indices, np.int64)
        unique, inverse = np.unique(indices, return_inverse=True)
        out = np.zeros((unique.size,) + tuple(image_size) + (3,), np.uint8)
        pos = {int(i): k for k, i in enumerate(unique)}
        for batch in batches_fn(unique):
            mask = np.asarray(batch["mask"], bool)
            rows = [pos[int(i)] for i in np.asarray(batch["index"])[mask]]
            out[rows] = _to_uint8(np.asarray(batch["image"])[mask])
        return out[inverse]

    return load


def _raw_pixels(images_uint8: np.ndarray) -> np.ndarray:
    """Normalised pixels, flattened: the features of the raw-pixel baseline
    (`train_data.RunData.raw_pixel_baseline`), from the displayed images."""
    # pylint: disable-next=g-import-not-at-top
    from data_pipeline import augment

    x = images_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(augment.IMAGENET_MEAN, np.float32)) / np.asarray(
        augment.IMAGENET_STD, np.float32
    )
    return x.reshape(x.shape[0], -1)


def _protocol_results(config, features, meta):
    """The config's test protocol on already extracted features."""
    # Imported here: it brings the data stack (TensorFlow).
    from mclnet_jax import train_data  # pylint: disable=g-import-not-at-top

    ec = config.eval
    rerank = train_data.rerank_params(ec)
    if ec.protocol == "sysu":
        return evaluate_lib.evaluate_sysu(
            features,
            meta,
            modes=tuple(ec.modes),
            trials=tuple(range(ec.num_trials)),
            rerank=rerank,
        )
    if ec.protocol == "regdb":
        trial = int(config.data.builder_config.split("_")[-1])
        return evaluate_lib.evaluate_regdb(
            features, meta, trial=trial, rerank=rerank
        )
    raise ValueError(
        f"config.eval.protocol must be 'sysu' or 'regdb', got {ec.protocol!r}."
    )


def _rank_list_jobs(protocol: str, meta: evaluate_lib.TestMetadata):
    """(file stem, title, query positions, gallery positions, flavour)."""
    if protocol == "sysu":
        q = evaluate_lib.sysu_query_indices(meta)
        g = evaluate_lib.sysu_gallery_indices(meta, mode="all", trial=0)
        return [
            (
                "rank_list_sysu_all",
                "SYSU-MM01 all-search, gallery of trial 0: infrared query, "
                "top-10 visible",
                q,
                g,
                "sysu",
            )
        ]
    if protocol != "regdb":
        raise ValueError(
            f"config.eval.protocol must be 'sysu' or 'regdb', got {protocol!r}."
        )
    jobs = []
    for direction in evaluate_lib.REGDB_DIRECTIONS:
        q, g = evaluate_lib.regdb_indices(meta, direction=direction)
        jobs.append(
            (
                f"rank_list_regdb_{direction}",
                f"RegDB {direction.replace('_', ' ')}",
                q,
                g,
                "standard",
            )
        )
    return jobs


def write_figures(
    config,
    workdir: str,
    *,
    model,
    state,
    results=None,
    raw_pixel_results=None,
    checkpoint: str = "final",
    feature: str = "bn",
    num_queries: int = 8,
    num_identities: int = 10,
    max_per_modality: int = 20,
    histogram_images: int = 600,
    seed: int = 0,
    out_dir: str | None = None,
) -> dict[str, str]:
    """Draws every figure of a model on the config's test split.

    Extracts the test features once (all processes take part, as in the
    evaluation), then process 0 draws into `out_dir`.

    Args:
        config: the run's config (data, eval).
        workdir: the run's folder (holds the prepared dataset for synthetic
            configs, and `results_raw_pixels.json` when the run made one).
        model: the MCLNet module.
        state: a `train.TrainState` (params["model"], batch_stats, step).
        results: the test `EvaluationResults` already computed for this
            state (its CMC is drawn); None: computed from the features.
        raw_pixel_results: the raw-pixel `EvaluationResults`; None: read
            `workdir/results_raw_pixels.json` if present.
        checkpoint: which state this is, for the README ("final", "latest",
            "best").
        feature: the feature of the rank lists, t-SNE and histograms.
        num_queries: queries per rank list.
        num_identities, max_per_modality: the t-SNE's identities and images
            per identity and modality.
        histogram_images: test images (seeded sample) whose pairs make the
            histograms.
        seed: seed of every draw.
        out_dir: where to draw; default `workdir/figures`.

    Returns:
        {figure name: PNG path} (empty on processes other than 0).
    """
    # pylint: disable=g-import-not-at-top
    import jax

    from data_pipeline import input_pipeline
    from mclnet_jax import train_data
    # pylint: enable=g-import-not-at-top

    if feature not in evaluate_lib.FEATURE_NAMES:
        raise ValueError(
            f"feature must be one of {evaluate_lib.FEATURE_NAMES}"
            f", got {feature!r}."
        )
    start = time.perf_counter()
    dc = config.data
    builder = train_data.open_builder(config, workdir)
    source = input_pipeline.open_source(builder, dc.test_split)
    meta = evaluate_lib.read_test_metadata(source)
    batches_fn = evaluate_lib.make_batches_fn(
        source, batch_size=dc.eval_batch_size, image_size=tuple(dc.image_size)
    )
    features = evaluate_lib.extract_features(
        train_data.make_embed_fn(model, state),
        batches_fn=batches_fn,
        modality=meta.modality,
    )
    timings = {"test features": time.perf_counter() - start}
    if jax.process_index() != 0:
        return {}

    def tick(name, since):
        now = time.perf_counter()
        timings[name] = now - since
        return now

    folder = out_dir or os.path.join(workdir, FIGURES_DIR)
    os.makedirs(folder, exist_ok=True)
    step = int(jax.device_get(state.step))
    trained = f"{feature} (trained, step {step})"
    paths = {}

    # CMC: the results of this state, else recomputed from its features.
    since = time.perf_counter()
    if results is None:
        results = _protocol_results(config, features, meta)
    curves = mean_cmc(results)
    if raw_pixel_results is None:
        raw_path = os.path.join(workdir, "results_raw_pixels.json")
        if os.path.exists(raw_path):
            with open(raw_path, encoding="utf-8") as f:
                raw_pixel_results = json.load(f)
    if raw_pixel_results is not None:
        for protocol, fs in mean_cmc(raw_pixel_results).items():
            if protocol in curves:
                for cmc in fs.values():
                    curves[protocol][_RAW_PIXELS] = cmc
    paths["cmc"], _ = cmc_figure(os.path.join(folder, "cmc.png"), curves)
    since = tick("CMC", since)

    # Choose everything first, so the images are read in one pass.
    value = features[feature]
    jobs = []
    for stem, title, q, g, flavour in _rank_list_jobs(
        config.eval.protocol, meta
    ):
        dist = metrics_lib.negative_inner_product(value[q], value[g])
        lists = rank_lists(
            dist,
            query_ids=meta.identity[q],
            gallery_ids=meta.identity[g],
            query_cams=meta.camera[q],
            gallery_cams=meta.camera[g],
            flavour=flavour,
            num_queries=num_queries,
            seed=seed,
        )
        jobs.append((stem, f"{title} ({feature}, step {step})", q, g, lists))
    tsne_idx = select_identities(
        meta.identity,
        meta.modality,
        num_identities=num_identities,
        max_per_modality=max_per_modality,
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    hist_idx = np.sort(
        rng.choice(len(meta), min(histogram_images, len(meta)), replace=False)
    )
    wanted = [tsne_idx, hist_idx]
    for _, _, q, g, lists in jobs:
        wanted += [q[lists.query], g[lists.gallery].ravel()]
    wanted = np.unique(np.concatenate(wanted))
    load = _display_loader(
        source, image_size=dc.image_size, batch_size=dc.eval_batch_size
    )
    images = load(wanted)
    since = tick("selection and images", since)

    def images_of(indices):
        return images[np.searchsorted(wanted, indices)]

    for stem, title, q, g, lists in jobs:
        n, k = lists.gallery.shape
        labels = [
            f"id {meta.identity[i]} cam {meta.camera[i]}"
            for i in q[lists.query]
        ]
        paths[stem] = draw_rank_lists(
            os.path.join(folder, stem + ".png"),
            lists,
            query_images=images_of(q[lists.query]),
            gallery_images=images_of(g[lists.gallery].ravel()).reshape(
                (n, k) + images.shape[1:]
            ),
            title=title,
            query_labels=labels,
        )
    since = tick("rank lists", since)

    for name, idx, draw in (
        ("tsne", tsne_idx, tsne_figure),
        ("distances", hist_idx, distance_histogram_figure),
    ):
        panels = {trained: value[idx], _RAW_PIXELS: _raw_pixels(images_of(idx))}
        paths[name], _ = draw(
            os.path.join(folder, name + ".png"),
            panels,
            identity=meta.identity[idx],
            modality=meta.modality[idx],
        )
        since = tick(name, since)

    seconds = time.perf_counter() - start
    spent = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    _write_readme(
        folder,
        [
            f"Figures of the {checkpoint} checkpoint (step {step}), feature "
            f"{feature!r}, seed {seed}.",
            f"Took {seconds:.1f} s: {spent}.",
            f"t-SNE: {tsne_idx.size} images of "
            f"{np.unique(meta.identity[tsne_idx]).size} identities; "
            f"distance histograms: {hist_idx.size} images.",
        ],
        paths,
    )
    logging.info(
        "Figures (%s) written to %s in %.1f s (%s).",
        ", ".join(sorted(paths)),
        folder,
        seconds,
        spent,
    )
    return paths


def _write_readme(folder, header, paths) -> None:
    versions = library_versions()
    lines = (
        header
        + [
            f"matplotlib {versions['matplotlib']}, scikit-learn "
            f"{versions['scikit-learn']} (TSNE).",
            "Distances: negative inner product of L2-normalised features.",
            "",
        ]
        + [
            f"{name}: {os.path.basename(p)}"
            for name, p in sorted(paths.items())
        ]
    )
    with open(os.path.join(folder, "README.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def analyze_workdir(
    config, workdir: str, *, which: str = "latest"
) -> dict[str, str]:
    """`--mode=analyze`: figures of a workdir's latest or best checkpoint.

    Raises:
        FileNotFoundError: no such checkpoint in the workdir.
    """
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")
    from mclnet_jax import train  # pylint: disable=g-import-not-at-top

    # pylint: disable-next=protected-access
    run = train._setup(config, workdir)
    state = run.restore_or_init(config, which=which, init=False)
    if state is None:
        raise FileNotFoundError(
            f"No {which} checkpoint under {run.checkpointer.directory(which)}"
            "; train first with --mode=train and the same --workdir."
        )
    return write_figures(
        config, workdir, model=run.model, state=state, checkpoint=which
    )
