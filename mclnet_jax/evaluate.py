"""SYSU-MM01 and RegDB evaluation protocols, as the community runs them.

What is evaluated (see README "Evaluation protocols"):

* **SYSU-MM01** (test split = every image of the 96 test ids, all cameras).
  Query: all infrared images (cameras 3, 6). Gallery, per trial t = 0..9:
  drawn exactly as the community's `process_gallery_sysu` draws it, i.e.
  `random.seed(t)`, then for every identity in sorted order and every
  visible camera of the mode in order (all-search 1, 2, 4, 5; indoor-search
  1, 2) one `random.choice` over that identity's file names in that camera,
  sorted ("single-shot"). So our galleries are the same images as everyone
  else's. Multi-shot (`num_shots=10`) is ours: `random.sample(files,
  min(10, len(files)))` per identity and camera (equal to the
  `random.sample(files, 10)` of community forks where every folder holds at
  least 10 images). Metrics: `metrics.sysu_metrics`.
* **RegDB** (one test split per trial 1..10 = 206 ids x 10 visible + 10
  thermal images): visible->infrared (query visible, gallery every thermal
  image) and infrared->visible. Metrics: `metrics.standard_metrics` with the
  query / gallery cameras (1 / 2), so nothing is removed.

Features are extracted once per test split (both "pool" and "bn" outputs of
the model), L2-normalised, and every trial is an index selection into them;
distance = negative inner product, as in the community code.

With `rerank=rerank.RerankParams(...)` every protocol is also evaluated on
k-reciprocal re-ranked distances (`rerank.k_reciprocal_distance`, per SYSU
trial and per RegDB direction) under the protocol name + "+rerank". The
re-ranking is given Euclidean distances of the same (normalised) features,
sqrt(2 - 2 cos), which it squares to 2 - 2 cos: the squared Euclidean
distance that feature-based re-ranking code (reid-strong-baseline, AGW)
computes from normalised features. The ranking it starts from is the
evaluator's (monotonic in cos).

Typical use (single process)::

    source = input_pipeline.open_source(builder, "test")
    meta = evaluate.read_test_metadata(source)
    embed_fn = evaluate.make_model_embed_fn(
        model, {"params": params, "batch_stats": batch_stats})
    batches_fn = evaluate.make_batches_fn(source, batch_size=128,
                                          image_size=(288, 144))
    results = evaluate.run_sysu(embed_fn, batches_fn=batches_fn,
                                metadata=meta)  # logs results.table()
    results.write_json(os.path.join(workdir, "eval_sysu.json"))

Any `embed_fn(images [B, H, W, 3], modality) -> {"pool": [B, D], "bn":
[B, D]}` works (modality 0 visible, 1 infrared: it picks the model's stem).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from mclnet_jax import metrics as metrics_lib
from mclnet_jax import rerank as rerank_lib

VISIBLE = 0
INFRARED = 1
FEATURE_NAMES = ("pool", "bn")
SYSU_INFRARED_CAMERAS = (3, 6)
SYSU_VISIBLE_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SYSU_TRIALS = tuple(range(10))
REGDB_TRIALS = tuple(range(1, 11))
REGDB_DIRECTIONS = ("visible_to_infrared", "infrared_to_visible")
SUMMARY_RANKS = (1, 5, 10, 20)
# Appended to the protocol name of re-ranked results.
RERANK_SUFFIX = "+rerank"

EmbedFn = Callable[[Any, int], Mapping[str, Any]]
Batch = Mapping[str, Any]
BatchesFn = Callable[[np.ndarray], Iterable[Batch]]


# ---------------------------------------------------------------------------
# Test-split metadata.


@dataclasses.dataclass(frozen=True)
class TestMetadata:
    """Everything but the pixels of a test split; row i = example i.

    Attributes:
        identity: [N] int64 original person ids.
        camera: [N] int64 cameras (SYSU 1..6; RegDB 1 visible, 2 thermal).
        modality: [N] int64, 0 visible / 1 infrared.
        file_name: [N] object array of str, path relative to the dataset
            root, e.g. "cam3/0001/0004.jpg".
    """

    __test__ = False  # Not a pytest test class despite its name.

    identity: np.ndarray
    camera: np.ndarray
    modality: np.ndarray
    file_name: np.ndarray

    def __post_init__(self):
        n = len(self.identity)
        for name in ("camera", "modality", "file_name"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"TestMetadata.{name} has {len(getattr(self, name))} "
                    f"rows, identity has {n}: all fields must align."
                )
        bad = np.setdiff1d(self.modality, [VISIBLE, INFRARED])
        if bad.size:
            raise ValueError(
                f"modality must be 0 (visible) or 1 (infrared), found "
                f"{bad.tolist()}."
            )

    def __len__(self) -> int:
        return len(self.identity)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> TestMetadata:
        """From feature dicts with identity, camera, modality, file_name."""
        rows = [
            (
                int(r["identity"]),
                int(r["camera"]),
                int(r["modality"]),
                _as_str(r["file_name"]),
            )
            for r in records
        ]
        if not rows:
            raise ValueError("no records: the test split is empty.")
        ident, cam, mod, names = zip(*rows, strict=True)
        return cls(
            identity=np.asarray(ident, np.int64),
            camera=np.asarray(cam, np.int64),
            modality=np.asarray(mod, np.int64),
            file_name=_object_array(names),
        )


def _as_str(x) -> str:
    if isinstance(x, np.ndarray):
        x = x.item()
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def _object_array(items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def read_test_metadata(source, *, chunk_size: int = 2048) -> TestMetadata:
    """Reads identity / camera / modality / file_name of a whole split.

    Args:
        source: random-access split: serialized `tf.train.Example` records
            (`data_pipeline.input_pipeline.open_source(builder, split)`) or
            a sequence of feature dicts (e.g. `builder.as_data_source(split,
            decoders={"image": tfds.decode.SkipDecoding()})`).
        chunk_size: records per read.

    Returns:
        `TestMetadata`, row i = source[i].
    """
    n = len(source)
    if n == 0:
        raise ValueError("the split is empty: no examples to evaluate.")
    columns = {"identity": [], "camera": [], "modality": [], "file_name": []}
    for start in range(0, n, chunk_size):
        idx = list(range(start, min(n, start + chunk_size)))
        getitems = getattr(source, "__getitems__", None)
        items = list(getitems(idx)) if getitems else [source[i] for i in idx]
        if isinstance(items[0], (bytes, np.bytes_)):
            import tensorflow as tf  # pylint: disable=g-import-not-at-top

            spec = {
                k: tf.io.FixedLenFeature([], tf.int64)
                for k in ("identity", "camera", "modality")
            }
            spec["file_name"] = tf.io.FixedLenFeature([], tf.string)
            parsed = tf.io.parse_example(tf.constant(items), spec)
            for k in ("identity", "camera", "modality"):
                columns[k].append(parsed[k].numpy().astype(np.int64))
            columns["file_name"].append(
                _object_array(
                    [b.decode("utf-8") for b in parsed["file_name"].numpy()]
                )
            )
        else:
            part = TestMetadata.from_records(items)
            for k in columns:
                columns[k].append(getattr(part, k))
    return TestMetadata(**{k: np.concatenate(v) for k, v in columns.items()})


# ---------------------------------------------------------------------------
# Query / gallery selection.


def _check_mode(mode: str) -> tuple[int, ...]:
    if mode not in SYSU_VISIBLE_CAMERAS:
        raise ValueError(
            f"SYSU mode must be one of {sorted(SYSU_VISIBLE_CAMERAS)}, got "
            f"{mode!r}."
        )
    return SYSU_VISIBLE_CAMERAS[mode]


def _folders(
    meta: TestMetadata, cameras: Sequence[int]
) -> dict[tuple[int, int], list[int]]:
    """(identity, camera) -> split indices sorted by file name.

    This is the community's `sorted(os.listdir(cam/id))` without touching
    the disk: within one folder the file names share their prefix, so
    sorting relative paths sorts the base names.
    """
    keep = np.flatnonzero(np.isin(meta.camera, cameras))
    order = sorted(keep.tolist(), key=lambda i: meta.file_name[i])
    folders: dict[tuple[int, int], list[int]] = {}
    for i in order:
        folders.setdefault(
            (int(meta.identity[i]), int(meta.camera[i])), []
        ).append(i)
    return folders


def sysu_query_indices(meta: TestMetadata) -> np.ndarray:
    """[Q] int64 split indices of the SYSU query (process_query_sysu order).

    Every infrared image of the split: identities ascending, then camera 3
    before camera 6, then file name. (The same for both modes.)
    """
    folders = _folders(meta, SYSU_INFRARED_CAMERAS)
    out = []
    for identity in sorted({k[0] for k in folders}):
        for cam in SYSU_INFRARED_CAMERAS:
            out.extend(folders.get((identity, cam), ()))
    if not out:
        raise ValueError(
            "no infrared images (cameras 3, 6) in the test split: is this "
            "the SYSU-MM01 'test' split?"
        )
    return np.asarray(out, np.int64)


def sysu_gallery_indices(
    meta: TestMetadata, *, mode: str = "all", trial: int = 0, num_shots: int = 1
) -> np.ndarray:
    """[G] int64 split indices of one trial's SYSU gallery.

    Single-shot (num_shots=1) reproduces the community draw exactly:
    `random.seed(trial)`, identities ascending, cameras in order (all:
    1, 2, 4, 5; indoor: 1, 2), one `random.choice` of the sorted file list
    of each (identity, camera) folder that has images. num_shots > 1 uses
    `random.sample(files, min(num_shots, len(files)))` instead (ours).
    The gallery keeps the draw order (it breaks distance ties).

    Args:
        meta: metadata of the SYSU test split.
        mode: "all" or "indoor".
        trial: the seed (the community uses trials 0..9).
        num_shots: images per identity and camera.
    """
    cameras = _check_mode(mode)
    _check_num_shots(num_shots)
    return _draw_gallery(
        _folders(meta, cameras), cameras, trial=trial, num_shots=num_shots
    )


def _check_num_shots(num_shots):
    if (
        isinstance(num_shots, bool)
        or not isinstance(num_shots, (int, np.integer))
        or num_shots < 1
    ):
        raise ValueError(
            f"num_shots must be a positive int, got "
            f"{num_shots!r} (1 = single-shot, 10 = multi-shot)."
        )


def _draw_gallery(folders, cameras, *, trial, num_shots) -> np.ndarray:
    # A private generator seeded like `random.seed(trial)`: same sequence,
    # without touching the global random state.
    rng = random.Random(trial)
    out = []
    for identity in sorted({k[0] for k in folders}):
        for cam in cameras:
            files = folders.get((identity, cam))
            if not files:
                continue
            if num_shots == 1:
                out.append(rng.choice(files))
            else:
                out.extend(rng.sample(files, min(num_shots, len(files))))
    if not out:
        raise ValueError(
            f"no visible images from cameras {cameras} in the test split: "
            "is this the SYSU-MM01 'test' split?"
        )
    return np.asarray(out, np.int64)


def regdb_indices(
    meta: TestMetadata, *, direction: str
) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) split indices of one RegDB test split, by file name.

    The community keeps the order of its `idx/test_*_{t}.txt` lists; TFDS
    does not keep it, so we sort by file name (it only matters for exactly
    tied distances).
    """
    if direction not in REGDB_DIRECTIONS:
        raise ValueError(
            f"direction must be one of {REGDB_DIRECTIONS}, got {direction!r}."
        )
    by_name = np.asarray(
        sorted(range(len(meta)), key=lambda i: meta.file_name[i]), np.int64
    )
    visible = by_name[meta.modality[by_name] == VISIBLE]
    infrared = by_name[meta.modality[by_name] == INFRARED]
    if visible.size == 0 or infrared.size == 0:
        raise ValueError(
            f"RegDB test split needs both modalities, got {visible.size} "
            f"visible and {infrared.size} thermal images."
        )
    if direction == "visible_to_infrared":
        return visible, infrared
    return infrared, visible


