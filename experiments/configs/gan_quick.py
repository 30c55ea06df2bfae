r"""GAN augmentation, quick preset: conditional DCGAN (32²) and SRGAN (×2, 32² -> 64²) on the phantom, CPU.

Command:
  python experiments/gan.py --config gan_quick
  python experiments/gan.py --config gan_quick --classifier-run runs/cross_training_quick
      (reuse a finished classifier run's plain phase instead of training one)
  Overrides as usual: --config.dcgan.epochs=10 --config.srgan.gan_epochs=0 ...

What it does: builds the 64² phantom (600 train / 120 validation / 360 test images),
trains the class-conditional DCGAN at 32² (one class per finding set, 12), pre-trains
an SRResNet ×2 on MSE and fine-tunes it as SRGAN, scores bicubic / SRResNet / SRGAN
on 200 test images (PSNR, SSIM), generates 30 images per finding set at 64², trains a
ResNet-18 on the real images only (the plain phase, 6 epochs) and reports how that
classifier sees the generated images (agreement with the conditioned finding set,
Fréchet distance in its penultimate features against the real-vs-real floor).

Measured on an idle 2-core AMD EPYC, cold compilation cache (phantom already built),
seed 0, 2026-11-27 afternoon (after layers.patch_matmul and RBG GAN init keys):
  312 s wall: DCGAN 41 s; SRGAN 208 s; generation 11 s; classifier (1/4-width
  ResNet-18, real images only) 42 s; quality 7 s.
  Each stage resumes after a kill; a finished one is skipped.
Result: PSNR / SSIM on 200 test images, bicubic 34.69 dB / 0.8624, SRResNet
  35.18 / 0.8625, SRGAN 33.33 / 0.8450; generated images: classifier agreement
  0.203 (the same classifier on real test images: 0.467; chance 1/12), Fréchet
  distance in its 128-d penultimate features 4.846 against 0.258 real-vs-real.
  (The morning's run, other GAN initialisation: SRResNet 35.27, SRGAN 34.30,
  agreement 0.269, Fréchet 1.917 — one seed moves these numbers this much.)
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "runs/gan_quick"

    c.data = ml_collections.ConfigDict(
        dict(data_dir="data_dir", size=64, n_train=600, n_val=120, n_test=360, cross_fraction=0.25)
    )

    c.dcgan = ml_collections.ConfigDict(
        dict(image_size=32, nz=64, ngf=16, ndf=16, epochs=30, batch_size=32, learning_rate=2e-4, sample_every=10)
    )
    c.srgan = ml_collections.ConfigDict(
        dict(
            # The MSE pre-training at 1e-3: at Ledig's 1e-4 a CPU-sized run (~300 steps) stays below bicubic.
            scale=2,
            num_blocks=4,
            features=32,
            bicubic_skip=True,
            pretrain_epochs=8,
            gan_epochs=2,
            batch_size=16,
            learning_rate=1e-4,
            pretrain_learning_rate=1e-3,
            adversarial_weight=1e-3,
            content_loss="feature_matching",
            eval_images=200,
            # A discriminator sized for the CPU: the paper's widths/4, pooled to 4×4 before its dense layers.
            d_features=16,
            d_dense_features=256,
            d_pool_size=4,
        )
    )

    c.generate = ml_collections.ConfigDict(dict(per_set=30))

    # The judge: a classifier trained on real images only (cross_training's plain phase).
    # num_filters 16: ResNet-18 at 1/4 width (the measured 18 min above were full width).
    c.classifier = ml_collections.ConfigDict(
        dict(model="resnet18", num_filters=16, epochs=6, batch_size=32, learning_rate=0.05)
    )
    return c
