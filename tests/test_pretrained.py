"""Tests of torchvision-named safetensors import/export and PyTorch parity.

The parity tests build the network a second time from torch.nn.functional
ops, fed the same safetensors file, and compare the eval-mode features. They
need torch (the `parity` extra) and skip with a reason without it.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from mclnet_jax.models import mclnet, pretrained, resnet

TINY = 1 / 16
BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}


# --------------------------------------------- torchvision names, by hand ---


def torchvision_shapes(depth, width=1.0, *, fc_classes=None):
    """torchvision ResNet state-dict keys -> shapes (torch layout), built
    from the published architecture, not from our model."""

    def ch(c):
        return max(1, int(round(c * width)))

    shapes = {}

    def bn(prefix, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (c,)

    stem = ch(64)
    shapes["conv1.weight"] = (stem, 3, 7, 7)
    bn("bn1", stem)
    in_ch = stem
    bottleneck = depth >= 50
    for k, n in enumerate(BLOCKS[depth]):
        w = ch(64 * 2**k)
        out = 4 * w if bottleneck else w
        for i in range(n):
            p = f"layer{k + 1}.{i}"
            if bottleneck:
                shapes[f"{p}.conv1.weight"] = (w, in_ch, 1, 1)
                shapes[f"{p}.conv2.weight"] = (w, w, 3, 3)
                shapes[f"{p}.conv3.weight"] = (out, w, 1, 1)
                bn(f"{p}.bn1", w)
                bn(f"{p}.bn2", w)
                bn(f"{p}.bn3", out)
            else:
                shapes[f"{p}.conv1.weight"] = (w, in_ch, 3, 3)
                shapes[f"{p}.conv2.weight"] = (w, w, 3, 3)
                bn(f"{p}.bn1", w)
                bn(f"{p}.bn2", w)
            # torchvision adds a projection where the stride or width changes
            # (stages 2-4 always stride 2 there; stage 1 only for width).
            if i == 0 and (k > 0 or in_ch != out):
                shapes[f"{p}.downsample.0.weight"] = (out, in_ch, 1, 1)
                bn(f"{p}.downsample.1", out)
            in_ch = out
    if fc_classes:
        shapes["fc.weight"] = (fc_classes, in_ch)
        shapes["fc.bias"] = (fc_classes,)
    return shapes


def random_state(shapes, seed):
    """Random weights with non-trivial BN statistics, torch layout."""
    rng = np.random.default_rng(seed)
    # Small scales on each block's last BN keep the residual stream bounded.
    last_bn = "bn3" if any("conv3" in k for k in shapes) else "bn2"
    state = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[1]
        if len(shape) == 4:  # conv: He-normal on fan_in
            fan_in = math.prod(shape[1:])
            value = rng.normal(0, math.sqrt(2 / fan_in), shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf == "running_mean":
            value = rng.normal(0, 0.2, shape)
        elif leaf == "weight" and len(shape) == 1:  # BN scale
            last = key.endswith(f"{last_bn}.weight") and key != "bn1.weight"
            value = (
                rng.uniform(0.1, 0.4, shape)
                if last
                else rng.uniform(0.5, 1.0, shape)
            )
        else:  # BN / fc bias, fc weight
            value = rng.normal(0, 0.1, shape)
        state[key] = np.ascontiguousarray(value, dtype=np.float32)
    return state


def _backbone_leaves(variables):
    """(path -> array) of every variable except non-local blocks and heads."""
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    out = {}
    for path, value in flat:
        names = [p.key for p in path]
        if "non_local" in "/".join(names) or names[1] in (
            "bnneck",
            "classifier",
        ):
            continue
        out[tuple(names)] = np.asarray(value)
    return out


@pytest.fixture(scope="module")
def tiny_pair():
    """Two tiny ResNet-50 MCLNets' variables: the model's variable tree
    (shapes only, no real initialisation) filled with random values, other
    ones in each (every leaf differs between the two), batch statistics
    included.
    """
    model = mclnet.MCLNet(num_classes=5, width_multiplier=TINY)
    x = jnp.zeros((1, 32, 16, 3))
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), x, train=False)
    )

    def draw(seed):
        rng = np.random.default_rng(seed)
        return jax.tree.map(
            lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes
        )

    a, b = draw(0), draw(1)
    return model, a, b


# --------------------------------------------------------------- round trip --


def test_export_has_exactly_torchvisions_keys_and_shapes(tiny_pair):
    _, a, _ = tiny_pair
    exported = pretrained.state_dict(a)
    expected = torchvision_shapes(50, TINY)
    assert sorted(exported) == sorted(expected)
    for key, shape in expected.items():
        assert exported[key].shape == shape, key
        assert exported[key].dtype == np.float32


def test_round_trip_mclnet(tiny_pair, tmp_path):
    _, a, b = tiny_pair
    path = tmp_path / "backbone.safetensors"
    pretrained.export_mclnet_backbone(a, path)
    loaded = pretrained.load_mclnet_backbone(b, path)
    assert jax.tree.structure(loaded) == jax.tree.structure(b)

    src, got = _backbone_leaves(a), _backbone_leaves(loaded)
    before = _backbone_leaves(b)
    # Not vacuous: every backbone leaf is compared, and b's values differ
    # from a's everywhere, so an unloaded leaf would fail below.
    assert got.keys() == src.keys() == before.keys() and len(got) > 50
    assert not any(np.array_equal(src[k], before[k]) for k in src)
    for path_, value in got.items():
        # Both stems come from conv1/bn1, i.e. the exported visible stem.
        source = tuple(
            "visible_stem" if p == "infrared_stem" else p for p in path_
        )
        np.testing.assert_array_equal(value, src[source], err_msg=str(path_))
    # Non-local blocks and heads keep b's values.
    for name in ("bnneck", "classifier"):
        jax.tree.map(
            np.testing.assert_array_equal,
            loaded["params"][name],
            b["params"][name],
        )
    jax.tree.map(
        np.testing.assert_array_equal,
        loaded["params"]["layer3"]["non_local2"],
        b["params"]["layer3"]["non_local2"],
    )
    # Export -> import -> export gives identical arrays.
    again = pretrained.state_dict(loaded)
    first = safetensors_numpy.load_file(str(path))
    assert sorted(again) == sorted(first)
    for key in first:
        np.testing.assert_array_equal(again[key], first[key], err_msg=key)


def test_export_infrared_stem(tiny_pair):
    _, a, _ = tiny_pair
    vis = pretrained.state_dict(a, stem="visible")
    ir = pretrained.state_dict(a, stem="infrared")
    kernel = np.asarray(a["params"]["infrared_stem"]["conv1"]["kernel"])
    np.testing.assert_array_equal(
        ir["conv1.weight"], kernel.transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(
        ir["bn1.running_var"], a["batch_stats"]["infrared_stem"]["bn1"]["var"]
    )
    assert not np.array_equal(vis["conv1.weight"], ir["conv1.weight"])
    np.testing.assert_array_equal(
        vis["layer2.1.conv2.weight"], ir["layer2.1.conv2.weight"]
    )
    with pytest.raises(ValueError, match="stem"):
        pretrained.state_dict(a, stem="thermal")


@pytest.mark.parametrize("depth, width", [(18, 1 / 8), (50, TINY)])
def test_plain_resnet_round_trip_with_fc(depth, width, tmp_path):
    model = resnet.ResNet(
        depth=depth, width_multiplier=width, num_classes=3, last_stride=2
    )
    x = jnp.ones((2, 32, 32, 3))
    shapes = torchvision_shapes(depth, width, fc_classes=3)
    state = random_state(shapes, seed=3)
    state["bn1.num_batches_tracked"] = np.array(7, np.int64)
    path = tmp_path / "r.safetensors"
    safetensors_numpy.save_file(state, str(path))
    # Shapes only (no real init): every value comes from the file, and one
    # it did not fill would stay zero and fail the comparison below.
    variables = jax.tree.map(
        lambda s: np.zeros(s.shape, s.dtype),
        jax.eval_shape(lambda: model.init(jax.random.key(0), x)),
    )
    loaded = pretrained.load_resnet(variables, path)
    np.testing.assert_array_equal(
        loaded["params"]["fc"]["kernel"], state["fc.weight"].T
    )
    np.testing.assert_array_equal(
        loaded["params"]["layer1"]["block0"]["conv1"]["kernel"],
        state["layer1.0.conv1.weight"].transpose(2, 3, 1, 0),
    )
    out_path = tmp_path / "out.safetensors"
    pretrained.export_resnet(loaded, out_path)
    back = safetensors_numpy.load_file(str(out_path))
    del state["bn1.num_batches_tracked"]
    assert sorted(back) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key], err_msg=key)


# ------------------------------------------------------------------- errors --


def _tiny_state():
    return random_state(torchvision_shapes(50, TINY), seed=1)


def test_fc_and_num_batches_tracked_are_ignored(tiny_pair):
    _, _, b = tiny_pair
    state = _tiny_state()
    state["fc.weight"] = np.zeros((1000, 128), np.float32)
    state["fc.bias"] = np.zeros((1000,), np.float32)
    state["layer1.0.bn1.num_batches_tracked"] = np.array(5, np.int64)
    loaded = pretrained.load_state_dict(b, state)
    np.testing.assert_array_equal(
        loaded["batch_stats"]["layer4"]["block2"]["bn3"]["mean"],
        state["layer4.2.bn3.running_mean"],
    )


def test_missing_key_is_named(tiny_pair):
    _, _, b = tiny_pair
    state = _tiny_state()
    del state["layer3.4.bn2.running_var"]
    with pytest.raises(
        ValueError,
        match=r"lacks 1 key.*layer3\.4\.bn2\."
        r"running_var",
    ):
        pretrained.load_state_dict(b, state)


def test_unexpected_key_is_named(tiny_pair):
    _, _, b = tiny_pair
    state = _tiny_state()
    state["layer3.6.conv1.weight"] = np.zeros((16, 64, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"layer3\.6\.conv1\.weight"):
        pretrained.load_state_dict(b, state)
    # ... unless its prefix is ignored on purpose.
    pretrained.load_state_dict(b, state, ignore_prefixes=("layer3.6.",))


def test_shape_mismatch_is_named(tiny_pair):
    _, _, b = tiny_pair
    state = _tiny_state()
    state["layer2.0.downsample.0.weight"] = np.zeros((32, 16, 3, 3), np.float32)
    with pytest.raises(
        ValueError,
        match=r"layer2\.0\.downsample\.0\.weight"
        r".*\(32, 16, 3, 3\).*\(32, 16, 1, "
        r"1\)",
    ):
        pretrained.load_state_dict(b, state)


def test_wrong_width_or_depth_is_an_error(tiny_pair):
    _, _, b = tiny_pair
    with pytest.raises(ValueError, match="Shape mismatch"):
        pretrained.load_state_dict(
            b, random_state(torchvision_shapes(50, 1 / 8), seed=0)
        )
    with pytest.raises(ValueError, match="lacks"):
        pretrained.load_state_dict(
            b, random_state(torchvision_shapes(18, TINY), seed=0)
        )


def test_file_errors(tiny_pair, tmp_path):
    _, _, b = tiny_pair
    with pytest.raises(ValueError, match="not found"):
        pretrained.load_mclnet_backbone(b, tmp_path / "nope.safetensors")
    pth = tmp_path / "weights.pth"
    pth.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        pretrained.load_mclnet_backbone(b, pth)
    with pytest.raises(ValueError, match="load_resnet"):
        pretrained.load_resnet(b, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="neither"):
        pretrained.state_dict({"params": {"foo": {}}})


# ------------------------------------------------------------ torch parity --


def _torch():
    return pytest.importorskip(
        "torch",
        reason="PyTorch parity tests need torch (pip install "
        "'mclnet_jax[parity]', CPU build)",
    )


def _non_local_and_neck_state(depth, width, counts, inter, seed):
    """Extra weights under "mclnet.*": non-local blocks and BNNeck."""
    rng = np.random.default_rng(seed)
    bottleneck = depth >= 50
    state = {}
    for k, count in enumerate(counts):
        c = max(1, int(round(64 * 2**k * width))) * (4 if bottleneck else 1)
        i_ch = c // 2 if inter is None else inter
        for j in range(count):
            p = f"mclnet.layer{k + 1}.non_local{j}"
            for name, (o, i) in (
                ("theta", (i_ch, c)),
                ("phi", (i_ch, c)),
                ("g", (i_ch, c)),
                ("W", (c, i_ch)),
            ):
                state[f"{p}.{name}.weight"] = rng.normal(
                    0, 1 / math.sqrt(i), (o, i, 1, 1)
                )
                state[f"{p}.{name}.bias"] = rng.normal(0, 0.1, (o,))
            # Non-zero W BatchNorm, so the block is not the identity.
            state[f"{p}.W_bn.weight"] = rng.uniform(0.2, 0.5, (c,))
            state[f"{p}.W_bn.bias"] = rng.normal(0, 0.1, (c,))
            state[f"{p}.W_bn.running_mean"] = rng.normal(0, 0.1, (c,))
            state[f"{p}.W_bn.running_var"] = rng.uniform(0.5, 2, (c,))
    d = max(1, int(round(512 * width))) * (4 if bottleneck else 1)
    state["mclnet.bnneck.weight"] = rng.normal(1, 0.01, (d,))
    state["mclnet.bnneck.running_mean"] = rng.normal(0, 0.5, (d,))
    state["mclnet.bnneck.running_var"] = rng.uniform(0.5, 2, (d,))
    return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


def _set_extra_from_state(variables, state):
    """Test-side mapping of the "mclnet.*" weights into JAX variables."""
    params = jax.tree.map(np.asarray, variables["params"])
    stats = jax.tree.map(np.asarray, variables["batch_stats"])
    for key, value in state.items():
        if not key.startswith("mclnet."):
            continue
        parts = key.split(".")[1:]
        if parts[0] == "bnneck":
            target = {
                "weight": ("params", "scale"),
                "running_mean": ("batch_stats", "mean"),
                "running_var": ("batch_stats", "var"),
            }[parts[1]]
            tree = params if target[0] == "params" else stats
            tree["bnneck"][target[1]] = value
            continue
        layer, block, module, leaf = parts
        if module == "W_bn":
            coll, name = {
                "weight": (params, "scale"),
                "bias": (params, "bias"),
                "running_mean": (stats, "mean"),
                "running_var": (stats, "var"),
            }[leaf]
            coll[layer][block]["W_bn"][name] = value
        elif leaf == "weight":  # [O, I, 1, 1] -> [1, 1, I, O]
            params[layer][block][module]["kernel"] = value.transpose(2, 3, 1, 0)
        else:
            params[layer][block][module]["bias"] = value
    return {"params": params, "batch_stats": stats}


def _torch_reference(
    torch, sd, visible, infrared, *, depth, counts, last_stride
):
    """The eval-mode MCLNet from torch.nn.functional ops: (pool, bn)."""
    F = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in sd.items()}

    def bn(x, p):
        return F.batch_norm(
            x,
            t[f"{p}.running_mean"],
            t[f"{p}.running_var"],
            t[f"{p}.weight"],
            t.get(f"{p}.bias"),
            training=False,
            eps=1e-5,
        )

    def stem(x):
        x = F.conv2d(x, t["conv1.weight"], stride=2, padding=3)
        x = F.relu(bn(x, "bn1"))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)

    def block(x, p, stride):
        if f"{p}.conv3.weight" in t:  # bottleneck, stride on the 3x3
            y = F.relu(bn(F.conv2d(x, t[f"{p}.conv1.weight"]), f"{p}.bn1"))
            y = F.relu(
                bn(
                    F.conv2d(
                        y, t[f"{p}.conv2.weight"], stride=stride, padding=1
                    ),
                    f"{p}.bn2",
                )
            )
            y = bn(F.conv2d(y, t[f"{p}.conv3.weight"]), f"{p}.bn3")
        else:
            y = F.relu(
                bn(
                    F.conv2d(
                        x, t[f"{p}.conv1.weight"], stride=stride, padding=1
                    ),
                    f"{p}.bn1",
                )
            )
            y = bn(F.conv2d(y, t[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
        if f"{p}.downsample.0.weight" in t:
            x = bn(
                F.conv2d(x, t[f"{p}.downsample.0.weight"], stride=stride),
                f"{p}.downsample.1",
            )
        return F.relu(x + y)

    def non_local(x, p):
        n, c, h, w = x.shape

        def conv(name, v):
            return F.conv2d(v, t[f"{p}.{name}.weight"], t[f"{p}.{name}.bias"])

        g = conv("g", x).view(n, -1, h * w).permute(0, 2, 1)  # [n,P,i]
        theta = conv("theta", x).view(n, -1, h * w).permute(0, 2, 1)
        phi = conv("phi", x).view(n, -1, h * w)  # [n,i,P]
        f = torch.matmul(theta, phi) / (h * w)  # [n,P,P]
        y = torch.matmul(f, g).permute(0, 2, 1).reshape(n, -1, h, w)
        return x + bn(conv("W", y), f"{p}.W_bn")

    with torch.no_grad():

        def to_nchw(a):
            return torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2)

        x = torch.cat([stem(to_nchw(visible)), stem(to_nchw(infrared))])
        for k, n in enumerate(BLOCKS[depth]):
            stride = (1, 2, 2, last_stride)[k]
            for i in range(n):
                x = block(x, f"layer{k + 1}.{i}", stride if i == 0 else 1)
                first_nl = n - counts[k]
                if i >= first_nl:
                    x = non_local(
                        x, f"mclnet.layer{k + 1}.non_local{i - first_nl}"
                    )
        pool = (x.pow(3).flatten(2).mean(-1) + 1e-12).pow(1 / 3)
        neck = F.batch_norm(
            pool,
            t["mclnet.bnneck.running_mean"],
            t["mclnet.bnneck.running_var"],
            t["mclnet.bnneck.weight"],
            None,
            training=False,
            eps=1e-5,
        )
    return pool.numpy(), neck.numpy()


def _parity(tmp_path, *, depth, width, counts, inter, hw, tol):
    torch = _torch()
    model = mclnet.MCLNet(
        num_classes=11,
        depth=depth,
        width_multiplier=width,
        non_local_counts=counts,
        non_local_inter=inter,
    )
    state = random_state(torchvision_shapes(depth, width), seed=depth)
    state.update(
        _non_local_and_neck_state(depth, width, counts, inter, seed=depth + 1)
    )
    path = tmp_path / "net.safetensors"
    safetensors_numpy.save_file(state, str(path))
    sd = safetensors_numpy.load_file(str(path))  # what torch is fed

    rng = np.random.default_rng(0)
    visible = rng.normal(size=(1, *hw, 3)).astype(np.float32)
    infrared = rng.normal(size=(1, *hw, 3)).astype(np.float32)
    # Shapes only (no real init), then everything from the file.
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.asarray(visible), train=False)
    )
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    variables = pretrained.load_mclnet_backbone(
        variables, path, ignore_prefixes=("fc.", "mclnet.")
    )
    variables = _set_extra_from_state(variables, sd)
    out = jax.jit(lambda v, a, b: model.apply(v, a, b, train=False))(
        variables, visible, infrared
    )

    ref_pool, ref_bn = _torch_reference(
        torch, sd, visible, infrared, depth=depth, counts=counts, last_stride=1
    )
    for name, ours, ref in (
        ("pool", out["pool"], ref_pool),
        ("bn", out["bn"], ref_bn),
    ):
        ours = np.asarray(ours)
        assert np.all(np.isfinite(ref)) and np.abs(ref).max() > 1e-3
        rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
        assert rel < tol, (name, rel)
        np.testing.assert_allclose(
            ours, ref, rtol=tol, atol=tol * np.abs(ref).max()
        )


@pytest.mark.parametrize(
    "depth, width, counts, inter",
    [
        (50, TINY, (0, 2, 3, 0), None),  # C // 2: both non-local orders
        (18, 1 / 8, (0, 1, 1, 0), 1),  # BasicBlock path
    ],
)
def test_torch_parity_tiny(tmp_path, depth, width, counts, inter):
    _parity(
        tmp_path,
        depth=depth,
        width=width,
        counts=counts,
        inter=inter,
        hw=(64, 32),
        tol=1e-4,
    )


@pytest.mark.slow
def test_torch_parity_resnet50_288x144(tmp_path):
    _parity(
        tmp_path,
        depth=50,
        width=1.0,
        counts=(0, 2, 3, 0),
        inter=1,
        hw=(288, 144),
        tol=1e-4,
    )
