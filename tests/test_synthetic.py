"""Tests of the synthetic SYSU-MM01 / RegDB generator.

The layout tests check conftest.py's session folders (`sysu_raw`,
`regdb_raw`) against the arguments that made them.
"""

import filecmp
import importlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from PIL import Image

from data_pipeline import synthetic
from data_pipeline.synthetic import appearance, cli, rendering

TINY = dict(num_identities=8, height=32, width=16)
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)


def test_sysu_layout_matches_arguments(sysu_raw):
    root, summary, params = sysu_raw.root, sysu_raw.summary, sysu_raw.params
    num_ids = params["num_identities"]
    visible = params["visible_images_per_camera"]
    infrared = params["infrared_images_per_camera"]
    assert visible != infrared  # So that swapped counts would show.
    files = _files(root)
    images = [f for f in files if f.startswith("cam")]
    expected = []
    for cam in range(1, 7):
        per_id = infrared if cam in (3, 6) else visible
        for pid in range(1, num_ids + 1):
            expected += [
                f"cam{cam}/{pid:04d}/{k:04d}.jpg" for k in range(1, per_id + 1)
            ]
    assert images == sorted(expected)
    assert summary.num_visible == num_ids * 4 * visible
    assert summary.num_infrared == num_ids * 2 * infrared
    assert sorted(f for f in files if not f.startswith("cam")) == [
        "exp/test_id.txt",
        "exp/train_id.txt",
        "exp/val_id.txt",
    ]
    with Image.open(os.path.join(root, images[0])) as img:
        size = (params["width"], params["height"])
        assert img.size == size and img.mode == "RGB"


def test_sysu_split_files_partition_the_ids(sysu_raw):
    root, summary = sysu_raw.root, sysu_raw.summary
    lists = {}
    for name in ("train", "val", "test"):
        with open(os.path.join(root, "exp", f"{name}_id.txt")) as f:
            text = f.read()
        assert text.count("\n") == 1  # one line, as SYSU-MM01's files
        lists[name] = [int(t) for t in text.strip().split(",")]
        assert lists[name] == list(summary.splits[name])
    all_ids = lists["train"] + lists["val"] + lists["test"]
    num_ids = sysu_raw.params["num_identities"]
    assert sorted(all_ids) == list(range(1, num_ids + 1))
    assert all(len(v) >= 1 for v in lists.values())


def test_sysu_split_proportions_at_full_size():
    split = synthetic.sysu_split(range(1, 492), seed=0)
    # SYSU-MM01's own files: 491 ids = 296 train + 99 val + 96 test.
    assert [len(split[k]) for k in ("train", "val", "test")] == [296, 99, 96]
    assert sorted(
        int(i) for k in ("train", "val", "test") for i in split[k]
    ) == list(range(1, 492))
    half = synthetic.sysu_split(range(1, 247), seed=0)
    # 246 ids: round(246 * 99 / 491) = 50 val, round(246 * 96 / 491) = 48 test.
    assert [len(half[k]) for k in ("train", "val", "test")] == [148, 50, 48]


def test_same_seed_same_bytes_other_seed_other_bytes(sysu_raw, tmp_path):
    root, params = sysu_raw.root, dict(sysu_raw.params)
    again = str(tmp_path / "again")
    synthetic.generate_sysu(again, **params)
    files = _files(root)
    assert _files(again) == files
    match, mismatch, errors = filecmp.cmpfiles(
        root, again, files, shallow=False
    )
    assert mismatch == [] and errors == [] and len(match) == len(files)
    other = str(tmp_path / "other")
    synthetic.generate_sysu(other, **{**params, "seed": params["seed"] + 1})
    images = [f for f in files if f.startswith("cam")]
    _, mismatch, _ = filecmp.cmpfiles(root, other, images, shallow=False)
    assert len(mismatch) == len(images)


def test_infrared_images_are_grey_and_visible_are_not():
    ids = synthetic.sample_identities(6, seed=0)
    index = np.repeat(np.arange(6), 2)
    out = {}
    for infrared in (False, True):
        camera = synthetic.make_camera(
            3 if infrared else 1, infrared=infrared, outdoor=False, seed=0
        )
        rng = np.random.default_rng(0)
        views = synthetic.sample_views(camera, index.size, rng=rng)
        out[infrared] = synthetic.render_camera(
            ids, index, views, camera, height=32, width=16, rng=rng
        )
        assert out[infrared].shape == (12, 32, 16, 3)
        assert out[infrared].dtype == np.uint8
    ir = out[True].astype(int)
    np.testing.assert_array_equal(ir[..., 0], ir[..., 1])
    np.testing.assert_array_equal(ir[..., 0], ir[..., 2])
    vis = out[False].astype(int)
    assert np.mean(np.abs(vis[..., 0] - vis[..., 1])) > 5


