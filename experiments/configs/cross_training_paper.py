r"""Two-phase cross-training at the paper's scale: ResNet-18, 128² images, 100 epochs.

Command (meant for an accelerator):
  jaxthyroid train --config cross_training_paper

Data sizes of DESIGN §2 / the foundation issue: 2,400 train / 600 val / 600 test at
128², ~25 % cross-feature, batch 64. Phase 1 1,680 steps on single-feature images
(~60 passes over them), phase 2 1,500 steps on the cross-training set (~40 passes;
100 in all, the paper's curves); the plain control gets both budgets, 3,180 steps.
Paper: validation accuracy 0.9633, loss 0.1187.
"""

import pathlib

from jaxthyroid import config


def get_config():
    c = config.load_config(str(pathlib.Path(__file__).with_name("cross_training_quick.py")))
    c.workdir = "runs/cross_training_paper"
    c.data.size = 128
    c.data.n_train, c.data.n_val, c.data.n_test = 2400, 600, 600
    c.data.batch_size = 64
    c.data.augment = True  # ~85 passes over 2,400 images: augmentation against overfitting
    c.model.num_filters = 64  # torchvision's ResNet-18
    c.phase1.steps, c.phase1.learning_rate = 1680, 0.1
    c.phase2.steps, c.phase2.learning_rate = 1500, 0.02
    c.plain.steps, c.plain.learning_rate = 3180, 0.1
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 500
    return c
