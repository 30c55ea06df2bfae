r"""Two-phase cross-training, quick preset: ResNet-18 on 64² phantom images, CPU.

Command:
  jaxthyroid train --config cross_training_quick
  (or: python experiments/cross_training.py --config cross_training_quick)

Phase 1 trains a plain ResNet-18 on single-feature images; phase 2 grafts its weights
into the cross-residual ResNet-18 (cross terms start at zero, so the grafted model
computes the same function) and retrains everything on the cross-training set
(single- and cross-feature images). A plain ResNet-18 trained once on everything for
the same total number of epochs is the control.

Size: 960 train / 192 val / 384 test images (~25 % cross-feature); phase 1 5 epochs,
phase 2 3 epochs, control 8 epochs (435 optimiser steps of 32 in all).
Measured runtime (idle 2-core AMD EPYC, 2026-11-27 afternoon): 286 s wall with a cold
compilation cache, 242 s warm (data set already built; building it adds ~15 s).
A killed run resumes when the same command is rerun (finished phases are skipped).
Expected result: the closing table printed at the end and results.json; the
numbers measured on this machine are quoted in README.md.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "runs/cross_training_quick"

    c.data = ml_collections.ConfigDict()
    c.data.source = "phantom"  # phantom (TFDS + grain) | folder (a built folder data set)
    c.data.data_dir = "data_dir"  # where TFDS data sets live
    c.data.dataset_dir = ""  # source=folder: the folder `jaxthyroid data build folder` printed
    c.data.size = 64
    # Sized for ~10 min on 2 shared CPU cores (see the docstring); ~25 % cross-feature.
    c.data.n_train = 960
    c.data.n_val = 192
    c.data.n_test = 384
    c.data.cross_fraction = 0.25
    c.data.batch_size = 32
    c.data.eval_batch_size = 128
    c.data.augment = True
    c.data.synthetic_dir = ""  # a GAN-augmented TFDS data set to mix in (see `jaxthyroid augment`)
    c.data.synthetic_ratio = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.cross_source = "adapter"  # adapter | image: where the cross term x_i comes from
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.conv_im2col = None  # convs as im2col matmuls: None = on for the CPU backend only

    def phase(epochs, lr, train_on, param_groups=()):
        p = ml_collections.ConfigDict()
        p.epochs = epochs
        p.train_on = train_on  # single | all
        p.optimizer = "sgd"
        p.learning_rate = lr
        p.momentum = 0.9
        p.weight_decay = 1e-4
        p.schedule = "warmup_cosine"
        p.warmup_steps = 20
        p.param_groups = list(param_groups)  # [(regex on param path, lr multiplier | "frozen")]
        return p

    c.phase1 = phase(5, 0.05, "single")
    # plain: the plain ResNet, grafted into the cross model for phase 2 | cross: the
    # cross model itself with its cross terms frozen at zero (a frozen param group).
    c.phase1.model = "plain"
    c.phase2 = phase(3, 0.02, "all")
    # The control: a plain ResNet trained once on everything, as many epochs as both phases.
    c.plain = phase(8, 0.05, "all")
    c.plain.enabled = True

    c.checkpoint_every_steps = 100
    c.keep = 2
    c.log_every = 10
    return c
