r"""The whole pipeline at toy size: a smoke test of every stage (used by the tests).

Command:
  jaxthyroid reproduce --preset tiny --out /tmp/tiny

tests/test_reproduce.py runs it (SIGKILLed after the GAN stage, then rerun).
Its numbers mean nothing: a few dozen 64² images, a few steps of a tiny ResNet. Use `quick` or `paper` for results.
"""

import pathlib

from jaxthyroid import config


def _load(name):
    return config.load_config(str(pathlib.Path(__file__).with_name(f"{name}.py")))


def get_config():
    c = _load("reproduce_quick")
    c.preset = "tiny"
    cl = c.classifier
    cl.data.n_train, cl.data.n_val, cl.data.n_test = 48, 24, 24
    cl.data.batch_size, cl.data.eval_batch_size = 8, 24
    cl.data.augment = False
    cl.model.name = "resnet_tiny"
    cl.model.num_filters = 0
    cl.phase1.steps, cl.phase2.steps, cl.plain.steps = 2, 2, 4
    cl.phase1.warmup_fraction = cl.phase2.warmup_fraction = cl.plain.warmup_fraction = 0.0
    cl.eval_every_steps = 2
    # GAN budgets in steps: one pass over the 48 training images at batch 8 each.
    c.gan.dcgan.update(dict(image_size=32, nz=8, ngf=4, ndf=4, steps=6, batch_size=8))
    c.gan.srgan.update(dict(num_blocks=1, features=8, pretrain_steps=6, gan_steps=6, batch_size=8))
    # At toy sizes compiling is most of the run, and the im2col convs (the CPU speed
    # lever) take about twice as long to compile as XLA's own: plain convs here.
    cl.model.conv_im2col = False
    c.gan.dcgan.conv_im2col = c.gan.srgan.conv_im2col = False
    c.synthetic.per_set = 2
    c.ablations = ["no_gan", "no_cross", "no_two_phase"]
    c.baselines = ["vgg_tiny"]
    c.scarcity.per_set = [2]
    c.scarcity.steps = 2
    return c
