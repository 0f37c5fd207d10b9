"""ResNet-18/34/50/101 in Flax linen, NHWC, laid out like torchvision.

Parameter names mirror torchvision's modules (`stem/{conv1, bn1}`,
`layerK/block{i}/{conv1, bn1, ..., downsample_conv, downsample_bn}`) so
ImageNet weights map one to one (`pretrained`). As in torchvision: the
bottleneck's stride on its 3x3 convolution ("v1.5"), Kaiming-normal
(fan_out) kernels, BatchNorm scale 1 and bias 0. Stem and stages are
separate modules so that MCLNet can give each modality its own stem.
docs/design.md "Model".
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mclnet_jax.models import kernels as kernels_lib
from mclnet_jax.models import layers
from mclnet_jax.models import non_local as non_local_lib
from mclnet_jax.models import remat as remat_lib

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), i.e. a
# (non-truncated) normal with variance 2 / (out_channels * kh * kw).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64


def check_depth(depth: int) -> None:
    """Raises ValueError unless `depth` is a supported ResNet depth."""
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(
            f"Unsupported ResNet depth {depth!r}; use one of "
            f"{sorted(BLOCKS_PER_STAGE)}."
        )


def expansion(depth: int) -> int:
    """Output channels of a block divided by its width: 4 for bottlenecks."""
    check_depth(depth)
    return 4 if depth >= 50 else 1


def scaled_width(width: int, width_multiplier: float) -> int:
    """Channel count `width * width_multiplier`, rounded, at least 1."""
    if not width_multiplier > 0:
        raise ValueError(
            f"width_multiplier must be > 0, got {width_multiplier!r}."
        )
    return max(1, int(round(width * width_multiplier)))


def feature_dim(depth: int, width_multiplier: float = 1.0) -> int:
    """Channels of the last stage: 2048 * width (50/101), 512 * width."""
    return scaled_width(STAGE_WIDTHS[-1], width_multiplier) * expansion(depth)


def _bn(name: str, dtype: Any) -> layers.BatchNorm:
    """PyTorch-style BatchNorm (scale 1, bias 0) computing in `dtype`."""
    return layers.BatchNorm(dtype=dtype, name=name)


def _conv(kernels: kernels_lib.Kernels, *, dtype: Any, train: bool):
    """`kernels.conv` with ResNet's bias-free Kaiming-normal kernels."""
    return functools.partial(
        kernels.conv, dtype=dtype, train=train, kernel_init=conv_kernel_init
    )


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 (stride) -> 3x3, plus the shortcut.

    Attributes:
      width: channels of both convolutions (= output channels).
      strides: stride of the first convolution and of the shortcut.
      dtype: compute dtype.
      kernels: the implementations of the convolutions (and max-pool).
    """

    width: int
    strides: int = 1
    dtype: Any = jnp.float32
    kernels: kernels_lib.Kernels = kernels_lib.XLA

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, H / strides, W / strides, width]."""
        conv = _conv(self.kernels, dtype=self.dtype, train=train)
        out_channels = self.width
        y = conv(self.width, 3, self.strides, name="conv1")(x)
        y = nn.relu(_bn("bn1", self.dtype)(y, train=train))
        y = conv(self.width, 3, 1, name="conv2")(y)
        y = _bn("bn2", self.dtype)(y, train=train)
        shortcut = _shortcut(x, out_channels, self.strides, conv, train=train)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """ResNet-50/101 block: 1x1 -> 3x3 (stride) -> 1x1 (4x width), shortcut.

    Attributes:
      width: channels of the 1x1 and 3x3 convolutions; output is 4 * width.
      strides: stride of the 3x3 convolution and of the shortcut.
      dtype: compute dtype.
      kernels: the implementations of the convolutions (and max-pool).
    """

    width: int
    strides: int = 1
    dtype: Any = jnp.float32
    kernels: kernels_lib.Kernels = kernels_lib.XLA

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, H / strides, W / strides, 4 * width]."""
        conv = _conv(self.kernels, dtype=self.dtype, train=train)
        out_channels = 4 * self.width
        y = conv(self.width, 1, 1, name="conv1")(x)
        y = nn.relu(_bn("bn1", self.dtype)(y, train=train))
        y = conv(self.width, 3, self.strides, name="conv2")(y)
        y = nn.relu(_bn("bn2", self.dtype)(y, train=train))
        y = conv(out_channels, 1, 1, name="conv3")(y)
        y = _bn("bn3", self.dtype)(y, train=train)
        shortcut = _shortcut(x, out_channels, self.strides, conv, train=train)
        return nn.relu(y + shortcut)


def _shortcut(
    x: jax.Array, out_channels: int, strides: int, conv, *, train: bool
) -> jax.Array:
    """Identity, or torchvision's 1x1 conv + BN when the shape changes.

    Called inside a block's compact `__call__` (with its `_conv`), so the
    submodules it creates ("downsample_conv", "downsample_bn") belong to
    that block.
    """
    if strides == 1 and x.shape[-1] == out_channels:
        return x
    y = conv(out_channels, 1, strides, name="downsample_conv")(x)
    return _bn("downsample_bn", y.dtype)(y, train=train)


class ResNetStem(nn.Module):
    """conv1 7x7/2 -> bn1 -> relu -> max-pool 3x3/2 (padding 1).

    Attributes:
      width: output channels (64 * width multiplier).
      dtype: compute dtype; the input is cast to it.
      kernels: the implementations of the convolutions (and max-pool).
    """

    width: int = STEM_WIDTH
    dtype: Any = jnp.float32
    kernels: kernels_lib.Kernels = kernels_lib.XLA

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x: [N, H, W, 3] float -> [N, ceil(H / 4), ceil(W / 4), width]."""
        x = x.astype(self.dtype)
        conv = _conv(self.kernels, dtype=self.dtype, train=train)
        x = conv(self.width, 7, 2, name="conv1")(x)
        x = nn.relu(_bn("bn1", self.dtype)(x, train=train))
        return self.kernels.max_pool(x)


