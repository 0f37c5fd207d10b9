"""Tests for mclnet_jax.losses against slow, obvious numpy implementations.

The numpy references below are written from the paper's equations (Eq. 1, 2,
5, 6) and from AGW's definitions, one anchor / sample / class at a time in
float64, and share no code with the library. The test problems contain the
awkward cases on purpose: duplicate features (zero distances, within and
across classes), a feature lying exactly on its center, duplicate centers, a
single-sample class and classes absent from the batch.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclnet_jax import losses

# The checks are against float64 numpy references with tolerances that do
# not depend on XLA's optimisations (off: much faster compiles).
pytestmark = pytest.mark.usefixtures("fast_compile")

SIGMA = 2.0
RHO = 12.0
NUM_CLASSES = 9
# Class 7 has a single sample; classes 1, 4, 6 and 8 are absent.
LABELS = np.array([0, 0, 0, 2, 5, 2, 5, 5, 5, 7, 3, 3])


# ---------------------------------------------------------------------------
# Independent numpy references (float64, loops over anchors / samples).
# ---------------------------------------------------------------------------


def np_log_softmax(row):
    shifted = row - np.max(row)
    return shifted - np.log(np.sum(np.exp(shifted)))


def np_identity(*, logits, labels, label_smoothing=0.0):
    n, c = logits.shape
    total = 0.0
    for i in range(n):
        target = np.full(c, label_smoothing / c)
        target[labels[i]] += 1.0 - label_smoothing
        total -= np.sum(target * np_log_softmax(logits[i]))
    return total / n


def np_modality_classifier(*, logits, modality):
    # Eq. 1: t_i = [1, 0] visible, [0, 1] infrared.
    total = 0.0
    for i in range(len(logits)):
        t = np.array([1.0, 0.0]) if modality[i] == 0 else np.array([0.0, 1.0])
        total -= np.dot(t, np_log_softmax(logits[i]))
    return total / len(logits)


def np_modality_confusion(*, logits):
    # Eq. 2: o_i = [0.5, 0.5].
    total = 0.0
    for i in range(len(logits)):
        total -= np.dot([0.5, 0.5], np_log_softmax(logits[i]))
    return total / len(logits)


def np_distance(a, b):
    return np.sqrt(max(np.sum((a - b) ** 2), 1e-12))


def np_wrt(*, features, labels):
    """AGW weighted regularised triplet; returns (loss, accuracy)."""
    n = len(features)
    losses_, correct = [], 0
    for i in range(n):
        pos = [
            np_distance(features[i], features[j])
            for j in range(n)
            if labels[j] == labels[i]
        ]
        neg = [
            np_distance(features[i], features[j])
            for j in range(n)
            if labels[j] != labels[i]
        ]
        pos = np.array(pos)
        w = np.exp(pos - pos.max())
        weighted_pos = np.sum(w / (w.sum() + 1e-6) * pos)
        if neg:
            neg = np.array(neg)
            w = np.exp(-neg - np.max(-neg))
            weighted_neg = np.sum(w / (w.sum() + 1e-6) * neg)
        else:
            weighted_neg = 0.0
        losses_.append(np.log1p(np.exp(weighted_pos - weighted_neg)))
        correct += weighted_neg >= weighted_pos
    return np.mean(losses_), correct / n


def np_wrt_release(*, features, labels):
    """The release's WRT, one anchor at a time: its softmax weights subtract
    the maximum of `value * mask` over the anchor's whole row (all N
    entries, masked-out ones as 0), not the maximum over the masked set."""
    n = len(features)
    losses_, correct = [], 0
    for i in range(n):
        row = np.array(
            [np_distance(features[i], features[j]) for j in range(n)]
        )
        pos_mask = np.array([labels[j] == labels[i] for j in range(n)], float)
        neg_mask = 1.0 - pos_mask

        def weighted(values, mask, row=row):
            # values are already masked (d * mask or -d * mask).
            shift = max(values[j] * mask[j] for j in range(n))
            num = [np.exp(values[j] - shift) * mask[j] for j in range(n)]
            total = sum(num) + 1e-6
            return sum(num[j] / total * row[j] for j in range(n))

        weighted_pos = weighted(row * pos_mask, pos_mask)
        weighted_neg = weighted(-row * neg_mask, neg_mask)
        losses_.append(np.log1p(np.exp(weighted_pos - weighted_neg)))
        correct += weighted_neg >= weighted_pos
    return np.mean(losses_), correct / n


def np_hard_triplet(*, features, labels, margin=0.3):
    n = len(features)
    total = 0.0
    for i in range(n):
        pos = [
            np_distance(features[i], features[j])
            for j in range(n)
            if labels[j] == labels[i]
        ]
        neg = [
            np_distance(features[i], features[j])
            for j in range(n)
            if labels[j] != labels[i]
        ]
        if neg:
            total += max(max(pos) - min(neg) + margin, 0.0)
    return total / n


def np_sq(a, b):
    return np.sum((a - b) ** 2)


def np_separation(centers, y):
    return min(
        np_sq(centers[y], centers[k]) for k in range(len(centers)) if k != y
    )


def np_center_paper(*, features, labels, centers, sigma, rho):
    """Eq. 5 / 6, one sample at a time."""
    n = len(features)
    pull = push = 0.0
    for i in range(n):
        y = labels[i]
        own = np_sq(features[i], centers[y])
        # f^o_y: the batch sample of class y closest to c_y.
        nearest = min(
            np_sq(features[j], centers[y]) for j in range(n) if labels[j] == y
        )
        pull += max(own - nearest - sigma, 0.0)
        push += max(rho - np_separation(centers, y), 0.0)
    return (pull + push) / n


def np_center_release(
    *, features, labels, centers, sigma, rho, per_class_count=None
):
    """The release's batch-mean form, one present class at a time.

    `per_class_count=None` weights each class's minimum by its sample count
    (the release's CCA); an integer reproduces the release's ICA (x 8).
    """
    n = len(features)
    center_term = np.mean(
        [np_sq(features[i], centers[labels[i]]) for i in range(n)]
    )
    nearest_term = 0.0
    for k in sorted(set(labels.tolist())):
        members = [i for i in range(n) if labels[i] == k]
        minimum = min(np_sq(features[i], centers[k]) for i in members)
        count = len(members) if per_class_count is None else per_class_count
        nearest_term += count * minimum
    nearest_term /= n
    pull = max(center_term - nearest_term - sigma, 0.0)
    separation = np.mean([np_separation(centers, labels[i]) for i in range(n)])
    push = max(rho - separation, 0.0)
    return pull + push


# ---------------------------------------------------------------------------
# Problems and the table of losses under test.
# ---------------------------------------------------------------------------


def make_problem(seed, *, duplicates=True):
    """One small problem (float64 numpy) with the awkward cases built in."""
    rng = np.random.RandomState(seed)
    n, d = len(LABELS), 6
    features = rng.randn(n, d)
    centers = rng.randn(NUM_CLASSES, d)
    if duplicates:
        features[1] = features[0]  # same class (0): zero distance.
        features[4] = features[3]  # classes 2 and 5: zero distance.
        features[10] = centers[3]  # exactly on its own center.
        centers[4] = centers[2]  # duplicate centers (4 is absent).
    perm = rng.permutation(n)
    return {
        "features": features[perm],
        "labels": LABELS[perm].astype(np.int32),
        "centers": centers,
        "id_logits": 2.0 * rng.randn(n, NUM_CLASSES),
        "modality_logits": rng.randn(n, 2),
        "modality": rng.randint(0, 2, n).astype(np.int32),
    }


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    loss: Callable[..., Any]
    reference: Callable[..., float]
    args: tuple[tuple[str, str], ...]  # (loss keyword, problem key)
    float_args: tuple[str, ...]  # differentiable keywords

    def kwargs(self, problem):
        return {kw: problem[key] for kw, key in self.args}


CASES = [
    Case(
        "identity",
        losses.identity_loss,
        np_identity,
        (("logits", "id_logits"), ("labels", "labels")),
        ("logits",),
    ),
    Case(
        "identity_smoothed",
        functools.partial(losses.identity_loss, label_smoothing=0.1),
        functools.partial(np_identity, label_smoothing=0.1),
        (("logits", "id_logits"), ("labels", "labels")),
        ("logits",),
    ),
    Case(
        "modality_classifier",
        losses.modality_classifier_loss,
        np_modality_classifier,
        (("logits", "modality_logits"), ("modality", "modality")),
        ("logits",),
    ),
    Case(
        "modality_confusion",
        losses.modality_confusion_loss,
        np_modality_confusion,
        (("logits", "modality_logits"),),
        ("logits",),
    ),
    Case(
        "wrt_triplet",
        losses.wrt_triplet_loss,
        lambda **kw: np_wrt(**kw)[0],
        (("features", "features"), ("labels", "labels")),
        ("features",),
    ),
    Case(
        "wrt_triplet_release",
        functools.partial(losses.wrt_triplet_loss, variant="release"),
        lambda **kw: np_wrt_release(**kw)[0],
        (("features", "features"), ("labels", "labels")),
        ("features",),
    ),
    Case(
        "hard_triplet",
        losses.hard_triplet_loss,
        np_hard_triplet,
        (("features", "features"), ("labels", "labels")),
        ("features",),
    ),
    Case(
        "center_paper",
        functools.partial(
            losses.center_aggregation_loss,
            sigma=SIGMA,
            rho=RHO,
            variant="paper",
        ),
        functools.partial(np_center_paper, sigma=SIGMA, rho=RHO),
        (
            ("features", "features"),
            ("labels", "labels"),
            ("centers", "centers"),
        ),
        ("features", "centers"),
    ),
    Case(
        "center_release",
        functools.partial(
            losses.center_aggregation_loss,
            sigma=SIGMA,
            rho=RHO,
            variant="release",
        ),
        functools.partial(np_center_release, sigma=SIGMA, rho=RHO),
        (
            ("features", "features"),
            ("labels", "labels"),
            ("centers", "centers"),
        ),
        ("features", "centers"),
    ),
]
CASE_IDS = [case.name for case in CASES]


def to_jax(kwargs, dtype=jnp.float32):
    return {
        k: jnp.asarray(v, dtype)
        if np.issubdtype(v.dtype, np.floating)
        else jnp.asarray(v)
        for k, v in kwargs.items()
    }


def to_numpy64(kwargs):
    return {
        k: np.asarray(jnp.asarray(v, jnp.float32), np.float64)
        if jnp.issubdtype(v.dtype, jnp.floating)
        else np.asarray(v)
        for k, v in kwargs.items()
    }


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"]
)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(case, dtype):
    problem = make_problem(0)
    inputs = to_jax(case.kwargs(problem), dtype)
    # bfloat16: the reference sees the same rounded inputs.
    expected = case.reference(**to_numpy64(inputs))
    value = jax.jit(lambda kw: case.loss(**kw))(inputs)
    assert value.dtype == jnp.float32
    assert expected > 0.1  # the problem exercises the loss.
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


def test_wrt_accuracy_matches_numpy_reference():
    # Several seeds, so that both outcomes occur among the anchors.
    for seed in range(3):
        problem = make_problem(seed)
        features = problem["features"] * np.arange(1, 13)[:, None] / 4
        loss, accuracy = jax.jit(losses.wrt_triplet_loss_and_accuracy)(
            features=jnp.asarray(features, jnp.float32),
            labels=problem["labels"],
        )
        expected_loss, expected_accuracy = np_wrt(
            features=np.asarray(features, np.float32).astype(np.float64),
            labels=problem["labels"],
        )
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        assert 0.0 < expected_accuracy < 1.0
        np.testing.assert_allclose(accuracy, expected_accuracy, atol=1e-7)


@pytest.mark.parametrize("scale", [0.25, 3.0, 6.0])
def test_wrt_release_accuracy_matches_numpy_reference(scale):
    # At scale 6 the distances reach ~15-25, where the release's negative
    # weights fall well below 1 and the variants disagree.
    problem = make_problem(1)
    features = problem["features"] * scale
    loss, accuracy = jax.jit(
        functools.partial(
            losses.wrt_triplet_loss_and_accuracy, variant="release"
        )
    )(features=jnp.asarray(features, jnp.float32), labels=problem["labels"])
    expected_loss, expected_accuracy = np_wrt_release(
        features=np.asarray(features, np.float32).astype(np.float64),
        labels=problem["labels"],
    )
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(accuracy, expected_accuracy, atol=1e-7)
    stable, _ = np_wrt(features=features, labels=problem["labels"])
    if scale < 1:  # Small distances: the two variants agree.
        np.testing.assert_allclose(expected_loss, stable, rtol=1e-4)
    if scale == 6.0:
        assert abs(expected_loss - stable) > 1.0


@pytest.mark.parametrize(
    "distance, weight_sum", [(14.0, 0.98), (18.0, 0.46), (22.0, 0.015)]
)
def test_wrt_release_negative_weights_shrink_with_distance(
    distance, weight_sum
):
    # A batch of 8 ids x 8 images: each anchor has 56 negatives. Put all of
    # them at `distance` and every positive on the anchor: the release's
    # negative weights sum to 56 e^-d / (56 e^-d + 1e-6), the documented
    # 0.98 / 0.46 / 0.015, so its soft negative distance is d * that sum.
    labels = np.repeat(np.arange(8), 8).astype(np.int32)
    features = np.zeros((64, 64))
    # Classes on orthogonal axes at distance d from each other.
    features[np.arange(64), labels] = distance / np.sqrt(2.0)
    expected = 56 * np.exp(-distance) / (56 * np.exp(-distance) + 1e-6)
    np.testing.assert_allclose(expected, weight_sum, rtol=0.04)
    release = losses.wrt_triplet_loss(
        features=jnp.asarray(features, jnp.float32),
        labels=labels,
        variant="release",
    )
    stable = losses.wrt_triplet_loss(
        features=jnp.asarray(features, jnp.float32), labels=labels
    )
    # Positive distances are the clamp's 1e-6: loss = softplus(0 - neg).
    np.testing.assert_allclose(
        release, np.log1p(np.exp(-distance * expected)), rtol=1e-4
    )
    np.testing.assert_allclose(
        stable, np.log1p(np.exp(-distance)), rtol=1e-4, atol=1e-12
    )


def test_triplet_losses_on_a_single_class_batch():
    # No negatives anywhere: WRT's negative term is 0 (AGW's normaliser
    # makes its weights vanish); batch-hard has no triplet, hence 0.
    features = np.random.RandomState(5).randn(5, 4)
    labels = np.full(5, 3, np.int32)

    @jax.jit
    def values(f):
        return (
            losses.wrt_triplet_loss_and_accuracy(features=f, labels=labels),
            losses.hard_triplet_loss(features=f, labels=labels),
            jax.grad(
                lambda f: losses.wrt_triplet_loss(features=f, labels=labels)
            )(f),
        )

    (wrt, accuracy), hard, grad = values(jnp.asarray(features, jnp.float32))
    expected_wrt, expected_accuracy = np_wrt(
        features=features.astype(np.float32).astype(np.float64), labels=labels
    )
    np.testing.assert_allclose(wrt, expected_wrt, rtol=1e-5)
    assert accuracy == expected_accuracy == 0.0
    assert hard == np_hard_triplet(features=features, labels=labels) == 0.0
    assert np.all(np.isfinite(grad))


def test_release_variant_equals_released_ica_times_eight():
    # With 8 samples per identity, the count-weighted nearest term equals
    # the release ICA's hard-coded x 8.
    rng = np.random.RandomState(3)
    labels = np.repeat([1, 4, 6], 8).astype(np.int32)
    features = rng.randn(24, 5)
    centers = rng.randn(7, 5)
    expected = np_center_release(
        features=features,
        labels=labels,
        centers=centers,
        sigma=1.0,
        rho=14.0,
        per_class_count=8,
    )
    value = jax.jit(
        functools.partial(
            losses.center_aggregation_loss,
            sigma=1.0,
            rho=14.0,
            variant="release",
        )
    )(
        features=jnp.asarray(features, jnp.float32),
        labels=labels,
        centers=jnp.asarray(centers, jnp.float32),
    )
    assert expected > 0.1
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_hand_worked_examples():
    @jax.jit
    def all_values():  # One compilation for all the examples.
        two = jnp.zeros((4, 2))  # Equal modality logits.
        points = jnp.array([[0.0], [1.0], [3.0]])
        point_labels = jnp.array([0, 0, 1])
        center_kwargs = dict(
            features=jnp.array([[1.0], [3.0], [12.0]]),
            labels=jnp.array([0, 0, 1]),
            centers=jnp.array([[0.0], [10.0]]),
            sigma=2.0,
            rho=150.0,
        )
        return {
            "confusion": losses.modality_confusion_loss(logits=two),
            "classifier": losses.modality_classifier_loss(
                logits=two, modality=jnp.array([0, 1, 0, 1])
            ),
            "hard_0.5": losses.hard_triplet_loss(
                features=points, labels=point_labels, margin=0.5
            ),
            "hard_2": losses.hard_triplet_loss(
                features=points, labels=point_labels, margin=2.0
            ),
            "paper": losses.center_aggregation_loss(
                **center_kwargs, variant="paper"
            ),
            "release": losses.center_aggregation_loss(
                **center_kwargs, variant="release"
            ),
        }

    values = all_values()
    expected = {
        # Equal logits: p = [0.5, 0.5], both losses are log 2.
        "confusion": np.log(2.0),
        "classifier": np.log(2.0),
        # 1-d points 0, 1 (class 0) and 3 (class 1). Margin 0.5: anchor 0
        # has farthest positive 1, closest negative 3: 1 - 3 + .5 < 0;
        # anchor 1: 1 - 2 + .5 < 0; anchor 3: 1e-6 (itself) - 2 + .5 < 0.
        "hard_0.5": 0.0,
        # Margin 2: 1 - 3 + 2 = 0, 1 - 2 + 2 = 1, 1e-6 - 2 + 2 = 1e-6.
        "hard_2": (0.0 + 1.0 + 1e-6) / 3,
        # Centers 0 and 10; samples 1, 3 (class 0) and 12 (class 1):
        # d = 1, 9, 4; nearest = 1, 1, 4; sigma 2 -> pulls 0, 6, 0;
        # separation 100 for every sample, rho 150 -> pushes 50 each.
        "paper": 6.0 / 3 + 50.0,
        # Release: mean d 14/3 - mean nearest 6/3 - 2 = 2/3; push 50.
        "release": 2.0 / 3 + 50.0,
    }
    for name, value in expected.items():
        np.testing.assert_allclose(
            values[name], value, rtol=1e-6, atol=0, err_msg=name
        )


# ---------------------------------------------------------------------------
# Gradients, jit, vmap, tracing.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"]
)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jit_grad_finite_and_traces_once(case, dtype):
    """Gradients are finite with zero distances; one trace per shape."""

    traces = []

    @jax.jit
    def value_and_grads(differentiable, fixed):
        traces.append(None)  # Runs only while tracing.
        return jax.value_and_grad(lambda d: case.loss(**d, **fixed))(
            differentiable
        )

    for seed in range(2):  # Second call: new values, same shapes.
        inputs = to_jax(case.kwargs(make_problem(seed)), dtype)
        differentiable = {k: inputs.pop(k) for k in case.float_args}
        value, grads = value_and_grads(differentiable, inputs)
        assert np.isfinite(value)
        for name, grad in grads.items():
            assert grad.dtype == dtype
            assert np.all(np.isfinite(np.asarray(grad, np.float32))), name
            assert np.any(np.asarray(grad, np.float32) != 0), name
    assert len(traces) == 1


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradient_matches_central_differences(case):
    """Full gradient vs float64 central differences, one coordinate each."""
    with jax.enable_x64(True):
        # Numpy float64 throughout: eager jnp ops would each compile.
        inputs = case.kwargs(make_problem(1, duplicates=False))
        fixed = {k: v for k, v in inputs.items() if k not in case.float_args}
        flat = np.concatenate([inputs[k].ravel() for k in case.float_args])

        def loss_of_flat(x):
            kwargs, offset = dict(fixed), 0
            for k in case.float_args:
                size = inputs[k].size
                kwargs[k] = x[offset : offset + size].reshape(inputs[k].shape)
                offset += size
            return case.loss(**kwargs)

        value, grad = jax.jit(jax.value_and_grad(loss_of_flat))(flat)
        assert value.dtype == jnp.float64
        step = 1e-6
        shifts = step * np.eye(flat.size)
        batched = jax.jit(jax.vmap(loss_of_flat))
        numeric = (batched(flat + shifts) - batched(flat - shifts)) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
        assert np.any(np.abs(np.asarray(grad)) > 1e-3)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vmap_over_independent_problems(case):
    problems = [case.kwargs(make_problem(seed)) for seed in range(3)]
    stacked = {k: np.stack([p[k] for p in problems]) for k in problems[0]}
    values = jax.jit(jax.vmap(lambda kw: case.loss(**kw)))(to_jax(stacked))
    expected = [case.reference(**to_numpy64(to_jax(p))) for p in problems]
    assert values.shape == (3,)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------

F = jnp.zeros((4, 3))
Y = jnp.zeros((4,), jnp.int32)
C = jnp.zeros((5, 3))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: losses.identity_loss(logits=F, labels=Y[:3]), "labels.*shape"),
        (lambda: losses.identity_loss(logits=F[0], labels=Y), "logits.*shape"),
        (
            lambda: losses.identity_loss(
                logits=F, labels=Y.astype(jnp.float32)
            ),
            "integer",
        ),
        (
            lambda: losses.identity_loss(
                logits=F, labels=Y, label_smoothing=1.0
            ),
            "label_smoothing",
        ),
        (
            lambda: losses.modality_classifier_loss(
                logits=F[:, :1], modality=Y
            ),
            "one column per modality",
        ),
        (
            lambda: losses.modality_classifier_loss(
                logits=F[:, :2], modality=Y[:2]
            ),
            "modality.*shape",
        ),
        (
            lambda: losses.modality_confusion_loss(logits=F[None]),
            "logits.*shape",
        ),
        (
            lambda: losses.wrt_triplet_loss(features=F, labels=Y[:, None]),
            "labels.*shape",
        ),
        (
            lambda: losses.wrt_triplet_loss(features=Y[:, None], labels=Y),
            "floating",
        ),
        (
            lambda: losses.wrt_triplet_loss(
                features=F, labels=Y, variant="torch"
            ),
            "variant",
        ),
        (
            lambda: losses.hard_triplet_loss(features=F[0], labels=Y),
            "features.*shape",
        ),
        (
            lambda: losses.center_aggregation_loss(
                features=F, labels=Y, centers=C[:, :2], sigma=1.0, rho=1.0
            ),
            "share D",
        ),
        (
            lambda: losses.center_aggregation_loss(
                features=F, labels=Y, centers=C[:1], sigma=1.0, rho=1.0
            ),
            "at least 2",
        ),
        (
            lambda: losses.center_aggregation_loss(
                features=F,
                labels=Y,
                centers=C,
                sigma=1.0,
                rho=1.0,
                variant="x8",
            ),
            "variant",
        ),
        (
            lambda: losses.center_aggregation_loss(
                features=F, labels=Y[1:], centers=C, sigma=1.0, rho=1.0
            ),
            "labels.*shape",
        ),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_shape_errors_raise_at_trace_time_under_jit():
    jitted = jax.jit(lambda f, y: losses.wrt_triplet_loss(features=f, labels=y))
    with pytest.raises(ValueError, match="labels.*shape"):
        jitted(F, Y[:3])


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        losses.identity_loss(F, Y)
