"""MCLNet's embedding network (two-stream AGW ResNet) and modality classifier.

`MCLNet` embeds visible and infrared images with one stem per modality,
shared stages with non-local blocks, GeM pooling ("pool"), a BNNeck without
shift ("bn") and a bias-free classifier ("logits"), laid out like the
authors' release so its checkpoints map one to one. `ModalityClassifier` is
the modality confusion module's classifier. docs/design.md "Model".
"""

import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mclnet_jax.models import kernels as kernels_lib
from mclnet_jax.models import layers, resnet
from mclnet_jax.models import remat as remat_lib

POOLINGS = ("gem", "avg")
KERNELS = kernels_lib.NAMES
GEM_P = 3.0
GEM_EPS = 1e-12


def _bnneck_scale_init(key, shape, dtype=jnp.float32):
    """N(1, 0.01), the release's BNNeck scale initialisation."""
    return 1.0 + 0.01 * jax.random.normal(key, shape, dtype)


def gem_pool(
    x: jax.Array, *, p: float = GEM_P, eps: float = GEM_EPS
) -> jax.Array:
    """Generalised-mean pooling `(mean_hw(x^p) + eps)^(1/p)`, in float32.

    Args:
      x: [N, H, W, C], non-negative (post-ReLU).
      p: the exponent.
      eps: added before the root, as in the release.

    Returns:
      [N, C] float32 (float64 for float64 inputs).
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (jnp.mean(x**p, axis=(1, 2)) + eps) ** (1.0 / p)


DTYPES = ("float32", "bfloat16", "float64")


def _check_dtype(dtype: Any) -> None:
    if jnp.dtype(dtype).name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype float64 needs 64-bit JAX: run inside "
            "`with jax.enable_x64(True):` or set JAX_ENABLE_X64=1 (the "
            "trainer does this for config.model.dtype='float64')."
        )


class MCLNet(nn.Module):
    """Two-stream ResNet embedding network with BNNeck and classifier.

    Attributes:
      num_classes: identities of the classifier.
      depth: ResNet depth, 18/34/50/101.
      width_multiplier: scales all channel counts (tiny nets for tests).
      last_stride: stride of layer4 (1 as released).
      non_local_counts: non-local blocks after the last blocks of layer1..4;
        (0, 2, 3, 0) as in AGW, (0, 0, 0, 0) for the "Base" ablation.
      non_local_inter: inner width of the non-local blocks; 1 reproduces the
        release (an integer-division quirk there), None means C // 2 (AGW's
        intent).
      pooling: "gem" (p = 3) or "avg".
      dtype: compute dtype of the backbone: float32, bfloat16 (float32
        parameters, features and logits) or float64 (everything float64: the
        exact-parity mode; needs `jax_enable_x64`).
      kernels: how the backbone's operations are computed
        (`kernels_lib.Kernels`, chosen once and handed to every block):
        "xla": XLA's convolutions, products and max-pool; "cpu": the forms
        that are faster on XLA:CPU (Winograd for the wide stride-1 3x3
        convolutions, a max-pool backward without index arrays, and in
        bfloat16 products whose gradients stay bfloat16 products); "auto":
        "cpu" when JAX's default backend is the CPU, else "xla"; or a
        `Kernels` of your own. The same parameters and results up to float
        rounding.
      remat: "none", "blocks" or "stages": recompute each residual (and
        non-local) block in the backward pass instead of keeping its
        intermediates (`remat_lib.checkpointed_call`), or with "stages" each
        stage and, inside its recomputation, each block: the same results,
        one (two) more forward computations, less memory.
    """

    num_classes: int
    depth: int = 50
    width_multiplier: float = 1.0
    last_stride: int = 1
    non_local_counts: Sequence[int] = (0, 2, 3, 0)
    non_local_inter: int | None = 1
    pooling: str = "gem"
    dtype: Any = jnp.float32
    kernels: str | kernels_lib.Kernels = "auto"
    remat: str = "none"

    @property
    def feature_dim(self) -> int:
        """D: 2048 * width for depth 50/101, 512 * width for 18/34."""
        return resnet.feature_dim(self.depth, self.width_multiplier)

    def _check_config(self) -> None:
        resnet.check_depth(self.depth)
        if not (
            isinstance(self.num_classes, numbers.Integral)
            and self.num_classes > 0
        ):
            raise ValueError(
                f"num_classes must be a positive int, got {self.num_classes!r}."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"Unknown pooling {self.pooling!r}; use one of {POOLINGS}."
            )
        _check_dtype(self.dtype)
        kernels_lib.resolve(self.kernels)  # Raises for an unknown name.
        remat_lib.check_remat(self.remat)
        counts = tuple(self.non_local_counts)
        blocks = resnet.BLOCKS_PER_STAGE[self.depth]
        if len(counts) != 4 or any(
            not 0 <= c <= b for c, b in zip(counts, blocks, strict=True)
        ):
            raise ValueError(
                f"non_local_counts must be 4 counts, each between 0 and the "
                f"blocks of its stage {blocks}, got {counts!r}."
            )

    @staticmethod
    def _check_images(name: str, x: jax.Array | None) -> None:
        if x is not None and (x.ndim != 4 or x.shape[-1] != 3):
            raise ValueError(
                f"{name} must be [N, H, W, 3] (NHWC RGB), got shape "
                f"{tuple(x.shape)}."
            )

    @nn.compact
    def __call__(
        self,
        visible: jax.Array | None = None,
        infrared: jax.Array | None = None,
        *,
        train: bool,
    ) -> dict[str, jax.Array]:
        """Embeds a batch of visible and/or infrared images.

        Args:
          visible: [Nv, H, W, 3] float images, or None.
          infrared: [Ni, H, W, 3] float images (same H, W), or None.
          train: batch statistics in BatchNorm (and their update) if True.

        Returns:
          {"pool": [N, D], "bn": [N, D], "logits": [N, num_classes]}, all
          float32, N = Nv + Ni, rows ordered [visible; infrared].
        """
        self._check_config()
        self._check_images("visible", visible)
        self._check_images("infrared", infrared)
        if visible is None and infrared is None:
            raise ValueError(
                "Give visible and/or infrared images; both are None."
            )
        if (
            visible is not None
            and infrared is not None
            and visible.shape[1:] != infrared.shape[1:]
        ):
            raise ValueError(
                f"visible and infrared images must share [H, W, 3]; got "
                f"{tuple(visible.shape)} and {tuple(infrared.shape)}."
            )

        stem_width = resnet.scaled_width(
            resnet.STEM_WIDTH, self.width_multiplier
        )
        kernels = kernels_lib.resolve(self.kernels)
        # Both stems always exist (created even when one input is absent) so
        # the parameter tree does not depend on the call.
        visible_stem, infrared_stem = (
            resnet.ResNetStem(
                stem_width,
                dtype=self.dtype,
                kernels=kernels,
                name=name,
            )
            for name in ("visible_stem", "infrared_stem")
        )
        if self.is_initializing():
            dummy = visible if visible is not None else infrared
            if visible is None:
                visible_stem(dummy[:1], train=False)
            if infrared is None:
                infrared_stem(dummy[:1], train=False)
        call = (
            remat_lib.checkpointed_call
            if self.remat == "stages"
            else remat_lib.plain_call
        )
        # Images in the compute dtype before any (rematerialised) stem, so
        # that no value of a float64 step is float32.
        parts = []
        if visible is not None:
            parts.append(call(visible_stem, visible.astype(self.dtype), train))
        if infrared is not None:
            parts.append(
                call(infrared_stem, infrared.astype(self.dtype), train)
            )
        x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)

        for stage in resnet.resnet_stages(
            depth=self.depth,
            width_multiplier=self.width_multiplier,
            last_stride=self.last_stride,
            non_local_counts=tuple(self.non_local_counts),
            non_local_inter=self.non_local_inter,
            dtype=self.dtype,
            kernels=kernels,
            remat=self.remat,
        ):
            x = call(stage, x, train)

        head_dtype = layers.param_dtype(self.dtype)
        if self.pooling == "gem":
            pool = gem_pool(x)
        else:
            pool = jnp.mean(x.astype(head_dtype), axis=(1, 2))
        # BNNeck: no shift parameter at all (the release freezes it at 0).
        bn = layers.BatchNorm(
            use_bias=False,
            scale_init=_bnneck_scale_init,
            dtype=head_dtype,
            name="bnneck",
        )(pool, train=train)
        logits = nn.Dense(
            self.num_classes,
            use_bias=False,
            kernel_init=nn.initializers.normal(0.001),
            dtype=head_dtype,
            param_dtype=head_dtype,
            name="classifier",
        )(bn)
        return {"pool": pool, "bn": bn, "logits": logits}


class ModalityClassifier(nn.Module):
    """The MCM's classifier: Dense(D -> 128) -> Dense(128 -> 2) -> BatchNorm.

    No activation between the layers, as in the release. PyTorch's default
    Linear initialisation; BatchNorm with scale 1 and bias 0.

    Attributes:
      hidden: width of the first layer.
      num_modalities: outputs (2: visible, infrared).
      dtype: parameter and compute dtype, float32 (or float64 for the
        exact-parity mode).
    """

    hidden: int = 128
    num_modalities: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        """features: [N, D] -> logits [N, num_modalities] in `dtype`."""
        if features.ndim != 2:
            raise ValueError(
                f"features must be [N, D], got shape {tuple(features.shape)}."
            )
        _check_dtype(self.dtype)
        dtype = layers.param_dtype(self.dtype)
        x = features.astype(dtype)
        for name, width in (("fc1", self.hidden), ("fc2", self.num_modalities)):
            x = nn.Dense(
                width,
                use_bias=True,
                dtype=dtype,
                param_dtype=dtype,
                kernel_init=layers.torch_default_kernel_init(),
                bias_init=layers.torch_default_bias_init(x.shape[-1]),
                name=name,
            )(x)
        return layers.BatchNorm(name="bn")(x, train=train)
