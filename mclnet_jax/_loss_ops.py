"""Input checks and numerical building blocks of `mclnet_jax.losses`.

Private: the checks run at trace time and raise `ValueError` naming the bad
argument; the blocks keep static shapes so the losses jit, grad and vmap.
"""

import jax
import jax.numpy as jnp

ArrayLike = jax.typing.ArrayLike

# AGW clamps squared distances here before the square root.
SQUARED_DISTANCE_CLAMP = 1e-12


def compute_dtype(dtype) -> jnp.dtype:
    """float32 for float32/bfloat16/float16 inputs; float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


def floating(name: str, x: ArrayLike, ndim: int, shape_doc: str) -> jax.Array:
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
    return x.astype(compute_dtype(x.dtype))


def int_labels(name: str, labels: ArrayLike, n: int, other: str) -> jax.Array:
    """Checks that labels are an integer vector of length `n`.

    Label values cannot be checked under `jit`: values outside
    `[0, num_classes)` give undefined results.
    """
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


def modality_logits(logits: ArrayLike) -> jax.Array:
    """Checks modality logits [N, M], M >= 2, and casts them."""
    logits = floating("logits", logits, 2, "[N, 2]")
    if logits.shape[1] < 2:
        raise ValueError(
            "`logits` must have one column per modality ([N, 2]), got shape "
            f"{logits.shape}."
        )
    return logits


@jax.custom_jvp
def pairwise_squared_distances(x: jax.Array) -> jax.Array:
    """Squared Euclidean distances between the rows of `x` [N, D] -> [N, N].

    Computed from the differences, not from ||a||^2 + ||b||^2 - 2ab, which
    cancels catastrophically for nearby features (and may run in TF32 on
    GPUs). XLA fuses the broadcast into the reduction, so the [N, N, D]
    difference is never stored; the derivative is written with matmuls
    because autodiff through the broadcast would store it.
    """
    diff = x[:, None, :] - x[None, :, :]
    return jnp.sum(diff * diff, axis=-1)


@pairwise_squared_distances.defjvp
def _pairwise_squared_distances_jvp(primals, tangents):
    # d ||x_i - x_j||^2 = 2 (x_i.dx_i + x_j.dx_j - x_i.dx_j - x_j.dx_i);
    # linear in dx, so JAX transposes it for reverse mode (two matmuls).
    (x,), (dx,) = primals, tangents
    self_terms = jnp.sum(x * dx, axis=1)
    cross = jnp.matmul(x, dx.T, precision=jax.lax.Precision.HIGHEST)
    tangent = 2.0 * (
        self_terms[:, None] + self_terms[None, :] - cross - cross.T
    )
    return pairwise_squared_distances(x), tangent


def euclidean_distances(x: jax.Array) -> jax.Array:
    """AGW's `sqrt(max(d^2, 1e-12))` [N, N]: finite gradient at zero."""
    squared = pairwise_squared_distances(x)
    return jnp.sqrt(jnp.maximum(squared, SQUARED_DISTANCE_CLAMP))


def masked_max(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Row-wise max of `values` [N, M] over `mask` -> [N, 1], 0 if empty."""
    lowest = jnp.finfo(values.dtype).min
    row_max = jnp.max(jnp.where(mask, values, lowest), axis=1, keepdims=True)
    return jnp.where(jnp.any(mask, axis=1, keepdims=True), row_max, 0.0)


def masked_min(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Row-wise min of `values` [N, M] over `mask`, 0 for empty rows -> [N]."""
    return -masked_max(-values, mask)[:, 0]


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over rows of -sum_c targets[:, c] * log_softmax(logits)[:, c]."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.mean(-jnp.sum(targets * log_probs, axis=-1))
