r"""Two-phase cross-training, quick preset: ResNet-18 at 1/4 width on 64² phantom images, CPU.

Command:
  jaxthyroid train --config cross_training_quick
  (or: python experiments/cross_training.py --config cross_training_quick)

Phase 1 trains a plain ResNet-18 on single-feature images; phase 2 grafts its weights
into the cross-residual ResNet-18 (cross terms start at zero, so the grafted model
computes the same function) and retrains everything on the cross-training set
(single- and cross-feature images). A plain ResNet-18 trained once on everything for
as many optimiser steps as both phases together is the control.

Budgets are optimiser steps (``<phase>.steps``; or ``<phase>.epochs`` > 0, converted
to steps up front from the real training images), warm-up a fraction of them.
Every key below can be overridden (``--config.phase2.steps=600``); nothing is read
that is not declared here. A killed run resumes when the same command is rerun
(finished phases are skipped). Runtime and results on this machine: README.md.
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
    # Fresh simulated images are the cheapest regulariser: building 9,600 takes seconds, and
    # at this budget (48k images seen) the plain network no longer overfits them.
    c.data.n_train = 9600
    c.data.n_val = 300
    c.data.n_test = 600
    c.data.cross_fraction = 0.25  # share of cross-feature images
    # Phantom regime (PhantomParams.regime, docs/phantom.md): default | randomised (domain
    # randomisation: collimators, counts, anatomy, exports) | ood (held out for testing).
    c.data.domain = "default"
    c.data.train_per_set = 0  # > 0: keep only this many real training images per finding set
    c.data.batch_size = 16  # global; at a fixed number of images seen, 16 beat 32 (README)
    c.data.eval_batch_size = 128
    c.data.augment = False  # shifts, rotations, count thinning: off, the fresh images do better (README)
    # What data.augment = True does (jaxthyroid.data.transforms.AugmentConfig documents each;
    # every field declared here, so --config.data.augmentation.blur_prob=0.5 works).
    c.data.augmentation = ml_collections.ConfigDict()
    c.data.augmentation.max_shift = 0.03  # fraction of the image side
    c.data.augmentation.max_rotation_deg = 8.0
    c.data.augmentation.max_scale = 0.08  # relative zoom
    c.data.augmentation.thinning_prob = 0.5  # binomial count thinning (a shorter acquisition)
    c.data.augmentation.min_count_fraction = 0.25  # thinning keeps a log-uniform fraction in [this, 1]
    c.data.augmentation.flip_lr = False  # the anatomy is not mirror-symmetric
    c.data.augmentation.blur_prob = 0.0  # extra Gaussian PSF blur (another collimator)
    c.data.augmentation.max_blur_fwhm_px = 3.0
    c.data.augmentation.window_prob = 0.0  # saturate at a random percentile (a low export window)
    c.data.augmentation.min_window_percentile = 97.0
    c.data.synthetic_dir = ""  # a GAN-augmented TFDS data set to mix in (see `jaxthyroid augment`)
    c.data.synthetic_ratio = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.num_filters = 16  # ResNets: width of the first stage (64 = torchvision; 0 = the model's own)
    c.model.stem = "imagenet"  # ResNets: imagenet (7×7/2 + max-pool) | small (3×3/1, no pool)
    c.model.cross_source = "adapter"  # adapter | image: where the cross term x_i comes from
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.conv_im2col = None  # deprecated lever: None = the backend policy (jaxthyroid.models.backend) decides
    c.model.init_from = ""  # a file of `jaxthyroid weights import`: start from its backbone ("" = random init)

    def phase(steps, lr, train_on, model):
        p = ml_collections.ConfigDict()
        p.enabled = True
        p.model = model  # plain | cross (phase 1: cross = the cross model with its cross terms frozen at zero)
        p.steps = steps  # optimiser steps
        p.epochs = 0.0  # > 0 instead of steps: passes over the phase's real training images
        p.train_on = train_on  # single | all
        p.optimizer = "sgd"  # sgd | adamw
        p.learning_rate = lr
        p.momentum = 0.9
        p.weight_decay = 1e-4
        p.schedule = "warmup_cosine"  # constant | cosine | warmup_cosine
        p.warmup_fraction = 0.05
        p.param_groups = []  # [(regex on param path, lr multiplier | "frozen")], first match wins
        return p

    # One learning rate for every phase and the control (0.1 beat 0.05 and 0.2 at 3,000
    # steps; the sweep is in README), so compared arms differ only in what they train on.
    c.phase1 = phase(1500, 0.1, "single", "plain")
    c.phase2 = phase(1500, 0.1, "all", "cross")
    # The control: a plain ResNet trained once on everything, as many steps as both phases.
    c.plain = phase(3000, 0.1, "all", "plain")

    # k-fold: > 1 cuts train + validation into this many folds (stratified by finding set),
    # one run per fold under workdir/fold_<k>, test split fixed; kfold.json holds mean ± std.
    c.folds = 0
    c.fold = -1  # which fold a run is (set by the k-fold; -1 = every fold)
    c.decision = "set"  # set (most probable finding set) | threshold (each finding at p >= 0.5)
    c.eval_every_steps = 150  # a validation pass (and a best-checkpoint candidate) every this many steps
    c.checkpoint_every_steps = 300
    c.keep = 2
    c.log_every = 10
    return c
