"""Tests of mclnet_jax.rerank against a slow reading of the paper.

`slow_rerank` follows Zhong et al. (CVPR 2017), Sec. 3, with the details of
the authors' Python `re_ranking` (squared input, column-normalised then
transposed distances, round-half-to-even k1/2, strict "> 2/3", k2 == 1 means
no query expansion): Python lists, sets and dicts, one item at a time, ties
broken by index. The vectorised version must agree to 1e-6.
"""

import math

import numpy as np
import pytest

from mclnet_jax import rerank


class Branches:
    """Counts which rules of the slow version fired (so tests can check
    that their inputs exercise them)."""

    def __init__(self):
        self.accepted = 0  # candidate sets added by the 2/3 rule
        self.rejected = 0  # candidate sets refused by it
        self.grew = 0  # rows whose expanded set is larger than R(i, k1)
        self.empty = 0  # rows with an empty expanded set
        self.self_missing = 0  # rows whose k-reciprocal set lacks i


def slow_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3, branches=None):
    branches = branches or Branches()
    q_g, q_q, g_g = (np.asarray(x, np.float64) for x in (q_g, q_q, g_g))
    num_q, num_g = q_g.shape
    n = num_q + num_g

    def plain(i, j):  # the assembled [[q_q, q_g], [q_g.T, g_g]] matrix
        if i < num_q:
            return q_q[i, j] if j < num_q else q_g[i, j - num_q]
        return q_g[j, i - num_q] if j < num_q else g_g[i - num_q, j - num_q]

    squared = [[plain(i, j) ** 2 for j in range(n)] for i in range(n)]
    col_max = [max(squared[i][j] for i in range(n)) for j in range(n)]
    # Divide every column by its maximum, then transpose.
    d = [[squared[j][i] / col_max[i] for j in range(n)] for i in range(n)]

    ranking = [
        sorted(range(n), key=lambda j, i=i: (d[i][j], j)) for i in range(n)
    ]

    def nearest(i, k):  # the k + 1 nearest (i itself normally first)
        return ranking[i][: k + 1]

    def k_reciprocal(i, k):
        return {j for j in nearest(i, k) if i in nearest(j, k)}

    half = round(k1 / 2)  # Python rounds half to even, like np.around
    weights = []
    for i in range(n):
        r = k_reciprocal(i, k1)
        if i not in r:
            branches.self_missing += 1
        r_star = set(r)
        for c in r:
            c_set = k_reciprocal(c, half)
            if len(c_set & r) > 2 / 3 * len(c_set):
                r_star |= c_set
                branches.accepted += 1
            else:
                branches.rejected += 1
        if len(r_star) > len(r):
            branches.grew += 1
        if not r_star:
            branches.empty += 1
        total = sum(math.exp(-d[i][j]) for j in r_star)
        weights.append({j: math.exp(-d[i][j]) / total for j in r_star})

    if k2 != 1:
        expanded = []
        for i in range(n):
            near = ranking[i][:k2]
            row = {}
            for j in near:
                for k, w in weights[j].items():
                    row[k] = row.get(k, 0.0) + w / len(near)
            expanded.append(row)
        weights = expanded

    out = np.zeros((num_q, num_g))
    for i in range(num_q):
        for j in range(num_g):
            other = weights[num_q + j]
            s = sum(min(w, other.get(k, 0.0)) for k, w in weights[i].items())
            jaccard = 1 - s / (2 - s)
            out[i, j] = (1 - lambda_value) * jaccard + lambda_value * d[i][
                num_q + j
            ]
    return out


