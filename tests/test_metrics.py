"""Tests for mclnet_jax.metrics against a slow per-query reference.

The reference below is written from the protocol description
(docs/evaluation.md, "Metrics"), one query at a time with Python lists, and
shares no code with the library.
"""

import numpy as np
import pytest

from mclnet_jax import _ranking, metrics


def reference_metrics(dist, qid, gid, qcam, gcam, *, max_rank, flavour):
    """Per-query loop: (cmc [max_rank], mAP, mINP, num_valid)."""
    dist = np.asarray(dist, dtype=np.float64)
    num_q, num_g = dist.shape
    cmcs, aps, inps = [], [], []
    for q in range(num_q):
        # Stable ranking: distance, then gallery index.
        ranking = sorted(range(num_g), key=lambda g: (dist[q, g], g))
        if flavour == "sysu":
            kept = [g for g in ranking if not (qcam[q] == 3 and gcam[g] == 2)]
        elif qcam is None:
            kept = ranking
        else:
            kept = [
                g
                for g in ranking
                if not (gid[g] == qid[q] and gcam[g] == qcam[q])
            ]
        match = [gid[g] == qid[q] for g in kept]
        if not any(match):
            continue
        hits, precision_sum, last = 0, 0.0, 0
        for r, m in enumerate(match, start=1):
            if m:
                hits += 1
                precision_sum += hits / r
                last = r
        aps.append(precision_sum / hits)
        inps.append(hits / last)
        if flavour == "sysu":
            seen = []
            for g in kept:
                if gid[g] not in seen:
                    seen.append(gid[g])
            hit_list = [i == qid[q] for i in seen]
        else:
            hit_list = match
        cmc, found = [], False
        for k in range(max_rank):
            if k < len(hit_list) and hit_list[k]:
                found = True
            cmc.append(1.0 if found else 0.0)
        cmcs.append(cmc)
    if not cmcs:
        return None
    return (
        np.mean(cmcs, axis=0),
        float(np.mean(aps)),
        float(np.mean(inps)),
        len(cmcs),
    )


def run_both(dist, qid, gid, qcam, gcam, *, flavour, max_rank=20):
    fn = metrics.sysu_metrics if flavour == "sysu" else metrics.standard_metrics
    got = fn(
        dist,
        query_ids=qid,
        gallery_ids=gid,
        query_cams=qcam,
        gallery_cams=gcam,
        max_rank=max_rank,
    )
    want = reference_metrics(
        dist, qid, gid, qcam, gcam, max_rank=max_rank, flavour=flavour
    )
    return got, want


def assert_same(got, want):
    cmc, m_ap, m_inp, num_valid = want
    np.testing.assert_allclose(got.cmc, cmc, rtol=0, atol=1e-6)
    assert got.mAP == pytest.approx(m_ap, abs=1e-6)
    assert got.mINP == pytest.approx(m_inp, abs=1e-6)
    assert got.num_valid_queries == num_valid


def sysu_like(
    rng, num_q, num_g, num_ids, *, dtype=np.float32, integer_dist=False
):
    qid = rng.integers(0, num_ids + 2, num_q)  # some ids absent: skipped
    gid = rng.integers(0, num_ids, num_g)
    qcam = rng.choice([3, 6], num_q)
    gcam = rng.choice([1, 2, 4, 5], num_g)
    if integer_dist:
        dist = rng.integers(0, 4, (num_q, num_g)).astype(dtype)
    else:
        dist = rng.standard_normal((num_q, num_g)).astype(dtype)
    return dist, qid, gid, qcam, gcam


# --------------------------------------------------------------------------
# Hand-built examples.


def test_sysu_hand_built():
    # Query 0: id 1, camera 3 -> camera-2 items g0, g2 are removed.
    #   kept ranking g1(id3) g3(id3) g4(id1) g5(id4) g6(id1): positives at
    #   ranks 3 and 5 -> AP = (1/3 + 2/5) / 2 = 11/30, INP = 2/5;
    #   identities without repeats: 3, 1, 4 -> first match at rank 2.
    # Query 1: id 1, camera 6 -> nothing removed; ranking g0..g6 with
    #   positives at ranks 3, 5, 7 -> AP = (1/3 + 2/5 + 3/7) / 3 = 122/315,
    #   INP = 3/7; identities 2, 3, 1 -> first match at rank 3.
    # Query 2: id 9 is not in the gallery -> skipped.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]] * 3)
    gid = np.array([2, 3, 1, 3, 1, 4, 1])
    gcam = np.array([2, 1, 2, 4, 1, 5, 5])
    qid = np.array([1, 1, 9])
    qcam = np.array([3, 6, 3])
    got = metrics.sysu_metrics(
        dist,
        query_ids=qid,
        gallery_ids=gid,
        query_cams=qcam,
        gallery_cams=gcam,
        max_rank=5,
    )
    np.testing.assert_allclose(got.cmc, [0, 0.5, 1, 1, 1], atol=1e-12)
    assert got.mAP == pytest.approx((11 / 30 + 122 / 315) / 2, abs=1e-12)
    assert got.mINP == pytest.approx((2 / 5 + 3 / 7) / 2, abs=1e-12)
    assert (got.num_queries, got.num_valid_queries) == (3, 2)
    assert got.rank(2) == 0.5


