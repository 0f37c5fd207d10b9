"""Tests for mclnet_jax.embed: features of image files from a workdir.

The workdir is made without training: a tiny state (configs/synthetic.py
tiny=1, 7 classes) from `train_step.init_state`, its weights and BatchNorm
statistics moved away from their initialisation (so a loader that rebuilt
the network from config.seed instead of the checkpoint would fail), saved
through `checkpointing.Checkpointer` like a training run, with config.json.
There is no dataset. The reference features come from an independent path:
PIL decoding and resizing, numpy normalisation with the ImageNet constants
written out here, and a direct `model.apply`.
"""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_steps
from absl import flags
from absl import logging as absl_logging
from PIL import Image

from data_pipeline import image_files
from mclnet_jax import checkpointing, embed
from mclnet_jax.configs import synthetic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 7  # Not the tiny config's 8 ids: read from the checkpoint.
STEP = 5
# One batch size for all in-process calls: the forward compiles once.
BATCH = 3
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (file, (height, width)); the tiny model takes 32 x 16.
IMAGES = (
    ("a.png", (32, 16)),
    ("b.png", (50, 23)),
    ("c.jpg", (32, 16)),
    (os.path.join("sub", "d.png"), (20, 11)),
)


def tiny_config():
    return synthetic.get_config("tiny=1")


def perturbed(state, seed):
    """The state with every weight and BatchNorm statistic moved at random."""
    rng = np.random.default_rng(seed)

    def move(path, x):
        noise = rng.normal(size=x.shape).astype(np.float32)
        if getattr(path[-1], "key", None) == "var":
            return x * np.exp(0.5 * noise)  # Stays positive.
        return x + 0.1 * noise

    return state.replace(
        step=jnp.int32(STEP),
        params=jax.tree_util.tree_map_with_path(move, state.params),
        batch_stats=jax.tree_util.tree_map_with_path(move, state.batch_stats),
    )


def make_workdir(path):
    """A tiny trained-looking workdir; returns (model, state)."""
    config = tiny_config()
    model, _, _, _, state = tiny_steps.initial_state(
        config, num_classes=NUM_CLASSES, load_pretrained=False
    )
    state = perturbed(state, seed=1)
    ckpt = checkpointing.Checkpointer(str(path), keep=1)
    ckpt.save(STEP, state)
    ckpt.wait()
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    return model, state


def write_images(folder):
    rng = np.random.default_rng(0)
    for name, (h, w) in IMAGES:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Smooth-ish content so that the JPEG is a plausible photo.
        pixels = rng.integers(0, 256, size=(h, w, 3)).astype(np.float64)
        pixels = (pixels + np.roll(pixels, 1, axis=0)) / 2
        image = Image.fromarray(pixels.astype(np.uint8))
        if name.endswith(".jpg"):
            image.save(path, quality=90)
        else:
            image.save(path)
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image; a directory listing skips it")


def decode(path):
    """RGB uint8 pixels as PIL decodes the file.

    The pipeline decodes JPEGs with libjpeg's accurate inverse DCT, as PIL
    does (TensorFlow's default, the fast one, is up to 4-6 levels off on
    these images and fails the comparison below).
    """
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def reference_pixels(path, size=(32, 16)):
    """Decode + per-channel float bilinear resize + numpy normalisation.

    PIL's float ("F") bilinear resize widens its kernel when shrinking, as
    TensorFlow's antialiased resize does, and matches it exactly at these
    sizes (uint8 PIL resizing would not: it rounds in fixed point).
    """
    rgb = decode(path)
    h, w = size
    if rgb.shape[:2] != (h, w):
        channels = [
            np.asarray(
                Image.fromarray(
                    rgb[..., c].astype(np.float32), mode="F"
                ).resize((w, h), Image.BILINEAR)
            )
            for c in range(3)
        ]
        rgb = np.clip(np.round(np.stack(channels, -1)), 0, 255)
    return (rgb.astype(np.float32) / 255.0 - MEAN) / STD


