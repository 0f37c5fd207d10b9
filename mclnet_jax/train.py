"""The training loop and its outputs (README "Outputs, checkpoints and resume").

`train_and_evaluate` runs the jitted step of `train_step.py` on a
("data",) mesh, reports progress, ETA and TensorBoard scalars through clu,
saves orbax checkpoints (periodic, final, on SIGTERM; never a non-finite
state), resumes from the latest one with the data stream continuing exactly,
keeps the best checkpoint by the validation split in its own directory, and
finally evaluates on the test split into `results.{json,txt}`.
`evaluate_only` evaluates a workdir's checkpoint (or a release checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from mclnet_jax import (
    checkpointing,
    config_checks,
    platform,
    run_setup,
    sharding,
    train_step,
)
from mclnet_jax import workdir as workdir_lib

TENSORBOARD_DIR = "tensorboard"


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
    """Raises `NonFiniteLossError` naming each NaN/inf metric."""
    bad = {
        k: float(v)
        for k, v in metrics.items()
        if not np.isfinite(np.asarray(v)).all()
    }
    if bad:
        raise train_step.NonFiniteLossError(
            f"Non-finite values at step {step}: {bad}. Training stopped; "
            "this state is not checkpointed (the last checkpoint is the last "
            "finite one). Lower the learning rate (config.optimizer.lr), "
            "check the data, or start from ImageNet weights "
            "(config.model.pretrained): the release's lr diverges from random "
            "initialisation."
        )


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _save_checked(
    ckpt: checkpointing.Checkpointer, step: int, state, metrics
) -> None:
    """Saves only a finite state (a NaN state must never be resumed from)."""
    if metrics is not None:
        check_finite(jax.device_get(metrics), step)
    if not bool(_all_finite(state.params)):
        raise train_step.NonFiniteLossError(
            f"Non-finite parameters at step {step}; not checkpointed."
        )
    ckpt.save(step, state)


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: no handler (tests).
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del frame
        logging.warning("Signal %d: saving a checkpoint and exiting.", signum)
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _agreed(flag: bool) -> bool:
    """True if any process got the signal, so all save and stop together."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def _scalars(tree: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """{"a": {"b": 1.0}} -> {"<prefix>/a/b": 1.0}, numbers only."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {
        f"{prefix}/{k}": float(v)
        for k, v in flat.items()
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
    """Trains per `config`, checkpoints into `workdir`, evaluates at the end.

    Resumes from the latest checkpoint in `workdir/checkpoints` if present;
    the data stream continues at the restored step.

    Returns:
      The final results dict (also written to `workdir/results.json`), or
      {"stopped_at_step": n} after a SIGTERM.

    Raises:
      NonFiniteLossError: a loss or parameter became NaN/inf.
      datasets.DatasetUnavailableError: the dataset folder is missing.
      ConfigurationError: e.g. a ResNet-50 without `model.pretrained`
        (checked before any data is built); ConfigChangedError: resuming
        with a changed config; WorkdirError: another run holds the workdir.
      NoIntactCheckpointError: every checkpoint of the workdir is damaged.
      DiskFullError: no space left for a checkpoint.
    """
    run_setup.check_initialisation(config)
    run_setup.start_distributed(config)
    # One run per workdir (process 0 holds it for all); a resumed run's
    # config is checked before anything is written.
    with workdir_lib.hold(workdir, lead=jax.process_index() == 0):
        config_checks.check_resume(config, workdir)
        run = run_setup.setup(config, workdir)
        try:
            return _train(config, workdir, run)
        finally:
            # Stops orbax's threads on every way out: a failed save must
            # not leave them to fail again at interpreter exit.
            run.checkpointer.close()


