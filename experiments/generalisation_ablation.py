r"""Which robustness measure pays on the out-of-distribution table (issue 14, item 5).

Command (from the repository root):
  python experiments/generalisation_ablation.py --out runs/generalisation_ablation [--steps 3000]
  (a quick smoke run: --steps 4 --config.model.name=resnet_tiny --config.model.num_filters=0
   --config.data.n_train=48 --config.data.n_val=16 --config.data.n_test=32 --config.data.batch_size=16
   --config.data.eval_batch_size=16 --config.eval_every_steps=2)

Trains the plain arm of ``cross_training_quick`` once per variant, all step-matched
(same steps, batch, schedule and data; only what a batch holds differs):

  none          raw phantom counts, export-invariant preprocessing only (the preset)
  augment       + the classic augmentation: shifts, rotations, zoom, count thinning
  augment+psf   + an extra PSF blur and a random export window (blur_prob, window_prob 0.5)
  randomised    training data from the phantom's "randomised" regime (only where the
                training config has data.domain; skipped otherwise)
  randomised+augment+psf   both: the randomised regime with the augment+psf pipeline

and evaluates each on its own test split and on one held-out OOD split (the phantom's
"ood" regime, the test split's size, :mod:`jaxthyroid.ood`). Prints a Markdown table;
the numbers belong in README/docs with date and machine, not here.
"""

from __future__ import annotations

import argparse
import json
import pathlib

ARMS = {
    "none": ["data.augment=False"],
    "augment": ["data.augment=True"],
    "augment+psf": ["data.augment=True", "data.augmentation.blur_prob=0.5", "data.augmentation.window_prob=0.5"],
    "randomised": ["data.augment=False", "data.domain=randomised"],
    "randomised+augment+psf": [
        "data.domain=randomised",
        "data.augment=True",
        "data.augmentation.blur_prob=0.5",
        "data.augmentation.window_prob=0.5",
    ],
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/generalisation_ablation")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps of every arm")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument("--config", action="append", default=[], help="extra override KEY=VALUE (repeatable)")
    args, unknown = parser.parse_known_args(argv)
    extra = [a.removeprefix("--config.") for a in unknown if a.startswith("--config.")] + args.config

    from jaxthyroid import config as config_lib
    from jaxthyroid import cross_training, ood

    out = pathlib.Path(args.out)
    base = ["phase1.enabled=False", "phase2.enabled=False", f"plain.steps={args.steps}", *extra]
    probe = config_lib.load_config("cross_training_quick", base)
    ood_path = out / "ood_test.npz"
    if not ood_path.exists():
        d = probe.data
        ood.build_split(ood_path, n=d.n_test, size=d.size, cross_fraction=d.cross_fraction, seed=probe.seed)
    rows = []
    for arm in args.arms.split(","):
        if arm.startswith("randomised") and "domain" not in probe.data:
            print(f"{arm}: skipped (the training config has no data.domain yet)", flush=True)
            continue
        cfg = config_lib.load_config(
            "cross_training_quick", [*base, *ARMS[arm], f"workdir={out / arm.replace('+', '_')}"]
        )
        cross_training.run(cfg)
        result = ood.compare(cfg.workdir, ood_path, which="plain")
        (pathlib.Path(cfg.workdir) / "ood.json").write_text(json.dumps(result, indent=1))
        ind, o = result["in_distribution"], result["ood"]
        rows.append(
            f"| {arm} | {args.steps} | {ind['exact_match']['single']:.3f} | {ind['exact_match']['cross']:.3f} | "
            f"{o['exact_match']['single']:.3f} | {o['exact_match']['cross']:.3f} | "
            f"{ind['ece_macro']:.3f} | {o['ece_macro']:.3f} |"
        )
    print("| arm | steps | ID single | ID cross | OOD single | OOD cross | ECE ID | ECE OOD |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
