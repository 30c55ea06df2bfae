"""DCGAN (Radford et al. 2016) generator and discriminator, optionally class-conditional.

The layout is the PyTorch DCGAN example at 64² (nz=100, ngf=ndf=64):

* Generator ``[batch, nz] -> [batch, 64, 64, channels]`` in [-1, 1]: a 4×4 transposed
  conv from 1×1 to 4×4 (ngf·8), then stride-2 4×4 transposed convs halving the width
  up to 32² (ngf), BatchNorm + ReLU after each, a last transposed conv to
  ``channels`` and tanh.
* Discriminator ``[batch, 64, 64, channels] -> [batch]`` logits (no sigmoid; the loss
  takes logits): stride-2 4×4 convs (ndf … ndf·8) with LeakyReLU 0.2, BatchNorm after
  all but the first, and a 4×4 valid conv to one logit.

Weights N(0, 0.02), BatchNorm scale N(1, 0.02), biases 0, no conv biases.
BatchNorm momentum 0.9 equals PyTorch's 0.1 (Flax's default 0.99 does not).

Other image sizes (powers of two ≥ 8) add or drop stride-2 layers; the widths at
4×4 stay ngf·2^(n-1) / ndf·2^(n-1) for n stride-2 layers.

Conditional variant (``num_classes > 0``): the label is a finding-set id (an index
into ``findings.DEFAULT.finding_sets``, 12 of them), so one generator makes every
finding set, single or cross. G concatenates a learned label embedding to z; D adds
a projection term ``<embed(y), sum_hw h>`` on its last feature map (Miyato &
Koyama 2018), which keeps D's unconditional path unchanged. Two options make the
label's signal as strong as the noise's (DESIGN §7): ``label_std`` initialises G's
embedding at that scale (z is N(0, 1); flax's default embedding is ~N(0, 1/embed_dim)),
and ``conditional_norm`` gives every G BatchNorm a per-class gain and shift
(conditional BatchNorm, de Vries et al. 2017: ``BN(x)·(1 + γ_y) + β_y``, γ and β
zero at init so a fresh G computes what the plain one does).

Convs and transposed convs are built through ``ops`` (:class:`jaxthyroid.models.backend.Ops`,
None: the backend's policy; the same function whatever form it picks).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxthyroid import findings
from jaxthyroid.models import backend
from jaxthyroid.models.upsample import dcgan_kernel_init

Dtype = Any


def bn_scale_init(key, shape, dtype=jnp.float32):
    """BatchNorm scale N(1, 0.02) (the PyTorch DCGAN example's ``weights_init``)."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _num_stride2_layers(image_size: int) -> int:
    n = int(round(math.log2(image_size / 4)))
    if image_size < 8 or 4 * 2**n != image_size:
        raise ValueError(f"DCGAN image_size must be a power of two >= 8, got {image_size}")
    return n


class Generator(nn.Module):
    """DCGAN generator: ``z [batch, nz]`` (+ ``finding_set [batch]`` int) -> ``[batch, S, S, channels]``.

    Attributes:
      channels: output image channels (1 for scintigrams).
      image_size: output side S.
      nz: latent size.
      ngf: generator width at the last hidden layer.
      num_classes: 0 for unconditional; else the number of finding sets.
      embed_dim: label embedding size appended to z (conditional only).
      label_std: the label embedding's initial standard deviation (None: flax's default).
      conditional_norm: per-class gain and shift after every BatchNorm (conditional only).
      axis_name: BatchNorm statistics are averaged over this mesh axis (set by the
        data-parallel train step so BN sees the global batch).
      ops: the form of each transposed conv (None: ``jaxthyroid.models.backend.default_ops()``).
    """

    channels: int = 1
    image_size: int = 64
    nz: int = 100
    ngf: int = 64
    num_classes: int = 0
    embed_dim: int = 50
    label_std: float | None = None
    conditional_norm: bool = False
    axis_name: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    ops: backend.Ops | None = None

    @nn.compact
    def __call__(self, z: jax.Array, finding_set: jax.Array | None = None, *, train: bool) -> jax.Array:
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            scale_init=bn_scale_init,
            axis_name=self.axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        n = _num_stride2_layers(self.image_size)
        z = z.reshape(z.shape[0], -1)
        if self.num_classes:
            if finding_set is None:
                raise ValueError("conditional Generator needs finding_set [batch] int ids")
            embed_init = {} if self.label_std is None else {"embedding_init": nn.initializers.normal(self.label_std)}
            label = nn.Embed(
                self.num_classes, self.embed_dim, param_dtype=self.param_dtype, name="label_embed", **embed_init
            )(finding_set)
            z = jnp.concatenate([z, label.astype(z.dtype)], axis=-1)
        plain_norm = norm
        if self.num_classes and self.conditional_norm:

            def norm():  # BN(x)·(1 + γ_y) + β_y, γ = β = 0 at init
                def apply(x):
                    features = x.shape[-1]
                    gain = nn.Embed(self.num_classes, 2 * features, embedding_init=nn.initializers.zeros)(finding_set)
                    gamma, beta = jnp.split(gain.astype(x.dtype)[:, None, None, :], 2, axis=-1)
                    return plain_norm()(x) * (1.0 + gamma) + beta

                return apply

        ops = backend.resolve(self.ops)
        convt = dict(use_bias=False, kernel_init=dcgan_kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        features = self.ngf * 2 ** (n - 1)
        x = ops.project(features, 4, name="project", **convt)(z)
        x = nn.relu(norm()(x))
        for i in range(n):
            last = i == n - 1
            out = self.channels if last else features // 2 ** (i + 1)
            # PyTorch ConvTranspose2d(k=4, s=2, p=1) (Ops.conv_transpose's default shape)
            x = ops.conv_transpose(out, name=f"up{i}", **convt)(x)
            x = jnp.tanh(x) if last else nn.relu(norm()(x))
        return x


class Discriminator(nn.Module):
    """DCGAN discriminator: ``[batch, S, S, channels]`` (+ ``finding_set``) -> logits ``[batch]``.

    With ``return_features=True`` returns ``(logits, [feature maps after each conv
    block])`` for feature-matching losses; with ``return_class_logits=True`` (needs
    ``aux_classifier``) ``(logits, class logits [batch, aux_classifier])``, the
    auxiliary classifier of AC-GAN (Odena et al. 2017).

    Attributes:
      image_size: input side S (sets the number of stride-2 convs).
      ndf: width of the first conv.
      num_classes: 0 for unconditional; else adds the projection term.
      axis_name: mesh axis for global BatchNorm statistics (set by the train step).
    """

    image_size: int = 64
    ndf: int = 64
    num_classes: int = 0
    axis_name: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    ops: backend.Ops | None = None  # the form of each conv (jaxthyroid.models.backend)
    aux_classifier: int = 0  # > 0: an auxiliary classifier head over this many classes (AC-GAN)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        finding_set: jax.Array | None = None,
        *,
        train: bool,
        return_features: bool = False,
        return_class_logits: bool = False,
    ):
        conv = functools.partial(
            backend.resolve(self.ops).conv,
            kernel_size=(4, 4),
            use_bias=False,
            kernel_init=dcgan_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            scale_init=bn_scale_init,
            axis_name=self.axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        n = _num_stride2_layers(self.image_size)
        features = []
        for i in range(n):
            x = conv(self.ndf * 2**i, strides=(2, 2), padding=((1, 1), (1, 1)))(x)
            if i > 0:
                x = norm()(x)
            x = nn.leaky_relu(x, 0.2)
            features.append(x)
        logit = conv(1, padding=((0, 0), (0, 0)))(x).reshape(x.shape[0])
        if self.num_classes:
            if finding_set is None:
                raise ValueError("conditional Discriminator needs finding_set [batch] int ids")
            label = nn.Embed(
                self.num_classes,
                x.shape[-1],
                embedding_init=dcgan_kernel_init,
                param_dtype=self.param_dtype,
                name="label_projection",
            )(finding_set)
            logit = logit + jnp.sum(jnp.sum(x, axis=(1, 2)) * label.astype(x.dtype), axis=-1)
        if self.aux_classifier:  # AC-GAN head: which finding set, from the pooled last feature map
            class_logits = nn.Dense(self.aux_classifier, param_dtype=self.param_dtype, name="aux_head")(
                jnp.mean(x, axis=(1, 2))
            )
            if return_class_logits:
                return logit, class_logits.astype(jnp.float32)
        elif return_class_logits:
            raise ValueError("return_class_logits needs a Discriminator with aux_classifier > 0")
        return (logit, features) if return_features else logit


NUM_FINDING_SETS = findings.DEFAULT.num_sets  # 12: 6 single + 6 cross

DCGANGenerator = Generator
DCGANDiscriminator = Discriminator
ConditionalGenerator = functools.partial(Generator, num_classes=NUM_FINDING_SETS)
ConditionalDiscriminator = functools.partial(Discriminator, num_classes=NUM_FINDING_SETS)
# Tiny variants for tests.
TinyGenerator = functools.partial(Generator, image_size=32, nz=16, ngf=8)
TinyDiscriminator = functools.partial(Discriminator, image_size=32, ndf=8)
