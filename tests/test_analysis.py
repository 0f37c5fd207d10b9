"""Tests for mclnet_jax.analysis: the figures of a trained model.

The drawing functions run on small synthetic arrays (PNG written, size,
border colours read back from the pixels); the data they draw is checked
against slow, obvious computations here. One end-to-end run trains a tiny
workdir (in this process) and draws every figure with `--mode=analyze` (a
child process; tests/cli_runs.py).
"""

import json
import os
import subprocess

import cli_runs
import ml_collections
import numpy as np
import pytest
from PIL import Image

from data_pipeline.records import SplitMetadata
from mclnet_jax import analysis
from mclnet_jax.analysis import canvas, plots, ranking
from mclnet_jax.evaluators import regdb, registry


def _png(path):
    """(width, height, [H, W, 3] uint8) of a PNG, checking it opens."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        rgb = np.asarray(image.convert("RGB"))
    return rgb.shape[1], rgb.shape[0], rgb


def _grey_images(n, height=32, width=16, seed=0):
    """Grey noise: no pixel is pure green or red."""
    rng = np.random.default_rng(seed)
    level = rng.integers(60, 200, size=(n, height, width, 1))
    return np.repeat(level, 3, axis=-1).astype(np.uint8)


def _slow_ranking(dist, qid, gid, qcam, gcam, flavour):
    """Per query: kept gallery columns by distance (ties: column order)."""
    out = []
    for i in range(dist.shape[0]):
        kept = []
        for j in range(dist.shape[1]):
            if flavour == "sysu" and qcam[i] == 3 and gcam[j] == 2:
                continue
            if (
                flavour == "standard"
                and qid[i] == gid[j]
                and qcam[i] == gcam[j]
            ):
                continue
            kept.append(j)
        kept.sort(key=lambda j: (dist[i, j], j))
        out.append(kept)
    return out


# ---------------------------------------------------------------------------
# Rank lists.


def _retrieval_case(failing, num_queries=20, num_ids=10, seed=0):
    """Queries i (identity i % num_ids) against one gallery image per id.

    A query in `failing` has its own identity at distance 0.9 (behind every
    other), the others at 0.1 (first).
    """
    rng = np.random.default_rng(seed)
    qid = np.arange(num_queries) % num_ids
    gid = np.arange(num_ids)
    dist = rng.uniform(0.2, 0.8, size=(num_queries, num_ids))
    for i in range(num_queries):
        dist[i, qid[i]] = 0.9 if i in failing else 0.1
    return dict(
        distmat=dist,
        query_ids=qid,
        gallery_ids=gid,
        query_cams=np.full(num_queries, 2),
        gallery_cams=np.ones(num_ids, np.int64),
    )


@pytest.mark.parametrize(
    "failing,want_fail",
    [
        ({1, 4, 7, 11, 15, 18}, 4),  # Enough failures: half of 8.
        ({3, 9}, 2),  # Fewer: all of them, successes fill the rest.
        (set(), 0),  # None.
        (set(range(17)), 5),  # Only 3 successes: failures fill the rest.
    ],
)
def test_rank_lists_shows_half_failures(failing, want_fail):
    case = _retrieval_case(failing)
    lists = ranking.rank_lists(
        **case, flavour="standard", num_queries=8, top_k=4, seed=3
    )
    assert lists.query.size == 8 and len(set(lists.query.tolist())) == 8
    assert lists.failure.sum() == want_fail
    truth = np.array([q in failing for q in lists.query])
    np.testing.assert_array_equal(lists.failure, truth)
    assert lists.num_failures == len(failing) and lists.num_valid == 20
    # Successes first, then failures.
    assert not np.any(lists.failure[: 8 - want_fail])
    # Top-k: the obvious ranking, distances and hits.
    dist = case["distmat"]
    slow = _slow_ranking(
        dist,
        case["query_ids"],
        case["gallery_ids"],
        case["query_cams"],
        case["gallery_cams"],
        "standard",
    )
    for row, q in enumerate(lists.query):
        assert lists.gallery[row].tolist() == slow[q][:4]
        np.testing.assert_allclose(
            lists.distance[row], dist[q, slow[q][:4]], rtol=1e-6
        )
        assert lists.hit[row].tolist() == [
            case["gallery_ids"][g] == case["query_ids"][q] for g in slow[q][:4]
        ]
        assert lists.hit[row, 0] == (q not in failing)


def test_rank_lists_is_seeded():
    case = _retrieval_case({1, 4, 7, 11, 15, 18})
    draws = {
        tuple(
            ranking.rank_lists(
                **case, flavour="standard", num_queries=4, seed=s
            ).query
        )
        for s in range(6)
    }
    again = ranking.rank_lists(
        **case, flavour="standard", num_queries=4, seed=0
    ).query
    first = ranking.rank_lists(
        **case, flavour="standard", num_queries=4, seed=0
    ).query
    np.testing.assert_array_equal(again, first)
    assert len(draws) > 1


def test_rank_lists_applies_the_sysu_camera_exclusion():
    # Gallery: identity 5 in cameras 2 and 1, identity 7 in camera 4,
    # identity 9 in camera 2. Queries: identity 5 from camera 3 (camera 2
    # removed: its first item is identity 7, a failure) and from camera 6
    # (nothing removed: a hit); identity 2 (not in the gallery) and
    # identity 9 from camera 3 (its only match is in camera 2): skipped.
    dist = np.array([[0.1, 0.5, 0.3, 0.7]] * 4)
    lists = ranking.rank_lists(
        dist,
        query_ids=[5, 5, 2, 9],
        gallery_ids=[5, 5, 7, 9],
        query_cams=[3, 6, 3, 3],
        gallery_cams=[2, 1, 4, 2],
        flavour="sysu",
        num_queries=8,
        top_k=10,
    )
    assert lists.query.tolist() == [1, 0]  # The success, then the failure.
    assert lists.num_valid == 2 and lists.num_failures == 1
    # Every row shows as many items as the shortest kept list (query 0
    # keeps columns 1 and 2 only).
    assert lists.gallery.tolist() == [[0, 2], [2, 1]]
    assert lists.hit.tolist() == [[True, False], [False, True]]
    assert lists.failure.tolist() == [False, True]
    np.testing.assert_allclose(
        lists.distance, [[0.1, 0.3], [0.3, 0.5]], rtol=1e-6
    )


def test_rank_lists_rejects_bad_input():
    case = _retrieval_case(set())
    with pytest.raises(ValueError, match="flavour"):
        ranking.rank_lists(**case, flavour="market")
    with pytest.raises(ValueError, match="num_queries"):
        ranking.rank_lists(**case, flavour="sysu", num_queries=0)
    with pytest.raises(ValueError, match="query_ids"):
        ranking.rank_lists(**{**case, "query_ids": [1, 2]}, flavour="sysu")
    with pytest.raises(ValueError, match="NaN"):
        ranking.rank_lists(
            **{**case, "distmat": case["distmat"] * np.nan}, flavour="sysu"
        )
    with pytest.raises(ValueError, match="no query has a matching"):
        ranking.rank_lists(
            **{**case, "query_ids": case["query_ids"] + 100}, flavour="sysu"
        )


def _border_columns(rgb, color, tolerance=8):
    match = np.all(
        np.abs(rgb.astype(int) - np.array(color)) <= tolerance, axis=-1
    )
    return np.flatnonzero(match.any(axis=0)), match


@pytest.mark.parametrize("hits", [(True, False), (False, True)])
def test_rank_list_borders_are_green_for_hits_red_for_misses(tmp_path, hits):
    lists = ranking.RankLists(
        query=np.array([0]),
        gallery=np.array([[0, 1]]),
        distance=np.array([[-0.9, -0.5]], np.float32),
        hit=np.array([hits]),
        failure=np.array([not hits[0]]),
        num_valid=1,
        num_failures=int(not hits[0]),
    )
    path = ranking.draw_rank_lists(
        str(tmp_path / "r.png"),
        lists,
        query_images=_grey_images(1),
        gallery_images=_grey_images(2, seed=1)[None],
        title="t",
        query_labels=["id 1 cam 3"],
    )
    _, _, rgb = _png(path)
    green, green_mask = _border_columns(rgb, ranking.HIT_COLOR)
    red, red_mask = _border_columns(rgb, ranking.MISS_COLOR)
    assert green.size and red.size
    if hits[0]:
        assert green.max() < red.min()
    else:
        assert red.max() < green.min()
    # A frame, not a filled box: the middle of the frame is the image.
    for mask in (green_mask, red_mask):
        ys, xs = np.nonzero(mask)
        assert not mask[(ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2]
        assert ys.max() - ys.min() > 1.5 * (xs.max() - xs.min())  # 32x16.


def test_rank_list_figure_writes_png_of_the_chosen_images(tmp_path):
    case = _retrieval_case({1, 4, 7, 11, 15, 18})
    # A split of 30 images: queries at 0..19, gallery at 20..29.
    split = _grey_images(30)
    loaded = []

    def load(indices):
        loaded.append(np.asarray(indices))
        return split[indices]

    path, lists = ranking.rank_list_figure(
        str(tmp_path / "rank.png"),
        **case,
        flavour="standard",
        load_images=load,
        query_index=np.arange(20),
        gallery_index=np.arange(20, 30),
        num_queries=6,
        top_k=5,
        seed=1,
        title="synthetic",
    )
    width, height, _ = _png(path)
    assert lists.query.size == 6 and lists.failure.sum() == 3
    assert 300 < width < 1200 and 500 < height < 1500
    assert loaded[0].tolist() == (
        lists.query.tolist() + (20 + lists.gallery).ravel().tolist()
    )


def test_regdb_rank_lists_in_both_directions(tmp_path):
    meta, feats = _regdb_case()
    jobs = regdb.Regdb(meta, trial=1).rank_list_views()
    assert [j[0] for j in jobs] == [
        "rank_list_regdb_visible_to_infrared",
        "rank_list_regdb_infrared_to_visible",
    ]
    for (stem, title, q, g, flavour), (q_mod, g_mod) in zip(
        jobs, [(0, 1), (1, 0)], strict=True
    ):
        assert flavour == "standard"
        assert np.all(meta.modality[q] == q_mod)
        assert np.all(meta.modality[g] == g_mod)
        assert q.size == g.size == 18
        dist = -feats[q] @ feats[g].T
        path, lists = ranking.rank_list_figure(
            str(tmp_path / f"{stem}.png"),
            dist,
            query_ids=meta.identity[q],
            gallery_ids=meta.identity[g],
            query_cams=meta.camera[q],
            gallery_cams=meta.camera[g],
            flavour=flavour,
            load_images=lambda i: _grey_images(len(i)),
            query_index=q,
            gallery_index=g,
            title=title,
        )
        assert lists.gallery.shape == (8, 10)
        # 11 cells of 0.575 in (+25% spacing), a 0.17 in gap, 0.4 in margins;
        # 8 rows of 1.5 in + 0.55 in title, at 100 dpi.
        assert _png(path)[:2] == (847, 1255)
    # An evaluator type that is no protocol is refused when the evaluators
    # are built.
    with pytest.raises(ValueError, match="unknown 'market'"):
        registry.build(
            ml_collections.ConfigDict({"test": {"type": "market"}}),
            store=None,
            sources={},
            image_size=(32, 16),
            batch_size=8,
            builder_config=None,
            workdir=str(tmp_path),
        )


# ---------------------------------------------------------------------------
# CMC.


def _regdb_case(num_ids=6, per_id=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids, dim))
    ident, cam, mod, names, feats = [], [], [], [], []
    for m in (0, 1):
        for i in range(num_ids):
            for k in range(per_id):
                ident.append(i + 1)
                cam.append(m + 1)
                mod.append(m)
                names.append(f"{'VT'[m]}/{i:03d}_{k}.bmp")
                feats.append(centers[i] + 1.5 * rng.normal(size=dim))
    meta = SplitMetadata(
        label=np.array(ident) - 1,
        identity=np.array(ident),
        camera=np.array(cam),
        modality=np.array(mod),
        file_name=np.array(names, dtype=object),
    )
    return meta, np.array(feats, np.float32)


def _slow_cmc(query, gallery, qid, gid, max_rank):
    """CMC of a plain image ranking, one query at a time."""
    firsts = []
    for i in range(len(query)):
        d = [
            -float(
                np.dot(
                    query[i] / np.linalg.norm(query[i]), g / np.linalg.norm(g)
                )
            )
            for g in gallery
        ]
        order = sorted(range(len(gallery)), key=lambda j: (d[j], j))
        firsts.append(
            next(r for r, j in enumerate(order, 1) if gid[j] == qid[i])
        )
    return np.array(
        [np.mean([f <= k for f in firsts]) for k in range(1, max_rank + 1)]
    )


def test_mean_cmc_and_cmc_figure_against_slow_cmc(tmp_path):
    results, want = None, {}
    for trial in (1, 2):
        meta, feats = _regdb_case(seed=trial)
        feats = {"pool": feats, "bn": feats[:, ::-1] ** 3}
        one = regdb.Regdb(meta, trial=trial, max_rank=12).evaluate(feats)
        results = one if results is None else results.merge(one)
        vis, ir = meta.modality == 0, meta.modality == 1
        for name, value in feats.items():
            for direction, (q, g) in {
                "visible_to_infrared": (vis, ir),
                "infrared_to_visible": (ir, vis),
            }.items():
                want.setdefault(f"regdb_{direction}", {}).setdefault(
                    name, []
                ).append(
                    _slow_cmc(
                        value[q],
                        value[g],
                        meta.identity[q],
                        meta.identity[g],
                        12,
                    )
                )
    curves = plots.mean_cmc(results)
    from_json = plots.mean_cmc(
        json.loads(
            json.dumps(
                {"summary": results.summary(), "results": results.to_dict()}
            )
        )
    )
    for protocol, fs in want.items():
        for name, per_trial in fs.items():
            np.testing.assert_allclose(
                curves[protocol][name], np.mean(per_trial, axis=0), atol=1e-12
            )
            np.testing.assert_allclose(
                from_json[protocol][name], curves[protocol][name], atol=1e-12
            )
    curves["regdb_visible_to_infrared"]["raw pixels"] = np.linspace(
        0.1, 1.0, 12
    )
    path, drawn = plots.cmc_figure(
        str(tmp_path / "cmc.png"), curves, max_rank=10
    )
    width, height, _ = _png(path)
    assert (width, height) == (840, 320)  # 2 panels of 4.2 x 3.2 in, dpi 100.
    for protocol, fs in curves.items():
        assert sorted(drawn[protocol]) == sorted(fs)
        for name, cmc in fs.items():
            np.testing.assert_array_equal(drawn[protocol][name], cmc[:10])


def test_mean_cmc_rejects_summaries_without_trials():
    with pytest.raises(ValueError, match="trials"):
        plots.mean_cmc({"sysu_all_single_shot": {"bn": {"mean": {}}}})
    with pytest.raises(ValueError, match="EvaluationResults"):
        plots.mean_cmc([0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        plots.cmc_figure("unused.png", {})


# ---------------------------------------------------------------------------
# t-SNE and distances.


def test_select_identities_takes_both_modalities_of_few_ids():
    identity = np.repeat(np.arange(8), 10)
    modality = np.tile(np.r_[np.zeros(6), np.ones(4)], 8).astype(int)
    modality[identity == 3] = 0  # Identity 3: visible only.
    idx = plots.select_identities(
        identity, modality, num_identities=4, max_per_modality=5, seed=2
    )
    ids = np.unique(identity[idx])
    assert ids.size == 4 and 3 not in ids
    for i in ids:
        assert np.sum((identity[idx] == i) & (modality[idx] == 0)) == 5
        assert np.sum((identity[idx] == i) & (modality[idx] == 1)) == 4
    np.testing.assert_array_equal(
        idx,
        plots.select_identities(
            identity, modality, num_identities=4, max_per_modality=5, seed=2
        ),
    )
    with pytest.raises(ValueError, match="both modalities"):
        plots.select_identities(identity, np.zeros_like(identity))


def _two_modality_features(num_ids=4, per=6, dim=16, gap=3.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids, dim))
    shift = gap * rng.normal(size=dim)
    identity = np.repeat(np.arange(num_ids), 2 * per)
    modality = np.tile(np.repeat([0, 1], per), num_ids)
    feats = (
        centers[identity]
        + 0.3 * rng.normal(size=(identity.size, dim))
        + shift * modality[:, None]
    )
    return feats.astype(np.float32), identity, modality


def test_tsne_figure(tmp_path):
    feats, identity, modality = _two_modality_features()
    path, emb = plots.tsne_figure(
        str(tmp_path / "tsne.png"),
        {"trained": feats[:, :8], "raw pixels": feats},
        identity=identity,
        modality=modality,
        seed=0,
    )
    width, height, _ = _png(path)
    assert (width, height) == (800, 430)
    assert sorted(emb) == ["raw pixels", "trained"]
    for xy in emb.values():
        assert xy.shape == (identity.size, 2) and np.all(np.isfinite(xy))
    with pytest.raises(ValueError, match="panels"):
        plots.tsne_figure(
            str(tmp_path / "x.png"),
            {"a": feats[:3]},
            identity=identity,
            modality=modality,
        )


def test_pair_distances_and_histogram_against_slow_pairs(tmp_path):
    feats, identity, modality = _two_modality_features(num_ids=3, per=3)
    groups = plots.pair_distances(feats, identity=identity, modality=modality)
    want = {name: [] for name in plots.PAIR_CATEGORIES}
    n = identity.size
    for i in range(n):
        for j in range(i + 1, n):
            a = feats[i] / np.linalg.norm(feats[i])
            b = feats[j] / np.linalg.norm(feats[j])
            key = (modality[i] == modality[j], identity[i] == identity[j])
            name = next(k for k, v in plots.PAIR_CATEGORIES.items() if v == key)
            want[name].append(-float(np.dot(a, b)))
    assert sum(len(v) for v in want.values()) == n * (n - 1) // 2
    for name, values in want.items():
        np.testing.assert_allclose(groups[name], values, atol=1e-6)
    path, drawn = plots.distance_histogram_figure(
        str(tmp_path / "d.png"),
        {"a": feats, "b": -feats},
        identity=identity,
        modality=modality,
        bins=20,
    )
    width, height, _ = _png(path)
    assert (width, height) == (840, 360)
    np.testing.assert_allclose(
        drawn["a"]["cross modality, same identity"],
        want["cross modality, same identity"],
        atol=1e-6,
    )


# ---------------------------------------------------------------------------
# Every figure of a split's features (what the figures evaluator draws).


def test_draw_figures_of_regdb_features_with_raw_pixels(tmp_path, monkeypatch):
    meta, feats = _regdb_case()
    drawn = []

    def cmc_figure(path, curves, **kwargs):
        drawn.append(curves)
        return draw_cmc(path, curves, **kwargs)

    draw_cmc = plots.cmc_figure
    monkeypatch.setattr(plots, "cmc_figure", cmc_figure)
    protocol = regdb.Regdb(meta, trial=1, max_rank=10)
    features = {"pool": feats, "bn": feats[:, ::-1] ** 3}
    results = protocol.evaluate(features)
    raw = protocol.evaluate({"pixels": feats[:, :3]})
    loaded = []

    def load_images(indices):
        loaded.append(np.asarray(indices))
        return _grey_images(len(indices))

    folder = tmp_path / "figures"
    paths = analysis.draw_figures(
        str(folder),
        features=features,
        protocol=protocol,
        results=results,
        raw_pixel_results=raw,
        load_images=load_images,
        step=7,
        checkpoint="best",
    )
    names = [
        "cmc",
        "distances",
        "rank_list_regdb_infrared_to_visible",
        "rank_list_regdb_visible_to_infrared",
        "tsne",
    ]
    assert sorted(paths) == names
    assert sorted(os.listdir(folder)) == sorted(
        ["README.txt"] + [n + ".png" for n in names]
    )
    for path in paths.values():
        width, height, _ = _png(path)
        assert 200 < width < 2000 and 200 < height < 2000, path
    # The images are read once, each once.
    assert len(loaded) == 1
    assert np.unique(loaded[0]).size == loaded[0].size
    readme = (folder / "README.txt").read_text()
    assert "best checkpoint (step 7)" in readme
    # The CMC: both features of the results, and the raw pixels' curve.
    (curves,) = drawn
    raw_curves = plots.mean_cmc(raw)
    for direction in ("visible_to_infrared", "infrared_to_visible"):
        protocol_curves = curves[f"regdb_{direction}"]
        assert sorted(protocol_curves) == sorted(
            ["pool", "bn", plots.RAW_PIXELS]
        )
        np.testing.assert_array_equal(
            protocol_curves[plots.RAW_PIXELS],
            raw_curves[f"regdb_{direction}"]["pixels"],
        )
    with pytest.raises(ValueError, match="feature must be one of"):
        analysis.draw_figures(
            str(folder),
            features=features,
            protocol=protocol,
            results=results,
            load_images=load_images,
            step=7,
            feature="logits",
        )


# ---------------------------------------------------------------------------
# End to end: a tiny trained workdir, then --mode=analyze.

# The tiny demo with a raw-pixel evaluator whose CMC the figures overlay.
_TINY_WITH_RAW_PIXELS = """
from mclnet_jax.configs import synthetic


