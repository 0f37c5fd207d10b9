"""Orbax checkpoints of the full training state: latest for resume, best apart.

Layout under the workdir:

  checkpoints/<step>/       the latest `keep` states (periodic, final, and on
                            SIGTERM); a run restarted with the same command
                            resumes from the newest one.
  checkpoints_best/<step>/  the single best state by the validation metric,
                            plus best.json {"step", "metric", "value"}.

The two are separate managers on purpose: orbax's `max_to_keep` combined with
a `best_fn` keeps the *best* checkpoints and may delete the latest one, which
would break resume. A checkpoint is only ever written for a finite state
(`Checkpointer.save` refuses others), and orbax commits a step atomically, so
a run killed mid-save resumes from the previous complete one.

Each step this process saves gets a manifest (`mclnet_manifest.json` in the
step's folder: every file's size and CRC-32) once orbax has committed it. On
restore, a step whose files no longer match (missing, truncated, corrupted),
or that cannot be read, is reported in one warning and skipped: the newest
intact step is restored. A resumed run moves the damaged steps to
`checkpoints_damaged/` (kept for inspection; they would otherwise collide
with the steps it saves again). When no step is intact,
`NoIntactCheckpointError` (exit 3). A step without a manifest (saved by an
older version, or a run killed between the commit and the manifest) is
trusted if it restores.

`restore_model_variables` reads just the network of a workdir's checkpoint
(for feature extraction and export): no dataset, no optimiser state;
`release_state` a state whose network is a checkpoint of the authors'
release (docs/checkpoints.md "Checkpoints of the authors' release").
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from mclnet_jax import console, errors
from mclnet_jax import workdir as workdir_lib
from mclnet_jax.models import release

LATEST, BEST, WHICH = workdir_lib.LATEST, workdir_lib.BEST, workdir_lib.WHICH
LATEST_DIR = workdir_lib.LATEST_DIR
BEST_DIR = workdir_lib.BEST_DIR
DAMAGED_DIR = workdir_lib.DAMAGED_DIR
MANIFEST_FILE = "mclnet_manifest.json"
BEST_INFO_FILE = "best.json"
_CHUNK = 1 << 22


def check_which(which: str) -> str:
    """`which` if it names a checkpoint kind (`WHICH`), else ValueError."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}.")
    return which


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _crc32(path: str) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _files(step_dir: str) -> list[str]:
    """The files of a step folder, relative to it (not the manifest)."""
    out = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST_FILE:
                out.append(rel)
    return sorted(out)


