"""Orbax checkpoints of the full training state: latest for resume, best apart.

Layout under the workdir:

  checkpoints/<step>/       the latest `keep` states (periodic, final, and on
                            SIGTERM); a run restarted with the same command
                            resumes from the newest one.
  checkpoints_best/<step>/  the single best state by the validation metric,
                            plus best.json {"step", "metric", "value"}.

The two are separate managers on purpose: orbax's `max_to_keep` combined with
a `best_fn` keeps the *best* checkpoints and may delete the latest one, which
would break resume. A checkpoint is only ever written for a finite state (the
caller checks; see `train.py`), and orbax commits a step
atomically, so a run killed mid-save resumes from the previous complete one.

`restore_model_variables` reads just the network of a workdir's checkpoint
(for feature extraction and export): no dataset, no optimiser state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

LATEST_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"


def _lookup(tree: Mapping[str, Any], path: str) -> float:
    """tree["a"]["b"] for path "a/b" (the metric used to pick the best)."""
    node = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(
                f"checkpoint.best_metric {path!r} not found in the validation "
                f"results (keys at this level: "
                f"{sorted(node) if isinstance(node, Mapping) else node!r})."
            )
        node = node[part]
    return float(node)


class Checkpointer:
    """Saves and restores `train_step.TrainState` in a workdir (module doc)."""

    def __init__(
        self, workdir: str, *, keep: int = 2, best_metric: str | None = None
    ):
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {keep}.")
        self._workdir = os.path.abspath(workdir)
        self._best_metric = best_metric
        self._latest = ocp.CheckpointManager(
            self.directory("latest"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self._best = None
        self._best_value = None
        if best_metric:
            self._best = ocp.CheckpointManager(
                self.directory("best"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True
                ),
            )
            info = self._read_best_info()
            if info is not None:
                self._best_value = info["value"]

    def directory(self, which: str) -> str:
        return os.path.join(
            self._workdir, LATEST_DIR if which == "latest" else BEST_DIR
        )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(self, step: int, state) -> None:
        """Saves `state` as step `step` (asynchronously; see `wait`)."""
        self._latest.save(step, args=ocp.args.StandardSave(state))

    def wait(self) -> None:
        self._latest.wait_until_finished()
        if self._best is not None:
            self._best.wait_until_finished()

    def _restore(self, manager, step, target, shardings):
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            target,
            shardings,
        )
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, target, shardings):
        """The newest saved state laid out like `target`, or None."""
        step = self._latest.latest_step()
        if step is None:
            return None
        logging.info("Restoring %s step %d.", self.directory("latest"), step)
        return self._restore(self._latest, step, target, shardings)

    def restore_best(self, target, shardings):
        """The best state by the validation metric, or None."""
        manager = self._best or ocp.CheckpointManager(
            self.directory("best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        )
        step = manager.latest_step()
        if step is None:
            return None
        return self._restore(manager, step, target, shardings)

    def save_best(
        self, step: int, state, val_results: Mapping[str, Any]
    ) -> bool:
        """Saves `state` if its validation metric beats the best so far.

        Higher is better (rank-1 / mAP / mINP). Only validation results may
        be passed here; the test split never selects a model.

        Returns:
          True if it was the new best.
        """
        if self._best is None:
            return False
        value = _lookup(val_results, self._best_metric)
        if self._best_value is not None and value <= self._best_value:
            return False
        self._best.save(step, args=ocp.args.StandardSave(state), force=True)
        self._best.wait_until_finished()
        self._best_value = value
        if jax.process_index() == 0:
            with open(
                os.path.join(self.directory("best"), "best.json"), "w"
            ) as f:
                json.dump(
                    {"step": step, "metric": self._best_metric, "value": value},
                    f,
                )
        logging.info(
            "New best %s = %.4f at step %d.", self._best_metric, value, step
        )
        return True

    def _read_best_info(self):
        path = os.path.join(self.directory("best"), "best.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)


def restore_model_variables(
    workdir: str, *, which: str = "latest"
) -> tuple[dict[str, Any], int]:
    """The network's variables in a workdir's newest (or best) checkpoint.

    Reads only `params["model"]` and `batch_stats` of the saved
    `train_step.TrainState` (not the optimiser state, the modality classifier or
    the centers), with the shapes stored in the checkpoint, so neither the
    dataset nor the number of classes needs to be known: the classifier's
    width is `variables["params"]["classifier"]["kernel"].shape[-1]`.

    Args:
      workdir: a training workdir (holds checkpoints/ or checkpoints_best/).
      which: "latest" or "best".

    Returns:
      ({"params": ..., "batch_stats": ...} of numpy arrays on the host, the
      checkpoint's step).

    Raises:
      ValueError: `which` is not "latest"/"best", or the checkpoint is not a
        training state.
      FileNotFoundError: no such checkpoint in the workdir.
    """
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")
    directory = os.path.join(
        os.path.abspath(workdir), LATEST_DIR if which == "latest" else BEST_DIR
    )
    hint = (
        "train first (python -m mclnet_jax.main --mode=train) with this "
        "--workdir"
        + (
            ", a validation split (config.data.val_split) and "
            "config.checkpoint.best_metric, or use --checkpoint=latest"
            if which == "best"
            else ""
        )
    )
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"No {which} checkpoint: {directory} does not exist; {hint}."
        )
    # Only reads: a manager that is never asked to save writes nothing
    # (orbax's read_only=True would do the same, with two warnings).
    manager = ocp.CheckpointManager(
        directory,
        item_handlers=ocp.PyTreeCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(create=False),
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"No {which} checkpoint in {directory}; {hint}."
            )
        metadata = manager.item_metadata(step)
        tree = getattr(metadata, "tree", metadata)
        try:
            wanted = {
                "params": {"model": tree["params"]["model"]},
                "batch_stats": tree["batch_stats"],
            }
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"{directory}/{step} is not an mclnet_jax training "
                "checkpoint (no params/model and batch_stats)."
            ) from e
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted
        )
        # Host numpy arrays: the saved device layout (e.g. 8 GPUs) need not
        # exist where the model is used.
        restore_args = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted
        )
        logging.info("Restoring the network of %s step %d.", directory, step)
        restored = manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=restore_args, partial_restore=True
            ),
        )
    finally:
        manager.close()
    return (
        {
            "params": restored["params"]["model"],
            "batch_stats": restored["batch_stats"],
        },
        int(step),
    )