def random_case(rng, num_q, num_g, *, kind):
    """(q_g, q_q, g_g) of one of several kinds of random input."""
    if kind == "features":  # Euclidean distances of clustered features
        ids = rng.integers(0, max(2, (num_q + num_g) // 4), num_q + num_g)
        centres = rng.standard_normal((ids.max() + 1, 8))
        x = centres[ids] + 0.6 * rng.standard_normal((ids.size, 8))
        full = np.linalg.norm(x[:, None] - x[None], axis=-1)
    elif kind == "ties":  # small integers: many exact ties, zero diagonal
        full = rng.integers(0, 4, (num_q + num_g,) * 2).astype(float)
        full = np.maximum(full, full.T)
        np.fill_diagonal(full, 0.0)
    elif kind == "asymmetric":  # any non-negative matrix, no zero diagonal
        full = rng.uniform(0.0, 2.0, (num_q + num_g,) * 2)
    else:
        raise ValueError(kind)
    return (full[:num_q, num_q:], full[:num_q, :num_q], full[num_q:, num_q:])


CASES = [
    # (num_q, num_g, k1, k2, lambda, kind)
    (7, 11, 4, 3, 0.3, "features"),
    (12, 30, 6, 4, 0.3, "features"),
    (25, 40, 20, 6, 0.3, "features"),  # the paper's parameters
    (5, 9, 20, 6, 0.3, "features"),  # k1 + 1 > N: every item a neighbour
    (3, 4, 30, 50, 0.5, "features"),  # k1 and k2 beyond N
    (10, 18, 5, 1, 0.3, "features"),  # k2 == 1: no query expansion
    (9, 15, 3, 2, 0.0, "ties"),
    (20, 20, 7, 5, 1.0, "ties"),
    (14, 22, 8, 3, 0.3, "asymmetric"),
    (1, 6, 1, 2, 0.3, "features"),  # k1 = 1: round(1/2) = 0
    (6, 1, 5, 3, 0.3, "features"),  # one gallery item
]


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[f"{q}x{g}-k1={k1}-k2={k2}-{kind}" for q, g, k1, k2, _, kind in CASES],
)
def test_equals_slow_reference(case):
    num_q, num_g, k1, k2, lambda_value, kind = case
    rng = np.random.default_rng(CASES.index(case))
    for _ in range(3):
        q_g, q_q, g_g = random_case(rng, num_q, num_g, kind=kind)
        want = slow_rerank(q_g, q_q, g_g, k1, k2, lambda_value)
        got = rerank.k_reciprocal_distance(
            q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value
        )
        assert got.shape == (num_q, num_g) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_random_cases_exercise_every_rule():
    # The comparison above only means something if its inputs hit both
    # outcomes of the 2/3 rule, the expansion, and degenerate rows.
    branches = Branches()
    for case in CASES:
        num_q, num_g, k1, k2, lambda_value, kind = case
        rng = np.random.default_rng(CASES.index(case))
        q_g, q_q, g_g = random_case(rng, num_q, num_g, kind=kind)
        slow_rerank(q_g, q_q, g_g, k1, k2, lambda_value, branches=branches)
    assert branches.accepted > 0 and branches.rejected > 0
    assert branches.grew > 0
    assert branches.self_missing > 0  # asymmetric: non-zero diagonal


def test_empty_reciprocal_sets_give_jaccard_one():
    # Five gallery items whose normalised distances are p[a] / 25 with
    # p[a, a - 1] = 1, p[a, a - 2] = 2, p[a, a] = 4 and 3 elsewhere (mod 5),
    # and a query at squared distance 25 from all of them. With k1 = 1 the
    # two nearest of gallery item a are a - 1 and a - 2, whose own two
    # nearest never contain a: the gallery rows of V are empty, so every
    # Jaccard distance is 1 (s = 0), and the original distance is 25 / 25.
    n = 5
    p = np.full((n, n), 3.0)
    for a in range(n):
        p[a, a], p[a, (a - 1) % n], p[a, (a - 2) % n] = 4.0, 1.0, 2.0
    # The function squares, divides columns by their maximum (25, from the
    # query) and transposes: pass sqrt(p.T).
    q_g, q_q, g_g = np.full((1, n), 5.0), np.zeros((1, 1)), np.sqrt(p.T)
    branches = Branches()
    want = slow_rerank(q_g, q_q, g_g, k1=1, k2=2, branches=branches)
    assert branches.empty == n
    got = rerank.k_reciprocal_distance(q_g, q_q, g_g, k1=1, k2=2)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got, np.ones((1, n)), atol=1e-12)


def test_hand_worked_example():
    # Points on a line: query q at 0, gallery g1 at 1 and g2 at 3.
    q_g = np.array([[1.0, 3.0]])
    q_q = np.array([[0.0]])
    g_g = np.array([[0.0, 2.0], [2.0, 0.0]])
    # Squared: q (0, 1, 9), g1 (1, 0, 4), g2 (9, 4, 0); column maxima 9, 4,
    # 9; after the transpose row i is over its own maximum:
    #   q: (0, 1/9, 1), g1: (1/4, 0, 1), g2: (1, 4/9, 0).
    # k1 = 1: nearest two: q {q, g1}, g1 {g1, q}, g2 {g2, g1}; so
    # R(q) = {q, g1}, R(g1) = {g1, q}, R(g2) = {g2}. round(1/2) = 0: the
    # half sets are singletons, contained in R, so nothing is added.
    # V[q] = (1, e^-1/9, 0) / (1 + e^-1/9), V[g1] = (e^-1/4, 1, 0) /
    # (1 + e^-1/4), V[g2] = (0, 0, 1). k2 = 1: no expansion.
    vq = np.array([1.0, math.exp(-1 / 9), 0.0]) / (1 + math.exp(-1 / 9))
    vg1 = np.array([math.exp(-1 / 4), 1.0, 0.0]) / (1 + math.exp(-1 / 4))
    s = np.minimum(vq, vg1).sum()  # e^-1/4/(1+e^-1/4) + e^-1/9/(1+e^-1/9)
    assert s == pytest.approx(0.437823499 + 0.472250765, abs=1e-9)
    want = [[0.7 * (1 - s / (2 - s)) + 0.3 / 9, 0.7 * 1.0 + 0.3 * 1.0]]
    got = rerank.k_reciprocal_distance(q_g, q_q, g_g, k1=1, k2=1)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0, 0] == pytest.approx(0.148842148, abs=1e-9)
    # With k2 = 2, V[q] becomes the mean of V[q] and V[g1] (its two
    # nearest), and V[g1] the same mean: identical rows, s = 1, jaccard 0.
    got = rerank.k_reciprocal_distance(q_g, q_q, g_g, k1=1, k2=2)
    assert got[0, 0] == pytest.approx(0.3 / 9, abs=1e-12)


