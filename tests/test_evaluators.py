"""Tests for mclnet_jax.evaluators: gallery draws, extraction, protocols.

The SYSU draw is checked file for file against a re-implementation of the
community procedure that walks a generated folder layout with os.listdir;
protocol numbers against a direct computation (numpy distances on the
directly selected query / gallery, then the metric functions, which
test_metrics.py checks against a slow reference).
"""

import json
import math
import os
import random
import types

import ml_collections
import numpy as np
import pytest

from data_pipeline.records import SplitMetadata
from mclnet_jax import metrics, rerank
from mclnet_jax.evaluators import common as eval_common
from mclnet_jax.evaluators import features, protocols, regdb, registry, sysu

H, W = 8, 4


def metadata_of(records):
    """SplitMetadata of feature dicts (identity, camera, modality, file_name);
    labels are the identities' ranks, as the TFDS builders store them."""
    column = {k: [r[k] for r in records] for k in records[0]}
    identity = np.asarray(column["identity"], np.int64)
    file_name = np.empty(len(records), dtype=object)
    file_name[:] = column["file_name"]
    return SplitMetadata(
        label=np.unique(identity, return_inverse=True)[1].astype(np.int64),
        identity=identity,
        camera=np.asarray(column["camera"], np.int64),
        modality=np.asarray(column["modality"], np.int64),
        file_name=file_name,
    )


# --------------------------------------------------------------------------
# A tiny SYSU layout on disk (names only matter for the draw).


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu")
    rng = np.random.default_rng(0)
    test_ids = [17, 3, 42, 8, 25, 99]  # 99 has no images at all
    for pid in test_ids[:-1]:
        for cam in range(1, 7):
            if rng.random() < 0.2:  # some (id, camera) folders are missing
                continue
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True)
            count = int(rng.integers(1, 15))  # some with fewer than 10
            for k in rng.choice(np.arange(1, 40), count, replace=False):
                (folder / f"{k:04d}.jpg").write_bytes(b"")
    (root / "exp").mkdir()
    (root / "exp" / "test_id.txt").write_text(
        ",".join(str(i) for i in test_ids) + "\n"
    )
    return str(root)


def community_gallery(root, *, mode, trial, num_shots):
    """process_gallery_sysu, re-implemented from its description."""
    cams = (
        ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    )
    with open(os.path.join(root, "exp", "test_id.txt")) as f:
        ids = [f"{int(x):04d}" for x in f.read().splitlines()[0].split(",")]
    state = random.getstate()
    random.seed(trial)
    files = []
    for pid in sorted(ids):
        for cam in cams:
            folder = os.path.join(root, cam, pid)
            if os.path.isdir(folder):
                new_files = sorted(folder + "/" + i for i in os.listdir(folder))
                if num_shots == 1:
                    files.append(random.choice(new_files))
                else:
                    files.extend(
                        random.sample(new_files, min(num_shots, len(new_files)))
                    )
    random.setstate(state)
    return [os.path.relpath(p, root) for p in files]