def test_infrared_signature_is_not_a_function_of_colour():
    ids = synthetic.sample_identities(4000, seed=1)
    vis = ids["visible_palette"]  # [I, parts, 2, 3]
    ir = ids["infrared_palette"][..., 0]  # [I, parts, 2]
    for part in (appearance.UPPER, appearance.LOWER, appearance.SKIN):
        luma = vis[:, part, 0] @ np.array([0.299, 0.587, 0.114])
        for channel in range(3):
            r = np.corrcoef(vis[:, part, 0, channel], ir[:, part, 0])[0, 1]
            assert abs(r) < 0.08, (part, channel, r)
        assert abs(np.corrcoef(luma, ir[:, part, 0])[0, 1]) < 0.08
    # The pattern contrast exists in both modalities (the shared cue).
    assert np.all(
        np.abs(ir[:, appearance.UPPER, 0] - ir[:, appearance.UPPER, 1])
        >= 0.18 - 1e-9
    )


def test_pattern_scale_scales_only_the_pattern_frequencies():
    keys = ("upper_freq_v", "upper_freq_u", "lower_freq_v", "lower_freq_u")
    base = synthetic.sample_identities(50, seed=4)
    coarse = synthetic.sample_identities(50, seed=4, pattern_scale=0.4)
    for key, value in base.items():
        if key in keys:
            np.testing.assert_allclose(coarse[key], 0.4 * value)
        else:
            np.testing.assert_array_equal(coarse[key], value)
    # Coarser stripes: fewer light/dark runs along a horizontally striped
    # torso (pattern 1), counted on the rendered label of the pattern.
    v = np.linspace(0.01, 0.29, 200)[None, :, None]
    u = np.zeros((1, 1, 1))

    def runs(freq):
        pat = rendering._garment_pattern(
            np.ones((1, 1, 1), int),
            u,
            v,
            np.full((1, 1, 1), 10.0),
            np.full((1, 1, 1), freq),
            np.zeros((1, 1, 1)),
            np.full((1, 1, 1), 0.5),
            np.full((1, 1, 1), 0.2),
        )[0, :, 0]
        return int(np.sum(pat[1:] != pat[:-1]))

    # 0.28 body units at 10 cycles: 2.8 periods, 5 or 6 edges; at 4
    # cycles: 1.1 periods, 2 or 3 edges.
    assert runs(10.0) in (5, 6)
    assert runs(4.0) in (2, 3)


@pytest.mark.parametrize("value", [0, -1.0, 11.0, "x"])
def test_bad_pattern_scale_raises(tmp_path, value):
    with pytest.raises(synthetic.SyntheticDataError, match="pattern_scale"):
        synthetic.sample_identities(4, seed=0, pattern_scale=value)
    with pytest.raises(synthetic.SyntheticDataError, match="pattern_scale"):
        synthetic.generate_sysu(
            str(tmp_path / "d"), pattern_scale=value, **TINY
        )