def _train(
    config: ml_collections.ConfigDict, workdir: str, run: run_setup.Run
) -> dict[str, Any]:
    """`train_and_evaluate` once the workdir is held and `run` set up."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    total_steps = config.num_epochs * run.steps_per_epoch
    if config.get("max_steps"):
        total_steps = min(total_steps, config.max_steps)
    state = run.restore_or_init(config)
    start_step = int(state.step)
    logging.info(
        "%s at step %d of %d (%d steps per epoch).",
        "Resuming" if start_step else "Starting",
        start_step,
        total_steps,
        run.steps_per_epoch,
    )
    step_fn = train_step.jit_train_step(
        train_step.make_train_step(
            config,
            model=run.model,
            tx=run.tx,
            schedule=run.schedule,
            mcm_tx=run.mcm_tx,
        ),
        mesh=run.mesh,
        state_sharding=run.state_sharding,
    )
    # Imported here: clu's writers import Keras (seconds), which the other
    # modes never need.
    from clu import metric_writers, periodic_actions

    # Only the lead process writes TensorBoard events; all log.
    writer = metric_writers.create_default_writer(
        os.path.join(workdir, TENSORBOARD_DIR),
        just_logging=jax.process_index() > 0,
    )
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps,
        writer=writer,
        every_steps=config.log_every_steps,
        every_secs=None,
    )
    report_progress(start_step)  # Starts its clock; reports nothing.
    ckpt = run.checkpointer
    val_every = config.get("val_every_steps") or 0
    train_iter = run.data.train_iterator(start_step=start_step)
    metrics = None
    logged = {}  # The last logged training metrics, for results.json.
    with contextlib.closing(writer):
        # Closing the stream on any exit stops its prefetch threads, which
        # could otherwise keep a failed run from exiting.
        with _Preemption() as preemption, contextlib.closing(train_iter):
            for step in range(start_step, total_steps):
                batch = sharding.global_batch(next(train_iter), run.mesh)
                if step == start_step:
                    # Compile first, then give what the compiler freed back
                    # to the OS before the step needs its own memory.
                    step_fn = step_fn.lower(state, batch).compile()
                    platform.release_host_memory()
                state, metrics = step_fn(state, batch)
                done = step + 1
                if done % config.log_every_steps == 0 or done == total_steps:
                    metrics = jax.tree.map(float, jax.device_get(metrics))
                    check_finite(metrics, done)
                    logged = {"step": done, **metrics}
                    writer.write_scalars(done, metrics)
                report_progress(done)
                if val_every and run.data.has_val and done % val_every == 0:
                    # Model selection on the validation identities only.
                    with report_progress.timed("validation"):
                        val = run.data.evaluate(
                            run.model, state, split=config.data.val_split
                        ).summary()
                    writer.write_scalars(done, _scalars(val, "val"))
                    ckpt.save_best(done, state, val)
                stop = _agreed(preemption.requested)
                if (
                    done % config.checkpoint.every_steps == 0
                    or done == total_steps
                    or stop
                ):
                    _save_checked(ckpt, done, state, metrics)
                if stop:
                    ckpt.wait()
                    logging.warning(
                        "Stopped at step %d on SIGTERM; rerun the same "
                        "command to resume.",
                        done,
                    )
                    return {"stopped_at_step": done}
            ckpt.wait()
        results = run.data.evaluate(
            run.model, state, split=config.data.test_split
        )
        writer.write_scalars(
            int(state.step), _scalars(results.summary(), "test")
        )
    out = write_results(
        workdir, results, step=int(state.step), train_metrics=logged
    )
    if config.eval.get("raw_pixel_baseline"):
        write_results(
            workdir,
            run.data.raw_pixel_baseline(config.data.test_split),
            step=0,
            name="results_raw_pixels",
        )
    if config.eval.get("figures"):
        _write_figures(config, workdir, run, state, results)
    return out


def _write_figures(
    config: ml_collections.ConfigDict,
    workdir: str,
    run: run_setup.Run,
    state: train_step.TrainState,
    results,
) -> None:
    """Figures into workdir/figures; a failure there never fails the run."""
    from mclnet_jax import analysis

    try:
        analysis.write_figures(
            config, workdir, model=run.model, state=state, results=results
        )
    except Exception:
        logging.exception(
            "Drawing the figures failed (the results are "
            "saved); retry with --mode=analyze."
        )


def evaluate_only(
    config: ml_collections.ConfigDict, workdir: str, *, which: str = "latest"
) -> dict[str, Any]:
    """Restores the latest (or best) checkpoint and runs the test protocol.

    Writes `results_<which>.json` / `.txt` into the workdir. With
    `config.model.release_checkpoint` set, evaluates that checkpoint of the
    authors' release instead (`which` must stay "latest") and writes
    `results_release.{json,txt}` (step 0).
    """
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")
    if config.model.get("release_checkpoint"):
        if which != "latest":
            raise train_step.ConfigurationError(
                "--checkpoint=best does not apply to "
                "config.model.release_checkpoint; drop one of them."
            )
        run = run_setup.setup(config, workdir)
        state = run_setup.release_state(config, run)
        results = run.data.evaluate(
            run.model, state, split=config.data.test_split
        )
        return write_results(workdir, results, step=0, name="results_release")
    run = run_setup.setup(config, workdir)
    try:
        state = run.restore_or_init(config, which=which, init=False)
    finally:
        run.checkpointer.close()  # Only reads; nothing is saved here.
    if state is None:
        raise FileNotFoundError(
            f"No {which} checkpoint under {run.checkpointer.directory(which)}"
            "; train first with --mode=train and the same --workdir"
            + (
                " and a validation split (config.data.val_split, "
                "config.checkpoint.best_metric)"
                if which == "best"
                else ""
            )
            + "."
        )
    results = run.data.evaluate(run.model, state, split=config.data.test_split)
    return write_results(
        workdir, results, step=int(state.step), name=f"results_{which}"
    )


def write_results(
    workdir: str,
    results,
    *,
    step: int,
    name: str = "results",
    train_metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Writes `<name>.json` (per trial, mean, std) and `<name>.txt` (table).

    Args:
      workdir: output folder.
      results: evaluation results (`summary()`, `to_dict()`, `table()`).
      step: the training step the model was taken at.
      name: file stem.
      train_metrics: the last logged training metrics of this process's run
        (empty when it resumed at the end).

    Returns:
      The JSON dict: {"step", "summary": {protocol: {feature: {"mean",
      "std"}}}, "results": per-trial details, "train_metrics"}.
    """
    out = {
        "step": step,
        "summary": results.summary(),
        "results": results.to_dict(),
        "train_metrics": dict(train_metrics or {}),
    }
    table = results.table()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"{name}.json"), "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
        with open(os.path.join(workdir, f"{name}.txt"), "w") as f:
            f.write(f"step {step}\n{table}\n")
    # The evaluator has logged the table already.
    logging.info(
        "Results at step %d written to %s",
        step,
        os.path.join(workdir, name + ".{json,txt}"),
    )
    return out
