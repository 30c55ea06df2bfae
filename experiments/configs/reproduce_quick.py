r"""The whole method end to end, quick preset: 64² phantom, small widths, CPU.

Command:
  jaxthyroid reproduce --preset quick            (what `make demo` runs)
  jaxthyroid reproduce --preset quick --seeds 3  (mean ± spread over 3 seeds)

Stages: phantom data set -> conditional DCGAN (32²) -> SRGAN (×2, 32² -> 64²) ->
synthetic set -> two-phase cross-training (ResNet-18 at 1/4 width, 480 train images) -> ablations ->
baselines -> data-scarcity study -> report.md.
Measured: `time make demo` on a fresh clone, idle 2-core AMD EPYC, no accelerator:
real 9m56s (venv + install included; the pipeline 537 s with a cold compilation cache).
The numbers it produced on this machine are quoted in README.md; they are small-data,
small-model numbers and not comparable to the paper's.
"""

import pathlib

import ml_collections

from jaxthyroid import config


def _load(name):
    return config.load_config(str(pathlib.Path(__file__).with_name(f"{name}.py")))


def get_config():
    c = ml_collections.ConfigDict()
    c.preset = "quick"

    # The classifier runs: a cross-training config (see cross_training_quick.py).
    cl = _load("cross_training_quick")
    cl.data.size = 64
    cl.data.n_train, cl.data.n_val, cl.data.n_test = 480, 120, 360
    cl.data.batch_size = 32
    cl.model.name = "resnet18"
    cl.model.num_filters = 16  # ResNet-18 at 1/4 width: CPU-sized
    cl.phase1.epochs, cl.phase2.epochs, cl.plain.epochs = 3, 3, 6
    cl.checkpoint_every_steps = 200
    c.classifier = cl

    c.gan = ml_collections.ConfigDict()
    c.gan.dcgan = ml_collections.ConfigDict(
        dict(image_size=32, nz=64, ngf=16, ndf=16, epochs=5, batch_size=32, learning_rate=2e-4)
    )
    # SRResNet and SRGAN at CPU size: 2 residual blocks, a narrow discriminator.
    c.gan.srgan = ml_collections.ConfigDict(
        dict(
            scale=2,
            num_blocks=2,
            features=32,
            bicubic_skip=True,
            pretrain_epochs=2,
            gan_epochs=1,
            batch_size=16,
            learning_rate=1e-4,
            pretrain_learning_rate=1e-3,
            adversarial_weight=1e-3,
            content_loss="feature_matching",
            d_features=16,
            d_dense_features=256,
            d_pool_size=4,
            eval_images=120,
        )
    )

    c.synthetic = ml_collections.ConfigDict(dict(per_set=40, ratio=0.5))

    # Comparison networks, each trained once on the same data as the plain ResNet.
    c.baselines = ["vgg_tiny", "densenet_tiny"]
    c.scarcity = ml_collections.ConfigDict(dict(per_set=[10, 25], epochs=4))
    return c