def test_raw_pixel_modality_gap():
    """Same-modality raw-pixel matching must beat cross-modality clearly."""
    n_ids, per_cam = 30, 3
    ids = synthetic.sample_identities(n_ids, seed=3)
    index = np.repeat(np.arange(n_ids), per_cam)
    images = {}
    for cam, infrared in ((1, False), (2, False), (3, True)):
        camera = synthetic.make_camera(
            cam, infrared=infrared, outdoor=False, seed=3
        )
        rng = np.random.default_rng(cam)
        views = synthetic.sample_views(camera, index.size, rng=rng)
        images[cam] = (
            synthetic.render_camera(
                ids, index, views, camera, height=32, width=16, rng=rng
            )
            .reshape(index.size, -1)
            .astype(np.float64)
        )

    def rank1(query, gallery):
        d = ((query[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
        return np.mean(index[np.argmin(d, axis=1)] == index)

    same = rank1(images[1], images[2])
    cross = rank1(images[3], images[2])
    assert same > 3 * cross
    assert same > 0.2


def test_regdb_layout_and_index_files(regdb_raw):
    root, summary = regdb_raw.root, regdb_raw.summary
    num_ids = regdb_raw.params["num_identities"]
    per_id = regdb_raw.params["images_per_modality"]
    files = _files(root)
    for folder, prefix in (("Visible", "visible"), ("Thermal", "thermal")):
        got = [f for f in files if f.startswith(folder + "/")]
        assert got == sorted(
            f"{folder}/{pid}/{prefix}_{pid:04d}_{k:02d}.bmp"
            for pid in range(1, num_ids + 1)
            for k in range(1, per_id + 1)
        )
    splits = {}
    for t in range(1, 11):
        train_ids = None
        for split in ("train", "test"):
            for modality in ("visible", "thermal"):
                path = os.path.join(root, "idx", f"{split}_{modality}_{t}.txt")
                with open(path) as f:
                    lines = [line.split() for line in f.read().splitlines()]
                pids = [int(p.split("/")[1]) for p, _ in lines]
                labels = [int(label) for _, label in lines]
                paths = [p for p, _ in lines]
                assert all(os.path.isfile(os.path.join(root, p)) for p in paths)
                assert all(
                    p.startswith(modality.capitalize() + "/") for p in paths
                )
                assert len(lines) == per_id * len(set(pids))
                # One label per person, equal labels for equal persons.
                assert len(set(zip(pids, labels, strict=True))) == len(
                    set(pids)
                )
                if split == "train":
                    assert sorted(set(labels)) == list(range(len(set(pids))))
                    train_ids = set(pids)
                else:
                    assert not set(pids) & train_ids
                    assert set(pids) | train_ids == set(range(1, num_ids + 1))
                    assert min(labels) == len(train_ids)
                splits[(t, split, modality)] = sorted(set(pids))
        assert (
            splits[(t, "train", "visible")] == splits[(t, "train", "thermal")]
        )
        # Train gets the smaller half when odd.
        assert len(splits[(t, "train", "visible")]) == num_ids // 2
    assert tuple(splits[(1, "train", "visible")]) == summary.splits["train_1"]
    trains = {tuple(splits[(t, "train", "visible")]) for t in range(1, 11)}
    assert len(trains) > 1  # trials are different random splits


def test_regdb_jpg_format(tmp_path):
    root = str(tmp_path / "r")
    synthetic.generate_regdb(
        root,
        num_identities=2,
        images_per_modality=1,
        height=16,
        width=8,
        image_format="jpg",
        num_trials=1,
    )
    assert _files(root) == [
        "Thermal/1/thermal_0001_01.jpg",
        "Thermal/2/thermal_0002_01.jpg",
        "Visible/1/visible_0001_01.jpg",
        "Visible/2/visible_0002_01.jpg",
        "idx/test_thermal_1.txt",
        "idx/test_visible_1.txt",
        "idx/train_thermal_1.txt",
        "idx/train_visible_1.txt",
    ]


def _cli(args):
    """Runs the command line on `args` with flags of its own: the exit code."""
    flag_values = flags.FlagValues()
    cli.define_flags(flag_values)
    flag_values(["mclnet-synthetic", *args])
    return cli.main(["mclnet-synthetic"], flag_values)


def test_cli_and_argument_errors(tmp_path, capsys):
    out = str(tmp_path / "cli")
    tiny = ["--layout=sysu", f"--out={out}", "--preset=tiny"]
    assert _cli(tiny + ["--images_per_camera=1", "--num_identities=3"]) == 0
    assert len([f for f in _files(out) if f.startswith("cam")]) == 3 * 6
    capsys.readouterr()
    assert _cli(tiny) == 2
    assert "--overwrite" in capsys.readouterr().err
    again = ["--overwrite", "--num_identities=4", "--images_per_camera=1"]
    assert _cli(tiny + again) == 0
    assert len([f for f in _files(out) if f.startswith("cam")]) == 4 * 6
    capsys.readouterr()
    for args, message in (
        (["--layout=regdb", "--preset=sysu_sized"], "unknown preset"),
        (["--layout=sysu", "--images_per_modality=2"], "--layout=regdb"),
        (["--layout=regdb", "--images_per_camera=2"], "--layout=sysu"),
        (["--layout=sysu", "--num_identities=2"], "num_identities"),
        (["--layout=sysu", "--height=4"], "height"),
    ):
        assert _cli(args + [f"--out={tmp_path / 'bad'}"]) == 2
        assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "bad")
    with pytest.raises(synthetic.SyntheticDataError, match="image_format"):
        synthetic.generate_regdb(str(tmp_path / "z"), image_format="png")
    # Flags absl rejects while parsing: a bad choice, a missing --layout.
    for args, message in (
        (["--layout=foo", f"--out={out}"], "--layout"),
        ([f"--out={out}"], "--layout"),
        (["--layout=regdb", "--image_format=png", f"--out={out}"], "bmp"),
    ):
        with pytest.raises(flags.IllegalFlagValueError, match=message):
            _cli(args)


def test_module_and_console_script_run_the_cli(tmp_path):
    """`python -m data_pipeline.synthetic` and the pyproject entry point."""
    out = str(tmp_path / "m")
    command = [sys.executable, "-m", "data_pipeline.synthetic"]
    args = ["--layout=regdb", "--preset=tiny", "--images_per_modality=1"]
    # A second run refuses to overwrite the first without --overwrite.
    for code, message, stream in (
        (0, "Wrote 16 images", "stdout"),
        (2, "--overwrite", "stderr"),
    ):
        done = subprocess.run(
            command + args + [f"--out={out}"],
            cwd=_REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == code, done.stderr
        assert message in getattr(done, stream)
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(_REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    module, function = scripts["mclnet-synthetic"].split(":")
    assert getattr(importlib.import_module(module), function) is cli.run


def test_reported_seconds_cover_only_the_call(tmp_path):
    before = time.perf_counter()
    summary = synthetic.generate_regdb(
        str(tmp_path / "r"),
        num_identities=2,
        images_per_modality=1,
        height=16,
        width=8,
        num_trials=1,
    )
    elapsed = time.perf_counter() - before
    assert 0.0 < summary.seconds <= elapsed
