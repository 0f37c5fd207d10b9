"""Identity-balanced batch plans for cross-modality training.

A plan is a pure numpy function of (seed, epoch) that names, for every batch,
P distinct identities and K visible and K infrared examples of each, as the
release's sampler does: floor(max(N_visible, N_infrared) / (P * K)) + 1
batches per epoch, identities drawn without replacement within a batch (and
independently across batches), examples with replacement. Rows are
identity-major, visible row r and infrared row r share the identity, and
each host keeps a contiguous block of rows of every batch. CAJ's exchanged
view (`augment.TrainAugment.channel_exchange`) adds no draw here: it is the
visible rows of the plan once more, augmented apart (`train_pipeline`). See
docs/datasets.md "The input pipeline".
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The batches of one epoch.

    Attributes:
      visible: [num_batches, P * K] int64, indexes into the visible example
        list (the `visible_labels` given to `epoch_plan`).
      infrared: [num_batches, P * K] int64, indexes into the infrared list.
      identities: [num_batches, P] int64, the identity labels of each batch,
        in row order (row r of a batch holds identity r // K).
      num_instances: K.
    """

    visible: np.ndarray
    infrared: np.ndarray
    identities: np.ndarray
    num_instances: int

    @property
    def num_batches(self) -> int:
        return self.visible.shape[0]


def steps_per_epoch(
    *,
    num_visible: int,
    num_infrared: int,
    num_identities: int,
    num_instances: int,
) -> int:
    """Batches per epoch (release): floor(max(N_vis, N_ir) / (P * K)) + 1."""
    _check_positive(num_identities=num_identities, num_instances=num_instances)
    if num_visible < 0 or num_infrared < 0:
        raise ValueError(
            f"example counts must be >= 0, got num_visible={num_visible}, "
            f"num_infrared={num_infrared}."
        )
    per_batch = num_identities * num_instances
    return max(num_visible, num_infrared) // per_batch + 1


def _check_positive(**values):
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(
                f"{name} must be a positive integer, got {value!r}."
            )


def _as_labels(labels, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array of identity labels, got "
            f"shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} must hold integers, got dtype {labels.dtype}."
        )
    return labels.astype(np.int64)


class _Groups:
    """Examples of one modality grouped by identity (sorted, stable)."""

    def __init__(self, labels: np.ndarray, identities: np.ndarray):
        self.order = np.argsort(labels, kind="stable")
        sorted_labels = labels[self.order]
        self.starts = np.searchsorted(sorted_labels, identities, side="left")
        ends = np.searchsorted(sorted_labels, identities, side="right")
        self.counts = ends - self.starts

    def draw(
        self, rng: np.random.Generator, chosen: np.ndarray, num_instances: int
    ) -> np.ndarray:
        """[B, P] identity positions -> [B, P * K] example indexes."""
        counts = self.counts[chosen][..., None]
        offsets = rng.integers(0, counts, size=chosen.shape + (num_instances,))
        picked = self.order[self.starts[chosen][..., None] + offsets]
        return picked.reshape(chosen.shape[0], -1)


def epoch_plan(
    *,
    visible_labels,
    infrared_labels,
    seed: int,
    epoch: int,
    num_identities: int = 8,
    num_instances: int = 4,
) -> EpochPlan:
    """The identity-balanced batches of one epoch.

    Args:
      visible_labels: [N_vis] int, identity label of each visible example.
      infrared_labels: [N_ir] int, identity label of each infrared example.
      seed: non-negative int, the run's seed.
      epoch: non-negative int.
      num_identities: P, distinct identities per batch.
      num_instances: K, examples per identity and modality.

    Returns:
      EpochPlan with steps_per_epoch(...) batches. The same arguments always
      give the same plan (np.random.Generator seeded with
      SeedSequence([seed, epoch]); draws in the order: identities, visible,
      infrared).

    Raises:
      ValueError: on empty or non-integer labels, an identity present in only
        one modality, fewer identities than P, or bad seed/epoch/P/K.
    """
    _check_positive(num_identities=num_identities, num_instances=num_instances)
    for name, value in (("seed", seed), ("epoch", epoch)):
        if int(value) != value or value < 0:
            raise ValueError(
                f"{name} must be a non-negative integer, got {value!r}."
            )
    visible_labels = _as_labels(visible_labels, "visible_labels")
    infrared_labels = _as_labels(infrared_labels, "infrared_labels")
    visible_ids = np.unique(visible_labels)
    infrared_ids = np.unique(infrared_labels)
    if not np.array_equal(visible_ids, infrared_ids):
        only_vis = np.setdiff1d(visible_ids, infrared_ids)
        only_ir = np.setdiff1d(infrared_ids, visible_ids)
        raise ValueError(
            "every training identity needs visible and infrared examples; "
            f"only visible: {only_vis[:10].tolist()} ({only_vis.size} ids), "
            f"only infrared: {only_ir[:10].tolist()} ({only_ir.size} ids). "
            "Remove those identities from the split (or their examples) "
            "before sampling."
        )
    identities = visible_ids
    if identities.size < num_identities:
        raise ValueError(
            f"a batch needs num_identities={num_identities} distinct "
            f"identities but the split has only {identities.size}; lower "
            "num_identities."
        )
    num_batches = steps_per_epoch(
        num_visible=visible_labels.size,
        num_infrared=infrared_labels.size,
        num_identities=num_identities,
        num_instances=num_instances,
    )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
    # P distinct identities per batch: the first P of a random permutation,
    # drawn independently for every batch (the release's np.random.choice
    # without replacement).
    keys = rng.random((num_batches, identities.size))
    chosen = np.argsort(keys, axis=1)[:, :num_identities]
    visible = _Groups(visible_labels, identities).draw(
        rng, chosen, num_instances
    )
    infrared = _Groups(infrared_labels, identities).draw(
        rng, chosen, num_instances
    )
    return EpochPlan(
        visible=visible.astype(np.int64),
        infrared=infrared.astype(np.int64),
        identities=identities[chosen],
        num_instances=int(num_instances),
    )


def host_rows(
    *, rows_per_batch: int, process_index: int, process_count: int
) -> slice:
    """The contiguous rows of each global batch that one host feeds.

    Args:
      rows_per_batch: global rows per modality (P * K).
      process_index: this host, 0 .. process_count - 1 (jax.process_index()).
      process_count: number of hosts (jax.process_count()).

    Raises:
      ValueError: if rows_per_batch is not divisible by process_count or the
        index is out of range.
    """
    _check_positive(rows_per_batch=rows_per_batch, process_count=process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, {process_count}), got "
            f"{process_index}."
        )
    if rows_per_batch % process_count:
        raise ValueError(
            f"the global batch of {rows_per_batch} rows per modality (P * K) "
            f"does not split evenly over {process_count} hosts; choose P * K "
            "divisible by the number of hosts."
        )
    per_host = rows_per_batch // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


def host_slice(
    plan: EpochPlan, *, process_index: int, process_count: int
) -> EpochPlan:
    """This host's part of every batch of `plan` (same rows in both modalities).

    `identities` stays global (it describes the whole batch).
    """
    rows = host_rows(
        rows_per_batch=plan.visible.shape[1],
        process_index=process_index,
        process_count=process_count,
    )
    return dataclasses.replace(
        plan, visible=plan.visible[:, rows], infrared=plan.infrared[:, rows]
    )
