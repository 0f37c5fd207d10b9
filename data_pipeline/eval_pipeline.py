"""The tf.data evaluation batches of a split (or a subset of it).

Decode (none for raw pixels), resize (only to another size than stored),
normalise; a fixed global batch size; the last batch is padded with zero
images whose "mask" is False, so every image counts exactly once; "index"
is the image's position in the split (-1 on padding). See
docs/datasets.md "The input pipeline".
"""

from collections.abc import Sequence

import numpy as np

from data_pipeline import image_ops, records, sampling
from data_pipeline.tf_setup import tf


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _normalize_masked(images, mask, *, mean, std, dtype):
    """Normalised images, zero where mask is False (one fused XLA pass)."""
    out = image_ops.normalize(images, mean=mean, std=std)
    out = tf.where(mask[:, None, None, None], out, tf.zeros_like(out))
    return tf.cast(out, dtype)


def make_eval_dataset(
    source,
    *,
    batch_size: int,
    image_size: tuple[int, int] = (288, 144),
    indices: Sequence[int] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    dtype=tf.float32,
    mean: Sequence[float] = image_ops.IMAGENET_MEAN,
    std: Sequence[float] = image_ops.IMAGENET_STD,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    prefetch: int = 2,
) -> tf.data.Dataset:
    """Evaluation batches covering a split (or a subset) exactly once.

    Global batch b holds the examples b * batch_size .. (b + 1) * batch_size - 1
    of the selection; host i gets rows [i * batch_size/n, (i+1) * batch_size/n)
    of it. The last batch is padded with zero images (mask False, index -1),
    so every host sees the same number of batches.

    Args:
      source: the split's records (`records.open_source`).
      batch_size: global batch size (divisible by process_count).
      image_size: (H, W).
      indices: optional positions in the split to evaluate, in this order
        (e.g. a query subset); default all, in order.
      process_index, process_count: this host and the number of hosts.
      dtype: tf.float32 or tf.bfloat16 images.
      mean, std: normalisation statistics.
      num_parallel_calls: parallelism of the per-image map.
      prefetch: batches prefetched.

    Returns:
      tf.data.Dataset of dicts: "image" [batch_size/n, H, W, 3] dtype,
      "mask" [batch_size/n] bool, "index" [batch_size/n] int64.
    """
    height, width = image_ops.check_image_size(image_size)
    dtype = image_ops.check_float_dtype(dtype)
    n = len(source)
    if indices is None:
        selection = np.arange(n, dtype=np.int64)
    else:
        selection = np.asarray(indices)
        integer = np.issubdtype(selection.dtype, np.integer)
        if selection.ndim != 1 or not integer:
            raise ValueError(
                f"indices must be a 1-D integer array, got shape "
                f"{selection.shape} dtype {selection.dtype}."
            )
        selection = selection.astype(np.int64)
        if selection.size and (selection.min() < 0 or selection.max() >= n):
            raise ValueError(
                f"indices must be in [0, {n}) (the split size), got range "
                f"[{selection.min()}, {selection.max()}]."
            )
    if selection.size == 0:
        raise ValueError("nothing to evaluate: the split/selection is empty.")
    rows = sampling.host_rows(
        rows_per_batch=batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    num_batches = -(-selection.size // batch_size)
    padded = np.full(num_batches * batch_size, -1, np.int64)
    padded[: selection.size] = selection
    local = padded.reshape(num_batches, batch_size)[:, rows]
    records.check_source(source)
    storage = records.image_storage(source)
    local_rows = rows.stop - rows.start

    def fetch(index):
        out = np.full(index.shape, b"", dtype=object)
        valid = index >= 0
        if valid.any():
            out[valid] = records.read_records(source, index[valid])
        return out

    def fetch_in_graph(index):
        serialized = tf.numpy_function(
            fetch, [index], tf.string, stateful=False
        )
        serialized = tf.ensure_shape(serialized, [local_rows])
        mask = index >= 0
        # Parse only real records; padding rows stay empty (never decoded).
        parsed = records.parse_images(
            tf.boolean_mask(serialized, mask), storage=storage
        )
        where = tf.where(mask)
        stored = {
            key: tf.tensor_scatter_nd_update(
                tf.zeros(
                    tf.concat([[local_rows], tf.shape(value)[1:]], 0),
                    value.dtype,
                ),
                where,
                value,
            )
            for key, value in parsed.items()
        }
        return {"stored": stored, "mask": mask, "index": index}

    def decode(example):
        image = tf.cond(
            example["mask"],
            lambda: image_ops.decode_and_resize(
                example["stored"], height=height, width=width
            ),
            lambda: tf.zeros((height, width, 3), tf.uint8),
        )
        return {
            "image": image,
            "mask": example["mask"],
            "index": example["index"],
        }

    def normalize(batch):
        return {
            "image": _normalize_masked(
                batch["image"],
                batch["mask"],
                mean=tuple(mean),
                std=tuple(std),
                dtype=dtype,
            ),
            "mask": batch["mask"],
            "index": batch["index"],
        }

    # Plain graph functions (no AutoGraph), as in the training stream.
    plain = tf.autograph.experimental.do_not_convert
    ds = tf.data.Dataset.from_tensor_slices(local)
    ds = ds.map(plain(fetch_in_graph), num_parallel_calls=2, deterministic=True)
    ds = ds.unbatch()
    ds = ds.map(
        plain(decode), num_parallel_calls=num_parallel_calls, deterministic=True
    )
    ds = ds.batch(local_rows, drop_remainder=True)
    ds = ds.map(plain(normalize), num_parallel_calls=2, deterministic=True)
    return ds.prefetch(prefetch)
