"""The AGW non-local block (embedded-dot-product form, no softmax).

For x [N, H, W, C] with P = H * W positions:

  theta, phi, g = 1x1 convs (with bias) of x to `inter` channels   [N, P, inter]
  affinity      = theta @ phi^T / P                                [N, P, P]
  y             = affinity @ g                                     [N, P, inter]
  out           = x + BN(W(y))   (W: 1x1 conv back to C, with bias)

The BatchNorm after W starts with scale 0 and bias 0, so a freshly
initialised block is the identity. The 1x1 convolutions use PyTorch's default
initialisation (the release does not re-initialise them).

`inter` is a config value. The authors' release ends up with a single inner
channel (an integer-division quirk), so the default is 1; the AGW paper's
intended C // 2 is `inter=None`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mclnet_jax.models import kernels as kernels_lib
from mclnet_jax.models import layers


class NonLocalBlock(nn.Module):
    """Residual non-local block; the identity at initialisation.

    Submodules: "theta", "phi", "g" (1x1 conv C -> inter), "W" (1x1 conv
    inter -> C), "W_bn" (BatchNorm, zero-initialised scale and bias).

    Attributes:
      inter: inner channels; None means C // 2 (at least 1).
      dtype: compute dtype.
      kernels: the implementations of the 1x1 convolutions.
    """

    inter: int | None = 1
    dtype: Any = jnp.float32
    kernels: kernels_lib.Kernels = kernels_lib.XLA

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """x: [N, H, W, C] -> [N, H, W, C] in `dtype`."""
        n, h, w, c = x.shape
        inter = max(1, c // 2) if self.inter is None else self.inter
        if inter < 1:
            raise ValueError(
                f"Non-local inter width must be >= 1 (or None for C // 2), "
                f"got {self.inter!r}."
            )
        x = x.astype(self.dtype)
        p = h * w

        def conv(features: int, fan_in: int, name: str) -> nn.Module:
            # 1x1 with bias and PyTorch's default init.
            return self.kernels.conv(
                features,
                1,
                1,
                dtype=self.dtype,
                train=train,
                name=name,
                kernel_init=layers.torch_default_kernel_init(),
                use_bias=True,
                bias_init=layers.torch_default_bias_init(fan_in),
            )

        theta = conv(inter, c, name="theta")(x)
        phi = conv(inter, c, name="phi")(x)
        g = conv(inter, c, name="g")(x)
        theta = theta.reshape(n, p, inter)
        phi = phi.reshape(n, p, inter)
        g = g.reshape(n, p, inter)
        # (theta phi^T / P) g == theta (phi^T g / P). The right side never
        # forms the [P, P] affinity and costs O(P inter^2) instead of
        # O(P^2 inter): much cheaper for the release's inter = 1 (P = 648 in
        # layer2 at 288x144). Pick whichever order is cheaper for the shapes.
        if inter <= p:
            context = jnp.einsum("npi,npj->nij", phi, g) / p
            y = jnp.einsum("npi,nij->npj", theta, context)
        else:
            affinity = jnp.einsum("npi,nqi->npq", theta, phi) / p
            y = jnp.einsum("npq,nqj->npj", affinity, g)
        y = y.reshape(n, h, w, inter)
        y = conv(c, inter, name="W")(y)
        y = layers.BatchNorm(
            scale_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="W_bn",
        )(y, train=train)
        return x + y
