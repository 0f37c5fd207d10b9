"""Data-parallel sharding: a ("data",) mesh, global batches, multi-host setup.

The training step is a `jax.jit` over global arrays: the batch is sharded
along its first axis over every device of every host, the state is
replicated. XLA inserts the gradient all-reduce, and BatchNorm statistics are
computed over the global batch without any `axis_name`. The same code runs on
one CPU, 8 GPUs or a multi-host TPU pod; `pmap` is not used. `Preemption`
turns SIGTERM into a flag the loop checks, and `agreed` makes every process
of a run act on it together.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Calls `jax.distributed.initialize` when `config.distributed` asks.

    `config.distributed` is a ConfigDict with `enabled` (bool) and optional
    `coordinator_address`, `num_processes`, `process_id`; on TPU VMs and
    SLURM/Open MPI clusters they may all be left as None (auto-detected).
    """
    dist = config.distributed
    if not dist.enabled:
        return
    kwargs = {
        k: dist[k]
        for k in ("coordinator_address", "num_processes", "process_id")
        if dist[k] is not None
    }
    if dist.cpu_collectives:
        # CPU multi-process runs (tests, laptops) need a collectives backend.
        jax.config.update(
            "jax_cpu_collectives_implementation", dist.cpu_collectives
        )
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all, all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(*, per_modality_batch: int, mesh: Mesh) -> None:
    """Each modality's P*K rows must split evenly over devices and hosts.

    Raises:
      ValueError: naming the numbers and the settings to change.
    """
    devices = mesh.devices.size
    if per_modality_batch % devices:
        raise ValueError(
            f"Each modality's batch (P identities x K images = "
            f"{per_modality_batch}) must be divisible by the number of "
            f"devices ({devices}) so the global batch of "
            f"{2 * per_modality_batch} images shards evenly; change "
            "config.data.num_identities (P) or config.data.num_instances "
            "(K)."
        )
    if per_modality_batch % jax.process_count():
        raise ValueError(
            f"P x K = {per_modality_batch} must be divisible by the number of "
            f"processes ({jax.process_count()}), each of which loads an "
            "equal share; change config.data.num_identities (P) or "
            "config.data.num_instances (K)."
        )


def global_batch(local: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into global sharded arrays.

    Args:
      local: {name: [n_local, ...] array}: this process's rows, the
        contiguous block `process_index * n_local ...` of the global batch.
      mesh: the data mesh.

    Returns:
      {name: [n_local * process_count, ...] jax.Array} sharded on "data".
    """
    sharding = batch_sharded(mesh)
    out = {}
    for name, value in local.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[name] = jax.make_array_from_process_local_data(
            sharding, value, global_shape
        )
    return out


class Preemption:
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


def agreed(flag: bool) -> bool:
    """True if any process got the signal, so all save and stop together."""
    if jax.process_count() == 1:
        return flag
    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
