"""tf.data training and evaluation pipelines over a random-access split.

Data flow (training):

  identity-balanced plan (sampling.py, numpy, per epoch)
    -> per step: read the planned records by index from the split's
       random-access source (TFDS array_record), in one Python call
    -> per step: every random choice (crop offsets, flips, erasing boxes,
       random grey)
       drawn from (seed, global step) for the rows of the global batch
       (augment.sample_train_params), this host's rows kept
    -> per image, in parallel: decode JPEG, resize to (H, W), pad + crop,
       flip (uint8)
    -> per step: random grey (ours, off by default) + normalise + random
       erasing, one fused XLA computation
    -> {"visible", "infrared": [P*K/hosts, H, W, 3] float32 (or bfloat16),
       "visible_labels", "infrared_labels", "visible_cameras",
       "infrared_cameras": [P*K/hosts] int32, "step": int64 scalar}
    -> prefetch.

Every random choice is a pure function of (seed, step), so
`make_train_dataset(start_step=s)` yields exactly what an uninterrupted run
yields from step s on, whatever the number of hosts. Only the records of the
steps in flight are in memory (the split itself is never loaded).

Evaluation: decode, resize, normalise; fixed global batch size; the last
batch is padded with zero images whose "mask" is False, so every image counts
exactly once; "index" is the image's position in the split (-1 on padding).

Sources. The functions take the split as a random-access sequence:
`open_source(builder, split)` returns the serialized `tf.train.Example`
records of a TFDS split (`as_data_source` with raw bytes); the image bytes are
parsed out in the graph. A sequence of feature dicts whose "image" is the
*encoded* image (`as_data_source(split, decoders={"image":
tfds.decode.SkipDecoding()})`, or an in-memory list) also works, more slowly.
"""

import dataclasses
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from data_pipeline import augment, sampling

VISIBLE = 0
INFRARED = 1
_METADATA_KEYS = ("label", "identity", "camera", "modality")


def open_source(builder, split: str) -> Sequence[bytes]:
    """The random-access records of one split of a prepared TFDS builder.

    Args:
      builder: a prepared `tfds.core.DatasetBuilder` stored as array_record
        (e.g. `SysuMm01(data_dir=...)` after `download_and_prepare`).
      split: split name, e.g. "train" or "test".

    Returns:
      Sequence of serialized `tf.train.Example` bytes (len, [i], __getitems__).
    """
    import tensorflow_datasets as tfds  # Heavy import, only needed here.

    try:
        return builder.as_data_source(
            split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
    except NotImplementedError as e:
        raise ValueError(
            f"{builder.name} is not stored in a random-access format; prepare "
            "it with file_format='array_record' (the builders' default)."
        ) from e


def _read(source, indices: np.ndarray) -> list:
    indices = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        return list(getitems(indices))
    return [source[i] for i in indices]


def _is_serialized(item: Any) -> bool:
    return isinstance(item, (bytes, np.bytes_))


def _encoded_image(item: Any) -> bytes:
    image = item["image"]
    if isinstance(image, np.ndarray) and image.dtype == object:
        image = image.item()
    if not isinstance(image, (bytes, np.bytes_)):
        raise ValueError(
            "the source returns decoded images; pass "
            "open_source(builder, split) or as_data_source(split, "
            "decoders={'image': tfds.decode.SkipDecoding()}) so that images "
            "are decoded in tf.data."
        )
    return bytes(image)


@dataclasses.dataclass(frozen=True)
class SplitMetadata:
    """Per-example metadata of one split (everything but the pixels).

    Attributes (all [N] int64, row i = example i of the source):
      label: contiguous identity index within the split.
      identity: original person id.
      camera: camera id (SYSU 1..6; RegDB 1 visible, 2 thermal).
      modality: 0 visible, 1 infrared.
    """

    label: np.ndarray
    identity: np.ndarray
    camera: np.ndarray
    modality: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.label.size)

    @functools.cached_property
    def visible_indices(self) -> np.ndarray:
        """[N_vis] int64 source indices of the visible examples."""
        return np.flatnonzero(self.modality == VISIBLE)

    @functools.cached_property
    def infrared_indices(self) -> np.ndarray:
        """[N_ir] int64 source indices of the infrared examples."""
        return np.flatnonzero(self.modality == INFRARED)

    @property
    def num_classes(self) -> int:
        """Number of distinct labels (the classifier size for a train split)."""
        return int(np.unique(self.label).size)


