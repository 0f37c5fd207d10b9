"""`datasets.iter_images` against the release's preprocessing, done with PIL.

The reference is written here, independently of the builders: open the
original file, `convert("RGB")`, `resize((144, 288), Image.LANCZOS)` (what
the authors' pre_process_sysu.py and RegDB loader do). The synthetic
folders are rewritten so that their images are larger than, smaller than
and exactly at 288x144, some of them grey JPEGs, and the labels are read
back from the folder names and idx files. Every split must equal the
reference bit for bit.
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from data_pipeline import datasets, image_ops, synthetic
from data_pipeline.constants import INFRARED, VISIBLE
from mclnet_jax.configs import regdb, sysu

RELEASE_SIZE = (144, 288)  # PIL's (width, height).
# (height, width) the files are rewritten to, in turn: larger (and of
# another aspect), smaller, exactly the stored size.
FILE_SIZES = ((300, 170), (48, 24), (288, 144))


def _release_pixels(path):
    """The release's preprocessing of one file (PIL), uint8 [288, 144, 3]."""
    with Image.open(path) as img:
        return np.asarray(
            img.convert("RGB").resize(RELEASE_SIZE, Image.Resampling.LANCZOS)
        )


def _rewrite_sizes(root, extensions):
    """Resizes every image file under `root` to FILE_SIZES in turn, every
    fifth one of the JPEGs stored grey; returns {size: count}."""
    counts = {}
    paths = sorted(
        os.path.join(d, name)
        for d, _, names in os.walk(root)
        for name in names
        if name.endswith(extensions)
    )
    for i, path in enumerate(paths):
        h, w = FILE_SIZES[i % len(FILE_SIZES)]
        with Image.open(path) as img:
            img = img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        if path.endswith(".jpg"):
            if i % 5 == 0:
                img = img.convert("L")
            img.save(path, format="JPEG", quality=90)
        else:
            img.save(path, format="BMP")
        counts[(h, w)] = counts.get((h, w), 0) + 1
    return counts


def _rewritten_folder(tmp_path_factory, name, generate, extension, **params):
    """A generated folder (32x16 images) whose files `_rewrite_sizes` then
    rewrote, all of FILE_SIZES among them."""
    root = str(tmp_path_factory.mktemp(name) / "raw")
    generate(root, height=32, width=16, **params)
    counts = _rewrite_sizes(root, (extension,))
    assert set(counts) == set(FILE_SIZES)
    return root


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    return _rewritten_folder(
        tmp_path_factory,
        "iter_sysu",
        synthetic.generate_sysu,
        ".jpg",
        num_identities=8,
        visible_images_per_camera=2,
        infrared_images_per_camera=2,
        seed=3,
    )


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory):
    return _rewritten_folder(
        tmp_path_factory,
        "iter_regdb",
        synthetic.generate_regdb,
        ".bmp",
        num_identities=4,
        images_per_modality=2,
        seed=4,
        num_trials=1,
    )


def _data_config(config, root, data_dir, **overrides):
    dc = config.data
    dc.manual_dir = root
    dc.data_dir = str(data_dir)
    for key, value in overrides.items():
        dc[key] = value
    return dc


def _sysu_ids(root, split):
    groups = {"train": ("train", "val"), "test": ("test",)}[split]
    ids = set()
    for group in groups:
        with open(os.path.join(root, "exp", f"{group}_id.txt")) as f:
            ids |= {int(t) for t in f.read().split(",")}
    return ids


def _check_against_release(items, root):
    """Asserts bit equality with the PIL reference; returns (mean, max)."""
    diffs = []
    for item in items:
        want = _release_pixels(os.path.join(root, item["file_name"]))
        assert item["image"].dtype == np.uint8
        assert item["image"].shape == want.shape
        diff = np.abs(item["image"].astype(int) - want.astype(int))
        diffs.append(diff)
    assert diffs
    every = np.concatenate([d.ravel() for d in diffs])
    return float(every.mean()), int(every.max())


@pytest.mark.parametrize("split", ["train", "test"])
def test_sysu_equals_the_release_preprocessing(sysu_root, tmp_path, split):
    dc = _data_config(sysu.get_config(), sysu_root, tmp_path / "tfds")
    items = list(datasets.iter_images(dc, split))
    assert _check_against_release(items, sysu_root) == (0.0, 0)
    # Labels from the folder names: camC/PPPP/NNNN.jpg.
    ids = _sysu_ids(sysu_root, split)
    names = set()
    for item in items:
        cam, pid, _ = item["file_name"].split("/")
        assert item["camera"] == int(cam[3:])
        assert item["identity"] == int(pid) and int(pid) in ids
        want = INFRARED if item["camera"] in (3, 6) else VISIBLE
        assert item["modality"] == want
        names.add(item["file_name"])
    on_disk = {
        f"cam{c}/{p}/{n}"
        for c in range(1, 7)
        for p in os.listdir(os.path.join(sysu_root, f"cam{c}"))
        if int(p) in ids
        for n in os.listdir(os.path.join(sysu_root, f"cam{c}", p))
    }
    assert names == on_disk and len(items) == len(on_disk)


