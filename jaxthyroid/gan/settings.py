"""Every key a DCGAN or SRGAN config can take, with its default, in one place.

A config file declares its GAN blocks through :func:`dcgan_config` /
:func:`srgan_config`, so every key is in the config and can be overridden on the
command line (``--config.gan.dcgan.aux_weight=0``); the trainings read
``complete(cfg, ...)``, so a key that is not here is an error and an older run's
saved config (fewer keys) still loads. Budgets: ``steps`` (``pretrain_steps`` /
``gan_steps``) optimiser steps; when those are 0, ``epochs`` converted up front
(:func:`jaxthyroid.gan.budget.steps_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxthyroid.config import ConfigError

DCGAN: dict[str, Any] = dict(
    image_size=32,  # the DCGAN's working size (real images are area-resized to it)
    nz=100,  # noise dimension (Radford)
    ngf=64,  # generator width
    ndf=64,  # discriminator width
    steps=0,  # optimiser steps
    epochs=0,  # used when steps is 0: passes over the real training images
    batch_size=64,
    learning_rate=2e-4,  # Adam, beta1 0.5
    lr_decay_fraction=0.0,  # > 0: the rate falls linearly to 0 over this last share of the steps
    aux_weight=0.0,  # > 0: D gets an AC-GAN finding-set classifier head with this loss weight
    label_std=None,  # None: flax's default label-embedding init; a float: N(0, std²)
    conditional_norm=False,  # conditional BatchNorm in G
    ema_decay=0.0,  # > 0: sample from a moving average of G's parameters (BatchNorm statistics re-estimated)
    fast_upsample=True,  # sub-pixel transposed convolutions (same function, faster on CPU)
    conv_im2col=None,  # None: im2col convs where they pay on the CPU backend; True / False: all / none
    sample_every_steps=0,  # a sample grid every this many steps (0: three over the run)
    checkpoint_every_steps=None,  # None: once per epoch
    data_parallel=True,  # shard batches over every device when the batch divides evenly
)

SRGAN: dict[str, Any] = dict(
    scale=2,  # ×2 (64² -> 128²) by default; ×4 available
    num_blocks=16,  # SRResNet residual blocks (Ledig)
    features=64,
    bicubic_skip=False,  # the generator adds its output to a bicubic upsampling
    conv_im2col=None,
    pretrain_steps=0,  # SRResNet (MSE) optimiser steps
    pretrain_epochs=0,  # used when pretrain_steps is 0
    gan_steps=0,  # SRGAN optimiser steps
    gan_epochs=0,  # used when gan_steps is 0
    batch_size=16,
    learning_rate=1e-4,  # SRGAN phase (G and D)
    pretrain_learning_rate=None,  # None: learning_rate
    adversarial_weight=1e-3,
    content_loss="feature_matching",  # feature_matching | mse | classifier | vgg19 (see gan_losses)
    d_features=64,  # discriminator width
    d_dense_features=1024,
    d_pool_size=None,  # None: the paper's flatten; an int average-pools to that grid first
    eval_images=200,  # test images scored (PSNR/SSIM)
    checkpoint_every_steps=None,
    data_parallel=True,
)


def complete(cfg: Mapping | ml_collections.ConfigDict | None, defaults: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """``defaults`` updated with ``cfg``'s values, as a locked ConfigDict; a key of
    ``cfg`` that ``defaults`` does not know is a :class:`ConfigError` naming it."""
    given = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown GAN config key(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    out = ml_collections.ConfigDict({**defaults, **given})
    out.lock()
    return out


def dcgan_config(**values) -> ml_collections.ConfigDict:
    """A DCGAN config block with every key declared (``values`` override the defaults)."""
    return complete(values, DCGAN)


def srgan_config(**values) -> ml_collections.ConfigDict:
    """An SRGAN config block with every key declared (``values`` override the defaults)."""
    return complete(values, SRGAN)
