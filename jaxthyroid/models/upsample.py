"""Upsampling layers shared by the GANs: transposed convolutions in other forms, and PixelShuffle.

Why this file exists (DESIGN §6): on XLA:CPU the weight gradient of
``lax.conv_transpose`` (what ``nn.ConvTranspose`` lowers to) is very slow. The layers
here compute *exactly* the same function with the same parameters (a kernel shaped like
``nn.ConvTranspose``'s ``[kh, kw, in, out]``), but as ordinary stride-1 convolutions /
matmuls, whose gradients XLA:CPU does well. :mod:`jaxthyroid.models.backend` decides where they
are used; ``docs/benchmarks.md`` has the measurements.

Kernel semantics: all layers match ``flax.linen.ConvTranspose`` with
``transpose_kernel=False`` (the kernel is applied to the zero-dilated input as a
cross-correlation). PyTorch's ``ConvTranspose2d`` equals the same thing with the
kernel flipped spatially; with DCGAN's symmetric N(0, 0.02) initialisation the two
parameterisations are the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from jaxthyroid.models import layers

Dtype = Any
Initializer = Any

# DCGAN initialisation (Radford et al.): weights N(0, 0.02).
dcgan_kernel_init = nn.initializers.normal(stddev=0.02)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """Depth-to-space with PyTorch ``pixel_shuffle`` channel order, in NHWC.

    ``[batch, H, W, C·r·r] -> [batch, H·r, W·r, C]``, with
    ``out[b, h·r + i, w·r + j, c] = x[b, h, w, c·r·r + i·r + j]`` (torch's NCHW
    ``pixel_shuffle`` transposed to NHWC), so weights ported from PyTorch work.
    """
    batch, height, width, depth = x.shape
    r = factor
    if depth % (r * r):
        raise ValueError(f"pixel_shuffle: {depth} channels not divisible by factor² = {r * r}")
    c = depth // (r * r)
    x = x.reshape(batch, height, width, c, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # [batch, H, i, W, j, C]
    return x.reshape(batch, height * r, width * r, c)


class PixelShuffle(nn.Module):
    """``[batch, H, W, C·r²] -> [batch, H·r, W·r, C]`` (see :func:`pixel_shuffle`)."""

    factor: int = 2

    def __call__(self, x: jax.Array) -> jax.Array:
        return pixel_shuffle(x, self.factor)


class SubPixelConvTranspose(nn.Module):
    """A 4×4, stride-2 transposed convolution (PyTorch ``k=4, s=2, p=1``), as sub-pixel convs.

    ``[batch, H, W, in] -> [batch, 2H, 2W, features]``. Same parameters and same
    output as ``nn.ConvTranspose(features, (4, 4), strides=(2, 2),
    padding=((2, 2), (2, 2)))``.

    Derivation (one axis; ``W`` is the 4-tap kernel, ``x`` the input): the transposed
    conv dilates ``x`` by 2, pads by 2 and correlates with ``W``, so
    ``y[2p] = x[p-1]·W[0] + x[p]·W[2]`` and ``y[2p+1] = x[p]·W[1] + x[p+1]·W[3]``.
    Each output phase is a 2-tap stride-1 conv over ``x`` padded by one; in 2D that
    is four 2×2 convolutions with kernels ``W[a::2, b::2]``, interleaved. Same FLOPs
    as the transposed conv, minus the multiplications by inserted zeros.
    """

    features: int
    use_bias: bool = False
    kernel_init: Initializer = dcgan_kernel_init
    bias_init: Initializer = nn.initializers.zeros
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    # Each 2×2 phase conv as an im2col matmul (layers.extract_patches): True, False, or a
    # rule (in_channels, height, width) -> bool deciding from the input's shape.
    im2col: bool | Callable[[int, int, int], bool] = False
    # With im2col, inputs at least this many pixels on each side share one set of 2×2
    # patches for all four phases (one matmul with 4·features outputs, then each phase
    # keeps its shifted window); on small maps the (H+1)(W+1)/HW extra positions cost
    # more than that saves.
    shared_patches_min_size: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (4, 4, in_features, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        batch, height, width, _ = x.shape
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

        im2col = self.im2col(in_features, height, width) if callable(self.im2col) else self.im2col
        if im2col and min(height, width) >= self.shared_patches_min_size:
            # Phase (a, b) at (p, q) reads the 2×2 window at padded[p + a, q + b]: one
            # patch set over the (H+1)×(W+1) window positions serves all four phases.
            patches = layers.extract_patches(padded, (2, 2), (1, 1), ((0, 0), (0, 0)))
            kernels = jnp.stack(
                [kernel[a::2, b::2].reshape(4 * in_features, self.features) for a in (0, 1) for b in (0, 1)], axis=1
            )
            z = layers.patch_matmul(patches, kernels.reshape(4 * in_features, 4 * self.features))
            z = z.reshape(batch, height + 1, width + 1, 2, 2, self.features)

            def phase(a: int, b: int) -> jax.Array:  # output pixels (2p + a, 2q + b)
                return z[:, a : a + height, b : b + width, a, b]
        else:

            def phase(a: int, b: int) -> jax.Array:  # output pixels (2p + a, 2q + b)
                window = padded[:, a : a + height + 1, b : b + width + 1, :]
                if im2col:
                    patches = layers.extract_patches(window, (2, 2), (1, 1), ((0, 0), (0, 0)))
                    return layers.patch_matmul(patches, kernel[a::2, b::2].reshape(4 * in_features, self.features))
                return jax.lax.conv_general_dilated(
                    window, kernel[a::2, b::2], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )

        rows = [jnp.stack([phase(a, 0), phase(a, 1)], axis=3) for a in (0, 1)]  # [batch, H, W, 2(b), C]
        y = jnp.stack(rows, axis=2)  # [batch, H, 2(a), W, 2(b), C]
        y = y.reshape(batch, 2 * height, 2 * width, self.features)
        if bias is not None:
            y = y + bias
        return y


class ProjectConvTranspose(nn.Module):
    """DCGAN's first layer, a k×k transposed conv from a 1×1 input, as one matmul.

    ``[batch, in] (or [batch, 1, 1, in]) -> [batch, k, k, features]``. Same
    parameters and output as ``nn.ConvTranspose(features, (k, k), padding='VALID')``
    applied to a 1×1 image: ``y[h, w] = z · W[k-1-h, k-1-w]``.
    """

    features: int
    kernel_size: int = 4
    use_bias: bool = False
    kernel_init: Initializer = dcgan_kernel_init
    bias_init: Initializer = nn.initializers.zeros
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        z = z.reshape(z.shape[0], z.shape[-1])
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, z.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        z, kernel, bias = promote_dtype(z, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("bi,hwio->bhwo", z, kernel[::-1, ::-1])
        if bias is not None:
            y = y + bias
        return y
