"""Tests of release-format checkpoints (models/release.py) and the converter.

* Round trip: ours -> release state dict -> ours is identical (embed net and
  modality classifier; ResNet-18 and -50, tiny).
* Independence: a state dict made by a real torch module with the release's
  structure (tests/torch_release.py, written from the architecture) loads
  with strict semantics, and then our eval-mode forward equals the torch
  module's; our export loads into that module with `strict=True` and the
  forwards agree again.
* Every error names its key; the unused copies are ignored by name only.
* The converter (`python -m mclnet_jax.tools.convert_release`) on
  `{'net': sd, 'epoch': 3}`, a bare state dict, numpy 1.x pickles, refused
  pickles, and without torch; `--mode=evaluate
  --config.init.release_checkpoint=...` on the tiny synthetic config.

The torch-dependent tests skip with a reason when torch is missing.
"""

import functools
import json
import os
import re
import subprocess
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
from absl import flags
from safetensors import numpy as safetensors_numpy

from data_pipeline import synthetic
from mclnet_jax.configs import synthetic as synthetic_recipe
from mclnet_jax.models import mclnet, release
from mclnet_jax.tools import convert_release

TINY = 1 / 16
NUM_CLASSES = 5
# Depth 18 with a non-local block in every stage (two in layer2/3) so that
# all of NL_1..NL_4 and the block index are exercised; average pooling
# because a non-local block after layer4 (never in the release) can make
# features negative, where GeM's cube root is NaN in both frameworks.
NETS = {
    18: dict(depth=18, non_local_counts=(1, 2, 2, 1), pooling="avg"),
    50: dict(depth=50, non_local_counts=(0, 2, 3, 0)),
}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torch():
    return pytest.importorskip(
        "torch", reason="needs torch (the `parity` extra)"
    )


def _torch_release():
    _torch()
    from benchmarks.torch_release import network

    return network


def _model(depth):
    return mclnet.MCLNet(
        num_classes=NUM_CLASSES, width_multiplier=TINY, **NETS[depth]
    )


@functools.cache
def _shapes(depth):
    x = jnp.zeros((1, 32, 16, 3))
    return jax.eval_shape(
        lambda: _model(depth).init(jax.random.key(0), x, x, train=False)
    )


def _random_variables(depth, seed, dtype=np.float32):
    """Variables of the tiny MCLNet with distinct random values per leaf."""
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree.flatten(_shapes(depth))
    values = [rng.uniform(0.5, 1.5, s.shape).astype(dtype) for s in leaves]
    return jax.tree.unflatten(tree, values)


def _random_mcm(seed, feature_dim=32, dtype=np.float32):
    mcm = mclnet.ModalityClassifier()
    shapes = jax.eval_shape(
        lambda: mcm.init(
            jax.random.key(0), jnp.zeros((2, feature_dim)), train=False
        )
    )
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.uniform(0.5, 1.5, s.shape).astype(dtype), shapes
    )


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        assert np.asarray(x).dtype == np.asarray(y).dtype, path
        np.testing.assert_array_equal(
            np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path)
        )


# ------------------------------------------------------------- round trip --


@pytest.mark.parametrize("depth", [18, 50])
def test_round_trip_embed_net(depth, tmp_path):
    ours, other = _random_variables(depth, 0), _random_variables(depth, 1)
    path = tmp_path / "embed.safetensors"
    release.export_embed_net(ours, path)
    back = release.load_embed_net(other, path)
    _assert_trees_equal(back, ours)
    # Not vacuous: every leaf of the target differed before loading.
    assert all(
        not np.array_equal(x, y)
        for x, y in zip(
            jax.tree.leaves(ours), jax.tree.leaves(other), strict=True
        )
    )
    # From the dict variant as well, and export is stable.
    state = release.embed_net_state_dict(back)
    _assert_trees_equal(release.load_embed_net(other, state), ours)
    first = safetensors_numpy.load_file(str(path))
    assert sorted(first) == sorted(state)
    for key in first:
        np.testing.assert_array_equal(first[key], state[key], err_msg=key)


