"""Tests of the evaluation extras: the SYSU-MM01 kit's own gallery draw
(rand_perm_cam.mat), test-time flip and average query expansion.

Each is checked against an independent slow computation written here: the
kit's draw and its get_cmc_multi_cam / get_map_multi_cam as per-probe
loops over file names; AQE as fast-reid's per-row loop (and a hand-worked
example); flip as the model applied to `np.flip(images, axis=2)`.
"""

import math

import ml_collections
import numpy as np
import pytest
import scipy.io
import test_evaluators

from data_pipeline.constants import INFRARED, VISIBLE
from data_pipeline.records import SplitMetadata
from mclnet_jax import config_checks, errors, metrics, query_expansion, rerank
from mclnet_jax.configs import sysu as sysu_config
from mclnet_jax.evaluators import common as eval_common
from mclnet_jax.evaluators import features, protocols, regdb, registry, sysu

# --------------------------------------------------------------------------
# A SYSU-like test split whose file names follow the kit's numbering.

# Person ids are 1-based cells of the kit's cell arrays: leave gaps.
IDS = (2, 5, 6, 9)
RUNS = 10


def _sysu_split(seed=0):
    """(metadata, {(id, camera): image count}): every id in cameras 3 and 6
    and in some visible cameras, 1..13 images per folder (some fewer than
    10), numbered 0001.jpg.., rows in a shuffled order."""
    rng = np.random.default_rng(seed)
    counts = {}
    for pid in IDS:
        for cam in (1, 2, 3, 4, 5, 6):
            if cam in (3, 6) or cam == 1 or rng.random() < 0.7:
                counts[pid, cam] = int(rng.integers(1, 14))
    rows = [
        (pid, cam, f"cam{cam}/{pid:04d}/{k:04d}.jpg")
        for (pid, cam), n in counts.items()
        for k in range(1, n + 1)
    ]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    identity = np.asarray([r[0] for r in rows], np.int64)
    camera = np.asarray([r[1] for r in rows], np.int64)
    file_name = np.empty(len(rows), dtype=object)
    file_name[:] = [r[2] for r in rows]
    meta = SplitMetadata(
        label=np.unique(identity, return_inverse=True)[1].astype(np.int64),
        identity=identity,
        camera=camera,
        modality=np.where(np.isin(camera, (3, 6)), INFRARED, VISIBLE).astype(
            np.int64
        ),
        file_name=file_name,
    )
    return meta, counts


def _kit_perms(counts, seed=1, num_ids=IDS[-1] + 1):
    """rand_perm_cam as the kit stores it: {camera}{id} -> [runs, n] double
    matrices of 1-based image numbers, empty where there are no images."""
    rng = np.random.default_rng(seed)
    cells = np.empty((6, 1), dtype=object)
    for cam in range(1, 7):
        per_id = np.empty((num_ids, 1), dtype=object)
        for pid in range(1, num_ids + 1):
            n = counts.get((pid, cam), 0)
            per_id[pid - 1, 0] = (
                np.stack([rng.permutation(n) + 1 for _ in range(RUNS)]).astype(
                    np.float64
                )
                if n
                else np.zeros((0, 0))
            )
        cells[cam - 1, 0] = per_id
    return cells


def _write_mat(path, cells, name="rand_perm_cam"):
    scipy.io.savemat(str(path), {name: cells})
    return str(path)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    meta, counts = _sysu_split()
    cells = _kit_perms(counts)
    path = _write_mat(tmp_path_factory.mktemp("kit") / "perm.mat", cells)
    return meta, counts, cells, path


# The kit's reference: get_testing_set, get_cmc_multi_cam, get_map_multi_cam.
KIT_LOCATION = {1: 1, 2: 2, 3: 2, 4: 4, 5: 5, 6: 6}  # cam_id = [1 2 2 4 5 6]


