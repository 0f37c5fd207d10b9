"""Reading and checking the on-disk layouts of SYSU-MM01, RegDB and LLCM.

The TFDS builders and anything else that reads the raw folders go through
here, so that a missing or malformed folder gives one error naming what is
missing, where it was expected and where to get the data (`SYSU_LAYOUT`,
`REGDB_LAYOUT`, `LLCM_LAYOUT`; the docs/datasets.md). Nothing is dropped
silently.
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import logging

from data_pipeline import constants

SYSU_SPLIT_FILES = {
    "train": "train_id.txt",
    "val": "val_id.txt",
    "test": "test_id.txt",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

SYSU_SOURCE = (
    "SYSU-MM01 is distributed by its authors (Ancong Wu, Wei-Shi Zheng et "
    "al., Sun Yat-sen University; 'RGB-Infrared Cross-Modality Person "
    "Re-Identification', ICCV 2017) on request, after signing their dataset "
    "agreement. See the docs/datasets.md."
)
REGDB_SOURCE = (
    "RegDB is distributed by its authors (Dat Tien Nguyen, Hyung Gil Hong, "
    "Ki Wan Kim, Kang Ryoung Park, Dongguk University; 'Person Recognition "
    "System Based on a Combination of Body Images from Visible Light and "
    "Thermal Cameras', Sensors 2017) on request. The idx/ split files are "
    "the ones distributed with the cross-modality re-id code bases (e.g. AGW "
    "/ DDAG by Mang Ye et al.). See the docs/datasets.md."
)

LLCM_SOURCE = (
    "LLCM is distributed by its authors (Yukang Zhang and Hanzi Wang, Xiamen "
    "University; 'Diverse Embedding Expansion Network and Low-Light "
    "Cross-Modality Benchmark for Visible-Infrared Person "
    "Re-identification', CVPR 2023) on request, after signing their dataset "
    "agreement. See the docs/datasets.md."
)


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing or does not have the expected layout."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    Attributes:
      file_name: path relative to the dataset root, '/'-separated.
      identity: person id as the dataset gives it.
      camera: camera number (SYSU 1..6; RegDB 1 visible, 2 thermal; LLCM
        1..9 in both modalities).
      modality: 0 visible, 1 infrared.
    """

    file_name: str
    identity: int
    camera: int
    modality: int


def _layout_error(
    root: str, what: str, expected: str, source: str, layout: str
) -> DatasetLayoutError:
    return DatasetLayoutError(
        f"{what} (expected {expected}). Dataset root: {root}. Expected layout:"
        f"\n{layout}\n{source}"
    )


SYSU_LAYOUT = (
    "  <root>/cam1 .. cam6/<pid:04d>/<img:04d>.jpg  (visible cameras 1, 2, 4, "
    "5; infrared cameras 3, 6)\n"
    "  <root>/exp/train_id.txt, val_id.txt, test_id.txt  (each one line of "
    "comma-separated person ids)"
)
REGDB_LAYOUT = (
    "  <root>/Visible/..., <root>/Thermal/...  (the images)\n"
    "  <root>/idx/train_visible_{t}.txt, train_thermal_{t}.txt, "
    "test_visible_{t}.txt, test_thermal_{t}.txt for t = 1..10, lines "
    "'<path relative to root> <label>'"
)

LLCM_LAYOUT = (
    "  <root>/idx/train_vis.txt, train_nir.txt  (lines '<path relative to "
    "root> <label>', e.g. 'nir/0001/0001_c01_s185535_f7010_nir.jpg 0': the "
    "camera is the file name's '_c<NN>' or a 'cam<c>' folder)\n"
    "  <root>/vis/, <root>/nir/  (the training images the idx files list)\n"
    "  <root>/idx/test_id.txt  (one line of comma-separated person ids)\n"
    "  <root>/test_vis/cam1 .. cam9/<pid:04d>/<images>  (visible test "
    "images)\n"
    "  <root>/test_nir/cam1, cam2, cam4 .. cam9/<pid:04d>/<images>  "
    "(infrared test images; no cam3)"
)
# The training index file and the test folder of each modality.
LLCM_TRAIN_FILES = {
    constants.VISIBLE: "train_vis.txt",
    constants.INFRARED: "train_nir.txt",
}
LLCM_TEST_FOLDERS = {
    constants.VISIBLE: ("test_vis", constants.LLCM_VISIBLE_CAMERAS),
    constants.INFRARED: ("test_nir", constants.LLCM_INFRARED_CAMERAS),
}

