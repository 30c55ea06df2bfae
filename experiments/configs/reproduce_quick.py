r"""The whole method end to end, quick preset: 64² phantom, small widths, CPU.

Command:
  jaxthyroid reproduce --preset quick            (what `make demo` runs)
  jaxthyroid reproduce --preset quick --seeds 3  (mean ± spread over 3 seeds)

Stages: phantom data set -> conditional DCGAN (32²) -> SRGAN (×2, 32² -> 64²) ->
synthetic set -> two-phase cross-training (ResNet-18 at 1/4 width, the data of
cross_training_quick) with the plain control -> ablation (no GAN; it also judges the GAN) ->
report.md. Every arm a claim compares gets the same optimiser steps, batch and
schedule (phase 1 + phase 2 = the control's steps). Sized for `make demo` in 10 minutes
on 2 CPU cores: the baselines, the cross-term and two-phase ablations and the data-scarcity study run
in the paper preset only (here: empty lists). Runtime and the numbers it produced:
README.md; they are small-data, small-model numbers, not comparable to the paper's.
"""

import pathlib

import ml_collections

from jaxthyroid import config
from jaxthyroid.gan import settings


def _load(name):
    return config.load_config(str(pathlib.Path(__file__).with_name(f"{name}.py")))


def get_config():
    c = ml_collections.ConfigDict()
    c.preset = "quick"

    # The classifier runs: a cross-training config (see cross_training_quick.py).
    cl = _load("cross_training_quick")
    c.classifier = cl

    c.gan = ml_collections.ConfigDict()
    # gan_quick's DCGAN (label embedding + projection discriminator + AC-GAN head, chosen
    # there: docs/gan.md) at twice its width (ngf = ndf = 32) with the AC-GAN loss at weight 3,
    # sampled from a moving average of G's parameters (decay 0.999, BatchNorm statistics
    # re-estimated for it): of the variants measured at 3,000 steps (docs/gan.md) the one
    # closest to the real images in a judge's features with the most agreement; trained for
    # 5,000 steps, where its images' agreement stops sitting on the 0.8x edge (docs/gan.md).
    c.gan.dcgan = settings.dcgan_config(
        **{
            **_load("gan_quick").dcgan.to_dict(),
            "steps": 5000,
            "ngf": 32,
            "ndf": 32,
            "aux_weight": 3.0,
            "ema_decay": 0.999,
        }
    )
    # SRResNet and SRGAN at CPU size: 2 residual blocks, a narrow discriminator. The SRGAN
    # phase keeps the pixel MSE as its content loss (Ledig et al.'s SRGAN-MSE): matching the
    # discriminator's features instead cost 3 dB against the noise-free images and lowered
    # the generated images' agreement with their finding sets (docs/gan.md).
    c.gan.srgan = settings.srgan_config(
        scale=2,
        num_blocks=2,
        features=32,
        bicubic_skip=True,
        pretrain_steps=200,
        gan_steps=50,
        batch_size=16,
        learning_rate=1e-4,
        pretrain_learning_rate=1e-3,
        adversarial_weight=1e-3,
        content_loss="mse",
        d_features=16,
        d_dense_features=256,
        d_pool_size=4,
        eval_images=120,
    )

    c.synthetic = ml_collections.ConfigDict(dict(per_set=40, ratio=0.5))

    # Ablation arms: no_gan (required: its real-only model judges the GAN), no_cross, no_two_phase.
    # The quick preset runs no_gan only, to spend `make demo`'s 10 minutes on steps and on the
    # DCGAN; the paper preset runs all three (--config.ablations='["no_gan","no_cross"]' adds one).
    c.ablations = ["no_gan"]
    # Comparison networks, each trained once on the same data and steps as the plain control.
    c.baselines = []
    # Data scarcity: the plain network on this many real images per finding set, without
    # and with the GAN images, for scarcity.steps optimiser steps each.
    c.scarcity = ml_collections.ConfigDict(dict(per_set=[], steps=300))
    return c