def kit_gallery_names(cells, *, cameras, ids, run, shots):
    """The kit's gallery of run `run` (0-based): camera by camera, ids
    ascending, the first `shots` image numbers of the run's permutation
    (named as the kit's Python port names them: cam<c>/<id>/<number>)."""
    names = []
    for cam in cameras:
        for pid in ids:
            perm = np.asarray(cells[cam - 1, 0][pid - 1, 0])
            if perm.size == 0:
                continue
            for k in perm[run, :shots].astype(int):
                names.append(f"cam{cam}/{pid:04d}/{k:04d}.jpg")
    return names


def kit_cmc_map(dist, g_ids, g_cams, p_ids, p_cams):
    """get_cmc_multi_cam and get_map_multi_cam, probe by probe."""
    g_loc = np.asarray([KIT_LOCATION[c] for c in g_cams])
    counter = np.zeros(len(set(g_ids)))
    valid, ap_sum = 0, 0.0
    for i in range(len(p_ids)):
        order = np.argsort(dist[i], kind="stable")
        keep = [j for j in order if g_loc[j] != KIT_LOCATION[p_cams[i]]]
        ranked = [g_ids[j] for j in keep]
        unique = list(dict.fromkeys(ranked))
        match = [u == p_ids[i] for u in unique]
        if not any(match):
            continue
        valid += 1
        counter[: len(match)] += match
        hits = [r + 1 for r, g in enumerate(ranked) if g == p_ids[i]]
        ap_sum += np.mean([(n + 1) / r for n, r in enumerate(hits)])
    return np.cumsum(counter / valid), ap_sum / valid


def test_official_galleries_are_the_kits(kit):
    meta, counts, cells, path = kit
    rand_perm = protocols.load_sysu_rand_perm(path)
    name_of = list(meta.file_name)
    for shots in (1, 10, 3):
        ours = protocols.sysu_official_galleries(
            meta,
            rand_perm,
            modes=("all", "indoor"),
            trials=range(RUNS),
            num_shots=shots,
        )
        for (mode, t), gallery in ours.items():
            want = kit_gallery_names(
                cells,
                cameras=protocols.check_mode(mode),
                ids=IDS,
                run=t,
                shots=shots,
            )
            assert [name_of[i] for i in gallery] == want, (mode, t, shots)
    # Different runs draw different galleries.
    one = protocols.sysu_official_galleries(
        meta, rand_perm, modes=("all",), trials=(0, 1)
    )
    assert not np.array_equal(one["all", 0], one["all", 1])


@pytest.mark.parametrize("num_shots", [1, 10])
def test_official_protocol_scores_as_the_kit(kit, num_shots):
    meta, _, cells, path = kit
    rand_perm = protocols.load_sysu_rand_perm(path)
    value = np.random.default_rng(3).normal(size=(len(meta.identity), 6))
    trials = (0, 4)
    protocol = sysu.Sysu(
        meta,
        trials=trials,
        num_shots=num_shots,
        rand_perm=rand_perm,
        max_rank=len(IDS) - 1,
    )
    assert protocol.draw == "official"
    results = protocol.evaluate({"bn": value})
    shots = protocols.shots_name(num_shots)
    index_of = {n: i for i, n in enumerate(meta.file_name)}
    probe = np.flatnonzero(np.isin(meta.camera, (3, 6)))
    unit = value / np.linalg.norm(value, axis=1, keepdims=True)
    for mode in ("all", "indoor"):
        protocol_name = f"sysu_{mode}_{shots}"
        assert results.gallery_draws[protocol_name] == "official"
        for t in trials:
            names = kit_gallery_names(
                cells,
                cameras=protocols.check_mode(mode),
                ids=IDS,
                run=t,
                shots=num_shots,
            )
            g = np.asarray([index_of[n] for n in names])
            # The kit: Euclidean distances (of normalised features here).
            dist = np.linalg.norm(unit[probe][:, None] - unit[g][None], axis=2)
            cmc, mean_ap = kit_cmc_map(
                dist,
                meta.identity[g],
                meta.camera[g],
                meta.identity[probe],
                meta.camera[probe],
            )
            got = results.per_trial[protocol_name]["bn"][t]
            np.testing.assert_allclose(got.cmc, cmc[: len(got.cmc)], atol=1e-9)
            assert got.mAP == pytest.approx(mean_ap, abs=1e-9)
    assert (
        results.to_dict()[f"sysu_all_{shots}"]["bn"]["gallery_draw"]
        == "official"
    )
    assert "the SYSU-MM01 evaluation kit's" in results.table()