def test_scale_invariance_and_lambda_one():
    rng = np.random.default_rng(0)
    q_g, q_q, g_g = random_case(rng, 10, 20, kind="features")
    a = rerank.k_reciprocal_distance(q_g, q_q, g_g, k1=5, k2=3)
    # Every column is divided by its maximum: a common scale cancels.
    b = rerank.k_reciprocal_distance(3 * q_g, 3 * q_q, 3 * g_g, k1=5, k2=3)
    np.testing.assert_allclose(a, b, atol=1e-12)
    # lambda = 1: the normalised original distance alone. For these
    # symmetric inputs, row i of the squared matrix over its own maximum.
    full = np.block([[q_q, q_g], [q_g.T, g_g]]) ** 2
    want = (full / full.max(axis=1, keepdims=True))[:10, 10:]
    np.testing.assert_allclose(
        rerank.k_reciprocal_distance(q_g, q_q, g_g, lambda_value=1.0),
        want,
        atol=1e-12,
    )


def test_large_blocks_equal_small_blocks(monkeypatch):
    # The Jaccard step works in blocks of query rows; the block size must
    # not change the result.
    rng = np.random.default_rng(1)
    q_g, q_q, g_g = random_case(rng, 40, 60, kind="features")
    want = rerank.k_reciprocal_distance(q_g, q_q, g_g, k1=8, k2=4)
    monkeypatch.setattr(rerank, "_JACCARD_BLOCK_PAIRS", 7)
    got = rerank.k_reciprocal_distance(q_g, q_q, g_g, k1=8, k2=4)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(
        got, slow_rerank(q_g, q_q, g_g, 8, 4, 0.3), atol=1e-6
    )


def test_nearest_breaks_ties_by_index():
    dist = np.array(
        [[0.0, 1.0, 1.0, 1.0, 0.5, 1.0], [2.0, 0.0, 2.0, 2.0, 2.0, 2.0]]
    )
    np.testing.assert_array_equal(
        rerank._nearest(dist, 3), [[0, 4, 1], [1, 0, 2]]
    )


def test_euclidean_distance():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal((4, 7)).astype(np.float32)
    want = np.linalg.norm(a[:, None].astype(np.float64) - b[None], axis=-1)
    np.testing.assert_allclose(rerank.euclidean_distance(a, b), want, rtol=1e-5)
    within = rerank.euclidean_distance(a)
    assert np.all(np.diag(within) == 0)
    np.testing.assert_allclose(
        within,
        np.linalg.norm(a[:, None].astype(np.float64) - a[None], axis=-1),
        atol=1e-5,
    )
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(
        rerank.euclidean_distance(unit, unit[:2]) ** 2,
        2 - 2 * unit.astype(np.float64) @ unit[:2].T,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="same D"):
        rerank.euclidean_distance(a, b[:, :3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(q_g_dist=np.ones((2, 3)), q_q_dist=np.ones((3, 3))),
            r"q_q_dist must have shape \(2, 2\)",
        ),
        (dict(g_g_dist=np.ones((2, 2))), r"g_g_dist must have shape \(3, 3\)"),
        (dict(q_g_dist=np.ones(3)), "2-D"),
        (dict(q_g_dist=np.zeros((2, 0))), "non-empty"),
        (
            dict(q_g_dist=np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]])),
            "non-finite",
        ),
        (dict(q_g_dist=-np.ones((2, 3))), "negative"),
        (dict(q_g_dist=[["a", "b", "c"], ["d", "e", "f"]]), "real"),
        (dict(k1=0), "k1 must be a positive int"),
        (dict(k2=2.0), "k2 must be a positive int"),
        (dict(k1=True), "k1 must be a positive int"),
        (dict(lambda_value=1.5), r"lambda_value must be a number in \[0, 1\]"),
        (
            dict(
                q_g_dist=np.zeros((2, 3)),
                q_q_dist=np.zeros((2, 2)),
                g_g_dist=np.zeros((3, 3)),
            ),
            "distance 0 from everything",
        ),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(
        q_g_dist=np.ones((2, 3)),
        q_q_dist=np.ones((2, 2)),
        g_g_dist=np.ones((3, 3)),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rerank.k_reciprocal_distance(**args)


def test_params():
    params = rerank.RerankParams()
    assert params.to_dict() == {"k1": 20, "k2": 6, "lambda_value": 0.3}
    assert params.describe() == "k1=20, k2=6, lambda=0.3"
    with pytest.raises(ValueError, match="k2"):
        rerank.RerankParams(k2=0)
