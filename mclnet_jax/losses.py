"""MCLNet's losses as pure, jit-able JAX functions.

Every loss of MCLNet (Hao et al., ICCV 2021) and of the AGW baseline it builds
on, written so that other JAX models can import them:

* `identity_loss`: softmax cross-entropy on identity logits (ID loss, Eq. 7).
* `wrt_triplet_loss` / `wrt_triplet_loss_and_accuracy`: AGW's weighted
  regularised triplet loss (Eq. 7).
* `hard_triplet_loss`: batch-hard triplet loss (the "Base" ablation).
* `modality_classifier_loss`: the modality confusion module's loss L_m (Eq. 1).
* `modality_confusion_loss`: the extractor's confusion loss L_e (Eq. 2).
* `center_aggregation_loss`: marginal center aggregation, ICA (Eq. 5) with
  identity labels and centers, CCA (Eq. 6) with camera labels and centers.

Conventions shared by all functions:

* Arguments are keyword-only; nothing is stored between calls.
* Floating inputs may be float32 or bfloat16 (or float16); they are promoted
  to at least float32 before any arithmetic, and the result is a float32
  scalar. (float64 inputs, under `jax_enable_x64`, stay float64.)
* Shapes are static: no output or intermediate shape depends on label values,
  so each function traces once per input shape and works under `jax.jit`,
  `jax.grad` and `jax.vmap` (vmapped over independent problems).
* Shapes and dtypes are checked at trace time; a mismatch raises `ValueError`.
  Label *values* cannot be checked under `jit`: labels outside
  `[0, num_classes)` give undefined results.
* Distances d(a, b) in the center losses are squared Euclidean, as in
  Eq. 5/6; the triplet losses use Euclidean distances
  `sqrt(max(||a - b||^2, 1e-12))` as AGW does. The clamp keeps the gradient
  finite where two features coincide (and on the diagonal).
"""

from typing import Literal

import jax
import jax.numpy as jnp

__all__ = [
    "identity_loss",
    "wrt_triplet_loss",
    "wrt_triplet_loss_and_accuracy",
    "hard_triplet_loss",
    "modality_classifier_loss",
    "modality_confusion_loss",
    "center_aggregation_loss",
]

# AGW clamps squared distances here before the square root.
_SQUARED_DISTANCE_CLAMP = 1e-12
# AGW adds this to the normaliser of its softmax weights.
_SOFTMAX_WEIGHT_EPS = 1e-6

ArrayLike = jax.typing.ArrayLike


# ---------------------------------------------------------------------------
# Input checks (trace time) and dtype handling.
# ---------------------------------------------------------------------------


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for float32/bfloat16/float16 inputs; float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _floating(name: str, x: ArrayLike, ndim: int, shape_doc: str) -> jax.Array:
    """Checks a floating array's rank and casts it to the compute dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be a floating array (float32 or bfloat16), got "
            f"dtype {x.dtype}; cast it with `.astype(jnp.float32)`."
        )
    if x.ndim != ndim:
        raise ValueError(
            f"`{name}` must have shape {shape_doc}, got shape {x.shape}. "
            "To evaluate several independent problems at once, use jax.vmap."
        )
    return x.astype(_compute_dtype(x.dtype))


def _int_labels(name: str, labels: ArrayLike, n: int, other: str) -> jax.Array:
    """Checks that labels are an integer vector of length `n`."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"`{name}` must be an integer array of class indices, got dtype "
            f"{labels.dtype}; cast it with `.astype(jnp.int32)`."
        )
    if labels.shape != (n,):
        raise ValueError(
            f"`{name}` must have shape [N] = ({n},) to match `{other}`'s "
            f"first dimension, got shape {labels.shape}."
        )
    return labels


def _modality_logits(logits: ArrayLike) -> jax.Array:
    """Checks modality logits [N, M], M >= 2, and casts them."""
    logits = _floating("logits", logits, 2, "[N, 2]")
    if logits.shape[1] < 2:
        raise ValueError(
            "`logits` must have one column per modality ([N, 2]), got shape "
            f"{logits.shape}."
        )
    return logits


# ---------------------------------------------------------------------------
# Shared numerical building blocks.
# ---------------------------------------------------------------------------


@jax.custom_jvp
def _pairwise_squared_distances(x: jax.Array) -> jax.Array:
    """Squared Euclidean distances between the rows of `x` [N, D] -> [N, N].

    The value comes from the differences rather than from the expansion
    ||a||^2 + ||b||^2 - 2ab, which cancels catastrophically for nearby
    features (for 64 x 2048 float32 features, duplicates come out anywhere
    in +-1e-3 instead of 0, distances of ~0.03 after the square root; on
    GPUs float32 matmuls may also run in TF32). XLA fuses the broadcast into
    the reduction, so the [N, N, D] difference is never stored. The
    derivative (below) is written with matmuls because autodiff through the
    broadcast stores it: tens of times slower for a 64 x 2048 batch on CPU.
    """
    diff = x[:, None, :] - x[None, :, :]
    return jnp.sum(diff * diff, axis=-1)