def test_without_the_kit_the_draw_is_labelled_ours(kit):
    meta = kit[0]
    value = np.random.default_rng(4).normal(size=(len(meta.identity), 4))
    single = sysu.Sysu(meta, trials=(0,), max_rank=3).evaluate({"bn": value})
    multi = sysu.Sysu(meta, trials=(0,), num_shots=10, max_rank=3).evaluate(
        {"bn": value}
    )
    assert single.gallery_draws["sysu_all_single_shot"] == "community"
    assert multi.gallery_draws["sysu_all_multi_shot"] == "ours"
    assert multi.to_dict()["sysu_all_multi_shot"]["bn"]["gallery_draw"] == (
        "ours"
    )
    assert "(ours, not the kit's)" in multi.table()
    merged = single.merge(multi)
    assert set(merged.gallery_draws) == {
        "sysu_all_single_shot",
        "sysu_indoor_single_shot",
        "sysu_all_multi_shot",
        "sysu_indoor_multi_shot",
    }


def _kit_entry(**overrides) -> dict:
    """A SYSU entry of config.evals on the test split, all-search, 10 shots."""
    return test_evaluators.protocol_entry(
        "sysu", **dict(dict(modes=("all",), num_shots=10), **overrides)
    )


def _build_with_kit(evals: dict, meta, path) -> dict:
    """`registry.build` of `evals` over `meta` (every split) with the kit."""
    store = features.FeatureStore(
        {e["split"]: features.EvalSplit(meta, None) for e in evals.values()},
        predict_fn=None,
        variables_fn=lambda state: None,
        describe=str,
    )
    return registry.build(
        ml_collections.ConfigDict(evals),
        store=store,
        sources={},
        image_size=(8, 4),
        batch_size=8,
        builder_config=None,
        workdir="/nonexistent",
        sysu_rand_perm=path,
    )


def test_registry_reads_the_kit_once_and_names_stay(kit):
    meta, _, _, path = kit
    built = _build_with_kit({"test": _kit_entry()}, meta, path)
    protocol = built["test"].protocol
    assert protocol.draw == "official"
    value = np.random.default_rng(5).normal(size=(len(meta.identity), 4))
    results = protocol.evaluate({"bn": value})
    assert set(results.per_trial) == {"sysu_all_multi_shot"}
    # The rank-list figure shows the kit's single-shot gallery of run 1.
    (view,) = protocol.rank_list_views()
    np.testing.assert_array_equal(
        view.gallery,
        protocols.sysu_official_galleries(
            meta, protocol.rand_perm, modes=("all",), trials=(0,)
        )["all", 0],
    )


def test_kit_draws_only_the_test_split(kit):
    # The kit's permutations are its test ids' draws: a validation entry
    # (ids of the training set) keeps the community's draw and its label.
    meta, _, _, path = kit
    built = _build_with_kit(
        {
            "val": _kit_entry(split="val", num_shots=1),
            "test": _kit_entry(num_shots=1),
        },
        meta,
        path,
    )
    assert built["test"].protocol.draw == "official"
    assert built["val"].protocol.draw == "community"
    assert built["val"].protocol.rand_perm is None
    # Only a validation entry: the file has nothing to draw, which the
    # configuration checks say.
    config = sysu_config.get_config()
    config.eval.sysu_rand_perm = path
    config.evals.test.split = "val"
    assert any(
        "no entry of config.evals is a SYSU-MM01 protocol (type 'sysu') on "
        "the 'test' split" in p
        for p in config_checks.problems(config)
    )


