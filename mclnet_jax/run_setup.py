"""What a run sets up from (config, workdir) before its first step.

`setup` prepares the data, the mesh, the model, the optimisers, the state's
shardings and the checkpointer; `Run.restore_or_init` gives the state to
start from, `release_state` the state of a checkpoint of the authors'
release (README "Checkpoints of the authors' release"). `train.py` runs the
loop on it; `--mode=analyze` reuses it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from mclnet_jax import (
    checkpointing,
    config_checks,
    optim,
    sharding,
    train_step,
)
from mclnet_jax.models import mclnet as mclnet_model


def configure_precision(config: ml_collections.ConfigDict) -> None:
    """Turns on 64-bit JAX (process-wide) for `config.model.dtype="float64"`.

    The float64 mode is for exact comparisons with PyTorch, not training.
    """
    dtype = train_step.compute_dtype(config)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        logging.warning(
            "config.model.dtype=float64: enabling jax_enable_x64 "
            "(parity checks only; slow)."
        )
        jax.config.update("jax_enable_x64", True)


def check_initialisation(config: ml_collections.ConfigDict) -> None:
    """Refuses a deep network without ImageNet weights unless asked for.

    Raises:
      ConfigurationError: depth >= 50 and `config.model.pretrained` unset.
    """
    problem = config_checks.initialisation_problem(config)
    if problem:
        raise train_step.ConfigurationError(problem)


def start_distributed(config: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize` once, when `config.distributed` asks."""
    if not jax.distributed.is_initialized():
        sharding.maybe_initialize_distributed(config)


@dataclasses.dataclass
class Run:
    """What training, evaluation and analysis of a workdir share."""

    data: Any  # train_data.RunData
    mesh: jax.sharding.Mesh
    model: mclnet_model.MCLNet
    tx: optax.GradientTransformation
    schedule: optim.Schedule
    mcm_tx: optax.GradientTransformation
    steps_per_epoch: int
    abstract_state: Any  # The state's shapes and dtypes (`abstract_state`).
    state_sharding: Any
    checkpointer: checkpointing.Checkpointer

    def restore_or_init(
        self,
        config: ml_collections.ConfigDict,
        *,
        which: str = "latest",
        init: bool = True,
    ) -> train_step.TrainState | None:
        """The newest intact checkpointed state (`which`), else a fresh one
        (or None).

        A run that trains on (`init`) sets damaged newer steps aside
        (`checkpointing.Checkpointer.restore_latest`).

        Raises:
          NoIntactCheckpointError: checkpoints exist, none is intact.
        """
        # Shapes only: restoring needs no initialisation compute.
        if which == "best":
            state = self.checkpointer.restore_best(
                self.abstract_state, self.state_sharding
            )
        else:
            state = self.checkpointer.restore_latest(
                self.abstract_state, self.state_sharding, set_aside=init
            )
        if state is None and init:
            state = jax.device_put(
                _init_state(config, self), self.state_sharding
            )
        return state


def abstract_state(
    config: ml_collections.ConfigDict, run: Run
) -> train_step.TrainState:
    """The shapes and dtypes of `run`'s state (traced, nothing computed)."""
    return jax.eval_shape(
        functools.partial(_init_state, config, run, load_pretrained=False)
    )


def _init_state(
    config: ml_collections.ConfigDict, run: Run, *, load_pretrained: bool = True
) -> train_step.TrainState:
    return train_step.init_state(
        config,
        model=run.model,
        num_classes=run.data.num_classes,
        num_cameras=run.data.num_cameras,
        tx=run.tx,
        mcm_tx=run.mcm_tx,
        load_pretrained=load_pretrained,
    )


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Prepares the data and everything the state needs (see `Run`).

    Raises:
      datasets.DatasetUnavailableError: the dataset folder is missing.
      ConfigurationError: `config.model` does not describe a model.
    """
    # Imported here: the data stack (TensorFlow) is only needed for a run.
    from mclnet_jax import train_data

    configure_precision(config)
    start_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    data = train_data.prepare(config, workdir)
    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(
        per_modality_batch=config.data.num_identities
        * config.data.num_instances,
        mesh=mesh,
    )
    steps_per_epoch = config.data.steps_per_epoch or data.steps_per_epoch
    tx, schedule, mcm_tx = train_step.make_optimizers(
        config, steps_per_epoch=steps_per_epoch
    )
    run = Run(
        data=data,
        mesh=mesh,
        model=train_step.make_model(config, num_classes=data.num_classes),
        tx=tx,
        schedule=schedule,
        mcm_tx=mcm_tx,
        steps_per_epoch=steps_per_epoch,
        abstract_state=None,
        state_sharding=None,
        checkpointer=checkpointing.Checkpointer(
            workdir,
            keep=config.checkpoint.keep,
            best_metric=config.checkpoint.get("best_metric"),
        ),
    )
    # Traced once: the shardings, restoring and the release path share it.
    run.abstract_state = abstract_state(config, run)
    replicated = sharding.replicated(mesh)
    run.state_sharding = jax.tree.map(lambda _: replicated, run.abstract_state)
    return run


def release_state(
    config: ml_collections.ConfigDict, run: Run
) -> train_step.TrainState:
    """A state whose extractor is `config.model.release_checkpoint`.

    Only the extractor is read: the rest of the state (MCM, optimiser,
    centers) is zeros, and nothing is initialised or compiled for it.

    Raises:
      ConfigurationError: the file is missing, or the checkpoint's model
        (depth, non-local blocks, identities, ...) is not the configured one;
        the message names the overrides that fix it.
    """
    # Imported lazily: only this path reads release checkpoints.
    from mclnet_jax.models import release

    path = os.path.expanduser(config.model.release_checkpoint)
    try:
        state_dict = release.read(path)
        found = release.describe_embed_net(state_dict)
    except (OSError, ValueError) as e:
        raise train_step.ConfigurationError(
            f"config.model.release_checkpoint: {e}"
        ) from e
    _check_release_model(config, run, path, found)
    abstract = run.abstract_state
    try:
        variables = release.load_embed_net(
            abstract.model_variables(), state_dict
        )
    except ValueError as e:
        raise train_step.ConfigurationError(
            f"config.model.release_checkpoint: {e}"
        ) from e
    logging.info("Extractor from the release checkpoint %s.", path)
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    state = state.replace(
        params={**state.params, "model": variables["params"]},
        batch_stats=variables["batch_stats"],
    )
    return jax.device_put(state, run.state_sharding)


def _check_release_model(
    config: ml_collections.ConfigDict, run: Run, path: str, found: dict
) -> None:
    """Raises ConfigurationError if the release model is not the config's."""
    m = config.model
    configured = {
        "depth": m.depth,
        "non_local_counts": tuple(m.non_local_counts),
        "non_local_inter": (
            m.non_local_inter if any(m.non_local_counts) else None
        ),
        "feature_dim": run.model.feature_dim,
    }
    wrong = [
        f"{k}: checkpoint {found[k]!r}, config {v!r}"
        for k, v in configured.items()
        if v is not None and found[k] != v
    ]
    if wrong:
        raise train_step.ConfigurationError(
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
    if found["num_classes"] != run.data.num_classes:
        raise train_step.ConfigurationError(
            f"The release checkpoint {path} classifies "
            f"{found['num_classes']} identities, but the training data of "
            f"this config has {run.data.num_classes}: evaluate it with the "
            f"config of the dataset it was trained on (configs/sysu.py: "
            f"SYSU-MM01, configs/regdb.py: RegDB, same trial)."
        )
