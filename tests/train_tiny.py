"""A tiny, fully deterministic training run for the loop tests (also run as a script).

``python tests/train_tiny.py WORKDIR [--hang-at N]`` trains a conv+BN+dropout model
for 3 epochs of 6 batches with a checkpoint every 4 steps; with ``--hang-at N`` the
data iterator blocks forever before yielding global batch N (so the parent test can
SIGKILL it mid-epoch), and the final parameters go to ``WORKDIR/final.npz``.
"""

from __future__ import annotations

import os
import sys
import time

import flax.linen as nn
import jax
import numpy as np

F = 6
BATCH = 8
SIZE = 16
EPOCHS = 3
STEPS_PER_EPOCH = 6


class TinyNet(nn.Module):
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(8, (3, 3), strides=2, use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name)(x)
        x = nn.relu(x).mean((1, 2))
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(F)(x)


def make_batch(seed: int, nan: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.zeros((BATCH, F), np.float32)
    labels[np.arange(BATCH), rng.integers(0, F, BATCH)] = 1
    image = rng.normal(size=(BATCH, SIZE, SIZE, 1)).astype(np.float32)
    image += labels.argmax(-1)[:, None, None, None] * 0.5  # learnable signal
    if nan:
        image[:] = np.nan
    return {"image": image, "findings": labels}


class EpochIterator:
    """A grain-like iterator: ``get_state``/``set_state`` give its position."""

    def __init__(self, epoch: int, hang_at: int | None = None, nan_at: int | None = None):
        self.epoch, self.index, self.hang_at, self.nan_at = epoch, 0, hang_at, nan_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.index >= STEPS_PER_EPOCH:
            raise StopIteration
        g = self.epoch * STEPS_PER_EPOCH + self.index
        if self.hang_at is not None and g == self.hang_at:
            time.sleep(3600)  # the test kills us here
        self.index += 1
        return make_batch(1000 + g, nan=(g == self.nan_at))

    def get_state(self):
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state):
        assert state["epoch"] == self.epoch
        self.index = state["index"]


def plain_batches(epoch: int, hang_at: int | None = None, nan_at: int | None = None):
    """A generator (no iterator state): resume skips the consumed batches."""
    yield from EpochIterator(epoch, hang_at, nan_at)


def eval_batches():
    b = make_batch(7)
    b["mask"] = np.array([1] * 6 + [0] * 2, np.float32)
    return [b]


def setup(mesh_devices: int = 2):
    from jaxthyroid import parallel
    from jaxthyroid.train import optim, steps
    from jaxthyroid.train import state as state_lib

    mesh = parallel.make_mesh(mesh_devices)
    model = TinyNet()
    tx = optim.make_optimizer(dict(optimizer="sgd", learning_rate=0.1, momentum=0.9))
    state = state_lib.create_train_state(jax.random.key(0), model, tx, (1, SIZE, SIZE, 1), mesh=mesh)
    train_step, eval_step = steps.make_classifier_steps(model, mesh)
    return mesh, state, train_step, eval_step


def run(workdir, *, mesh, state, train_step, eval_step, train_batches=plain_batches, **fit_kwargs):
    from jaxthyroid.train import loop

    kwargs = dict(num_epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, checkpoint_every_steps=4, log_every=2, keep=2)
    kwargs.update(fit_kwargs)
    return loop.fit(
        state=state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=train_batches,
        eval_batches=eval_batches,
        workdir=workdir,
        key=jax.random.key(42),
        mesh=mesh,
        **kwargs,
    )


def flat_params(state) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path((state.params, state.batch_stats))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


if __name__ == "__main__":
    os.environ.setdefault("JAXTHYROID_NO_TQDM", "1")
    workdir = sys.argv[1]
    hang_at = int(sys.argv[sys.argv.index("--hang-at") + 1]) if "--hang-at" in sys.argv else None
    mesh, state, train_step, eval_step = setup()
    state, _ = run(
        workdir,
        mesh=mesh,
        state=state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=lambda e: plain_batches(e, hang_at=hang_at),
    )
    np.savez(os.path.join(workdir, "final.npz"), **flat_params(state))