def test_merge_refuses_mixed_gallery_draws(kit):
    meta = kit[0]
    value = np.random.default_rng(10).normal(size=(len(meta.identity), 4))
    rand_perm = protocols.load_sysu_rand_perm(kit[3])
    official = sysu.Sysu(
        meta, trials=(0,), rand_perm=rand_perm, max_rank=3
    ).evaluate({"bn": value})
    community = sysu.Sysu(meta, trials=(1,), max_rank=3).evaluate({"bn": value})
    with pytest.raises(ValueError, match="galleries drawn differently"):
        official.merge(community)
    more = sysu.Sysu(meta, trials=(1,), rand_perm=rand_perm, max_rank=3)
    merged = official.merge(more.evaluate({"bn": value}))
    assert set(merged.per_trial["sysu_all_single_shot"]["bn"]) == {0, 1}
    assert merged.gallery_draws["sysu_all_single_shot"] == "official"


def test_bad_kit_files_are_refused(kit, tmp_path):
    meta, counts, cells, _ = kit
    load = protocols.load_sysu_rand_perm
    with pytest.raises(FileNotFoundError, match="rand_perm_cam.mat"):
        load(str(tmp_path / "missing.mat"))
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a MATLAB file at all" * 10)
    with pytest.raises(errors.ConfigurationError, match="Cannot read"):
        load(str(junk))
    # Cut short (scipy's MatReadError is no ValueError): the same message,
    # which the command line prints in one line with exit code 2.
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(b"MA")
    with pytest.raises(errors.ConfigurationError, match="Cannot read") as e:
        load(str(truncated))
    assert errors.classify(e.value) == (errors.USER_ERROR, str(e.value))
    with pytest.raises(
        errors.ConfigurationError, match="no variable 'rand_perm_cam'"
    ):
        load(_write_mat(tmp_path / "other.mat", cells, name="perm"))
    with pytest.raises(
        errors.ConfigurationError, match="cell array of 6 cameras"
    ):
        load(_write_mat(tmp_path / "five.mat", cells[:5]))
    numeric = tmp_path / "numeric.mat"
    scipy.io.savemat(str(numeric), {"rand_perm_cam": np.zeros((6, 1))})
    with pytest.raises(
        errors.ConfigurationError, match="cell array of 6 cameras"
    ):
        load(str(numeric))

    def refused(damage, match, **kwargs):
        damaged = _kit_perms(counts)
        damage(damaged)
        path = _write_mat(tmp_path / "damaged.mat", damaged)
        with pytest.raises(errors.ConfigurationError, match=match):
            sysu.Sysu(meta, rand_perm=load(path), trials=range(RUNS), **kwargs)

    pid = IDS[0]

    def drop(c):
        c[0, 0][pid - 1, 0] = np.zeros((0, 0))

    refused(drop, f"has no permutation for id {pid} in camera 1")

    def extra(c):  # A permutation where the split has no image.
        missing = next(cam for cam in (2, 4, 5) if (IDS[1], cam) not in counts)
        c[missing - 1, 0][IDS[1] - 1, 0] = np.ones((RUNS, 1))

    refused(extra, f"for id {IDS[1]} in camera")

    def short(c):
        c[0, 0][pid - 1, 0] = c[0, 0][pid - 1, 0][:3]

    refused(short, "3 runs .* fewer than the 10 trials")

    def repeated(c):
        perm = c[0, 0][pid - 1, 0]
        perm[2, :] = 1
        c[0, 0][pid - 1, 0] = perm

    assert counts[pid, 1] > 1  # So that a repeated entry is no permutation.
    refused(repeated, "run 3 of id .* is not a permutation")

    def zero_based(c):  # As the kit's Python port holds them after `- 1`.
        c[0, 0][pid - 1, 0] = c[0, 0][pid - 1, 0] - 1

    refused(zero_based, "1-based image positions")

    def three_d(c):
        c[0, 0][pid - 1, 0] = c[0, 0][pid - 1, 0][:, :, None]

    refused(three_d, "1-based image positions")

    def fractional(c):
        c[0, 0][pid - 1, 0] = c[0, 0][pid - 1, 0] + 0.5

    refused(fractional, "1-based image positions")

    def too_few_ids(c):
        for cam in range(6):
            c[cam, 0] = c[cam, 0][: IDS[-1] - 1]

    refused(too_few_ids, f"id {IDS[-1]}")


