"""The figures of a model on its test split, and of a workdir's checkpoint.

`write_figures` (called at the end of training) extracts the test features
once with the evaluator of `config.eval`, then draws into `WORKDIR/figures/`:

* the rank lists of the evaluator's views (SYSU-MM01: all-search, gallery of
  trial 0; RegDB: both directions): a few seeded queries, half of them
  rank-1 failures when there are any, with their top-10 gallery images;
* `cmc.png`: CMC curves (mean over trials) of every protocol and feature,
  and of raw pixels when the run evaluated them;
* `tsne.png` and `distances.png`: t-SNE and pair-distance histograms of a
  few test identities, trained features beside raw pixels;
* `README.txt`: the checkpoint, the library versions, the time taken.

The images shown come through the evaluation pipeline (decoded, resized) but
are not normalised. `analyze_workdir` does the same for a workdir's latest or
best checkpoint (`--mode=analyze`; README "Figures").
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
import numpy as np
from absl import logging

from mclnet_jax import metrics as metrics_lib
from mclnet_jax.analysis import canvas, plots, ranking
from mclnet_jax.evaluators import batch_stats as batch_stats_lib
from mclnet_jax.evaluators import common as eval_common
from mclnet_jax.evaluators import features as features_lib

FIGURES_DIR = "figures"


def _display_loader(source, *, image_size, batch_size: int):
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
    from data_pipeline import image_ops

    x = images_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(image_ops.IMAGENET_MEAN, np.float32)) / np.asarray(
        image_ops.IMAGENET_STD, np.float32
    )
    return x.reshape(x.shape[0], -1)


def write_figures(
    config: ml_collections.ConfigDict,
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
        state: a `TrainState` (`model_variables()`, `step`).
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
    import jax

    from data_pipeline import datasets, records
    from mclnet_jax import sharding

    if feature not in features_lib.FEATURE_NAMES:
        raise ValueError(
            f"feature must be one of {features_lib.FEATURE_NAMES}"
            f", got {feature!r}."
        )
    start = time.perf_counter()
    dc = config.data
    builder = datasets.open_builder(
        config, workdir, process_index=jax.process_index()
    )
    source = records.open_source(builder, dc.test_split)
    evaluator = eval_common.from_config(
        config,
        features_lib.make_predict_fn(model, mesh=sharding.make_mesh()),
        source,
    )
    meta = evaluator.metadata
    features = evaluator.extract(
        batch_stats_lib.evaluation_variables(
            config, model, state, builder=builder
        )
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
        results = evaluator.evaluate(features)
    curves = plots.mean_cmc(results)
    if raw_pixel_results is None:
        raw_path = os.path.join(workdir, "results_raw_pixels.json")
        if os.path.exists(raw_path):
            with open(raw_path, encoding="utf-8") as f:
                raw_pixel_results = json.load(f)
    if raw_pixel_results is not None:
        for protocol, fs in plots.mean_cmc(raw_pixel_results).items():
            if protocol in curves:
                for cmc in fs.values():
                    curves[protocol][plots.RAW_PIXELS] = cmc
    paths["cmc"], _ = plots.cmc_figure(os.path.join(folder, "cmc.png"), curves)
    since = tick("CMC", since)

    # Choose everything first, so the images are read in one pass.
    value = features[feature]
    jobs = []
    for stem, title, q, g, flavour in evaluator.rank_list_views():
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


def analyze_workdir(
    config: ml_collections.ConfigDict, workdir: str, *, which: str = "latest"
) -> dict[str, str]:
    """`--mode=analyze`: figures of a workdir's latest or best checkpoint.

    Raises:
        FileNotFoundError: no such checkpoint in the workdir.
    """
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")
    from mclnet_jax import run_setup

    run = run_setup.setup(config, workdir)
    state = run.restore_or_init(config, which=which, init=False)
    if state is None:
        raise FileNotFoundError(
            f"No {which} checkpoint under {run.checkpointer.directory(which)}"
            "; train first with --mode=train and the same --workdir."
        )
    return write_figures(
        config, workdir, model=run.model, state=state, checkpoint=which
    )
