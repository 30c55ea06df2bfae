"""ResNet-18/34/50/101 (torchvision architecture) and the paper's cross-residual block.

The paper ("Diagnosis of thyroid SPECT image based on ResNet model", 2020) says
only that each residual block's output gets an extra term ``x_i`` carrying
"cross-feature information":

    y = act(F(x) + shortcut(x) + x_i)

It does not say how ``x_i`` is computed. We read it as a *learnable extra path*
into every block, and offer two sources (``cross_source``):

* ``"adapter"`` (default): a small bottleneck branch on the block input
  (1×1 conv to C/r, ReLU, 3×3 conv with the block's stride, ReLU, 1×1 conv to the
  block's output channels). It lets every block learn features that mix the
  findings without changing the backbone — the reading that fits "retrain the
  phase-1 model on a cross-training set" best, because the backbone can be kept
  and only ``cross_term`` trained or trained faster.
* ``"image"``: the literal "information from the input" reading — the input image,
  average-pooled (or resized) to the block's resolution, projected by a 3×3 conv,
  ReLU and a 1×1 conv to the block's output channels.

Either way the branch is the submodule ``cross_term`` of its block (an optimiser
selects it by path, see ``param_labels``) and its last layer starts at zero
(kernel and bias), so a fresh cross model computes exactly what the plain model
computes, and ``graft_plain_into_cross`` turns a trained plain model into a cross
model with the same outputs. Outside ``cross_term`` the parameter paths of the
cross model equal the plain model's (blocks and layers are named explicitly).

Every conv and the max-pool are built through ``ops`` (:class:`jaxthyroid.models.backend.Ops`,
None: the backend's policy), which picks the form that computes them fastest on the
backend; the network is the same function whatever it picks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxthyroid.models import backend, layers

ModuleDef = Any
Dtype = Any

# torchvision's conv init (kaiming normal, fan_out, ReLU gain).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
zeros = nn.initializers.zeros

CROSS_TERM = "cross_term"


# ---------------------------------------------------------------------------
# Plain blocks
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3×3 convs (ResNet-18/34). ``[batch, H, W, C]`` -> ``[batch, H/s, W/s, features]``."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: tuple[int, int] = (1, 1)
    act: Callable = nn.relu
    zero_init_residual: bool = True

    expansion = 1

    def branches(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns ``(F(x), shortcut(x))``; called from ``__call__`` (creates submodules)."""
        out = self.features * self.expansion
        last_scale = zeros if self.zero_init_residual else nn.initializers.ones
        y = self.conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = self.norm(scale_init=last_scale, name="bn2")(y)
        return y, self.shortcut(x, out)

    def shortcut(self, x: jax.Array, out: int) -> jax.Array:
        if x.shape[-1] == out and self.strides == (1, 1):
            return x
        x = self.conv(out, (1, 1), self.strides, name="downsample_conv")(x)
        return self.norm(name="downsample_bn")(x)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual, shortcut = self.branches(x)
        return self.act(residual + shortcut)


class BottleneckBlock(BasicBlock):
    """1×1 → 3×3 (strided, torchvision v1.5) → 1×1 ×4 (ResNet-50/101)."""

    expansion = 4

    def branches(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = self.features * self.expansion
        last_scale = zeros if self.zero_init_residual else nn.initializers.ones
        y = self.conv(self.features, (1, 1), name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)), name="conv2")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(out, (1, 1), name="conv3")(y)
        y = self.norm(scale_init=last_scale, name="bn3")(y)
        return y, self.shortcut(x, out)


# ---------------------------------------------------------------------------
# Cross term and cross blocks
# ---------------------------------------------------------------------------


