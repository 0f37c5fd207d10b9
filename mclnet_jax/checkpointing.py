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
caller checks; see `train._save_checked`), and orbax commits a step
atomically, so a run killed mid-save resumes from the previous complete one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from absl import logging
import jax
import orbax.checkpoint as ocp

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
                f"{sorted(node) if isinstance(node, Mapping) else node!r}).")
        node = node[part]
    return float(node)


class Checkpointer:
    """Saves and restores `train.TrainState` in a workdir (see module doc)."""

    def __init__(self, workdir: str, *, keep: int = 2,
                 best_metric: str | None = None):
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {keep}.")
        self._workdir = os.path.abspath(workdir)
        self._best_metric = best_metric
        self._latest = ocp.CheckpointManager(
            self.directory("latest"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                 create=True))
        self._best = None
        self._best_value = None
        if best_metric:
            self._best = ocp.CheckpointManager(
                self.directory("best"),
                options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                                     create=True))
            info = self._read_best_info()
            if info is not None:
                self._best_value = info["value"]

    def directory(self, which: str) -> str:
        return os.path.join(self._workdir,
                            LATEST_DIR if which == "latest" else BEST_DIR)

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
            target, shardings)
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
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
        step = manager.latest_step()
        if step is None:
            return None
        return self._restore(manager, step, target, shardings)

    def save_best(self, step: int, state,
                  val_results: Mapping[str, Any]) -> bool:
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
            with open(os.path.join(self.directory("best"), "best.json"),
                      "w") as f:
                json.dump({"step": step, "metric": self._best_metric,
                           "value": value}, f)
        logging.info("New best %s = %.4f at step %d.", self._best_metric,
                     value, step)
        return True

    def _read_best_info(self):
        path = os.path.join(self.directory("best"), "best.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)