def test_standard_hand_built_with_ties():
    # Query 0: id 1, camera 1. g0 (same id and camera) is removed; g1 and g2
    #   tie at 0.5 and g1 (smaller index) ranks first: kept ranking g3(id1)
    #   g1(id2) g2(id1) -> positives at ranks 1, 3: AP = (1 + 2/3) / 2 = 5/6,
    #   INP = 2/3, rank-1 hit.
    # Query 1: id 2, camera 1. Ranking g2 (0.1), g0 (0.3), g1 (0.3, after g0
    #   by index), g3: the only positive g1 is at rank 3: AP = INP = 1/3.
    dist = np.array([[0.0, 0.5, 0.5, 0.2], [0.3, 0.3, 0.1, 0.9]])
    gid = np.array([1, 2, 1, 1])
    gcam = np.array([1, 2, 2, 3])
    got = metrics.standard_metrics(
        dist,
        query_ids=np.array([1, 2]),
        gallery_ids=gid,
        query_cams=np.array([1, 1]),
        gallery_cams=gcam,
        max_rank=4,
    )
    np.testing.assert_allclose(got.cmc, [0.5, 0.5, 1, 1], atol=1e-12)
    assert got.mAP == pytest.approx((5 / 6 + 1 / 3) / 2, abs=1e-12)
    assert got.mINP == pytest.approx((2 / 3 + 1 / 3) / 2, abs=1e-12)


def test_standard_without_cameras_removes_nothing():
    # Same matrix without cameras: query 0 now also matches g0 at rank 1:
    # ranking g0 g3 g1 g2 -> positives at 1, 2, 4: AP = (1 + 1 + 3/4) / 3.
    dist = np.array([[0.0, 0.5, 0.5, 0.2]])
    got = metrics.standard_metrics(
        dist, query_ids=np.array([1]), gallery_ids=np.array([1, 2, 1, 1])
    )
    assert got.mAP == pytest.approx((1 + 1 + 3 / 4) / 3, abs=1e-12)
    assert got.mINP == pytest.approx(3 / 4, abs=1e-12)
    assert got.cmc.shape == (20,) and np.all(got.cmc == 1)


def test_negative_zero_ties_with_positive_zero():
    # -0.0 == +0.0: a tie broken by column index, so g0 (id 5) is first.
    got = metrics.standard_metrics(
        np.array([[0.0, -0.0]], np.float32),
        query_ids=np.array([7]),
        gallery_ids=np.array([5, 7]),
    )
    assert got.cmc[0] == 0 and got.cmc[1] == 1
    assert got.mAP == pytest.approx(0.5)


# --------------------------------------------------------------------------
# Random matrices against the reference.


@pytest.mark.parametrize("flavour", ["sysu", "standard"])
@pytest.mark.parametrize(
    "case", ["float32", "float64", "integer_ties", "few_gallery"]
)
def test_random_matches_reference(flavour, case):
    rng = np.random.default_rng(
        [["sysu", "standard"].index(flavour), len(case)]
    )
    for trial in range(4):
        if case == "few_gallery":  # fewer gallery items than max_rank
            args = sysu_like(rng, 30, 7, 3)
        elif case == "integer_ties":
            args = sysu_like(rng, 60, 50, 6, integer_dist=True)
        else:
            args = sysu_like(rng, 60, 80, 8, dtype=getattr(np, case))
        dist, qid, gid, qcam, gcam = args
        if flavour == "standard":
            # Overlapping cameras so same-id same-camera removal happens.
            qcam = rng.integers(1, 4, qid.shape[0])
            gcam = rng.integers(1, 4, gid.shape[0])
            if trial % 2:
                qcam = gcam = None
        got, want = run_both(dist, qid, gid, qcam, gcam, flavour=flavour)
        assert_same(got, want)


