"""Tests of data_pipeline/sampling.py (identity-balanced batch plans)."""

import numpy as np
import pytest

from data_pipeline import sampling


def _labels(counts):
    """Label array with counts[i] examples of identity ids[i], shuffled."""
    ids = np.arange(len(counts)) * 3 + 5  # Non-contiguous on purpose.
    labels = np.repeat(ids, counts)
    return np.random.default_rng(0).permutation(labels)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    visible = _labels(rng.integers(1, 12, size=20))
    infrared = _labels(rng.integers(1, 6, size=20))
    return visible, infrared


def test_steps_per_epoch_is_release_formula():
    # floor(max(N_vis, N_ir) / (P * K)) + 1, worked by hand.
    assert (
        sampling.steps_per_epoch(
            num_visible=100, num_infrared=70, num_identities=2, num_instances=4
        )
        == 13
    )
    # An exact multiple still gets the extra batch, as in the release.
    assert (
        sampling.steps_per_epoch(
            num_visible=50, num_infrared=96, num_identities=2, num_instances=4
        )
        == 13
    )
    # SYSU-MM01 with the paper's 8 x 4: 22258 visible images -> 696 steps.
    assert (
        sampling.steps_per_epoch(
            num_visible=22258,
            num_infrared=11909,
            num_identities=8,
            num_instances=4,
        )
        == 696
    )


@pytest.mark.parametrize("p,k", [(4, 3), (8, 4), (1, 1)])
def test_plan_structure(data, p, k):
    visible, infrared = data
    plan = sampling.epoch_plan(
        visible_labels=visible,
        infrared_labels=infrared,
        seed=7,
        epoch=3,
        num_identities=p,
        num_instances=k,
    )
    expected_batches = max(visible.size, infrared.size) // (p * k) + 1
    assert plan.num_batches == expected_batches
    shape = (expected_batches, p * k)
    assert plan.visible.shape == plan.infrared.shape == shape
    assert plan.identities.shape == (expected_batches, p)
    for b in range(plan.num_batches):
        ids = plan.identities[b]
        assert len(set(ids.tolist())) == p  # P distinct identities.
        want = np.repeat(ids, k)  # Identity-major rows, K per identity.
        np.testing.assert_array_equal(visible[plan.visible[b]], want)
        np.testing.assert_array_equal(infrared[plan.infrared[b]], want)
    for array, labels in ((plan.visible, visible), (plan.infrared, infrared)):
        assert array.min() >= 0 and array.max() < labels.size


def test_plan_is_deterministic_and_depends_on_seed_and_epoch(data):
    visible, infrared = data

    def plan(seed, epoch):
        return sampling.epoch_plan(
            visible_labels=visible,
            infrared_labels=infrared,
            seed=seed,
            epoch=epoch,
            num_identities=4,
            num_instances=2,
        )

    a, b = plan(3, 5), plan(3, 5)
    np.testing.assert_array_equal(a.visible, b.visible)
    np.testing.assert_array_equal(a.infrared, b.infrared)
    np.testing.assert_array_equal(a.identities, b.identities)
    assert not np.array_equal(a.visible, plan(3, 6).visible)
    assert not np.array_equal(a.visible, plan(4, 5).visible)


def test_identity_choice_is_uniform_and_instances_with_replacement():
    # 10 identities; identity 0 has a single visible image, so K = 4 draws of
    # it must repeat it (with replacement within an identity).
    visible = np.concatenate([[0], np.repeat(np.arange(1, 10), 5)])
    infrared = np.repeat(np.arange(10), 3)
    p, k = 3, 4
    counts = np.zeros(10)
    per_example = np.zeros(infrared.size)
    batches = 0
    for epoch in range(40):
        plan = sampling.epoch_plan(
            visible_labels=visible,
            infrared_labels=infrared,
            seed=0,
            epoch=epoch,
            num_identities=p,
            num_instances=k,
        )
        batches += plan.num_batches
        np.add.at(counts, plan.identities.ravel(), 1)
        np.add.at(per_example, plan.infrared.ravel(), 1)
        rows = np.flatnonzero(plan.identities.ravel() == 0)
        for r in rows:
            b, j = divmod(r, p)
            np.testing.assert_array_equal(
                plan.visible[b, j * k : (j + 1) * k], np.zeros(k)
            )
    # Each identity is in a batch with probability P / n; binomial bounds.
    prob = p / 10
    mean, sd = batches * prob, np.sqrt(batches * prob * (1 - prob))
    assert np.all(np.abs(counts - mean) < 5 * sd), (counts, mean, sd)
    # Within an identity, each of its 3 infrared images is equally likely.
    per_id = per_example.reshape(10, 3)  # infrared is sorted by identity.
    expected = per_id.sum(axis=1, keepdims=True) / 3
    assert np.all(np.abs(per_id - expected) < 5 * np.sqrt(expected))


def test_identity_missing_a_modality_is_an_error():
    visible = np.array([0, 0, 1, 1, 2])
    infrared = np.array([0, 1, 1])
    with pytest.raises(ValueError, match=r"only visible: \[2\]"):
        sampling.epoch_plan(
            visible_labels=visible,
            infrared_labels=infrared,
            seed=0,
            epoch=0,
            num_identities=2,
            num_instances=2,
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_identities=5), "only 3"),
        (dict(num_instances=0), "num_instances"),
        (dict(seed=-1), "seed"),
        (dict(epoch=1.5), "epoch"),
        (dict(visible_labels=np.array([0.5, 1.0, 2.0])), "integers"),
        (dict(visible_labels=np.zeros((0,), np.int64)), "non-empty"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(
        visible_labels=np.array([0, 1, 2]),
        infrared_labels=np.array([0, 1, 2]),
        seed=0,
        epoch=0,
        num_identities=2,
        num_instances=2,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sampling.epoch_plan(**args)


@pytest.mark.parametrize("hosts", [1, 2, 4, 8])
def test_host_slices_tile_the_global_batch(data, hosts):
    visible, infrared = data
    plan = sampling.epoch_plan(
        visible_labels=visible,
        infrared_labels=infrared,
        seed=1,
        epoch=0,
        num_identities=4,
        num_instances=2,
    )
    parts = [
        sampling.host_slice(plan, process_index=i, process_count=hosts)
        for i in range(hosts)
    ]
    np.testing.assert_array_equal(
        np.concatenate([p.visible for p in parts], axis=1), plan.visible
    )
    np.testing.assert_array_equal(
        np.concatenate([p.infrared for p in parts], axis=1), plan.infrared
    )
    for part in parts:
        assert part.visible.shape == (plan.num_batches, 8 // hosts)
        # Visible row r and infrared row r of a host share the identity.
        np.testing.assert_array_equal(
            visible[part.visible], infrared[part.infrared]
        )


def test_host_rows_errors():
    with pytest.raises(ValueError, match="does not split evenly"):
        sampling.host_rows(rows_per_batch=32, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        sampling.host_rows(rows_per_batch=32, process_index=2, process_count=2)
    assert sampling.host_rows(
        rows_per_batch=32, process_index=1, process_count=4
    ) == slice(8, 16)
