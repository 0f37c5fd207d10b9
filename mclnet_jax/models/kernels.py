"""How the backbone computes its convolutions, products and max-pool.

A `Kernels` is chosen once per model (`MCLNet(kernels=...)`: "xla", "cpu",
"auto" or a `Kernels` of your own) and handed to the stems, the stages,
their blocks and the non-local blocks, which build every convolution with
`Kernels.conv` and pool with `Kernels.max_pool`. Whichever is chosen, the
parameters are the same and so are the results, up to float rounding, in
every dtype (float64 stays float64 throughout).

* `XLA`: XLA's convolutions, products and max-pool.
* `CPU`: the forms of `conv_ops` that are faster on XLA:CPU: Winograd
  F(2x2, 3x3) for stride-1 3x3 convolutions from 128 output channels in
  training and from 64 in evaluation (narrower ones are no faster there and
  keep more memory for the backward pass), bfloat16 products whose
  gradients stay bfloat16 products (`conv_ops.matmul`), and the max-pool
  whose backward pass needs no index arrays. Figures in benchmarks/README.md
  ("train_step.py", "model_forward.py").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from mclnet_jax.models import conv_ops, layers

NAMES = ("auto", "xla", "cpu")


def flax_max_pool(x: jax.Array) -> jax.Array:
    """ResNet's 3x3 stride-2 max-pool, padded with -inf like PyTorch's."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The implementations of the backbone's operations.

    Attributes:
      name: shown in errors and logs.
      winograd_min_channels: stride-1 3x3 convolutions with at least this
        many output channels run as `layers.WinogradConv3x3` in training;
        None: never.
      winograd_min_channels_eval: the same in evaluation.
      low_precision_product: `product(x, w)` for 1x1 convolutions whose
        compute dtype is below 32 bits (bfloat16), returning float32; None:
        `jnp.dot` in that dtype.
      max_pool: the stem's 3x3 stride-2 max-pool.
    """

    name: str
    winograd_min_channels: int | None = None
    winograd_min_channels_eval: int | None = None
    low_precision_product: Callable | None = None
    max_pool: Callable[[jax.Array], jax.Array] = flax_max_pool

    def conv(
        self,
        features: int,
        kernel: int,
        strides: int,
        *,
        dtype: Any,
        train: bool,
        name: str,
        kernel_init: Any,
        use_bias: bool = False,
        bias_init: Any = nn.initializers.zeros,
    ) -> nn.Module:
        """A convolution with PyTorch's symmetric padding (kernel // 2);
        parameters "kernel" [k, k, C_in, features] (and "bias")."""
        if kernel == 1:
            return layers.Conv1x1(
                features,
                strides=strides,
                use_bias=use_bias,
                kernel_init=kernel_init,
                bias_init=bias_init,
                dtype=dtype,
                low_precision_product=self.low_precision_product,
                name=name,
            )
        threshold = (
            self.winograd_min_channels
            if train
            else self.winograd_min_channels_eval
        )
        if (
            kernel == 3
            and strides == 1
            and not use_bias
            and threshold is not None
            and features >= threshold
        ):
            return layers.WinogradConv3x3(
                features, kernel_init=kernel_init, dtype=dtype, name=name
            )
        pad = kernel // 2
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=(strides, strides),
            padding=((pad, pad), (pad, pad)),
            use_bias=use_bias,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=dtype,
            param_dtype=layers.param_dtype(dtype),
            name=name,
        )


XLA = Kernels("xla")
CPU = Kernels(
    "cpu",
    winograd_min_channels=128,
    winograd_min_channels_eval=64,
    low_precision_product=conv_ops.matmul,
    max_pool=conv_ops.max_pool_3x3_s2,
)


def resolve(kernels: str | Kernels) -> Kernels:
    """`kernels` itself, or the `Kernels` a name stands for ("auto": `CPU`
    when JAX's default backend is the CPU, else `XLA`).

    Raises:
      ValueError: an unknown name.
    """
    if isinstance(kernels, Kernels):
        return kernels
    if kernels == "auto":
        return CPU if jax.default_backend() == "cpu" else XLA
    if kernels == "cpu":
        return CPU
    if kernels == "xla":
        return XLA
    raise ValueError(
        f"kernels must be one of {NAMES} or a models.kernels.Kernels, got "
        f"{kernels!r}."
    )