def test_exported_names_layouts_and_unused_copies():
    ours = _random_variables(18, 0)
    state = release.embed_net_state_dict(ours)
    p, s = ours["params"], ours["batch_stats"]
    # Hand-picked entries, torch layout.
    np.testing.assert_array_equal(
        state["thermal_module.thermal.conv1.weight"],
        np.transpose(p["infrared_stem"]["conv1"]["kernel"], (3, 2, 0, 1)),
    )
    np.testing.assert_array_equal(
        state["base_resnet.base.layer2.0.downsample.1.running_var"],
        s["layer2"]["block0"]["downsample_bn"]["var"],
    )
    nl = p["layer2"]["non_local1"]
    np.testing.assert_array_equal(
        state["NL_2.1.g.0.weight"],
        np.transpose(nl["g"]["kernel"], (3, 2, 0, 1)),
    )
    np.testing.assert_array_equal(state["NL_2.1.W.0.bias"], nl["W"]["bias"])
    np.testing.assert_array_equal(
        state["NL_2.1.W.1.weight"], nl["W_bn"]["scale"]
    )
    np.testing.assert_array_equal(
        state["NL_4.0.W.1.running_mean"],
        s["layer4"]["non_local0"]["W_bn"]["mean"],
    )
    np.testing.assert_array_equal(
        state["classifier.weight"], p["classifier"]["kernel"].T
    )
    assert state["classifier.weight"].shape == (NUM_CLASSES, 32)
    np.testing.assert_array_equal(
        state["bottleneck.weight"], p["bnneck"]["scale"]
    )
    assert not state["bottleneck.bias"].any()
    # The unused copies: shared layers in the stems, visible stem in base.
    for stem in ("visible_module.visible", "thermal_module.thermal"):
        np.testing.assert_array_equal(
            state[f"{stem}.layer3.1.conv2.weight"],
            state["base_resnet.base.layer3.1.conv2.weight"],
        )
        assert state[f"{stem}.fc.weight"].shape == (1000, 32)
    np.testing.assert_array_equal(
        state["base_resnet.base.bn1.running_mean"],
        s["visible_stem"]["bn1"]["mean"],
    )
    assert state["bottleneck.num_batches_tracked"].dtype == np.int64


def test_round_trip_modality_classifier(tmp_path):
    ours, other = _random_mcm(0), _random_mcm(1)
    path = tmp_path / "mcm.safetensors"
    release.export_modality_classifier(ours, path)
    _assert_trees_equal(release.load_modality_classifier(other, path), ours)
    state = release.modality_classifier_state_dict(ours)
    assert sorted(state) == sorted(
        [f"map{i}.{leaf}" for i in (1, 2, 3) for leaf in ("weight", "bias")]
        + [
            f"bn.{leaf}"
            for leaf in (
                "weight",
                "bias",
                "running_mean",
                "running_var",
                "num_batches_tracked",
            )
        ]
    )
    np.testing.assert_array_equal(
        state["map3.weight"], ours["params"]["fc2"]["kernel"].T
    )
    np.testing.assert_array_equal(state["map2.weight"], np.eye(128))


def test_bfloat16_variables_export_as_float32():
    # torch state dicts of ours hold float32 or float64; other float types
    # (bfloat16 variables) are widened to float32, exactly.
    ours = _random_variables(18, 0, jnp.bfloat16)
    state = release.embed_net_state_dict(ours)
    assert state["classifier.weight"].dtype == np.float32
    np.testing.assert_array_equal(
        state["classifier.weight"],
        np.asarray(ours["params"]["classifier"]["kernel"], np.float32).T,
    )


