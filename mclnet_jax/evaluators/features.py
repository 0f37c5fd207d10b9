"""Features of every image of a test split, extracted once, on the mesh.

A predict function `predict_fn(variables, images [B, H, W, 3], modality) ->
{name: [B, D]}` embeds one batch whose images share a modality
(`constants.VISIBLE` / `INFRARED`: it picks the model's stem);
`make_predict_fn` builds it for an MCLNet-style linen module, data-parallel
over a ("data",) mesh. `extract_features` runs it over an `EvalSplit`'s
padded batches and checks that every image was embedded exactly once.
`FeatureStore` holds a run's splits and extracts each split's features once
per evaluated state, for every evaluator that asks; with `flip` it also
embeds every image mirrored left-right, in the same batch loop, and adds
the mean of both, each L2-normalised first, as "<name>+flip"
(`FLIP_SUFFIX`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from data_pipeline.constants import INFRARED, VISIBLE
from mclnet_jax import config_checks, errors, sharding
from mclnet_jax import metrics as metrics_lib

if TYPE_CHECKING:
    from data_pipeline.records import SplitMetadata

FEATURE_NAMES = ("pool", "bn")
RAW_PIXEL_FEATURES = ("pixels",)
# Appended to a feature's name: the mean of the image's and its mirror's.
FLIP_SUFFIX = "+flip"
# What a protocol evaluates: the model's features or the raw pixels.
KINDS = config_checks.FEATURES

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
    # Imported here: the data pipeline pulls in TensorFlow.
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


def _compiled_forward(model, mesh, feature_names: tuple[str, ...]):
    """The jitted eval forward of `model` on `mesh` (`feature_names` out)."""

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


def check_finite_features(
    features: Mapping[str, np.ndarray], *, model: str
) -> None:
    """Raises `NonFiniteFeaturesError` if some feature row is not finite.

    Args:
        features: {name: [N, D]} of a split.
        model: what was evaluated, for the message (e.g. "the checkpoint of
            step 4 in WORKDIR/checkpoints").
    """
    bad = {}
    for name, value in features.items():
        rows = ~np.isfinite(np.asarray(value)).all(axis=1)
        if rows.any():
            bad[name] = f"{int(rows.sum())} of {rows.size} images"
    if bad:
        details = ", ".join(f"{k!r}: {v}" for k, v in sorted(bad.items()))
        raise errors.NonFiniteFeaturesError(
            f"Non-finite features (NaN or inf) from {model} ({details}); "
            "nothing was evaluated. If its BatchNorm statistics lag its "
            "weights (a few steps from scratch at a large learning rate), "
            "recompute them for evaluation with "
            "--config.eval.precise_bn_batches=8. If the model diverged, "
            "delete that checkpoint (and later ones) and train again with "
            "a lower config.optimizer.lr or a warm-up "
            "(config.optimizer.schedule.warmup_epochs)."
        )


class FeatureStore:
    """A run's evaluated splits, each split's features extracted once per
    evaluated state and shared by every evaluator that asks for them.

    Args:
        splits: {split name: EvalSplit}.
        predict_fn: the model's predict function (`make_predict_fn`: jitted
            once for the run).
        variables_fn: state -> the variables that evaluate it (e.g. with
            BatchNorm statistics recomputed; computed once per state).
        describe: state -> what it is, for the message of non-finite
            features (e.g. "the model of step 8 (checkpoints under ...)").
        flip: test-time flip: the model's features also hold "<name>+flip"
            (`FLIP_SUFFIX`), the mean of the L2-normalised features of each
            image and of its left-right mirror (one more predict call per
            batch). Raw pixels are not flipped: they stay a no-learning
            floor.

    Attributes:
        predict_calls: batches embedded so far (model and raw pixels; with
            `flip` the mirrored batches too).
    """

    def __init__(
        self,
        splits: Mapping[str, EvalSplit],
        *,
        predict_fn: PredictFn,
        variables_fn: Callable[[Any], Any],
        describe: Callable[[Any], str],
        flip: bool = False,
    ):
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be True or False, got {flip!r}.")
        self.flip = flip
        self.splits = dict(splits)
        self._predict_fn = predict_fn
        self._variables_fn = variables_fn
        self._describe = describe
        self._variables: tuple[int, Any] | None = None
        self._features: dict[tuple[str, str, int | None], dict] = {}
        self.predict_calls = 0

    def metadata(self, split: str):
        """The `records.SplitMetadata` of a split of the store."""
        return self._split(split).metadata

    def _split(self, split: str) -> EvalSplit:
        if split not in self.splits:
            raise ValueError(
                f"No split {split!r} in this run's evaluation data; it has "
                f"{sorted(self.splits)}."
            )
        return self.splits[split]

    @staticmethod
    def key(kind: str, state) -> int | None:
        """What identifies the features of `kind` of `state`: its step (raw
        pixels do not depend on the state: None)."""
        if kind == "pixels":
            return None
        return int(jax.device_get(state.step))

    def variables(self, state):
        """`variables_fn(state)`, computed once per state."""
        step = self.key("model", state)
        if self._variables is None or self._variables[0] != step:
            self._variables = (step, self._variables_fn(state))
        return self._variables[1]

    def features(self, split: str, kind: str, state) -> dict[str, np.ndarray]:
        """{name: [N, D]} features of `kind` ("model", "pixels") of a split.

        Extracted on the first request for this state and reused; the
        model's features of an earlier state are dropped.

        Raises:
            NonFiniteFeaturesError: the model's features are not finite.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        key = (split, kind, self.key(kind, state))
        if key not in self._features:
            self._features = {
                k: v
                for k, v in self._features.items()
                if kind == "pixels" or k[1] == "pixels" or k[2] == key[2]
            }
            self._features[key] = self._extract(split, kind, state)
        return self._features[key]

    def _extract(self, split: str, kind: str, state) -> dict[str, np.ndarray]:
        eval_split = self._split(split)
        if kind == "pixels":
            predict_fn, names, variables = raw_pixels, RAW_PIXEL_FEATURES, None
        else:
            predict_fn, names = self._predict_fn, FEATURE_NAMES
            variables = self.variables(state)

        flip = self.flip and kind == "model"

        def embed_fn(images, modality):
            self.predict_calls += 1
            out = predict_fn(variables, images, modality)
            if not flip:
                return out
            # [B, H, W, 3]: the width axis mirrors the person left-right.
            mirrored = np.ascontiguousarray(np.flip(np.asarray(images), axis=2))
            self.predict_calls += 1
            out_mirrored = predict_fn(variables, mirrored, modality)
            out = dict(out)
            for name in names:
                # Each view L2-normalised first, as the reference test code
                # (CAJ's testa.py, DEEN's test.py) combines the unit features
                # its model returns in eval mode; unnormalised, the view with
                # the larger norm would dominate the mean.
                out[name + FLIP_SUFFIX] = (
                    metrics_lib.l2_normalize(out[name])
                    + metrics_lib.l2_normalize(out_mirrored[name])
                ) / 2
            return out

        features = extract_features(
            embed_fn,
            batches_fn=eval_split.batches_fn,
            modality=eval_split.metadata.modality,
            feature_names=(
                *names,
                *(n + FLIP_SUFFIX for n in names if flip),
            ),
        )
        if kind == "model":
            check_finite_features(features, model=self._describe(state))
        return features
