"""Layers shared by the models: PyTorch-style BatchNorm, convolutions, inits."""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mclnet_jax.models import conv_ops

# PyTorch's BatchNorm epsilon; its momentum 0.1 is Flax's decay 0.9.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def param_dtype(dtype: Any) -> Any:
    """Parameter and statistics dtype for a compute dtype.

    float32, except float64 for float64 compute (the exact-parity mode,
    which needs `jax_enable_x64`); bfloat16 compute keeps float32 parameters.
    """
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def torch_default_kernel_init() -> Any:
    """PyTorch's default Conv/Linear weight init: U(+-1/sqrt(fan_in)).

    (kaiming_uniform_ with a = sqrt(5), i.e. variance 1 / (3 fan_in).)
    """
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Any:
    """PyTorch's default Conv/Linear bias init: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with PyTorch's semantics.

    Differences from `flax.linen.BatchNorm`, all to match PyTorch: the running
    variance is updated with the unbiased batch variance (n / (n - 1)), and
    the batch variance is computed as mean((x - mean)^2) rather than
    E[x^2] - E[x]^2. Statistics are computed in float32 (float64 for float64
    inputs or dtype).

    Variables: params "scale" [C] and (if `use_bias`) "bias" [C];
    batch_stats "mean" [C] and "var" [C].

    Attributes:
      use_bias: create a learnable shift ("bias"). BNNeck has none.
      scale_init: initialiser of "scale".
      momentum: running-average decay, Flax convention (PyTorch's 1 - momentum).
      epsilon: added to the variance.
      dtype: output dtype; None keeps the input's.
    """

    use_bias: bool = True
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x: [..., C]; returns the normalised x, same shape."""
        features = x.shape[-1]
        out_dtype = self.dtype or x.dtype
        sdt = jnp.promote_types(param_dtype(out_dtype), param_dtype(x.dtype))
        scale = self.param("scale", self.scale_init, (features,), sdt)
        bias = (
            self.param("bias", self.bias_init, (features,), sdt)
            if self.use_bias
            else None
        )
        ra_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), sdt)
        )
        ra_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((features,), sdt)
        )
        if train:
            axes = tuple(range(x.ndim - 1))
            xs = x.astype(sdt)
            mean = jnp.mean(xs, axis=axes)
            var = jnp.mean(jnp.square(xs - mean), axis=axes)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        # Fold into one multiply-add; done in float32, then cast once.
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        add = -mean * mul
        if bias is not None:
            add = add + bias
        if jnp.finfo(out_dtype).bits >= 32 or jnp.finfo(x.dtype).bits >= 32:
            y = x.astype(sdt) * mul + add
        else:
            y = x * mul.astype(x.dtype) + add.astype(x.dtype)
        return y.astype(out_dtype)


class Conv1x1(nn.Module):
    """1x1 convolution computed as a matrix product, NHWC.

    Same parameters as `nn.Conv(features, (1, 1))` ("kernel" [1, 1, C_in,
    features], optional "bias" [features]) so checkpoints map unchanged, but
    lowered to a dot, which XLA:CPU runs faster than a convolution (see
    benchmarks/README.md). A stride subsamples the input first (what a
    padding-free strided 1x1 convolution computes).

    Attributes:
      features: output channels.
      strides: spatial stride (both axes).
      use_bias: add a learnable bias.
      kernel_init, bias_init: initialisers.
      dtype: compute dtype; parameters are float32 (float64 for float64).
      low_precision_product: in a dtype below 32 bits, `product(x, w)`
        (float32 result) instead of `jnp.dot`, e.g. `conv_ops.matmul`
        (float32 accumulation, fast on XLA:CPU); see `kernels.Kernels`.
    """

    features: int
    strides: int = 1
    use_bias: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32
    low_precision_product: Callable | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, ceil(H / s), ceil(W / s), features]."""
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (1, 1, in_features, self.features),
            param_dtype(self.dtype),
        )
        if self.strides != 1:
            x = x[:, :: self.strides, :: self.strides, :]
        # As a 2-D [N*H*W, C_in] x [C_in, features] product: the weight
        # gradient is then one dot contracting rows. From the 4-D form,
        # XLA:CPU first transposes the output gradient to [features, N*H*W].
        x2 = x.reshape(-1, in_features).astype(self.dtype)
        product = self.low_precision_product
        if product is not None and jnp.finfo(self.dtype).bits < 32:
            y = product(x2, kernel[0, 0]).astype(self.dtype)
        else:
            y = jnp.dot(x2, kernel[0, 0].astype(self.dtype))
        y = y.reshape(x.shape[:-1] + (self.features,))
        if self.use_bias:
            bias = self.param(
                "bias",
                self.bias_init,
                (self.features,),
                param_dtype(self.dtype),
            )
            y = y + bias.astype(self.dtype)
        return y


class WinogradConv3x3(nn.Module):
    """Bias-free stride-1 3x3 convolution with padding 1, NHWC, computed by
    `conv_ops.winograd_conv3x3` (faster on XLA:CPU from about 128 channels).

    The parameter of `nn.Conv(features, (3, 3), use_bias=False)` ("kernel"
    [3, 3, C_in, features]) and its result up to float rounding.

    Attributes:
      features: output channels.
      kernel_init: initialiser.
      dtype: compute dtype; the kernel is float32 (float64 for float64).
    """

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, H, W, features]."""
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (3, 3, x.shape[-1], self.features),
            param_dtype(self.dtype),
        )
        return conv_ops.winograd_conv3x3(x.astype(self.dtype), kernel)
