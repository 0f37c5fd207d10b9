"""The figures of a model's features on a test split.

`draw_figures` draws, from features already extracted (the "figures"
evaluator hands it the features and results of the protocol it shows,
`evaluators/figures.py`), into a folder (`WORKDIR/figures/`):

* the rank lists of the evaluator's views (SYSU-MM01: all-search, gallery of
  trial 0; RegDB: both directions): a few seeded queries, half of them
  rank-1 failures when there are any, with their top-10 gallery images;
* `cmc.png`: CMC curves (mean over trials) of every protocol and feature,
  and of raw pixels when the run evaluated them;
* `tsne.png` and `distances.png`: t-SNE and pair-distance histograms of a
  few test identities, trained features beside raw pixels;
* `README.txt`: the checkpoint, the library versions, the time taken.

The images shown come through the evaluation pipeline (decoded, resized) but
are not normalised (`display_loader`).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from data_pipeline import image_ops
from mclnet_jax import metrics as metrics_lib
from mclnet_jax import workdir as workdir_lib
from mclnet_jax.analysis import canvas, plots, ranking
from mclnet_jax.evaluators import features as features_lib

FIGURES_DIR = workdir_lib.FIGURES_DIR


def display_loader(source, *, image_size, batch_size: int):
    """`load(indices) -> [m, H, W, 3] uint8` through the evaluation pipeline.

    The evaluation's decoding and resizing, normalised with mean 0 and std 1,
    i.e. pixels / 255: the images the model saw, un-normalised.
    """
    batches_fn = features_lib.make_batches_fn(
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
            out[rows] = canvas.to_uint8(np.asarray(batch["image"])[mask])
        return out[inverse]

    return load


def _raw_pixels(images_uint8: np.ndarray) -> np.ndarray:
    """Normalised pixels, flattened: the features of the raw-pixel baseline
    (`features.raw_pixels`), from the displayed images."""
    x = images_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(image_ops.IMAGENET_MEAN, np.float32)) / np.asarray(
        image_ops.IMAGENET_STD, np.float32
    )
    return x.reshape(x.shape[0], -1)


def draw_figures(
    folder: str,
    *,
    features: dict[str, np.ndarray],
    protocol,
    results,
    load_images,
    step: int,
    raw_pixel_results=None,
    checkpoint: str = "final",
    feature: str = "bn",
    num_queries: int = 8,
    num_identities: int = 10,
    max_per_modality: int = 20,
    histogram_images: int = 600,
    seed: int = 0,
) -> dict[str, str]:
    """Draws every figure of a model's features of a split into `folder`.

    Args:
        folder: where to draw (created if needed).
        features: {name: [N, D]} of the split, row i = example i.
        protocol: the split's `common.Protocol` (metadata, rank-list views).
        results: its `EvaluationResults` for these features (CMC curves).
        load_images: indices -> [m, H, W, 3] uint8 display images
            (`display_loader`).
        step: the training step the features are of.
        raw_pixel_results: the raw-pixel `EvaluationResults` (or their
            JSON dict) to overlay on the CMC, or None.
        checkpoint: which state this is, for the README ("final", "latest",
            "best").
        feature: the feature of the rank lists, t-SNE and histograms.
        num_queries: queries per rank list.
        num_identities, max_per_modality: the t-SNE's identities and images
            per identity and modality.
        histogram_images: test images (seeded sample) whose pairs make the
            histograms.
        seed: seed of every draw.

    Returns:
        {figure name: PNG path}.
    """
    if feature not in features_lib.FEATURE_NAMES:
        raise ValueError(
            f"feature must be one of {features_lib.FEATURE_NAMES}"
            f", got {feature!r}."
        )
    start = time.perf_counter()
    meta = protocol.metadata
    timings = {}

    def tick(name, since):
        now = time.perf_counter()
        timings[name] = now - since
        return now

    os.makedirs(folder, exist_ok=True)
    trained = f"{feature} (trained, step {step})"
    paths = {}

    # CMC: the results of this state, else recomputed from its features.
    since = time.perf_counter()
    curves = plots.mean_cmc(results)
    if raw_pixel_results is not None:
        for name, fs in plots.mean_cmc(raw_pixel_results).items():
            if name in curves:
                for cmc in fs.values():
                    curves[name][plots.RAW_PIXELS] = cmc
    paths["cmc"], _ = plots.cmc_figure(os.path.join(folder, "cmc.png"), curves)
    since = tick("CMC", since)

    # Choose everything first, so the images are read in one pass.
    value = features[feature]
    jobs = []
    for stem, title, q, g, flavour in protocol.rank_list_views():
        dist = metrics_lib.negative_inner_product(value[q], value[g])
        lists = ranking.rank_lists(
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
    tsne_idx = plots.select_identities(
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
    images = load_images(wanted)
    since = tick("selection and images", since)

    def images_of(indices):
        return images[np.searchsorted(wanted, indices)]

    for stem, title, q, g, lists in jobs:
        n, k = lists.gallery.shape
        labels = [
            f"id {meta.identity[i]} cam {meta.camera[i]}"
            for i in q[lists.query]
        ]
        paths[stem] = ranking.draw_rank_lists(
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
        ("tsne", tsne_idx, plots.tsne_figure),
        ("distances", hist_idx, plots.distance_histogram_figure),
    ):
        panels = {
            trained: value[idx],
            plots.RAW_PIXELS: _raw_pixels(images_of(idx)),
        }
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
    versions = canvas.library_versions()
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