def get_config(arg=None):
    config = synthetic.get_config(arg)
    config.evals.raw_pixels = dict(config.evals.test, features="pixels")
    config.evals.figures.baseline = "raw_pixels"
    return config
"""


def test_analyze_workdir_draws_every_figure(tmp_path, fast_compile):
    del fast_compile
    workdir = tmp_path / "work"
    config_file = tmp_path / "tiny_raw_pixels.py"
    config_file.write_text(_TINY_WITH_RAW_PIXELS)
    config = f"{config_file}:tiny=1"
    # A few steps at a small lr (in this process): the eval-mode features
    # stay finite (at the tiny config's lr 0.1 they overflow before the
    # BatchNorm statistics settle). No figures at the end: --mode=analyze
    # draws them.
    code = cli_runs.run_main(
        workdir,
        "--config.max_steps=4",
        "--config.optimizer.lr=0.01",
        "--config.mcm_optimizer.lr=0.01",
        "--config.evals.figures.at_end=False",
        config=config,
    )
    assert code == 0
    assert (workdir / "results_raw_pixels.json").exists()
    assert not (workdir / "figures").exists()

    # The analyze mode's smoke test: the command line in a child process.
    proc = subprocess.run(
        cli_runs.command(workdir, "--mode=analyze", config=config),
        env=cli_runs.env(fast_compile=True),
        cwd=cli_runs.REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = workdir / "figures"
    names = sorted(os.listdir(folder))
    assert names == [
        "README.txt",
        "cmc.png",
        "distances.png",
        "rank_list_sysu_all.png",
        "tsne.png",
    ]
    for name in names[1:]:
        width, height, _ = _png(folder / name)
        assert 200 < width < 2000 and 200 < height < 2000, name
    readme = (folder / "README.txt").read_text()
    versions = canvas.library_versions()
    assert f"matplotlib {versions['matplotlib']}" in readme
    assert f"scikit-learn {versions['scikit-learn']}" in readme
    assert "latest checkpoint (step 4)" in readme


def test_analyze_without_a_figures_evaluator_is_a_configuration_error(
    tmp_path,
):
    from mclnet_jax import errors, evaluate
    from mclnet_jax.configs import synthetic

    config = synthetic.get_config("tiny=1")
    del config.evals["figures"]
    with pytest.raises(errors.ConfigurationError, match="figures evaluators"):
        evaluate.analyze(config, str(tmp_path))
    assert not os.listdir(tmp_path)  # Stopped before any work.
