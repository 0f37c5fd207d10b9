"""Forms of the ResNet's operations that are faster on XLA:CPU.

`kernels.CPU` hands them to the backbone (MCLNet's default on the CPU
backend); each computes what the plain form computes, up to float rounding,
in the input's dtype (float64 stays float64):

* `winograd_conv3x3`: a stride-1 3x3 convolution by Winograd's F(2x2, 3x3),
  16 products of transformed tiles, 2.25 times fewer multiplies than the
  direct convolution, in the forward pass and in both gradients;
* `matmul`: `x @ w` for bfloat16 x. XLA:CPU multiplies bfloat16 natively
  (YNNPACK, float32 accumulation) only in the form [M, K] x [K, N] with
  row-major operands and converts any other product to float32 first; the
  backward products here are of that form too (`transposed`);
* `max_pool_3x3_s2`: the stem's max-pool with a backward pass that needs
  no index arrays.

Figures in benchmarks/README.md ("train_step.py").
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

F32 = jnp.float32


def transposed(a: jax.Array) -> jax.Array:
    """a.T [C, R] of a [R, C] matrix, as a separate copy.

    Through a rank-3 view: XLA folds a plain 2-D transpose into the
    consuming product's dimension numbers, which YNNPACK does not take.
    """
    r, c = a.shape
    return jnp.transpose(a.reshape(r, c, 1), (1, 0, 2)).reshape(c, r)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, preferred_element_type=F32)


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [M, K] @ w [K, N] -> [M, N] float32, with w cast to x's dtype.

    The input gradient has x's dtype, the kernel gradient w's.
    """
    return _dot(x, w.astype(x.dtype))


def _matmul_fwd(x, w):
    return matmul(x, w), (x, w)


def _matmul_bwd(residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    dx = _dot(g, transposed(w.astype(x.dtype))).astype(x.dtype)
    dw = _dot(transposed(x), g).astype(w.dtype)
    return dx, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


# Winograd F(2x2, 3x3) (Lavin & Gray, 2016): Y = A^T [(G g G^T) * (B^T d B)] A
# for a 4x4 input tile d and a 3x3 kernel g.
_BT = np.array(
    [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32
)
_G = np.array(
    [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32
)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def _combine(matrix: np.ndarray, terms: Sequence[jax.Array]) -> list:
    """[sum_j matrix[i, j] * terms[j] for each row i], skipping zeros."""
    out = []
    for row in matrix:
        acc = None
        for coef, term in zip(row, terms, strict=True):
            if coef == 0:
                continue
            if coef == -1:
                term = -term
            elif coef != 1:
                term = term * float(coef)  # Weakly typed: keeps the dtype.
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def winograd_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 3x3 convolution with padding 1 by Winograd F(2x2, 3x3).

    Args:
      x: [N, H, W, C].
      kernel: [3, 3, C, Co].

    Returns:
      [N, H, W, Co] in x's dtype; equals `lax.conv_general_dilated` up to
      float rounding. Differentiable (the gradients are Winograd too).
    """
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"Needs a 3x3 kernel, got {kernel.shape}.")
    dtype = x.dtype
    low_precision = jnp.finfo(dtype).bits < 32
    # The tile and kernel transforms run in float32 for a low-precision
    # dtype (products in `dtype`), else in `dtype` itself: float64 stays
    # float64 throughout.
    transform_dtype = F32 if low_precision else dtype
    x = x.astype(transform_dtype)
    n, h, w, c = x.shape
    co = kernel.shape[-1]
    th, tw = -(-h // 2), -(-w // 2)  # 2x2 output tiles.
    xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
    # d[a][b]: the (a, b) element of every 4x4 input tile, [N, th, tw, C].
    d = [
        [xp[:, a : a + 2 * th : 2, b : b + 2 * tw : 2, :] for b in range(4)]
        for a in range(4)
    ]
    cols = [_combine(_BT, [d[a][b] for a in range(4)]) for b in range(4)]
    v = [_combine(_BT, [cols[b][a] for b in range(4)]) for a in range(4)]
    # u[a][b] = (G g G^T)[a, b], [C, Co]: sums of kernel taps (an einsum
    # here would run as slow batched products).
    k = kernel.astype(transform_dtype)
    g_rows = [_combine(_G, [k[i, j] for i in range(3)]) for j in range(3)]
    u = [_combine(_G, [g_rows[j][a] for j in range(3)]) for a in range(4)]
    p = n * th * tw
    product = matmul if low_precision else _plain_dot
    m = [
        [
            product(v[a][b].reshape(p, c).astype(dtype), u[a][b]).reshape(
                n, th, tw, co
            )
            for b in range(4)
        ]
        for a in range(4)
    ]
    rows = [_combine(_AT, [m[a][b] for a in range(4)]) for b in range(4)]
    y = [_combine(_AT, [rows[b][r] for b in range(4)]) for r in range(2)]
    # y[r][s]: output (2i + r, 2j + s) of tile (i, j).
    y = jnp.stack([jnp.stack(y[r], axis=3) for r in range(2)], axis=2)
    return y.reshape(n, 2 * th, 2 * tw, co)[:, :h, :w, :].astype(dtype)


def _plain_dot(a, b):
    return jnp.dot(a, b.astype(a.dtype))


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """ResNet's max-pool (3x3 window, stride 2, padding 1 with -inf), NHWC.

    The forward pass is `flax.linen.max_pool`'s. The backward pass sends
    each output's gradient to the first maximum of its window in row-major
    order, as XLA's select-and-scatter does, but as one elementwise pass
    over the 9 window taps: XLA:CPU's expansion of select-and-scatter keeps
    four int32 index arrays of the padded input.
    """
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, 3, 3, 1),
        (1, 2, 2, 1),
        ((0, 0), (1, 1), (1, 1), (0, 0)),
    )


def _pool_fwd(x):
    y = max_pool_3x3_s2(x)
    return y, (x, y)


def _pool_bwd(residuals, g):
    x, y = residuals
    _, h, w, _ = x.shape
    _, ho, wo, _ = y.shape
    low = jnp.array(-jnp.inf, x.dtype)
    xp = lax.pad(x, low, ((0, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0)))
    zero = jnp.zeros((), g.dtype)
    taken = jnp.zeros(y.shape, bool)
    total = None
    for i in range(3):
        for j in range(3):
            tap = xp[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2, :]
            hit = (tap == y) & ~taken
            taken = taken | hit
            placed = lax.pad(
                jnp.where(hit, g, zero),
                zero,
                (
                    (0, 0, 0),
                    (i, h + 2 - i - (2 * ho - 1), 1),
                    (j, w + 2 - j - (2 * wo - 1), 1),
                    (0, 0, 0),
                ),
            )
            total = placed if total is None else total + placed
    return (total[:, 1 : 1 + h, 1 : 1 + w, :],)


max_pool_3x3_s2.defvjp(_pool_fwd, _pool_bwd)
