"""Tests of the LLCM plug-in: layout, generator, builder, protocol, recipes.

* The layout reader and the TFDS builder on a tiny generated LLCM folder,
  against the files on disk read with plain os / PIL code; each bad input
  (missing file, malformed line, unknown folder, one-modality identity)
  gives one `DatasetLayoutError` naming it.
* The protocol against an independent implementation written here: a slow
  numpy loop with `random.Random(trial)` draws, per-query removal of the
  query's identity in the query's camera, CMC over de-duplicated
  identities, AP and INP; both directions and the reference code's
  transposed visible->infrared.
* The recipes: configs/llcm.py and configs/synthetic.py:dataset=... pass the
  config checks; a tiny `--config=synthetic:dataset=llcm,tiny=1` run
  trains, evaluates both directions and draws its figures.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from unittest import mock

import cli_runs
import ml_collections
import numpy as np
import pytest
from absl import flags
from PIL import Image

from data_pipeline import constants, layouts, records, synthetic
from data_pipeline.llcm import llcm as llcm_builder
from data_pipeline.synthetic import cli
from mclnet_jax import config_checks, query_expansion, rerank
from mclnet_jax.configs import llcm as llcm_recipe
from mclnet_jax.configs import synthetic as synthetic_recipe
from mclnet_jax.configs import sysu as sysu_recipe
from mclnet_jax.evaluators import llcm, registry

# 6 identities: 4 train, 2 test (LLCM's 713:351), 1 image per visible
# camera, 2 per infrared camera (a swap of the modalities shows).
PARAMS = dict(
    num_identities=6,
    visible_images_per_camera=1,
    infrared_images_per_camera=2,
    height=32,
    width=16,
    seed=0,
)


@pytest.fixture(scope="module")
def llcm_raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("llcm") / "raw")
    summary = synthetic.generate_llcm(root, **PARAMS)
    return root, summary


@pytest.fixture
def llcm_copy(llcm_raw, tmp_path):
    """A copy of the generated folder for a test that damages it."""
    copy = str(tmp_path / "llcm")
    shutil.copytree(llcm_raw[0], copy)
    return copy


def _disk(root):
    """{relative path: (identity, camera, modality)}, from the files."""
    out = {}
    labels = {}
    for suffix, modality in (
        ("vis", constants.VISIBLE),
        ("nir", constants.INFRARED),
    ):
        with open(os.path.join(root, "idx", f"train_{suffix}.txt")) as f:
            for line in f:
                rel, label = line.split()
                # LLCM's training paths: <vis|nir>/<pid>/<pid>_c<NN>_....jpg.
                top, person, name = rel.split("/")
                assert top == suffix and name.startswith(f"{person}_c")
                cam = int(name.split("_")[1][1:])
                out[rel] = ("train", int(label), cam, modality)
                labels.setdefault(int(person), int(label))
        with open(os.path.join(root, "idx", "test_id.txt")) as f:
            test_ids = {int(t) for t in f.read().strip().split(",")}
        top = os.path.join(root, f"test_{suffix}")
        for cam_dir in os.listdir(top):
            for person in os.listdir(os.path.join(top, cam_dir)):
                assert int(person) in test_ids
                for name in os.listdir(os.path.join(top, cam_dir, person)):
                    rel = f"test_{suffix}/{cam_dir}/{person}/{name}"
                    out[rel] = ("test", int(person), int(cam_dir[3:]), modality)
    return out, labels


# -- Generator and layout ---------------------------------------------------


def test_generated_layout_and_reader_agree_with_the_files(llcm_raw):
    root, summary = llcm_raw
    assert summary.splits == synthetic.llcm_split(range(1, 7), seed=0)
    assert len(summary.splits["test"]) == 2
    # 9 visible cameras x 1 + 8 infrared cameras x 2 per identity.
    assert summary.num_visible == 6 * 9 and summary.num_infrared == 6 * 16
    disk, labels = _disk(root)
    assert len(disk) == summary.num_images
    # Training labels: the train ids' ranks; no infrared camera 3 anywhere.
    assert sorted(labels) == list(summary.splits["train"])
    assert [labels[p] for p in sorted(labels)] == list(range(4))
    assert not any("nir/cam3/" in rel for rel in disk)
    read = layouts.read_llcm(root)
    for split in ("train", "test"):
        got = read[split]
        assert [r.file_name for r in got] == sorted(
            rel for rel, v in disk.items() if v[0] == split
        )
        for r in got:
            assert disk[r.file_name][1:] == (r.identity, r.camera, r.modality)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _first_line(path):
    with open(path) as f:
        return f.readline()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: shutil.rmtree(r), "does not exist"),
        (
            lambda r: shutil.rmtree(os.path.join(r, "test_nir")),
            "lacks test_nir",
        ),
        (
            lambda r: os.remove(os.path.join(r, "idx", "train_nir.txt")),
            "train_nir.txt is missing",
        ),
        (
            lambda r: _write(
                os.path.join(r, "idx", "train_vis.txt"), "a b c\n"
            ),
            "line 1 reads 'a b c'",
        ),
        (
            lambda r: _write(
                os.path.join(r, "idx", "train_vis.txt"), "train_vis/x.jpg 0\n"
            ),
            r"train_vis/x.jpg \(listed in",
        ),
        (
            lambda r: _write(
                os.path.join(r, "idx", "train_vis.txt"),
                _first_line(os.path.join(r, "idx", "train_vis.txt")) * 2,
            ),
            "twice",
        ),
        (
            lambda r: _write(os.path.join(r, "idx", "test_id.txt"), "5,x\n"),
            "holds 'x', not an integer id",
        ),
        (
            lambda r: os.makedirs(os.path.join(r, "test_nir", "cam10")),
            "holds cam10, not a camera",
        ),
        (
            lambda r: os.makedirs(os.path.join(r, "test_vis", "cam1", "abc")),
            "holds abc, not a person id",
        ),
        (
            lambda r: _write(os.path.join(r, "idx", "train_nir.txt"), ""),
            "empty",
        ),
    ],
)
def test_layout_errors_name_the_problem(llcm_copy, damage, message):
    damage(llcm_copy)
    with pytest.raises(layouts.DatasetLayoutError, match=message) as info:
        layouts.read_llcm(llcm_copy)
    # Every error also shows the expected layout and where to get the data.
    assert "idx/test_id.txt" in str(info.value)
    assert "Xiamen University" in str(info.value)


def _list_one_image_as(root, rel, label=0):
    """idx/train_nir.txt lists one copy of an image, at `rel`."""
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    shutil.copy(
        os.path.join(root, _first_line_path(root)), os.path.join(root, rel)
    )
    _write(os.path.join(root, "idx", "train_nir.txt"), f"{rel} {label}\n")


def test_training_paths_as_llcm_names_them_give_the_camera(llcm_copy):
    # LLCM's own training paths: no camera folder, the camera in the name.
    rel = "nir/0351/0351_c06_s200656_f4830_nir.jpg"
    _list_one_image_as(llcm_copy, rel)
    records = layouts.parse_llcm_index(
        os.path.join(llcm_copy, "idx", "train_nir.txt"),
        root=llcm_copy,
        modality=constants.INFRARED,
    )
    assert records == [layouts.ImageRecord(rel, 0, 6, constants.INFRARED)]
    # A camera folder that agrees with the name is fine too.
    rel = "x/cam9/0002/0002_c09_s1_f2_nir.jpg"
    _list_one_image_as(llcm_copy, rel, label=4)
    records = layouts.parse_llcm_index(
        os.path.join(llcm_copy, "idx", "train_nir.txt"),
        root=llcm_copy,
        modality=constants.INFRARED,
    )
    assert records == [layouts.ImageRecord(rel, 4, 9, constants.INFRARED)]


@pytest.mark.parametrize(
    "rel, message",
    [
        ("nir/x/a.jpg", "names no camera"),
        ("nir/cam2/0001/0001_c06_s1_f2_nir.jpg", "names two cameras"),
        ("nir/0001/0001_c12_s1_f2_nir.jpg", "names camera 12, not one of"),
        ("cam1/cam1/a.jpg", "more than one 'cam<c>' folder"),
    ],
)
def test_path_without_one_camera_is_refused(llcm_copy, rel, message):
    _list_one_image_as(llcm_copy, rel)
    with pytest.raises(layouts.DatasetLayoutError, match=message) as info:
        layouts.read_llcm(llcm_copy)
    assert f"train_nir.txt line 1 lists '{rel}'" in str(info.value)


def _first_line_path(root):
    return _first_line(os.path.join(root, "idx", "train_vis.txt")).split()[0]


def test_identities_in_one_modality_are_named(llcm_copy, llcm_raw):
    summary = llcm_raw[1]
    test_id = summary.splits["test"][0]
    for cam_dir in os.listdir(os.path.join(llcm_copy, "test_nir")):
        shutil.rmtree(
            os.path.join(llcm_copy, "test_nir", cam_dir, f"{test_id:04d}")
        )
    path = os.path.join(llcm_copy, "idx", "train_nir.txt")
    with open(path) as f:
        kept = [line for line in f if not line.rstrip().endswith(" 3")]
    _write(path, "".join(kept))
    # Label 2 loses its visible images; an id of test_id.txt has no folder.
    path = os.path.join(llcm_copy, "idx", "train_vis.txt")
    with open(path) as f:
        kept = [line for line in f if not line.rstrip().endswith(" 2")]
    _write(path, "".join(kept))
    path = os.path.join(llcm_copy, "idx", "test_id.txt")
    _write(path, _first_line(path).strip() + ",999\n")
    with (
        mock.patch.object(layouts.logging, "warning") as warning,
        pytest.raises(layouts.DatasetLayoutError) as info,
    ):
        layouts.read_llcm(llcm_copy)
    text = str(info.value)
    assert "train labels with visible images only: 3" in text
    assert "train labels with infrared images only: 2" in text
    # Test ids are logged, not refused (the reference evaluates whatever a
    # test id has; the protocol explains unmatched queries).
    assert "test ids" not in text and "999" not in text
    logged = _logged(warning)
    assert f"test ids with visible images only: {test_id}" in logged
    assert "without any image in test_vis/ or test_nir/: 999" in logged


def _logged(warning) -> str:
    """The messages a mocked `logging.warning` was called with."""
    return " ".join(c.args[0] % c.args[1:] for c in warning.call_args_list)


def test_test_ids_in_one_modality_and_other_cameras_are_logged(llcm_copy):
    disk, _ = _disk(llcm_copy)
    want = sorted(rel for rel, v in disk.items() if v[0] == "test")
    test_ids = _first_line(os.path.join(llcm_copy, "idx", "test_id.txt"))
    first, second = (int(i) for i in test_ids.split(",")[:2])
    # Another modality's camera, under a test id (so only the camera rule
    # keeps it out): the reference never reads test_nir/cam3.
    stray = os.path.join(llcm_copy, "test_nir", "cam3", f"{second:04d}")
    os.makedirs(stray)
    shutil.copy(os.path.join(llcm_copy, want[0]), os.path.join(stray, "a.jpg"))
    for cam_dir in os.listdir(os.path.join(llcm_copy, "test_vis")):
        shutil.rmtree(
            os.path.join(llcm_copy, "test_vis", cam_dir, f"{first:04d}"),
            ignore_errors=True,
        )
    with mock.patch.object(layouts.logging, "warning") as warning:
        test = layouts.read_llcm(llcm_copy)["test"]
    logged = _logged(warning)
    assert "test_nir/cam3 skipped" in logged
    assert f"test ids with infrared images only: {first}" in logged
    assert sorted(r.file_name for r in test) == sorted(
        rel for rel in want if f"/{first:04d}/" not in rel or "test_nir" in rel
    )


def test_a_missing_test_camera_folder_only_lacks_its_images(llcm_copy):
    # Not every camera saw every test person: an absent folder is no error.
    shutil.rmtree(os.path.join(llcm_copy, "test_vis", "cam5"))
    disk, _ = _disk(llcm_copy)
    test = layouts.read_llcm(llcm_copy)["test"]
    assert sorted(r.file_name for r in test) == sorted(
        rel for rel, v in disk.items() if v[0] == "test"
    )
    assert (5, constants.VISIBLE) not in {(r.camera, r.modality) for r in test}
    assert (5, constants.INFRARED) in {(r.camera, r.modality) for r in test}


def test_cli_writes_the_llcm_layout(tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = ["--layout=llcm", f"--out={out}", "--preset=tiny"]
    assert _cli(args + ["--num_identities=3", "--images_per_camera=1"]) == 0
    files = [
        os.path.relpath(os.path.join(d, n), out)
        for d, _, names in os.walk(out)
        for n in names
    ]
    assert len([f for f in files if f.endswith(".jpg")]) == 3 * (9 + 8)
    assert sorted(f for f in files if f.startswith("idx")) == [
        "idx/test_id.txt",
        "idx/train_nir.txt",
        "idx/train_vis.txt",
    ]
    capsys.readouterr()
    assert _cli(args + ["--images_per_modality=2", "--overwrite"]) == 2
    assert "--layout=regdb" in capsys.readouterr().err


def _cli(args):
    flag_values = flags.FlagValues()
    cli.define_flags(flag_values)
    flag_values(["mclnet-synthetic", *args])
    return cli.main(["mclnet-synthetic"], flag_values)


# -- Builder ------------------------------------------------------------------


def test_builder_records_match_the_files(llcm_raw, tmp_path):
    root = llcm_raw[0]
    builder = llcm_builder.prepare(
        manual_dir=root, data_dir=str(tmp_path), config="original"
    )
    assert builder.name == "llcm"
    assert builder.info.file_format.value == "array_record"
    disk, _ = _disk(root)
    for split in ("train", "test"):
        source = builder.as_data_source(split)
        examples = [source[i] for i in range(len(source))]
        expected = {k: v for k, v in disk.items() if v[0] == split}
        names = [e["file_name"].decode() for e in examples]
        assert sorted(names) == sorted(expected)
        ids = sorted({v[1] for v in expected.values()})
        for e, name in zip(examples, names, strict=True):
            _, identity, camera, modality = expected[name]
            assert (e["identity"], e["camera"], e["modality"]) == (
                identity,
                camera,
                modality,
            )
            assert e["label"] == ids.index(identity)
            with Image.open(os.path.join(root, name)) as img:
                pixels = np.asarray(img.convert("RGB"))
            np.testing.assert_array_equal(e["image"], pixels)
    # The one reader of the metadata reads LLCM's records too.
    meta = records.read_metadata(records.open_source(builder, "test"))
    assert set(meta.camera[meta.infrared_indices]) == set(
        constants.LLCM_INFRARED_CAMERAS
    )


def test_build_command_names_a_missing_folder(tmp_path):
    missing = str(tmp_path / "nowhere")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline.llcm",
            f"--manual_dir={missing}",
            f"--data_dir={tmp_path / 'tfds'}",
        ],
        env=cli_runs.env(),
        cwd=cli_runs.REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ERROR:" in proc.stderr and missing in proc.stderr
    assert "Traceback" not in proc.stderr


# -- Protocol -----------------------------------------------------------------


def _metadata(rng):
    """A test split: 5 identities, each camera folder with 0..3 images.

    Identity 4 has infrared images in camera 2 only and visible images in
    cameras 2 (and nowhere else): its infrared queries lose their only
    positives to the same-camera removal, and so do its visible ones.
    """
    rows = []
    for identity in range(5):
        for modality, cameras in (
            (constants.VISIBLE, constants.LLCM_VISIBLE_CAMERAS),
            (constants.INFRARED, constants.LLCM_INFRARED_CAMERAS),
        ):
            for cam in cameras:
                count = int(rng.integers(0, 4)) if identity < 4 else 0
                if identity == 4 and cam == 2:
                    count = 2
                if identity < 4 and cam == 1:
                    count = max(count, 1)  # Every identity in both.
                folder = ("test_vis", "test_nir")[modality]
                names = rng.permutation(100)[:count]
                for n in names:
                    rel = f"{folder}/cam{cam}/{identity:04d}/{n:03d}.jpg"
                    rows.append((identity, cam, modality, rel))
    order = rng.permutation(len(rows))  # Records are not in file order.
    rows = [rows[i] for i in order]

    def column(k, dtype):
        out = np.empty(len(rows), dtype=dtype)
        out[:] = [r[k] for r in rows]
        return out

    identity = column(0, np.int64)
    return records.SplitMetadata(
        label=identity.copy(),
        identity=identity,
        camera=column(1, np.int64),
        modality=column(2, np.int64),
        file_name=column(3, object),
    )


def _all_of(meta, modality):
    """Every image of a modality: identity, camera, file name ascending."""
    idx = [i for i in range(len(meta)) if meta.modality[i] == modality]
    return sorted(
        idx,
        key=lambda i: (meta.identity[i], meta.camera[i], meta.file_name[i]),
    )


def _draw(meta, modality, trial):
    """The reference draw, written out: seed, ids, cameras, sorted files."""
    rng = random.Random(trial)
    cameras = (
        constants.LLCM_VISIBLE_CAMERAS
        if modality == constants.VISIBLE
        else constants.LLCM_INFRARED_CAMERAS
    )
    out = []
    for identity in sorted(set(meta.identity.tolist())):
        for cam in cameras:
            files = sorted(
                (
                    i
                    for i in range(len(meta))
                    if meta.identity[i] == identity
                    and meta.camera[i] == cam
                    and meta.modality[i] == modality
                ),
                key=lambda i: meta.file_name[i],
            )
            if files:
                out.append(rng.choice(files))
    return out


def _slow_metrics(dist, qid, gid, qcam, gcam, max_rank):
    """The LLCM metric, one query at a time (stable ranking)."""
    cmcs, aps, inps = [], [], []
    for q in range(len(qid)):
        order = np.argsort(dist[q], kind="stable")
        keep = [
            g for g in order if not (gid[g] == qid[q] and gcam[g] == qcam[q])
        ]
        hits = np.array([gid[g] == qid[q] for g in keep])
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inps.append(len(ranks) / ranks[-1])
        seen = []
        for g in keep:
            if gid[g] not in seen:
                seen.append(gid[g])
        first = seen.index(qid[q]) + 1
        cmcs.append(np.arange(1, max_rank + 1) >= first)
    return np.mean(cmcs, axis=0), np.mean(aps), np.mean(inps), len(aps)


def _expected(meta, value, query, gallery, max_rank=20):
    unit = value / np.linalg.norm(value, axis=1, keepdims=True)
    dist = -unit[query] @ unit[gallery].T
    return _slow_metrics(
        dist,
        meta.identity[query],
        meta.identity[gallery],
        meta.camera[query],
        meta.camera[gallery],
        max_rank,
    )


def _check(got, want):
    cmc, m_ap, m_inp, valid = want
    np.testing.assert_allclose(got.cmc, cmc, atol=1e-6)
    assert got.mAP == pytest.approx(m_ap, abs=1e-6)
    assert got.mINP == pytest.approx(m_inp, abs=1e-6)
    assert got.num_valid_queries == valid


@pytest.mark.parametrize("transposed", [False, True])
def test_protocol_matches_a_slow_independent_implementation(transposed):
    rng = np.random.default_rng(3)
    meta = _metadata(rng)
    value = rng.normal(size=(len(meta), 8))
    # Exact ties: two images with the same feature.
    value[1] = value[0]
    trials = (0, 1, 2)
    protocol = llcm.Llcm(meta, trials=trials, transposed_vis_to_ir=transposed)
    results = protocol.evaluate({"bn": value})
    vis = _all_of(meta, constants.VISIBLE)
    ir = _all_of(meta, constants.INFRARED)
    v2i = "llcm_visible_to_infrared" + ("_transposed" if transposed else "")
    assert set(results.per_trial) == {"llcm_infrared_to_visible", v2i}
    for t in trials:
        expected = {
            "llcm_infrared_to_visible": (
                ir,
                _draw(meta, constants.VISIBLE, t),
            ),
            v2i: (
                (_draw(meta, constants.INFRARED, t), vis)
                if transposed
                else (vis, _draw(meta, constants.INFRARED, t))
            ),
        }
        for name, (query, gallery) in expected.items():
            got = results.per_trial[name]["bn"][t]
            assert got.num_queries == len(query)
            _check(got, _expected(meta, value, query, gallery))
    # Identity 4's queries: its other-modality images are all in camera 2.
    assert "own camera" in results.skip_reasons["llcm_infrared_to_visible"]
    # The views show trial 0's sets.
    views = {v.name: v for v in protocol.rank_list_views()}
    view = views["rank_list_llcm_infrared_to_visible"]
    assert view.query.tolist() == ir
    assert view.gallery.tolist() == _draw(meta, constants.VISIBLE, 0)
    assert set(views) == {f"rank_list_{p}" for p in results.per_trial}


def test_skip_reasons_count_the_queries_without_a_match():
    meta = _metadata(np.random.default_rng(5))
    # Identity 7: two visible images in camera 1, no infrared image at all.
    extra = [f"test_vis/cam1/0007/{n}.jpg" for n in ("a", "b")]
    fields = {
        "identity": [7, 7],
        "camera": [1, 1],
        "modality": [constants.VISIBLE] * 2,
        "file_name": extra,
    }
    meta = records.SplitMetadata(
        label=np.concatenate([meta.label, [7, 7]]),
        **{
            f: np.concatenate(
                [getattr(meta, f), np.asarray(v, dtype=object)]
            ).astype(getattr(meta, f).dtype)
            for f, v in fields.items()
        },
    )
    value = np.random.default_rng(6).normal(size=(len(meta), 8))
    results = llcm.Llcm(meta, trials=(0,)).evaluate({"bn": value})
    # Counted here from the records: visible queries whose identity has no
    # infrared image, and those whose infrared images share their camera.
    ir_cams = {}
    for i in range(len(meta)):
        if meta.modality[i] == constants.INFRARED:
            ir_cams.setdefault(meta.identity[i], set()).add(meta.camera[i])
    vis = _all_of(meta, constants.VISIBLE)
    absent = sum(meta.identity[i] not in ir_cams for i in vis)
    removed = sum(
        ir_cams.get(meta.identity[i], set()) == {meta.camera[i]} for i in vis
    )
    assert (absent, removed) == (2, 2)
    reason = results.skip_reasons["llcm_visible_to_infrared"]
    assert f"{absent} queries whose identity has no infrared image" in reason
    assert f"{removed} queries whose identity's infrared images are all" in (
        reason
    )
    got = results.per_trial["llcm_visible_to_infrared"]["bn"][0]
    assert got.num_queries == len(vis)
    assert got.num_valid_queries == len(vis) - absent - removed


def test_reranked_and_expanded_rows_use_each_trials_sets():
    rng = np.random.default_rng(4)
    meta = _metadata(rng)
    value = rng.normal(size=(len(meta), 8))
    params = rerank.RerankParams(k1=4, k2=2, lambda_value=0.3)
    aqe = query_expansion.AqeParams(k=2, alpha=3.0)
    results = llcm.Llcm(meta, trials=(0, 1), rerank=params, aqe=aqe).evaluate(
        {"bn": value}
    )
    assert set(results.per_trial) == {
        f"llcm_{d}{suffix}"
        for d in constants.LLCM_DIRECTIONS
        for suffix in ("", "+rerank", "+aqe")
    }
    unit = value / np.linalg.norm(value, axis=1, keepdims=True)
    query = _all_of(meta, constants.VISIBLE)
    gallery = _draw(meta, constants.INFRARED, 1)
    dist = rerank.k_reciprocal_distance(
        rerank.euclidean_distance(unit[query], unit[gallery]),
        rerank.euclidean_distance(unit[query]),
        rerank.euclidean_distance(unit[gallery]),
        k1=4,
        k2=2,
        lambda_value=0.3,
    )
    got = results.per_trial["llcm_visible_to_infrared+rerank"]["bn"][1]
    _check(
        got,
        _slow_metrics(
            dist,
            meta.identity[query],
            meta.identity[gallery],
            meta.camera[query],
            meta.camera[gallery],
            20,
        ),
    )


def test_protocol_refuses_bad_arguments():
    meta = _metadata(np.random.default_rng(0))
    with pytest.raises(ValueError, match="transposed_vis_to_ir must be True"):
        llcm.Llcm(meta, transposed_vis_to_ir="yes")
    with pytest.raises(ValueError, match="trials is empty"):
        llcm.Llcm(meta, trials=())
    for trials in ((0, 0), (0, 1.5), (True,)):
        with pytest.raises(ValueError, match="distinct integer seeds"):
            llcm.Llcm(meta, trials=trials)
    visible_only = records.SplitMetadata(
        **{
            f: getattr(meta, f)[meta.modality == constants.VISIBLE]
            for f in ("label", "identity", "camera", "modality", "file_name")
        }
    )
    with pytest.raises(ValueError, match="no infrared images"):
        llcm.Llcm(visible_only).evaluate(
            {"bn": np.ones((len(visible_only), 2))}
        )


# -- Recipes and the registry -------------------------------------------------


def _paths(tree, prefix=""):
    out = set()
    for key, value in tree.items():
        path = prefix + key
        if isinstance(value, dict) and path not in ("evals", "data.synthetic"):
            out |= _paths(value, path + ".")
        else:
            out.add(path)
    return out


@pytest.mark.parametrize(
    "config",
    [
        llcm_recipe.get_config(),
        llcm_recipe.get_config("base"),
        synthetic_recipe.get_config("dataset=llcm"),
        synthetic_recipe.get_config("dataset=llcm,tiny=1"),
        synthetic_recipe.get_config("dataset=regdb"),
        synthetic_recipe.get_config("dataset=regdb,tiny=1"),
    ],
)
def test_recipes_write_every_field_and_pass_the_checks(config):
    assert _paths(config.to_dict()) == _paths(
        sysu_recipe.get_config().to_dict()
    )
    assert config_checks.problems(config) == []
    for entry in config.evals.values():
        assert set(entry) == set(config_checks.ENTRY_FIELDS[entry.type])


def test_recipes_choose_the_llcm_data_and_protocol():
    config = llcm_recipe.get_config()
    assert (config.data.dataset, config.data.builder_config) == (
        "llcm",
        "288x144",
    )
    assert config.evals.test.type == "llcm"
    assert config.evals.test.num_trials == 10
    assert config.evals.test.llcm_transposed_vis_to_ir is False
    # The training settings are SYSU-MM01's mclnet row.
    sysu = sysu_recipe.get_config()
    for section in ("model", "loss", "optimizer", "mcm_optimizer"):
        assert config[section].to_dict() == sysu[section].to_dict()
    demo = synthetic_recipe.get_config("dataset=llcm")
    assert demo.data.dataset == "llcm" and demo.evals.raw_pixels.type == "llcm"
    assert demo.data.synthetic.generator.visible_images_per_camera == 2
    regdb = synthetic_recipe.get_config("dataset=regdb")
    assert regdb.data.builder_config == "trial_1"
    assert regdb.evals.test.type == "regdb" and regdb.loss.cca is False
    assert synthetic_recipe.get_config().data.dataset == "sysu_mm01"
    with pytest.raises(ValueError, match="dataset must be one of"):
        synthetic_recipe.get_config("dataset=market")


def test_config_checks_and_registry_read_the_llcm_entry():
    config = llcm_recipe.get_config()
    # As a config file may write them (the command line refuses the type).
    config.evals.test = ml_collections.ConfigDict(
        dict(
            config.evals.test.to_dict(),
            llcm_transposed_vis_to_ir="yes",
            num_trials=0,
        )
    )
    found = config_checks.problems(config)
    assert any(
        "llcm_transposed_vis_to_ir must be True or False" in p for p in found
    )
    assert any("num_trials" in p for p in found)
    entry = ml_collections.ConfigDict(
        dict(
            llcm_recipe.get_config().evals.test, llcm_transposed_vis_to_ir=True
        )
    )
    meta = _metadata(np.random.default_rng(1))
    protocol = registry._protocol(entry, meta, builder_config=None)
    assert isinstance(protocol, llcm.Llcm)
    assert protocol.transposed_vis_to_ir and protocol.trials == tuple(range(10))


# -- The tiny demo on generated LLCM data -------------------------------------


@pytest.mark.usefixtures("fast_compile")
def test_tiny_synthetic_llcm_run_evaluates_both_directions(tmp_path):
    workdir = str(tmp_path / "run")
    config = cli_runs.TINY.replace(":tiny=1", ":dataset=llcm,tiny=1")
    status = cli_runs.run_main(
        workdir,
        "--config.max_steps=2",
        "--config.optimizer.lr=0.01",
        "--config.mcm_optimizer.lr=0.01",
        config=config,
    )
    assert status == 0
    with open(os.path.join(workdir, "results.json")) as f:
        summary = json.load(f)["summary"]
    assert {"llcm_infrared_to_visible", "llcm_visible_to_infrared"} <= set(
        summary
    )
    figures = os.listdir(os.path.join(workdir, "figures"))
    assert "rank_list_llcm_infrared_to_visible.png" in figures
    assert "rank_list_llcm_visible_to_infrared.png" in figures