def community_query(root):
    """process_query_sysu, re-implemented from its description."""
    with open(os.path.join(root, "exp", "test_id.txt")) as f:
        ids = [f"{int(x):04d}" for x in f.read().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in ["cam3", "cam6"]:
            folder = os.path.join(root, cam, pid)
            if os.path.isdir(folder):
                files.extend(
                    sorted(folder + "/" + i for i in os.listdir(folder))
                )
    return [os.path.relpath(p, root) for p in files]


@pytest.fixture(scope="module")
def sysu_meta(sysu_root):
    """Metadata as the TFDS test split has it, in a shuffled record order."""
    records = []
    for cam in range(1, 7):
        cam_dir = os.path.join(sysu_root, f"cam{cam}")
        if not os.path.isdir(cam_dir):
            continue
        for pid in os.listdir(cam_dir):
            for name in os.listdir(os.path.join(cam_dir, pid)):
                records.append(
                    dict(
                        identity=int(pid),
                        camera=cam,
                        modality=int(cam in (3, 6)),
                        file_name=f"cam{cam}/{pid}/{name}",
                    )
                )
    order = np.random.default_rng(1).permutation(len(records))
    return metadata_of([records[i] for i in order])


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("num_shots", [1, 10])
def test_sysu_gallery_draw_equals_community_file_for_file(
    sysu_root, sysu_meta, mode, num_shots
):
    for trial in range(6):
        ours = protocols.sysu_gallery_indices(
            sysu_meta, mode=mode, trial=trial, num_shots=num_shots
        )
        want = community_gallery(
            sysu_root, mode=mode, trial=trial, num_shots=num_shots
        )
        assert [sysu_meta.file_name[i] for i in ours] == want


def test_sysu_draw_leaves_global_random_state_alone(sysu_meta):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    protocols.sysu_gallery_indices(sysu_meta, trial=4)
    assert random.random() == expected


def test_sysu_query_equals_community(sysu_root, sysu_meta):
    ours = protocols.sysu_query_indices(sysu_meta)
    assert [sysu_meta.file_name[i] for i in ours] == community_query(sysu_root)


def test_sysu_bad_mode_and_shots(sysu_meta):
    with pytest.raises(ValueError, match="mode must be one of"):
        protocols.sysu_gallery_indices(sysu_meta, mode="outdoor")
    with pytest.raises(ValueError, match="num_shots"):
        protocols.sysu_gallery_indices(sysu_meta, num_shots=0)


# --------------------------------------------------------------------------
# Feature extraction with a fake model.


def make_images(n, seed):
    """[n, H, W, 3] images; pixel (0, 0, 0) holds index + 1 (0 = padding)."""
    images = np.random.default_rng(seed).random((n, H, W, 3)).astype(np.float32)
    images[:, 0, 0, 0] = np.arange(1, n + 1)
    return images


class FakeModel:
    """A fixed random projection per modality ("stem"); logs what it sees.

    "bn" is a scaled tanh: unscaled it saturates to exactly +-1, and the
    resulting exact distance ties would make the tests depend on float
    rounding of the two computations compared.
    """

    def __init__(self, dim=5, seed=0):
        rng = np.random.default_rng(seed)
        self.w = rng.standard_normal((2, 2, H * W * 3, dim)).astype(np.float32)
        self.calls = []  # (modality, [image ids of real rows])

    def embed_one(self, image, modality):
        x = image.reshape(-1)
        return {
            "pool": x @ self.w[modality, 0],
            "bn": np.tanh(0.05 * (x @ self.w[modality, 1])),
        }

    def predict(self, variables, images, modality):
        """A predict function (variables unused)."""
        del variables
        return self(images, modality)

    def __call__(self, images, modality):
        images = np.asarray(images)
        ids = images[:, 0, 0, 0].round().astype(int) - 1
        self.calls.append((modality, ids[ids >= 0]))
        flat = images.reshape(images.shape[0], -1)
        return {
            "pool": flat @ self.w[modality, 0],
            "bn": np.tanh(0.05 * (flat @ self.w[modality, 1])),
            "logits": np.zeros((images.shape[0], 3)),
        }


def fake_state(step, variables=None):
    """What the evaluators read of a `TrainState`: `step` and
    `model_variables()`."""
    return types.SimpleNamespace(
        step=np.int32(step), model_variables=lambda: variables
    )


def store_of(splits, predict_fn):
    """A FeatureStore whose variables are the state's `model_variables()`."""
    return features.FeatureStore(
        splits,
        predict_fn=predict_fn,
        variables_fn=lambda state: state.model_variables(),
        describe=lambda state: f"the test state of step {int(state.step)}",
    )


def padded_batches(images, batch_size):
    """A batches_fn: fixed batch size, last batch padded with mask False."""

    def batches_fn(indices):
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            pad = batch_size - len(idx)
            yield {
                "image": np.concatenate(
                    [images[idx], np.zeros((pad, H, W, 3), np.float32)]
                ),
                "mask": np.arange(batch_size) < len(idx),
                "index": np.concatenate([idx, -np.ones(pad, int)]),
            }

    return batches_fn


@pytest.mark.parametrize("batch_size", [1, 4, 7, 64])
def test_extract_embeds_every_image_once_in_its_modality(batch_size):
    n = 23
    modality = np.random.default_rng(2).integers(0, 2, n)
    images = make_images(n, seed=3)
    model = FakeModel()
    feats = features.extract_features(
        model, batches_fn=padded_batches(images, batch_size), modality=modality
    )
    seen = np.concatenate([ids for _, ids in model.calls])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    for mod, ids in model.calls:
        assert np.all(modality[ids] == mod)
    for i in range(n):
        want = model.embed_one(images[i], modality[i])
        for name in ("pool", "bn"):
            np.testing.assert_allclose(
                feats[name][i], want[name], rtol=1e-5, atol=1e-5
            )
    assert sorted(feats) == ["bn", "pool"]


def test_extract_rejects_missing_or_repeated_images():
    n = 6
    modality = np.array([0, 0, 0, 1, 1, 1])
    images = make_images(n, seed=4)
    full = padded_batches(images, 4)

    def drop_last(indices):
        return full(indices[:-1])

    def repeat_first(indices):
        return full(np.concatenate([indices, indices[:1]]))

    for bad in (drop_last, repeat_first):
        with pytest.raises(ValueError, match="exactly once"):
            features.extract_features(
                FakeModel(), batches_fn=bad, modality=modality
            )

    def wrong_modality(indices):
        return full(np.arange(n))

    with pytest.raises(ValueError, match="modality"):
        features.extract_features(
            FakeModel(), batches_fn=wrong_modality, modality=modality
        )


# --------------------------------------------------------------------------
# Protocols end to end.


def test_sysu_protocol_equals_direct_computation(sysu_root, sysu_meta):
    n = len(sysu_meta)
    images = make_images(n, seed=5)
    model = FakeModel(seed=1)
    store = store_of(
        {"test": features.EvalSplit(sysu_meta, padded_batches(images, 8))},
        model.predict,
    )
    evaluator = eval_common.ProtocolEvaluator(
        "test",
        sysu.Sysu(store.metadata("test"), trials=(0, 1, 2), max_rank=5),
        store=store,
        split="test",
    )
    results = evaluator.results(fake_state(0))
    # Features are extracted once: one pass over the split in total.
    assert sum(len(ids) for _, ids in model.calls) == n
    index_of = {name: i for i, name in enumerate(sysu_meta.file_name)}
    query = [index_of[f] for f in community_query(sysu_root)]
    for mode in ("all", "indoor"):
        for trial in (0, 1, 2):
            gallery = [
                index_of[f]
                for f in community_gallery(
                    sysu_root, mode=mode, trial=trial, num_shots=1
                )
            ]
            for name in ("pool", "bn"):
                feats = np.stack(
                    [
                        model.embed_one(images[i], sysu_meta.modality[i])[name]
                        for i in range(n)
                    ]
                )
                feats /= np.linalg.norm(feats, axis=1, keepdims=True)
                dist = -feats[query] @ feats[gallery].T
                want = metrics.sysu_metrics(
                    dist,
                    query_ids=sysu_meta.identity[query],
                    gallery_ids=sysu_meta.identity[gallery],
                    query_cams=sysu_meta.camera[query],
                    gallery_cams=sysu_meta.camera[gallery],
                    max_rank=5,
                )
                got = results.per_trial[f"sysu_{mode}_single_shot"][name][trial]
                np.testing.assert_allclose(got.cmc, want.cmc, atol=1e-6)
                assert got.mAP == pytest.approx(want.mAP, abs=1e-6)
                assert got.mINP == pytest.approx(want.mINP, abs=1e-6)


def regdb_meta(seed, num_ids=5, per_id=3):
    rng = np.random.default_rng(seed)
    pids = np.sort(rng.choice(100, num_ids, replace=False))
    records = []
    for pid in pids:
        for modality, folder in ((0, "Visible"), (1, "Thermal")):
            for k in range(per_id):
                records.append(
                    dict(
                        identity=pid,
                        camera=modality + 1,
                        modality=modality,
                        file_name=f"{folder}/{pid}/img_{k}.bmp",
                    )
                )
    order = rng.permutation(len(records))
    return metadata_of([records[i] for i in order])


def test_regdb_protocol_equals_direct_computation_and_summary(tmp_path):
    trials = {}
    images = {}
    for t in (1, 2):
        meta = regdb_meta(seed=t)
        images[t] = make_images(len(meta), seed=10 + t)
        trials[t] = (padded_batches(images[t], 4), meta)
    model = FakeModel(seed=2)
    results = None
    for t, (batches_fn, meta) in trials.items():
        store = store_of(
            {"test": features.EvalSplit(meta, batches_fn)}, model.predict
        )
        one = eval_common.ProtocolEvaluator(
            "test",
            regdb.Regdb(meta, trial=t, max_rank=4),
            store=store,
            split="test",
        ).results(fake_state(0))
        results = one if results is None else results.merge(one)
    for t, (_, meta) in trials.items():
        feats = np.stack(
            [
                model.embed_one(images[t][i], meta.modality[i])["bn"]
                for i in range(len(meta))
            ]
        )
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        by_name = np.argsort(meta.file_name.astype(str), kind="stable")
        vis = by_name[meta.modality[by_name] == 0]
        ir = by_name[meta.modality[by_name] == 1]
        for direction, q, g in (
            ("visible_to_infrared", vis, ir),
            ("infrared_to_visible", ir, vis),
        ):
            want = metrics.standard_metrics(
                -feats[q] @ feats[g].T,
                query_ids=meta.identity[q],
                gallery_ids=meta.identity[g],
                max_rank=4,
            )
            got = results.per_trial[f"regdb_{direction}"]["bn"][t]
            np.testing.assert_allclose(got.cmc, want.cmc, atol=1e-6)
            assert got.mAP == pytest.approx(want.mAP, abs=1e-6)
            assert got.mINP == pytest.approx(want.mINP, abs=1e-6)

    # Summary, table and JSON agree with the per-trial numbers.
    path = tmp_path / "results.json"
    results.write_json(str(path))
    loaded = json.loads(path.read_text())
    entry = loaded["regdb_visible_to_infrared"]["pool"]
    maps = [
        results.per_trial["regdb_visible_to_infrared"]["pool"][t].mAP
        for t in (1, 2)
    ]
    assert entry["num_trials"] == 2
    assert entry["mean"]["mAP"] == pytest.approx(np.mean(maps))
    assert entry["std"]["mAP"] == pytest.approx(np.std(maps))
    assert entry["trials"]["2"]["mAP"] == pytest.approx(maps[1])
    assert "rank20" not in entry["mean"]  # max_rank=4
    table = results.table()
    assert "regdb_infrared_to_visible" in table
    assert f"{100 * np.mean(maps):6.2f}" in table

    with pytest.raises(ValueError, match="in both results"):
        results.merge(results)


def _euclidean(a, b):
    """Plain pairwise Euclidean distances (float64), for the rerank tests."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))


def test_sysu_rerank_equals_direct_computation(sysu_root, sysu_meta):
    rng = np.random.default_rng(7)
    # Identity structure so that re-ranking has neighbours to work with.
    centres = rng.standard_normal((100, 6))
    feats = centres[sysu_meta.identity] + 0.7 * rng.standard_normal(
        (len(sysu_meta), 6)
    )
    features = {"bn": feats.astype(np.float32)}
    params = rerank.RerankParams(k1=5, k2=3, lambda_value=0.3)
    plain = sysu.Sysu(sysu_meta, trials=(0, 1), max_rank=5).evaluate(features)
    results = sysu.Sysu(
        sysu_meta, trials=(0, 1), max_rank=5, rerank=params
    ).evaluate(features)
    assert results.rerank == params and plain.rerank is None
    assert sorted(results.per_trial) == sorted(
        list(plain.per_trial) + [p + "+rerank" for p in plain.per_trial]
    )
    index_of = {name: i for i, name in enumerate(sysu_meta.file_name)}
    query = [index_of[f] for f in community_query(sysu_root)]
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    differs = False
    for mode in ("all", "indoor"):
        for trial in (0, 1):
            gallery = [
                index_of[f]
                for f in community_gallery(
                    sysu_root, mode=mode, trial=trial, num_shots=1
                )
            ]
            protocol = f"sysu_{mode}_single_shot"
            # The plain rows do not change when re-ranking is on.
            assert (
                results.per_trial[protocol]["bn"][trial].to_dict()
                == plain.per_trial[protocol]["bn"][trial].to_dict()
            )
            q, g = unit[query], unit[gallery]
            dist = rerank.k_reciprocal_distance(
                _euclidean(q, g),
                _euclidean(q, q),
                _euclidean(g, g),
                k1=5,
                k2=3,
                lambda_value=0.3,
            )
            want = metrics.sysu_metrics(
                dist,
                query_ids=sysu_meta.identity[query],
                gallery_ids=sysu_meta.identity[gallery],
                query_cams=sysu_meta.camera[query],
                gallery_cams=sysu_meta.camera[gallery],
                max_rank=5,
            )
            got = results.per_trial[protocol + "+rerank"]["bn"][trial]
            np.testing.assert_allclose(got.cmc, want.cmc, atol=1e-6)
            assert got.mAP == pytest.approx(want.mAP, abs=1e-6)
            differs |= got.mAP != pytest.approx(
                plain.per_trial[protocol]["bn"][trial].mAP, abs=1e-6
            )
    assert differs  # re-ranking changed something: the test can fail
    table = results.table()
    assert "sysu_indoor_single_shot+rerank" in table
    assert "k1=5, k2=3, lambda=0.3" in table
    assert "+rerank" not in plain.table()
    as_dict = results.to_dict()
    assert as_dict["sysu_all_single_shot+rerank"]["bn"]["rerank"] == {
        "k1": 5,
        "k2": 3,
        "lambda_value": 0.3,
    }
    assert "rerank" not in as_dict["sysu_all_single_shot"]["bn"]


def test_regdb_rerank_both_directions_and_merge():
    meta = regdb_meta(seed=3, num_ids=6, per_id=4)
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((100, 6))
    feats = (
        centres[meta.identity]
        + 0.3 * meta.modality[:, None]
        + 0.6 * rng.standard_normal((len(meta), 6))
    )
    params = rerank.RerankParams(k1=4, k2=2, lambda_value=0.5)
    results = regdb.Regdb(meta, trial=4, max_rank=4, rerank=params).evaluate(
        {"pool": feats}
    )
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    by_name = np.argsort(meta.file_name.astype(str), kind="stable")
    vis = by_name[meta.modality[by_name] == 0]
    ir = by_name[meta.modality[by_name] == 1]
    for direction, q, g in (
        ("visible_to_infrared", vis, ir),
        ("infrared_to_visible", ir, vis),
    ):
        dist = rerank.k_reciprocal_distance(
            _euclidean(unit[q], unit[g]),
            _euclidean(unit[q], unit[q]),
            _euclidean(unit[g], unit[g]),
            k1=4,
            k2=2,
            lambda_value=0.5,
        )
        want = metrics.standard_metrics(
            dist,
            query_ids=meta.identity[q],
            gallery_ids=meta.identity[g],
            max_rank=4,
        )
        got = results.per_trial[f"regdb_{direction}+rerank"]["pool"][4]
        np.testing.assert_allclose(got.cmc, want.cmc, atol=1e-6)
        assert got.mAP == pytest.approx(want.mAP, abs=1e-6)
        assert got.mINP == pytest.approx(want.mINP, abs=1e-6)
    # Trials merge; different parameters do not.
    other = regdb.Regdb(meta, trial=5, max_rank=4, rerank=params).evaluate(
        {"pool": feats}
    )
    merged = results.merge(other)
    assert merged.rerank == params
    assert sorted(
        merged.per_trial["regdb_visible_to_infrared+rerank"]["pool"]
    ) == [4, 5]
    changed = regdb.Regdb(
        meta, trial=5, max_rank=4, rerank=rerank.RerankParams(k1=3)
    ).evaluate({"pool": feats})
    with pytest.raises(ValueError, match="different parameters"):
        results.merge(changed)
    with pytest.raises(ValueError, match="rerank must be None or a"):
        # The protocol's constructor checks it (before any features).
        regdb.Regdb(meta, trial=5, rerank=True)


def test_rerank_params_from_an_evals_entry():
    # An entry of config.evals holds its own re-ranking fields.
    entry = ml_collections.ConfigDict(
        dict(
            type="sysu",
            rerank=False,
            rerank_k1=10,
            rerank_k2=3,
            rerank_lambda=0.5,
        )
    )
    assert eval_common.rerank_params(entry) is None
    entry.rerank = True
    assert eval_common.rerank_params(entry) == rerank.RerankParams(10, 3, 0.5)
    entry.rerank_k2 = 0
    with pytest.raises(ValueError, match="k2 must be a positive int"):
        eval_common.rerank_params(entry)


def example(**features_):
    """A serialized tf.train.Example of int / str / bytes features."""
    tf = pytest.importorskip("tensorflow")
    feature = {}
    for key, value in features_.items():
        if isinstance(value, (int, np.integer)):
            feature[key] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=[int(value)])
            )
        else:
            value = value.encode() if isinstance(value, str) else value
            feature[key] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[value])
            )
    return tf.train.Example(
        features=tf.train.Features(feature=feature)
    ).SerializeToString()


def test_read_metadata_of_serialized_records():
    from data_pipeline import records

    rows = [
        (1, 5, 3, 1, "cam3/0005/0001.jpg"),
        (0, 2, 1, 0, "cam1/0002/0007.jpg"),
    ]
    source = [
        example(
            label=r[0],
            identity=r[1],
            camera=r[2],
            modality=r[3],
            file_name=r[4],
        )
        for r in rows
    ]
    meta = records.read_metadata(source, chunk_size=1)
    assert meta.label.tolist() == [1, 0]
    assert meta.identity.tolist() == [5, 2]
    assert meta.camera.tolist() == [3, 1]
    assert meta.modality.tolist() == [1, 0]
    assert list(meta.file_name) == [r[4] for r in rows]
    assert len(meta) == 2
    with pytest.raises(ValueError, match="serialized tf.train.Example"):
        records.read_metadata([{"identity": 5}])
    with pytest.raises(ValueError, match="modality must be"):
        records.read_metadata(
            [example(label=0, identity=1, camera=1, modality=2, file_name="a")]
        )
    with pytest.raises(ValueError, match="all fields must align"):
        SplitMetadata(
            label=meta.label,
            identity=meta.identity[:1],
            camera=meta.camera,
            modality=meta.modality,
            file_name=meta.file_name,
        )


def test_make_batches_fn_with_the_input_pipeline():
    """extract_features over data_pipeline's padded eval batches."""
    from data_pipeline import records

    tf = pytest.importorskip("tensorflow")
    n = 7
    rng = np.random.default_rng(6)
    pixels = rng.integers(0, 256, (n, 16, 8, 3), dtype=np.uint8)
    source = [
        example(
            image=tf.io.encode_jpeg(p).numpy(),
            label=i,
            identity=i,
            camera=1 + i % 2,
            modality=i % 2,
            file_name=f"x/{i}.jpg",
        )
        for i, p in enumerate(pixels)
    ]
    meta = records.read_metadata(source)
    seen = []

    def embed_fn(images, modality):
        images = np.asarray(images)
        seen.append((modality, images.shape[0]))
        flat = images.reshape(images.shape[0], -1)
        return {"pool": flat[:, :4], "bn": flat[:, 4:8]}

    batches_fn = features.make_batches_fn(
        source, batch_size=3, image_size=(16, 8)
    )
    feats = features.extract_features(
        embed_fn, batches_fn=batches_fn, modality=meta.modality
    )
    assert all(b == 3 for _, b in seen)  # fixed batch: one compile each
    # Row i holds image i's pixels (after the pipeline's normalisation).
    direct = [
        np.asarray(next(iter(batches_fn(np.array([i]))))["image"][0])
        for i in range(n)
    ]
    np.testing.assert_allclose(
        feats["pool"], np.stack([d.reshape(-1)[:4] for d in direct]), atol=1e-6
    )


def protocol_entry(kind="sysu", **overrides):
    """An entry of config.evals for a protocol, as the recipes write it."""
    entry = dict(
        type=kind,
        split="test",
        every_steps=0,
        at_end=True,
        features="model",
        num_trials=2,
        rerank=False,
        rerank_k1=20,
        rerank_k2=6,
        rerank_lambda=0.3,
    )
    if kind == "sysu":
        entry.update(modes=("all", "indoor"), num_shots=1)
    entry.update(overrides)
    return entry


def build_evaluators(
    evals,
    store,
    *,
    sources=None,
    builder_config=None,
    workdir="/nonexistent",
    batch_size=8,
    image_size=(H, W),
):
    """`registry.build` of a dict of entries."""
    return registry.build(
        ml_collections.ConfigDict(evals),
        store=store,
        sources=sources or {},
        image_size=image_size,
        batch_size=batch_size,
        builder_config=builder_config,
        workdir=workdir,
    )


def test_registry_picks_the_protocol_and_its_arguments(sysu_meta):
    store = store_of({"test": features.EvalSplit(sysu_meta, None)}, None)
    with pytest.raises(ValueError, match="unknown 'market'"):
        build_evaluators({"test": protocol_entry("market")}, store)
    built = build_evaluators(
        {"test": protocol_entry(num_trials=3, modes=("all",))}, store
    )
    protocol = built["test"].protocol
    assert isinstance(protocol, sysu.Sysu)
    assert (protocol.modes, protocol.trials) == (("all",), (0, 1, 2))
    assert protocol.rerank is None and protocol.metadata is sysu_meta
    # RegDB: the trial is the builder config's.
    regdb_store = store_of(
        {"test": features.EvalSplit(regdb_meta(seed=1), None)}, None
    )
    for builder_config, trial in (("trial_4", 4), (None, 1)):
        built = build_evaluators(
            {"test": protocol_entry("regdb")},
            regdb_store,
            builder_config=builder_config,
        )
        assert isinstance(built["test"].protocol, regdb.Regdb)
        assert built["test"].protocol.trial == trial
    assert regdb.trial_of("trial_4") == 4
    assert regdb.trial_of(None) == 1  # The builder's default, trial_1.
    with pytest.raises(ValueError, match="'trial_1' .. 'trial_10'"):
        regdb.trial_of("trial_11")
    with pytest.raises(ValueError, match="'trial_1' .. 'trial_10'"):
        build_evaluators(
            {"test": protocol_entry("regdb")},
            regdb_store,
            builder_config="trial_11",
        )
    with pytest.raises(ValueError, match="SYSU mode must be one of"):
        sysu.Sysu(sysu_meta, modes=("outdoor",))
    # Re-ranking from the entry's own fields; a bad value is rejected by the
    # protocol's constructor.
    built = build_evaluators({"test": protocol_entry(rerank=True)}, store)
    assert built["test"].protocol.rerank == rerank.RerankParams(20, 6, 0.3)
    with pytest.raises(ValueError, match="rerank must be None or a"):
        sysu.Sysu(sysu_meta, rerank={"k1": 20})
    with pytest.raises(ValueError, match="features must be one of"):
        build_evaluators({"test": protocol_entry(features="raw")}, store)


def test_protocol_evaluator_due_schedule(sysu_meta):
    store = store_of({"test": features.EvalSplit(sysu_meta, None)}, None)

    def evaluator(**schedule):
        return eval_common.ProtocolEvaluator(
            "val", sysu.Sysu(sysu_meta), store=store, split="test", **schedule
        )

    def periodic(e):
        return [s for s in range(1, 21) if e.due(s, final=False)]

    # Defaults: never during training, on the final state.
    default = evaluator()
    assert (default.every_steps, default.at_end) == (0, True)
    assert periodic(default) == []
    assert default.due(20, final=True)
    # Every 5 steps and at the end (the final step need not be a multiple).
    both = evaluator(every_steps=5, at_end=True)
    assert periodic(both) == [5, 10, 15, 20]
    assert both.due(7, final=True) and both.due(10, final=True)
    # Every 5 steps, not at the end, even when the end is a multiple.
    during = evaluator(every_steps=5, at_end=False)
    assert periodic(during) == [5, 10, 15, 20]
    assert not during.due(10, final=True) and not during.due(7, final=True)
    # Never.
    never = evaluator(every_steps=0, at_end=False)
    assert periodic(never) == []
    assert not never.due(20, final=True)
    # registry.build passes an entry's schedule on.
    built = build_evaluators(
        {"val": protocol_entry(every_steps=3, at_end=False)}, store
    )["val"]
    assert periodic(built) == [3, 6, 9, 12, 15, 18]
    assert not built.due(18, final=True)


def flatten_numbers(prefix, tree):
    """{"<prefix>/<key>/.../<key>": float} of the numbers of nested dicts."""
    out = {}

    def walk(path, node):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{path}/{key}", value)
        elif isinstance(node, (int, float, np.number)) and not isinstance(
            node, bool
        ):
            out[path] = float(node)

    walk(prefix, tree)
    return out


def test_run_yields_the_summary_of_the_results_once_per_state(sysu_meta):
    n = len(sysu_meta)
    model = FakeModel(seed=3)
    store = store_of(
        {
            "test": features.EvalSplit(
                sysu_meta, padded_batches(make_images(n, seed=6), 8)
            )
        },
        model.predict,
    )
    params = rerank.RerankParams(k1=5, k2=3, lambda_value=0.3)
    evaluator = eval_common.ProtocolEvaluator(
        "test",
        sysu.Sysu(sysu_meta, trials=(0, 1), max_rank=5, rerank=params),
        store=store,
        split="test",
    )
    state = fake_state(6)
    pairs = list(evaluator.run(state))
    calls = store.predict_calls
    results = evaluator.results(state)
    values = dict(pairs)
    assert len(values) == len(pairs)  # Every name once.
    assert values == flatten_numbers("test", results.summary())
    # "<name>/<protocol>/<feature>/<mean|std>/<metric>", every protocol
    # (re-ranked ones too) and feature.
    protocols_seen = set()
    for name in values:
        prefix, protocol, feature, stat, metric = name.split("/")
        assert prefix == "test" and feature in ("pool", "bn")
        assert stat in ("mean", "std")
        assert metric in ("rank1", "rank5", "mAP", "mINP"), metric
        protocols_seen.add(protocol)
    assert protocols_seen == {
        "sysu_all_single_shot",
        "sysu_indoor_single_shot",
        "sysu_all_single_shot+rerank",
        "sysu_indoor_single_shot+rerank",
    }
    maps = [
        results.per_trial["sysu_all_single_shot"]["bn"][t].mAP for t in (0, 1)
    ]
    assert values["test/sysu_all_single_shot/bn/mean/mAP"] == pytest.approx(
        np.mean(maps)
    )
    assert values["test/sysu_all_single_shot/bn/std/mAP"] == pytest.approx(
        np.std(maps)
    )
    # The same state again: the same results, nothing extracted.
    assert dict(evaluator.run(state)) == values
    assert evaluator.results(state) is results
    assert store.predict_calls == calls


@pytest.fixture(scope="module")
def tiny_mclnet(fast_compile):
    """(model, variables) of a width-1/16 ResNet-18 MCLNet for 32x16."""
    del fast_compile
    import jax

    from mclnet_jax.models import mclnet

    model = mclnet.MCLNet(
        num_classes=5,
        depth=18,
        width_multiplier=1 / 16,
        non_local_counts=(0, 1, 1, 0),
    )
    x = np.zeros((1, 32, 16, 3), np.float32)
    variables = jax.jit(lambda key: model.init(key, x, x, train=False))(
        jax.random.key(0)
    )
    return model, variables


def test_evaluators_built_once_share_the_features_of_a_state(
    sysu_builder, tiny_mclnet, tmp_path
):
    records = pytest.importorskip("data_pipeline.records")
    model, variables = tiny_mclnet
    batch_size = 8
    source = records.open_source(sysu_builder("original"), "test")
    split = features.open_split(
        source, batch_size=batch_size, image_size=(32, 16)
    )
    store = store_of({"test": split}, features.make_predict_fn(model))
    evals = {
        "test": protocol_entry(),
        "raw_pixels": protocol_entry(features="pixels"),
        "figures": dict(
            type="figures",
            split="test",
            every_steps=0,
            at_end=True,
            of="test",
            baseline="raw_pixels",
        ),
    }
    assert registry.splits(ml_collections.ConfigDict(evals)) == ["test"]
    built = build_evaluators(
        evals,
        store,
        sources={"test": source},
        workdir=str(tmp_path),
        batch_size=batch_size,
        image_size=(32, 16),
    )
    # (A ConfigDict lists its keys sorted.)
    assert list(built) == ["figures", "raw_pixels", "test"]
    assert store.predict_calls == 0  # Building extracts nothing.
    # One pass over the split: per modality, its images in padded batches.
    modality = records.read_metadata(source).modality
    one_pass = sum(
        math.ceil(np.count_nonzero(modality == m) / batch_size) for m in (0, 1)
    )
    assert one_pass >= 2

    def run_all(state):
        return {name: dict(e.run(state)) for name, e in built.items()}

    first = run_all(fake_state(4, variables))
    # The model's features once (test and figures), the pixels once.
    assert store.predict_calls == 2 * one_pass
    assert sorted(first["test"]) == sorted(
        flatten_numbers("test", built["test"].results(fake_state(4)).summary())
    )
    assert (
        "raw_pixels/sysu_all_single_shot/pixels/mean/mAP"
        in (first["raw_pixels"])
    )
    # The figures were drawn (a failure would only be logged).
    assert list(first["figures"]) == ["figures/seconds"]
    assert sorted(os.listdir(tmp_path / "figures")) == [
        "README.txt",
        "cmc.png",
        "distances.png",
        "rank_list_sysu_all.png",
        "tsne.png",
    ]
    assert "step 4" in (tmp_path / "figures" / "README.txt").read_text()
    # The same step again: nothing extracted, the same numbers.
    again = run_all(fake_state(4, variables))
    assert store.predict_calls == 2 * one_pass
    assert again["test"] == first["test"]
    assert again["raw_pixels"] == first["raw_pixels"]
    # A new step: the model's features once more, the pixels never again.
    later = run_all(fake_state(8, variables))
    assert store.predict_calls == 3 * one_pass
    assert later["raw_pixels"] == first["raw_pixels"]
    assert "step 8" in (tmp_path / "figures" / "README.txt").read_text()


# --------------------------------------------------------------------------
# A real linen module through make_predict_fn, on 1 and 2 devices.

_TWO_STEM_MODEL = '''
import flax.linen as nn
import jax.numpy as jnp


class TwoStem(nn.Module):
    """MCLNet's call signature: a Dense "stem" per modality, BN, heads."""

    @nn.compact
    def __call__(self, visible=None, infrared=None, *, train):
        rows = []
        if visible is not None:
            rows.append(nn.Dense(6, name="visible_stem")(
                visible.reshape(visible.shape[0], -1)))
        if infrared is not None:
            rows.append(nn.Dense(6, name="infrared_stem")(
                infrared.reshape(infrared.shape[0], -1)))
        pool = jnp.concatenate(rows)
        bn = nn.BatchNorm(use_running_average=not train, name="bnneck")(pool)
        return {"pool": pool, "bn": bn, "logits": bn[:, :2]}
'''


def _two_stem_features(num_devices):
    """Runs extraction on `num_devices` CPU devices in a fresh process."""
    import subprocess
    import sys
    import textwrap

    script = _TWO_STEM_MODEL + textwrap.dedent(
        """
        import jax, numpy as np
        from mclnet_jax.evaluators import features
        model = TwoStem()
        images = np.random.default_rng(0).random((7, 8, 4, 3), np.float32)
        variables = model.init(jax.random.key(0), images[:1], images[:1],
                               train=False)
        modality = np.array([0, 1, 1, 0, 1, 0, 0])
        def batches_fn(indices):
            for s in range(0, len(indices), 4):
                idx = indices[s:s + 4]
                pad = 4 - len(idx)
                yield {"image": np.concatenate(
                           [images[idx], np.zeros((pad, 8, 4, 3), np.float32)]),
                       "mask": np.arange(4) < len(idx),
                       "index": np.concatenate([idx, -np.ones(pad, int)])}
        predict_fn = features.make_predict_fn(model)
        feats = features.extract_features(
            lambda x, m: predict_fn(variables, x, m), batches_fn=batches_fn,
            modality=modality)
        direct = np.stack([np.asarray(model.apply(
            variables, images[i:i + 1] if m == 0 else None,
            images[i:i + 1] if m == 1 else None, train=False)["bn"][0])
            for i, m in enumerate(modality)])
        assert jax.device_count() == NUM_DEVICES, jax.devices()
        np.testing.assert_allclose(feats["bn"], direct, atol=1e-5)
        print("OK", np.abs(feats["bn"]).sum())
    """
    ).replace("NUM_DEVICES", str(num_devices))
    flag = f"--xla_force_host_platform_device_count={num_devices}"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}",
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.split()[-1])


