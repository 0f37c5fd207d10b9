"""Tests for mclnet_jax.export: the jax.export artifacts and the SavedModel.

The tiny workdir of test_embed (configs/synthetic.py tiny=1, perturbed
weights, no dataset) is exported once per module. Both formats must give the
live model's features (`model.apply` in eval mode) to 1e-5 for both stems at
two batch sizes (one symbolic batch dimension), and the SavedModel must load
in a fresh Python process that imports TensorFlow only.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_embed

from mclnet_jax import export

BATCH_SIZES = (2, 5)


def live_features(model, state, images):
    """{modality: {"pool", "bn"}} of the live model for one batch.

    Both stems in one call: in eval mode every row is computed on its own
    (BatchNorm uses its running statistics), so the visible and infrared
    halves of the output are what separate calls would give.
    """
    variables = {
        "params": state.params["model"],
        "batch_stats": state.batch_stats,
    }
    x = jnp.asarray(images)
    out = jax.jit(lambda v, a: model.apply(v, a, a, train=False))(variables, x)
    n = images.shape[0]
    return {
        "visible": {k: np.asarray(out[k][:n]) for k in export.OUTPUTS},
        "infrared": {k: np.asarray(out[k][n:]) for k in export.OUTPUTS},
    }


def assert_close(got, want, what):
    for name in export.OUTPUTS:
        diff = np.abs(np.asarray(got[name]) - want[name]).max()
        scale = np.abs(want[name]).max()
        assert diff <= 1e-5 * max(1.0, scale), (what, name, diff, scale)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fast_compile):
    del fast_compile
    workdir = tmp_path_factory.mktemp("workdir")
    model, state = test_embed.make_workdir(workdir)
    info = export.export_workdir(None, str(workdir), which="latest")
    rng = np.random.default_rng(0)
    inputs = {
        b: rng.normal(size=(b, 32, 16, 3)).astype(np.float32)
        for b in BATCH_SIZES
    }
    want = {}
    for b in BATCH_SIZES:
        for modality, out in live_features(model, state, inputs[b]).items():
            want[modality, b] = out
    return str(workdir), info, inputs, want


def test_files_and_metadata(exported):
    workdir, info, _, want = exported
    folder = os.path.join(workdir, export.EXPORT_DIR)
    assert sorted(os.listdir(folder)) == [
        "export.json",
        "infrared.jax_export",
        "saved_model",
        "visible.jax_export",
    ]
    with open(os.path.join(folder, "export.json")) as f:
        assert json.load(f) == json.loads(json.dumps(info))
    d = want["visible", BATCH_SIZES[0]]["bn"].shape[1]
    assert info["input"]["shape"] == [None, 32, 16, 3]
    assert info["outputs"]["bn"]["shape"] == [None, d]
    assert info["model"]["num_classes"] == test_embed.NUM_CLASSES
    assert info["step"] == test_embed.STEP
    np.testing.assert_allclose(info["input"]["mean"], test_embed.MEAN)
    np.testing.assert_allclose(info["input"]["std"], test_embed.STD)
    assert info["l2_normalized"] is False
    # Nothing left over from staging.
    assert not [p for p in os.listdir(workdir) if p.startswith(".export")]


def test_jax_export_matches_live_model(exported):
    workdir, _, inputs, want = exported
    for modality in ("visible", "infrared"):
        artifact = export.load_jax_export(workdir, modality)
        assert str(artifact.in_avals[0].shape[0]) == "b"
        assert set(artifact.platforms) == {"cpu", "cuda"}
        for b in BATCH_SIZES:
            assert_close(
                artifact.call(inputs[b]), want[modality, b], (modality, b)
            )
    # The stems differ, so a swapped modality could not pass.
    assert (
        np.abs(want["visible", 2]["bn"] - want["infrared", 2]["bn"]).max()
        > 1e-2
    )


_FRESH_PROCESS = textwrap.dedent("""
    import json
    import sys
    import numpy as np
    import tensorflow as tf
    assert "mclnet_jax" not in sys.modules  # No model code is needed.
    model = tf.saved_model.load(sys.argv[1])
    data = np.load(sys.argv[2])
    worst = {}

    def compare(what, out, want):
        for name in ("pool", "bn"):
            diff = float(np.abs(out[name].numpy() - want[name]).max())
            scale = float(np.abs(want[name]).max())
            worst[f"{what}/{name}"] = [diff, diff / scale]

    for modality in ("visible", "infrared"):
        for b in (2, 5):
            compare(f"{modality}/{b}", model.signatures[modality](
                images=tf.constant(data[f"images_{b}"])),
                {n: data[f"{modality}_{b}_{n}"] for n in ("pool", "bn")})
    # serving_default: one batch mixing both stems row by row.
    rows = np.array([1, 0, 0, 1, 0], np.int32)
    mixed = {n: np.where(rows[:, None] == 1, data[f"infrared_5_{n}"],
                         data[f"visible_5_{n}"]) for n in ("pool", "bn")}
    compare("serving_default/5", model.signatures["serving_default"](
        images=tf.constant(data["images_5"]), modality=tf.constant(rows)),
        mixed)
    try:
        model.signatures["serving_default"](
            images=tf.constant(data["images_2"]),
            modality=tf.constant([0, 2], tf.int32))
        worst["bad_modality_rejected"] = False
    except tf.errors.InvalidArgumentError as e:
        worst["bad_modality_rejected"] = "modality must be 0" in str(e)
    print("RESULT " + json.dumps(worst))
""")


def test_saved_model_in_a_fresh_process_matches_live_model(exported, tmp_path):
    workdir, _, inputs, want = exported
    expected = tmp_path / "expected.npz"
    arrays = {f"images_{b}": inputs[b] for b in BATCH_SIZES}
    for (modality, b), out in want.items():
        for name in export.OUTPUTS:
            arrays[f"{modality}_{b}_{name}"] = out[name]
    np.savez(expected, **arrays)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH_PROCESS,
            os.path.join(workdir, export.EXPORT_DIR, export.SAVED_MODEL_DIR),
            str(expected),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT")]
    worst = json.loads(line[-1][len("RESULT ") :])
    assert worst.pop("bad_modality_rejected") is True
    assert len(worst) == 2 * 2 * 2 + 2  # Every case was compared.
    for what, (diff, relative) in worst.items():
        assert min(diff, relative) <= 1e-5, (what, diff, relative)


def test_errors(exported, tmp_path):
    workdir, _, _, _ = exported
    with pytest.raises(FileNotFoundError, match="No best checkpoint"):
        export.export_workdir(None, workdir, which="best")
    with pytest.raises(FileNotFoundError, match="mode=export"):
        export.load_jax_export(str(tmp_path), "visible")
    with pytest.raises(ValueError, match="modality"):
        export.jax_export_file("thermal")


def test_replace_directory(tmp_path):
    target = tmp_path / "export"
    for content in ("first", "second"):
        staging = tmp_path / f".staging_{content}"
        staging.mkdir()
        (staging / "f.txt").write_text(content)
        export.replace_directory(str(staging), str(target))
        assert (target / "f.txt").read_text() == content
    assert sorted(os.listdir(tmp_path)) == ["export"]
