"""CMC curves, t-SNE of features and histograms of pair distances.

Every function is pure (arrays in, a PNG path and the data it drew out);
distances are the evaluation's: negative inner products of L2-normalised
features.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipeline.constants import INFRARED, MODALITY_NAMES, VISIBLE
from mclnet_jax import metrics as metrics_lib
from mclnet_jax.analysis import canvas
from mclnet_jax.evaluators import results as results_lib

_MARKERS = {VISIBLE: "o", INFRARED: "^"}
# Pair categories of the distance histograms: (same modality, same id).
PAIR_CATEGORIES = {
    "same modality, same identity": (True, True),
    "same modality, other identity": (True, False),
    "cross modality, same identity": (False, True),
    "cross modality, other identity": (False, False),
}
# The label of the raw-pixel curves and panels.
RAW_PIXELS = "raw pixels"


def mean_cmc(results) -> dict[str, dict[str, np.ndarray]]:
    """{protocol: {feature: [R] CMC averaged over trials}} of a result.

    Args:
        results: an `EvaluationResults`, its `to_dict()`, or a
            results JSON written by training (`{"results": to_dict()}`).
    """
    if isinstance(results, results_lib.EvaluationResults):
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
    max_rank = canvas.check_positive_int("max_rank", max_rank)
    if not curves or not all(curves.values()):
        raise ValueError("curves is empty: pass {protocol: {label: cmc}}.")
    protocols = sorted(curves)
    cols = min(2, len(protocols))
    rows = -(-len(protocols) // cols)
    fig = canvas.new_figure(4.2 * cols, 3.2 * rows)
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
                linestyle="--" if label == RAW_PIXELS else "-",
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
    return canvas.save(fig, path), drawn


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
    identity = canvas.as_1d_int("identity", identity)
    modality = canvas.as_1d_int("modality", modality, identity.size)
    num_identities = canvas.check_positive_int("num_identities", num_identities)
    max_per_modality = canvas.check_positive_int(
        "max_per_modality", max_per_modality
    )
    both = np.intersect1d(
        identity[modality == VISIBLE],
        identity[modality == INFRARED],
    )
    if both.size == 0:
        raise ValueError("no identity has images in both modalities.")
    rng = np.random.default_rng(seed)
    ids = rng.choice(both, min(num_identities, both.size), replace=False)
    out = []
    for i in np.sort(ids):
        for mod in (VISIBLE, INFRARED):
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
    # Imported when drawing: scikit-learn takes seconds to import.
    import threadpoolctl  # A scikit-learn dependency.
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = metrics_lib.l2_normalize(np.asarray(features, np.float32))
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}.")
    # One thread: on a few hundred points the OpenMP threads of the
    # Barnes-Hut gradient gain little, and on a busy machine (e.g. next to
    # the input pipeline) they spin-wait.
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
    identity = canvas.as_1d_int("identity", identity)
    modality = canvas.as_1d_int("modality", modality, identity.size)
    panels = _check_panels(panels, identity.size)
    # Imported when drawing (see canvas.new_figure).
    from matplotlib import colormaps

    ids = np.unique(identity)
    cmap = colormaps["tab10" if ids.size <= 10 else "tab20"]
    colors = {i: cmap(j % cmap.N) for j, i in enumerate(ids)}
    fig = canvas.new_figure(4.0 * len(panels), 4.3)
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
            [], [], marker=m, color="0.3", s=16, label=MODALITY_NAMES[mod]
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
    return canvas.save(fig, path), embeddings


def pair_distances(features, *, identity, modality) -> dict[str, np.ndarray]:
    """Distances of all pairs i < j, split by `PAIR_CATEGORIES`.

    Distance = -<f_i, f_j> of L2-normalised features (the evaluation's).

    Returns:
        {category: [m] float32 distances} (pairs in row-major i < j order).
    """
    identity = canvas.as_1d_int("identity", identity)
    modality = canvas.as_1d_int("modality", modality, identity.size)
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
    identity = canvas.as_1d_int("identity", identity)
    modality = canvas.as_1d_int("modality", modality, identity.size)
    panels = _check_panels(panels, identity.size)
    bins = canvas.check_positive_int("bins", bins)
    # Imported when drawing (see canvas.new_figure).
    from matplotlib.lines import Line2D

    styles = {
        "same modality, same identity": ("tab:blue", "-"),
        "same modality, other identity": ("tab:blue", ":"),
        "cross modality, same identity": ("tab:red", "-"),
        "cross modality, other identity": ("tab:red", ":"),
    }
    fig = canvas.new_figure(4.2 * len(panels), 3.6)
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
    return canvas.save(fig, path), out