def test_float64_near_ties_are_exact():
    # Values that differ only beyond float32 precision must still order by
    # their float64 value, and exact float64 ties by column index.
    rng = np.random.default_rng(3)
    base = rng.integers(0, 3, (40, 30)).astype(np.float64)
    dist = base + rng.integers(0, 3, (40, 30)) * 1e-12
    qid = rng.integers(0, 5, 40)
    gid = rng.integers(0, 5, 30)
    qcam = rng.choice([3, 6], 40)
    gcam = rng.choice([1, 2, 4, 5], 30)
    for flavour in ("sysu", "standard"):
        got, want = run_both(dist, qid, gid, qcam, gcam, flavour=flavour)
        assert_same(got, want)


@pytest.mark.parametrize("sort_chunk", [1, 3, 7, 512])
@pytest.mark.parametrize("integer_dist", [True, False])
def test_chunking_and_blocking_do_not_change_results(
    monkeypatch, sort_chunk, integer_dist
):
    # Rows sorted in pieces, queries in blocks, ties counted in chunks: all
    # internal sizes, same numbers as the reference.
    rng = np.random.default_rng([sort_chunk, integer_dist])
    dist, qid, gid, qcam, gcam = sysu_like(
        rng, 50, 40, 5, integer_dist=integer_dist
    )
    monkeypatch.setattr(_ranking, "SORT_CHUNK", sort_chunk)
    monkeypatch.setattr(_ranking, "BLOCK_ELEMENTS", 7 * 40)
    monkeypatch.setattr(_ranking, "TIE_CHUNK_ELEMENTS", 3 * 40)
    for flavour in ("sysu", "standard"):
        got, want = run_both(dist, qid, gid, qcam, gcam, flavour=flavour)
        assert_same(got, want)
    near = dist.astype(np.float64) + rng.integers(0, 3, dist.shape) * 1e-12
    got, want = run_both(near, qid, gid, qcam, gcam, flavour="standard")
    assert_same(got, want)


def test_camera3_removes_camera2_for_all_identities():
    # Only the query from camera 3 loses the camera-2 impostor in front.
    dist = np.array([[0.1, 0.5], [0.1, 0.5]])
    got = metrics.sysu_metrics(
        dist,
        query_ids=np.array([1, 1]),
        gallery_ids=np.array([2, 1]),
        query_cams=np.array([3, 6]),
        gallery_cams=np.array([2, 1]),
    )
    # Camera 3: positive at rank 1; camera 6: positive at rank 2.
    np.testing.assert_allclose(got.cmc[:2], [0.5, 1.0])
    assert got.mAP == pytest.approx((1 + 0.5) / 2)


def test_all_queries_skipped_is_an_error():
    dist = np.zeros((2, 3))
    with pytest.raises(ValueError, match="None of the 2 queries"):
        metrics.standard_metrics(
            dist, query_ids=np.array([7, 8]), gallery_ids=np.array([1, 2, 3])
        )
    # Every positive is from camera 2 and every query from camera 3.
    with pytest.raises(ValueError, match="None of the 1 queries"):
        metrics.sysu_metrics(
            np.zeros((1, 2)),
            query_ids=np.array([1]),
            gallery_ids=np.array([1, 2]),
            query_cams=np.array([3]),
            gallery_cams=np.array([2, 1]),
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(distmat=np.zeros(3)), "distmat must be"),
        (dict(distmat=np.full((2, 2), np.nan)), "NaN"),
        (dict(query_ids=np.array([1])), "query_ids must be a 1-D array"),
        (dict(max_rank=0), "max_rank"),
        (dict(query_cams=None), "query_cams is required"),
    ],
)
def test_bad_inputs(kwargs, message):
    args = dict(
        distmat=np.zeros((2, 2)),
        query_ids=np.array([1, 2]),
        gallery_ids=np.array([1, 2]),
        query_cams=np.array([3, 6]),
        gallery_cams=np.array([1, 2]),
    )
    args.update(kwargs)
    distmat = args.pop("distmat")
    with pytest.raises(ValueError, match=message):
        metrics.sysu_metrics(distmat, **args)


def test_standard_needs_both_cameras_or_neither():
    with pytest.raises(ValueError, match="both query_cams and gallery_cams"):
        metrics.standard_metrics(
            np.zeros((1, 1)),
            query_ids=np.array([1]),
            gallery_ids=np.array([1]),
            query_cams=np.array([1]),
        )


def test_negative_inner_product_matches_direct_formula():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    g = rng.standard_normal((7, 8)).astype(np.float32)
    want = (
        -(q / np.linalg.norm(q, axis=1, keepdims=True))
        @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    )
    got = metrics.negative_inner_product(q, g)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(
        np.linalg.norm(metrics.l2_normalize(q), axis=1), 1, atol=1e-6
    )
