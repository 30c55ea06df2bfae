"""SRGAN (Ledig et al. 2017): the SRResNet generator and the SRGAN discriminator.

* :class:`SRResNet` ``[batch, h, w, C] -> [batch, h·s, w·s, C]`` for scale s ∈ {2, 4}:
  9×9 conv 64 + PReLU; 16 residual blocks (conv-BN-PReLU-conv-BN + skip); conv-BN +
  long skip; log2(s) upsample blocks (conv to 256 -> PixelShuffle ×2 -> PReLU);
  9×9 conv to C. All convs have biases; each PReLU has one shared slope starting at
  0.25 (PyTorch's default; Flax's is 0.01). Linear output (no tanh): images are in
  [-1, 1] and the MSE / content loss pulls the output there.
* :class:`SRDiscriminator` ``[batch, H, W, C] -> logits [batch]``: 8 3×3 convs
  (64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2) with LeakyReLU 0.2 and BatchNorm
  after all but the first, dense 1024, LeakyReLU, dense 1. At 96×96×3 it has
  23,565,505 parameters. The first dense layer's size depends on the input: at
  128² it flattens 8·8·512. Set ``pool_size`` to average-pool adaptively
  (PyTorch ``AdaptiveAvgPool2d`` semantics) to a fixed ``pool_size²`` grid first,
  which makes the model independent of the input size (``pool_size=6`` gives the
  96×96 parameter count at any size). Default ``None`` = the paper's flatten.

Convs are built through ``ops`` (:class:`jaxthyroid.models.backend.Ops`, None: the backend's
policy; the same function whatever form it picks).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid.models import backend
from jaxthyroid.models.upsample import PixelShuffle

Dtype = Any


def _norm(train: bool, axis_name: str | None, dtype, param_dtype):
    # momentum 0.9 == PyTorch's BatchNorm momentum 0.1.
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=param_dtype,
    )


class ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN + identity skip; ``[batch, h, w, F] -> same``."""

    features: int
    conv: Any
    norm: Any
    act: Any

    @nn.compact
    def __call__(self, x):
        y = self.act()(self.norm()(self.conv(self.features, (3, 3))(x)))
        y = self.norm()(self.conv(self.features, (3, 3))(y))
        return x + y


class SRResNet(nn.Module):
    """SRResNet generator: ``lr [batch, h, w, channels] -> [batch, h·scale, w·scale, channels]``."""

    channels: int = 1
    scale: int = 2
    num_blocks: int = 16
    features: int = 64
    axis_name: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    # Predict the residual over bicubic upsampling (no extra parameters; the last conv
    # starts at zero, so a fresh model *is* bicubic). Ledig et al. learn the whole image
    # (False); on small data that model starts far below bicubic and, in our quick run,
    # stayed ~5 dB below it, so the pipeline's configs turn this on.
    bicubic_skip: bool = False
    ops: backend.Ops | None = None  # the form of each conv (jaxthyroid.models.backend)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        lr = x
        n_up = int(round(math.log2(self.scale)))
        if 2**n_up != self.scale or n_up < 1:
            raise ValueError(f"SRResNet scale must be a power of two >= 2, got {self.scale}")
        same = {(3, 3): ((1, 1), (1, 1)), (9, 9): ((4, 4), (4, 4))}  # SAME at stride 1
        conv_op = functools.partial(
            backend.resolve(self.ops).conv,
            use_bias=True,
            kernel_init=nn.initializers.lecun_normal(),  # nn.Conv's default
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

        def conv(features, kernel_size, **kw):
            return conv_op(features, kernel_size, padding=same[kernel_size], **kw)

        norm = _norm(train, self.axis_name, self.dtype, self.param_dtype)
        act = functools.partial(nn.PReLU, negative_slope_init=0.25, param_dtype=self.param_dtype)

        x = act()(conv(self.features, (9, 9))(x))
        skip = x
        for _ in range(self.num_blocks):
            x = ResidualBlock(self.features, conv, norm, act)(x)
        x = norm()(conv(self.features, (3, 3))(x)) + skip
        for _ in range(n_up):
            x = act()(PixelShuffle(2)(conv(self.features * 4, (3, 3))(x)))
        if not self.bicubic_skip:
            return conv(self.channels, (9, 9))(x)
        residual = conv(self.channels, (9, 9), kernel_init=nn.initializers.zeros)(x)
        b, h, w, c = lr.shape
        upsampled = jax.image.resize(lr, (b, h * self.scale, w * self.scale, c), "bicubic")
        return upsampled.astype(residual.dtype) + residual


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """``[batch, H, W, C] -> [batch, size, size, C]``, PyTorch ``AdaptiveAvgPool2d`` bins."""

    def matrix(n: int) -> np.ndarray:
        m = np.zeros((size, n), np.float32)
        for i in range(size):
            start, end = (i * n) // size, -(-((i + 1) * n) // size)
            m[i, start:end] = 1.0 / (end - start)
        return m

    mh, mw = matrix(x.shape[1]), matrix(x.shape[2])
    return jnp.einsum("ih,jw,bhwc->bijc", mh.astype(x.dtype), mw.astype(x.dtype), x)


class SRDiscriminator(nn.Module):
    """SRGAN discriminator: ``[batch, H, W, channels] -> logits [batch]``.

    ``return_features=True`` returns ``(logits, [8 conv-block feature maps])`` for
    the feature-matching content loss.
    """

    features: int = 64
    dense_features: int = 1024
    pool_size: int | None = None
    axis_name: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    ops: backend.Ops | None = None  # the form of each conv (jaxthyroid.models.backend)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, return_features: bool = False):
        norm = _norm(train, self.axis_name, self.dtype, self.param_dtype)
        ops = backend.resolve(self.ops)
        feature_maps = []
        for i in range(8):
            width = self.features * 2 ** (i // 2)
            stride = 2 if i % 2 else 1
            # explicit padding 1 == PyTorch (SAME would pad (0, 1) at stride 2)
            x = ops.conv(
                width,
                (3, 3),
                strides=(stride, stride),
                padding=((1, 1), (1, 1)),
                use_bias=True,
                kernel_init=nn.initializers.lecun_normal(),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x)
            if i > 0:
                x = norm()(x)
            x = nn.leaky_relu(x, 0.2)
            feature_maps.append(x)
        if self.pool_size is not None:
            x = adaptive_avg_pool(x, self.pool_size)
        x = x.reshape(x.shape[0], -1)
        x = nn.leaky_relu(nn.Dense(self.dense_features, dtype=self.dtype, param_dtype=self.param_dtype)(x), 0.2)
        logit = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype)(x).reshape(x.shape[0])
        return (logit, feature_maps) if return_features else logit


SRResNetX2 = functools.partial(SRResNet, scale=2)
SRResNetX4 = functools.partial(SRResNet, scale=4)
# Tiny variants for tests.
TinySRResNet = functools.partial(SRResNet, scale=2, num_blocks=2, features=8)
TinySRDiscriminator = functools.partial(SRDiscriminator, features=8, dense_features=16, pool_size=2)
