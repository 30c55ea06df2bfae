"""Comparison CNNs for the paper's table: VGG-16-BN, AlexNet, DenseNet-121.

torchvision architectures (same layers and parameter counts for 3 channels / 1000
classes), for any channel count and inputs from 32² up:

* Adaptive average pooling follows torchvision's bin rule (``layers.adaptive_avg_pool``),
  including replication when the feature map is smaller than the target (7×7 for
  VGG at 32² input, 6×6 for AlexNet).
* AlexNet's 3×3/2 max-pools would leave no pixel below ~63² input, where torchvision
  raises; we pad a too-small map with -inf to the window, so the pool returns the
  maximum of what is there. Identical to torchvision wherever torchvision runs.

``__call__(x, *, train)``: ``[batch, H, W, C]`` -> logits ``[batch, num_classes]``
(float32). Dropout (VGG, AlexNet) needs ``rngs={'dropout': key}`` when ``train``.
Convs and max-pools are built through ``ops`` (:class:`jaxthyroid.models.backend.Ops`, None:
the backend's policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxthyroid.models import backend, layers

Dtype = Any

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torchvision initialises VGG's linear layers N(0, 0.01).
dense_kernel_init = nn.initializers.normal(0.01)

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with BatchNorm: conv3×3+BN+ReLU stacks, 2×2 max-pools, adaptive pool, 3 dense."""

    num_classes: int
    cfg: Sequence[int | str] = VGG16_CFG
    hidden: int = 4096
    pool_size: int = 7
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    ops: backend.Ops | None = None  # the form of each conv and pool (jaxthyroid.models.backend)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ops = backend.resolve(self.ops)
        conv_index = 0
        for item in self.cfg:
            if item == "M":
                x = ops.max_pool(x, 2, 2, ((0, 0), (0, 0)))
                continue
            conv_index += 1
            x = ops.conv(
                int(item),
                (3, 3),
                padding=((1, 1), (1, 1)),
                use_bias=True,
                kernel_init=conv_kernel_init,
                name=f"conv{conv_index}",
                **common,
            )(x)
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                name=f"bn{conv_index}",
                **common,
            )(x)
            x = nn.relu(x)
        x = layers.adaptive_avg_pool(x, (self.pool_size, self.pool_size))
        x = x.reshape(x.shape[0], -1)
        dense = partial(nn.Dense, kernel_init=dense_kernel_init, **common)
        for k in (1, 2):
            x = nn.relu(dense(self.hidden, name=f"fc{k}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(self.num_classes, name="head")(x).astype(jnp.float32)


VGG16BN = partial(VGG, cfg=VGG16_CFG)
VGGTiny = partial(VGG, cfg=(8, "M", 16, "M"), hidden=32, pool_size=2)


def _alexnet_pool(x: jax.Array, ops: backend.Ops) -> jax.Array:
    """3×3/2 max-pool, no padding; a map under 3 px is padded with -inf (see module doc)."""
    pad_h, pad_w = max(0, 3 - x.shape[1]), max(0, 3 - x.shape[2])
    return ops.max_pool(x, 3, 2, ((0, pad_h), (0, pad_w)))


class AlexNet(nn.Module):
    """torchvision AlexNet (the one-GPU variant: 64-192-384-256-256, adaptive 6×6)."""

    num_classes: int
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    ops: backend.Ops | None = None  # the form of each conv and pool (jaxthyroid.models.backend)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        ops = backend.resolve(self.ops)
        conv = partial(
            ops.conv,
            use_bias=True,
            kernel_init=conv_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = nn.relu(conv(64, (11, 11), (4, 4), padding=((2, 2), (2, 2)), name="conv1")(x))
        x = _alexnet_pool(x, ops)
        x = nn.relu(conv(192, (5, 5), padding=((2, 2), (2, 2)), name="conv2")(x))
        x = _alexnet_pool(x, ops)
        x = nn.relu(conv(384, (3, 3), padding=((1, 1), (1, 1)), name="conv3")(x))
        x = nn.relu(conv(256, (3, 3), padding=((1, 1), (1, 1)), name="conv4")(x))
        x = nn.relu(conv(256, (3, 3), padding=((1, 1), (1, 1)), name="conv5")(x))
        x = _alexnet_pool(x, ops)
        x = layers.adaptive_avg_pool(x, (6, 6)).reshape(x.shape[0], -1)
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(dense(4096, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(dense(4096, name="fc2")(x))
        return dense(self.num_classes, name="head")(x).astype(jnp.float32)


class DenseNet(nn.Module):
    """torchvision DenseNet (BN-ReLU-conv1×1-BN-ReLU-conv3×3 layers, compression 0.5)."""

    num_classes: int
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    ops: backend.Ops | None = None  # the form of each conv and pool (jaxthyroid.models.backend)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ops = backend.resolve(self.ops)
        conv = partial(ops.conv, use_bias=False, kernel_init=conv_kernel_init, **common)
        norm = partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, **common
        )
        x = conv(self.num_init_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv0")(x)
        x = nn.relu(norm(name="norm0")(x))
        x = ops.max_pool(x, 3, 2, ((1, 1), (1, 1)))
        for b, num_layers in enumerate(self.block_config):
            for k in range(num_layers):
                name = f"denseblock{b + 1}_layer{k + 1}"
                y = nn.relu(norm(name=f"{name}_norm1")(x))
                y = conv(self.bn_size * self.growth_rate, (1, 1), name=f"{name}_conv1")(y)
                y = nn.relu(norm(name=f"{name}_norm2")(y))
                y = conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name=f"{name}_conv2")(y)
                x = jnp.concatenate([x, y], axis=-1)
            if b != len(self.block_config) - 1:
                name = f"transition{b + 1}"
                x = nn.relu(norm(name=f"{name}_norm")(x))
                x = conv(int(x.shape[-1] * self.compression), (1, 1), name=f"{name}_conv")(x)
                x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(norm(name="norm5")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head", **common)(x).astype(jnp.float32)


DenseNet121 = partial(DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)
DenseNetTiny = partial(DenseNet, growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2)
