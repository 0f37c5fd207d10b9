"""Tests of the ResNet backbone, the non-local block, MCLNet and the MCM.

Numerics are checked against plain numpy written here; parameter counts
against torchvision's published totals; full-size models only via
`jax.eval_shape` (no real initialisation). XLA's optimisations are off for
this module (its programs compile several times faster); the optimised path
is checked against PyTorch in tests/test_pretrained.py and
tests/test_release*.py.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclnet_jax.models import layers, mclnet, non_local, resnet

NUM_CLASSES = 7
WIDTH = 1 / 16  # ResNet-50 with 4..128 channels per stage
IMAGE = (32, 16)  # H, W


pytestmark = pytest.mark.usefixtures("fast_compile")


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _images(seed, n, hw=IMAGE):
    return jax.random.normal(jax.random.key(seed), (n, *hw, 3), jnp.float32)


@pytest.fixture(scope="module")
def tiny():
    """A tiny ResNet-50 MCLNet, its variables, and a jitted apply."""
    model = mclnet.MCLNet(num_classes=NUM_CLASSES, width_multiplier=WIDTH)
    variables = jax.jit(lambda k: model.init(k, _images(0, 1), train=False))(
        jax.random.key(0)
    )

    @jax.jit
    def apply_eval(variables, visible, infrared):
        return model.apply(variables, visible, infrared, train=False)

    return model, variables, apply_eval


@pytest.fixture(scope="module")
def apply_train(tiny):
    """The tiny model's training-mode apply, jitted once for the module.
    The tests share batch shapes (2 visible, 3 infrared images) where they
    can, so that one compiled program serves several of them."""
    return _jit_train(tiny[0])


def _jit_train(model):
    """`model.apply` in training mode (batch statistics updated), jitted:
    compiling the whole network once is faster than running it op by op."""
    return jax.jit(
        lambda variables, visible, infrared: model.apply(
            variables, visible, infrared, train=True, mutable=["batch_stats"]
        )
    )


# ----------------------------------------------------------------- counts ---


@pytest.mark.parametrize(
    "depth, expected",
    [
        # torchvision's totals (11,689,512 / 21,797,672 / 25,557,032 /
        # 44,549,160) minus fc (512*1000+1000 or 2048*1000+1000).
        (18, 11_176_512),
        (34, 21_284_672),
        (50, 23_508_032),
        (101, 42_500_160),
    ],
)
def test_resnet_param_count_matches_torchvision(depth, expected):
    model = resnet.ResNet(depth=depth)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 32, 3)))
    )
    assert _count(shapes["params"]) == expected


def test_mclnet50_param_count():
    model = mclnet.MCLNet(num_classes=395)
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((1, 288, 144, 3)), train=False
        )
    )
    # The release counts 24,359,311 trainable parameters:
    #   23,508,032  ResNet-50 without fc (one stem)
    # +      9,536  second stem: conv1 64*3*7*7 = 9,408 + bn1 2*64
    # +     28,687  non-local: 2 in layer2 (C=512, inter=1) and 3 in layer3
    #               (C=1024): 3*(C+1) theta/phi/g + (C+C) W + 2*C W-BN
    #               = 2*3,587 + 3*7,171
    # +      4,096  BNNeck weight + its frozen bias (2*2048)
    # +    808,960  classifier 2048*395, no bias
    # = 24,359,311.
    # We do not create the frozen, always-zero BNNeck shift: 2,048 fewer.
    release = 23_508_032 + 9_536 + 28_687 + 4_096 + 808_960
    assert release == 24_359_311
    assert _count(shapes["params"]) == release - 2_048 == 24_357_263
    assert "bias" not in shapes["params"]["bnneck"]
    assert "bias" not in shapes["params"]["classifier"]
    assert model.feature_dim == 2048
    assert sorted(shapes["params"]) == sorted(
        [
            "visible_stem",
            "infrared_stem",
            "layer1",
            "layer2",
            "layer3",
            "layer4",
            "bnneck",
            "classifier",
        ]
    )
    # Non-local blocks after the last 2 blocks of layer2, last 3 of layer3.
    assert sorted(
        k for k in shapes["params"]["layer2"] if k.startswith("non_local")
    ) == ["non_local0", "non_local1"]
    assert (
        sum(k.startswith("non_local") for k in shapes["params"]["layer3"]) == 3
    )
    for stage in ("layer1", "layer4"):
        assert not any(
            k.startswith("non_local") for k in shapes["params"][stage]
        )


def test_mclnet50_half_width_non_local_param_count():
    # AGW's intended inter = C/2 (README switch table): per block
    # 3*(C*C/2 + C/2) theta/phi/g + (C/2*C + C) W + 2*C W-BN;
    # layer2 (C=512): 2 * 526,592; layer3 (C=1024): 3 * 2,101,760.
    non_local = 2 * 526_592 + 3 * 2_101_760
    assert non_local == 7_358_464
    shapes = jax.eval_shape(
        lambda: mclnet.MCLNet(num_classes=395, non_local_inter=None).init(
            jax.random.key(0), jnp.zeros((1, 288, 144, 3)), train=False
        )
    )
    assert _count(shapes["params"]) == 24_357_263 - 28_687 + non_local


# ------------------------------------------------------------ init values ---


def test_conv_init_is_kaiming_normal_fan_out():
    shape = (3, 3, 128, 256)
    kernel = np.asarray(resnet.conv_kernel_init(jax.random.key(1), shape))
    expected_std = math.sqrt(2.0 / (3 * 3 * 256))  # fan_out = kh*kw*out
    assert abs(kernel.std() / expected_std - 1) < 0.02
    assert abs(kernel.mean()) < 0.02 * expected_std
    # Normal, not truncated: about 0.27% of samples beyond 3 sigma.
    assert np.mean(np.abs(kernel) > 3 * expected_std) > 0.001


def test_head_and_bn_init(tiny):
    _, variables, _ = tiny
    params, stats = variables["params"], variables["batch_stats"]
    bn1 = params["layer1"]["block0"]["bn1"]
    np.testing.assert_array_equal(bn1["scale"], 1.0)
    np.testing.assert_array_equal(bn1["bias"], 0.0)
    np.testing.assert_array_equal(stats["layer1"]["block0"]["bn1"]["var"], 1.0)
    np.testing.assert_array_equal(stats["layer1"]["block0"]["bn1"]["mean"], 0.0)
    nl_bn = params["layer2"]["non_local0"]["W_bn"]
    np.testing.assert_array_equal(nl_bn["scale"], 0.0)
    np.testing.assert_array_equal(nl_bn["bias"], 0.0)
    scale = np.asarray(params["bnneck"]["scale"])
    assert scale.shape == (128,)
    assert abs(scale.mean() - 1) < 0.005 and 0.005 < scale.std() < 0.015
    kernel = np.asarray(params["classifier"]["kernel"])
    assert kernel.shape == (128, NUM_CLASSES)
    assert 0.0007 < kernel.std() < 0.0013


def test_stems_are_distinct_parameters(tiny):
    _, variables, _ = tiny
    v = variables["params"]["visible_stem"]["conv1"]["kernel"]
    i = variables["params"]["infrared_stem"]["conv1"]["kernel"]
    assert v.shape == i.shape == (7, 7, 3, 4)
    assert not np.allclose(v, i)


# ----------------------------------------------------------------- forward --


def test_train_and_eval_have_same_keys_and_shapes(tiny, apply_train):
    model, variables, apply_eval = tiny
    v, i = _images(1, 2), _images(2, 3)
    out_eval = apply_eval(variables, v, i)
    out_train, updates = apply_train(variables, v, i)
    assert set(out_eval) == set(out_train) == {"pool", "bn", "logits"}
    for out in (out_eval, out_train):
        assert out["pool"].shape == out["bn"].shape == (5, model.feature_dim)
        assert out["logits"].shape == (5, NUM_CLASSES)
        assert all(x.dtype == jnp.float32 for x in out.values())
    # Training updates every running statistic (one call, both modalities).
    new_stats = updates["batch_stats"]
    assert jax.tree.structure(new_stats) == jax.tree.structure(
        variables["batch_stats"]
    )
    assert not np.allclose(new_stats["layer3"]["block0"]["bn1"]["mean"], 0)


def test_both_modalities_are_concatenated_visible_first(tiny):
    _, variables, apply_eval = tiny
    v, i = _images(3, 2), _images(4, 3)
    both = apply_eval(variables, v, i)
    only_v = apply_eval(variables, v, None)
    only_i = apply_eval(variables, None, i)
    for key in ("pool", "bn", "logits"):
        separate = np.concatenate([only_v[key], only_i[key]])
        # Different batch sizes may pick different conv kernels: float32
        # rounding only.
        np.testing.assert_allclose(
            both[key], separate, rtol=1e-4, atol=1e-5 * np.abs(separate).max()
        )


def test_each_modality_uses_its_own_stem(tiny):
    _, variables, apply_eval = tiny
    x = _images(5, 2)
    as_visible = apply_eval(variables, x, None)["pool"]
    as_infrared = apply_eval(variables, None, x)["pool"]
    assert not np.allclose(as_visible, as_infrared, rtol=1e-3)
    # With the visible stem copied into the infrared one they agree.
    params = dict(variables["params"])
    stats = dict(variables["batch_stats"])
    params["infrared_stem"] = params["visible_stem"]
    stats["infrared_stem"] = stats["visible_stem"]
    same = apply_eval({"params": params, "batch_stats": stats}, None, x)
    np.testing.assert_allclose(
        same["pool"],
        as_visible,
        rtol=1e-4,
        atol=1e-5 * np.abs(as_visible).max(),
    )


def test_train_mode_bn_statistics_are_shared_across_modalities(
    tiny, apply_train
):
    # In training the shared layers normalise the concatenated batch, so a
    # modality's features depend on the other modality's images.
    _, variables, _ = tiny
    v = _images(6, 2)
    alone, _ = apply_train(variables, v, None)
    with_ir, _ = apply_train(variables, v, _images(7, 3))
    assert not np.allclose(alone["pool"], with_ir["pool"][:2], rtol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny):
    model, variables, apply_eval = tiny
    model16 = model.clone(dtype=jnp.bfloat16)
    x, y = _images(8, 2), _images(10, 3)
    out16 = jax.jit(lambda v, a, b: model16.apply(v, a, b, train=False))(
        variables, x, y
    )
    out32 = apply_eval(variables, x, y)
    for key in ("pool", "bn", "logits"):
        assert out16[key].dtype == jnp.float32
        rel = np.linalg.norm(out16[key] - out32[key]) / np.linalg.norm(
            out32[key]
        )
        # bfloat16 really computes (not a silent float32 pass), closely.
        assert 0 < rel < 0.05, (key, rel)
    params16 = jax.eval_shape(
        lambda: model16.init(jax.random.key(0), x, train=False)
    )["params"]
    assert {x.dtype for x in jax.tree.leaves(params16)} == {
        jnp.dtype(jnp.float32)
    }
    _, updates = _jit_train(model16)(variables, x, y)
    assert {x.dtype for x in jax.tree.leaves(updates)} == {
        jnp.dtype(jnp.float32)
    }


def test_avg_pooling_and_no_non_local_base_variant(tiny):
    model = mclnet.MCLNet(
        num_classes=NUM_CLASSES,
        width_multiplier=WIDTH,
        non_local_counts=(0, 0, 0, 0),
        pooling="avg",
    )
    x = _images(9, 2)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), x, train=False)
    )
    assert not any("non_local" in k for k in shapes["params"]["layer2"])
    # The variant's variables: the tiny model's without its non-local
    # blocks (no second initialisation to compile).
    variables = {
        collection: {
            name: {
                k: v for k, v in tree.items() if not k.startswith("non_local")
            }
            if name.startswith("layer")
            else tree
            for name, tree in trees.items()
        }
        for collection, trees in tiny[1].items()
    }
    assert jax.tree.structure(variables) == jax.tree.structure(shapes)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, shapes)
    out, state = jax.jit(
        lambda v: model.apply(
            v,
            x,
            train=False,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
    )(variables)
    fmap = np.asarray(state["intermediates"]["layer4"]["__call__"][0])
    np.testing.assert_allclose(
        out["pool"], fmap.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7
    )


def test_gem_pool_matches_numpy():
    x = np.random.default_rng(0).uniform(0, 3, (2, 5, 3, 4)).astype(np.float32)
    expected = (np.mean(x.astype(np.float64) ** 3, axis=(1, 2)) + 1e-12) ** (
        1 / 3
    )
    np.testing.assert_allclose(
        mclnet.gem_pool(jnp.asarray(x)), expected, rtol=1e-6
    )


@pytest.mark.parametrize("last_stride, factor", [(1, 16), (2, 32)])
def test_last_stride_sets_output_resolution(last_stride, factor):
    model = resnet.ResNet(
        depth=18, width_multiplier=WIDTH, last_stride=last_stride
    )
    x = jnp.zeros((1, 64, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    _, state = jax.eval_shape(
        lambda v: model.apply(
            v, x, capture_intermediates=True, mutable=["intermediates"]
        ),
        variables,
    )
    fmap = state["intermediates"]["layer4"]["__call__"][0]
    assert fmap.shape == (1, 64 // factor, 32 // factor, 32)


@pytest.mark.parametrize(
    "depth, dim, counts",
    [(18, 32, (0, 2, 2, 0)), (34, 32, (0, 2, 3, 0)), (101, 128, (0, 2, 3, 0))],
)
def test_other_depths_feature_dim(depth, dim, counts):
    model = mclnet.MCLNet(
        num_classes=3,
        depth=depth,
        width_multiplier=WIDTH,
        non_local_counts=counts,
    )
    x = jnp.zeros((2, *IMAGE, 3))
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), x, x, train=False)[0]
    )
    assert model.feature_dim == dim
    assert out["pool"].shape == (4, dim) and out["logits"].shape == (4, 3)


@pytest.mark.parametrize(
    "kwargs, images, match",
    [
        (dict(depth=42), "v", "depth"),
        (dict(pooling="max"), "v", "pooling"),
        (dict(non_local_counts=(0, 5, 3, 0)), "v", "non_local_counts"),
        (dict(dtype=jnp.float16), "v", "dtype"),
        ({}, "", "both are None"),
        ({}, "vi_mismatch", "share"),
        ({}, "nchw", "NHWC"),
    ],
)
def test_bad_config_and_inputs_raise(kwargs, images, match):
    model = mclnet.MCLNet(num_classes=3, width_multiplier=WIDTH, **kwargs)
    x = jnp.zeros((1, *IMAGE, 3))
    args = {
        "v": (x, None),
        "": (None, None),
        "vi_mismatch": (x, jnp.zeros((1, 16, 16, 3))),
        "nchw": (jnp.zeros((1, 3, *IMAGE)), None),
    }[images]
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(
            lambda: model.init(jax.random.key(0), *args, train=False)
        )


# --------------------------------------------------------------- non-local --


def _numpy_non_local(x, p, bn_stats, inter):
    """Direct evaluation of the AGW block: x + BN(W(theta^T phi / N g))."""
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c).astype(np.float64)

    def conv(name, v):
        return v @ np.asarray(p[name]["kernel"])[0, 0] + np.asarray(
            p[name]["bias"]
        )

    theta, phi, g = conv("theta", flat), conv("phi", flat), conv("g", flat)
    assert theta.shape == (n, h * w, inter)
    affinity = theta @ np.transpose(phi, (0, 2, 1)) / (h * w)  # [n, P, P]
    y = conv("W", affinity @ g)
    scale = np.asarray(p["W_bn"]["scale"])
    y = (y - np.asarray(bn_stats["mean"])) / np.sqrt(
        np.asarray(bn_stats["var"]) + 1e-5
    ) * scale + np.asarray(p["W_bn"]["bias"])
    return (flat + y).reshape(n, h, w, c)


@pytest.mark.parametrize(
    "inter, hw", [(1, (6, 4)), (None, (6, 4)), (None, (3, 2))]
)
def test_non_local_block_matches_numpy(inter, hw):
    # (None, (3, 2)): inter = 8 > P = 6 takes the explicit-affinity branch.
    block = non_local.NonLocalBlock(inter=inter)
    x = jax.random.normal(jax.random.key(0), (2, *hw, 16))
    variables = block.init(jax.random.key(1), x, train=False)
    # At initialisation the block is exactly the identity.
    np.testing.assert_array_equal(block.apply(variables, x, train=False), x)
    # Give W's BatchNorm non-trivial values so the block matters.
    rng = np.random.default_rng(2)
    params = jax.tree.map(np.asarray, variables["params"])
    params["W_bn"] = {
        "scale": rng.uniform(0.5, 1.5, 16).astype(np.float32),
        "bias": rng.normal(0, 0.1, 16).astype(np.float32),
    }
    stats = {
        "W_bn": {
            "mean": rng.normal(0, 0.1, 16).astype(np.float32),
            "var": rng.uniform(0.5, 2, 16).astype(np.float32),
        }
    }
    out = block.apply({"params": params, "batch_stats": stats}, x, train=False)
    expected = _numpy_non_local(
        np.asarray(x), params, stats["W_bn"], 8 if inter is None else 1
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, x, atol=1e-3)


# ---------------------------------------------------------------- BatchNorm --


def test_batchnorm_matches_pytorch_semantics():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 3, 2, 5)).astype(np.float32)
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.key(0), jnp.asarray(x), train=False)
    y, updates = bn.apply(
        variables, jnp.asarray(x), train=True, mutable=["batch_stats"]
    )
    flat = x.reshape(-1, 5).astype(np.float64)
    mean, var = flat.mean(0), flat.var(0)
    np.testing.assert_allclose(
        y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5
    )
    # PyTorch: running = 0.9 * running + 0.1 * batch, unbiased batch variance.
    np.testing.assert_allclose(
        updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5
    )
    np.testing.assert_allclose(
        updates["batch_stats"]["var"],
        0.9 + 0.1 * flat.var(0, ddof=1),
        rtol=1e-5,
    )


# ------------------------------------------------------ modality classifier --


def test_modality_classifier_matches_numpy():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 32)).astype(np.float32)
    mcm = mclnet.ModalityClassifier()
    variables = mcm.init(jax.random.key(0), jnp.asarray(feats), train=False)
    p = jax.tree.map(np.asarray, variables["params"])
    assert p["fc1"]["kernel"].shape == (32, 128)
    assert p["fc2"]["kernel"].shape == (128, 2)
    assert _count(p) == 32 * 128 + 128 + 128 * 2 + 2 + 2 + 2
    # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    assert np.abs(p["fc1"]["kernel"]).max() <= 1 / math.sqrt(32)
    assert np.abs(p["fc1"]["kernel"]).max() > 0.9 / math.sqrt(32)
    stats = {
        "bn": {
            "mean": np.array([0.1, -0.2], np.float32),
            "var": np.array([2.0, 0.5], np.float32),
        }
    }
    logits = mcm.apply(
        {"params": p, "batch_stats": stats}, jnp.asarray(feats), train=False
    )
    hidden = feats @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    raw = hidden @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    expected = (raw - stats["bn"]["mean"]) / np.sqrt(
        stats["bn"]["var"] + 1e-5
    ) * p["bn"]["scale"] + p["bn"]["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    out, _ = mcm.apply(
        variables, jnp.asarray(feats), train=True, mutable=["batch_stats"]
    )
    assert out.shape == (6, 2) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        mcm.apply(variables, jnp.zeros((2, 3, 32)), train=False)


@pytest.mark.parametrize("strides, hw", [(1, (5, 4)), (2, (5, 4)), (2, (6, 3))])
def test_conv1x1_matches_numpy_strided_projection(strides, hw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *hw, 6)).astype(np.float32)
    conv = layers.Conv1x1(
        4, strides=strides, use_bias=True, bias_init=nn.initializers.normal(1.0)
    )
    variables = conv.init(jax.random.key(0), jnp.asarray(x))
    kernel = np.asarray(variables["params"]["kernel"])
    assert kernel.shape == (1, 1, 6, 4)
    # Output pixel (i, j) of a padding-free strided 1x1 conv reads input
    # pixel (i * s, j * s); output size ceil(H / s).
    out_h, out_w = -(-hw[0] // strides), -(-hw[1] // strides)
    expected = np.zeros((2, out_h, out_w, 4))
    for i in range(out_h):
        for j in range(out_w):
            expected[:, i, j] = x[:, i * strides, j * strides] @ kernel[
                0, 0
            ] + np.asarray(variables["params"]["bias"])
    np.testing.assert_allclose(
        conv.apply(variables, jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5
    )
