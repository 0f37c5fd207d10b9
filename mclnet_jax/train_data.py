"""The data side of a training run: datasets, streams and evaluation, by config.

`prepare(config, workdir)` turns `config.data` / `config.eval` into a
`RunData`: the prepared TFDS builder (generating the synthetic dataset first
when the config asks), the training stream of this host's rows from any
step, and the evaluation of a split with the dataset's protocol (SYSU-MM01:
infrared queries against single-shot visible galleries, 10 trials; RegDB:
both directions of the configured trial).

Missing or malformed dataset folders raise `DatasetUnavailableError`, whose
message names the expected path and layout and how to obtain the data; the
CLI prints it instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from mclnet_jax import evaluate as evaluate_lib
from mclnet_jax import rerank as rerank_lib
from mclnet_jax import sharding

# Where the real datasets are looked for when config.data.manual_dir is None.
DEFAULT_MANUAL_DIRS = {
    "sysu_mm01": os.path.join("~", "datasets", "SYSU-MM01"),
    "regdb": os.path.join("~", "datasets", "RegDB"),
}
NUM_CAMERAS = {"sysu_mm01": 6, "regdb": 2}
_COMPLETE_MARKER = ".generation_complete"


class DatasetUnavailableError(RuntimeError):
    """The dataset folder is missing or malformed (message says what to do)."""


def _builder_module(dataset: str):
    # Imported lazily: TFDS and TensorFlow are heavy and only needed here.
    if dataset == "sysu_mm01":
        from data_pipeline.sysu_mm01 import sysu_mm01  # pylint: disable=g-import-not-at-top,line-too-long

        return sysu_mm01
    if dataset == "regdb":
        from data_pipeline.regdb import regdb  # pylint: disable=g-import-not-at-top

        return regdb
    raise ValueError(
        f"config.data.dataset must be 'sysu_mm01' or 'regdb', got {dataset!r}."
    )


def _generate_synthetic(config, workdir: str) -> str:
    """Generates the synthetic dataset under the workdir once; returns it."""
    from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top

    syn = config.data.synthetic
    root = os.path.join(workdir, "synthetic_" + config.data.dataset)
    if os.path.exists(os.path.join(root, _COMPLETE_MARKER)):
        return root
    kwargs = dict(syn.generator)
    if jax.process_index() == 0:
        logging.info(
            "Generating the synthetic %s dataset in %s.",
            config.data.dataset,
            root,
        )
        if config.data.dataset == "sysu_mm01":
            synthetic.generate_sysu(root, overwrite=True, **kwargs)
        else:
            synthetic.generate_regdb(root, overwrite=True, **kwargs)
        with open(os.path.join(root, _COMPLETE_MARKER), "w") as f:
            f.write("ok\n")
    return root


def open_builder(config, workdir: str):
    """The prepared TFDS builder of `config.data` (preparing it if needed).

    Raises:
      DatasetUnavailableError: with the expected path and instructions.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    from data_pipeline import layouts  # pylint: disable=g-import-not-at-top

    # Progress bars interleave badly with the training log.
    tfds.disable_progress_bar()
    dc = config.data
    module = _builder_module(dc.dataset)
    data_dir = dc.data_dir
    if dc.get("synthetic"):
        manual_dir = _generate_synthetic(config, workdir)
        data_dir = data_dir or os.path.join(workdir, "tfds")
    else:
        manual_dir = os.path.expanduser(
            dc.manual_dir or DEFAULT_MANUAL_DIRS[dc.dataset]
        )
    try:
        return module.prepare(
            manual_dir=manual_dir, data_dir=data_dir, config=dc.builder_config
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


@dataclasses.dataclass
class RunData:
    """What the training loop needs from the data (see module docstring).

    Attributes:
      num_classes: identities of the training split.
      num_cameras: cameras of the dataset (CCA centers).
      steps_per_epoch: the release's epoch length for this split and batch.
      has_val: whether a validation split is configured.
      train_iterator: start_step -> iterator of this host's batches.
      evaluate: (model, state, split) -> evaluate.EvaluationResults.
    """

    num_classes: int
    num_cameras: int
    steps_per_epoch: int
    has_val: bool
    train_iterator: Callable[..., Iterator[dict[str, np.ndarray]]]
    evaluate: Callable[..., Any]
    raw_pixel_baseline: Callable[[str], Any]


def train_augment(data_config):
    """config.data -> the training augmentation (input_pipeline.TrainAugment).

    `random_grey` is ours (not in the paper or the release); 0 by default.
    """
    from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top

    return input_pipeline.TrainAugment(
        padding=data_config.pad,
        erasing_probability=data_config.random_erasing,
        grey_probability=data_config.get("random_grey", 0.0),
    )


def prepare(config, workdir: str) -> RunData:
    """Builds the dataset and returns the run's data hooks."""
    from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top

    dc = config.data
    builder = open_builder(config, workdir)
    train_source = input_pipeline.open_source(builder, dc.train_split)
    metadata = input_pipeline.read_metadata(train_source)
    steps_per_epoch = input_pipeline.train_steps_per_epoch(
        metadata,
        num_identities=dc.num_identities,
        num_instances=dc.num_instances,
    )
    augmentation = train_augment(dc)

    def train_iterator(*, start_step: int):
        stream = input_pipeline.train_iterator(
            train_source,
            seed=config.seed,
            num_identities=dc.num_identities,
            num_instances=dc.num_instances,
            image_size=tuple(dc.image_size),
            start_step=start_step,
            augmentation=augmentation,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            metadata=metadata,
        )
        for step, batch in enumerate(stream, start=start_step):
            # The stream is a pure function of (seed, step): check it is the
            # step we are about to train on (resume correctness).
            got = batch.pop("step", None)
            if got is not None and int(got) != step:
                raise RuntimeError(
                    f"Data stream at step {got}, expected {step}."
                )
            yield batch

    def evaluate(model, state, *, split: str):
        source = input_pipeline.open_source(builder, split)
        test_meta = evaluate_lib.read_test_metadata(source)
        batches_fn = evaluate_lib.make_batches_fn(
            source,
            batch_size=dc.eval_batch_size,
            image_size=tuple(dc.image_size),
        )
        embed_fn = make_embed_fn(model, state)
        return _run_protocol(config, embed_fn, batches_fn, test_meta)

    def raw_pixel_baseline(split: str):
        """The protocol on raw (normalised) pixels: a no-learning floor."""
        source = input_pipeline.open_source(builder, split)
        test_meta = evaluate_lib.read_test_metadata(source)
        batches_fn = evaluate_lib.make_batches_fn(
            source,
            batch_size=dc.eval_batch_size,
            image_size=tuple(dc.image_size),
        )

        def embed_fn(images, modality):
            del modality
            flat = np.asarray(images, np.float32).reshape(len(images), -1)
            return {"pixels": flat}

        return _run_protocol(
            config, embed_fn, batches_fn, test_meta, feature_names=("pixels",)
        )

    return RunData(
        num_classes=metadata.num_classes,
        num_cameras=NUM_CAMERAS[dc.dataset],
        steps_per_epoch=steps_per_epoch,
        has_val=bool(dc.val_split),
        train_iterator=train_iterator,
        evaluate=evaluate,
        raw_pixel_baseline=raw_pixel_baseline,
    )


def rerank_params(eval_config) -> rerank_lib.RerankParams | None:
    """config.eval.rerank{,_k1,_k2,_lambda} -> RerankParams, None when off."""
    if not eval_config.get("rerank"):
        return None
    defaults = rerank_lib.RerankParams()
    try:
        return rerank_lib.RerankParams(
            k1=eval_config.get("rerank_k1", defaults.k1),
            k2=eval_config.get("rerank_k2", defaults.k2),
            lambda_value=eval_config.get(
                "rerank_lambda", defaults.lambda_value
            ),
        )
    except ValueError as e:
        raise ValueError(f"config.eval.rerank_*: {e}") from None


def _run_protocol(
    config,
    embed_fn,
    batches_fn,
    test_meta,
    feature_names=evaluate_lib.FEATURE_NAMES,
):
    ec = config.eval
    # With re-ranking on, results hold the plain and the "+rerank" rows.
    rerank = rerank_params(ec)
    if ec.protocol == "sysu":
        return evaluate_lib.run_sysu(
            embed_fn,
            batches_fn=batches_fn,
            metadata=test_meta,
            feature_names=feature_names,
            modes=tuple(ec.modes),
            trials=tuple(range(ec.num_trials)),
            rerank=rerank,
        )
    if ec.protocol == "regdb":
        trial = int(config.data.builder_config.split("_")[-1])
        return evaluate_lib.run_regdb(
            embed_fn,
            trials={trial: (batches_fn, test_meta)},
            feature_names=feature_names,
            rerank=rerank,
        )
    raise ValueError(
        f"config.eval.protocol must be 'sysu' or 'regdb', got {ec.protocol!r}."
    )


def make_embed_fn(model, state) -> Callable[[np.ndarray, int], dict]:
    """`embed_fn(images [B, H, W, 3], modality) -> {"pool", "bn"}` on the mesh.

    Every process passes the same full batch; it is sharded over the devices
    and the features come back replicated, so each host sees all of them.
    B must be divisible by the number of devices.
    """
    return evaluate_lib.make_model_embed_fn(
        model,
        {"params": state.params["model"], "batch_stats": state.batch_stats},
        mesh=sharding.make_mesh(),
    )