def test_load_keeps_float64():
    with jax.enable_x64(True):
        ours = _random_variables(18, 0, np.float64)
        other = _random_variables(18, 1, np.float64)
        state = release.embed_net_state_dict(ours)
        assert state["classifier.weight"].dtype == np.float64
        back = release.load_embed_net(other, state)
        _assert_trees_equal(back, ours)
        # A float32 file into float64 variables: the targets' dtype wins.
        state32 = {
            k: v.astype(np.float32) if v.dtype == np.float64 else v
            for k, v in state.items()
        }
        back = release.load_embed_net(other, state32)
        assert {np.asarray(x).dtype for x in jax.tree.leaves(back)} == {
            np.dtype(np.float64)
        }
        mcm = _random_mcm(0, dtype=np.float64)
        _assert_trees_equal(
            release.load_modality_classifier(
                _random_mcm(1, dtype=np.float64),
                release.modality_classifier_state_dict(mcm),
            ),
            mcm,
        )


# ----------------------------------------------- against a torch module --


@functools.cache
def _forward(depth):
    model = _model(depth)
    return jax.jit(lambda v, a, b: model.apply(v, a, b, train=False))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(3, 3, 32, 16)).astype(np.float32),
        rng.normal(size=(2, 3, 32, 16)).astype(np.float32),
    )


def _compare(torch_net, variables, depth):
    torch = _torch()
    visible, infrared = _inputs()
    torch_net.eval()
    with torch.no_grad():
        want = torch_net(torch.from_numpy(visible), torch.from_numpy(infrared))
    got = _forward(depth)(
        variables, visible.transpose(0, 2, 3, 1), infrared.transpose(0, 2, 3, 1)
    )
    for name in ("pool", "bn", "logits"):
        w = want[name].numpy()
        assert np.abs(w).max() > 0.1, name  # Not a degenerate comparison.
        np.testing.assert_allclose(
            np.asarray(got[name]), w, rtol=1e-5, atol=1e-5, err_msg=name
        )


@pytest.mark.parametrize("depth", [18, 50])
def test_torch_state_dict_loads_and_forward_matches(depth):
    torch_release = _torch_release()
    net = torch_release.make_embed_net(
        num_classes=NUM_CLASSES, width_multiplier=TINY, **NETS[depth]
    )
    torch_release.randomize_(net, seed=depth)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    # Strict: every key is used or one of the release's unused copies.
    assert any(k.startswith("visible_module.visible.layer4.") for k in state)
    variables = release.load_embed_net(_random_variables(depth, 0), state)
    _compare(net, variables, depth)


def test_export_loads_strictly_into_torch_and_matches(tmp_path):
    torch = _torch()
    torch_release = _torch_release()
    # Our weights, made torch-friendly in scale (the uniform [0.5, 1.5]
    # values of _random_variables would blow up through 8 blocks).
    source = torch_release.randomize_(
        torch_release.make_embed_net(
            num_classes=NUM_CLASSES, width_multiplier=TINY, **NETS[18]
        ),
        seed=7,
    )
    ours = release.load_embed_net(
        _random_variables(18, 0),
        {k: v.numpy() for k, v in source.state_dict().items()},
    )
    path = tmp_path / "embed.safetensors"
    release.export_embed_net(ours, path)
    net = torch_release.make_embed_net(
        num_classes=NUM_CLASSES, width_multiplier=TINY, **NETS[18]
    )
    result = net.load_state_dict(
        {
            k: torch.from_numpy(v)
            for k, v in safetensors_numpy.load_file(str(path)).items()
        },
        strict=True,
    )
    assert not result.missing_keys and not result.unexpected_keys
    _compare(net, ours, 18)