class CrossAdapter(nn.Module):
    """``x_i`` from the block input: ``[batch, H, W, C]`` -> ``[batch, H/s, W/s, features]``.

    Bottleneck branch; the last 1×1 conv starts at zero (kernel and bias), so the
    branch outputs 0 until trained.
    """

    features: int
    strides: tuple[int, int] = (1, 1)
    reduction: int = 4
    act: Callable = nn.relu
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    ops: backend.Ops | None = None  # the ResNet's

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = max(self.features // self.reduction, 8)
        conv = partial(
            backend.resolve(self.ops).conv,
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=conv_kernel_init,
        )
        h = self.act(conv(hidden, (1, 1), name="reduce")(x))
        h = self.act(conv(hidden, (3, 3), self.strides, padding=((1, 1), (1, 1)), name="spatial")(h))
        return conv(self.features, (1, 1), kernel_init=zeros, bias_init=zeros, name="expand")(h)


class ImageCrossTerm(nn.Module):
    """``x_i`` from the input image: ``[batch, H0, W0, C0]`` -> ``[batch, h, w, features]``.

    The image is average-pooled (resized if the sizes do not divide) to the block's
    resolution ``(h, w)``; the last 1×1 conv starts at zero.
    """

    features: int
    reduction: int = 4
    act: Callable = nn.relu
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    ops: backend.Ops | None = None  # the ResNet's

    @nn.compact
    def __call__(self, image: jax.Array, height: int, width: int) -> jax.Array:
        hidden = max(self.features // self.reduction, 8)
        conv = partial(
            backend.resolve(self.ops).conv,
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=conv_kernel_init,
        )
        image = layers.resize_to(image.astype(self.dtype), height, width)
        h = self.act(conv(hidden, (3, 3), padding=((1, 1), (1, 1)), name="embed")(image))
        return conv(self.features, (1, 1), kernel_init=zeros, bias_init=zeros, name="expand")(h)


def _cross_term(block: BasicBlock, x: jax.Array, image: jax.Array | None, like: jax.Array) -> jax.Array:
    """Builds and applies ``block``'s ``cross_term`` branch; output shaped like ``like``."""
    common = dict(
        features=like.shape[-1],
        reduction=block.cross_reduction,
        act=block.act,
        dtype=like.dtype,
        param_dtype=block.cross_param_dtype,
        ops=block.cross_ops,
        name=CROSS_TERM,
    )
    if block.cross_source == "adapter":
        return CrossAdapter(strides=block.strides, **common)(x)
    if block.cross_source == "image":
        if image is None:
            raise ValueError("cross_source='image' needs the input image passed to the block.")
        return ImageCrossTerm(**common)(image, like.shape[1], like.shape[2])
    raise ValueError(f"cross_source must be 'adapter' or 'image', got {block.cross_source!r}.")


class CrossBasicBlock(BasicBlock):
    """Basic block with the paper's cross term: ``y = act(F(x) + shortcut(x) + x_i)``."""

    cross_source: str = "adapter"
    cross_reduction: int = 4
    cross_param_dtype: Dtype = jnp.float32
    cross_ops: backend.Ops | None = None

    @nn.compact
    def __call__(self, x: jax.Array, image: jax.Array | None = None) -> jax.Array:
        residual, shortcut = self.branches(x)
        return self.act(residual + shortcut + _cross_term(self, x, image, residual))


class CrossBottleneckBlock(BottleneckBlock):
    """Bottleneck block with the paper's cross term."""

    cross_source: str = "adapter"
    cross_reduction: int = 4
    cross_param_dtype: Dtype = jnp.float32
    cross_ops: backend.Ops | None = None

    @nn.compact
    def __call__(self, x: jax.Array, image: jax.Array | None = None) -> jax.Array:
        residual, shortcut = self.branches(x)
        return self.act(residual + shortcut + _cross_term(self, x, image, residual))


CROSS_BLOCKS: dict[type, type] = {BasicBlock: CrossBasicBlock, BottleneckBlock: CrossBottleneckBlock}


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


STEMS = ("imagenet", "small")


class ResNet(nn.Module):
    """torchvision-style ResNet: stem, 4 stages, global average pool, dense head.

    ``stem``: ``"imagenet"`` (torchvision: 7×7/2 conv, BN, ReLU, 3×3/2 max-pool; the
    first stage sees ``H/4 × W/4``) or ``"small"`` (CIFAR-style, for inputs of 64² and
    below: 3×3/1 conv, BN, ReLU, no pool; the first stage sees ``H × W``, so every
    stage does 16× the work of the ``imagenet`` stem's at the same width).

    ``__call__(x, *, train)``: ``[batch, H, W, in_channels]`` -> logits
    ``[batch, num_classes]`` (float32 whatever ``dtype``).
    """

    stage_sizes: Sequence[int]
    block_cls: type
    num_classes: int
    num_filters: int = 64
    stem: str = "imagenet"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act: Callable = nn.relu
    # PyTorch-equivalent BN (Flax's default momentum 0.99 differs).
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    # Set to the mesh axis (e.g. 'data') to sync batch statistics under shard_map.
    bn_axis_name: str | None = None
    zero_init_residual: bool = True
    cross: bool = False
    cross_source: str = "adapter"
    cross_reduction: int = 4
    # The form of each conv and pool (None: jaxthyroid.models.backend.default_ops()).
    ops: backend.Ops | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        image = x
        ops = backend.resolve(self.ops)
        conv = partial(
            ops.conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=conv_kernel_init,
        )
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            axis_name=self.bn_axis_name,
        )
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, not {self.stem!r}")
        small = self.stem == "small"
        k, s, pad = (3, 1, 1) if small else (7, 2, 3)
        stem = dict(
            features=self.num_filters,
            kernel_size=(k, k),
            strides=(s, s),
            padding=((pad, pad), (pad, pad)),
            name="conv_init",
        )
        x = conv(**stem)(x)
        x = self.act(norm(name="bn_init")(x))
        if not small:
            x = ops.max_pool(x, 3, 2, ((1, 1), (1, 1)))

        block_cls = CROSS_BLOCKS.get(self.block_cls, self.block_cls) if self.cross else self.block_cls
        cross_fields = (
            dict(
                cross_source=self.cross_source,
                cross_reduction=self.cross_reduction,
                cross_param_dtype=self.param_dtype,
                cross_ops=ops,
            )
            if self.cross
            else {}
        )
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                block = block_cls(
                    features=self.num_filters * 2**i,
                    strides=strides,
                    conv=conv,
                    norm=norm,
                    act=self.act,
                    zero_init_residual=self.zero_init_residual,
                    name=f"stage{i + 1}_block{j + 1}",
                    **cross_fields,
                )
                x = block(x, image) if self.cross else block(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
        return x.astype(jnp.float32)


ResNetTiny = partial(ResNet, stage_sizes=(1, 1), block_cls=BasicBlock, num_filters=8)
ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)


# ---------------------------------------------------------------------------
# Plain -> cross
# ---------------------------------------------------------------------------


def _is_cross_path(path: tuple[str, ...]) -> bool:
    return CROSS_TERM in path


def graft_plain_into_cross(plain_variables: Mapping[str, Any], cross_variables: Mapping[str, Any]) -> dict[str, Any]:
    """Copies every plain param / batch stat into the cross model's variables.

    The cross model's ``cross_term`` entries (zero-initialised last layer) are kept,
    so the result computes what the plain model computes. Raises ``ValueError`` if
    the trees disagree outside ``cross_term`` (different depth, width or classes).

    Args:
      plain_variables: ``{'params': ..., 'batch_stats': ...}`` of a plain ResNet.
      cross_variables: the same collections of the matching ``cross=True`` ResNet,
        e.g. from ``init`` or ``jax.eval_shape(init)`` with real arrays.
    Returns:
      A new variables dict shaped like ``cross_variables``.
    """
    out = {}
    for collection, cross_tree in cross_variables.items():
        cross_flat = traverse_util.flatten_dict(cross_tree)
        plain_flat = traverse_util.flatten_dict(plain_variables.get(collection, {}))
        backbone = {p for p in cross_flat if not _is_cross_path(p)}
        missing, extra = backbone - plain_flat.keys(), plain_flat.keys() - backbone
        if missing or extra:
            raise ValueError(
                f"graft_plain_into_cross: {collection!r} trees differ outside {CROSS_TERM!r}: "
                f"missing in plain {sorted(missing)[:3]}, not in cross {sorted(extra)[:3]}. "
                "Build both models with the same depth, width, channels and classes."
            )
        merged = dict(cross_flat)
        for path, value in plain_flat.items():
            if jnp.shape(value) != jnp.shape(cross_flat[path]):
                raise ValueError(
                    f"graft_plain_into_cross: shape of {'/'.join(path)} differs: "
                    f"plain {jnp.shape(value)} vs cross {jnp.shape(cross_flat[path])}."
                )
            merged[path] = value
        out[collection] = traverse_util.unflatten_dict(merged)
    return out


def param_labels(params: Mapping[str, Any]) -> Any:
    """Pytree of ``'cross_term'`` / ``'backbone'`` labels for ``optax.multi_transform``."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({p: CROSS_TERM if _is_cross_path(p) else "backbone" for p in flat})
