"""Features of every image of a test split, extracted once, on the mesh.

A predict function `predict_fn(variables, images [B, H, W, 3], modality) ->
{name: [B, D]}` embeds one batch whose images share a modality
(`constants.VISIBLE` / `INFRARED`: it picks the model's stem);
`make_predict_fn` builds it for an MCLNet-style linen module, data-parallel
over a ("data",) mesh. `extract_features` runs it over an `EvalSplit`'s
padded batches and checks that every image was embedded exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from data_pipeline.constants import INFRARED, VISIBLE

if TYPE_CHECKING:
    from data_pipeline.records import SplitMetadata

FEATURE_NAMES = ("pool", "bn")
RAW_PIXEL_FEATURES = ("pixels",)

PredictFn = Callable[[Any, Any, int], Mapping[str, Any]]
EmbedFn = Callable[[Any, int], Mapping[str, Any]]
Batch = Mapping[str, Any]
BatchesFn = Callable[[np.ndarray], Iterable[Batch]]


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """A test split: its metadata and its evaluation batches.

    Attributes:
        metadata: `records.SplitMetadata` of the split.
        batches_fn: `batches_fn(indices [n] int64) -> iterable of {"image":
            [B, H, W, 3], "mask": [B] bool, "index": [B] int}` covering the
            given split positions, padding marked by mask False (e.g.
            `make_batches_fn`). For several devices B must be divisible by
            the device count.
    """

    metadata: SplitMetadata
    batches_fn: BatchesFn


def make_batches_fn(
    source,
    *,
    batch_size: int,
    image_size: tuple[int, int] = (288, 144),
    **kwargs,
) -> BatchesFn:
    """`batches_fn` over `eval_pipeline.make_eval_dataset`.

    Args:
        source: serialized records of the split (`records.open_source`).
        batch_size: images per batch (a multiple of the device count).
        image_size: (H, W) of the test transform.
        **kwargs: more `make_eval_dataset` arguments (dtype, mean, std, ...).
    """
    # Imported here: the data pipeline pulls in TensorFlow.
    from data_pipeline import eval_pipeline

    def batches_fn(indices):
        return eval_pipeline.make_eval_dataset(
            source,
            batch_size=batch_size,
            image_size=image_size,
            indices=indices,
            **kwargs,
        ).as_numpy_iterator()

    return batches_fn


def open_split(
    source, *, batch_size: int, image_size: tuple[int, int] = (288, 144)
) -> EvalSplit:
    """The `EvalSplit` of serialized records (`records.open_source`)."""
    from data_pipeline import records

    return EvalSplit(
        metadata=records.read_metadata(source),
        batches_fn=make_batches_fn(
            source, batch_size=batch_size, image_size=tuple(image_size)
        ),
    )


def extract_features(
    embed_fn: EmbedFn,
    *,
    batches_fn: BatchesFn,
    modality: np.ndarray,
    feature_names: Sequence[str] = FEATURE_NAMES,
) -> dict[str, np.ndarray]:
    """Embeds every image of a split exactly once, grouped by modality.

    Args:
        embed_fn: `embed_fn(images [B, H, W, 3], modality: int) ->
            {name: [B, D]}` (a predict function with its variables bound);
            B is fixed by `batches_fn`, so a jitted function compiles once
            per modality.
        batches_fn: see `EvalSplit`.
        modality: [N] int, the modality of every example of the split.
        feature_names: outputs of embed_fn to keep.

    Returns:
        {name: [N, D] float32}, row i = example i (not normalised).

    Raises:
        ValueError: if some image was not embedded exactly once, or an
            image came back in the other modality's batches.
    """
    modality = np.asarray(modality)
    num = modality.shape[0]
    features: dict[str, np.ndarray] = {}
    seen = np.zeros(num, np.int64)
    for mod in (VISIBLE, INFRARED):
        wanted = np.flatnonzero(modality == mod)
        if wanted.size == 0:
            continue
        for batch in batches_fn(wanted):
            mask = np.asarray(batch["mask"], bool)
            index = np.asarray(batch["index"]).astype(np.int64)[mask]
            if index.size == 0:
                continue
            if (
                index.min() < 0
                or index.max() >= num
                or np.any(modality[index] != mod)
            ):
                raise ValueError(
                    f"batches_fn returned indices outside the requested "
                    f"modality-{mod} selection (e.g. {index[:5].tolist()})."
                )
            out = embed_fn(batch["image"], mod)
            for name in feature_names:
                if name not in out:
                    raise ValueError(
                        f"embed_fn returned {sorted(out)}, missing {name!r}."
                    )
                value = np.asarray(out[name], np.float32)[mask]
                if name not in features:
                    features[name] = np.zeros((num, value.shape[1]), np.float32)
                features[name][index] = value
            np.add.at(seen, index, 1)
    if np.any(seen != 1):
        missing = np.flatnonzero(seen == 0)
        repeated = np.flatnonzero(seen > 1)
        raise ValueError(
            f"every image must be embedded exactly once: {missing.size} "
            f"missing (e.g. {missing[:5].tolist()}), {repeated.size} "
            f"repeated (e.g. {repeated[:5].tolist()}). With several "
            "processes, gather the features of all hosts first; check that "
            "batches_fn pads with mask=False."
        )
    return features


@functools.lru_cache(maxsize=8)
def _compiled_forward(model, mesh, feature_names: tuple[str, ...]):
    """One jitted eval forward per (model, mesh, outputs), reused across calls
    (a training run evaluates the same model many times)."""
    import jax

    from mclnet_jax import sharding

    def forward(variables, images, modality):
        visible = images if modality == VISIBLE else None
        infrared = images if modality == INFRARED else None
        out = model.apply(variables, visible, infrared, train=False)
        return {name: out[name] for name in feature_names}

    # Replicated outputs: every process can fetch all the features.
    return jax.jit(
        forward, static_argnums=2, out_shardings=sharding.replicated(mesh)
    )


def make_predict_fn(
    model, *, mesh=None, feature_names: Sequence[str] = FEATURE_NAMES
) -> PredictFn:
    """`predict_fn` for an MCLNet-style linen module, data-parallel.

    Calls `model.apply(variables, visible, infrared, train=False)` with the
    batch as `visible` or `infrared` according to the modality (so the
    matching stem is used), compiled once per model, mesh and batch shape.
    The batch is split over the mesh's devices along its first axis (B must
    be divisible by their number); the outputs come back to every process.
    With several processes, each passes the same full batch.

    Args:
        model: e.g. `MCLNet(...)`; returns a dict with `feature_names`.
        mesh: a ("data",) mesh (`sharding.make_mesh`); default all local
            devices.
        feature_names: outputs to return.

    Returns:
        `predict_fn(variables, images, modality)`, variables = {"params":
        ..., "batch_stats": ...}.
    """
    import jax

    from mclnet_jax import sharding

    if mesh is None:
        mesh = sharding.make_mesh(jax.local_devices())
    batch_sharding = sharding.batch_sharded(mesh)
    forward = _compiled_forward(model, mesh, tuple(feature_names))
    num_devices = mesh.devices.size

    def predict_fn(variables, images, modality):
        images = np.asarray(images)
        if images.shape[0] % num_devices:
            raise ValueError(
                f"An evaluation batch of {images.shape[0]} images cannot be "
                f"split over {num_devices} devices: use a batch size "
                "divisible by it (config.data.eval_batch_size in training "
                "configs)."
            )
        batch = jax.make_array_from_process_local_data(
            batch_sharding, images, images.shape
        )
        return jax.device_get(forward(variables, batch, int(modality)))

    return predict_fn


def raw_pixels(variables, images, modality) -> dict[str, np.ndarray]:
    """A predict function without a model: {"pixels": [B, H*W*3]}.

    The evaluation's normalised pixels, flattened: the protocol on them is a
    no-learning floor. `variables` and `modality` are unused.
    """
    del variables, modality
    flat = np.asarray(images, np.float32).reshape(len(images), -1)
    return {"pixels": flat}
