"""Benchmark: SYSU-MM01 and RegDB evaluation, ours vs a per-query loop.

Full-size protocols from given random features with a realistic identity /
camera structure:

* SYSU-MM01 all-search: 96 test ids; 3,803 infrared queries (cameras 3, 6);
  10 trials of a single-shot gallery drawn by `protocols.sysu_gallery_indices`
  (301 images per trial: one per identity per visible camera folder);
* RegDB: 10 trials of 206 ids x 10 visible + 10 thermal images,
  visible->infrared (2,060 x 2,060).

For each, seconds for 10 trials of

* "metrics": CMC / mAP / mINP from the distance matrices;
* "full": also L2 normalisation of the features and the distances
  (ours: `sysu.Sysu(...).evaluate` / normalise + distance + metrics per RegDB
  trial; the loop: normalise + matmul per trial, as the community test code).

The loop is a straightforward community-style implementation (one Python
iteration per query, numpy inside), timed in the same run; the numbers of
both are checked to be identical (to 1e-9) on the same distance matrices.
For "full" each side computes its own float32 distances (different
summation order), so float-level near-ties may order differently; that
difference is printed ("full |diff|"). Ours is timed as the median of
--repeats runs, the loop once (it is slow). The community's own code takes
9.9 s (SYSU) and 36.7 s (RegDB) for the metrics on the reference machine.

Then k-reciprocal re-ranking (`rerank.k_reciprocal_distance`, k1=20, k2=6,
lambda=0.3) of one trial at both sizes: SYSU all-search 3,803 queries x 301
gallery (N = 4,104, q_q included) and RegDB V->I 2,060 x 2,060 (N = 4,120).
Printed: the median seconds of --rerank_repeats runs of the Euclidean
distances (q_g, q_q, g_g from the normalised features) and of the
re-ranking itself, and R1 / mAP of that trial without and with it.

Run:
    python benchmarks/evaluation.py            # full size (~2-3 min)
    python benchmarks/evaluation.py --quick    # 2 trials, smoke test
    python benchmarks/evaluation.py --only_rerank   # re-ranking only
"""

import time
import types

import numpy as np
from absl import app, flags

from data_pipeline.constants import (
    SYSU_INFRARED_CAMERAS,
    SYSU_VISIBLE_CAMERAS,
)
from data_pipeline.records import SplitMetadata
from mclnet_jax import metrics, rerank
from mclnet_jax.evaluators import protocols, sysu

_TRIALS = flags.DEFINE_integer("trials", 10, "Trials.", lower_bound=1)
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Timed runs of ours (median taken).", lower_bound=1
)
_DIM = flags.DEFINE_integer(
    "dim", 2048, "Feature dimension (MCLNet ResNet-50: 2048).", lower_bound=1
)
_RERANK_REPEATS = flags.DEFINE_integer(
    "rerank_repeats", 5, "Timed runs of the re-ranking.", lower_bound=1
)
_QUICK = flags.DEFINE_bool("quick", False, "2 trials, 3 repeats: a smoke test.")
_ONLY_RERANK = flags.DEFINE_bool(
    "only_rerank", False, "Time the re-ranking only."
)

COMMUNITY_SECONDS = {"SYSU all-search": 9.9, "RegDB V->I": 36.7}


# ---------------------------------------------------------------------------
# A straightforward per-query loop (community style) as the baseline.


