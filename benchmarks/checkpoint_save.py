"""Checkpoint save time: packed (one flat array per dtype) against orbax leaf by leaf.

    python -m benchmarks.checkpoint_save [--saves 20]

For the states ``make demo`` checkpoints — the quick preset's classifier (ResNet-18 at
1/4 width, SGD with momentum) and its DCGAN (G, D, their Adam states and G's average) —
times ``Checkpoints.save`` of one state, alternating packed and leaf-by-leaf saves into
two folders, and prints the median per save, the ratio, and the number of leaves.
``make demo`` saves ~100 checkpoints (every evaluation round, plus each new best).
Results per machine: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import jax


def _states() -> dict:
    from jaxthyroid import config as config_lib
    from jaxthyroid.cross_training import phases
    from jaxthyroid.gan import dcgan
    from jaxthyroid.train import state

    cfg = config_lib.load_config("reproduce_quick")
    cl = cfg.classifier
    model = phases.build_model(cl, cross=True, num_classes=6)
    classifier = state.create_train_state(
        state.init_key(0), model, phases.make_tx(cl, "phase2", cl.phase2.steps), (1, cl.data.size, cl.data.size, 1)
    )
    _, _, gan = dcgan._template(cfg.gan.dcgan, state.init_key(1))
    return {"classifier (ResNet-18/4, SGD)": classifier, "DCGAN (G + D + Adam + average)": gan}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saves", type=int, default=20, help="timed saves of each kind")
    args = parser.parse_args(argv)

    from jaxthyroid.train import checkpoint as ckpt_lib

    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    print("\n| state | leaves | leaf by leaf (ms) | packed (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name, st in _states().items():
        st = jax.block_until_ready(st)
        times = {"leaf by leaf": [], "packed": []}
        with tempfile.TemporaryDirectory() as tmp:
            managers = {
                kind: ckpt_lib.Checkpoints(pathlib.Path(tmp) / kind, keep=2, pack=kind == "packed") for kind in times
            }
            for i in range(args.saves + 2):  # the first two rounds warm up (compile the packer)
                for kind, ck in managers.items():
                    t0 = time.perf_counter()
                    ck.save(i + 1, st, data={"kind": "none"}, loop={"epoch": i})
                    if i >= 2:
                        times[kind].append(time.perf_counter() - t0)
            for ck in managers.values():
                ck.close()
        plain, packed = (1e3 * statistics.median(times[k]) for k in ("leaf by leaf", "packed"))
        leaves = len(jax.tree.leaves(st))
        print(f"| {name} | {leaves} | {plain:.0f} | {packed:.0f} | {plain / packed:.1f}x |")


if __name__ == "__main__":
    main()