def test_predict_fn_uses_the_modality_stem_on_one_and_two_devices():
    # Each run checks its features against per-image model.apply with the
    # image in the visible or infrared slot; both device counts agree.
    assert _two_stem_features(1) == pytest.approx(
        _two_stem_features(2), rel=1e-5
    )


def test_draw_on_the_synthetic_generator_and_tfds_builder(
    sysu_raw, sysu_builder
):
    """Our draw from the TFDS test split == community walk of the layout."""
    records = pytest.importorskip("data_pipeline.records")
    root = sysu_raw.root
    size = (sysu_raw.params["height"], sysu_raw.params["width"])
    source = records.open_source(sysu_builder("original"), "test")
    meta = records.read_metadata(source)
    for mode in ("all", "indoor"):
        for trial in range(3):
            ours = protocols.sysu_gallery_indices(meta, mode=mode, trial=trial)
            assert [meta.file_name[i] for i in ours] == community_gallery(
                root, mode=mode, trial=trial, num_shots=1
            )
    assert [meta.file_name[i] for i in protocols.sysu_query_indices(meta)] == (
        community_query(root)
    )

    # The evaluator of a config.evals entry, on raw pixels, over the same
    # split.
    store = store_of(
        {"test": features.open_split(source, batch_size=8, image_size=size)},
        None,  # Raw pixels need no model.
    )
    evaluator = build_evaluators(
        {"raw": protocol_entry(features="pixels")}, store, image_size=size
    )["raw"]
    assert isinstance(evaluator.protocol, sysu.Sysu)
    assert evaluator.protocol.rerank is None
    assert list(evaluator.protocol.metadata.file_name) == list(meta.file_name)
    state = fake_state(0)
    results = evaluator.results(state)
    assert sorted(results.per_trial) == [
        "sysu_all_single_shot",
        "sysu_indoor_single_shot",
    ]
    pixels = evaluator.features(state)["pixels"]
    assert pixels.shape == (len(meta), size[0] * size[1] * 3)
    again = sysu.Sysu(meta, trials=(0, 1)).evaluate({"pixels": pixels})
    for protocol, fs in again.per_trial.items():
        for t, m in fs["pixels"].items():
            got = results.per_trial[protocol]["pixels"][t]
            assert got.to_dict() == m.to_dict()