@_pairwise_squared_distances.defjvp
def _pairwise_squared_distances_jvp(primals, tangents):
    # d ||x_i - x_j||^2 = 2 (x_i.dx_i + x_j.dx_j - x_i.dx_j - x_j.dx_i);
    # linear in dx, so JAX transposes it for reverse mode (two matmuls).
    (x,), (dx,) = primals, tangents
    self_terms = jnp.sum(x * dx, axis=1)
    cross = jnp.matmul(x, dx.T, precision=jax.lax.Precision.HIGHEST)
    tangent = 2.0 * (
        self_terms[:, None] + self_terms[None, :] - cross - cross.T
    )
    return _pairwise_squared_distances(x), tangent


def _euclidean_distances(x: jax.Array) -> jax.Array:
    """AGW's clamped Euclidean distances [N, N]; finite gradient at zero."""
    squared = _pairwise_squared_distances(x)
    return jnp.sqrt(jnp.maximum(squared, _SQUARED_DISTANCE_CLAMP))


def _masked_max(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Row-wise max of `values` [N, M] over `mask` -> [N, 1], 0 if empty."""
    lowest = jnp.finfo(values.dtype).min
    row_max = jnp.max(jnp.where(mask, values, lowest), axis=1, keepdims=True)
    return jnp.where(jnp.any(mask, axis=1, keepdims=True), row_max, 0.0)


def _masked_min(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Row-wise min of `values` [N, M] over `mask`, 0 for empty rows -> [N]."""
    return -_masked_max(-values, mask)[:, 0]


def _masked_softmax_weights(values: jax.Array, mask: jax.Array) -> jax.Array:
    """AGW's softmax weights over the masked entries of each row.

    `exp(v - max) * mask / (sum(exp(v - max) * mask) + 1e-6)` with the maximum
    taken over the masked entries only (WRT's "stable" variant).
    """
    shifted = jnp.where(mask, values - _masked_max(values, mask), 0.0)
    unnormalised = jnp.exp(shifted) * mask
    normaliser = jnp.sum(unnormalised, axis=1, keepdims=True)
    normaliser = normaliser + _SOFTMAX_WEIGHT_EPS
    return unnormalised / normaliser


def _release_softmax_weights(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The release's weights: the maximum of `values * mask` over the row.

    `values` are already masked by the caller (`d * mask` or `-d * mask`), as
    in the release. For negatives that row maximum is the 0 of the positive
    entries, so nothing is subtracted and exp(-d) competes with the 1e-6.
    """
    mask = mask.astype(values.dtype)
    row_max = jnp.max(values * mask, axis=1, keepdims=True)
    unnormalised = jnp.exp(values - row_max) * mask
    normaliser = jnp.sum(unnormalised, axis=1, keepdims=True)
    return unnormalised / (normaliser + _SOFTMAX_WEIGHT_EPS)


def _softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over rows of -sum_c targets[:, c] * log_softmax(logits)[:, c]."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.mean(-jnp.sum(targets * log_probs, axis=-1))


# ---------------------------------------------------------------------------
# Classification losses.
# ---------------------------------------------------------------------------


def identity_loss(
    *, logits: ArrayLike, labels: ArrayLike, label_smoothing: float = 0.0
) -> jax.Array:
    """Identity (ID) loss L_id of Eq. 7: softmax cross-entropy, batch mean.

    Args:
      logits: [N, C] float32 or bfloat16, identity classifier outputs.
      labels: [N] int, identity indices in [0, C).
      label_smoothing: weight eps of the uniform distribution mixed into the
        one-hot target, `(1 - eps) * one_hot + eps / C`. 0 (the default and
        what MCLNet's release uses) is plain cross-entropy.

    Returns:
      float32 scalar, the mean over the batch.

    Raises:
      ValueError: on wrong ranks, mismatched N, non-integer labels, or
        `label_smoothing` outside [0, 1).
    """
    logits = _floating("logits", logits, 2, "[N, C]")
    labels = _int_labels("labels", labels, logits.shape[0], "logits")
    if isinstance(label_smoothing, (int, float)) and not (
        0.0 <= label_smoothing < 1.0
    ):
        raise ValueError(
            f"`label_smoothing` must be in [0, 1), got {label_smoothing}."
        )
    num_classes = logits.shape[1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    return _softmax_cross_entropy(logits, targets)


def modality_classifier_loss(
    *, logits: ArrayLike, modality: ArrayLike
) -> jax.Array:
    """Modality confusion module loss L_m, Eq. 1.

    `L_m = -1/N sum_i t_i . log p_m(f_i)` with t_i the one-hot true modality
    ([1, 0] visible, [0, 1] infrared) and p_m the softmax of the module's
    logits. In MCLNet only the modality module's parameters are trained on it.

    Args:
      logits: [N, 2] float32 or bfloat16, the modality module's outputs (any
        number M >= 2 of modalities is accepted, [N, M]).
      modality: [N] int, 0 = visible, 1 = infrared.

    Returns:
      float32 scalar.

    Raises:
      ValueError: on wrong ranks, fewer than 2 logits per row, mismatched N
        or non-integer `modality`.
    """
    logits = _modality_logits(logits)
    modality = _int_labels("modality", modality, logits.shape[0], "logits")
    targets = jax.nn.one_hot(modality, logits.shape[1], dtype=logits.dtype)
    return _softmax_cross_entropy(logits, targets)


def modality_confusion_loss(*, logits: ArrayLike) -> jax.Array:
    """Modality confusion loss L_e, Eq. 2.

    `L_e = -1/N sum_i o_i . log p_m(f_i)` with the confused label
    o_i = [0.5, 0.5] for every sample: minimising it drives the modality
    module's prediction towards indifference. In MCLNet it trains the feature
    extractor through the (fixed) modality module.

    Args:
      logits: [N, 2] float32 or bfloat16, the modality module's outputs (for
        M >= 2 modalities, [N, M], the target is uniform, 1/M each).

    Returns:
      float32 scalar; its minimum, log(2) for two modalities, is reached at
      equal logits.

    Raises:
      ValueError: on a wrong rank or fewer than 2 logits per row.
    """
    logits = _modality_logits(logits)
    targets = jnp.full(logits.shape, 1.0 / logits.shape[1], logits.dtype)
    return _softmax_cross_entropy(logits, targets)


# ---------------------------------------------------------------------------
# Triplet losses.
# ---------------------------------------------------------------------------


def _distances_and_masks(
    features: ArrayLike, labels: ArrayLike
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Validated triplet inputs -> (distances [N, N], positive, negative).

    `positive[i, j]` is `labels[i] == labels[j]` (the anchor itself
    included), `negative` its complement.
    """
    features = _floating("features", features, 2, "[N, D]")
    labels = _int_labels("labels", labels, features.shape[0], "features")
    distances = _euclidean_distances(features)
    positive = labels[:, None] == labels[None, :]
    return distances, positive, jnp.logical_not(positive)


WRT_VARIANTS = ("stable", "release")


def wrt_triplet_loss_and_accuracy(
    *,
    features: ArrayLike,
    labels: ArrayLike,
    variant: Literal["stable", "release"] = "stable",
) -> tuple[jax.Array, jax.Array]:
    """Weighted regularised triplet loss (AGW, L_wrt of Eq. 7) and its accuracy.

    With Euclidean distances d_ij = sqrt(max(||f_i - f_j||^2, 1e-12)), for
    each anchor i, positives P_i = {j : y_j = y_i} (the anchor itself
    included, as in AGW) and negatives N_i = {j : y_j != y_i}:

      w_ij = exp(d_ij - m_P) / (sum_{k in P_i} exp(d_ik - m_P) + 1e-6),
      pos_i = sum_{j in P_i} w_ij d_ij                (soft hardest positive)
      w_ij = exp(-d_ij - m_N) / (sum_{k in N_i} exp(-d_ik - m_N) + 1e-6),
      neg_i = sum_{j in N_i} w_ij d_ij                (soft hardest negative)
      loss = 1/N sum_i log(1 + exp(pos_i - neg_i))    (soft margin)
      accuracy = 1/N #{i : neg_i >= pos_i}

    The shifts m differ between the variants:

    * "stable" (default): m_P = max_{k in P_i} d_ik and m_N = max_{k in N_i}
      -d_ik, the maxima over the masked entries, so the weights of each set
      sum to 1 (up to the 1e-6).
    * "release": the authors' code, bit for bit: m is the maximum of
      `value * mask` over the whole row. For positives that is m_P again;
      for negatives it is 0 (the masked-out entries), so nothing is
      subtracted, exp(-d) competes with the 1e-6 and, for the large
      distances of unnormalised 2048-d features, the negative weights sum to
      well below 1 (about 0.98 at d = 14, 0.46 at 18, 0.015 at 22). This is
      what the published numbers were trained with. The two agree where
      distances are small.

    An anchor without negatives (a single-class batch) gets neg_i = 0.

    Args:
      features: [N, D] float32 or bfloat16, e.g. MCLNet's pre-BN `pool`.
      labels: [N] int, identity labels (any integers; equal means same id).
      variant: "stable" or "release", see above.

    Returns:
      (loss, accuracy): float32 scalars. The accuracy comes from the same
      distance computation and carries no gradient.

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
    """AGW's weighted regularised triplet loss (L_wrt of Eq. 7).

    See `wrt_triplet_loss_and_accuracy` for the definition and `variant`.

    Args:
      features: [N, D] float32 or bfloat16.
      labels: [N] int.
      variant: "stable" (default) or "release".

    Returns:
      float32 scalar.
    """
    loss, _ = wrt_triplet_loss_and_accuracy(
        features=features, labels=labels, variant=variant
    )
    return loss


def hard_triplet_loss(
    *, features: ArrayLike, labels: ArrayLike, margin: float = 0.3
) -> jax.Array:
    """Batch-hard triplet loss (the "Base" ablation's triplet loss).

    With the same clamped Euclidean distances as `wrt_triplet_loss`, per
    anchor i the farthest positive (the anchor itself included) and the
    closest negative give `max(0, d(i, farthest positive) - d(i, closest
    negative) + margin)`; the loss is the mean over all N anchors. An anchor
    without negatives contributes 0 (and still counts in N).

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
    hardest_positive = _masked_max(distances, positive)[:, 0]
    hardest_negative = _masked_min(distances, negative)
    per_anchor = jax.nn.relu(hardest_positive - hardest_negative + margin)
    per_anchor = jnp.where(jnp.any(negative, axis=1), per_anchor, 0.0)
    return jnp.mean(per_anchor)


# ---------------------------------------------------------------------------
# Marginal center aggregation (ICA / CCA).
# ---------------------------------------------------------------------------


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

    ICA passes identity labels and identity centers, CCA camera labels and
    camera centers (MCLNet: post-BN `bn` features, sigma = 8, rho = 4500,
    loss weight lambda = 5e-4 each, 395 identity and 6 camera centers).

    With squared Euclidean distances d(a, b) = ||a - b||^2, for sample i:

      d_i       = d(f_i, c_{y_i})                     (distance to own center)
      nearest_i = min_{j : y_j = y_i} d_j             (d(f^o_{y_i}, c_{y_i}):
                                                       the batch sample of
                                                       class y_i nearest to
                                                       its center)
      sep_i     = min_{k != y_i} d(c_{y_i}, c_k)      (over all K centers,
                                                       present in the batch
                                                       or not)

    `variant="paper"` (default), Eq. 5/6 as printed, both hinges per sample:

      loss = 1/N sum_i [d_i - nearest_i - sigma]_+ + 1/N sum_i [rho - sep_i]_+

    `variant="release"`, the authors' released code, hinges on batch means:

      loss = [1/N sum_i d_i - 1/N sum_i nearest_i - sigma]_+
             + [rho - 1/N sum_i sep_i]_+

    `1/N sum_i nearest_i` is the release's count-weighted nearest term (each
    present class's minimum times its sample count, over N). The release's
    ICA instead multiplies each minimum by a hard-coded 8; the two are equal
    for MCLNet's batches of 8 images per identity.

    Classes absent from the batch take no part in the nearest term. The
    separation term depends on the centers only; it has a gradient only if
    the centers are trained (the release never updates them).

    Args:
      features: [N, D] float32 or bfloat16.
      labels: [N] int, class of each sample in [0, K).
      centers: [K, D] float32 or bfloat16, K >= 2 class centers.
      sigma: the pull margin (radius of the inner sphere), >= 0.
      rho: the separation margin between centers.
      variant: "paper" or "release", see above.

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
    features = _floating("features", features, 2, "[N, D]")
    labels = _int_labels("labels", labels, features.shape[0], "features")
    centers = _floating("centers", centers, 2, "[K, D]")
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
    nearest = _masked_min(
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
    separation = _masked_min(between, other_class)  # [N]

    sigma = jnp.asarray(sigma, dtype)
    rho = jnp.asarray(rho, dtype)
    if variant == "paper":
        pull = jnp.mean(jax.nn.relu(to_center - nearest - sigma))
        push = jnp.mean(jax.nn.relu(rho - separation))
    else:
        pull = jax.nn.relu(jnp.mean(to_center) - jnp.mean(nearest) - sigma)
        push = jax.nn.relu(rho - jnp.mean(separation))
    return pull + push
