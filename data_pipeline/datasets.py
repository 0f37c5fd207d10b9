"""The dataset of a run, by config: its TFDS builder and training stream.

`open_builder(config.data, workdir)` returns the prepared TFDS builder of
a data config (generating the synthetic dataset under the workdir first when
the config asks for it); `train_batches` is this host's training stream from
any step; `iter_images(config.data, split)` yields a split's images as the
network sees them, before augmentation. Missing or malformed dataset folders
raise `DatasetUnavailableError`, whose message names the expected path, the
layout and how to obtain the data (docs/datasets.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data_pipeline import (
    augment,
    image_ops,
    layouts,
    records,
    synthetic,
    train_pipeline,
)
from data_pipeline.tf_setup import tf

# Where the real datasets are looked for when config.data.manual_dir is None.
DEFAULT_MANUAL_DIRS = {
    "sysu_mm01": os.path.join("~", "datasets", "SYSU-MM01"),
    "regdb": os.path.join("~", "datasets", "RegDB"),
    "llcm": os.path.join("~", "datasets", "LLCM"),
}
_COMPLETE_MARKER = ".generation_complete"


class DatasetUnavailableError(RuntimeError):
    """The dataset folder is missing or malformed (message says what to do)."""


def _builder_module(dataset: str):
    # Imported here: each builder module imports this one.
    if dataset == "sysu_mm01":
        from data_pipeline.sysu_mm01 import sysu_mm01

        return sysu_mm01
    if dataset == "regdb":
        from data_pipeline.regdb import regdb

        return regdb
    if dataset == "llcm":
        from data_pipeline.llcm import llcm

        return llcm
    raise ValueError(
        "config.data.dataset must be 'sysu_mm01', 'regdb' or 'llcm', got "
        f"{dataset!r}."
    )


def generate_synthetic(
    data_config: ml_collections.ConfigDict,
    workdir: str,
    *,
    process_index: int = 0,
) -> str:
    """Generates the synthetic dataset under the workdir once; returns it.

    Only process 0 writes; a marker file records a finished generation, so
    a rerun (or a resumed run) reuses it.
    """
    root = os.path.join(workdir, "synthetic_" + data_config.dataset)
    if os.path.exists(os.path.join(root, _COMPLETE_MARKER)):
        return root
    kwargs = dict(data_config.synthetic.generator)
    if process_index == 0:
        logging.info(
            "Generating the synthetic %s dataset in %s.",
            data_config.dataset,
            root,
        )
        generate = {
            "sysu_mm01": synthetic.generate_sysu,
            "regdb": synthetic.generate_regdb,
            "llcm": synthetic.generate_llcm,
        }.get(data_config.dataset)
        if generate is None:
            raise ValueError(
                "The dataset must be 'sysu_mm01', 'regdb' or 'llcm' "
                f"for synthetic data, got {data_config.dataset!r}."
            )
        generate(root, overwrite=True, **kwargs)
        with open(os.path.join(root, _COMPLETE_MARKER), "w") as f:
            f.write("ok\n")
    return root


def open_builder(
    data_config: ml_collections.ConfigDict,
    workdir: str,
    *,
    process_index: int = 0,
):
    """The prepared TFDS builder of `config.data` (preparing it if needed).

    Args:
      config: the run's config (`config.data`).
      workdir: the run's folder (holds the synthetic dataset and its TFDS
        build when `data_config.synthetic` is set).
      process_index: this host (only host 0 generates synthetic data).

    Raises:
      DatasetUnavailableError: with the expected path and instructions
        (`OutdatedRecordsError` when only an older builder version is
        prepared).
    """
    dc = data_config
    if dc.synthetic:
        manual_dir = generate_synthetic(
            dc, workdir, process_index=process_index
        )
        data_dir = dc.data_dir or os.path.join(workdir, "tfds")
        return prepare_builder(dc, manual_dir=manual_dir, data_dir=data_dir)
    return prepare_builder(dc)


def prepare_builder(
    data_config: ml_collections.ConfigDict,
    *,
    manual_dir: str | None = None,
    data_dir: str | None = None,
):
    """The prepared TFDS builder of a config's `data` field.

    Args:
      data_config: `config.data` (dataset, builder_config, image_format,
        manual_dir, data_dir).
      manual_dir, data_dir: override the config's.

    Raises:
      DatasetUnavailableError: with the expected path and instructions.
    """
    # Progress bars interleave badly with the training log.
    tfds.disable_progress_bar()
    dc = data_config
    module = _builder_module(dc.dataset)
    data_dir = data_dir or dc.data_dir
    manual_dir = os.path.expanduser(
        manual_dir or dc.manual_dir or DEFAULT_MANUAL_DIRS[dc.dataset]
    )
    try:
        return module.prepare(
            manual_dir=manual_dir,
            data_dir=data_dir,
            config=dc.builder_config,
            image_format=dc.image_format,
        )
    except layouts.DatasetLayoutError as e:
        # The layout error already names the path, the layout and the source.
        raise DatasetUnavailableError(
            f"{dc.dataset}: {e}\n(Point --config.data.manual_dir=PATH at "
            "the dataset folder.)"
        ) from None
    except AssertionError:
        # TFDS asserts when `manual_dir` is missing or empty and the records
        # are not built yet; its message repeats the instructions verbosely.
        raise DatasetUnavailableError(
            f"{dc.dataset}: dataset folder not found at {manual_dir!r} (set "
            f"--config.data.manual_dir=PATH).\n"
            f"{module.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        ) from None


def iter_images(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    chunk_size: int = 256,
) -> Iterator[dict[str, Any]]:
    """The images of a split as the network sees them, before augmentation.

    Builds the records first if needed (from `data_config.manual_dir`), then
    reads every example of the split in record order, decodes it and resizes
    it to `data_config.image_size` exactly as the training and evaluation
    pipelines do (no resize when the stored size is that size, as for the
    builders' 288x144 images). Figures and checks against the authors'
    preprocessing use it.

    Args:
      data_config: a config's `data` field (dataset, builder_config,
        image_format, image_size, manual_dir, data_dir), e.g.
        `mclnet_jax.configs.sysu.get_config().data` with `manual_dir` and
        `data_dir` set.
      split: a split of the builder: SYSU-MM01 "train", "train_only",
        "val", "test"; RegDB and LLCM "train", "test".
      chunk_size: records decoded per batch (memory ~ chunk_size images).

    Yields:
      Dicts: "file_name" str (relative to the dataset folder, as stored,
      e.g. "cam1/0001/0001.jpg"); "image" uint8 [H, W, 3]; "identity",
      "camera", "modality" int (`constants.VISIBLE` / `INFRARED`).

    Raises:
      DatasetUnavailableError: the dataset folder is missing or malformed,
        or only outdated records are prepared.
      ValueError: an unknown split.
    """
    # Before a build that may take minutes.
    height, width = image_ops.check_image_size(data_config.image_size)
    builder = prepare_builder(data_config)
    if split not in builder.info.splits:
        raise ValueError(
            f"{builder.name}/{builder.builder_config.name} has no split "
            f"{split!r}; its splits: {sorted(builder.info.splits)}."
        )
    source = records.open_source(builder, split)
    metadata = records.read_metadata(source)
    storage = records.image_storage(source)
    n = len(source)

    def fetch(start):
        stop = min(n, int(start) + chunk_size)
        return records.read_records(source, range(int(start), stop))

    def parse(start):
        serialized = tf.numpy_function(fetch, [start], tf.string)
        return records.parse_images(
            tf.ensure_shape(serialized, [None]), storage=storage
        )

    def decode(stored):
        return image_ops.decode_and_resize(stored, height=height, width=width)

    plain = tf.autograph.experimental.do_not_convert
    ds = tf.data.Dataset.range(0, n, chunk_size)
    ds = ds.map(plain(parse)).unbatch()
    ds = ds.map(
        plain(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    for i, image in enumerate(ds.prefetch(2).as_numpy_iterator()):
        yield {
            "file_name": str(metadata.file_name[i]),
            "image": image,
            "identity": int(metadata.identity[i]),
            "camera": int(metadata.camera[i]),
            "modality": int(metadata.modality[i]),
        }


def train_augment(
    data_config: ml_collections.ConfigDict,
) -> augment.TrainAugment:
    """config.data -> the training augmentation.

    `random_grey` and `random_remap` are ours (not in the paper or the
    release); 0 in the paper's recipes. `channel_exchange`,
    `channel_adaptive_grey` and `channel_erasing` are CAJ's channel
    augmentation (off in the paper's recipes; on in the `mclnet_caj`
    variant).
    """
    return augment.TrainAugment(
        padding=data_config.pad,
        erasing_probability=data_config.random_erasing,
        grey_probability=data_config.random_grey,
        remap_probability=data_config.random_remap,
        channel_exchange=data_config.channel_exchange,
        channel_adaptive_grey=data_config.channel_adaptive_grey,
        channel_erasing=data_config.channel_erasing,
    )


def train_batches(
    config: ml_collections.ConfigDict,
    source,
    *,
    metadata: records.SplitMetadata,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's training batches from `start_step` on, by config.

    Args:
      config: the run's config (`config.seed`, `config.data`).
      source: the training split (`records.open_source`).
      metadata: `records.read_metadata(source)`.
      start_step: the first global step (resume).
      process_index, process_count: this host and the number of hosts.

    Yields:
      The batches of `train_pipeline.make_train_dataset`, without "step".

    Raises:
      RuntimeError: the stream is not at the step expected (the stream is a
        pure function of (seed, step), so this means a resume bug).
    """
    dc = config.data
    stream = train_pipeline.train_iterator(
        source,
        seed=config.seed,
        num_identities=dc.num_identities,
        num_instances=dc.num_instances,
        image_size=tuple(dc.image_size),
        start_step=start_step,
        augmentation=train_augment(dc),
        process_index=process_index,
        process_count=process_count,
        metadata=metadata,
    )
    for step, batch in enumerate(stream, start=start_step):
        got = batch.pop("step")
        if int(got) != step:
            raise RuntimeError(f"Data stream at step {got}, expected {step}.")
        yield batch
