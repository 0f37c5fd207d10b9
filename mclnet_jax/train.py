"""The run, top to bottom: train MCLNet, evaluate it, write what it found.

`train_and_evaluate(config, workdir)` reads in the order the run happens: data
(the dataset prepared once, each split opened and its metadata read once),
model and optimisers, shapes and shardings (the state traced, never computed,
for restoring), the evaluators of `config.evals` (built once over one feature
store), restore (the newest intact checkpoint, else a fresh state), the loop
(the jitted step of `train_step.py` on a ("data",) mesh, one console line per
interval, TensorBoard, periodic evaluations, the best checkpoint by validation,
checkpoints that are never non-finite, SIGTERM) and the final evaluations into
`results*.{json,txt}`. `evaluate.py` runs the at-end evaluators (and the
figures) on a checkpoint of the workdir with the same `setup` and `restore`
(docs/training.md "Outputs, checkpoints and resume").
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from data_pipeline import constants, datasets, records, train_pipeline
from mclnet_jax import (
    checkpointing,
    config_checks,
    console,
    errors,
    platform,
    sharding,
    train_step,
)
from mclnet_jax import workdir as workdir_lib
from mclnet_jax.evaluators import batch_stats, registry
from mclnet_jax.evaluators import common as eval_common
from mclnet_jax.evaluators import features as features_lib
from mclnet_jax.evaluators import results as results_lib
from mclnet_jax.models import mclnet as mclnet_model


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a run sets up before its first step, built in one go."""

    mesh: jax.sharding.Mesh
    model: mclnet_model.MCLNet
    step_fn: train_step.StepFn  # Jitted; compiled at the first step.
    steps_per_epoch: int
    num_classes: int
    abstract_state: train_step.TrainState  # Shapes and dtypes only.
    state_sharding: Any  # A TrainState of NamedShardings.
    checkpointer: checkpointing.Checkpointer
    init_state: Callable[[], train_step.TrainState]  # A fresh state.
    train_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
    evaluators: dict[str, eval_common.Evaluator]  # Over one FeatureStore.
    dataset: str  # What it trains on (`registry.dataset_name`).