_ONE_LINE_OF_IDS = "one line of comma-separated integers such as '1,2,4'"


def _sysu_error(root: str, what: str, expected: str) -> DatasetLayoutError:
    return _layout_error(root, what, expected, SYSU_SOURCE, SYSU_LAYOUT)


def _parse_ids(path: str, *, name: str, missing: str, error) -> tuple[int, ...]:
    """Reads a file of comma-separated integer ids (any lines).

    Args:
      path: the file.
      name: what the file is, for the messages ("SYSU-MM01 split file").
      missing: where the file is expected, for the message if it is absent.
      error: `error(what, expected)` -> the dataset's `DatasetLayoutError`.

    Raises:
      DatasetLayoutError: the file is missing, empty, holds a non-integer or
        repeats an id.
    """
    if not os.path.isfile(path):
        raise error(f"{name} {path} is missing", missing)
    with open(path) as f:
        text = f.read()
    tokens = [t for t in re.split(r"[,\s]+", text) if t]
    ids = []
    for t in tokens:
        try:
            ids.append(int(t))
        except ValueError:
            raise error(
                f"{name} {path} holds {t!r}, not an integer id",
                _ONE_LINE_OF_IDS,
            ) from None
    if not ids:
        raise error(f"{name} {path} is empty", _ONE_LINE_OF_IDS)
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise error(f"{name} {path} repeats ids {dup}", "each id once")
    return tuple(ids)


def parse_id_file(path: str, *, root: str) -> tuple[int, ...]:
    """Reads a SYSU `exp/*_id.txt` file: comma-separated ints (any lines).

    Raises:
      DatasetLayoutError: the file is missing, empty or holds a non-integer.
    """
    return _parse_ids(
        path,
        name="SYSU-MM01 split file",
        missing="exp/train_id.txt, exp/val_id.txt, exp/test_id.txt",
        error=lambda what, expected: _sysu_error(root, what, expected),
    )


@dataclasses.dataclass(frozen=True)
class SysuLayout:
    """A checked SYSU-MM01 folder.

    Attributes:
      root: the dataset root.
      split_ids: "train", "val", "test" -> person ids as listed in exp/.
      images: person id -> its image records, all cameras, sorted by file name.
    """

    root: str
    split_ids: dict[str, tuple[int, ...]]
    images: dict[int, tuple[ImageRecord, ...]]

    def records(self, split: str) -> list[ImageRecord]:
        """Image records of one split, sorted by file name.

        Args:
          split: "train" (train + val ids, the paper's training set),
            "train_only", "val" or "test".

        Returns:
          The records of every image of the split's ids, all cameras.
        """
        groups = {
            "train": ("train", "val"),
            "train_only": ("train",),
            "val": ("val",),
            "test": ("test",),
        }
        if split not in groups:
            raise ValueError(
                f"unknown SYSU-MM01 split {split!r}; choose one of "
                f"{sorted(groups)}."
            )
        ids = sorted(i for g in groups[split] for i in self.split_ids[g])
        return sorted(
            (r for i in ids for r in self.images[i]), key=lambda r: r.file_name
        )


def _image_files(folder: str) -> list[str]:
    return sorted(
        f
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS)
        and os.path.isfile(os.path.join(folder, f))
    )