def test_modality_classifier_against_torch():
    torch = _torch()
    torch_release = _torch_release()
    mcm = torch_release.randomize_(
        torch_release.make_modality_classifier(feature_dim=32), seed=3
    )
    mcm.eval()
    ours = release.load_modality_classifier(
        _random_mcm(0), {k: v.numpy() for k, v in mcm.state_dict().items()}
    )
    features = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)
    with torch.no_grad():
        want = mcm(torch.from_numpy(features)).numpy()
    got = mclnet.ModalityClassifier().apply(ours, features, train=False)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # And back: our export loads strictly into a fresh torch module.
    fresh = torch_release.make_modality_classifier(feature_dim=32)
    fresh.load_state_dict(
        {
            k: torch.from_numpy(v)
            for k, v in release.modality_classifier_state_dict(ours).items()
        },
        strict=True,
    )
    fresh.eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            fresh(torch.from_numpy(features)).numpy(), want, rtol=1e-6
        )


def test_torch_module_has_the_release_names():
    torch_release = _torch_release()
    keys = set(
        torch_release.make_embed_net(
            num_classes=NUM_CLASSES, depth=50, width_multiplier=TINY
        ).state_dict()
    )
    for key in (
        "visible_module.visible.conv1.weight",
        "thermal_module.thermal.bn1.running_var",
        "visible_module.visible.layer1.0.conv3.weight",
        "visible_module.visible.fc.bias",
        "base_resnet.base.conv1.weight",
        "base_resnet.base.fc.weight",
        "base_resnet.base.layer2.0.downsample.0.weight",
        "NL_2.1.g.0.weight",
        "NL_3.2.W.1.num_batches_tracked",
        "NL_3.0.theta.bias",
        "bottleneck.bias",
        "classifier.weight",
    ):
        assert key in keys, key
    assert not any(k.startswith(("NL_1.", "NL_4.", "NL_3.3.")) for k in keys)
    assert "classifier.bias" not in keys


# ----------------------------------------------------------------- errors --


def _state(depth=18):
    return release.embed_net_state_dict(_random_variables(depth, 0))


def _load(state, depth=18):
    return release.load_embed_net(_random_variables(depth, 1), state)


def test_unused_copies_are_ignored_by_name():
    state = _state()
    garbage = {
        "visible_module.visible.layer2.1.conv1.weight": np.zeros((1,)),
        "thermal_module.thermal.fc.weight": np.zeros((3, 3)),
        "base_resnet.base.bn1.running_var": np.zeros((7,)),
        "NL_3.0.W.1.num_batches_tracked": np.array(9),
    }
    loaded = _load({**state, **garbage})
    _assert_trees_equal(loaded, _load(state))
    for key in garbage:  # Not required either.
        del state[key]
    _assert_trees_equal(loaded, _load(state))


@pytest.mark.parametrize(
    "key",
    [
        "visible_module.visible.layer5.0.conv1.weight",  # Not a stage.
        "base_resnet.base.layer1.9.conv1.weight",  # No such block.
        "NL_2.2.theta.weight",  # Third NL in layer2.
        "classifier.bias",  # No bias.
        "module.bottleneck.weight",  # DataParallel prefix.
    ],
)
def test_unknown_key_is_named(key):
    with pytest.raises(ValueError, match=re.escape(key)):
        _load({**_state(), key: np.zeros((2,), np.float32)})


@pytest.mark.parametrize(
    "key",
    [
        "NL_4.0.W.1.running_var",
        "thermal_module.thermal.conv1.weight",
        "bottleneck.bias",
        "classifier.weight",
    ],
)
def test_missing_key_is_named(key):
    state = _state()
    del state[key]
    with pytest.raises(ValueError, match=re.escape(key)):
        _load(state)


def test_shape_mismatch_is_named():
    state = _state()
    state["classifier.weight"] = np.zeros((7, 32), np.float32)
    state["NL_2.1.phi.weight"] = np.zeros((2, 8, 1, 1), np.float32)
    with pytest.raises(
        ValueError,
        match=r"NL_2\.1\.phi\.weight: file \(2, "
        r"8, 1, 1\), model \(1, 8, 1, 1\).*classifier\."
        r"weight: file \(7, 32\), model \(5, 32\)",
    ):
        _load(state)
    state = _state()
    state["bottleneck.bias"] = np.zeros((31,), np.float32)
    with pytest.raises(ValueError, match=r"bottleneck\.bias: file \(31,\)"):
        _load(state)