@pytest.mark.parametrize("split", ["train", "test"])
def test_regdb_equals_the_release_preprocessing(regdb_root, tmp_path, split):
    dc = _data_config(
        regdb.get_config("trial=1"), regdb_root, tmp_path / "tfds"
    )
    items = list(datasets.iter_images(dc, split))
    assert _check_against_release(items, regdb_root) == (0.0, 0)
    listed = {}
    for modality, camera in (("visible", 1), ("thermal", 2)):
        name = f"{split}_{modality}_1.txt"
        with open(os.path.join(regdb_root, "idx", name)) as f:
            for line in f.read().splitlines():
                path, label = line.split()
                listed[path] = (int(label), camera, camera - 1)
    got = {
        it["file_name"]: (it["identity"], it["camera"], it["modality"])
        for it in items
    }
    assert got == listed


def test_png_storage_is_lossless_and_jpeg_passes_exact_files(
    sysu_root, tmp_path
):
    """PNG records give the same pixels; JPEG records pass a file already
    at 288x144 through, which the accurate DCT decodes exactly as PIL."""
    png = _data_config(
        sysu.get_config(), sysu_root, tmp_path / "tfds", image_format="png"
    )
    assert _check_against_release(
        datasets.iter_images(png, "test"), sysu_root
    ) == (0.0, 0)
    jpeg = _data_config(
        sysu.get_config(), sysu_root, tmp_path / "tfds", image_format="jpeg"
    )
    exact = resized = 0
    for item in datasets.iter_images(jpeg, "test"):
        path = os.path.join(sysu_root, item["file_name"])
        want = _release_pixels(path)
        with Image.open(path) as img:
            passed_through = img.size == RELEASE_SIZE and img.mode == "RGB"
        if passed_through:
            np.testing.assert_array_equal(item["image"], want)
            exact += 1
        else:
            # Re-encoded at quality 95: close, not equal.
            mse = np.mean((item["image"].astype(float) - want) ** 2)
            assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) > 35.0
            resized += 1
    assert exact and resized


def test_run_time_resize_to_another_size(sysu_root, tmp_path):
    """With an image_size other than the stored one, iter_images shows the
    pipeline's bilinear resize of the stored pixels."""
    dc = _data_config(
        sysu.get_config(), sysu_root, tmp_path / "tfds", image_size=(72, 36)
    )
    for item in list(datasets.iter_images(dc, "test"))[:4]:
        assert item["image"].shape == (72, 36, 3)
        stored = _release_pixels(os.path.join(sysu_root, item["file_name"]))
        channels = [
            np.asarray(
                Image.fromarray(
                    stored[..., c].astype(np.float32), mode="F"
                ).resize((36, 72), Image.Resampling.BILINEAR)
            )
            for c in range(3)
        ]
        want = np.clip(np.round(np.stack(channels, -1)), 0, 255)
        assert np.abs(item["image"] - want).max() <= 1


def test_unknown_split_names_the_splits(sysu_root, tmp_path):
    dc = _data_config(sysu.get_config(), sysu_root, tmp_path / "tfds")
    with pytest.raises(ValueError, match="no split 'validation'.*'val'"):
        next(datasets.iter_images(dc, "validation"))


def test_jpeg_decodes_like_pil():
    """Users' JPEGs (mclnet_jax.embed) decode exactly as PIL decodes them;
    TensorFlow's default (fast) DCT does not, so the check can fail."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 24, 3)).astype(np.float64)
    pixels = (pixels + np.roll(pixels, 1, axis=0)) / 2
    for mode, subsampling in (("RGB", 0), ("RGB", 2), ("L", 0)):
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(
            buf, format="JPEG", quality=85, subsampling=subsampling
        )
        data = buf.getvalue()
        with Image.open(io.BytesIO(data)) as img:
            want = np.asarray(img.convert("RGB"))
        got = image_ops.decode_image(data).numpy()
        np.testing.assert_array_equal(got, want)
        if mode == "RGB":
            fast = tf.io.decode_jpeg(data, channels=3).numpy()
            assert np.abs(fast.astype(int) - want).max() > 0