def reference_features(model, state, paths):
    """{modality: {"pool", "bn"}} by a direct `model.apply` in eval mode.

    Both stems in one call: in eval mode each row is computed on its own, so
    the two halves equal separate calls.
    """
    variables = {
        "params": state.params["model"],
        "batch_stats": state.batch_stats,
    }
    x = jnp.asarray(np.stack([reference_pixels(p) for p in paths]))
    out = jax.jit(lambda v, a: model.apply(v, a, a, train=False))(variables, x)
    n = len(paths)
    return {
        "visible": {k: np.asarray(out[k][:n]) for k in ("pool", "bn")},
        "infrared": {k: np.asarray(out[k][n:]) for k in ("pool", "bn")},
    }


def deviation(got, want):
    """(max abs difference, max abs difference / max |want|)."""
    diff = float(np.max(np.abs(got - want)))
    return diff, diff / float(np.max(np.abs(want)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fast_compile):
    del fast_compile
    path = tmp_path_factory.mktemp("workdir")
    model, state = make_workdir(path)
    images = tmp_path_factory.mktemp("images")
    write_images(str(images))
    return str(path), model, state, str(images)


def test_directory_matches_independent_reference(workdir):
    path, model, state, images = workdir
    # 3 per batch over 4 images: the last batch is padded.
    out = embed.embed_images(
        path, images, modality="infrared", batch_size=BATCH
    )
    want_names = sorted(os.path.join(images, n) for n, _ in IMAGES)
    assert out["file_names"].tolist() == want_names
    assert out["modality"] == "infrared" and out["step"] == STEP
    want = reference_features(model, state, want_names)["infrared"]
    for name in ("pool", "bn"):
        assert out[name].dtype == np.float32
        assert out[name].shape == (len(IMAGES), model.feature_dim)
        abs_dev, rel_dev = deviation(out[name], want[name])
        assert abs_dev <= 1e-5 * max(1.0, np.abs(want[name]).max()), (
            name,
            abs_dev,
            rel_dev,
        )
    # Raw features: the evaluator normalises, the tool does not.
    assert not np.allclose(np.linalg.norm(out["bn"], axis=1), 1.0)


def test_glob_visible_stem_and_loaded_model_reuse(workdir):
    path, model, state, images = workdir
    loaded = embed.load_model(path)
    assert loaded.num_classes == NUM_CLASSES and loaded.step == STEP
    assert loaded.image_size == (32, 16)
    # The glob keeps only the top-level PNGs.
    out = embed.embed_images(
        loaded,
        os.path.join(images, "*.png"),
        modality="visible",
        batch_size=BATCH,
    )
    names = [os.path.join(images, n) for n in ("a.png", "b.png")]
    assert out["file_names"].tolist() == names
    want = reference_features(model, state, names)
    for name in ("pool", "bn"):
        np.testing.assert_allclose(
            out[name], want["visible"][name], rtol=1e-5, atol=1e-5
        )
    # The other stem gives other features (the modality is not ignored).
    assert np.abs(want["infrared"]["bn"] - out["bn"]).max() > 1e-2


def test_write_features_is_atomic(workdir, tmp_path, monkeypatch):
    del workdir
    out = tmp_path / "out" / "f.npz"
    features = {
        "bn": np.ones((2, 3), np.float32),
        "file_names": np.asarray(["x.png", "y.png"]),
    }
    embed.write_features(str(out), features)
    with np.load(out) as data:
        np.testing.assert_array_equal(data["bn"], features["bn"])
        assert data["file_names"].tolist() == ["x.png", "y.png"]

    def failing_savez(f, **arrays):
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    again = tmp_path / "out" / "g.npz"
    with pytest.raises(OSError, match="disk full"):
        embed.write_features(str(again), features)
    # Neither the target nor a temporary file is left behind.
    assert sorted(os.listdir(tmp_path / "out")) == ["f.npz"]


def _embed_main(*args):
    """`python -m mclnet_jax.embed ARGS` in this process; its exit status."""
    flag_values = flags.FlagValues()
    embed.define_flags(flag_values)
    flag_values(["embed.py", *args])
    # The console filter the program installs is removed afterwards.
    handler = absl_logging.get_absl_handler()
    filters = list(handler.filters)
    try:
        return embed.main(["embed.py"], flag_values)
    finally:
        handler.filters[:] = filters


def test_unreadable_image_is_named_and_nothing_is_written(
    workdir, tmp_path, capsys
):
    path, _, _, images = workdir
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(image_files.ImageError, match="broken.jpg"):
        embed.embed_images(
            path, str(folder), modality="visible", batch_size=BATCH
        )

    # The command line's error path, in this process (its smoke test below
    # starts the program).
    out = tmp_path / "features.npz"
    capsys.readouterr()
    code = _embed_main(
        f"--workdir={path}",
        "--modality=infrared",
        f"--images={folder}",
        f"--out={out}",
    )
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    assert "broken.jpg" in stderr
    assert "a.png" not in stderr.split("ERROR:")[-1]
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p != "mixed"] == []


