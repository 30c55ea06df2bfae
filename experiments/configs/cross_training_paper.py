r"""Two-phase cross-training at the paper's scale: ResNet-18, 128² images, 100 epochs.

Command (meant for an accelerator):
  jaxthyroid train --config cross_training_paper

Data sizes of DESIGN §2 / the foundation issue: 2,400 train / 600 val / 600 test at
128², ~25 % cross-feature. Phase 1 60 epochs on single-feature images, phase 2 40
epochs on the cross-training set (100 in all, the paper's curves).
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
    c.phase1.epochs, c.phase1.learning_rate = 60, 0.1
    c.phase2.epochs, c.phase2.learning_rate = 40, 0.02
    c.plain.epochs = 100
    c.checkpoint_every_steps = 500
    return c