def test_kit_cell_arrays_must_be_vectors(kit, tmp_path):
    # MATLAB indexes a matrix of cells column-major, numpy's ravel row-major:
    # only rows and columns of cells name cameras and ids the same way.
    _, counts, cells, _ = kit
    load = protocols.load_sysu_rand_perm
    grid = np.empty((2, 3), dtype=object)
    grid[:] = cells.reshape(2, 3)
    with pytest.raises(ValueError, match=r"6 cameras, .* shape \(2, 3\)"):
        load(_write_mat(tmp_path / "grid.mat", grid))
    # A row of cameras is as good as a column.
    row = np.empty((1, 6), dtype=object)
    row[0, :] = cells[:, 0]
    assert load(_write_mat(tmp_path / "row.mat", row)).keys() == set(
        range(1, 7)
    )
    damaged = _kit_perms(counts)
    ids = damaged[1, 0]
    damaged[1, 0] = np.empty((2, len(ids) // 2), dtype=object)
    damaged[1, 0][:] = ids[: 2 * (len(ids) // 2), 0].reshape(2, -1)
    with pytest.raises(ValueError, match=r"\{2\} must be a cell vector"):
        load(_write_mat(tmp_path / "ids.mat", damaged))
    damaged[1, 0] = np.zeros((len(ids), 1))
    with pytest.raises(ValueError, match=r"\{2\} must be a cell vector"):
        load(_write_mat(tmp_path / "numeric_ids.mat", damaged))


def test_official_galleries_refuse_bad_trials(kit):
    meta, _, _, path = kit
    rand_perm = protocols.load_sysu_rand_perm(path)
    for trials in ((-1,), (True,), (0.5,)):
        with pytest.raises(ValueError, match="trials must be run numbers"):
            protocols.sysu_official_galleries(
                meta, rand_perm, modes=("all",), trials=trials
            )


def test_config_checks_of_the_eval_fields(kit, tmp_path):
    config = sysu_config.get_config()
    assert config.eval.sysu_rand_perm is None
    assert not config.eval.flip and not config.eval.aqe
    assert config_checks.problems(config) == []
    config.eval.sysu_rand_perm = kit[3]
    assert config_checks.problems(config) == []
    # Not type-safe: what a hand-written config could hold.
    config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    config.eval.sysu_rand_perm = str(tmp_path / "nowhere.mat")
    config.eval.aqe_k = 0
    config.eval.aqe_alpha = -1.0
    config.eval.flip = 1
    config.eval.aqe = "yes"
    found = "\n".join(config_checks.problems(config))
    for expected in (
        "config.eval.sysu_rand_perm: no file",
        "config.eval.aqe_k must be an integer >= 1, got 0",
        "config.eval.aqe_alpha must be a number >= 0, got -1.0",
        "config.eval.flip must be True or False, got 1",
        "config.eval.aqe must be True or False, got 'yes'",
    ):
        assert expected in found, found
    config.eval.update(aqe=True, aqe_k=4, aqe_alpha=2.0)
    assert eval_common.aqe_params(config.eval) == (
        query_expansion.AqeParams(k=4, alpha=2.0)
    )
    config.eval.aqe = False
    assert eval_common.aqe_params(config.eval) is None


# --------------------------------------------------------------------------
# Average query expansion.


def slow_aqe(features, k, alpha):
    """fast-reid's aqe (one round), row by row."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    out = []
    for sim in unit @ unit.T:
        top = np.argsort(-sim, kind="stable")[:k]
        weights = np.power(sim[top], alpha)[:, None]
        out.append(np.mean(features[top] * weights, axis=0))
    return np.stack(out)


def test_aqe_hand_worked():
    # Cosines: a.b = 0.6, b.c = 0.8, a.c = 0; k=2: itself and its nearest.
    feats = np.asarray([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    got = query_expansion.average_query_expansion(feats, k=2, alpha=1.0)
    want = [
        [(1 + 0.6 * 0.6) / 2, 0.6 * 0.8 / 2],  # a + 0.6 b
        [0.6 / 2, (0.8 + 0.8 * 2) / 2],  # b + 0.8 c
        [0.8 * 0.6 / 2, (2 + 0.8 * 0.8) / 2],  # c + 0.8 b
    ]
    np.testing.assert_allclose(got, want, atol=1e-12)
    cubed = query_expansion.average_query_expansion(feats, k=2, alpha=3.0)
    np.testing.assert_allclose(
        cubed[0], [(1 + 0.216 * 0.6) / 2, 0.216 * 0.8 / 2], atol=1e-12
    )


@pytest.mark.parametrize("k, alpha", [(1, 3.0), (5, 3.0), (4, 0.0), (50, 2.0)])
def test_aqe_matches_fast_reid_loop(k, alpha):
    feats = np.random.default_rng(k).normal(size=(30, 8)) + 0.5
    got = query_expansion.average_query_expansion(feats, k=k, alpha=alpha)
    np.testing.assert_allclose(
        got, slow_aqe(feats, min(k, 30), alpha), rtol=1e-6, atol=1e-9
    )


def test_aqe_bad_inputs():
    aqe = query_expansion.average_query_expansion
    feats = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(ValueError, match="k must be a positive int"):
        aqe(feats, k=0)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        aqe(feats, alpha=-1.0)
    with pytest.raises(ValueError, match="non-empty numeric"):
        aqe(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="integer alpha"):
        aqe(np.asarray([[1.0, 0.0], [-1.0, 0.1]]), k=2, alpha=2.5)
    with pytest.raises(ValueError, match="AqeParams"):
        sysu.Sysu(_sysu_split()[0], aqe={"k": 5})


def test_protocols_report_aqe_rows(kit):
    meta = kit[0]
    value = np.random.default_rng(6).normal(size=(len(meta.identity), 6))
    params = query_expansion.AqeParams(k=3, alpha=3.0)
    plain = sysu.Sysu(meta, trials=(0, 1), max_rank=3).evaluate({"bn": value})
    results = sysu.Sysu(meta, trials=(0, 1), max_rank=3, aqe=params).evaluate(
        {"bn": value}
    )
    query = protocols.sysu_query_indices(meta)
    for mode in ("all", "indoor"):
        name = f"sysu_{mode}_single_shot"
        for t in (0, 1):
            assert (
                results.per_trial[name]["bn"][t].to_dict()
                == plain.per_trial[name]["bn"][t].to_dict()
            )
            gallery = protocols.sysu_gallery_indices(meta, mode=mode, trial=t)
            expanded = slow_aqe(value[np.concatenate([query, gallery])], 3, 3)
            unit = expanded / np.linalg.norm(expanded, axis=1, keepdims=True)
            want = metrics.sysu_metrics(
                -unit[: len(query)] @ unit[len(query) :].T,
                query_ids=meta.identity[query],
                gallery_ids=meta.identity[gallery],
                query_cams=meta.camera[query],
                gallery_cams=meta.camera[gallery],
                max_rank=3,
            )
            got = results.per_trial[name + "+aqe"]["bn"][t]
            np.testing.assert_allclose(got.cmc, want.cmc, atol=1e-9)
            assert got.mAP == pytest.approx(want.mAP, abs=1e-9)
    as_dict = results.to_dict()
    assert as_dict["sysu_all_single_shot+aqe"]["bn"]["aqe"] == {
        "k": 3,
        "alpha": 3.0,
    }
    assert "+aqe: average query expansion" in results.table()
    assert "+aqe" not in plain.table()


def test_regdb_aqe_both_directions():
    rng = np.random.default_rng(7)
    ids = np.repeat(np.arange(4), 4)
    modality = np.tile([VISIBLE, VISIBLE, INFRARED, INFRARED], 4)
    file_name = np.empty(len(ids), dtype=object)
    file_name[:] = [f"f{i:02d}" for i in range(len(ids))]
    meta = SplitMetadata(
        label=ids.astype(np.int64),
        identity=ids.astype(np.int64),
        camera=np.where(modality == VISIBLE, 1, 2).astype(np.int64),
        modality=modality.astype(np.int64),
        file_name=file_name,
    )
    value = rng.normal(size=(len(ids), 5)) + ids[:, None] * 0.3
    params = query_expansion.AqeParams(k=2, alpha=3.0)
    results = regdb.Regdb(meta, trial=1, aqe=params, max_rank=3).evaluate(
        {"pool": value}
    )
    for direction in ("visible_to_infrared", "infrared_to_visible"):
        q, g = protocols.regdb_indices(meta, direction=direction)
        expanded = slow_aqe(value[np.concatenate([q, g])], 2, 3.0)
        unit = expanded / np.linalg.norm(expanded, axis=1, keepdims=True)
        want = metrics.standard_metrics(
            -unit[: len(q)] @ unit[len(q) :].T,
            query_ids=meta.identity[q],
            gallery_ids=meta.identity[g],
            query_cams=meta.camera[q],
            gallery_cams=meta.camera[g],
            max_rank=3,
        )
        got = results.per_trial[f"regdb_{direction}+aqe"]["pool"][1]
        np.testing.assert_allclose(got.cmc, want.cmc, atol=1e-9)
        assert got.mAP == pytest.approx(want.mAP, abs=1e-9)


def test_distance_variants_order_and_reuse(kit):
    meta = kit[0]
    value = np.random.default_rng(8).normal(size=(len(meta.identity), 4))
    protocol = sysu.Sysu(
        meta,
        rerank=rerank.RerankParams(k1=3, k2=2, lambda_value=0.3),
        aqe=query_expansion.AqeParams(k=2),
    )
    distances = eval_common.Distances(value, normalize=True)
    q, g = np.arange(5), np.arange(5, 12)
    suffixes = [s for s, _ in protocol.distance_variants(distances, q, g)]
    assert suffixes == ["", "+rerank", "+aqe"]
    # Swapped query and gallery: the kept matrix, transposed.
    np.testing.assert_array_equal(
        distances.euclidean(g, q), distances.euclidean(q, g).T
    )
    np.testing.assert_array_equal(
        distances.plain(g, q), distances.plain(q, g).T
    )


# --------------------------------------------------------------------------
# Test-time flip, on a tiny MCLNet compiled once for the module.

FH, FW = 32, 16


@pytest.fixture(scope="module")
def tiny_model(fast_compile):
    del fast_compile
    import jax

    from mclnet_jax.models import mclnet

    model = mclnet.MCLNet(
        num_classes=5,
        depth=18,
        width_multiplier=1 / 16,
        non_local_counts=(0, 1, 1, 0),
    )
    x = np.zeros((1, FH, FW, 3), np.float32)
    variables = jax.jit(lambda key: model.init(key, x, x, train=False))(
        jax.random.key(0)
    )
    return model, variables


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _padded_batches(images, batch_size):
    def batches_fn(indices):
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            pad = batch_size - len(idx)
            yield {
                "image": np.concatenate(
                    [images[idx], np.zeros((pad, FH, FW, 3), np.float32)]
                ),
                "mask": np.arange(batch_size) < len(idx),
                "index": np.concatenate([idx, -np.ones(pad, int)]),
            }

    return batches_fn


def test_flip_averages_unit_features():
    # A model-free predict function whose feature of an image is the pixel
    # sum of its left half, its mirror's that of the right half; the left
    # halves are ten times brighter, so the two norms differ tenfold.
    rng = np.random.default_rng(11)
    n, w = 6, 8
    images = rng.uniform(0.5, 1.0, size=(n, 4, w, 3)).astype(np.float32)
    images[:, :, : w // 2] *= 10
    meta = SplitMetadata(
        label=np.arange(n, dtype=np.int64),
        identity=np.arange(n, dtype=np.int64),
        camera=np.ones(n, np.int64),
        modality=np.full(n, VISIBLE, np.int64),
        file_name=np.asarray([f"{i}.jpg" for i in range(n)], dtype=object),
    )

    def predict_fn(variables, batch, modality):
        left = np.asarray(batch)[:, :, : w // 2].sum(axis=(1, 2))
        return {"pool": left, "bn": 2 * left + 1}

    def batches_fn(indices):
        yield {
            "image": images[indices],
            "mask": np.ones(len(indices), bool),
            "index": indices,
        }

    store = features.FeatureStore(
        {"test": features.EvalSplit(meta, batches_fn)},
        predict_fn=predict_fn,
        variables_fn=lambda state: None,
        describe=str,
        flip=True,
    )
    state = type("State", (), {"step": np.int32(0)})
    got = store.features("test", "model", state)
    left = images[:, :, : w // 2].astype(np.float64).sum(axis=(1, 2))
    right = images[:, :, w // 2 :].astype(np.float64).sum(axis=(1, 2))
    for name, f in (("pool", lambda x: x), ("bn", lambda x: 2 * x + 1)):
        a, b = f(left), f(right)
        want = [
            (a[i] / np.linalg.norm(a[i]) + b[i] / np.linalg.norm(b[i])) / 2
            for i in range(n)
        ]
        np.testing.assert_allclose(got[name + "+flip"], want, rtol=1e-5)
        np.testing.assert_allclose(got[name], a, rtol=1e-5)


@pytest.fixture(scope="module")
def flip_split():
    meta, _ = _sysu_split(seed=2)
    n = len(meta.identity)
    images = np.random.default_rng(9).normal(size=(n, FH, FW, 3))
    return meta, images.astype(np.float32)


def _store(model, split, *, flip, batch_size=8):
    meta, images = split
    return features.FeatureStore(
        {"test": features.EvalSplit(meta, _padded_batches(images, batch_size))},
        predict_fn=features.make_predict_fn(model),
        variables_fn=lambda state: state.variables,
        describe=lambda state: "the tiny model",
        flip=flip,
    )


def test_flip_averages_image_and_mirror(tiny_model, flip_split):
    import jax

    model, variables = tiny_model
    meta, images = flip_split
    state = type("State", (), {"step": np.int32(1), "variables": variables})
    batch_size = 8
    one_pass = sum(
        math.ceil(np.count_nonzero(meta.modality == m) / batch_size)
        for m in (VISIBLE, INFRARED)
    )
    plain_store = _store(model, flip_split, flip=False)
    plain = plain_store.features("test", "model", state)
    assert plain_store.predict_calls == one_pass
    store = _store(model, flip_split, flip=True)
    got = store.features("test", "model", state)
    # Exactly one more pass over the split.
    assert store.predict_calls == 2 * one_pass
    assert sorted(got) == ["bn", "bn+flip", "pool", "pool+flip"]
    for name in ("pool", "bn"):
        np.testing.assert_array_equal(got[name], plain[name])

    forward = jax.jit(
        lambda x, visible: (
            model.apply(variables, x, None, train=False)
            if visible
            else model.apply(variables, None, x, train=False)
        ),
        static_argnums=1,
    )
    for mod in (VISIBLE, INFRARED):
        rows = np.flatnonzero(meta.modality == mod)
        direct = forward(images[rows], mod == VISIBLE)
        mirrored = forward(np.flip(images[rows], axis=2), mod == VISIBLE)
        for name in ("pool", "bn"):
            want = (
                _unit(np.asarray(direct[name]))
                + _unit(np.asarray(mirrored[name]))
            ) / 2
            np.testing.assert_allclose(
                got[name + "+flip"][rows], want, rtol=1e-4, atol=1e-5
            )
    # Raw pixels are not flipped: one pass, no "+flip" feature.
    calls = store.predict_calls
    assert list(store.features("test", "pixels", state)) == ["pixels"]
    assert store.predict_calls == calls + one_pass
    # Every protocol evaluates the flipped features as their own rows.
    results = sysu.Sysu(meta, trials=(0,), max_rank=3).evaluate(got)
    assert set(results.per_trial["sysu_all_single_shot"]) == set(got)
    with pytest.raises(ValueError, match="flip must be True or False"):
        _store(model, flip_split, flip="yes")
