"""Tests of the SYSU-MM01 and RegDB TFDS builders on generated layouts.

The layouts and builds are conftest.py's session fixtures. Expected values
are read from the files on disk with plain os / PIL code, independently of
`data_pipeline.layouts`.
"""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipeline import datasets, layouts
from data_pipeline.regdb import regdb
from data_pipeline.sysu_mm01 import sysu_mm01
from mclnet_jax.configs import sysu

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VISIBLE_CAMS = (1, 2, 4, 5)


def _pixels(path_or_bytes):
    if isinstance(path_or_bytes, bytes):
        path_or_bytes = io.BytesIO(path_or_bytes)
    with Image.open(path_or_bytes) as img:
        return np.asarray(img.convert("RGB"))


def _psnr(a, b):
    """Peak signal-to-noise ratio in dB of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10.0 * np.log10(255.0**2 / max(mse, 1e-12))


def _sysu_expected(root, split):
    """{file_name: (identity, camera)} of a split, from the folders."""
    groups = {
        "train": ("train", "val"),
        "train_only": ("train",),
        "val": ("val",),
        "test": ("test",),
    }[split]
    ids = set()
    for g in groups:
        with open(os.path.join(root, "exp", f"{g}_id.txt")) as f:
            ids |= {int(t) for t in f.read().strip().split(",")}
    out = {}
    for cam in range(1, 7):
        for pid_dir in os.listdir(os.path.join(root, f"cam{cam}")):
            if int(pid_dir) in ids:
                folder = os.path.join(root, f"cam{cam}", pid_dir)
                for name in os.listdir(folder):
                    out[f"cam{cam}/{pid_dir}/{name}"] = (int(pid_dir), cam)
    return out


def _records(builder, split):
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


def _check_labels(records, names, expected, modality_of):
    """Identity, label (rank among the split's ids), camera and modality of
    each record agree with `expected[name] == (identity, camera)`."""
    ids = sorted({pid for pid, _ in expected.values()})
    for r, name in zip(records, names, strict=True):
        pid, cam = expected[name]
        assert r["identity"] == pid
        assert r["label"] == ids.index(pid)
        assert r["camera"] == cam
        assert r["modality"] == modality_of(cam)


@pytest.mark.parametrize("split", ["train", "train_only", "val", "test"])
def test_sysu_examples_match_files_on_disk(sysu_raw, sysu_builder, split):
    root = sysu_raw.root
    builder = sysu_builder("original")
    assert builder.info.file_format.value == "array_record"
    expected = _sysu_expected(root, split)
    records = _records(builder, split)
    assert builder.info.splits[split].num_examples == len(expected)
    names = [r["file_name"].decode() for r in records]
    assert sorted(names) == sorted(expected)
    _check_labels(
        records, names, expected, lambda cam: 0 if cam in VISIBLE_CAMS else 1
    )
    for r, name in zip(records, names, strict=True):
        # Stored as PIL decodes the files (raw pixels): identical.
        np.testing.assert_array_equal(
            r["image"], _pixels(os.path.join(root, name))
        )


def test_sysu_split_membership(sysu_raw, sysu_builder):
    builder = sysu_builder("original")
    ids = {
        s: {int(r["identity"]) for r in _records(builder, s)}
        for s in ("train", "train_only", "val", "test")
    }
    assert ids["train"] == ids["train_only"] | ids["val"]
    assert not ids["train_only"] & ids["val"]
    assert not ids["train"] & ids["test"]
    num_ids = sysu_raw.params["num_identities"]
    assert ids["train"] | ids["test"] == set(range(1, num_ids + 1))
    test = _records(builder, "test")
    assert {int(r["camera"]) for r in test} == set(range(1, 7))


def test_sysu_resized_config(sysu_raw, sysu_builder):
    root = sysu_raw.root
    records = _records(sysu_builder("288x144"), "test")
    original = sysu_builder("original")
    assert len(records) == original.info.splits["test"].num_examples
    for r in records:
        assert r["image"].shape == (288, 144, 3)
        with Image.open(os.path.join(root, r["file_name"].decode())) as img:
            want = np.asarray(
                img.convert("RGB").resize((144, 288), Image.LANCZOS)
            )
        # Since 2.0.0 stored losslessly: the release's pixels exactly
        # (1.0.0 re-encoded them as JPEG, PSNR > 32 dB).
        assert _psnr(r["image"], want) > 32.0
        np.testing.assert_array_equal(r["image"], want)


def test_tfrecord_format_stays_possible(regdb_raw, regdb_builder, tmp_path):
    """ArrayRecord lacks `as_dataset`; a tfrecord build streams with tf.data."""
    builder = regdb.prepare(
        manual_dir=regdb_raw.root,
        data_dir=str(tmp_path / "tfds"),
        config="trial_1",
        file_format="tfrecord",
    )
    assert builder.info.file_format.value == "tfrecord"
    # Reopened without a format, a prepared dataset keeps its own.
    reopened = regdb.Regdb(data_dir=str(tmp_path / "tfds"), config="trial_1")
    assert reopened.info.file_format.value == "tfrecord"
    skip = {"image": tfds.decode.SkipDecoding()}
    streamed = {
        r["file_name"].numpy().decode(): (
            r["label"].numpy(),
            r["image"]["value"].numpy(),
            tuple(r["image"]["shape"].numpy()),
        )
        for r in builder.as_dataset("test", decoders=skip)
    }
    source = regdb_builder(1).as_data_source("test", decoders=skip)
    assert len(streamed) == len(source)
    for i in range(len(source)):
        r = source[i]
        # Raw pixels: their bytes and shape, undecoded.
        assert isinstance(r["image"]["value"], bytes)
        assert streamed[r["file_name"].decode()] == (
            r["label"],
            r["image"]["value"],
            tuple(r["image"]["shape"]),
        )


@pytest.mark.parametrize("trial", [1, 2])
def test_regdb_examples_match_index_files(regdb_raw, regdb_builder, trial):
    root = regdb_raw.root
    builder = regdb_builder(trial)
    assert builder.info.file_format.value == "array_record"
    all_names = set()
    for split in ("train", "test"):
        expected = {}
        for modality, cam in (("visible", 1), ("thermal", 2)):
            name = f"{split}_{modality}_{trial}.txt"
            with open(os.path.join(root, "idx", name)) as f:
                for line in f.read().splitlines():
                    path, label = line.split()
                    expected[path] = (int(label), cam)
        records = _records(builder, split)
        names = [r["file_name"].decode() for r in records]
        assert sorted(names) == sorted(expected)
        _check_labels(records, names, expected, lambda cam: cam - 1)
        for r, name in zip(records, names, strict=True):
            # Since 2.0.0 resized at build time (Lanczos, as the release's
            # loader) and stored losslessly; 1.0.0 kept the size and
            # re-encoded the BMPs as JPEG (PSNR > 32 dB).
            with Image.open(os.path.join(root, name)) as img:
                want = np.asarray(
                    img.convert("RGB").resize((144, 288), Image.LANCZOS)
                )
            assert r["image"].shape == want.shape == (288, 144, 3)
            assert _psnr(r["image"], want) > 32.0
            np.testing.assert_array_equal(r["image"], want)
        all_names |= set(names)
    params = regdb_raw.params
    assert len(all_names) == (
        params["num_identities"] * 2 * params["images_per_modality"]
    )


def test_regdb_trials_differ(regdb_builder):
    train = {
        t: {r["file_name"] for r in _records(regdb_builder(t), "train")}
        for t in (1, 2)
    }
    assert train[1] != train[2]


# --- Error paths. ---------------------------------------------------------


# The tests below damage a layout: each works on its own copy.


def _prepare_sysu(manual_dir, tmp_path):
    return sysu_mm01.prepare(
        manual_dir=manual_dir,
        data_dir=str(tmp_path / "tfds"),
        config="original",
    )


def test_sysu_missing_folder(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(layouts.DatasetLayoutError) as e:
        _prepare_sysu(missing, tmp_path)
    assert missing in str(e.value)
    assert "cam1 .. cam6" in str(e.value)
    assert "Wu" in str(e.value) and "request" in str(e.value)


def test_sysu_missing_camera_folder(sysu_copy, tmp_path):
    shutil.rmtree(os.path.join(sysu_copy, "cam3"))
    with pytest.raises(layouts.DatasetLayoutError, match="lacks cam3"):
        _prepare_sysu(sysu_copy, tmp_path)
    # Nothing half-built is left to be mistaken for a dataset.
    assert not os.path.exists(
        tmp_path / "tfds" / "sysu_mm01" / "original" / str(sysu_mm01.VERSION)
    )


def test_sysu_missing_split_file(sysu_copy, tmp_path):
    os.remove(os.path.join(sysu_copy, "exp", "val_id.txt"))
    with pytest.raises(layouts.DatasetLayoutError, match="val_id.txt"):
        _prepare_sysu(sysu_copy, tmp_path)


@pytest.mark.parametrize(
    "text,match",
    [
        ("1,2,x\n", "'x', not an integer"),
        ("\n", "is empty"),
        ("3,3\n", r"repeats ids \[3\]"),
    ],
)
def test_sysu_malformed_split_file(sysu_copy, text, match):
    with open(os.path.join(sysu_copy, "exp", "test_id.txt"), "w") as f:
        f.write(text)
    with pytest.raises(layouts.DatasetLayoutError, match=match):
        layouts.read_sysu(sysu_copy)


def test_sysu_id_in_two_splits_and_id_without_images(sysu_copy):
    path = os.path.join(sysu_copy, "exp", "test_id.txt")
    with open(os.path.join(sysu_copy, "exp", "train_id.txt")) as f:
        train_first = f.read().split(",")[0].strip()
    with open(path) as f:
        test_ids = f.read().strip()
    with open(path, "w") as f:
        f.write(f"{test_ids},{train_first}\n")
    with pytest.raises(layouts.DatasetLayoutError, match="both train and test"):
        layouts.read_sysu(sysu_copy)
    with open(path, "w") as f:
        f.write(f"{test_ids},77\n")
    with pytest.raises(layouts.DatasetLayoutError, match="id 77"):
        layouts.read_sysu(sysu_copy)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_sysu_corrupt_jpeg_names_the_file(sysu_copy, tmp_path, damage):
    with open(os.path.join(sysu_copy, "exp", "test_id.txt")) as f:
        pid = int(f.read().split(",")[0])
    bad = os.path.join(sysu_copy, "cam4", f"{pid:04d}", "0002.jpg")
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(
            b"not a jpeg" * 20
            if damage == "garbage"
            else data[: len(data) // 2]
        )
    with pytest.raises(sysu_mm01.CorruptImageError) as e:
        _prepare_sysu(sysu_copy, tmp_path)
    assert bad in str(e.value)


def test_regdb_missing_folder(regdb_copy, tmp_path):
    shutil.rmtree(os.path.join(regdb_copy, "Thermal"))
    with pytest.raises(layouts.DatasetLayoutError) as e:
        regdb.prepare(manual_dir=regdb_copy, data_dir=str(tmp_path / "tfds"))
    assert "lacks Thermal" in str(e.value) and "Nguyen" in str(e.value)


def test_regdb_missing_split_file(regdb_raw, regdb_copy, tmp_path):
    os.remove(os.path.join(regdb_copy, "idx", "test_thermal_3.txt"))
    # Other trials are unaffected: every test image of trial 2 is listed.
    num_ids = regdb_raw.params["num_identities"]
    num_test_ids = num_ids - num_ids // 2  # The larger half when odd.
    per_id = 2 * regdb_raw.params["images_per_modality"]
    assert len(layouts.read_regdb(regdb_copy, trial=2)["test"]) == (
        num_test_ids * per_id
    )
    with pytest.raises(layouts.DatasetLayoutError, match="test_thermal_3.txt"):
        regdb.prepare(
            manual_dir=regdb_copy,
            data_dir=str(tmp_path / "tfds"),
            config="trial_3",
        )


def test_regdb_malformed_index_and_missing_image(regdb_copy):
    path = os.path.join(regdb_copy, "idx", "train_visible_1.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines + ["Visible/1/x.bmp"]) + "\n")
    bad_line = f"line {len(lines) + 1}"
    with pytest.raises(layouts.DatasetLayoutError, match=bad_line):
        layouts.read_regdb(regdb_copy, trial=1)
    with open(path, "w") as f:
        f.write("\n".join(lines + ["Visible/1/x.bmp 0"]) + "\n")
    with pytest.raises(layouts.DatasetLayoutError, match="x.bmp .*is missing"):
        layouts.read_regdb(regdb_copy, trial=1)
    with pytest.raises(ValueError, match="1..10"):
        layouts.read_regdb(regdb_copy, trial=11)


def test_regdb_corrupt_image_names_the_file(regdb_copy, tmp_path):
    with open(os.path.join(regdb_copy, "idx", "test_visible_1.txt")) as f:
        rel = f.readline().split()[0]
    bad = os.path.join(regdb_copy, rel)
    with open(bad, "wb") as f:
        f.write(b"BM" + b"\0" * 30)
    with pytest.raises(sysu_mm01.CorruptImageError) as e:
        regdb.prepare(manual_dir=regdb_copy, data_dir=str(tmp_path / "tfds"))
    assert bad in str(e.value)


# --- Versions and storage formats. ----------------------------------------


def _as_version_1(prepared, data_dir):
    """Copies a prepared builder's records into `data_dir` as the version
    1.0.0 of the same config (what a build of the previous code left)."""
    config_dir = os.path.join(
        data_dir, prepared.name, prepared.builder_config.name
    )
    old = os.path.join(config_dir, "1.0.0")
    shutil.copytree(os.fspath(prepared.data_path), old)
    info = os.path.join(old, "dataset_info.json")
    with open(info) as f:
        text = f.read()
    with open(info, "w") as f:
        f.write(text.replace(f'"{prepared.version}"', '"1.0.0"'))
    return old


def test_records_of_the_previous_version_name_the_rebuild(
    sysu_raw, sysu_builder, tmp_path
):
    data_dir = str(tmp_path / "tfds")
    old = _as_version_1(sysu_builder("original"), data_dir)
    for make in (
        lambda: sysu_mm01.SysuMm01(data_dir=data_dir, config="original"),
        lambda: tfds.builder("sysu_mm01/original", data_dir=data_dir),
        # Even with the dataset folder at hand: no quiet second build.
        lambda: _prepare_sysu(sysu_raw.root, tmp_path),
    ):
        with pytest.raises(sysu_mm01.OutdatedRecordsError) as e:
            make()
        message = str(e.value)
        assert "version 1.0.0 only" in message
        assert f"reads version {sysu_mm01.VERSION}" in message
        assert (
            "python -m data_pipeline.sysu_mm01 --manual_dir=DATASET_FOLDER "
            f"--data_dir={data_dir} --config=original"
        ) in message
        assert f"rm -r {old}" in message
    # The run's entry point maps it to exit code 2.
    assert issubclass(
        sysu_mm01.OutdatedRecordsError, datasets.DatasetUnavailableError
    )
    config = sysu.get_config()
    config.data.manual_dir = sysu_raw.root
    config.data.data_dir = data_dir
    config.data.builder_config = "original"
    with pytest.raises(datasets.DatasetUnavailableError, match="1.0.0 only"):
        datasets.open_builder(config.data, str(tmp_path))
    assert not os.path.exists(
        os.path.join(os.path.dirname(old), str(sysu_mm01.VERSION))
    )

    # The command of the message builds the current version beside it.
    command = [
        sys.executable,
        "-m",
        "data_pipeline.sysu_mm01",
        f"--manual_dir={sysu_raw.root}",
        f"--data_dir={data_dir}",
        "--config=original",
    ]
    done = subprocess.run(
        command, cwd=_REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"sysu_mm01/original {sysu_mm01.VERSION} ready" in done.stdout
    rebuilt = sysu_mm01.SysuMm01(data_dir=data_dir, config="original")
    assert rebuilt.info.splits["test"].num_examples == (
        sysu_builder("original").info.splits["test"].num_examples
    )
    assert os.path.isdir(old)  # Left for the user to delete.


def test_regdb_previous_version_is_an_error(regdb_builder, tmp_path):
    data_dir = str(tmp_path / "tfds")
    _as_version_1(regdb_builder(2), data_dir)
    with pytest.raises(
        sysu_mm01.OutdatedRecordsError,
        match="python -m data_pipeline.regdb .*--config=trial_2",
    ):
        regdb.Regdb(data_dir=data_dir, config="trial_2")
    # Another trial is another folder: not affected.
    assert not regdb.Regdb(data_dir=data_dir, config="trial_1").info.splits


def test_image_format_picks_the_config():
    resolve = sysu_mm01.resolve_config
    assert resolve(None, None, default="288x144") == "288x144"
    assert resolve(None, "raw", default="288x144") == "288x144"
    assert resolve("original", "png", default="288x144") == "original_png"
    assert resolve("trial_3_jpeg", None, default="trial_1") == "trial_3_jpeg"
    assert resolve("trial_3_jpeg", "jpeg", default="trial_1") == "trial_3_jpeg"
    with pytest.raises(ValueError, match="stores png, but image_format"):
        resolve("288x144_png", "jpeg", default="288x144")
    with pytest.raises(ValueError, match="image_format must be one of"):
        resolve("288x144", "webp", default="288x144")
    names = {c.name for c in regdb.Regdb.BUILDER_CONFIGS}
    assert {"trial_10", "trial_10_png", "trial_10_jpeg"} <= names
    assert len(names) == 30
    assert {c.name for c in sysu_mm01.SysuMm01.BUILDER_CONFIGS} == {
        "288x144",
        "288x144_png",
        "288x144_jpeg",
        "original",
        "original_png",
        "original_jpeg",
    }


def test_build_command_reports_a_bad_folder_in_one_message(tmp_path):
    missing = str(tmp_path / "no_such_folder")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline.regdb",
            f"--manual_dir={missing}",
            f"--data_dir={tmp_path / 'tfds'}",
        ],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # mclnet_jax/errors.py: exit 2, the user must fix the folder.
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"ERROR: Manual directory {missing}" in done.stderr