def _sysu_records(layout):
    """Records of {identity: {camera: number of images}}."""
    return [
        {
            "identity": pid,
            "camera": cam,
            "modality": 1 if cam in (3, 6) else 0,
            "file_name": f"cam{cam}/{pid:04d}/{k:04d}.jpg",
        }
        for pid, cams in layout.items()
        for cam, n in cams.items()
        for k in range(n)
    ]


def test_sysu_table_counts_and_explains_skipped_queries():
    # Id 10: everywhere. Id 20: never indoors (no cam1/cam2). Id 30: only
    # camera 2 visible, so its camera-3 queries have no match in either
    # mode (camera 2 is removed for camera-3 queries).
    meta = metadata_of(
        _sysu_records(
            {
                10: {1: 2, 2: 1, 4: 2, 3: 2, 6: 1},
                20: {4: 2, 5: 1, 3: 1, 6: 2},
                30: {2: 2, 3: 3, 6: 1},
            }
        )
    )
    # Features that identify the person exactly: every valid query ranks
    # its identity first, so only the skipped queries can tell.
    ids = np.unique(meta.identity)
    value = (meta.identity[:, None] == ids[None, :]).astype(np.float32)
    out = sysu.Sysu(meta, modes=("all", "indoor"), trials=(0, 1)).evaluate(
        {"bn": value}
    )
    query = protocols.sysu_query_indices(meta)
    assert query.size == 3 + 3 + 4
    # Independently: all-search skips id 30's 3 camera-3 queries; indoor
    # skips id 20's 3 queries too.
    expected = {"sysu_all_single_shot": 3, "sysu_indoor_single_shot": 6}
    skipped = out.skipped_queries()
    assert sorted(skipped) == sorted(expected)
    for p, n in expected.items():
        assert skipped[p]["skipped"] == [n, n]
        assert skipped[p]["queries"] == query.size
        for m in out.per_trial[p]["bn"].values():
            assert m.num_valid_queries == query.size - n
            assert m.rank(1) == 1.0
    assert (
        "3 camera-3 queries whose identity is in camera 2 only"
        in (skipped["sysu_all_single_shot"]["reason"])
    )
    indoor = skipped["sysu_indoor_single_shot"]["reason"]
    assert "3 queries of 1 identity without an image in cam1/cam2" in indoor
    assert "e.g. id 20" in indoor
    table = out.table()
    assert "sysu_all_single_shot: 3 of 10 queries skipped" in table
    assert "sysu_indoor_single_shot: 6 of 10 queries skipped" in table
    entry = out.to_dict()["sysu_indoor_single_shot"]["bn"]
    assert entry["skipped_queries"]["skipped"] == [6, 6]
    # Merged results keep the reasons.
    merged = out.merge(
        sysu.Sysu(meta, modes=("all",)).evaluate({"pool": value})
    )
    assert "e.g. id 20" in merged.table()


def test_regdb_table_counts_skipped_queries():
    # Label 2 has visible images only (a damaged trial): its visible
    # queries cannot be matched, and the table says so.
    records = [
        {
            "identity": pid,
            "camera": 1 + modality,
            "modality": modality,
            "file_name": f"{('Visible', 'Thermal')[modality]}/{pid}/{k}.bmp",
        }
        for pid, modalities in {0: (0, 1), 1: (0, 1), 2: (0,)}.items()
        for modality in modalities
        for k in range(2)
    ]
    meta = metadata_of(records)
    value = np.eye(3, dtype=np.float32)[meta.label]
    out = regdb.Regdb(meta, trial=1).evaluate({"bn": value})
    skipped = out.skipped_queries()
    assert list(skipped) == ["regdb_visible_to_infrared"]
    assert skipped["regdb_visible_to_infrared"]["skipped"] == [2, 2]
    assert "regdb_visible_to_infrared: 2 of 6 queries skipped" in out.table()
