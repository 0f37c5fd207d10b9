"""Writing synthetic datasets in the SYSU-MM01, RegDB and LLCM layouts.

The folders read like the real ones (`data_pipeline.layouts`), so the TFDS
builders, training and evaluation run on them. See the docs/datasets.md
"Synthetic data".
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import time
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image

from data_pipeline import constants, layouts
from data_pipeline.synthetic import appearance, rendering


@dataclasses.dataclass(frozen=True)
class GenerationSummary:
    """What a generator wrote.

    Attributes:
      root: the dataset root.
      num_images: number of image files written.
      num_visible: visible images among them.
      num_infrared: infrared images among them.
      identities: all person ids, sorted.
      splits: split name -> sorted person ids (SYSU: "train", "val", "test";
        RegDB: "train_{t}", "test_{t}"; LLCM: "train", "test").
      seconds: wall time of the generation.
    """

    root: str
    num_images: int
    num_visible: int
    num_infrared: int
    identities: tuple[int, ...]
    splits: dict[str, tuple[int, ...]]
    seconds: float


def _encode(image: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 [H, W, 3] -> JPEG (fmt "jpg") or BMP bytes."""
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    else:
        Image.fromarray(image).save(buf, format="BMP")
    return buf.getvalue()


def _prepare_root(root: str, owned: Sequence[str], overwrite: bool) -> None:
    """Creates `root`; refuses to mix with an existing dataset unless asked."""
    existing = [d for d in owned if os.path.exists(os.path.join(root, d))]
    if existing and not overwrite:
        raise FileExistsError(
            f"{root} already holds {', '.join(existing)}; pass overwrite=True "
            "(--overwrite) to replace them, or choose an empty --out."
        )
    for d in existing:
        path = os.path.join(root, d)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(root, exist_ok=True)


def _check_size(name: str, value: int, minimum: int) -> None:
    """Raises `SyntheticDataError` unless `value` is an int >= `minimum`."""
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise appearance.SyntheticDataError(
            f"{name} must be an integer >= {minimum}, got {value!r}."
        )


def _check_image_size(height: int, width: int) -> None:
    """The smallest images the synthetic renderer accepts: 16 x 8."""
    _check_size("height", height, 16)
    _check_size("width", width, 8)


def _summary(
    dataset: str, root: str, counts, pids, splits, start: float
) -> GenerationSummary:
    """Logs what a generator wrote and returns it; `counts` has "visible"
    and "infrared", `start` is the generator's `time.perf_counter()`."""
    seconds = time.perf_counter() - start
    total = counts["visible"] + counts["infrared"]
    logging.info(
        "Wrote %d synthetic %s images (%d ids) to %s in %.1f s.",
        total,
        dataset,
        len(pids),
        root,
        seconds,
    )
    return GenerationSummary(
        root=root,
        num_images=total,
        num_visible=counts["visible"],
        num_infrared=counts["infrared"],
        identities=tuple(int(p) for p in pids),
        splits=splits,
        seconds=seconds,
    )


def sysu_split(
    identities: Sequence[int], *, seed: int
) -> dict[str, tuple[int, ...]]:
    """Splits ids into train / val / test in SYSU-MM01's 296:99:96 proportion.

    Args:
      identities: person ids (at least 3).
      seed: random seed of the split.

    Returns:
      {"train": ..., "val": ..., "test": ...}, sorted tuples of ids; each split
      has at least one id.
    """
    ids = np.array(sorted(identities))
    n = len(ids)
    if n < 3:
        raise appearance.SyntheticDataError(
            f"need at least 3 identities, got {n}."
        )
    total = sum(constants.SYSU_SPLIT_SIZES)
    n_val = max(1, int(round(n * constants.SYSU_SPLIT_SIZES[1] / total)))
    n_test = max(1, int(round(n * constants.SYSU_SPLIT_SIZES[2] / total)))
    n_train = n - n_val - n_test
    if n_train < 1:
        n_train, n_val, n_test = n - 2, 1, 1
    perm = np.random.default_rng([seed, 3]).permutation(ids)
    parts = np.split(perm, [n_train, n_train + n_val])
    return {
        name: tuple(int(i) for i in sorted(p))
        for name, p in zip(("train", "val", "test"), parts, strict=True)
    }


