"""MCLNet's losses as pure, jit-able JAX functions, for any JAX model.

The identity loss, AGW's weighted regularised triplet loss, the batch-hard
triplet loss ("Base"), the modality losses L_m and L_e (Eq. 1-2) and the
marginal center aggregation losses ICA / CCA (Eq. 5-6) of Hao et al. (ICCV
2021). Arguments are keyword-only, shapes are static and checked at trace time,
arithmetic is at least float32. Usage and conventions: docs/design.md "Using
the losses in your own model".
"""

from typing import Literal

import jax
import jax.numpy as jnp

from mclnet_jax import _loss_ops as ops

__all__ = [
    "identity_loss",
    "wrt_triplet_loss",
    "wrt_triplet_loss_and_accuracy",
    "hard_triplet_loss",
    "modality_classifier_loss",
    "modality_confusion_loss",
    "center_aggregation_loss",
]

# AGW adds this to the normaliser of its softmax weights.
_SOFTMAX_WEIGHT_EPS = 1e-6

WRT_VARIANTS = ("stable", "release")

ArrayLike = jax.typing.ArrayLike


def identity_loss(
    *, logits: ArrayLike, labels: ArrayLike, label_smoothing: float = 0.0
) -> jax.Array:
    """Identity (ID) loss L_id of Eq. 7: softmax cross-entropy, batch mean.

    Args:
      logits: [N, C] float32 or bfloat16, identity classifier outputs.
      labels: [N] int, identity indices in [0, C).
      label_smoothing: eps in `(1 - eps) * one_hot + eps / C`; 0 (the
        release's) is plain cross-entropy.

    Returns:
      float32 scalar.

    Raises:
      ValueError: on wrong ranks, mismatched N, non-integer labels, or
        `label_smoothing` outside [0, 1).
    """
    logits = ops.floating("logits", logits, 2, "[N, C]")
    labels = ops.int_labels("labels", labels, logits.shape[0], "logits")
    if isinstance(label_smoothing, (int, float)) and not (
        0.0 <= label_smoothing < 1.0
    ):
        raise ValueError(
            f"`label_smoothing` must be in [0, 1), got {label_smoothing}."
        )
    num_classes = logits.shape[1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    return ops.softmax_cross_entropy(logits, targets)


def modality_classifier_loss(
    *, logits: ArrayLike, modality: ArrayLike
) -> jax.Array:
    """Modality classifier loss L_m (Eq. 1): cross-entropy on the modality.

    Args:
      logits: [N, 2] (or [N, M], M >= 2) float32 or bfloat16, the modality
        module's outputs.
      modality: [N] int, 0 = visible, 1 = infrared.

    Returns:
      float32 scalar.

    Raises:
      ValueError: on wrong ranks, fewer than 2 logits per row, mismatched N
        or non-integer `modality`.
    """
    logits = ops.modality_logits(logits)
    modality = ops.int_labels("modality", modality, logits.shape[0], "logits")
    targets = jax.nn.one_hot(modality, logits.shape[1], dtype=logits.dtype)
    return ops.softmax_cross_entropy(logits, targets)


def modality_confusion_loss(*, logits: ArrayLike) -> jax.Array:
    """Modality confusion loss L_e (Eq. 2): cross-entropy to [0.5, 0.5].

    Args:
      logits: [N, 2] (or [N, M], M >= 2: target 1/M each) float32 or
        bfloat16, the modality module's outputs.

    Returns:
      float32 scalar; its minimum, log(M), is reached at equal logits.

    Raises:
      ValueError: on a wrong rank or fewer than 2 logits per row.
    """
    logits = ops.modality_logits(logits)
    targets = jnp.full(logits.shape, 1.0 / logits.shape[1], logits.dtype)
    return ops.softmax_cross_entropy(logits, targets)


def _distances_and_masks(
    features: ArrayLike, labels: ArrayLike
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Validated triplet inputs -> (distances [N, N], positive, negative).

    `positive[i, j]` is `labels[i] == labels[j]` (the anchor itself
    included), `negative` its complement.
    """
    features = ops.floating("features", features, 2, "[N, D]")
    labels = ops.int_labels("labels", labels, features.shape[0], "features")
    distances = ops.euclidean_distances(features)
    positive = labels[:, None] == labels[None, :]
    return distances, positive, jnp.logical_not(positive)


def _masked_softmax_weights(values: jax.Array, mask: jax.Array) -> jax.Array:
    """AGW's softmax weights, shifted by the maximum over the masked entries.

    `exp(v - max) * mask / (sum(exp(v - max) * mask) + 1e-6)` ("stable").
    """
    shifted = jnp.where(mask, values - ops.masked_max(values, mask), 0.0)
    unnormalised = jnp.exp(shifted) * mask
    normaliser = jnp.sum(unnormalised, axis=1, keepdims=True)
    normaliser = normaliser + _SOFTMAX_WEIGHT_EPS
    return unnormalised / normaliser


def _release_softmax_weights(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The release's weights: shifted by the row maximum of `values * mask`.

    `values` are already masked by the caller (`d * mask` or `-d * mask`), as
    in the release. For negatives that row maximum is the 0 of the positive
    entries, so nothing is subtracted and exp(-d) competes with the 1e-6.
    """
    mask = mask.astype(values.dtype)
    row_max = jnp.max(values * mask, axis=1, keepdims=True)
    unnormalised = jnp.exp(values - row_max) * mask
    normaliser = jnp.sum(unnormalised, axis=1, keepdims=True)
    return unnormalised / (normaliser + _SOFTMAX_WEIGHT_EPS)


def wrt_triplet_loss_and_accuracy(
    *,
    features: ArrayLike,
    labels: ArrayLike,
    variant: Literal["stable", "release"] = "stable",
) -> tuple[jax.Array, jax.Array]:
    """Weighted regularised triplet loss (AGW, L_wrt of Eq. 7) and accuracy.

    With d_ij = sqrt(max(||f_i - f_j||^2, 1e-12)), positives P_i (the anchor
    included, as in AGW) and negatives N_i of anchor i:

      pos_i = sum_{j in P_i} softmax_P(d_i.)_j d_ij   (soft hardest positive)
      neg_i = sum_{j in N_i} softmax_N(-d_i.)_j d_ij  (soft hardest negative)
      loss = mean_i softplus(pos_i - neg_i),  accuracy = mean_i [neg_i >= pos_i]

    Each softmax is `exp(v - m) / (sum exp(v - m) + 1e-6)` over its set.
    "stable" takes m as the maximum over the set. "release" is the authors'
    code: m is the maximum of `v * mask` over the whole row, 0 for the
    negatives, so for large distances the negative weights sum to well
    below 1. An anchor without negatives gets neg_i = 0.

    Args:
      features: [N, D] float32 or bfloat16, e.g. MCLNet's pre-BN `pool`.
      labels: [N] int, identity labels (equal means same identity).
      variant: "stable" or "release".

    Returns:
      (loss, accuracy): float32 scalars; the accuracy carries no gradient.

    Raises:
      ValueError: on an unknown `variant`, wrong ranks, mismatched N or
        non-integer labels.
    """
    if variant not in WRT_VARIANTS:
        raise ValueError(
            f'`variant` must be "stable" or "release", got {variant!r}.'
        )
    distances, positive, negative = _distances_and_masks(features, labels)
    if variant == "stable":
        positive_weights = _masked_softmax_weights(distances, positive)
        negative_weights = _masked_softmax_weights(-distances, negative)
    else:
        positive_distances = distances * positive
        negative_distances = distances * negative
        positive_weights = _release_softmax_weights(
            positive_distances, positive
        )
        negative_weights = _release_softmax_weights(
            -negative_distances, negative
        )
    weighted_positive = jnp.sum(distances * positive_weights, axis=1)
    weighted_negative = jnp.sum(distances * negative_weights, axis=1)
    loss = jnp.mean(jax.nn.softplus(weighted_positive - weighted_negative))
    correct = weighted_negative >= weighted_positive
    accuracy = jax.lax.stop_gradient(jnp.mean(correct.astype(loss.dtype)))
    return loss, accuracy


def wrt_triplet_loss(
    *,
    features: ArrayLike,
    labels: ArrayLike,
    variant: Literal["stable", "release"] = "stable",
) -> jax.Array:
    """The loss of `wrt_triplet_loss_and_accuracy` (same arguments)."""
    loss, _ = wrt_triplet_loss_and_accuracy(
        features=features, labels=labels, variant=variant
    )
    return loss


def hard_triplet_loss(
    *, features: ArrayLike, labels: ArrayLike, margin: float = 0.3
) -> jax.Array:
    """Batch-hard triplet loss (the "Base" ablation's).

    Mean over anchors of `relu(d(farthest positive) - d(closest negative) +
    margin)`, with the distances of `wrt_triplet_loss`; an anchor without
    negatives contributes 0 (and still counts).

    Args:
      features: [N, D] float32 or bfloat16.
      labels: [N] int.
      margin: the triplet margin (0.3 in AGW).

    Returns:
      float32 scalar.

    Raises:
      ValueError: on wrong ranks, mismatched N or non-integer labels.
    """
    distances, positive, negative = _distances_and_masks(features, labels)
    hardest_positive = ops.masked_max(distances, positive)[:, 0]
    hardest_negative = ops.masked_min(distances, negative)
    per_anchor = jax.nn.relu(hardest_positive - hardest_negative + margin)
    per_anchor = jnp.where(jnp.any(negative, axis=1), per_anchor, 0.0)
    return jnp.mean(per_anchor)


def center_aggregation_loss(
    *,
    features: ArrayLike,
    labels: ArrayLike,
    centers: ArrayLike,
    sigma: float,
    rho: float,
    variant: Literal["paper", "release"] = "paper",
) -> jax.Array:
    """Marginal center aggregation: ICA (Eq. 5) and CCA (Eq. 6).

    ICA takes identity labels and centers, CCA camera labels and centers.
    With squared Euclidean distances, for sample i of class y_i:

      d_i       = d(f_i, c_{y_i})
      nearest_i = min_{j : y_j = y_i} d_j     (the batch's f^o_{y_i})
      sep_i     = min_{k != y_i} d(c_{y_i}, c_k)   (over all K centers)

    "paper": mean_i [d_i - nearest_i - sigma]_+ + mean_i [rho - sep_i]_+.
    "release" (the authors' code) hinges the batch means instead:
    [mean d - mean nearest - sigma]_+ + [rho - mean sep]_+. The release's
    ICA weights each class's minimum by a hard-coded 8 instead of its count
    in the batch; the two agree for its batches of 8 images per identity.
    The separation term has a gradient only if the centers are trained (the
    release never trains them).

    Args:
      features: [N, D] float32 or bfloat16.
      labels: [N] int, class of each sample in [0, K).
      centers: [K, D] float32 or bfloat16, K >= 2.
      sigma: the pull margin, >= 0.
      rho: the separation margin between centers.
      variant: "paper" or "release".

    Returns:
      float32 scalar.

    Raises:
      ValueError: on an unknown `variant`, wrong ranks, mismatched N or D,
        fewer than 2 centers, or non-integer labels.
    """
    if variant not in ("paper", "release"):
        raise ValueError(
            f'`variant` must be "paper" or "release", got {variant!r}.'
        )
    features = ops.floating("features", features, 2, "[N, D]")
    labels = ops.int_labels("labels", labels, features.shape[0], "features")
    centers = ops.floating("centers", centers, 2, "[K, D]")
    if centers.shape[1] != features.shape[1]:
        raise ValueError(
            f"`centers` [K, D] and `features` [N, D] must share D, got shapes "
            f"{centers.shape} and {features.shape}."
        )
    if centers.shape[0] < 2:
        raise ValueError(
            "`centers` needs at least 2 classes for the separation term, got "
            f"shape {centers.shape}."
        )
    dtype = jnp.promote_types(features.dtype, centers.dtype)
    features, centers = features.astype(dtype), centers.astype(dtype)
    num_classes = centers.shape[0]

    own_centers = centers[labels]  # [N, D]
    # Pull: differences, not the norm expansion, so d_i is exact near 0.
    to_center = jnp.sum(jnp.square(features - own_centers), axis=1)  # [N]
    same_class = labels[:, None] == labels[None, :]
    # Samples of one class share its center, so the class's nearest sample is
    # the minimum of `to_center` over that class's samples in the batch.
    nearest = ops.masked_min(
        jnp.broadcast_to(to_center[None, :], same_class.shape), same_class
    )

    # Separation: [N, K] center distances by the norm expansion (an [N, K, D]
    # difference is ~50M elements for ICA); centers are far apart, so the
    # expansion's rounding is negligible. HIGHEST avoids TF32 on GPUs.
    cross = jnp.matmul(
        own_centers, centers.T, precision=jax.lax.Precision.HIGHEST
    )
    center_sq = jnp.sum(jnp.square(centers), axis=1)
    own_sq = jnp.sum(jnp.square(own_centers), axis=1)
    between = own_sq[:, None] + center_sq[None, :] - 2.0 * cross
    between = jnp.maximum(between, 0.0)
    other_class = jnp.arange(num_classes)[None, :] != labels[:, None]
    separation = ops.masked_min(between, other_class)  # [N]

    sigma = jnp.asarray(sigma, dtype)
    rho = jnp.asarray(rho, dtype)
    if variant == "paper":
        pull = jnp.mean(jax.nn.relu(to_center - nearest - sigma))
        push = jnp.mean(jax.nn.relu(rho - separation))
    else:
        pull = jax.nn.relu(jnp.mean(to_center) - jnp.mean(nearest) - sigma)
        push = jax.nn.relu(rho - jnp.mean(separation))
    return pull + push
