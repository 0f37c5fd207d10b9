"""Split rules of the dataset layouts, checked by dataset id before records.

`layouts.read_sysu` / `read_regdb` (which the TFDS builders call before
writing anything) refuse a folder where a training identity lacks a
modality or a query identity has no gallery, naming the identities as the
dataset does (SYSU person ids, RegDB idx labels), not as label indices.
Each test damages its own copy of a generated folder.
"""

import os
import shutil

import pytest

from data_pipeline import layouts
from data_pipeline.sysu_mm01 import sysu_mm01


def _ids(root, split):
    with open(os.path.join(root, "exp", f"{split}_id.txt")) as f:
        return [int(t) for t in f.read().replace("\n", "").split(",")]


def _remove(root, pid, cameras):
    for cam in cameras:
        shutil.rmtree(os.path.join(root, f"cam{cam}", f"{pid:04d}"))


def test_sysu_training_id_in_one_modality_is_named_by_its_id(
    sysu_copy, tmp_path
):
    train, val = _ids(sysu_copy, "train"), _ids(sysu_copy, "val")
    # The last ids: their SYSU id differs from their label index.
    no_infrared, no_visible = max(train), max(val)
    label = sorted(train + val).index(no_infrared)
    assert label != no_infrared
    _remove(sysu_copy, no_infrared, (3, 6))
    _remove(sysu_copy, no_visible, (1, 2, 4, 5))
    data_dir = tmp_path / "tfds"
    with pytest.raises(layouts.DatasetLayoutError) as e:
        sysu_mm01.prepare(
            manual_dir=sysu_copy, data_dir=str(data_dir), config="original"
        )
    message = str(e.value)
    assert (
        f"train ids without an infrared image (in cam3/cam6): {no_infrared}"
        in message
    )
    assert (
        f"val ids without a visible image (in cam1/cam2/cam4/cam5): "
        f"{no_visible}" in message
    )
    assert "only visible" not in message
    # Found before any record was written.
    written = [
        name
        for _, _, files in os.walk(data_dir)
        for name in files
        if "tfrecord" in name or "array_record" in name
    ]
    assert written == []


def test_sysu_test_id_without_gallery_is_refused_indoor_gaps_are_not(
    sysu_copy,
):
    first, second = _ids(sysu_copy, "test")[:2]
    # Never indoors (no cam1/cam2): the official indoor search has such ids.
    _remove(sysu_copy, first, (1, 2))
    assert layouts.read_sysu(sysu_copy).split_ids["test"]
    # No visible image at all: its queries could never be matched.
    _remove(sysu_copy, second, (1, 2, 4, 5))
    queries = sum(
        len(os.listdir(os.path.join(sysu_copy, f"cam{c}", f"{second:04d}")))
        for c in (3, 6)
    )
    with pytest.raises(layouts.DatasetLayoutError) as e:
        layouts.read_sysu(sysu_copy)
    assert (
        f"test ids with infrared query images but no visible gallery image "
        f"(in cam1/cam2/cam4/cam5), so their {queries} queries could never "
        f"be matched: {second}"
    ) in str(e.value)


@pytest.mark.parametrize("split", ["train", "test"])
def test_regdb_label_in_one_modality_is_named(regdb_copy, split):
    path = os.path.join(regdb_copy, "idx", f"{split}_thermal_1.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    labels = sorted({int(line.split()[1]) for line in lines if line.strip()})
    dropped = labels[-1]
    with open(path, "w") as f:
        f.write(
            "\n".join(line for line in lines if int(line.split()[1]) != dropped)
            + "\n"
        )
    with open(os.path.join(regdb_copy, "idx", f"{split}_visible_1.txt")) as f:
        example = next(
            line.split()[0]
            for line in f
            if line.strip() and int(line.split()[1]) == dropped
        )
    with pytest.raises(layouts.DatasetLayoutError) as e:
        layouts.read_regdb(regdb_copy, trial=1)
    assert (
        f"RegDB trial 1: identities in one modality only: "
        f"{split}_visible_1.txt has labels that {split}_thermal_1.txt "
        f"lacks: {dropped} (e.g. {example})"
    ) in str(e.value)
    # Other trials are unaffected.
    assert layouts.read_regdb(regdb_copy, trial=2)["test"]