def generate_sysu(
    root: str,
    *,
    num_identities: int = 300,
    visible_images_per_camera: int = 10,
    infrared_images_per_camera: int = 10,
    height: int = 96,
    width: int = 48,
    seed: int = 0,
    jpeg_quality: int = 90,
    pattern_scale: float = 1.0,
    overwrite: bool = False,
) -> GenerationSummary:
    """Writes a synthetic dataset in the SYSU-MM01 layout.

    Person ids are 1..num_identities, every one in every camera, split as
    `sysu_split` does; image k of a person in a camera is ``{k:04d}.jpg``.

    Args:
      root: output folder (created).
      num_identities: number of people (>= 3).
      visible_images_per_camera: images per identity per visible camera.
      infrared_images_per_camera: images per identity per infrared camera.
      height: image height in pixels (>= 16).
      width: image width in pixels (>= 8).
      seed: random seed; equal seeds give byte-identical files.
      jpeg_quality: JPEG quality (1..95).
      pattern_scale: clothing-pattern frequency factor (see
        `appearance.sample_identities`).
      overwrite: replace cam*/exp folders already under `root`.

    Returns:
      A `GenerationSummary`.
    """
    start = time.perf_counter()
    _check_size("num_identities", num_identities, 3)
    _check_size("visible_images_per_camera", visible_images_per_camera, 1)
    _check_size("infrared_images_per_camera", infrared_images_per_camera, 1)
    _check_image_size(height, width)
    if not 1 <= jpeg_quality <= 95:
        raise appearance.SyntheticDataError(
            f"jpeg_quality must be in 1..95, got {jpeg_quality}."
        )
    appearance.check_pattern_scale(pattern_scale)
    folders = [f"cam{c}" for c in constants.SYSU_CAMERAS]
    _prepare_root(root, folders + ["exp"], overwrite)

    identities = appearance.sample_identities(
        num_identities, seed=seed, pattern_scale=pattern_scale
    )
    pids = np.arange(1, num_identities + 1)
    counts = {"visible": 0, "infrared": 0}
    for cam in constants.SYSU_CAMERAS:
        infrared = cam in constants.SYSU_INFRARED_CAMERAS
        per_id = (
            infrared_images_per_camera
            if infrared
            else visible_images_per_camera
        )
        camera = appearance.make_camera(
            cam,
            infrared=infrared,
            outdoor=cam not in constants.SYSU_INDOOR_CAMERAS,
            seed=seed,
        )
        rng = np.random.default_rng([seed, 2, cam])
        index = np.repeat(np.arange(num_identities), per_id)
        views = appearance.sample_views(camera, index.size, rng=rng)
        # Written chunk by chunk: memory stays bounded at any dataset size.
        for first, images in rendering.iter_render_camera(
            identities,
            index,
            views,
            camera,
            height=height,
            width=width,
            rng=rng,
        ):
            for row, image in enumerate(images, start=first):
                ident = index[row]
                folder = os.path.join(root, f"cam{cam}", f"{pids[ident]:04d}")
                k = row - ident * per_id + 1
                if k == 1:
                    os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"{k:04d}.jpg"), "wb") as f:
                    f.write(_encode(image, "jpg", jpeg_quality))
        counts["infrared" if infrared else "visible"] += index.size

    splits = sysu_split(pids.tolist(), seed=seed)
    os.makedirs(os.path.join(root, "exp"), exist_ok=True)
    for name, ids in splits.items():
        path = os.path.join(root, "exp", layouts.SYSU_SPLIT_FILES[name])
        with open(path, "w") as f:
            f.write(",".join(str(i) for i in ids) + "\n")
    return _summary("SYSU-MM01", root, counts, pids, splits, start)


