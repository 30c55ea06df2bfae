"""Tiny, deterministic DCGAN and SRGAN trainings for the resume tests (also run as a script).

``python tests/gan_tiny.py dcgan|srgan WORKDIR [--hang-at G --hang-seed S]`` trains
on 32 blob records with a checkpoint every few steps; with ``--hang-at`` the batch
order blocks forever before global batch ``G`` of the training whose batch seed is
``S`` (so the parent test can SIGKILL it there).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import ml_collections
import numpy as np

SOURCE_SIZE = 32
NUM_SETS = 12


def records(n=32, seed=0):
    """Blob 'glands' whose brightness and width depend on the finding set: raw counts."""
    from jaxthyroid import findings
    from jaxthyroid.data import features

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SOURCE_SIZE, :SOURCE_SIZE]
    out = []
    for i in range(n):
        s = i % NUM_SETS
        width = 3.0 + s / 2.0
        blob = np.exp(-((yy - 16) ** 2 + (xx - 12 - s % 3) ** 2) / (2 * width**2))
        counts = rng.poisson(5.0 + 200.0 * blob * (1 + s / 6.0))[..., None].astype(np.uint16)
        out.append(features.make_record(counts, s, findings.DEFAULT, origin=f"test/{i}"))
    return out


def dcgan_cfg():
    # 32 images / batch 8 = 4 steps an epoch: 6 steps end mid-epoch 2 (the step budget),
    # a checkpoint every 3 steps is mid-epoch 1.
    return ml_collections.ConfigDict(
        dict(
            image_size=16,
            nz=8,
            ngf=8,
            ndf=8,
            steps=6,
            batch_size=8,
            learning_rate=2e-4,
            checkpoint_every_steps=3,
            data_parallel=False,
        )
    )


def srgan_cfg():
    return ml_collections.ConfigDict(
        dict(
            scale=2,
            num_blocks=1,
            features=8,
            pretrain_steps=3,
            gan_steps=3,
            batch_size=8,
            learning_rate=1e-4,
            adversarial_weight=1e-3,
            content_loss="mse",
            eval_images=4,
            checkpoint_every_steps=2,
            data_parallel=False,
            d_features=8,
            d_dense_features=16,
            d_pool_size=2,
        )
    )


def hang_batches_at(hang_at: int, hang_seed: int) -> None:
    """Makes the GAN batch order block before global batch ``hang_at`` of the training
    whose batch seed is ``hang_seed``."""
    from jaxthyroid.gan import budget

    original = budget.epoch_batches

    def epoch_batches(n, batch_size, seed, epoch):
        per_epoch = n // batch_size
        for b, idx in enumerate(original(n, batch_size, seed, epoch)):
            if seed == hang_seed and epoch * per_epoch + b == hang_at:
                time.sleep(3600)  # the test kills us here
            yield idx

    budget.epoch_batches = epoch_batches


def run(kind: str, workdir) -> dict:
    from jaxthyroid.gan import dcgan, srgan

    train = records(32, 0)
    if kind == "dcgan":
        return dcgan.train_dcgan(dcgan_cfg(), train, workdir, seed=0)
    return srgan.train_srgan(srgan_cfg(), train, records(8, 1), workdir, seed=0, hr_size=16)


def final_params(kind: str, workdir) -> dict[str, np.ndarray]:
    """Flat ``{path: array}`` of the trained generator (and the state it restores)."""
    import jax

    from jaxthyroid.gan import dcgan, srgan

    if kind == "dcgan":
        _, variables = dcgan.load_dcgan_generator(workdir)
    else:
        _, variables = srgan.load_sr_generator(workdir)
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("dcgan", "srgan"))
    p.add_argument("workdir")
    p.add_argument("--hang-at", type=int, default=None)
    p.add_argument("--hang-seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("JAXTHYROID_NO_TQDM", "1")
    if args.hang_at is not None:
        hang_batches_at(args.hang_at, args.hang_seed)
    run(args.kind, args.workdir)
