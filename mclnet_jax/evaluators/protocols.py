"""Which images are queries and which are gallery: the protocols, pure numpy.

Every function takes a split's metadata (`records.SplitMetadata`: only
`identity`, `camera`, `modality` and `file_name` are read) and returns split
positions. See docs/evaluation.md for what is drawn and why.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from data_pipeline.constants import (
    INFRARED,
    LLCM_INFRARED_CAMERAS,
    LLCM_VISIBLE_CAMERAS,
    MODALITY_NAMES,
    REGDB_DIRECTIONS,
    SYSU_GALLERY_CAMERAS,
    SYSU_INFRARED_CAMERAS,
    VISIBLE,
)
from mclnet_jax import errors

if TYPE_CHECKING:
    from data_pipeline.records import SplitMetadata


class RankListView(NamedTuple):
    """One query / gallery pair of a protocol, as a rank-list figure shows it.

    Attributes:
        name: file stem, e.g. "rank_list_sysu_all".
        title: figure title.
        query: [Q] int64 split positions of the queries.
        gallery: [G] int64 split positions of the gallery.
        flavour: the metric's removal rule, "sysu" or "standard"
            (`metrics.sysu_metrics` / `metrics.standard_metrics`; LLCM's
            removal is the standard one).
    """

    name: str
    title: str
    query: np.ndarray
    gallery: np.ndarray
    flavour: str


def check_mode(mode: str) -> tuple[int, ...]:
    """The visible gallery cameras of a SYSU search mode ("all", "indoor")."""
    if mode not in SYSU_GALLERY_CAMERAS:
        raise ValueError(
            f"SYSU mode must be one of {sorted(SYSU_GALLERY_CAMERAS)}, got "
            f"{mode!r}."
        )
    return SYSU_GALLERY_CAMERAS[mode]


def check_num_shots(num_shots) -> int:
    if (
        isinstance(num_shots, bool)
        or not isinstance(num_shots, (int, np.integer))
        or num_shots < 1
    ):
        raise ValueError(
            f"num_shots must be a positive int, got "
            f"{num_shots!r} (1 = single-shot, 10 = multi-shot)."
        )
    return int(num_shots)


def shots_name(num_shots: int) -> str:
    """ "single_shot" (1), "multi_shot" (10) or "<n>_shot"."""
    return {1: "single_shot", 10: "multi_shot"}.get(
        num_shots, f"{num_shots}_shot"
    )


def _folders(
    meta: SplitMetadata,
    cameras: Sequence[int],
    *,
    modality: int | None = None,
) -> dict[tuple[int, int], list[int]]:
    """(identity, camera) -> split indices sorted by file name.

    This is the community's `sorted(os.listdir(cam/id))` without touching
    the disk: within one folder the file names share their prefix, so
    sorting relative paths sorts the base names. `modality` keeps that
    modality's images only (LLCM numbers its cameras across modalities).
    """
    keep = np.isin(meta.camera, cameras)
    if modality is not None:
        keep &= meta.modality == modality
    keep = np.flatnonzero(keep)
    order = sorted(keep.tolist(), key=lambda i: meta.file_name[i])
    folders: dict[tuple[int, int], list[int]] = {}
    for i in order:
        key = (int(meta.identity[i]), int(meta.camera[i]))
        folders.setdefault(key, []).append(i)
    return folders


def sysu_query_indices(meta: SplitMetadata) -> np.ndarray:
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
            f"no infrared images (cameras {SYSU_INFRARED_CAMERAS}) in the "
            "test split: is this the SYSU-MM01 'test' split?"
        )
    return np.asarray(out, np.int64)


def sysu_gallery_indices(
    meta: SplitMetadata,
    *,
    mode: str = "all",
    trial: int = 0,
    num_shots: int = 1,
) -> np.ndarray:
    """[G] int64 split indices of one trial's SYSU gallery.

    Single-shot (num_shots=1) reproduces the community draw exactly:
    `random.seed(trial)`, identities ascending, the mode's cameras in order,
    one `random.choice` of the sorted file list of each (identity, camera)
    folder that has images. num_shots > 1 uses `random.sample(files,
    min(num_shots, len(files)))` instead (ours). The gallery keeps the draw
    order (it breaks distance ties).

    Args:
        meta: metadata of the SYSU test split.
        mode: "all" or "indoor".
        trial: the seed (the community uses trials 0..9).
        num_shots: images per identity and camera.
    """
    cameras = check_mode(mode)
    num_shots = check_num_shots(num_shots)
    return _draw_gallery(
        _folders(meta, cameras), cameras, trial=trial, num_shots=num_shots
    )


def sysu_galleries(
    meta: SplitMetadata,
    *,
    modes: Sequence[str],
    trials: Sequence[int],
    num_shots: int = 1,
) -> dict[tuple[str, int], np.ndarray]:
    """{(mode, trial): `sysu_gallery_indices`}, sorting the folders once."""
    num_shots = check_num_shots(num_shots)
    out = {}
    for mode in modes:
        cameras = check_mode(mode)
        folders = _folders(meta, cameras)
        for t in trials:
            out[mode, t] = _draw_gallery(
                folders, cameras, trial=t, num_shots=num_shots
            )
    return out


def _draw_gallery(
    folders, cameras, *, trial, num_shots, what="SYSU-MM01 visible"
) -> np.ndarray:
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
        dataset, modality = what.split()
        raise ValueError(
            f"no {modality} images from cameras {cameras} in the test split: "
            f"is this the {dataset} 'test' split?"
        )
    return np.asarray(out, np.int64)


# The SYSU-MM01 evaluation kit's fixed gallery permutations
# (github.com/wuancong/SYSU-MM01, evaluation/data_split/rand_perm_cam.mat):
# the MATLAB variable, and the cameras of its outer cell array.
SYSU_RAND_PERM_VARIABLE = "rand_perm_cam"
SYSU_RAND_PERM_CAMERAS = 6
# {camera: {identity: [runs, n] int64, 1-based positions}}.
SysuRandPerm = Mapping[int, Mapping[int, np.ndarray]]


def load_sysu_rand_perm(path: str) -> dict[int, dict[int, np.ndarray]]:
    """The SYSU-MM01 kit's `rand_perm_cam.mat`, read with scipy.io.loadmat.

    The kit (`evaluation_SYSU_MM01.m`, `get_testing_set.m`) stores a cell
    array over the 6 cameras of cell arrays over person ids 1..533:
    `rand_perm_cam{camera}{id}` is a [runs, n] matrix (10 runs), row r a
    permutation of 1..n, the n images of that id in that camera (1-based,
    the folder's files in name order: 0001.jpg is 1); empty where the
    camera has no image of the id. Run r's N-shot gallery takes the first
    N entries of row r.

    Returns:
        {camera 1..6: {identity: [runs, n] int64}}, empty cells left out.

    Raises:
        FileNotFoundError: no file at `path`.
        errors.ConfigurationError: not a MATLAB file, or not the kit's
            layout (a user's error: one message, exit 2).
    """
    # Imported here: only the official SYSU draw needs scipy.
    import scipy.io

    fix = (
        "pass the SYSU-MM01 evaluation kit's "
        "evaluation/data_split/rand_perm_cam.mat "
        "(github.com/wuancong/SYSU-MM01) as config.eval.sysu_rand_perm"
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No file {path!r}: {fix}.")
    try:
        mat = scipy.io.loadmat(path)
    except (
        scipy.io.matlab.MatReadError,
        ValueError,
        OSError,
        TypeError,
        NotImplementedError,
    ) as e:
        raise errors.ConfigurationError(
            f"Cannot read {path!r} as a MATLAB file ({e}); {fix} (MATLAB "
            "-v7.3 files: save it again with -v7)."
        ) from e
    if SYSU_RAND_PERM_VARIABLE not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise errors.ConfigurationError(
            f"{path!r} has no variable {SYSU_RAND_PERM_VARIABLE!r} (it has "
            f"{names}); {fix}."
        )
    cells = np.asarray(mat[SYSU_RAND_PERM_VARIABLE])
    if (
        cells.dtype != object
        or cells.size != SYSU_RAND_PERM_CAMERAS
        or not _is_vector(cells)
    ):
        raise errors.ConfigurationError(
            f"{path!r}: {SYSU_RAND_PERM_VARIABLE} must be a cell array of "
            f"{SYSU_RAND_PERM_CAMERAS} cameras, got a {cells.dtype} array of "
            f"shape {cells.shape}; {fix}."
        )
    out: dict[int, dict[int, np.ndarray]] = {}
    for camera, per_id in enumerate(cells.ravel(), start=1):
        per_id = np.asarray(per_id)
        if per_id.dtype != object or not _is_vector(per_id):
            raise errors.ConfigurationError(
                f"{path!r}: {SYSU_RAND_PERM_VARIABLE}{{{camera}}} must be a "
                f"cell vector over person ids, got a {per_id.dtype} array of "
                f"shape {per_id.shape}; {fix}."
            )
        out[camera] = {}
        for identity, perm in enumerate(per_id.ravel(), start=1):
            perm = np.asarray(perm)
            if perm.size == 0:
                continue
            if (
                perm.ndim != 2
                or not np.issubdtype(perm.dtype, np.number)
                or np.any(perm != np.round(perm))
                or perm.min() < 1
            ):
                raise errors.ConfigurationError(
                    f"{path!r}: {SYSU_RAND_PERM_VARIABLE}{{{camera}}}"
                    f"{{{identity}}} must be a [runs, n] matrix of 1-based "
                    f"image positions, got {perm.dtype} of shape "
                    f"{perm.shape}; {fix}."
                )
            out[camera][identity] = perm.astype(np.int64)
    return out


def _is_vector(cells: np.ndarray) -> bool:
    """Whether a MATLAB array is a row or column (or empty): only then is
    cell k the k-th of `ravel()` (MATLAB indexes matrices column-major)."""
    return cells.size == 0 or max(cells.shape) == cells.size


def check_sysu_rand_perm(
    meta: SplitMetadata,
    rand_perm: SysuRandPerm,
    *,
    modes: Sequence[str],
    num_trials: int,
) -> None:
    """Checks that the kit's permutations fit the split's gallery folders.

    Every identity of the split, in every gallery camera of `modes`, must
    have a permutation exactly where the split has images, with at least
    `num_trials` runs, each run a permutation of 1..n for the folder's n
    images.

    Raises:
        errors.ConfigurationError: naming the first identity and camera
            that do not fit.
    """
    cameras = sorted({c for m in modes for c in check_mode(m)})
    folders = _folders(meta, cameras)
    identities = sorted({int(i) for i in meta.identity})
    hint = (
        "is config.eval.sysu_rand_perm the kit's rand_perm_cam.mat, and "
        "the split SYSU-MM01's (the ids of the kit's person folders)?"
    )
    for camera in cameras:
        perms = rand_perm.get(camera, {})
        for identity in identities:
            files = folders.get((identity, camera), [])
            perm = perms.get(identity)
            if perm is None and not files:
                continue
            if perm is None or not files:
                have = (
                    "no permutation"
                    if perm is None
                    else f"a {perm.shape} permutation"
                )
                raise errors.ConfigurationError(
                    f"rand_perm_cam.mat has {have} for id {identity} in "
                    f"camera {camera}, where the split has {len(files)} "
                    f"images: {hint}"
                )
            if perm.shape[0] < num_trials:
                raise errors.ConfigurationError(
                    f"rand_perm_cam.mat has {perm.shape[0]} runs for id "
                    f"{identity} in camera {camera}, fewer than the "
                    f"{num_trials} trials asked for (the kit has 10): lower "
                    "num_trials."
                )
            want = np.arange(1, len(files) + 1)
            for run in range(num_trials):
                if not np.array_equal(np.sort(perm[run]), want):
                    raise errors.ConfigurationError(
                        f"rand_perm_cam.mat run {run + 1} of id {identity} "
                        f"in camera {camera} is not a permutation of the "
                        f"split's {len(files)} images (1..{len(files)}): "
                        f"{hint}"
                    )


def sysu_official_galleries(
    meta: SplitMetadata,
    rand_perm: SysuRandPerm,
    *,
    modes: Sequence[str],
    trials: Sequence[int],
    num_shots: int = 1,
) -> dict[tuple[str, int], np.ndarray]:
    """{(mode, trial): [G] int64} the SYSU-MM01 kit's galleries.

    As the kit's get_testing_set: trial t (0-based) is the kit's run t + 1;
    for every camera of the mode in order, every identity of the split
    ascending, the first `num_shots` entries of that run's permutation of
    the (identity, camera) folder, as positions in its sorted file list
    (all n when n < num_shots, where the kit's MATLAB would fail). Checked
    first with `check_sysu_rand_perm`.
    """
    num_shots = check_num_shots(num_shots)
    if any(
        isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0
        for t in trials
    ):
        raise ValueError(
            f"trials must be run numbers 0..9 of the kit, got {trials!r}."
        )
    check_sysu_rand_perm(
        meta, rand_perm, modes=modes, num_trials=max(trials, default=-1) + 1
    )
    out = {}
    for mode in modes:
        cameras = check_mode(mode)
        folders = _folders(meta, cameras)
        for t in trials:
            gallery = []
            for camera in cameras:
                for identity in sorted(k[0] for k in folders if k[1] == camera):
                    files = folders[identity, camera]
                    picked = rand_perm[camera][identity][t, :num_shots]
                    gallery.extend(files[i - 1] for i in picked)
            if not gallery:
                raise errors.ConfigurationError(
                    f"no visible images from cameras {cameras} in the test "
                    "split: is this the SYSU-MM01 'test' split?"
                )
            out[mode, t] = np.asarray(gallery, np.int64)
    return out


def regdb_indices(
    meta: SplitMetadata, *, direction: str
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
        sorted(range(len(meta.file_name)), key=lambda i: meta.file_name[i]),
        np.int64,
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


# LLCM's test cameras of each modality.
LLCM_CAMERAS = {VISIBLE: LLCM_VISIBLE_CAMERAS, INFRARED: LLCM_INFRARED_CAMERAS}


def llcm_query_indices(meta: SplitMetadata, *, modality: int) -> np.ndarray:
    """[Q] int64 split indices of every LLCM test image of `modality`.

    Ordered as the reference code reads its query: identities ascending,
    then cameras ascending, then file name.
    """
    folders = _folders(meta, LLCM_CAMERAS[modality], modality=modality)
    out = [i for key in sorted(folders) for i in folders[key]]
    if not out:
        raise ValueError(
            f"no {MODALITY_NAMES[modality]} images (cameras "
            f"{LLCM_CAMERAS[modality]}) in the test split: is this the LLCM "
            "'test' split?"
        )
    return np.asarray(out, np.int64)


def llcm_galleries(
    meta: SplitMetadata, *, modality: int, trials: Sequence[int]
) -> dict[int, np.ndarray]:
    """{trial: [G] int64 split indices} of LLCM's single-shot draws.

    The reference code's draw: `random.seed(trial)`, identities ascending,
    the modality's cameras ascending, one `random.choice` of the
    file-name-sorted images of each (identity, camera) folder that has
    any; here with a private `random.Random(trial)`.
    """
    cameras = LLCM_CAMERAS[modality]
    folders = _folders(meta, cameras, modality=modality)
    what = f"LLCM {MODALITY_NAMES[modality]}"
    return {
        t: _draw_gallery(folders, cameras, trial=t, num_shots=1, what=what)
        for t in trials
    }