def read_metadata(source, *, chunk_size: int = 2048) -> SplitMetadata:
    """Reads label / identity / camera / modality of every example of a split.

    Streams the records in chunks (memory ~ chunk_size records) and parses
    only the integer features.

    Args:
      source: see the module docstring.
      chunk_size: records per read.

    Returns:
      SplitMetadata.
    """
    n = len(source)
    if n == 0:
        raise ValueError("the split is empty: no examples to read.")
    spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in _METADATA_KEYS}
    columns = {k: [] for k in _METADATA_KEYS}
    for start in range(0, n, chunk_size):
        items = _read(source, np.arange(start, min(n, start + chunk_size)))
        if _is_serialized(items[0]):
            parsed = tf.io.parse_example(tf.constant(items), spec)
            for k in _METADATA_KEYS:
                columns[k].append(parsed[k].numpy())
        else:
            for k in _METADATA_KEYS:
                columns[k].append(
                    np.asarray([int(item[k]) for item in items], np.int64)
                )
    metadata = SplitMetadata(
        **{k: np.concatenate(v).astype(np.int64) for k, v in columns.items()}
    )
    bad = np.setdiff1d(metadata.modality, [VISIBLE, INFRARED])
    if bad.size:
        raise ValueError(
            "modality must be 0 (visible) or 1 (infrared), found "
            f"{bad.tolist()}."
        )
    return metadata


def _source_kind(source) -> bool:
    """Checks the first item; True for serialized records, False for dicts."""
    if len(source) == 0:
        raise ValueError("the split is empty: no examples to read.")
    first = _read(source, [0])[0]
    if _is_serialized(first):
        return True
    if not hasattr(first, "keys") or "image" not in first:
        raise ValueError(
            "source items must be serialized tf.train.Example bytes "
            "(open_source(builder, split)) or feature dicts with an encoded "
            f"'image'; got {type(first).__name__}."
        )
    _encoded_image(first)
    return False


def _encoded_images(items: list) -> np.ndarray:
    """Records or feature dicts -> [n] object array of bytes."""
    if items and not _is_serialized(items[0]):
        items = [_encoded_image(item) for item in items]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _image_bytes_in_graph(records: tf.Tensor, serialized: bool) -> tf.Tensor:
    if not serialized:
        return records
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    return tf.io.parse_example(records, spec)["image"]


TrainAugment = augment.TrainAugment


def _check_image_size(image_size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"image_size must be (height, width), got {image_size!r}."
        ) from e
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}.")
    return height, width


def _check_dtype(dtype) -> tf.DType:
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.bfloat16):
        raise ValueError(
            f"dtype must be float32 or bfloat16, got {dtype.name}."
        )
    return dtype


class _PlanCache:
    """Epoch plans, computed on demand, a few kept (thread-safe)."""

    def __init__(
        self,
        metadata: SplitMetadata,
        *,
        seed: int,
        num_identities: int,
        num_instances: int,
        keep: int = 2,
    ):
        self._labels_vis = metadata.label[metadata.visible_indices]
        self._labels_ir = metadata.label[metadata.infrared_indices]
        self._seed = seed
        self._p = num_identities
        self._k = num_instances
        self._keep = keep
        self._plans: dict[int, sampling.EpochPlan] = {}
        self._lock = threading.Lock()

    def __call__(self, epoch: int) -> sampling.EpochPlan:
        with self._lock:
            plan = self._plans.get(epoch)
            if plan is None:
                plan = sampling.epoch_plan(
                    visible_labels=self._labels_vis,
                    infrared_labels=self._labels_ir,
                    seed=self._seed,
                    epoch=epoch,
                    num_identities=self._p,
                    num_instances=self._k,
                )
                self._plans[epoch] = plan
                for old in sorted(self._plans)[: -self._keep]:
                    del self._plans[old]
            return plan


def train_steps_per_epoch(
    metadata: SplitMetadata, *, num_identities: int = 8, num_instances: int = 4
) -> int:
    """Steps per epoch of the training stream (the release's epoch length)."""
    return sampling.steps_per_epoch(
        num_visible=metadata.visible_indices.size,
        num_infrared=metadata.infrared_indices.size,
        num_identities=num_identities,
        num_instances=num_instances,
    )


