"""What a training run needs from its data, by config: glue for the loop.

`prepare(config, workdir)` opens the run's dataset
(`data_pipeline.datasets`) and returns a `RunData`: the training split's
sizes, this host's training stream from any step, and the evaluation of a
split with the evaluator of `config.eval` (`evaluators.common.from_config`)
on the mesh of every device.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipeline import constants, datasets, records, train_pipeline
from mclnet_jax import sharding
from mclnet_jax.evaluators import batch_stats as batch_stats_lib
from mclnet_jax.evaluators import common as eval_common
from mclnet_jax.evaluators import features as features_lib
from mclnet_jax.evaluators import results as results_lib


@dataclasses.dataclass
class RunData:
    """What the training loop needs from the data.

    Attributes:
      num_classes: identities of the training split.
      num_cameras: cameras of the dataset (CCA centers).
      steps_per_epoch: the release's epoch length for this split and batch.
      has_val: whether a validation split is configured.
      train_iterator: (start_step=) -> iterator of this host's batches.
      evaluate: (model, state, split=) -> `EvaluationResults` of the config's
        protocol on that split, with `state.model_variables()`.
      raw_pixel_baseline: split -> `EvaluationResults` of the protocol on
        the normalised pixels (a no-learning floor).
    """

    num_classes: int
    num_cameras: int
    steps_per_epoch: int
    has_val: bool
    train_iterator: Callable[..., Iterator[dict[str, np.ndarray]]]
    evaluate: Callable[..., results_lib.EvaluationResults]
    raw_pixel_baseline: Callable[[str], results_lib.EvaluationResults]


def _open_builder_once(config: ml_collections.ConfigDict, workdir: str):
    """Process 0 generates and builds the data; the others then open it.

    Hosts building the same records at once would race on TFDS's final
    rename, so the others wait at a barrier until process 0 is done.
    """
    if jax.process_count() == 1:
        return datasets.open_builder(config, workdir, process_index=0)
    from jax.experimental import multihost_utils

    builder = None
    if jax.process_index() == 0:
        builder = datasets.open_builder(config, workdir, process_index=0)
    multihost_utils.sync_global_devices("mclnet_jax: data prepared")
    if builder is None:
        builder = datasets.open_builder(
            config, workdir, process_index=jax.process_index()
        )
    return builder


def prepare(config: ml_collections.ConfigDict, workdir: str) -> RunData:
    """Builds the dataset and returns the run's data hooks.

    Raises:
      datasets.DatasetUnavailableError: the dataset folder is missing or
        malformed.
    """
    dc = config.data
    builder = _open_builder_once(config, workdir)
    train_source = records.open_source(builder, dc.train_split)
    metadata = records.read_metadata(train_source)

    def train_iterator(*, start_step: int):
        return datasets.train_batches(
            config,
            train_source,
            metadata=metadata,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def evaluate(model, state: Any, *, split: str):
        mesh = sharding.make_mesh()
        variables = batch_stats_lib.evaluation_variables(
            config, model, state, builder=builder, mesh=mesh
        )
        predict_fn = features_lib.make_predict_fn(model, mesh=mesh)
        source = records.open_source(builder, split)
        evaluator = eval_common.from_config(config, predict_fn, source)
        return evaluator.run(
            variables,
            model=(
                f"the model of step {int(state.step)} (checkpoints under "
                f"{os.path.join(workdir, 'checkpoints')})"
            ),
        )

    def raw_pixel_baseline(split: str):
        source = records.open_source(builder, split)
        evaluator = eval_common.from_config(
            config,
            features_lib.raw_pixels,
            source,
            feature_names=features_lib.RAW_PIXEL_FEATURES,
        )
        return evaluator.run(None)

    return RunData(
        num_classes=metadata.num_classes,
        num_cameras=constants.NUM_CAMERAS[dc.dataset],
        steps_per_epoch=train_pipeline.train_steps_per_epoch(
            metadata,
            num_identities=dc.num_identities,
            num_instances=dc.num_instances,
        ),
        has_val=bool(dc.val_split),
        train_iterator=train_iterator,
        evaluate=evaluate,
        raw_pixel_baseline=raw_pixel_baseline,
    )
