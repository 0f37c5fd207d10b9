"""The tf.data training stream over a random-access split.

Per step: the identity-balanced plan (`sampling`, numpy, per epoch) names the
records, read by index from the split in one Python call; every random choice
is drawn from (seed, step) for the rows of the global batch and this host's
rows kept (`augment.sample_step_params`); decoding (none for raw pixels),
resizing (only to another size than stored), pad + crop and flip run per
image in parallel (uint8); grey, normalisation and erasing (and CAJ's
channel augmentation, when on) run per batch as one XLA computation; with
CAJ's `channel_exchange` the visible records of a step are decoded a second
time, as a third view with draws of its own. So
`make_train_dataset(start_step=s)` yields exactly what an uninterrupted run
yields from step s on, whatever the number of hosts, and only the records of
the steps in flight are in memory.
See the docs/datasets.md "The input pipeline".
"""

import threading
from collections.abc import Iterator

import numpy as np
from absl import logging

from data_pipeline import augment, image_ops, records, sampling
from data_pipeline.tf_setup import tf


class _PlanCache:
    """Epoch plans, computed on demand, a few kept (thread-safe)."""

    def __init__(
        self,
        metadata: records.SplitMetadata,
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
    metadata: records.SplitMetadata,
    *,
    num_identities: int = 8,
    num_instances: int = 4,
) -> int:
    """Steps per epoch of the training stream (the release's epoch length)."""
    return sampling.steps_per_epoch(
        num_visible=metadata.visible_indices.size,
        num_infrared=metadata.infrared_indices.size,
        num_identities=num_identities,
        num_instances=num_instances,
    )


def step_indices(
    metadata: records.SplitMetadata,
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
    metadata: records.SplitMetadata,
    plan: sampling.EpochPlan,
    batch: int,
    rows: slice,
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
    augmentation: augment.TrainAugment | None = None,
    process_index: int = 0,
    process_count: int = 1,
    dtype=tf.float32,
    metadata: records.SplitMetadata | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    prefetch: int = 2,
    jit_compile: bool = True,
) -> tf.data.Dataset:
    """The training stream from `start_step` on, one element per step.

    Args:
      source: the training split's records (`records.open_source`).
      seed: non-negative int; the plan and every augmentation derive from it.
      num_identities: P identities per global batch.
      num_instances: K images per identity and modality.
      image_size: (H, W) of the output images.
      start_step: first global step to produce (resume).
      num_steps: number of steps to produce; None = endless.
      augmentation: `augment.TrainAugment` settings (None: the defaults).
      process_index, process_count: this host and the number of hosts
        (jax.process_index(), jax.process_count()); each host gets rows
        [i * P*K/n, (i+1) * P*K/n) of both modalities of every global batch.
      dtype: tf.float32 or tf.bfloat16 images.
      metadata: `records.read_metadata(source)`, if already at hand.
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
      batch: identity j). With `augmentation.channel_exchange` (CAJ) also
      "visible_exchanged" [P*K/n, H, W, 3]: row r is the record of visible
      row r (same label and camera), augmented independently and then with
      its channels exchanged.
    """
    height, width = image_ops.check_image_size(image_size)
    dtype = image_ops.check_float_dtype(dtype)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if int(start_step) != start_step or start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step!r}.")
    if num_steps is not None and num_steps < 0:
        raise ValueError(f"num_steps must be >= 0 or None, got {num_steps!r}.")
    records.check_source(source)
    storage = records.image_storage(source)
    if augmentation is None:
        augmentation = augment.TrainAugment()
    if not isinstance(augmentation, augment.TrainAugment):
        raise ValueError(
            "augmentation must be a data_pipeline.augment.TrainAugment, got "
            f"{type(augmentation).__name__}."
        )
    if metadata is None:
        metadata = records.read_metadata(source)
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
    # Row of each local image in the global batch [visible; infrared] (then
    # the exchanged visible view, with CAJ's exchange): its augmentation is
    # drawn for that row, so hosts agree whatever their number.
    views = augmentation.num_views
    positions = np.concatenate(
        [
            view * global_rows + np.arange(rows.start, rows.stop)
            for view in range(views)
        ]
    ).astype(np.int64)

    def fetch(step):
        step = int(step)
        index = np.concatenate(
            _plan_rows(metadata, plans(step // spe), step % spe, rows)
        )
        return (
            records.read_records(source, index),
            metadata.label[index].astype(np.int32),
            metadata.camera[index].astype(np.int32),
        )

    def fetch_in_graph(step):
        serialized, labels, cameras = tf.numpy_function(
            fetch, [step], (tf.string, tf.int32, tf.int32), stateful=False
        )
        if views == 3:
            # CAJ's exchanged view: the visible records once more (read once).
            serialized, labels, cameras = (
                tf.concat([t, t[:local_rows]], 0)
                for t in (serialized, labels, cameras)
            )
        size = views * local_rows
        # Every random choice of the step, drawn for the global batch and
        # gathered at this host's rows.
        params = augment.sample_step_params(
            augment.step_seed(seed, step),
            rows=global_rows,
            height=height,
            width=width,
            config=augmentation,
        )
        params = {k: tf.gather(v, positions) for k, v in params.items()}
        return {
            "stored": records.parse_images(
                tf.ensure_shape(serialized, [size]), storage=storage
            ),
            "label": tf.ensure_shape(labels, [size]),
            "camera": tf.ensure_shape(cameras, [size]),
            "step": tf.fill([size], step),
            "params": params,
        }

    def decode(example):
        image = image_ops.decode_and_resize(
            example.pop("stored"), height=height, width=width
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
        ir = slice(local_rows, 2 * local_rows)
        out = {
            "visible": images[:local_rows],
            "infrared": images[ir],
            "visible_labels": batch["label"][:local_rows],
            "infrared_labels": batch["label"][ir],
            "visible_cameras": batch["camera"][:local_rows],
            "infrared_cameras": batch["camera"][ir],
            "step": batch["step"][0],
        }
        if views == 3:
            out["visible_exchanged"] = images[2 * local_rows :]
        return out

    if num_steps is None:
        stop = np.iinfo(np.int64).max
    else:
        stop = start_step + num_steps
    # Plain graph functions: their Python control flow depends only on
    # static shapes and the config, so AutoGraph's conversion (seconds of
    # CPU at every start) would change nothing.
    plain = tf.autograph.experimental.do_not_convert
    ds = tf.data.Dataset.range(int(start_step), int(stop))
    ds = ds.map(plain(fetch_in_graph), num_parallel_calls=2, deterministic=True)
    ds = ds.unbatch()
    ds = ds.map(
        plain(decode), num_parallel_calls=num_parallel_calls, deterministic=True
    )
    ds = ds.batch(views * local_rows, drop_remainder=True)
    ds = ds.map(plain(augment_step), num_parallel_calls=2, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    logging.info(
        "Training stream: %d visible + %d infrared examples, %d identities, "
        "%d steps/epoch, from step %d, host %d/%d with %d rows/view, %d "
        "views.",
        metadata.visible_indices.size,
        metadata.infrared_indices.size,
        metadata.num_classes,
        spe,
        start_step,
        process_index,
        process_count,
        local_rows,
        views,
    )
    return ds.prefetch(prefetch)


def train_iterator(source, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """`make_train_dataset(source, **kwargs)` as an iterator of numpy dicts."""
    return make_train_dataset(source, **kwargs).as_numpy_iterator()