def step_indices(
    metadata: SplitMetadata,
    *,
    seed: int,
    step: int,
    num_identities: int = 8,
    num_instances: int = 4,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Source indices of one step's visible and infrared rows (this host).

    Returns:
      (visible [P*K/hosts], infrared [P*K/hosts]) int64 indexes into the
      source: what `make_train_dataset` reads at `step`.
    """
    spe = train_steps_per_epoch(
        metadata, num_identities=num_identities, num_instances=num_instances
    )
    plan = sampling.epoch_plan(
        visible_labels=metadata.label[metadata.visible_indices],
        infrared_labels=metadata.label[metadata.infrared_indices],
        seed=seed,
        epoch=step // spe,
        num_identities=num_identities,
        num_instances=num_instances,
    )
    rows = sampling.host_rows(
        rows_per_batch=num_identities * num_instances,
        process_index=process_index,
        process_count=process_count,
    )
    return _plan_rows(metadata, plan, step % spe, rows)


def _plan_rows(
    metadata: SplitMetadata, plan: sampling.EpochPlan, batch: int, rows: slice
) -> tuple[np.ndarray, np.ndarray]:
    """Source indices of `rows` of batch `batch` of `plan` (vis, ir)."""
    return (
        metadata.visible_indices[plan.visible[batch, rows]],
        metadata.infrared_indices[plan.infrared[batch, rows]],
    )


def make_train_dataset(
    source,
    *,
    seed: int,
    num_identities: int = 8,
    num_instances: int = 4,
    image_size: tuple[int, int] = (288, 144),
    start_step: int = 0,
    num_steps: int | None = None,
    augmentation: TrainAugment | None = None,
    process_index: int = 0,
    process_count: int = 1,
    dtype=tf.float32,
    metadata: SplitMetadata | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    prefetch: int = 2,
    jit_compile: bool = True,
) -> tf.data.Dataset:
    """The training stream from `start_step` on, one element per step.

    Args:
      source: the training split (see the module docstring).
      seed: non-negative int; the plan and every augmentation derive from it.
      num_identities: P identities per global batch.
      num_instances: K images per identity and modality.
      image_size: (H, W) of the output images.
      start_step: first global step to produce (resume).
      num_steps: number of steps to produce; None = endless.
      augmentation: TrainAugment settings (None: the defaults).
      process_index, process_count: this host and the number of hosts
        (jax.process_index(), jax.process_count()); each host gets rows
        [i * P*K/n, (i+1) * P*K/n) of both modalities of every global batch.
      dtype: tf.float32 or tf.bfloat16 images.
      metadata: read_metadata(source), if already at hand.
      num_parallel_calls: parallelism of the per-image map.
      prefetch: steps prefetched at the end.
      jit_compile: normalise and erase each batch as one XLA computation;
        False runs it op by op (several times slower on CPU, same result up
        to float32 rounding).

    Returns:
      tf.data.Dataset of dicts: "visible", "infrared" [P*K/n, H, W, 3] dtype;
      "visible_labels", "infrared_labels", "visible_cameras",
      "infrared_cameras" [P*K/n] int32; "step" int64 scalar, the global step
      (for checking resume; pop it before sharding). Row r of both
      modalities is the same identity (rows [j*K, (j+1)*K) of the global
      batch: identity j).
    """
    height, width = _check_image_size(image_size)
    dtype = _check_dtype(dtype)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if int(start_step) != start_step or start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step!r}.")
    if num_steps is not None and num_steps < 0:
        raise ValueError(f"num_steps must be >= 0 or None, got {num_steps!r}.")
    serialized = _source_kind(source)
    if augmentation is None:
        augmentation = TrainAugment()
    if not isinstance(augmentation, augment.TrainAugment):
        raise ValueError(
            "augmentation must be a data_pipeline.augment.TrainAugment, got "
            f"{type(augmentation).__name__}."
        )
    if metadata is None:
        metadata = read_metadata(source)
    global_rows = num_identities * num_instances
    rows = sampling.host_rows(
        rows_per_batch=global_rows,
        process_index=process_index,
        process_count=process_count,
    )
    local_rows = rows.stop - rows.start
    spe = train_steps_per_epoch(
        metadata, num_identities=num_identities, num_instances=num_instances
    )
    plans = _PlanCache(
        metadata,
        seed=int(seed),
        num_identities=num_identities,
        num_instances=num_instances,
    )
    plans(int(start_step) // spe)  # Validates the split (e.g. unpaired ids).
    # Row of each local image in the global batch [visible; infrared]: its
    # augmentation is drawn for that row, so hosts agree whatever their number.
    positions = np.concatenate(
        [
            np.arange(rows.start, rows.stop),
            global_rows + np.arange(rows.start, rows.stop),
        ]
    ).astype(np.int64)

    def fetch(step):
        step = int(step)
        index = np.concatenate(
            _plan_rows(metadata, plans(step // spe), step % spe, rows)
        )
        records = _encoded_images(_read(source, index))
        return (
            records,
            metadata.label[index].astype(np.int32),
            metadata.camera[index].astype(np.int32),
        )

    def fetch_in_graph(step):
        records, labels, cameras = tf.numpy_function(
            fetch, [step], (tf.string, tf.int32, tf.int32), stateful=False
        )
        size = 2 * local_rows
        # Every random choice of the step, drawn for the global batch and
        # gathered at this host's rows.
        params = augment.sample_train_params(
            augment.step_seed(seed, step),
            num=2 * global_rows,
            height=height,
            width=width,
            config=augmentation,
        )
        params = {k: tf.gather(v, positions) for k, v in params.items()}
        return {
            "encoded": _image_bytes_in_graph(
                tf.ensure_shape(records, [size]), serialized
            ),
            "label": tf.ensure_shape(labels, [size]),
            "camera": tf.ensure_shape(cameras, [size]),
            "step": tf.fill([size], step),
            "params": params,
        }

    def decode(example):
        image = augment.resize(
            augment.decode_image(example.pop("encoded")),
            height=height,
            width=width,
        )
        example["image"] = augment.crop_and_flip(
            image, example["params"], config=augmentation
        )
        return example

    finish = (
        augment.jit_normalize_and_erase
        if jit_compile
        else augment.normalize_and_erase
    )

    def augment_step(batch):
        images = finish(
            batch["image"], batch["params"], config=augmentation, dtype=dtype
        )
        return {
            "visible": images[:local_rows],
            "infrared": images[local_rows:],
            "visible_labels": batch["label"][:local_rows],
            "infrared_labels": batch["label"][local_rows:],
            "visible_cameras": batch["camera"][:local_rows],
            "infrared_cameras": batch["camera"][local_rows:],
            "step": batch["step"][0],
        }

    if num_steps is None:
        stop = np.iinfo(np.int64).max
    else:
        stop = start_step + num_steps
    ds = tf.data.Dataset.range(int(start_step), int(stop))
    ds = ds.map(fetch_in_graph, num_parallel_calls=2, deterministic=True)
    ds = ds.unbatch()
    ds = ds.map(
        decode, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    ds = ds.batch(2 * local_rows, drop_remainder=True)
    ds = ds.map(augment_step, num_parallel_calls=2, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    logging.info(
        "Training stream: %d visible + %d infrared examples, %d identities, "
        "%d steps/epoch, from step %d, host %d/%d with %d rows/modality.",
        metadata.visible_indices.size,
        metadata.infrared_indices.size,
        metadata.num_classes,
        spe,
        start_step,
        process_index,
        process_count,
        local_rows,
    )
    return ds.prefetch(prefetch)


def train_iterator(source, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """`make_train_dataset(source, **kwargs)` as an iterator of numpy dicts."""
    return make_train_dataset(source, **kwargs).as_numpy_iterator()


@tf.function(jit_compile=True, reduce_retracing=True)
def _normalize_masked(images, mask, *, mean, std, dtype):
    """Normalised images, zero where mask is False (one fused XLA pass)."""
    out = augment.normalize(images, mean=mean, std=std)
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
    mean: Sequence[float] = augment.IMAGENET_MEAN,
    std: Sequence[float] = augment.IMAGENET_STD,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    prefetch: int = 2,
) -> tf.data.Dataset:
    """Evaluation batches covering a split (or a subset) exactly once.

    Global batch b holds the examples b * batch_size .. (b + 1) * batch_size - 1
    of the selection; host i gets rows [i * batch_size/n, (i+1) * batch_size/n)
    of it. The last batch is padded with zero images (mask False, index -1),
    so every host sees the same number of batches.

    Args:
      source: the split (see the module docstring).
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
    height, width = _check_image_size(image_size)
    dtype = _check_dtype(dtype)
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
    serialized = _source_kind(source)
    local_rows = rows.stop - rows.start

    def fetch(index):
        out = np.full(index.shape, b"", dtype=object)
        valid = index >= 0
        if valid.any():
            out[valid] = _encoded_images(_read(source, index[valid]))
        return out

    def fetch_in_graph(index):
        records = tf.numpy_function(fetch, [index], tf.string, stateful=False)
        records = tf.ensure_shape(records, [local_rows])
        mask = index >= 0
        if serialized:
            # Parse only real records; padding stays an empty string.
            parsed = _image_bytes_in_graph(
                tf.boolean_mask(records, mask), serialized=True
            )
            records = tf.tensor_scatter_nd_update(
                records, tf.where(mask), parsed
            )
        return {"encoded": records, "mask": mask, "index": index}

    def decode(example):
        image = tf.cond(
            example["mask"],
            lambda: augment.resize(
                augment.decode_image(example["encoded"]),
                height=height,
                width=width,
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

    ds = tf.data.Dataset.from_tensor_slices(local)
    ds = ds.map(fetch_in_graph, num_parallel_calls=2, deterministic=True)
    ds = ds.unbatch()
    ds = ds.map(
        decode, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    ds = ds.batch(local_rows, drop_remainder=True)
    ds = ds.map(normalize, num_parallel_calls=2, deterministic=True)
    return ds.prefetch(prefetch)
