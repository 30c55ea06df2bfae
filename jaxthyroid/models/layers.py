"""Layers shared by the models: other forms of standard ops, and adaptive pooling.

Every function here computes exactly what a standard op computes (tests compare
values and gradients); which form a model gets is decided in :mod:`jaxthyroid.models.backend`,
with the measurements behind it in ``docs/benchmarks.md``:

* ``max_pool_slices``: max-pool as a running maximum over ``k*k`` strided slices;
  its gradient avoids the select-and-scatter ``nn.max_pool``'s gradient lowers to.
* ``Im2colConv``: a convolution as one matmul over extracted patches, for the shapes
  where XLA:CPU's own convolution runs far below its matmul rate (few input channels,
  tiny output maps). It holds the same parameters as ``nn.Conv`` (``kernel``
  ``[kh, kw, C, F]``, optional ``bias``), so checkpoints are interchangeable.
* ``adaptive_avg_pool``: torchvision's ``AdaptiveAvgPool2d`` bin rule (also for
  outputs larger than the input, where it replicates), as two small matmuls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = Any
Padding = tuple[tuple[int, int], tuple[int, int]]


def max_pool_slices(x: jax.Array, window: int = 3, stride: int = 2, padding: Padding = ((1, 1), (1, 1))) -> jax.Array:
    """Max-pool as a running maximum over ``window²`` strided slices.

    Same output as ``nn.max_pool(x, (window, window), (stride, stride), padding)``
    (padding with -inf, floor mode), with a gradient XLA:CPU runs much faster.

    Args:
      x: ``[batch, H, W, C]``.
    Returns:
      ``[batch, Ho, Wo, C]`` with ``Ho = (H + pad_h - window) // stride + 1``.
    """
    (pt, pb), (pl, pr) = padding
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)
    h, w = x.shape[1], x.shape[2]
    ho = (h - window) // stride + 1
    wo = (w - window) // stride + 1
    out = None
    for i in range(window):
        for j in range(window):
            piece = lax.slice(
                x,
                (0, i, j, 0),
                (x.shape[0], i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, x.shape[3]),
                (1, stride, stride, 1),
            )
            out = piece if out is None else jnp.maximum(out, piece)
    return out


def extract_patches(
    x: jax.Array, kernel_size: tuple[int, int], strides: tuple[int, int], padding: Padding
) -> jax.Array:
    """im2col: ``[batch, H, W, C]`` -> ``[batch, Ho, Wo, kh*kw*C]``.

    The last axis is ordered ``(i, j, c)``, matching ``kernel.reshape(kh*kw*C, F)``
    for an ``nn.Conv`` kernel ``[kh, kw, C, F]``.
    """
    kh, kw = kernel_size
    sh, sw = strides
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    h, w = x.shape[1], x.shape[2]
    ho = (h - kh) // sh + 1
    wo = (w - kw) // sw + 1
    pieces = [
        lax.slice(
            x, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, x.shape[3]), (1, sh, sw, 1)
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(pieces, axis=-1)


def patch_matmul(patches: jax.Array, kernel: jax.Array) -> jax.Array:
    """``patches [..., K] @ kernel [K, F]``: an im2col convolution's matmul.

    Same value and gradients as ``patches @ kernel``; only the weight gradient is
    written differently: ``(gᵀ · patches)ᵀ`` instead of the ``patchesᵀ · g`` that
    autodiff emits. Alone, both matmuls take the same time on XLA:CPU, but inside a
    layer's jitted forward+backward the second form runs far slower (the patches get
    laid out or fused differently around it; ``python -m benchmarks.conv_grad``,
    figures in ``docs/benchmarks.md``).

    Under ``jax.shard_map`` a replicated kernel meets per-device patches. Autodiff
    would mark the kernel as varying over the mesh axes (an implicit ``pvary``) and
    sum its cotangent over them (the ``psum`` that transposes it); a custom VJP's
    cotangents must have its inputs' types, so both inputs are made to vary alike
    *before* the custom VJP, by adding a zero scalar typed like the other input. JAX
    then inserts the implicit ``pvary`` and its transpose itself; outside
    ``shard_map`` (and where both already vary alike) the zero adds nothing, and XLA
    folds ``x + 0`` away.
    """
    patches, kernel = _vary_like(patches, kernel), _vary_like(kernel, patches)
    return _patch_matmul(patches, kernel)


def _vary_like(x: jax.Array, other: jax.Array) -> jax.Array:
    """``x``, also varying over the mesh axes ``other`` varies over (same value)."""
    return x + jnp.zeros_like(other, dtype=x.dtype, shape=())


@jax.custom_vjp
def _patch_matmul(patches: jax.Array, kernel: jax.Array) -> jax.Array:
    return patches @ kernel


def _patch_matmul_fwd(patches, kernel):
    return patches @ kernel, (patches, kernel)


def _patch_matmul_bwd(residuals, g):
    patches, kernel = residuals
    k, f = kernel.shape
    d_kernel = jnp.einsum("mf,mk->fk", g.reshape(-1, f), patches.reshape(-1, k)).T
    d_patches = g @ kernel.T.astype(g.dtype)
    return d_patches.astype(patches.dtype), d_kernel.astype(kernel.dtype)


_patch_matmul.defvjp(_patch_matmul_fwd, _patch_matmul_bwd)


# im2col(in_channels, kernel_size, strides, (out_height, out_width)) -> whether to use patches
Im2colRule = Callable[[int, tuple[int, int], tuple[int, int], tuple[int, int]], bool]


class Im2colConv(nn.Module):
    """A convolution computed as patches @ kernel (+ bias), or as XLA's convolution.

    Parameters identical to ``nn.Conv(features, kernel_size, strides, padding,
    use_bias=...)``: ``kernel`` ``[kh, kw, C, features]`` and, with ``use_bias``,
    ``bias`` ``[features]``. Patches take ``kh*kw / (sh*sw)`` times the input's memory.
    ``im2col``: True (always patches), False (XLA's convolution) or an
    :data:`Im2colRule` deciding per call from the shape (what :mod:`jaxthyroid.models.backend`
    passes).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding = ((0, 0), (0, 0))
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    im2col: bool | Im2colRule = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[batch, H, W, C]`` -> ``[batch, Ho, Wo, features]``."""
        kh, kw = self.kernel_size
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, c, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        (pt, pb), (pl, pr) = self.padding
        out_h = (x.shape[1] + pt + pb - kh) // self.strides[0] + 1
        out_w = (x.shape[2] + pl + pr - kw) // self.strides[1] + 1
        im2col = self.im2col
        if callable(im2col):
            im2col = im2col(c, tuple(self.kernel_size), tuple(self.strides), (out_h, out_w))
        if im2col:
            patches = extract_patches(x, self.kernel_size, self.strides, self.padding)
            y = patch_matmul(patches, kernel.reshape(kh * kw * c, self.features))
        else:
            y = lax.conv_general_dilated(
                x, kernel, self.strides, self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        return y if bias is None else y + bias


def _adaptive_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` averaging matrix of torch's adaptive average pool.

    Bin ``i`` covers ``[floor(i*In/Out), ceil((i+1)*In/Out))``; when ``Out > In``
    bins repeat input rows (torchvision replicates).
    """
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = math.ceil((i + 1) * size_in / size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, output_size: Sequence[int]) -> jax.Array:
    """torch ``AdaptiveAvgPool2d``: ``[batch, H, W, C]`` -> ``[batch, oh, ow, C]``."""
    oh, ow = output_size
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:
        # Equal bins: a plain average pool (cheaper than the matmuls).
        return nn.avg_pool(x, (h // oh, w // ow), (h // oh, w // ow))
    mh = jnp.asarray(_adaptive_matrix(h, oh), x.dtype)
    mw = jnp.asarray(_adaptive_matrix(w, ow), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)


def resize_to(image: jax.Array, height: int, width: int) -> jax.Array:
    """Bring ``[batch, H, W, C]`` to ``[batch, height, width, C]``.

    Average-pools when the sizes divide (exact area average, cheap), else resizes
    linearly with antialiasing.
    """
    h, w = image.shape[1], image.shape[2]
    if (h, w) == (height, width):
        return image
    if h % height == 0 and w % width == 0:
        return nn.avg_pool(image, (h // height, w // width), (h // height, w // width))
    return jax.image.resize(image, (image.shape[0], height, width, image.shape[3]), method="linear", antialias=True)


class Conv(Im2colConv):
    """``Im2colConv`` auto-named like ``nn.Conv`` (``Conv_0``, ``Conv_1``, ...), so a module
    whose convs are unnamed can swap one for the other and keep its parameter paths."""