# ---------------------------------------------------------------------------
# Feature extraction.


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
            {name: [B, D]}`; every image of a call has that modality (it
            picks the model's visible or infrared stem). B is fixed by
            `batches_fn`, so a jitted function compiles once per modality.
        batches_fn: `batches_fn(indices [n] int64) -> iterable of {"image":
            [B, H, W, 3], "mask": [B] bool, "index": [B] int}` covering the
            given split positions, padding marked by mask False (e.g.
            `make_batches_fn(source, ...)`). For several devices choose B
            divisible by the device count.
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
    # pylint: disable=g-import-not-at-top
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    # pylint: enable=g-import-not-at-top

    def forward(variables, images, modality):
        visible = images if modality == VISIBLE else None
        infrared = images if modality == INFRARED else None
        out = model.apply(variables, visible, infrared, train=False)
        return {name: out[name] for name in feature_names}

    # Replicated outputs: every process can fetch all the features.
    return jax.jit(
        forward,
        static_argnums=2,
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )


def make_model_embed_fn(
    model,
    variables: Mapping[str, Any],
    *,
    feature_names: Sequence[str] = FEATURE_NAMES,
    mesh=None,
) -> EmbedFn:
    """`embed_fn` for an MCLNet-style linen module, data-parallel.

    Calls `model.apply(variables, visible, infrared, train=False)` with the
    batch as `visible` or `infrared` according to the modality (so the
    matching stem is used), compiled once per model, mesh and batch shape.
    The batch is split over the mesh's devices along its first axis (B must
    be divisible by their number); the outputs come back to every process.
    With several processes, each passes the same full batch.

    Args:
        model: e.g. `MCLNet(...)`; returns a dict with `feature_names`.
        variables: {"params": ..., "batch_stats": ...}.
        feature_names: outputs to return.
        mesh: a `("data",)` mesh; default all local devices.
    """
    # pylint: disable=g-import-not-at-top
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    # pylint: enable=g-import-not-at-top

    if mesh is None:
        mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    forward = _compiled_forward(model, mesh, tuple(feature_names))
    num_devices = mesh.devices.size

    def embed_fn(images, modality):
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

    return embed_fn


def make_batches_fn(
    source,
    *,
    batch_size: int,
    image_size: tuple[int, int] = (288, 144),
    **kwargs,
) -> BatchesFn:
    """`batches_fn` over `data_pipeline.input_pipeline.make_eval_dataset`.

    Args:
        source: random-access split (see `read_test_metadata`).
        batch_size: images per batch (a multiple of the device count).
        image_size: (H, W) of the test transform.
        **kwargs: more `make_eval_dataset` arguments (dtype, mean, std, ...).
    """
    # Imported here: the data package pulls in TensorFlow.
    # pylint: disable-next=g-import-not-at-top
    from data_pipeline import input_pipeline

    def batches_fn(indices):
        return input_pipeline.make_eval_dataset(
            source,
            batch_size=batch_size,
            image_size=image_size,
            indices=indices,
            **kwargs,
        ).as_numpy_iterator()

    return batches_fn


# ---------------------------------------------------------------------------
# Results.


def _summary(
    per_trial: Sequence[metrics_lib.RetrievalMetrics],
) -> tuple[dict[str, float], dict[str, float]]:
    table = {}
    for k in SUMMARY_RANKS:
        if k <= len(per_trial[0].cmc):
            table[f"rank{k}"] = [m.rank(k) for m in per_trial]
    table["mAP"] = [m.mAP for m in per_trial]
    table["mINP"] = [m.mINP for m in per_trial]
    mean = {k: float(np.mean(v)) for k, v in table.items()}
    std = {k: float(np.std(v)) for k, v in table.items()}
    return mean, std


@dataclasses.dataclass
class EvaluationResults:
    """Per-trial metrics: `per_trial[protocol][feature][trial]`.

    Protocol names: "sysu_<mode>_single_shot", "sysu_<mode>_multi_shot"
    (10 shots; "sysu_<mode>_<n>_shot" for other n) and
    "regdb_visible_to_infrared" / "regdb_infrared_to_visible", each with
    `RERANK_SUFFIX` ("+rerank") when computed from re-ranked distances with
    the parameters `rerank`. Means and standard deviations (population,
    ddof=0) are over trials.
    """

    per_trial: dict[str, dict[str, dict[int, metrics_lib.RetrievalMetrics]]]
    rerank: rerank_lib.RerankParams | None = None

    def merge(self, other: EvaluationResults) -> EvaluationResults:
        """Union of two results (e.g. RegDB trials evaluated one by one)."""
        if self.rerank and other.rerank and self.rerank != other.rerank:
            raise ValueError(
                f"cannot merge results re-ranked with different parameters: "
                f"{self.rerank.describe()} vs {other.rerank.describe()}."
            )
        merged = {
            p: {f: dict(t) for f, t in fs.items()}
            for p, fs in self.per_trial.items()
        }
        for p, fs in other.per_trial.items():
            for f, trials in fs.items():
                dest = merged.setdefault(p, {}).setdefault(f, {})
                clash = set(dest) & set(trials)
                if clash:
                    raise ValueError(
                        f"{p}/{f}: trials {sorted(clash)} are in both results."
                    )
                dest.update(trials)
        return EvaluationResults(merged, rerank=self.rerank or other.rerank)

    def summary(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """{protocol: {feature: {"mean": {...}, "std": {...}}}} fractions."""
        out = {}
        for p, fs in self.per_trial.items():
            for f, trials in fs.items():
                mean, std = _summary([trials[t] for t in sorted(trials)])
                out.setdefault(p, {})[f] = {"mean": mean, "std": std}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: per-trial metrics, mean and std (fractions).

        Entries of re-ranked protocols also hold "rerank": {"k1", "k2",
        "lambda_value"}.
        """
        summary = self.summary()
        out = {}
        for p, fs in self.per_trial.items():
            for f, trials in fs.items():
                entry = out.setdefault(p, {})[f] = {
                    "trials": {
                        str(t): trials[t].to_dict() for t in sorted(trials)
                    },
                    "num_trials": len(trials),
                    **summary[p][f],
                }
                if p.endswith(RERANK_SUFFIX) and self.rerank is not None:
                    entry["rerank"] = self.rerank.to_dict()
        return out

    def write_json(self, path: str) -> None:
        """Writes `to_dict()` to `path` (local, or a tf.io.gfile URL)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if "://" in path:  # e.g. gs://: TensorFlow only where needed
            import tensorflow as tf  # pylint: disable=g-import-not-at-top

            with tf.io.gfile.GFile(path, "w") as f:
                f.write(text)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)

    def table(self) -> str:
        """Mean +- std over trials in percent, one row per protocol/feature."""
        summary = self.summary()
        columns = [f"rank{k}" for k in SUMMARY_RANKS] + ["mAP", "mINP"]
        width = max([28] + [len(p) for p in summary])
        header = (
            f"{'protocol':<{width}} {'feature':<7} {'trials':>6}  "
            + "  ".join(f"{c:>14}" for c in columns)
        )
        lines = [header, "-" * len(header)]
        for p in sorted(summary):
            for f in sorted(summary[p]):
                mean, std = summary[p][f]["mean"], summary[p][f]["std"]
                cells = [
                    f"{100 * mean[c]:6.2f} +-{100 * std[c]:5.2f}"
                    if c in mean
                    else f"{'-':>14}"
                    for c in columns
                ]
                lines.append(
                    f"{p:<{width}} {f:<7} {len(self.per_trial[p][f]):>6}  "
                    + "  ".join(cells)
                )
        if any(p.endswith(RERANK_SUFFIX) for p in summary):
            params = f": {self.rerank.describe()}" if self.rerank else ""
            lines.append(
                f"{RERANK_SUFFIX}: k-reciprocal re-ranking (Zhong "
                f"et al., CVPR 2017){params}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Protocols from features.


def _check_features(features: Mapping[str, np.ndarray], num: int) -> None:
    if not features:
        raise ValueError(
            "features is empty: pass e.g. {'pool': [N, D], 'bn': [N, D]}."
        )
    for name, value in features.items():
        shape = np.shape(value)
        if len(shape) != 2 or shape[0] != num:
            raise ValueError(
                f"features[{name!r}] must be [N={num}, D] (one row per "
                f"example of the split), got shape {shape}."
            )


def evaluate_sysu(
    features: Mapping[str, np.ndarray],
    metadata: TestMetadata,
    *,
    modes: Sequence[str] = ("all", "indoor"),
    trials: Sequence[int] = SYSU_TRIALS,
    num_shots: int = 1,
    max_rank: int = 20,
    normalize: bool = True,
    rerank: rerank_lib.RerankParams | None = None,
) -> EvaluationResults:
    """SYSU-MM01 protocols from features of the whole test split.

    Args:
        features: {name: [N, D]} rows aligned with `metadata` (e.g. from
            `extract_features`).
        metadata: the SYSU test split's `TestMetadata`.
        modes: any of "all", "indoor".
        trials: gallery seeds (community: 0..9).
        num_shots: 1 (single-shot, the community protocol) or e.g. 10.
        max_rank: CMC length.
        normalize: L2-normalise the features first (the protocol does).
        rerank: also evaluate k-reciprocal re-ranked distances with these
            parameters (protocols + "+rerank"; see the module docstring).

    Returns:
        `EvaluationResults` with protocols "sysu_<mode>_single_shot" (or
        "_multi_shot" for 10 shots, "_<n>_shot" otherwise).
    """
    _check_features(features, len(metadata))
    _check_num_shots(num_shots)
    _check_rerank(rerank)
    query = sysu_query_indices(metadata)
    shots = {1: "single_shot", 10: "multi_shot"}.get(
        num_shots, f"{num_shots}_shot"
    )
    galleries = {}
    for mode in modes:
        cameras = _check_mode(mode)
        folders = _folders(metadata, cameras)
        for t in trials:
            galleries[mode, t] = _draw_gallery(
                folders, cameras, trial=t, num_shots=num_shots
            )
    # Distances from the queries to every image some trial uses, once per
    # feature; each trial then selects its columns.
    union = np.unique(np.concatenate(list(galleries.values())))
    columns = {key: np.searchsorted(union, g) for key, g in galleries.items()}
    query_ids, query_cams = metadata.identity[query], metadata.camera[query]
    per_trial = {}
    for name, value in features.items():
        dist = metrics_lib.negative_inner_product(
            np.asarray(value)[query],
            np.asarray(value)[union],
            normalize=normalize,
        )
        for (mode, t), gallery in galleries.items():
            per_trial.setdefault(f"sysu_{mode}_{shots}", {}).setdefault(
                name, {}
            )[t] = metrics_lib.sysu_metrics(
                dist[:, columns[mode, t]],
                query_ids=query_ids,
                gallery_ids=metadata.identity[gallery],
                query_cams=query_cams,
                gallery_cams=metadata.camera[gallery],
                max_rank=max_rank,
            )
        if rerank is None:
            continue
        value = _rerank_features(value, normalize)
        logging.info(
            "Re-ranking %d SYSU galleries (%s), %d queries.",
            len(galleries),
            name,
            query.size,
        )
        q_q = rerank_lib.euclidean_distance(value[query])
        for (mode, t), gallery in galleries.items():
            dist = rerank_lib.k_reciprocal_distance(
                rerank_lib.euclidean_distance(value[query], value[gallery]),
                q_q,
                rerank_lib.euclidean_distance(value[gallery]),
                **rerank.to_dict(),
            )
            per_trial.setdefault(
                f"sysu_{mode}_{shots}{RERANK_SUFFIX}", {}
            ).setdefault(name, {})[t] = metrics_lib.sysu_metrics(
                dist,
                query_ids=query_ids,
                gallery_ids=metadata.identity[gallery],
                query_cams=query_cams,
                gallery_cams=metadata.camera[gallery],
                max_rank=max_rank,
            )
    return EvaluationResults(per_trial, rerank=rerank)


def _check_rerank(rerank) -> None:
    if rerank is not None and not isinstance(rerank, rerank_lib.RerankParams):
        raise ValueError(
            f"rerank must be None or a rerank.RerankParams, got {rerank!r} "
            "(e.g. rerank=rerank.RerankParams(k1=20, k2=6, "
            "lambda_value=0.3))."
        )


def _rerank_features(value, normalize: bool) -> np.ndarray:
    """The features whose Euclidean distances are re-ranked."""
    value = np.asarray(value)
    return metrics_lib.l2_normalize(value) if normalize else value


def evaluate_regdb(
    features: Mapping[str, np.ndarray],
    metadata: TestMetadata,
    *,
    trial: int,
    max_rank: int = 20,
    normalize: bool = True,
    rerank: rerank_lib.RerankParams | None = None,
) -> EvaluationResults:
    """Both RegDB directions for one trial's test split.

    Args:
        features: {name: [N, D]} rows aligned with `metadata`.
        metadata: that trial's test split.
        trial: the trial number (1..10), used as the key of the results.
        max_rank: CMC length.
        normalize: L2-normalise the features first (the protocol does).
        rerank: also evaluate k-reciprocal re-ranked distances with these
            parameters (protocols + "+rerank"; see the module docstring).

    Returns:
        `EvaluationResults` with protocols "regdb_visible_to_infrared" and
        "regdb_infrared_to_visible"; merge trials with `merge`.
    """
    _check_features(features, len(metadata))
    _check_rerank(rerank)
    visible, infrared = regdb_indices(metadata, direction="visible_to_infrared")
    per_trial = {}
    for name, value in features.items():
        # One matrix serves both directions (transposed).
        value = np.asarray(value)
        dist = metrics_lib.negative_inner_product(
            value[visible], value[infrared], normalize=normalize
        )
        for direction, (q, g, d) in {
            "visible_to_infrared": (visible, infrared, dist),
            "infrared_to_visible": (infrared, visible, dist.T),
        }.items():
            per_trial.setdefault(f"regdb_{direction}", {})[name] = {
                trial: metrics_lib.standard_metrics(
                    d,
                    query_ids=metadata.identity[q],
                    gallery_ids=metadata.identity[g],
                    query_cams=metadata.camera[q],
                    gallery_cams=metadata.camera[g],
                    max_rank=max_rank,
                )
            }
        if rerank is None:
            continue
        value = _rerank_features(value, normalize)
        vis_ir = rerank_lib.euclidean_distance(value[visible], value[infrared])
        vis_vis = rerank_lib.euclidean_distance(value[visible])
        ir_ir = rerank_lib.euclidean_distance(value[infrared])
        for direction, (q, g, q_g, q_q, g_g) in {
            "visible_to_infrared": (visible, infrared, vis_ir, vis_vis, ir_ir),
            "infrared_to_visible": (
                infrared,
                visible,
                vis_ir.T,
                ir_ir,
                vis_vis,
            ),
        }.items():
            dist = rerank_lib.k_reciprocal_distance(
                q_g, q_q, g_g, **rerank.to_dict()
            )
            per_trial.setdefault(f"regdb_{direction}{RERANK_SUFFIX}", {})[
                name
            ] = {
                trial: metrics_lib.standard_metrics(
                    dist,
                    query_ids=metadata.identity[q],
                    gallery_ids=metadata.identity[g],
                    query_cams=metadata.camera[q],
                    gallery_cams=metadata.camera[g],
                    max_rank=max_rank,
                )
            }
    return EvaluationResults(per_trial, rerank=rerank)


# ---------------------------------------------------------------------------
# End to end: model -> features -> protocols.


def run_sysu(
    embed_fn: EmbedFn,
    *,
    batches_fn: BatchesFn,
    metadata: TestMetadata,
    feature_names: Sequence[str] = FEATURE_NAMES,
    **kwargs,
) -> EvaluationResults:
    """Extracts the SYSU test features once and runs `evaluate_sysu`.

    Args:
        embed_fn, batches_fn, feature_names: see `extract_features`.
        metadata: `read_test_metadata` of the SYSU "test" split.
        **kwargs: `evaluate_sysu` options (modes, trials, num_shots, rerank,
            ...).
    """
    features = extract_features(
        embed_fn,
        batches_fn=batches_fn,
        modality=metadata.modality,
        feature_names=feature_names,
    )
    results = evaluate_sysu(features, metadata, **kwargs)
    logging.info("SYSU-MM01 evaluation:\n%s", results.table())
    return results


def run_regdb(
    embed_fn: EmbedFn,
    *,
    trials: Mapping[int, tuple[BatchesFn, TestMetadata]],
    feature_names: Sequence[str] = FEATURE_NAMES,
    **kwargs,
) -> EvaluationResults:
    """Extracts each RegDB trial's test features once and evaluates both
    directions.

    Args:
        embed_fn, feature_names: see `extract_features`.
        trials: {trial: (batches_fn, metadata)} for that trial's test split
            (the TFDS config "trial_<t>").
        **kwargs: `evaluate_regdb` options (max_rank, normalize, rerank).
    """
    if not trials:
        raise ValueError("trials is empty: give at least one RegDB trial.")
    results = None
    for trial in sorted(trials):
        batches_fn, metadata = trials[trial]
        features = extract_features(
            embed_fn,
            batches_fn=batches_fn,
            modality=metadata.modality,
            feature_names=feature_names,
        )
        one = evaluate_regdb(features, metadata, trial=trial, **kwargs)
        results = one if results is None else results.merge(one)
    logging.info("RegDB evaluation:\n%s", results.table())
    return results