def test_nonzero_bottleneck_bias_is_refused():
    state = _state()
    state["bottleneck.bias"] = state["bottleneck.bias"].copy()
    state["bottleneck.bias"][3] = 0.5
    with pytest.raises(
        ValueError,
        match=r"'bottleneck\.bias' must be all "
        r"zeros.*max \|bias\| = 0\.5",
    ):
        _load(state)


def test_depth_mismatch_names_keys():
    with pytest.raises(
        ValueError, match=r"base_resnet\.base\.layer1\.0\.(conv3|bn3)"
    ):
        release.load_embed_net(_random_variables(18, 0), _state(50))


def test_modality_classifier_errors_are_named():
    state = release.modality_classifier_state_dict(_random_mcm(0))
    other = _random_mcm(1)
    ok = release.load_modality_classifier(
        other, {**state, "map2.weight": np.zeros(1)}
    )  # Ignored by name.
    _assert_trees_equal(ok, release.load_modality_classifier(other, state))
    with pytest.raises(ValueError, match=r"map4\.weight"):
        release.load_modality_classifier(
            other, {**state, "map4.weight": np.zeros(1)}
        )
    missing = dict(state)
    del missing["map3.bias"]
    with pytest.raises(ValueError, match=r"map3\.bias"):
        release.load_modality_classifier(other, missing)
    with pytest.raises(ValueError, match=r"map1\.weight: file \(128, 16\)"):
        release.load_modality_classifier(
            other, {**state, "map1.weight": np.zeros((128, 16))}
        )


def test_bad_sources(tmp_path):
    variables = _random_variables(18, 0)
    with pytest.raises(FileNotFoundError, match="convert_release"):
        release.load_embed_net(variables, tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="convert once with"):
        release.load_embed_net(variables, tmp_path / "best.t")
    with pytest.raises(TypeError, match="source"):
        release.load_embed_net(variables, 3)


def test_describe_embed_net():
    info = release.describe_embed_net(_state(50))
    assert info == {
        "depth": 50,
        "width_multiplier": TINY,
        "non_local_counts": (0, 2, 3, 0),
        "non_local_inter": 1,
        "feature_dim": 128,
        "num_classes": NUM_CLASSES,
    }
    with pytest.raises(ValueError, match="does not look like.*resnet_fc"):
        release.describe_embed_net({**_state(), "resnet_fc.weight": 0})


# -------------------------------------------------------------- converter --


def _env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _torch_state(torch_release, depth=18):
    net = torch_release.make_embed_net(
        num_classes=NUM_CLASSES, width_multiplier=TINY, **NETS[depth]
    )
    return torch_release.randomize_(net, seed=1).state_dict()


def _assert_file_is(path, state):
    got = safetensors_numpy.load_file(str(path))
    assert sorted(got) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(got[key], value.numpy(), err_msg=key)


def test_converter_cli_on_a_release_checkpoint(tmp_path):
    torch = _torch()
    sd = _torch_state(_torch_release())
    src = tmp_path / "best.t"
    torch.save(
        {
            "net": sd,
            "epoch": 3,
            "mAP": np.float64(0.25),
            "cmc": np.linspace(0, 1, 20),
        },
        src,
    )
    out = tmp_path / "best.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mclnet_jax.tools.convert_release",
            f"--input={src}",
            f"--output={out}",
        ],
        cwd=_REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ResNet-18" in proc.stderr and "5 identities" in proc.stderr
    _assert_file_is(out, sd)
    with safetensors.safe_open(str(out), "np") as f:
        assert f.metadata()["epoch"] == "3"
        assert f.metadata()["mAP"] == "0.25"
    variables = release.load_embed_net(_random_variables(18, 0), out)
    np.testing.assert_array_equal(
        variables["params"]["classifier"]["kernel"],
        sd["classifier.weight"].numpy().T,
    )