class ResNetStage(nn.Module):
    """One stage ("layerK"): `num_blocks` blocks, the first one strided.

    Optionally inserts non-local blocks after the last `num_non_local` blocks
    (AGW's placement); they are named "non_local0", "non_local1", ... in
    block order.

    Attributes:
      depth: ResNet depth; selects BasicBlock (18/34) or Bottleneck (50/101).
      num_blocks: blocks in the stage.
      width: block width (64, 128, 256, 512 times the width multiplier).
      strides: stride of the first block.
      num_non_local: non-local blocks after the last blocks of the stage.
      non_local_inter: inner width of the non-local blocks (None: C // 2).
      dtype: compute dtype.
      kernels: the implementations of the convolutions (and max-pool).
      remat_blocks: rematerialise each block (and non-local block) in the
        backward pass instead of keeping its intermediates.
    """

    depth: int
    num_blocks: int
    width: int
    strides: int = 1
    num_non_local: int = 0
    non_local_inter: int | None = 1
    dtype: Any = jnp.float32
    kernels: kernels_lib.Kernels = kernels_lib.XLA
    remat_blocks: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, H / strides, W / strides, C_out]."""
        if not 0 <= self.num_non_local <= self.num_blocks:
            raise ValueError(
                f"num_non_local={self.num_non_local} must lie in "
                f"[0, {self.num_blocks}] (the blocks of this stage)."
            )
        block_cls = Bottleneck if expansion(self.depth) == 4 else BasicBlock
        call = (
            remat_lib.checkpointed_call
            if self.remat_blocks
            else remat_lib.plain_call
        )
        first_non_local = self.num_blocks - self.num_non_local
        for i in range(self.num_blocks):
            block = block_cls(
                self.width,
                strides=self.strides if i == 0 else 1,
                dtype=self.dtype,
                kernels=self.kernels,
                name=f"block{i}",
            )
            x = call(block, x, train)
            if i >= first_non_local:
                non_local = non_local_lib.NonLocalBlock(
                    inter=self.non_local_inter,
                    dtype=self.dtype,
                    kernels=self.kernels,
                    name=f"non_local{i - first_non_local}",
                )
                x = call(non_local, x, train)
        return x


def stage_strides(last_stride: int) -> tuple[int, int, int, int]:
    """Strides of layer1..layer4 with the given last stride."""
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}.")
    return (1, 2, 2, last_stride)


class ResNet(nn.Module):
    """Plain ResNet: stem, layer1..layer4, global average pool, optional fc.

    Attributes:
      depth: 18, 34, 50 or 101.
      num_classes: if given, a final Dense "fc" (torchvision's fc) is applied
        to the pooled features; if None the pooled features are returned.
      width_multiplier: scales every channel count (tiny nets for tests).
      last_stride: stride of layer4 (re-id default 1; torchvision's is 2).
      dtype: compute dtype; parameters stay float32.
    """

    depth: int = 50
    num_classes: int | None = None
    width_multiplier: float = 1.0
    last_stride: int = 1
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled features."""
        return feature_dim(self.depth, self.width_multiplier)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x: [N, H, W, 3] -> [N, feature_dim] (or [N, num_classes]) float32."""
        check_depth(self.depth)
        x = ResNetStem(
            scaled_width(STEM_WIDTH, self.width_multiplier),
            dtype=self.dtype,
            name="stem",
        )(x, train=train)
        for stage in resnet_stages(
            depth=self.depth,
            width_multiplier=self.width_multiplier,
            last_stride=self.last_stride,
            dtype=self.dtype,
        ):
            x = stage(x, train=train)
        x = jnp.mean(x.astype(layers.param_dtype(self.dtype)), axis=(1, 2))
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, name="fc")(x)
        return x


def resnet_stages(
    *,
    depth: int,
    width_multiplier: float,
    last_stride: int,
    non_local_counts: Sequence[int] = (0, 0, 0, 0),
    non_local_inter: int | None = 1,
    dtype: Any = jnp.float32,
    kernels: kernels_lib.Kernels = kernels_lib.XLA,
    remat: str = "none",
) -> list[ResNetStage]:
    """Unbound layer1..layer4 modules, named "layer1".."layer4".

    Use inside a parent's `setup` or compact `__call__` so they become its
    submodules; call them as `stage(x, train)`. `remat="blocks"` and
    `"stages"` rematerialise each block in the backward pass
    (`remat_lib.checkpointed_call`): less memory, one more forward
    computation; with `"stages"` the caller also wraps each stage's call
    in `remat_lib.checkpointed_call`.
    """
    check_depth(depth)
    if len(non_local_counts) != 4:
        raise ValueError(
            f"non_local_counts must have 4 entries (one per stage), got "
            f"{tuple(non_local_counts)!r}."
        )
    remat_lib.check_remat(remat)
    return [
        ResNetStage(
            depth,
            n,
            scaled_width(w, width_multiplier),
            strides=s,
            num_non_local=nl,
            non_local_inter=non_local_inter,
            dtype=dtype,
            kernels=kernels,
            remat_blocks=remat in ("blocks", "stages"),
            name=f"layer{k + 1}",
        )
        for k, (n, w, s, nl) in enumerate(
            zip(
                BLOCKS_PER_STAGE[depth],
                STAGE_WIDTHS,
                stage_strides(last_stride),
                non_local_counts,
                strict=True,
            )
        )
    ]