def setup(
    config: ml_collections.ConfigDict, workdir: str, *, label: str = "final"
) -> Run:
    """Data, model, optimisers, shapes, shardings, checkpointer, evaluators.

    Raises:
      datasets.DatasetUnavailableError: the dataset folder is missing.
      ConfigurationError: `config.model` does not describe a model.
    """
    if train_step.compute_dtype(config) == jnp.float64:
        if not jax.config.jax_enable_x64:
            logging.warning(
                "config.model.dtype=float64: enabling jax_enable_x64 "
                "process-wide (parity checks only; slow)."
            )
        jax.config.update("jax_enable_x64", True)
    if not jax.distributed.is_initialized():
        sharding.maybe_initialize_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    dc = config.data

    # -- Data: each dataset prepared once, each split opened once; an
    # evaluator with `data` reads another dataset (cross-dataset).
    builder = _prepared_builder(dc, workdir)
    train_source = records.open_source(builder, dc.train_split)
    train_metadata = records.read_metadata(train_source)
    sources = {}
    for entry in config.evals.values():
        key = registry.source_key(entry)
        if key not in sources:
            other = "data" in entry
            sources[key] = records.open_source(
                _prepared_builder(registry.entry_data(entry, dc), workdir)
                if other
                else builder,
                entry.split,
            )

    def train_batches(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        return datasets.train_batches(
            config,
            train_source,
            metadata=train_metadata,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    # -- Model and optimisers.
    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(
        per_modality_batch=dc.num_identities * dc.num_instances, mesh=mesh
    )
    steps_per_epoch = dc.steps_per_epoch or (
        train_pipeline.train_steps_per_epoch(
            train_metadata,
            num_identities=dc.num_identities,
            num_instances=dc.num_instances,
        )
    )
    num_classes = train_metadata.num_classes
    model = train_step.make_model(config, num_classes=num_classes)
    tx, schedule, mcm_tx = train_step.make_optimizers(
        config, steps_per_epoch=steps_per_epoch
    )

    # -- Shapes and shardings: the state traced once, nothing computed.
    def init_state(load_pretrained: bool = True) -> train_step.TrainState:
        return train_step.init_state(
            config,
            model=model,
            num_classes=num_classes,
            num_cameras=constants.NUM_CAMERAS[dc.dataset],
            tx=tx,
            mcm_tx=mcm_tx,
            load_pretrained=load_pretrained,
        )

    abstract_state = jax.eval_shape(lambda: init_state(load_pretrained=False))
    replicated = sharding.replicated(mesh)
    state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
    step_fn = train_step.jit_train_step(
        train_step.make_train_step(
            config, model=model, tx=tx, schedule=schedule, mcm_tx=mcm_tx
        ),
        mesh=mesh,
        state_sharding=state_sharding,
    )

    # -- Evaluators: built once; every split embedded once per state.
    checkpoint_dir = os.path.join(workdir, workdir_lib.LATEST_DIR)
    store = features_lib.FeatureStore(
        {
            split: features_lib.open_split(
                source,
                batch_size=dc.eval_batch_size,
                image_size=tuple(dc.image_size),
            )
            for split, source in sources.items()
        },
        predict_fn=features_lib.make_predict_fn(model, mesh=mesh),
        variables_fn=lambda state: batch_stats.evaluation_variables(
            model,
            state,
            num_batches=config.eval.precise_bn_batches,
            train_batches=train_batches,
            mesh=mesh,
        ),
        describe=lambda state: (
            f"the model of step {int(jax.device_get(state.step))} "
            f"(checkpoints under {checkpoint_dir})"
        ),
        flip=config.eval.flip,
    )
    evaluators = registry.build(
        config.evals,
        store=store,
        sources=sources,
        image_size=tuple(dc.image_size),
        batch_size=dc.eval_batch_size,
        builder_config=dc.builder_config,
        workdir=workdir,
        label=label,
        aqe=eval_common.aqe_params(config.eval),
        sysu_rand_perm=config.eval.sysu_rand_perm,
        dataset=registry.dataset_name(dc),
    )
    return Run(
        mesh=mesh,
        model=model,
        step_fn=step_fn,
        steps_per_epoch=steps_per_epoch,
        num_classes=num_classes,
        abstract_state=abstract_state,
        state_sharding=state_sharding,
        checkpointer=checkpointing.Checkpointer(
            workdir,
            keep=config.checkpoint.keep,
            best_metric=config.checkpoint.best_metric,
        ),
        train_batches=train_batches,
        evaluators=evaluators,
        init_state=init_state,
        dataset=registry.dataset_name(dc),
    )


def _prepared_builder(data_config: ml_collections.ConfigDict, workdir: str):
    """A dataset's TFDS builder, prepared by process 0 first: hosts building
    the same records at once would race on TFDS's final rename."""
    if jax.process_index() == 0:
        builder = datasets.open_builder(data_config, workdir, process_index=0)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(
            f"mclnet_jax: {data_config.dataset} prepared"
        )
    if jax.process_index() > 0:
        builder = datasets.open_builder(
            data_config, workdir, process_index=jax.process_index()
        )
    return builder


def restore(
    run: Run, *, which: str = checkpointing.LATEST, init: bool = True
) -> train_step.TrainState:
    """The newest intact checkpointed state (`which`), else a fresh one
    (`init`: a run that trains on, which also sets damaged newer steps
    aside) or FileNotFoundError (without `init`: read only).

    Raises:
      NoIntactCheckpointError: checkpoints exist, none is intact.
    """
    ckpt = run.checkpointer
    if which == checkpointing.BEST:
        state = ckpt.restore_best(run.abstract_state, run.state_sharding)
    else:
        state = ckpt.restore_latest(
            run.abstract_state, run.state_sharding, set_aside=init
        )
    if state is None and init:
        return jax.device_put(run.init_state(), run.state_sharding)
    if state is None:
        raise FileNotFoundError(
            f"No {which} checkpoint under {ckpt.directory(which)}; train "
            "first with --mode=train and the same --workdir"
            + (
                " and a validation evaluator (config.evals.val, "
                "config.checkpoint.best_metric)"
                if which == checkpointing.BEST
                else ""
            )
            + "."
        )
    return state


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
    """Trains per `config`, checkpoints into `workdir`, evaluates at the end.

    Resumes from the latest checkpoint in `workdir/checkpoints` if present;
    the data stream continues at the restored step.

    Returns:
      What `results.json` holds (the "test" evaluator's results; {} without
      one), or {"stopped_at_step": n} after a SIGTERM.

    Raises:
      NonFiniteLossError: a loss or parameter became NaN/inf.
      datasets.DatasetUnavailableError: the dataset folder is missing.
      ConfigurationError: e.g. a ResNet-50 without `init.pretrained`
        (checked before any data is built); ConfigChangedError: resuming
        with a changed config; WorkdirError: another run holds the workdir.
      NoIntactCheckpointError: every checkpoint of the workdir is damaged.
      DiskFullError: no space left for a checkpoint.
    """
    problem = config_checks.initialisation_problem(config)
    if problem:
        raise errors.ConfigurationError(problem)
    if not jax.distributed.is_initialized():
        sharding.maybe_initialize_distributed(config)
    # One run per workdir (process 0 holds it for all); a resumed run's
    # config is checked before anything is written.
    with workdir_lib.hold(workdir, lead=jax.process_index() == 0):
        config_checks.check_resume(config, workdir)
        run = setup(config, workdir)
        try:
            return _train(config, workdir, run)
        finally:
            # Stops orbax's threads on every way out: a failed save must
            # not leave them to fail again at interpreter exit.
            run.checkpointer.close()


def _train(
    config: ml_collections.ConfigDict, workdir: str, run: Run
) -> dict[str, Any]:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, workdir_lib.CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    total_steps = config.num_epochs * run.steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    state = restore(run)
    start_step = int(state.step)
    logging.info(
        "%s at step %d of %d (%d steps per epoch).",
        "Resuming" if start_step else "Starting",
        start_step,
        total_steps,
        run.steps_per_epoch,
    )
    step_fn = run.step_fn
    writer = _writer(workdir)
    progress = console.Progress(
        total_steps=total_steps,
        steps_per_epoch=run.steps_per_epoch,
        # Visible and infrared, and CAJ's channel-exchanged visible view.
        images_per_step=(3 if config.data.channel_exchange else 2)
        * config.data.num_identities
        * config.data.num_instances,
        start_step=start_step,
    )
    ckpt = run.checkpointer
    # "<evaluator>/<path in its summary>" (config_checks: a protocol entry).
    selects = (config.checkpoint.best_metric or "").split("/")[0]
    metrics = None
    logged = {}  # The last logged training metrics, for results.json.
    train_iter = run.train_batches(start_step)
    # Closing the stream on any exit stops its prefetch threads, which could
    # otherwise keep a failed run from exiting.
    with contextlib.closing(writer), contextlib.closing(train_iter):
        with sharding.Preemption() as preemption:
            for step in range(start_step, total_steps):
                batch = sharding.global_batch(next(train_iter), run.mesh)
                if step == start_step:
                    # Compile first, then give what the compiler freed back
                    # to the OS before the step needs its own memory.
                    step_fn = step_fn.lower(state, batch).compile()
                    platform.release_host_memory()
                    progress.restart(step)
                state, metrics = step_fn(state, batch)
                done = step + 1
                if done % config.log_every_steps == 0 or done == total_steps:
                    metrics = jax.tree.map(float, jax.device_get(metrics))
                    train_step.check_finite(metrics, done)
                    logged = {"step": done, **metrics}
                    speed = progress.report(done, metrics)
                    writer.write_scalars(done, {**metrics, **speed})
                # Periodic evaluations; the best checkpoint by the one
                # evaluator `checkpoint.best_metric` names (validation).
                for name, evaluator in run.evaluators.items():
                    if evaluator.due(done, final=False):
                        writer.write_scalars(done, dict(evaluator.run(state)))
                        if name == selects:
                            summary = evaluator.results(state).summary()
                            ckpt.save_best(done, state, {name: summary})
                        progress.restart(done)  # Images/s of training only.
                stop = sharding.agreed(preemption.requested)
                if (
                    done % config.checkpoint.every_steps == 0
                    or done == total_steps
                    or stop
                ):
                    if metrics is not None:
                        train_step.check_finite(jax.device_get(metrics), done)
                    ckpt.save(done, state)
                if stop:
                    ckpt.wait()
                    logging.warning(
                        "Stopped at step %d on SIGTERM; rerun the same "
                        "command to resume.",
                        done,
                    )
                    return {"stopped_at_step": done}
            ckpt.wait()
        return final_evaluations(
            run, state, workdir, writer=writer, train_metrics=logged
        )


def final_evaluations(
    run: Run,
    state: train_step.TrainState,
    workdir: str,
    *,
    writer=None,
    suffix: str = "",
    figures: bool = True,
    train_metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Runs the at-end evaluators on `state` (`figures`: those too).

    The "test" evaluator writes `results<suffix>.{json,txt}`, any other
    protocol evaluator `results_<name><suffix>`.

    Returns:
      The dict of the "test" results file ({} without a "test" evaluator).
    """
    step = int(state.step)
    out = {}
    for name, evaluator in run.evaluators.items():
        protocol = isinstance(evaluator, eval_common.ProtocolEvaluator)
        if not evaluator.due(step, final=True) or not (protocol or figures):
            continue
        values = dict(evaluator.run(state))
        if writer is not None:
            writer.write_scalars(step, values)
        if protocol:
            stem = "results" if name == "test" else f"results_{name}"
            written = results_lib.write(
                workdir,
                evaluator.results(state),
                # Raw pixels are no training step's.
                step=0 if evaluator.kind == "pixels" else step,
                name=stem + suffix,
                train_metrics=train_metrics if name == "test" else None,
                dataset=evaluator.dataset,
                trained_on=run.dataset,
            )
            out = written if name == "test" else out
    return out


# -- The loop's helpers.


def _writer(workdir: str):
    """TensorBoard events of every scalar (process 0; others write none)."""
    # Imported here: clu's writers import Keras (seconds), which the
    # evaluate, analyze and export modes never need.
    from clu import metric_writers

    if jax.process_index() > 0:
        return metric_writers.MultiWriter([])
    return metric_writers.AsyncWriter(
        metric_writers.SummaryWriter(
            os.path.join(workdir, workdir_lib.TENSORBOARD_DIR)
        )
    )