def loop_metrics(
    distmat, q_ids, g_ids, q_cams, g_cams, *, flavour, max_rank=20
):
    """Per-query loop; returns (cmc [max_rank], mAP, mINP)."""
    num_q = distmat.shape[0]
    indices = np.argsort(distmat, axis=1, kind="stable")
    pred = g_ids[indices]
    matches = (pred == q_ids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(num_q):
        order = indices[q]
        if flavour == "sysu":
            keep = ~((q_cams[q] == 3) & (g_cams[order] == 2))
        else:
            keep = ~((g_ids[order] == q_ids[q]) & (g_cams[order] == q_cams[q]))
        raw = matches[q][keep]
        if not raw.any():
            continue
        if flavour == "sysu":
            ranked = pred[q][keep]
            first = np.sort(np.unique(ranked, return_index=True)[1])
            hit = (ranked[first] == q_ids[q]).astype(np.int32)
        else:
            hit = raw
        cmc = np.minimum(hit.cumsum(), 1)[:max_rank]
        if cmc.size < max_rank:
            cmc = np.concatenate([cmc, np.full(max_rank - cmc.size, cmc[-1])])
        all_cmc.append(cmc)
        cum = raw.cumsum()
        last = np.flatnonzero(raw).max()
        all_inp.append(cum[last] / (last + 1.0))
        all_ap.append(
            (cum / np.arange(1.0, raw.size + 1) * raw).sum() / raw.sum()
        )
    return (
        np.mean(all_cmc, axis=0),
        float(np.mean(all_ap)),
        float(np.mean(all_inp)),
    )


def loop_distance(query, gallery):
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    return -np.matmul(query, gallery.T)


# ---------------------------------------------------------------------------
# Data with the real protocols' structure.


def features_for(identity, camera, *, dim, seed, noise=4.5):
    """Identity centre + camera offset + noise: realistic-ish retrieval.

    The same seed gives the same identity centres, so different modalities
    of one test split share them.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((identity.max() + 1, dim)).astype(np.float32)
    offsets = rng.standard_normal((camera.max() + 1, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, identity.size, int(camera[0])])
    return (
        centers[identity]
        + offsets[camera]
        + noise * rng.standard_normal((identity.size, dim), np.float32)
    )


def sysu_test_split(rng, *, dim):
    """Metadata + features of a SYSU-like test split (96 ids)."""
    ids = np.sort(rng.choice(np.arange(1, 534), 96, replace=False))
    rgb_folders = [(i, c) for i in ids for c in SYSU_VISIBLE_CAMERAS]
    # 301 of the 384 (id, visible camera) folders exist, as in SYSU-MM01.
    present = rng.choice(len(rgb_folders), 301, replace=False)
    ir_folders = [(i, c) for i in ids for c in SYSU_INFRARED_CAMERAS]
    ir_counts = (
        rng.multinomial(
            3803 - len(ir_folders), np.ones(len(ir_folders)) / len(ir_folders)
        )
        + 1
    )
    rows = []
    for k in present:
        i, c = rgb_folders[k]
        rows += [
            (i, c, 0, f"cam{c}/{i:04d}/{j:04d}.jpg")
            for j in range(1, int(rng.integers(5, 40)))
        ]
    for (i, c), n in zip(ir_folders, ir_counts, strict=True):
        rows += [
            (i, c, 1, f"cam{c}/{i:04d}/{j:04d}.jpg") for j in range(1, n + 1)
        ]
    rows = [rows[k] for k in rng.permutation(len(rows))]
    identity, camera, modality, names = (
        np.asarray(c) for c in zip(*rows, strict=True)
    )
    meta = SplitMetadata(
        label=np.unique(identity, return_inverse=True)[1],
        identity=identity.astype(np.int64),
        camera=camera.astype(np.int64),
        modality=modality.astype(np.int64),
        file_name=names.astype(object),
    )
    return meta, features_for(meta.identity, meta.camera, dim=dim, seed=0)


def regdb_trial(rng, *, dim, seed):
    ids = np.sort(rng.choice(412, 206, replace=False))
    identity = np.repeat(ids, 10)
    return (
        identity,
        features_for(identity, np.full(2060, 1), dim=dim, seed=seed),
        features_for(identity, np.full(2060, 2), dim=dim, seed=seed),
    )


# ---------------------------------------------------------------------------


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def check_same(ours, loop, what, tol=1e-9):
    diff = max(
        np.abs(ours.cmc - loop[0]).max(),
        abs(ours.mAP - loop[1]),
        abs(ours.mINP - loop[2]),
    )
    if diff > tol:
        raise AssertionError(f"{what}: ours and the loop differ by {diff}")
    return diff


def bench_sysu(args):
    rng = np.random.default_rng(0)
    meta, feats = sysu_test_split(rng, dim=args.dim)
    trials = range(args.trials)
    query = protocols.sysu_query_indices(meta)
    galleries = [
        protocols.sysu_gallery_indices(meta, mode="all", trial=t)
        for t in trials
    ]
    assert query.size == 3803 and all(g.size == 301 for g in galleries)
    kw = [
        dict(
            query_ids=meta.identity[query],
            gallery_ids=meta.identity[g],
            query_cams=meta.camera[query],
            gallery_cams=meta.camera[g],
        )
        for g in galleries
    ]
    dists = [loop_distance(feats[query], feats[g]) for g in galleries]

    ours_metrics, ours = median_seconds(
        lambda: [
            metrics.sysu_metrics(d, **k) for d, k in zip(dists, kw, strict=True)
        ],
        args.repeats,
    )
    ours_full, full = median_seconds(
        lambda: sysu.Sysu(meta, modes=("all",), trials=trials).evaluate(
            {"bn": feats}
        ),
        args.repeats,
    )

    start = time.perf_counter()
    loop = [
        loop_metrics(
            d,
            k["query_ids"],
            k["gallery_ids"],
            k["query_cams"],
            k["gallery_cams"],
            flavour="sysu",
        )
        for d, k in zip(dists, kw, strict=True)
    ]
    loop_metrics_s = time.perf_counter() - start
    start = time.perf_counter()
    for g in galleries:
        loop_distance(feats[query], feats[g])
    loop_full = loop_metrics_s + time.perf_counter() - start

    diff = max(
        check_same(o, ref, "SYSU") for o, ref in zip(ours, loop, strict=True)
    )
    full_diff = max(
        check_same(
            full.per_trial["sysu_all_single_shot"]["bn"][t],
            ref,
            "SYSU Sysu.evaluate",
            tol=1e-3,
        )
        for t, ref in zip(trials, loop, strict=True)
    )
    return dict(
        name="SYSU all-search",
        shape="3803 x 301",
        ours_metrics=ours_metrics,
        ours_full=ours_full,
        loop_metrics=loop_metrics_s,
        loop_full=loop_full,
        diff=diff,
        full_diff=full_diff,
        **_mean_metrics(ours),
    )


def _mean_metrics(results) -> dict[str, float]:
    """Mean rank-1, mAP and mINP over per-trial metric results."""
    return dict(
        rank1=np.mean([o.cmc[0] for o in results]),
        mAP=np.mean([o.mAP for o in results]),
        mINP=np.mean([o.mINP for o in results]),
    )


def bench_regdb(args):
    rng = np.random.default_rng(1)
    data = [regdb_trial(rng, dim=args.dim, seed=t) for t in range(args.trials)]
    vis_cam, ir_cam = np.full(2060, 1), np.full(2060, 2)
    dists = [loop_distance(v, i) for _, v, i in data]

    def ours_metrics_fn():
        return [
            metrics.standard_metrics(
                d,
                query_ids=ids,
                gallery_ids=ids,
                query_cams=vis_cam,
                gallery_cams=ir_cam,
            )
            for d, (ids, _, _) in zip(dists, data, strict=True)
        ]

    def ours_full_fn():
        out = []
        for ids, v, i in data:
            d = metrics.negative_inner_product(v, i)
            out.append(
                metrics.standard_metrics(
                    d,
                    query_ids=ids,
                    gallery_ids=ids,
                    query_cams=vis_cam,
                    gallery_cams=ir_cam,
                )
            )
        return out

    ours_metrics, ours = median_seconds(ours_metrics_fn, args.repeats)
    ours_full, full = median_seconds(ours_full_fn, args.repeats)

    start = time.perf_counter()
    loop = [
        loop_metrics(d, ids, ids, vis_cam, ir_cam, flavour="standard")
        for d, (ids, _, _) in zip(dists, data, strict=True)
    ]
    loop_metrics_s = time.perf_counter() - start
    start = time.perf_counter()
    for _, v, i in data:
        loop_distance(v, i)
    loop_full = loop_metrics_s + time.perf_counter() - start

    diff = max(
        check_same(o, ref, "RegDB") for o, ref in zip(ours, loop, strict=True)
    )
    full_diff = max(
        check_same(o, ref, "RegDB full", tol=1e-3)
        for o, ref in zip(full, loop, strict=True)
    )
    return dict(
        name="RegDB V->I",
        shape="2060 x 2060",
        ours_metrics=ours_metrics,
        ours_full=ours_full,
        loop_metrics=loop_metrics_s,
        loop_full=loop_full,
        diff=diff,
        full_diff=full_diff,
        **_mean_metrics(ours),
    )


def bench_rerank(args):
    """Re-ranking of one SYSU trial and one RegDB direction at full size."""
    meta, feats = sysu_test_split(np.random.default_rng(0), dim=args.dim)
    query = protocols.sysu_query_indices(meta)
    gallery = protocols.sysu_gallery_indices(meta, mode="all", trial=0)
    sysu = (
        metrics.l2_normalize(feats[query]),
        metrics.l2_normalize(feats[gallery]),
        dict(
            query_ids=meta.identity[query],
            gallery_ids=meta.identity[gallery],
            query_cams=meta.camera[query],
            gallery_cams=meta.camera[gallery],
        ),
        metrics.sysu_metrics,
    )
    ids, vis, ir = regdb_trial(np.random.default_rng(1), dim=args.dim, seed=0)
    regdb = (
        metrics.l2_normalize(vis),
        metrics.l2_normalize(ir),
        dict(query_ids=ids, gallery_ids=ids),
        metrics.standard_metrics,
    )
    rows = []
    for name, (q, g, kw, metric_fn) in (
        ("SYSU all-search", sysu),
        ("RegDB V->I", regdb),
    ):

        def distances(q=q, g=g):
            return (
                rerank.euclidean_distance(q, g),
                rerank.euclidean_distance(q),
                rerank.euclidean_distance(g),
            )

        dist_s, dists = median_seconds(distances, args.rerank_repeats)
        rerank_s, reranked = median_seconds(
            lambda dists=dists: rerank.k_reciprocal_distance(*dists),
            args.rerank_repeats,
        )
        before = metric_fn(metrics.negative_inner_product(q, g), **kw)
        after = metric_fn(reranked, **kw)
        rows.append(
            dict(
                name=name,
                shape=f"{len(q)} x {len(g)}",
                n=len(q) + len(g),
                dist_s=dist_s,
                rerank_s=rerank_s,
                before=before,
                after=after,
            )
        )
    return rows


def print_rerank(rows, args):
    print(
        f"\nk-reciprocal re-ranking (k1=20, k2=6, lambda=0.3), one trial, "
        f"D={args.dim}; seconds = median of {args.rerank_repeats} runs "
        "(machine may be shared: noisy)."
    )
    header = (
        f"{'protocol':<16} {'Q x G':>11} {'N':>5} | "
        f"{'distances':>9} {'re-rank':>7} | {'R1':>6} {'mAP':>6} -> "
        f"{'R1':>6} {'mAP':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name']:<16} {r['shape']:>11} {r['n']:>5} | "
            f"{r['dist_s']:9.3f} {r['rerank_s']:7.3f} | "
            f"{100 * r['before'].rank(1):6.2f} "
            f"{100 * r['before'].mAP:6.2f} -> "
            f"{100 * r['after'].rank(1):6.2f} "
            f"{100 * r['after'].mAP:6.2f}"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = types.SimpleNamespace(
        trials=_TRIALS.value,
        repeats=_REPEATS.value,
        dim=_DIM.value,
        rerank_repeats=_RERANK_REPEATS.value,
    )
    if _QUICK.value:
        args.trials, args.repeats, args.rerank_repeats = 2, 3, 2
    if _ONLY_RERANK.value:
        print_rerank(bench_rerank(args), args)
        return
    rows = [bench_sysu(args), bench_regdb(args)]
    print(
        f"{args.trials} trials, D={args.dim}; seconds (ours: median of "
        f"{args.repeats}; loop: 1 run). Machine may be shared: noisy."
    )
    header = (
        f"{'protocol':<16} {'Q x G':>11} | {'ours':>7} {'loop':>7} "
        f"{'ratio':>6} | {'ours':>7} {'loop':>7} {'ratio':>6} | "
        f"{'vs community':>12} | {'|diff|':>8} {'full |diff|':>11} "
        f"{'R1':>6} {'mAP':>6} {'mINP':>6}"
    )
    print(
        f"{'':<16} {'':>11} | {'metrics only':^22} | "
        f"{'normalise+distance+metrics':^22} |"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        scale = args.trials / 10
        community = COMMUNITY_SECONDS[r["name"]] * scale
        print(
            f"{r['name']:<16} {r['shape']:>11} | "
            f"{r['ours_metrics']:7.3f} {r['loop_metrics']:7.2f} "
            f"{r['loop_metrics'] / r['ours_metrics']:5.0f}x | "
            f"{r['ours_full']:7.3f} {r['loop_full']:7.2f} "
            f"{r['loop_full'] / r['ours_full']:5.0f}x | "
            f"{community / r['ours_metrics']:4.0f}x /"
            f"{community / r['ours_full']:4.0f}x | "
            f"{r['diff']:8.1e} {r['full_diff']:11.1e} "
            f"{100 * r['rank1']:6.2f} {100 * r['mAP']:6.2f} "
            f"{100 * r['mINP']:6.2f}"
        )
    print(
        "'vs community': community seconds (9.9 SYSU, 36.7 RegDB for 10 "
        "trials, scaled to --trials) / ours, metrics only / full."
    )
    print_rerank(bench_rerank(args), args)


if __name__ == "__main__":
    app.run(main)
