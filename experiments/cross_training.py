"""Two-phase cross-training from a config file; prints the summary table.

  python experiments/cross_training.py --config cross_training_quick [--config.phase2.steps=300 ...]

Same as `jaxthyroid train --config ...`: this script only composes library calls.
"""

import sys

from jaxthyroid import cli

if __name__ == "__main__":
    raise SystemExit(cli.main(["train", *sys.argv[1:]]))
