"""The XLA:CPU forms of the model (`conv_ops`, `kernels="cpu"`) and remat.

Each form must compute what the plain form computes, up to float rounding:
Winograd against `lax.conv_general_dilated` (values and both gradients),
the bfloat16 product against a float32 product of the same bfloat16
inputs, the max-pool against `flax.linen.max_pool` (ties included), then
the whole MCLNet with `kernels="cpu"` against `kernels="xla"`, and the
training step with rematerialised blocks or stages against the plain one;
`remat.checkpointed_call` must also keep less memory.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_train
from flax import linen as nn
from jax import lax

from mclnet_jax.models import conv_ops, kernels, mclnet, remat

F32 = jnp.float32
# XLA's optimisations off while this module runs (its programs compile
# several times faster); every check here compares two forms compiled alike.
pytestmark = pytest.mark.usefixtures("fast_compile")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _lax_conv3x3(x, kernel):
    return lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _value_and_vjp(fn, g, *args):
    """fn(*args) and its vjp applied to the cotangent g, in one compiled
    program (op by op, each small operation would compile on its own)."""

    @jax.jit
    def both(g, *args):
        out, vjp = jax.vjp(fn, *args)
        return out, vjp(g)

    return both(g, *args)


@pytest.mark.parametrize("shape", [(2, 8, 6, 5, 7), (3, 7, 5, 4, 3)])
def test_winograd_equals_lax_conv_with_gradients(shape):
    n, h, w, c, co = shape  # Odd sizes: partial tiles at the edges.
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, h, w, c), F32)
    kernel = jax.random.normal(kk, (3, 3, c, co), F32)
    g = jax.random.normal(kg, (n, h, w, co), F32)
    want, want_grads = _value_and_vjp(_lax_conv3x3, g, x, kernel)
    got, got_grads = _value_and_vjp(conv_ops.winograd_conv3x3, g, x, kernel)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5)


def test_winograd_in_bfloat16_is_close_and_keeps_the_dtype():
    kx, kk = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (2, 6, 6, 8), F32).astype(jnp.bfloat16)
    kernel = jax.random.normal(kk, (3, 3, 8, 8), F32)
    got = jax.jit(conv_ops.winograd_conv3x3)(x, kernel)
    assert got.dtype == jnp.bfloat16
    want = _lax_conv3x3(x.astype(F32), kernel)
    assert _rel(got, want) < 1e-2


def test_winograd_in_float64_is_exact_to_float64_rounding():
    # The float64 parity mode: transforms, products and gradients in
    # float64 (a float32 step anywhere would leave errors of ~1e-7).
    with jax.enable_x64(True):
        f64 = jnp.float64
        kx, kk, kg = jax.random.split(jax.random.key(5), 3)
        x = jax.random.normal(kx, (2, 7, 5, 6), f64)
        kernel = jax.random.normal(kk, (3, 3, 6, 4), f64)
        g = jax.random.normal(kg, (2, 7, 5, 4), f64)
        want, want_grads = _value_and_vjp(_lax_conv3x3, g, x, kernel)
        got, got_grads = _value_and_vjp(conv_ops.winograd_conv3x3, g, x, kernel)
        assert got.dtype == f64
        assert all(a.dtype == f64 for a in got_grads)
        for a, b in zip((got, *got_grads), (want, *want_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_winograd_refuses_other_kernel_sizes():
    with pytest.raises(ValueError, match="3x3"):
        conv_ops.winograd_conv3x3(
            jnp.ones((1, 4, 4, 2)), jnp.ones((5, 5, 2, 2))
        )


def test_matmul_equals_a_float32_product_and_its_gradients():
    kx, kw, kg = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (64, 24), F32).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (24, 16), F32)
    g = jax.random.normal(kg, (64, 16), F32)

    def reference(x, w):
        # The same bfloat16 inputs, multiplied and accumulated in float32.
        return x.astype(F32) @ w.astype(jnp.bfloat16).astype(F32)

    got, (gx, gw) = _value_and_vjp(conv_ops.matmul, g, x, w)
    want, (wx, ww) = _value_and_vjp(reference, g, x, w)
    assert got.dtype == F32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert gx.dtype == jnp.bfloat16 and gw.dtype == F32
    # The backward products take the cotangent in bfloat16 (rounded once)
    # and accumulate in float32; dx is rounded to bfloat16 once.
    assert _rel(gx, wx) < 1e-2
    assert _rel(gw, ww) < 1e-2


def test_transposed_is_the_transpose():
    a = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(conv_ops.transposed(a), a.T)


@pytest.mark.parametrize("shape", [(2, 9, 7, 3), (2, 8, 6, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_equals_flax_max_pool_with_gradients(shape, ties):
    x = jax.nn.relu(jax.random.normal(jax.random.key(3), shape, F32))
    if ties:  # Many equal values, zeros included: the first maximum wins.
        x = jnp.round(x * 2) / 2

    def reference(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    out_shape = jax.eval_shape(reference, x).shape
    g = jax.random.normal(jax.random.key(4), out_shape, F32)
    want, (want_grad,) = _value_and_vjp(reference, g, x)
    got, (got_grad,) = _value_and_vjp(conv_ops.max_pool_3x3_s2, g, x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-6)


def _outputs_and_grads(model, variables, images):
    def loss(params):
        out, _ = model.apply(
            {**variables, "params": params},
            images,
            images[::-1],
            train=True,
            mutable=["batch_stats"],
        )
        # Fixed random weights: every output's gradient is non-trivial.
        keys = jax.random.split(jax.random.key(7), 3)
        total = sum(
            jnp.sum(out[name] * jax.random.normal(k, out[name].shape))
            for k, name in zip(keys, ("pool", "bn", "logits"), strict=True)
        )
        return total, out

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])


_TINY = dict(
    num_classes=5, depth=18, width_multiplier=1 / 16,
    non_local_counts=(0, 1, 1, 0),
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_net(fast_compile):
    """(variables, images) of the tiny float32 MCLNet, initialised once."""
    del fast_compile
    images = jax.random.normal(jax.random.key(5), (4, 32, 16, 3), F32)
    xla = mclnet.MCLNet(kernels="xla", **_TINY)
    init = jax.jit(lambda key: xla.init(key, images, images, train=False))
    return init(jax.random.key(6)), images


# The CPU kernels with Winograd from 8 channels, so that the tiny network
# uses it (tests/test_float64_paths.py takes the real thresholds).
_TINY_CPU = dataclasses.replace(
    kernels.CPU, winograd_min_channels=8, winograd_min_channels_eval=8
)


def _models(dtype):
    kwargs = dict(_TINY, dtype=jnp.dtype(dtype))
    return (
        mclnet.MCLNet(kernels=_TINY_CPU, **kwargs),
        mclnet.MCLNet(kernels="xla", **kwargs),
    )


def _eval(model, variables, images):
    return jax.jit(lambda v, x: model.apply(v, x, x, train=False))(
        variables, images
    )


def test_cpu_kernels_equal_xla_kernels(tiny_net):
    variables, images = tiny_net
    cpu, xla = _models("float32")
    assert jax.tree.structure(
        jax.eval_shape(
            lambda: cpu.init(jax.random.key(6), images, images, train=False)
        )
    ) == jax.tree.structure(variables)
    jaxpr = jax.make_jaxpr(lambda v: cpu.apply(v, images, images, train=False))(
        variables
    )
    assert "custom_vjp_call" in str(jaxpr)  # The max-pool's, at least.
    # Train mode: batch statistics, their update, and the gradients.
    got_grads, got = _outputs_and_grads(cpu, variables, images)
    want_grads, want = _outputs_and_grads(xla, variables, images)
    for name in ("pool", "bn", "logits"):
        assert _rel(got[name], want[name]) < 1e-4, name
    flat = jax.tree_util.tree_flatten_with_path(got_grads)[0]
    wants = [np.asarray(w, np.float64) for w in jax.tree.leaves(want_grads)]
    scale = np.sqrt(sum(np.sum(w**2) for w in wants))
    # Each leaf within 1e-4 of its own size, or of 1e-3 of the whole
    # gradient (gradients that batch normalisation makes zero are noise).
    for (path, g), w in zip(flat, wants, strict=True):
        err = np.linalg.norm(np.asarray(g, np.float64) - w)
        bound = 1e-4 * max(np.linalg.norm(w), 1e-3 * scale)
        assert err <= bound, (jax.tree_util.keystr(path), err, bound)


def test_cpu_kernels_in_bfloat16_are_as_close_as_xla_bfloat16(tiny_net):
    # Eval mode: in train mode this tiny deep network turns bfloat16
    # rounding into O(1) differences whatever the kernels.
    variables, images = tiny_net
    want = _eval(mclnet.MCLNet(kernels="xla", **_TINY), variables, images)
    cpu, xla = _models("bfloat16")
    got = _eval(cpu, variables, images)
    plain = _eval(xla, variables, images)
    for name in ("pool", "bn", "logits"):
        assert _rel(got[name], want[name]) < 2e-2, name
        assert _rel(got[name], want[name]) < 2 * _rel(plain[name], want[name])


def test_auto_kernels_follow_the_backend(monkeypatch):
    # The tests run on the CPU backend; "auto" must pick XLA's forms on any
    # other backend (GPU, TPU), where the XLA:CPU forms are slower.
    assert kernels.resolve("auto") is kernels.CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert kernels.resolve("auto") is kernels.XLA
    assert kernels.resolve("cpu") is kernels.CPU
    assert kernels.resolve(_TINY_CPU) is _TINY_CPU


def test_kernels_and_remat_are_checked():
    images = jnp.zeros((1, 32, 16, 3))
    for kwargs, match in (
        (dict(kernels="gpu"), "kernels must be one of"),
        (dict(remat="all"), "remat must be one of"),
    ):
        model = mclnet.MCLNet(num_classes=3, width_multiplier=1 / 16, **kwargs)
        with pytest.raises(ValueError, match=match):
            model.init(jax.random.key(0), images, train=False)


@pytest.fixture(scope="module")
def plain_steps(fast_compile):
    del fast_compile
    return _run(test_train.tiny_config())


def _run(config, num_steps=2):
    _, _, _, state, step = test_train.setup(config)
    step = jax.jit(step)
    for batch in test_train.tiny_batches(num_steps):
        state, metrics = step(state, batch)
    return test_train.flat_state(jax.device_get(state)), metrics


@pytest.mark.parametrize("remat", ["blocks", "stages"])
def test_remat_step_equals_the_plain_step(plain_steps, fast_compile, remat):
    del fast_compile
    config = test_train.tiny_config()
    config.model.remat = remat
    got, got_metrics = _run(config)
    want, want_metrics = plain_steps
    assert got.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6)
    for key, value in want_metrics.items():
        np.testing.assert_allclose(got_metrics[key], value, rtol=1e-5)


class _TanhBlock(nn.Module):
    """Three Dense + BatchNorm + tanh layers: a block worth recomputing."""

    @nn.compact
    def __call__(self, x, train):
        for _ in range(3):
            x = nn.Dense(64)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = jnp.tanh(x)
        return x


class _TanhChain(nn.Module):
    remat: str  # "none" or "checkpointed_call"

    @nn.compact
    def __call__(self, x, train):
        for i in range(6):
            block = _TanhBlock(name=f"block{i}")
            if self.remat == "checkpointed_call":
                x = remat.checkpointed_call(block, x, train)
            else:
                x = block(x, train)
        return jnp.sum(x**2)


def test_checkpointed_call_keeps_the_gradients_and_less_memory():
    # In float64: recomputing the forward may sum in another order, and
    # float32 rounding would then show at 1e-4 (XLA:CPU's emitters differ).
    with jax.enable_x64(True):
        _check_checkpointed_call()


def _check_checkpointed_call():
    x = jax.random.normal(jax.random.key(0), (2048, 64), jnp.float64)
    variables = _TanhChain("none").init(jax.random.key(1), x, False)

    def grads(remat):
        def loss(params):
            return _TanhChain(remat).apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                True,
                mutable=["batch_stats"],
            )

        fn = jax.jit(jax.grad(loss, has_aux=True))
        compiled = fn.lower(variables["params"]).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        return fn(variables["params"]), temp

    (want_grads, want_stats), plain_temp = grads("none")
    (got_grads, got_stats), temp = grads("checkpointed_call")
    # atol: the bias gradients that batch normalisation makes zero are
    # float64 noise (1e-14).
    for want, got in ((want_grads, got_grads), (want_stats, got_stats)):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                a, b, rtol=1e-6, atol=1e-10
            ),
            want,
            got,
        )
    # Each block's 3 x 2 activations of 2048 x 64 doubles are not kept.
    activation_bytes = 6 * 6 * 2048 * 64 * 8
    assert plain_temp - temp > activation_bytes // 2, (plain_temp, temp)