def read_sysu(root: str) -> SysuLayout:
    """Checks a SYSU-MM01 folder and lists the images of every listed id.

    Args:
      root: the folder holding cam1..cam6 and exp/.

    Returns:
      A `SysuLayout`.

    Raises:
      DatasetLayoutError: root, a camera folder or a split file is missing or
        malformed, a split file lists an id twice or in two splits, or a
        listed id has no image in any camera.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise _sysu_error(
            root,
            f"SYSU-MM01 folder {root} does not exist",
            "a folder holding cam1 .. cam6 and exp/",
        )
    missing = [
        f"cam{c}"
        for c in constants.SYSU_CAMERAS
        if not os.path.isdir(os.path.join(root, f"cam{c}"))
    ]
    if not os.path.isdir(os.path.join(root, "exp")):
        missing.append("exp")
    if missing:
        raise _sysu_error(
            root,
            f"SYSU-MM01 folder {root} lacks {', '.join(missing)}",
            "cam1 .. cam6 and exp/ directly under the root",
        )
    split_ids = {
        name: parse_id_file(os.path.join(root, "exp", fname), root=root)
        for name, fname in SYSU_SPLIT_FILES.items()
    }
    seen = {}
    for name, ids in split_ids.items():
        for i in ids:
            if i in seen:
                raise _sysu_error(
                    root,
                    f"SYSU-MM01 id {i} is listed in both {seen[i]} and {name}",
                    "disjoint train / val / test id lists",
                )
            seen[i] = name
    images = {}
    for pid in sorted(seen):
        records = []
        for cam in constants.SYSU_CAMERAS:
            rel_dir = f"cam{cam}/{pid:04d}"
            folder = os.path.join(root, f"cam{cam}", f"{pid:04d}")
            if not os.path.isdir(folder):
                continue  # Not every person walks past every camera.
            modality = (
                constants.INFRARED
                if cam in constants.SYSU_INFRARED_CAMERAS
                else constants.VISIBLE
            )
            records.extend(
                ImageRecord(f"{rel_dir}/{f}", pid, cam, modality)
                for f in _image_files(folder)
            )
        if not records:
            raise _sysu_error(
                root,
                f"SYSU-MM01 id {pid} ({seen[pid]} split) has no image in any "
                "camera",
                f"images under cam1 .. cam6/{pid:04d}/",
            )
        images[pid] = tuple(records)
    _check_sysu_modalities(root, split_ids, images)
    logging.info(
        "SYSU-MM01 at %s: %s ids, %d images.",
        root,
        {k: len(v) for k, v in split_ids.items()},
        sum(len(v) for v in images.values()),
    )
    return SysuLayout(root=root, split_ids=split_ids, images=images)


def _cameras(cameras) -> str:
    return "/".join(f"cam{c}" for c in cameras)


def _ids(ids) -> str:
    """At most 20 ids, then how many more: an error stays a few lines."""
    ids = sorted(ids)
    more = f" and {len(ids) - 20} more" if len(ids) > 20 else ""
    return ", ".join(str(i) for i in ids[:20]) + more


def _check_sysu_modalities(
    root: str,
    split_ids: dict[str, tuple[int, ...]],
    images: dict[int, tuple[ImageRecord, ...]],
) -> None:
    """Every split's rule, by SYSU-MM01 id, before any record is written.

    Training (train and val ids): images of both modalities, since every
    batch pairs visible and infrared images of each identity (val ids are
    also evaluated as query / gallery). Test: an id with infrared (query)
    images has a visible image in an all-search gallery camera, or its
    queries could never be matched. Indoor search needs no such rule: the
    official protocol skips the queries of ids never seen indoors (its
    indoor search covers a subset of the test ids); the results table
    counts them.

    Raises:
      DatasetLayoutError: naming each id that breaks its split's rule.
    """
    visible_cameras = constants.SYSU_GALLERY_CAMERAS["all"]
    problems = []
    for split in ("train", "val"):
        no_visible, no_infrared = [], []
        for pid in split_ids[split]:
            modalities = {r.modality for r in images[pid]}
            if constants.VISIBLE not in modalities:
                no_visible.append(pid)
            if constants.INFRARED not in modalities:
                no_infrared.append(pid)
        if no_visible:
            problems.append(
                f"{split} ids without a visible image (in "
                f"{_cameras(visible_cameras)}): {_ids(no_visible)}"
            )
        if no_infrared:
            problems.append(
                f"{split} ids without an infrared image (in "
                f"{_cameras(constants.SYSU_INFRARED_CAMERAS)}): "
                f"{_ids(no_infrared)}"
            )
    no_gallery = {}
    for pid in split_ids["test"]:
        records = images[pid]
        queries = sum(r.modality == constants.INFRARED for r in records)
        if queries and not any(r.camera in visible_cameras for r in records):
            no_gallery[pid] = queries
    if no_gallery:
        problems.append(
            f"test ids with infrared query images but no visible gallery "
            f"image (in {_cameras(visible_cameras)}), so their "
            f"{sum(no_gallery.values())} queries could never be matched: "
            f"{_ids(no_gallery)}"
        )
    if problems:
        raise _sysu_error(
            root,
            "SYSU-MM01 ids break their split's rule: " + "; ".join(problems),
            "every train and val id in both modalities, every test id with "
            "infrared images also in a visible camera; restore the missing "
            "images or move the ids to the right exp/*_id.txt list",
        )
    indoor = constants.SYSU_GALLERY_CAMERAS["indoor"]
    not_indoor = [
        pid
        for pid in split_ids["test"]
        if not any(r.camera in indoor for r in images[pid])
    ]
    if not_indoor:
        logging.info(
            "SYSU-MM01 indoor search: %d of %d test ids have no image in "
            "%s; their queries are skipped there, as in the official "
            "protocol.",
            len(not_indoor),
            len(split_ids["test"]),
            _cameras(indoor),
        )


def _regdb_error(root: str, what: str, expected: str) -> DatasetLayoutError:
    return _layout_error(root, what, expected, REGDB_SOURCE, REGDB_LAYOUT)


def regdb_index_path(root: str, split: str, modality: str, trial: int) -> str:
    """Path of idx/{split}_{modality}_{trial}.txt under `root`."""
    return os.path.join(root, "idx", f"{split}_{modality}_{trial}.txt")


def _index_lines(
    path: str, *, root: str, name: str, missing: str, error
) -> list[tuple[int, str, int]]:
    """Reads an index file of '<path relative to root> <label>' lines.

    Args:
      path: the index file.
      root: the dataset root that the listed paths are relative to.
      name: what the file is, for the messages ("RegDB split file").
      missing: where the file is expected, for the message if it is absent.
      error: `error(what, expected)` -> the dataset's `DatasetLayoutError`.

    Returns:
      (line number, '/'-separated relative path, label) in file order.

    Raises:
      DatasetLayoutError: the file is missing, empty or malformed, lists a file
        twice, or lists an image that does not exist.
    """
    if not os.path.isfile(path):
        raise error(f"{name} {path} is missing", missing)
    out = []
    seen = set()
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                rel, label = fields[0].replace("\\", "/"), int(fields[1])
            except ValueError:
                raise error(
                    f"{name} {path} line {number} reads {line.strip()!r}",
                    "'<relative/path> <integer label>'",
                ) from None
            if rel in seen:
                raise error(
                    f"{name} {path} lists {rel} twice", "each image once"
                )
            seen.add(rel)
            if not os.path.isfile(os.path.join(root, rel)):
                raise error(
                    f"{name.split()[0]} image {os.path.join(root, rel)} "
                    f"(listed in {path} line {number}) is missing",
                    "paths relative to the dataset root",
                )
            out.append((number, rel, label))
    if not out:
        raise error(
            f"{name} {path} is empty", "lines '<relative/path> <integer label>'"
        )
    return out


def parse_regdb_index(
    path: str, *, root: str, camera: int, modality: int
) -> list[ImageRecord]:
    """Reads one RegDB idx file and checks that every listed image exists.

    Args:
      path: the idx file.
      root: the dataset root that the listed paths are relative to.
      camera: camera number to give the records.
      modality: modality to give the records.

    Returns:
      Records in file order; identity is the label written in the file.

    Raises:
      DatasetLayoutError: the file is missing, empty or malformed, lists a file
        twice, or lists an image that does not exist.
    """
    lines = _index_lines(
        path,
        root=root,
        name="RegDB split file",
        missing="idx/{train,test}_{visible,thermal}_{1..10}.txt",
        error=lambda what, expected: _regdb_error(root, what, expected),
    )
    return [
        ImageRecord(rel, label, camera, modality) for _, rel, label in lines
    ]


def read_regdb(root: str, *, trial: int) -> dict[str, list[ImageRecord]]:
    """Checks a RegDB folder and reads the split files of one trial.

    Args:
      root: the folder holding Visible/, Thermal/ and idx/.
      trial: 1..10.

    Returns:
      {"train": visible + thermal train records, "test": visible + thermal test
      records}, each sorted by file name.

    Raises:
      DatasetLayoutError: a folder or split file is missing or malformed, or a
        listed image is missing.
    """
    root = os.fspath(root)
    if trial not in constants.REGDB_TRIALS:
        raise ValueError(f"RegDB trial must be one of 1..10, got {trial!r}.")
    if not os.path.isdir(root):
        raise _regdb_error(
            root,
            f"RegDB folder {root} does not exist",
            "a folder holding Visible/, Thermal/ and idx/",
        )
    missing = [
        d
        for d in ("Visible", "Thermal", "idx")
        if not os.path.isdir(os.path.join(root, d))
    ]
    if missing:
        raise _regdb_error(
            root,
            f"RegDB folder {root} lacks {', '.join(missing)}",
            "Visible/, Thermal/ and idx/ directly under the root",
        )
    out = {}
    for split in ("train", "test"):
        records = []
        for name, camera, modality in (
            ("visible", constants.REGDB_VISIBLE_CAMERA, constants.VISIBLE),
            ("thermal", constants.REGDB_THERMAL_CAMERA, constants.INFRARED),
        ):
            records += parse_regdb_index(
                regdb_index_path(root, split, name, trial),
                root=root,
                camera=camera,
                modality=modality,
            )
        out[split] = sorted(records, key=lambda r: r.file_name)
    _check_regdb_modalities(root, trial, out)
    names = {r.file_name for r in out["train"]} & {
        r.file_name for r in out["test"]
    }
    if names:
        raise _regdb_error(
            root,
            f"RegDB trial {trial} lists {sorted(names)[:3]} in both train "
            "and test",
            "disjoint train and test files",
        )
    return out


def _check_regdb_modalities(
    root: str, trial: int, splits: dict[str, list[ImageRecord]]
) -> None:
    """Every identity of each split in both modalities, named by its label.

    Training pairs visible and thermal images of each identity; the test
    protocol queries in both directions, so each query identity needs a
    gallery image in the other modality either way.

    Raises:
      DatasetLayoutError: naming each label (and one of its files) seen in
        one modality only.
    """
    problems = []
    for split, records in splits.items():
        by_modality = {constants.VISIBLE: {}, constants.INFRARED: {}}
        for r in records:
            by_modality[r.modality].setdefault(r.identity, r.file_name)
        visible = by_modality[constants.VISIBLE]
        thermal = by_modality[constants.INFRARED]
        for name, other_name, here, other in (
            ("visible", "thermal", visible, thermal),
            ("thermal", "visible", thermal, visible),
        ):
            only = sorted(set(here) - set(other))
            if only:
                examples = ", ".join(
                    f"{label} (e.g. {here[label]})" for label in only[:5]
                )
                more = f" and {len(only) - 5} more" if len(only) > 5 else ""
                problems.append(
                    f"{split}_{name}_{trial}.txt has labels that "
                    f"{split}_{other_name}_{trial}.txt lacks: "
                    f"{examples}{more}"
                )
    if problems:
        raise _regdb_error(
            root,
            f"RegDB trial {trial}: identities in one modality only: "
            + "; ".join(problems),
            "every label of a split in both its visible and its thermal "
            "idx file (training pairs them; the test queries both ways)",
        )


def _llcm_error(root: str, what: str, expected: str) -> DatasetLayoutError:
    return _layout_error(root, what, expected, LLCM_SOURCE, LLCM_LAYOUT)


# An LLCM file name: '<pid>_c<NN>_...' (e.g. 0001_c01_s185535_f7010_nir.jpg).
_LLCM_NAME_CAMERA = re.compile(r"\d+_c(\d+)(?:[_.]|$)")


def _llcm_camera(rel: str) -> int:
    """The camera of an LLCM path, 1..9.

    LLCM's training paths ('nir/0001/0001_c01_s185535_f7010_nir.jpg') give
    it only in the file name's '_c<NN>'; its test paths also in a 'cam<c>'
    folder. Either is read; where both are present they must agree.

    Raises:
      ValueError: the reason, when the path gives no camera, two cameras or
        one outside 1..9.
    """
    *folders, name = rel.split("/")
    found = [
        int(m.group(1))
        for part in folders
        if (m := re.fullmatch(r"cam(\d+)", part))
    ]
    if len(found) > 1:
        raise ValueError("has more than one 'cam<c>' folder")
    if m := _LLCM_NAME_CAMERA.match(name):
        found.append(int(m.group(1)))
    if not found:
        raise ValueError(
            "names no camera: neither a '_c<NN>' in its file name nor a "
            "'cam<c>' folder"
        )
    if len(set(found)) > 1:
        raise ValueError(
            f"names two cameras: folder cam{found[0]}, file name "
            f"_c{found[1]:02d}"
        )
    if found[0] not in constants.LLCM_CAMERAS:
        raise ValueError(f"names camera {found[0]}, not one of 1 .. 9")
    return found[0]


def parse_llcm_index(
    path: str, *, root: str, modality: int
) -> list[ImageRecord]:
    """Reads idx/train_vis.txt or idx/train_nir.txt of LLCM.

    Args:
      path: the index file.
      root: the dataset root that the listed paths are relative to.
      modality: `constants.VISIBLE` or `constants.INFRARED`.

    Returns:
      Records in file order: identity is the label written in the file, the
      camera the '_c<NN>' of the file name or the path's 'cam<c>' folder
      (`_llcm_camera`).

    Raises:
      DatasetLayoutError: the file is missing, empty or malformed, lists a file
        twice, lists an image that does not exist, or a path that names no
        camera in 1..9, or two.
    """
    lines = _index_lines(
        path,
        root=root,
        name="LLCM index file",
        missing="idx/train_vis.txt and idx/train_nir.txt",
        error=lambda what, expected: _llcm_error(root, what, expected),
    )
    records = []
    for number, rel, label in lines:
        try:
            camera = _llcm_camera(rel)
        except ValueError as e:
            raise _llcm_error(
                root,
                f"LLCM index file {path} line {number} lists {rel!r}, which "
                f"{e}",
                "file names '<pid>_c<NN>_...' with a camera 01 .. 09, such "
                "as 'nir/0001/0001_c01_s185535_f7010_nir.jpg', or one "
                "'cam1' .. 'cam9' folder agreeing with it",
            ) from None
        records.append(ImageRecord(rel, label, camera, modality))
    return records


def _llcm_test_records(
    root: str, ids: tuple[int, ...], modality: int
) -> list[ImageRecord]:
    """The test images of one modality: <folder>/cam<c>/<pid:04d>/<files>.

    Raises:
      DatasetLayoutError: the modality's folder is missing, or holds a folder
        that is no LLCM camera (another modality's camera, test_nir/cam3, is
        skipped with a warning), or a camera folder holds a folder that is
        not a person id.
    """
    name, cameras = LLCM_TEST_FOLDERS[modality]
    top = os.path.join(root, name)
    expected_cams = {f"cam{c}": c for c in cameras}
    folders = [
        d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))
    ]
    # Another modality's camera (test_nir/cam3): the reference code lists
    # each modality's cameras and never reads such a folder; neither do we.
    others = {f"cam{c}" for c in constants.LLCM_CAMERAS} - set(expected_cams)
    skipped = sorted(d for d in folders if d in others)
    if skipped:
        logging.warning(
            "LLCM: %s skipped (not a camera of %s/: %s).",
            ", ".join(f"{name}/{d}" for d in skipped),
            name,
            _cameras(cameras),
        )
    unknown = sorted(
        d for d in folders if d not in expected_cams and d not in others
    )
    if unknown:
        raise _llcm_error(
            root,
            f"LLCM folder {top} holds {', '.join(unknown)}, not a camera of "
            f"its modality",
            f"only {_cameras(cameras)} in {name}/",
        )
    wanted = set(ids)
    records = []
    for cam_dir, cam in sorted(expected_cams.items(), key=lambda kv: kv[1]):
        folder = os.path.join(top, cam_dir)
        if not os.path.isdir(folder):
            continue  # Not every camera saw every test person.
        people = [
            d
            for d in os.listdir(folder)
            if os.path.isdir(os.path.join(folder, d))
        ]
        bad = sorted(d for d in people if not d.isdigit())
        if bad:
            raise _llcm_error(
                root,
                f"LLCM folder {folder} holds {', '.join(bad[:5])}, not a "
                "person id",
                f"person folders <pid:04d> in {name}/{cam_dir}/",
            )
        for person in sorted(people):
            if int(person) not in wanted:
                continue  # Only the ids of idx/test_id.txt are tested.
            rel_dir = f"{name}/{cam_dir}/{person}"
            records.extend(
                ImageRecord(f"{rel_dir}/{f}", int(person), cam, modality)
                for f in _image_files(os.path.join(folder, person))
            )
    return records


def read_llcm(root: str) -> dict[str, list[ImageRecord]]:
    """Checks an LLCM folder and reads its training and test images.

    Training images are those of idx/train_vis.txt and idx/train_nir.txt
    (identity: the label written there); test images are those of the ids
    of idx/test_id.txt under test_vis/ and test_nir/ (identity and camera
    from the folders). Cameras keep LLCM's numbers (1..9) in both
    modalities.

    Args:
      root: the folder holding idx/, test_vis/ and test_nir/.

    Returns:
      {"train": visible + infrared training records, "test": visible +
      infrared test records}, each sorted by file name.

    Raises:
      DatasetLayoutError: a folder or file is missing or malformed, a listed
        image is missing, or a training label is seen in one modality only
        (a test id in one modality or none is logged).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise _llcm_error(
            root,
            f"LLCM folder {root} does not exist",
            "a folder holding idx/, test_vis/ and test_nir/",
        )
    missing = [
        d
        for d in ("idx", "test_vis", "test_nir")
        if not os.path.isdir(os.path.join(root, d))
    ]
    if missing:
        raise _llcm_error(
            root,
            f"LLCM folder {root} lacks {', '.join(missing)}",
            "idx/, test_vis/ and test_nir/ directly under the root",
        )
    train = []
    for modality, fname in LLCM_TRAIN_FILES.items():
        train += parse_llcm_index(
            os.path.join(root, "idx", fname), root=root, modality=modality
        )
    ids = _parse_ids(
        os.path.join(root, "idx", "test_id.txt"),
        name="LLCM test id file",
        missing="idx/test_id.txt",
        error=lambda what, expected: _llcm_error(root, what, expected),
    )
    test = []
    for modality in LLCM_TEST_FOLDERS:
        test += _llcm_test_records(root, ids, modality)
    out = {
        "train": sorted(train, key=lambda r: r.file_name),
        "test": sorted(test, key=lambda r: r.file_name),
    }
    _check_llcm_modalities(root, out, test_ids=ids)
    logging.info(
        "LLCM at %s: %d training images (%d labels), %d test images (%d ids).",
        root,
        len(out["train"]),
        len({r.identity for r in out["train"]}),
        len(out["test"]),
        len(ids),
    )
    return out