def test_cli_writes_the_features(workdir, tmp_path):
    path, _, _, images = workdir
    out = tmp_path / "f.npz"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mclnet_jax.embed",
            f"--workdir={path}",
            "--modality=infrared",
            f"--images={images}/*.png",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        cwd=_REPO,
        check=False,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    want = embed.embed_images(
        path,
        os.path.join(images, "*.png"),
        modality="infrared",
        batch_size=BATCH,
    )
    with np.load(out) as data:
        assert data["file_names"].tolist() == want["file_names"].tolist()
        assert str(data["modality"]) == "infrared"
        for name in ("pool", "bn"):
            np.testing.assert_allclose(
                data[name], want[name], rtol=1e-5, atol=1e-5
            )


def test_no_images_and_bad_arguments(workdir, tmp_path):
    path, _, _, images = workdir
    with pytest.raises(image_files.ImageError, match="no file matches"):
        embed.embed_images(path, str(tmp_path / "*.jpg"), modality="visible")
    (tmp_path / "empty").mkdir()
    with pytest.raises(image_files.ImageError, match="no .jpg"):
        image_files.find_images(str(tmp_path / "empty"))
    with pytest.raises(image_files.ImageError, match="not files"):
        image_files.find_images([str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="modality"):
        embed.embed_images(path, images, modality="thermal")
    with pytest.raises(ValueError, match="batch_size"):
        embed.embed_images(path, images, modality="visible", batch_size=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        embed.load_model(str(tmp_path))


def test_best_checkpoint(workdir, tmp_path):
    path, _, state, _ = workdir
    with pytest.raises(FileNotFoundError, match="No best checkpoint"):
        embed.load_model(path, checkpoint="best")
    with pytest.raises(ValueError, match="'latest' or 'best'"):
        embed.load_model(path, checkpoint="final")
    # A copy of the workdir with a best checkpoint (another state).
    copy = tmp_path / "with_best"
    shutil.copytree(path, copy)
    best = perturbed(state, seed=2)
    ckpt = checkpointing.Checkpointer(
        str(copy), keep=1, best_metric="sysu/bn/mAP"
    )
    assert ckpt.save_best(STEP, best, {"sysu": {"bn": {"mAP": 0.5}}})
    ckpt.wait()
    loaded = embed.load_model(str(copy), checkpoint="best")
    assert loaded.checkpoint == "best"
    got = loaded.variables["params"]["classifier"]["kernel"]
    np.testing.assert_array_equal(
        got, best.params["model"]["classifier"]["kernel"]
    )
    assert not np.array_equal(
        got,
        embed.load_model(str(copy)).variables["params"]["classifier"]["kernel"],
    )