def write_manifest(step_dir: str) -> None:
    """Records every file's size and CRC-32 of a committed step folder."""
    manifest = {
        rel: {
            "size": os.path.getsize(os.path.join(step_dir, rel)),
            "crc32": _crc32(os.path.join(step_dir, rel)),
        }
        for rel in _files(step_dir)
    }
    tmp = os.path.join(step_dir, f".{MANIFEST_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(step_dir, MANIFEST_FILE))


def damage(step_dir: str) -> str | None:
    """What is wrong with a step folder by its manifest; None if intact.

    Raises:
      FileNotFoundError: the step has no manifest (cannot be verified).
    """
    path = os.path.join(step_dir, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        return f"its manifest {MANIFEST_FILE} cannot be read ({e})"
    for rel, want in sorted(manifest.items()):
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return f"{rel} is missing"
        size = os.path.getsize(full)
        if size != want["size"]:
            return (
                f"{rel} has {size} bytes, {want['size']} when saved "
                "(truncated or overwritten)"
            )
        if _crc32(full) != want["crc32"]:
            return (
                f"{rel} is corrupted (its checksum differs from when it "
                "was saved)"
            )
    return None


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    line = f"{type(error).__name__}: {line}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def newest_intact(
    manager: ocp.CheckpointManager,
    directory: str,
    restore_one: Callable[[int], Any],
) -> tuple[Any, int, list[int]] | None:
    """Restores the newest step of `manager` that is intact (module doc).

    Args:
      manager: the orbax manager of `directory`.
      directory: its folder (for the messages and the manifests).
      restore_one: step -> the restored tree.

    Returns:
      (restored tree, its step, the newer steps found damaged), or None when
      the folder holds no step.

    Raises:
      NoIntactCheckpointError: steps exist, none is intact.
      ConfigurationError: a verified (intact) step does not fit the
        requested tree: the config is not the one it was trained with.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None
    damaged = []
    for step in steps:
        step_dir = os.path.join(directory, str(step))
        try:
            problem = damage(step_dir)
            verified = problem is None
        except FileNotFoundError:
            problem, verified = None, False
        if problem is None:
            try:
                return restore_one(step), step, damaged
            except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types.
                console.log_file_only(
                    "Restoring step %d of %s failed:",
                    step,
                    directory,
                    exc_info=True,
                )
                if verified:
                    raise errors.ConfigurationError(
                        f"The checkpoint of step {step} in {directory} is "
                        f"intact but does not fit this config "
                        f"({_first_line(e)}). Resume with the config it was "
                        "trained with (WORKDIR/config.json), or train in a new "
                        "--workdir."
                    ) from e
                problem = f"it cannot be read ({_first_line(e)})"
        logging.warning(
            "Checkpoint step %d in %s is damaged: %s. Skipping it.",
            step,
            directory,
            problem,
        )
        damaged.append(step)
    raise errors.NoIntactCheckpointError(
        f"No intact checkpoint in {directory}: step"
        f"{'s' * (len(damaged) > 1)} {', '.join(map(str, damaged))} "
        f"{'are' if len(damaged) > 1 else 'is'} damaged (see the warnings "
        "above; details in the workdir's log.txt). To train from scratch in "
        f"this workdir, move {directory} away (e.g. to {directory}.damaged) "
        "and rerun; to continue from them, restore the folder from a backup."
    )


def _lookup(tree: Mapping[str, Any], path: str) -> float:
    """tree["a"]["b"] for path "a/b" (the metric used to pick the best).

    Raises:
      ConfigurationError: `path` names no number of the results (exit 2).
    """
    node = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise errors.ConfigurationError(
                f"checkpoint.best_metric {path!r} not found in the validation "
                f"results (keys at this level: "
                f"{sorted(node) if isinstance(node, Mapping) else node!r})."
            )
        node = node[part]
    if isinstance(node, Mapping):
        raise errors.ConfigurationError(
            f"checkpoint.best_metric {path!r} names a group of the validation "
            f"results, not a number; one of its keys: {sorted(node)}."
        )
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
            self.directory(LATEST),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        # Steps saved by this process whose manifest is not written yet.
        self._unlisted = {which: [] for which in WHICH}
        # The newest step known intact on disk (for the disk-full message).
        self._intact_step = self._latest.latest_step()
        self._best = None
        self._best_value = None
        if best_metric:
            self._best = ocp.CheckpointManager(
                self.directory(BEST),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True
                ),
            )
            info = self._read_best_info()
            if info is not None:
                self._best_value = info["value"]

    def directory(self, which: str) -> str:
        return os.path.join(
            self._workdir, LATEST_DIR if which == LATEST else BEST_DIR
        )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def _disk_full(
        self, error: BaseException, step: int
    ) -> errors.DiskFullError:
        saved = (
            f"the checkpoint of step {self._intact_step}"
            if self._intact_step is not None
            else "the workdir's data (no checkpoint had been saved yet)"
        )
        console.log_file_only(
            "Saving step %d failed:",
            step,
            exc_info=(type(error), error, error.__traceback__),
        )
        return errors.DiskFullError(
            errors.disk_full_message(self.directory(LATEST), saved=saved)
            + f" (Step {step} was not saved.)"
        )

    def _finish(self, which: str, manager: ocp.CheckpointManager) -> None:
        """Waits for `manager`'s save; writes the saved steps' manifests."""
        try:
            manager.wait_until_finished()
        except Exception as e:
            step = self._unlisted[which][-1] if self._unlisted[which] else -1
            self._unlisted[which].clear()
            if errors.no_space_error(e) is not None:
                raise self._disk_full(e, step) from e
            raise
        steps = self._unlisted[which]
        self._unlisted[which] = []
        for step in steps:
            step_dir = os.path.join(self.directory(which), str(step))
            if which == LATEST:
                self._intact_step = step
            if jax.process_index() != 0 or not os.path.isdir(step_dir):
                continue  # Not the lead process, or already removed (keep).
            try:
                write_manifest(step_dir)
            except OSError as e:
                if errors.no_space_error(e) is not None:
                    raise self._disk_full(e, step) from e
                logging.warning(
                    "Cannot write the manifest of %s (%s): this step will be "
                    "trusted without verification.",
                    step_dir,
                    e,
                )

    def _save(self, which: str, manager, step: int, state, **kwargs) -> None:
        self._finish(which, manager)
        try:
            manager.save(step, args=ocp.args.StandardSave(state), **kwargs)
        except Exception as e:
            if errors.no_space_error(e) is not None:
                raise self._disk_full(e, step) from e
            raise
        self._unlisted[which].append(step)

    def save(self, step: int, state) -> None:
        """Saves `state` as step `step` (asynchronously; see `wait`).

        Raises:
          NonFiniteLossError: a value of the state is NaN/inf (a
            non-finite state must never be resumed from); nothing is saved.
        """
        if not bool(_all_finite(state)):
            raise errors.NonFiniteLossError(
                f"Non-finite values in the state at step {step}; not "
                "checkpointed."
            )
        self._save(LATEST, self._latest, step, state)

    def wait(self) -> None:
        """Waits for the saves in flight; each saved step gets its manifest."""
        self._finish(LATEST, self._latest)
        if self._best is not None:
            self._finish(BEST, self._best)

    def close(self) -> None:
        """Finishes or abandons the saves in flight and stops orbax's threads.

        Never raises: called on the way out of a failed run too, where the
        save's own error (already reported) would come back from here.
        """
        for which, manager in ((LATEST, self._latest), (BEST, self._best)):
            if manager is None:
                continue
            try:
                self._finish(which, manager)
            except Exception:  # noqa: BLE001 - reported by the caller.
                console.log_file_only(
                    "Closing %s:", self.directory(which), exc_info=True
                )
            try:
                manager.close()
            except Exception:  # noqa: BLE001
                console.log_file_only(
                    "Closing %s:", self.directory(which), exc_info=True
                )

    def _restore(self, manager, step, target, shardings):
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            target,
            shardings,
        )
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def _restore_newest_intact(
        self, which, manager, target, shardings, *, set_aside: bool
    ):
        directory = self.directory(which)
        found = newest_intact(
            manager,
            directory,
            lambda step: self._restore(manager, step, target, shardings),
        )
        if found is None:
            return None
        state, step, damaged = found
        if damaged:
            logging.warning(
                "Restored step %d, the newest intact checkpoint in %s.",
                step,
                directory,
            )
            if set_aside:
                self._set_aside(manager, directory, damaged)
        else:
            logging.info("Restored %s step %d.", directory, step)
        if which == LATEST:
            self._intact_step = step
        return state

    def _set_aside(self, manager, directory: str, steps: list[int]) -> None:
        """Moves damaged steps out of orbax's folder, into DAMAGED_DIR."""
        target = os.path.join(self._workdir, DAMAGED_DIR)
        if jax.process_index() == 0:
            os.makedirs(target, exist_ok=True)
            for step in steps:
                dest = os.path.join(target, str(step))
                n = 1
                while os.path.exists(dest):
                    dest = os.path.join(target, f"{step}.{n}")
                    n += 1
                shutil.move(os.path.join(directory, str(step)), dest)
                logging.warning(
                    "Moved the damaged step %d to %s (kept for inspection; "
                    "delete it when done).",
                    step,
                    dest,
                )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(
                "mclnet_jax: damaged steps moved"
            )
        manager.reload()

    def restore_latest(self, target, shardings, *, set_aside: bool = False):
        """The newest intact saved state laid out like `target`, or None.

        Args:
          target: the state's shapes and dtypes.
          shardings: the state's shardings.
          set_aside: move damaged newer steps to DAMAGED_DIR (a resumed run
            saves those steps again).

        Raises:
          NoIntactCheckpointError: every saved step is damaged.
        """
        return self._restore_newest_intact(
            LATEST, self._latest, target, shardings, set_aside=set_aside
        )

    def restore_best(self, target, shardings):
        """The best state by the validation metric, or None."""
        manager = self._best or ocp.CheckpointManager(
            self.directory(BEST),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        )
        try:
            return self._restore_newest_intact(
                BEST, manager, target, shardings, set_aside=False
            )
        finally:
            if manager is not self._best:
                manager.close()

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
        self._save(BEST, self._best, step, state, force=True)
        self._finish(BEST, self._best)
        self._best_value = value
        if jax.process_index() == 0:
            with open(
                os.path.join(self.directory(BEST), BEST_INFO_FILE), "w"
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
        path = os.path.join(self.directory(BEST), BEST_INFO_FILE)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                info = json.load(f)
            float(info["value"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            logging.warning(
                "Cannot read %s (%s): the best value so far is unknown, the "
                "next validation result is saved as the best.",
                path,
                e,
            )
            return None
        return info


def restore_model_variables(
    workdir: str, *, which: str = LATEST
) -> tuple[dict[str, Any], int]:
    """The network's variables in a workdir's newest (or best) checkpoint.

    Reads only `params["model"]` and `batch_stats` of the saved
    `train_step.TrainState` (not the optimiser state, the modality classifier or
    the centers), with the shapes stored in the checkpoint, so neither the
    dataset nor the number of classes needs to be known: the classifier's
    width is `variables["params"]["classifier"]["kernel"].shape[-1]`.

    Args:
      workdir: a training workdir (holds checkpoints/ or checkpoints_best/).
      which: "latest" or "best" (`WHICH`).

    Returns:
      ({"params": ..., "batch_stats": ...} of numpy arrays on the host, the
      checkpoint's step).

    Raises:
      ValueError: `which` is not in `WHICH`, or the checkpoint is not a
        training state.
      FileNotFoundError: no such checkpoint in the workdir.
    """
    check_which(which)
    directory = os.path.join(
        os.path.abspath(workdir), LATEST_DIR if which == LATEST else BEST_DIR
    )
    hint = (
        "train first (python -m mclnet_jax.main --mode=train) with this "
        "--workdir"
        + (
            ", a validation evaluator (config.evals.val, e.g. "
            "--config=sysu:val=1) and config.checkpoint.best_metric, or use "
            "--checkpoint=latest"
            if which == BEST
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
        found = newest_intact(
            manager,
            directory,
            lambda step: _restore_network(manager, directory, step),
        )
    finally:
        manager.close()
    if found is None:
        raise FileNotFoundError(
            f"No {which} checkpoint in {directory}; {hint}."
        )
    restored, step, damaged = found
    if damaged:
        logging.warning(
            "Restored step %d, the newest intact checkpoint in %s.",
            step,
            directory,
        )
    return (
        {
            "params": restored["params"]["model"],
            "batch_stats": restored["batch_stats"],
        },
        int(step),
    )


def _restore_network(manager, directory: str, step: int):
    """params/model and batch_stats of `step`, as host numpy arrays."""
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
    return manager.restore(
        step,
        args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=restore_args, partial_restore=True
        ),
    )


def release_state(
    path: str,
    abstract_state,
    *,
    model_config: Mapping[str, Any],
    feature_dim: int,
    num_classes: int,
):
    """A host state whose network is `path`, a checkpoint of the release.

    Only the extractor is read: the rest of the state (MCM, optimiser,
    centers) is zeros, and nothing is initialised or compiled for it.

    Args:
      path: the release's `embed_net` state dict as `.safetensors`
        (`python -m mclnet_jax.tools.convert_release`).
      abstract_state: the configured state's shapes and dtypes.
      model_config: `config.model` (depth, non-local blocks).
      feature_dim: the configured model's feature dimension.
      num_classes: identities of the configured training split.

    Raises:
      ConfigurationError: the file is missing, or the checkpoint's model
        (depth, non-local blocks, identities, ...) is not the configured one;
        the message names the overrides that fix it.
    """
    path = os.path.expanduser(path)
    try:
        state_dict = release.read(path)
        found = release.describe_embed_net(state_dict)
    except (OSError, ValueError) as e:
        raise errors.ConfigurationError(
            f"config.init.release_checkpoint: {e}"
        ) from e
    m = model_config
    configured = {
        "depth": m.depth,
        "non_local_counts": tuple(m.non_local_counts),
        "non_local_inter": (
            m.non_local_inter if any(m.non_local_counts) else None
        ),
        "feature_dim": feature_dim,
    }
    wrong = [
        f"{k}: checkpoint {found[k]!r}, config {v!r}"
        for k, v in configured.items()
        if v is not None and found[k] != v
    ]
    if wrong:
        raise errors.ConfigurationError(
            f"The release checkpoint {path} is not the configured model ("
            + "; ".join(wrong)
            + "). Override the config to match, e.g. "
            f"--config.model.depth={found['depth']} "
            f"--config.model.width_multiplier={found['width_multiplier']:g} "
            f"--config.model.non_local_counts='{found['non_local_counts']}'"
            + (
                f" --config.model.non_local_inter={found['non_local_inter']}"
                if found["non_local_inter"]
                else ""
            )
            + "."
        )
    if found["num_classes"] != num_classes:
        raise errors.ConfigurationError(
            f"The release checkpoint {path} classifies "
            f"{found['num_classes']} identities, but the training data of "
            f"this config has {num_classes}: evaluate it with the config of "
            "the dataset it was trained on (configs/sysu.py: SYSU-MM01, "
            "configs/regdb.py: RegDB, same trial)."
        )
    try:
        variables = release.load_embed_net(
            abstract_state.model_variables(), state_dict
        )
    except ValueError as e:
        raise errors.ConfigurationError(
            f"config.init.release_checkpoint: {e}"
        ) from e
    logging.info("Extractor from the release checkpoint %s.", path)
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_state)
    return state.replace(
        params={**state.params, "model": variables["params"]},
        batch_stats=variables["batch_stats"],
    )