def _check_llcm_modalities(
    root: str, splits: dict[str, list[ImageRecord]], *, test_ids
) -> None:
    """Every identity of each split in both modalities, named.

    Training pairs visible and infrared images of each identity, so a
    training label in one modality is refused. A test id seen in one
    modality only (or in none) is logged: its queries can never be matched,
    but the reference code evaluates whatever images a test id has, and the
    protocol counts and explains the queries left without a match.

    Raises:
      DatasetLayoutError: naming each training label seen in one modality
        only.
    """
    problems = []
    warnings = []
    for split, records in splits.items():
        seen = {constants.VISIBLE: set(), constants.INFRARED: set()}
        for r in records:
            seen[r.modality].add(r.identity)
        visible, infrared = seen[constants.VISIBLE], seen[constants.INFRARED]
        what = "labels" if split == "train" else "ids"
        found = problems if split == "train" else warnings
        if visible - infrared:
            found.append(
                f"{split} {what} with visible images only: "
                f"{_ids(visible - infrared)}"
            )
        if infrared - visible:
            found.append(
                f"{split} {what} with infrared images only: "
                f"{_ids(infrared - visible)}"
            )
        if split == "test" and set(test_ids) - visible - infrared:
            warnings.append(
                "test ids of idx/test_id.txt without any image in test_vis/ "
                f"or test_nir/: {_ids(set(test_ids) - visible - infrared)}"
            )
    if warnings:
        logging.warning(
            "LLCM at %s: %s; their queries find no match in the other "
            "modality.",
            root,
            "; ".join(warnings),
        )
    if problems:
        raise _llcm_error(
            root,
            "LLCM training labels need both modalities: " + "; ".join(problems),
            "every training label in both idx/train_vis.txt and "
            "idx/train_nir.txt",
        )