def test_converter_bare_state_dict_and_modality_classifier(tmp_path):
    torch = _torch()
    torch_release = _torch_release()
    sd = _torch_state(torch_release)
    bare = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, bare)
    info = convert_release.convert(str(bare), str(tmp_path / "b.safetensors"))
    assert info["depth"] == 18 and info["non_local_counts"] == (1, 2, 2, 1)
    _assert_file_is(tmp_path / "b.safetensors", sd)

    mcm = torch_release.make_modality_classifier(feature_dim=32).state_dict()
    both = tmp_path / "both.t"
    torch.save({"net": sd, "disc": mcm}, both)
    info = convert_release.convert(
        str(both),
        str(tmp_path / "n.safetensors"),
        modality_classifier_key="disc",
    )
    mcm_path = tmp_path / "n.modality_classifier.safetensors"
    assert info["outputs"] == [str(tmp_path / "n.safetensors"), str(mcm_path)]
    _assert_file_is(mcm_path, mcm)
    release.load_modality_classifier(_random_mcm(0), mcm_path)

    with pytest.raises(convert_release.ConversionError, match="'nope'"):
        convert_release.convert(
            str(both),
            str(tmp_path / "x.safetensors"),
            modality_classifier_key="nope",
        )
    torch.save({"weights": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "w")
    with pytest.raises(convert_release.ConversionError, match="--net_key"):
        convert_release.convert(
            str(tmp_path / "w"), str(tmp_path / "x.safetensors")
        )
    torch.save({"conv1.weight": torch.zeros(2)}, tmp_path / "tv.pth")
    with pytest.raises(
        convert_release.ConversionError,
        match="does not look like.*conv1.weight",
    ):
        convert_release.convert(
            str(tmp_path / "tv.pth"), str(tmp_path / "x.safetensors")
        )


def test_converter_reads_numpy1_pickles(tmp_path):
    """Checkpoints written in 2021 name numpy.core.multiarray."""
    torch = _torch()
    sd = _torch_state(_torch_release())
    new = tmp_path / "new.t"
    torch.save(
        {
            "net": sd,
            "cmc": np.arange(4, dtype=np.float32),
            "mINP": np.float64(0.5),
        },
        new,
    )
    old = tmp_path / "old.t"
    with zipfile.ZipFile(new) as zin, zipfile.ZipFile(old, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(
                    b"numpy._core.multiarray", b"numpy.core.multiarray"
                )
            zout.writestr(item, data)
    info = convert_release.convert(str(old), str(tmp_path / "o.safetensors"))
    assert info["metadata"]["mINP"] == "0.5"
    _assert_file_is(tmp_path / "o.safetensors", sd)


class _Payload:
    """Unpickling this would create a file: must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_converter_refuses_arbitrary_pickles(tmp_path):
    torch = _torch()
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.t"
    torch.save(
        {"net": _torch_state(_torch_release()), "x": _Payload(str(marker))},
        path,
    )
    assert not marker.exists()
    with pytest.raises(
        convert_release.ConversionError, match="weights_only=True"
    ):
        convert_release.convert(str(path), str(tmp_path / "x.safetensors"))
    assert not marker.exists()


def test_converter_without_torch(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails.
    src = tmp_path / "best.t"
    src.write_bytes(b"not read")
    flags.FLAGS(
        [
            sys.argv[0],
            f"--input={src}",
            f"--output={tmp_path / 'x.safetensors'}",
        ]
    )
    try:
        assert convert_release.main([sys.argv[0]]) == 2
    finally:
        flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err
    assert "pip install torch" in err
    assert not (tmp_path / "x.safetensors").exists()


# ---------------------------------------------------- evaluate, CLI path --


def _tiny_config(**release_checkpoint):
    config = synthetic_recipe.get_config("tiny=1")
    config.init.release_checkpoint = release_checkpoint.get("path")
    return config


def _tiny_num_classes(config):
    """Identities of the SYSU "train" split (train + val ids) it generates."""
    generator = config.data.synthetic["generator"]
    split = synthetic.sysu_split(
        range(1, generator["num_identities"] + 1), seed=generator["seed"]
    )
    return len(split["train"]) + len(split["val"])


def _tiny_torch_state(torch_release, num_classes, depth=18):
    """The release module for configs/synthetic.py:tiny=1."""
    net = torch_release.make_embed_net(
        num_classes=num_classes,
        depth=depth,
        width_multiplier=TINY,
        non_local_counts=(0, 1, 1, 0),
    )
    return {
        k: v.numpy()
        for k, v in torch_release.randomize_(net, seed=2).state_dict().items()
    }


def test_release_state(tmp_path):
    """checkpointing.release_state: its errors, then the loaded state."""
    torch_release = _torch_release()
    from mclnet_jax import checkpointing, train_step

    path = tmp_path / "release.safetensors"
    config = _tiny_config(path=str(path))
    tx, _, mcm_tx = train_step.make_optimizers(config, steps_per_epoch=1)
    model = train_step.make_model(config, num_classes=6)
    abstract_state = jax.eval_shape(
        lambda: train_step.init_state(
            config,
            model=model,
            num_classes=6,
            num_cameras=6,
            tx=tx,
            mcm_tx=mcm_tx,
            load_pretrained=False,
        )
    )

    def release_state(config, run):
        del run
        return checkpointing.release_state(
            config.init.release_checkpoint,
            abstract_state,
            model_config=config.model,
            feature_dim=model.feature_dim,
            num_classes=6,
        )

    run = types.SimpleNamespace(model=model)
    with pytest.raises(train_step.ConfigurationError, match="convert_release"):
        release_state(config, run)
    safetensors_numpy.save_file(_tiny_torch_state(torch_release, 395), path)
    with pytest.raises(
        train_step.ConfigurationError, match="classifies 395 identities.*has 6"
    ):
        release_state(config, run)
    safetensors_numpy.save_file(_tiny_torch_state(torch_release, 6, 50), path)
    with pytest.raises(
        train_step.ConfigurationError,
        match=r"depth: checkpoint 50, config 18.*"
        r"--config\.model\.depth=50",
    ):
        release_state(config, run)
    state_dict = _tiny_torch_state(torch_release, 6)
    safetensors_numpy.save_file(state_dict, path)
    state = release_state(config, run)
    want = release.load_embed_net(
        jax.eval_shape(
            lambda: run.model.init(
                jax.random.key(0), jnp.zeros((1, 32, 16, 3)), train=False
            )
        ),
        state_dict,
    )
    _assert_trees_equal(
        {"params": state.params["model"], "batch_stats": state.batch_stats},
        want,
    )
    np.testing.assert_array_equal(
        state.params["model"]["layer3"]["non_local0"]["theta"]["kernel"],
        state_dict["NL_3.0.theta.weight"].transpose(2, 3, 1, 0),
    )


def test_evaluate_release_checkpoint_cli(tmp_path):
    torch_release = _torch_release()
    workdir = tmp_path / "work"
    path = tmp_path / "release.safetensors"
    num_classes = _tiny_num_classes(_tiny_config())
    safetensors_numpy.save_file(
        _tiny_torch_state(torch_release, num_classes), str(path)
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mclnet_jax.main",
            "--config=configs/synthetic.py:tiny=1",
            f"--workdir={workdir}",
            "--mode=evaluate",
            f"--config.init.release_checkpoint={path}",
        ],
        cwd=_REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "results_release.json") as f:
        results = json.load(f)
    assert results["step"] == 0
    assert results["summary"], results
    with open(workdir / "results_release.txt") as f:
        assert f.read().startswith("step 0")
