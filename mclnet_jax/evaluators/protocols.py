"""Which images are queries and which are gallery: the protocols, pure numpy.

Every function takes a split's metadata (`records.SplitMetadata`: only
`identity`, `camera`, `modality` and `file_name` are read) and returns split
positions. See docs/evaluation.md for what is drawn and why.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from data_pipeline.constants import (
    INFRARED,
    REGDB_DIRECTIONS,
    SYSU_GALLERY_CAMERAS,
    SYSU_INFRARED_CAMERAS,
    VISIBLE,
)

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
            (`metrics.sysu_metrics` / `metrics.standard_metrics`).
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
    meta: SplitMetadata, cameras: Sequence[int]
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
