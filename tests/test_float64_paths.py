"""float64 mode is float64 on every path, and every kernel branch is taken.

The float64 mode exists for exact parity with PyTorch, so no value on its
compute path may be rounded to float32. These checks trace (never compile)
the training step and the evaluation forward of MCLNet at full ResNet-50
widths on 32x16 images, with the default kernels ("auto": the XLA:CPU
forms on this backend), where every kernel path is active: Winograd from
128 channels in training and from 64 in evaluation, the index-free
max-pool, 1x1 convolutions as products, rematerialised blocks. The audit
walks every equation of the jaxpr, sub-programs included (custom_vjp
forwards and backwards, remat, pjit), and lists each floating value that is
not float64 with the source line that made it. Nothing is allow-listed:
the step has no value that must be lower (its one former float32 value, the
MCM accuracy metric, is computed in the logits' dtype).

The implementation each convolution takes is read with
`flax.linen.intercept_methods` and compared with the counts worked out by
hand from ResNet-50's layout, at the real thresholds: each side of each
shape-dependent branch of `resnet._conv` is taken.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_steps
from flax import linen as nn
from jax._src import source_info_util

from mclnet_jax import train_step
from mclnet_jax.models import kernels as kernels_lib
from mclnet_jax.models import layers, mclnet

HEIGHT, WIDTH = 32, 16


def _full_width_config(*, remat: str = "none"):
    config = tiny_steps.tiny_config()
    config.model.depth = 50
    config.model.width_multiplier = 1.0
    config.model.non_local_counts = (0, 2, 3, 0)  # AGW's placement.
    config.model.dtype = "float64"
    config.model.remat = remat
    config.data.image_size = (HEIGHT, WIDTH)
    return config


def _sub_jaxprs(params):
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def lower_precision_values(jaxpr) -> list[str]:
    """Every equation (sub-jaxprs included) with a floating output that is
    not float64, as "primitive dtype at file:line"."""
    found = []
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            dtype = getattr(var.aval, "dtype", None)
            if (
                dtype is not None
                and jnp.issubdtype(dtype, jnp.floating)
                and dtype != jnp.float64
            ):
                where = source_info_util.summarize(eqn.source_info)
                found.append(f"{eqn.primitive.name} {dtype} at {where}")
        for sub in _sub_jaxprs(eqn.params):
            found.extend(lower_precision_values(sub))
    return found


def _primitives(jaxpr) -> collections.Counter:
    counts = collections.Counter(e.primitive.name for e in jaxpr.eqns)
    for eqn in jaxpr.eqns:
        for sub in _sub_jaxprs(eqn.params):
            counts.update(_primitives(sub))
    return counts


def conv_implementations(model, *, train: bool) -> collections.Counter:
    """(implementation, kernel size, stride) -> count over the model's
    convolutions, read while tracing its initialisation (nothing runs)."""
    seen = collections.Counter()

    def record(next_fn, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__":
            if isinstance(module, layers.WinogradConv3x3):
                seen["winograd", 3, 1] += 1
            elif isinstance(module, layers.Conv1x1):
                seen["conv1x1", 1, module.strides] += 1
            elif isinstance(module, nn.Conv):
                seen["lax", module.kernel_size[0], module.strides[0]] += 1
        return next_fn(*args, **kwargs)

    images = jax.ShapeDtypeStruct((2, HEIGHT, WIDTH, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x, x, train=train), images
        )
    return seen


def _traced_step(config, batch_dtype=np.float32):
    model = train_step.make_model(config, num_classes=tiny_steps.NUM_CLASSES)
    tx, schedule, mcm_tx = train_step.make_optimizers(config, steps_per_epoch=3)
    state = jax.eval_shape(
        lambda: train_step.init_state(
            config,
            model=model,
            num_classes=tiny_steps.NUM_CLASSES,
            num_cameras=6,
            tx=tx,
            mcm_tx=mcm_tx,
            load_pretrained=False,
        )
    )
    step = train_step.make_train_step(
        config, model=model, tx=tx, schedule=schedule, mcm_tx=mcm_tx
    )
    # The input pipeline delivers float32 images; the model casts them.
    batch = tiny_steps.tiny_batches(1, size=(HEIGHT, WIDTH), dtype=batch_dtype)[
        0
    ]
    return model, state, jax.make_jaxpr(step)(state, batch)


@pytest.mark.parametrize("remat", ["none", "stages"])
def test_float64_training_step_has_no_lower_precision_value(remat):
    with jax.enable_x64(True):
        config = _full_width_config(remat=remat)
        model, state, jaxpr = _traced_step(config)
        assert model.kernels == "auto" and jax.default_backend() == "cpu"
        # Every kernel path is on this program's path.
        kinds = conv_implementations(model, train=True)
        assert kinds["winograd", 3, 1] > 0 and kinds["conv1x1", 1, 1] > 0
        primitives = _primitives(jaxpr.jaxpr)
        assert primitives["custom_vjp_call"] > 0  # The max-pool (and remat).
        assert {str(x.dtype) for x in jax.tree.leaves(state)} >= {"float64"}
        floating = {
            str(x.dtype)
            for x in jax.tree.leaves(state)
            if jnp.issubdtype(x.dtype, jnp.floating)
        }
        assert floating == {"float64"}, floating
        found = lower_precision_values(jaxpr.jaxpr)
        assert not found, "\n".join(found[:20])


def test_float64_eval_forward_has_no_lower_precision_value():
    with jax.enable_x64(True):
        model = train_step.make_model(
            _full_width_config(), num_classes=tiny_steps.NUM_CLASSES
        )
        images = jax.ShapeDtypeStruct((2, HEIGHT, WIDTH, 3), jnp.float32)
        variables = jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x, x, train=False), images
        )
        jaxpr = jax.make_jaxpr(
            lambda v, x: model.apply(v, x, None, train=False)
        )(variables, images)
        assert conv_implementations(model, train=False)["winograd", 3, 1] > 0
        found = lower_precision_values(jaxpr.jaxpr)
        assert not found, "\n".join(found[:20])


def test_the_audit_sees_a_float32_value_inside_a_custom_vjp():
    # The audit itself: a float32 rounding hidden in a custom_vjp backward.
    @jax.custom_vjp
    def f(x):
        return x * 2.0

    f.defvjp(
        lambda x: (f(x), None),
        lambda _, g: ((g.astype(jnp.float32) * 2).astype(g.dtype),),
    )
    with jax.enable_x64(True):
        x = jnp.ones(3, jnp.float64)
        jaxpr = jax.make_jaxpr(jax.grad(lambda x: f(x).sum()))(x)
        found = lower_precision_values(jaxpr.jaxpr)
    assert found and all("float32" in line for line in found), found


# ResNet-50 (last stride 1), 3x3 convolutions per stage, one per bottleneck:
# layer1 width 64 (3 blocks, stride 1), layer2 128 (4 blocks, the first
# strided), layer3 256 (6, the first strided), layer4 512 (3, stride 1).
# Training: Winograd from 128 channels -> 3 + 5 + 3 = 11 convolutions;
# layer1's three and the two strided ones stay lax. Evaluation: from 64
# channels -> 3 + 3 + 5 + 3 = 14, the two strided ones lax.
_EXPECTED_3X3 = {
    ("cpu", True): {("winograd", 3, 1): 11, ("lax", 3, 1): 3, ("lax", 3, 2): 2},
    ("cpu", False): {("winograd", 3, 1): 14, ("lax", 3, 2): 2},
    ("xla", True): {("lax", 3, 1): 14, ("lax", 3, 2): 2},
    ("xla", False): {("lax", 3, 1): 14, ("lax", 3, 2): 2},
}
# 1x1 convolutions, products with either kernels: 2 per bottleneck (16),
# one downsample per stage (layer2's and layer3's strided), and theta, phi,
# g and W of each of the 5 non-local blocks.
_EXPECTED_1X1 = {("conv1x1", 1, 1): 16 * 2 + 2 + 5 * 4, ("conv1x1", 1, 2): 2}


@pytest.mark.parametrize(("kernels", "train"), list(_EXPECTED_3X3))
def test_each_side_of_the_winograd_thresholds(kernels, train):
    assert kernels_lib.CPU.winograd_min_channels == 128
    assert kernels_lib.CPU.winograd_min_channels_eval == 64
    model = mclnet.MCLNet(
        num_classes=3,
        depth=50,
        non_local_counts=(0, 2, 3, 0),
        kernels=kernels,
    )
    kinds = conv_implementations(model, train=train)
    assert {k: v for k, v in kinds.items() if k[1] == 3} == _EXPECTED_3X3[
        kernels, train
    ]
    assert {k: v for k, v in kinds.items() if k[1] == 1} == _EXPECTED_1X1
    # The two modality stems' 7x7 convolutions.
    assert {k: v for k, v in kinds.items() if k[1] == 7} == {("lax", 7, 2): 2}