def regdb_split(
    identities: Sequence[int], *, trial: int, seed: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Random half/half split of `identities` for one RegDB trial.

    Returns:
      (train ids, test ids), sorted; train gets the smaller half when odd.
    """
    ids = np.array(sorted(identities))
    perm = np.random.default_rng([seed, 4, trial]).permutation(ids)
    half = len(ids) // 2
    return (
        tuple(int(i) for i in sorted(perm[:half])),
        tuple(int(i) for i in sorted(perm[half:])),
    )


def generate_regdb(
    root: str,
    *,
    num_identities: int = 412,
    images_per_modality: int = 10,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    image_format: str = "bmp",
    num_trials: int = len(constants.REGDB_TRIALS),
    pattern_scale: float = 1.0,
    overwrite: bool = False,
) -> GenerationSummary:
    """Writes a synthetic dataset in the RegDB layout.

    Images are ``Visible/{pid}/visible_{pid:04d}_{k:02d}.{fmt}`` and
    ``Thermal/{pid}/thermal_...`` (pid and k from 1). Trial t splits the ids
    as `regdb_split`; its train files label the train ids 0..n_train-1 in id
    order (as the AGW-family code expects of RegDB), its test files go on
    from n_train. As in RegDB, the k-th visible and thermal images of a
    person share the moment (pose) but not the camera.

    Args:
      root: output folder (created).
      num_identities: number of people (>= 2).
      images_per_modality: images per identity per modality.
      height: image height (>= 16).
      width: image width (>= 8).
      seed: random seed; equal seeds give byte-identical files.
      image_format: "bmp" (as RegDB) or "jpg".
      num_trials: number of trial split files (RegDB has 10).
      pattern_scale: clothing-pattern frequency factor (see
        `appearance.sample_identities`).
      overwrite: replace Visible/Thermal/idx folders already under `root`.

    Returns:
      A `GenerationSummary` (splits "train_{t}" and "test_{t}").
    """
    start = time.perf_counter()
    _check_size("num_identities", num_identities, 2)
    _check_size("images_per_modality", images_per_modality, 1)
    _check_image_size(height, width)
    _check_size("num_trials", num_trials, 1)
    appearance.check_pattern_scale(pattern_scale)
    if image_format not in ("bmp", "jpg"):
        raise appearance.SyntheticDataError(
            f"image_format must be 'bmp' or 'jpg', got {image_format!r}."
        )
    _prepare_root(root, ["Visible", "Thermal", "idx"], overwrite)

    identities = appearance.sample_identities(
        num_identities, seed=seed, pattern_scale=pattern_scale
    )
    pids = np.arange(1, num_identities + 1)
    index = np.repeat(np.arange(num_identities), images_per_modality)
    # Both cameras see the same moment: share the pose, not the camera style.
    pose_rng = np.random.default_rng([seed, 2, 0])
    phase = pose_rng.uniform(0.0, 1.0, index.size)
    mirror = np.where(pose_rng.uniform(size=index.size) < 0.5, -1.0, 1.0)
    files = {}
    for cam, folder, prefix in (
        (constants.REGDB_VISIBLE_CAMERA, "Visible", "visible"),
        (constants.REGDB_THERMAL_CAMERA, "Thermal", "thermal"),
    ):
        infrared = cam == constants.REGDB_THERMAL_CAMERA
        camera = appearance.make_camera(
            cam, infrared=infrared, outdoor=False, seed=seed
        )
        rng = np.random.default_rng([seed, 2, cam])
        views = appearance.sample_views(camera, index.size, rng=rng)
        views["phase"] = phase
        views["mirror"] = mirror
        names = []
        for first, images in rendering.iter_render_camera(
            identities,
            index,
            views,
            camera,
            height=height,
            width=width,
            rng=rng,
        ):
            for row, image in enumerate(images, start=first):
                pid = int(pids[index[row]])
                k = row - index[row] * images_per_modality + 1
                rel = (
                    f"{folder}/{pid}/{prefix}_{pid:04d}_{k:02d}.{image_format}"
                )
                if k == 1:
                    os.makedirs(
                        os.path.join(root, folder, str(pid)), exist_ok=True
                    )
                with open(os.path.join(root, rel), "wb") as f:
                    f.write(_encode(image, image_format, 95))
                names.append((pid, rel))
        files[prefix] = names

    os.makedirs(os.path.join(root, "idx"), exist_ok=True)
    splits = {}
    for trial in range(1, num_trials + 1):
        train, test = regdb_split(pids.tolist(), trial=trial, seed=seed)
        splits[f"train_{trial}"] = train
        splits[f"test_{trial}"] = test
        label = {pid: i for i, pid in enumerate(train + test)}
        for split, ids in (("train", set(train)), ("test", set(test))):
            for prefix in ("visible", "thermal"):
                lines = [
                    f"{rel} {label[pid]}\n"
                    for pid, rel in files[prefix]
                    if pid in ids
                ]
                path = layouts.regdb_index_path(root, split, prefix, trial)
                with open(path, "w") as f:
                    f.writelines(lines)
    counts = {"visible": index.size, "infrared": index.size}
    return _summary("RegDB", root, counts, pids, splits, start)


# LLCM's identities: 713 for training, 351 for testing.
LLCM_SPLIT_SIZES = (713, 351)


def llcm_split(
    identities: Sequence[int], *, seed: int
) -> dict[str, tuple[int, ...]]:
    """Splits ids into train / test in LLCM's 713:351 proportion.

    Args:
      identities: person ids (at least 2).
      seed: random seed of the split.

    Returns:
      {"train": ..., "test": ...}, sorted tuples of ids; each split has at
      least one id.
    """
    ids = np.array(sorted(identities))
    n = len(ids)
    if n < 2:
        raise appearance.SyntheticDataError(
            f"need at least 2 identities, got {n}."
        )
    n_test = int(round(n * LLCM_SPLIT_SIZES[1] / sum(LLCM_SPLIT_SIZES)))
    n_test = min(max(1, n_test), n - 1)
    perm = np.random.default_rng([seed, 5]).permutation(ids)
    return {
        "train": tuple(int(i) for i in sorted(perm[n_test:])),
        "test": tuple(int(i) for i in sorted(perm[:n_test])),
    }


def generate_llcm(
    root: str,
    *,
    num_identities: int = 300,
    visible_images_per_camera: int = 3,
    infrared_images_per_camera: int = 3,
    height: int = 96,
    width: int = 48,
    seed: int = 0,
    jpeg_quality: int = 90,
    pattern_scale: float = 1.0,
    overwrite: bool = False,
) -> GenerationSummary:
    """Writes a synthetic dataset in the LLCM layout.

    Person ids are 1..num_identities, split as `llcm_split`; every person is
    seen by the nine visible cameras and the eight infrared ones (no
    infrared camera 3, as in LLCM's test set). Image k of a person in
    camera c is named ``{pid:04d}_c{c:02d}_{k:04d}_{vis,nir}.jpg``; as in
    LLCM, a training image lies in ``{vis,nir}/{pid:04d}/`` (its camera only
    in its name) and a test image in ``test_{vis,nir}/cam{c}/{pid:04d}/``.
    idx/train_vis.txt and idx/train_nir.txt list the training images with
    the label of their id (0..n_train-1 in id order); idx/test_id.txt holds
    the test ids. A camera keeps its number in both modalities, as in LLCM.

    Args:
      root: output folder (created).
      num_identities: number of people (>= 2).
      visible_images_per_camera: images per identity per visible camera.
      infrared_images_per_camera: images per identity per infrared camera.
      height: image height in pixels (>= 16).
      width: image width in pixels (>= 8).
      seed: random seed; equal seeds give byte-identical files.
      jpeg_quality: JPEG quality (1..95).
      pattern_scale: clothing-pattern frequency factor (see
        `appearance.sample_identities`).
      overwrite: replace the folders of an LLCM layout already under `root`.

    Returns:
      A `GenerationSummary` (splits "train" and "test").
    """
    start = time.perf_counter()
    _check_size("num_identities", num_identities, 2)
    _check_size("visible_images_per_camera", visible_images_per_camera, 1)
    _check_size("infrared_images_per_camera", infrared_images_per_camera, 1)
    _check_image_size(height, width)
    if not 1 <= jpeg_quality <= 95:
        raise appearance.SyntheticDataError(
            f"jpeg_quality must be in 1..95, got {jpeg_quality}."
        )
    appearance.check_pattern_scale(pattern_scale)
    folders = ["vis", "nir", "test_vis", "test_nir", "idx"]
    _prepare_root(root, folders, overwrite)

    identities = appearance.sample_identities(
        num_identities, seed=seed, pattern_scale=pattern_scale
    )
    pids = np.arange(1, num_identities + 1)
    splits = llcm_split(pids.tolist(), seed=seed)
    test_ids = set(splits["test"])
    label = {pid: i for i, pid in enumerate(splits["train"])}
    counts = {"visible": 0, "infrared": 0}
    train_lines = {"vis": [], "nir": []}
    for suffix, cameras, per_id in (
        ("vis", constants.LLCM_VISIBLE_CAMERAS, visible_images_per_camera),
        ("nir", constants.LLCM_INFRARED_CAMERAS, infrared_images_per_camera),
    ):
        infrared = suffix == "nir"
        for cam in cameras:
            camera = appearance.make_camera(
                cam, infrared=infrared, outdoor=cam % 2 == 0, seed=seed
            )
            rng = np.random.default_rng([seed, 2, cam, int(infrared)])
            index = np.repeat(np.arange(num_identities), per_id)
            views = appearance.sample_views(camera, index.size, rng=rng)
            for first, images in rendering.iter_render_camera(
                identities,
                index,
                views,
                camera,
                height=height,
                width=width,
                rng=rng,
            ):
                for row, image in enumerate(images, start=first):
                    pid = int(pids[index[row]])
                    split = "test" if pid in test_ids else "train"
                    k = row - index[row] * per_id + 1
                    rel_dir = (
                        f"test_{suffix}/cam{cam}/{pid:04d}"
                        if split == "test"
                        else f"{suffix}/{pid:04d}"
                    )
                    if k == 1:
                        os.makedirs(os.path.join(root, rel_dir), exist_ok=True)
                    rel = f"{rel_dir}/{pid:04d}_c{cam:02d}_{k:04d}_{suffix}.jpg"
                    with open(os.path.join(root, rel), "wb") as f:
                        f.write(_encode(image, "jpg", jpeg_quality))
                    if split == "train":
                        train_lines[suffix].append(f"{rel} {label[pid]}\n")
            counts["infrared" if infrared else "visible"] += index.size

    os.makedirs(os.path.join(root, "idx"), exist_ok=True)
    for suffix, lines in train_lines.items():
        with open(os.path.join(root, "idx", f"train_{suffix}.txt"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(root, "idx", "test_id.txt"), "w") as f:
        f.write(",".join(str(i) for i in splits["test"]) + "\n")
    return _summary("LLCM", root, counts, pids, splits, start)
