"""Step budgets of the GAN trainings and how each of them runs through the one loop.

A GAN config gives its budget in optimiser steps (``steps``, or ``pretrain_steps`` /
``gan_steps`` for the SRGAN's two phases); ``epochs`` (``pretrain_epochs`` /
``gan_epochs``) may be given instead and are converted up front, so the summary,
the logs and the report speak of steps. The data is an in-memory array; an epoch is
a permutation fixed by seed and epoch (last partial batch dropped), so a resumed
epoch replays the batches it would have seen.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np

from jaxthyroid import parallel
from jaxthyroid.train import loop
from jaxthyroid.train.checkpoint import CheckpointError, Checkpoints


def steps_of(cfg, name: str, steps_per_epoch: int) -> int:
    """The step budget of a completed GAN config (:mod:`jaxthyroid.gan.settings`):
    ``cfg.<name>_steps`` when > 0 (``steps`` when ``name`` is empty), else
    ``cfg.<name>_epochs`` × ``steps_per_epoch``. 0 (neither given) is allowed here;
    the DCGAN refuses it, the SRGAN's phases may be 0 (SRResNet only)."""
    prefix = f"{name}_" if name else ""
    steps = int(cfg[f"{prefix}steps"])
    if steps > 0:
        return steps
    return int(cfg[f"{prefix}epochs"]) * int(steps_per_epoch)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int):
    """Index batches ``[batch_size]`` of one epoch, fixed by seed and epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for b in range(n // batch_size):
        yield order[b * batch_size : (b + 1) * batch_size]


def data_mesh(cfg, batch_size: int):
    """The ``data`` mesh over all devices when the batch splits evenly, else None."""
    n = jax.device_count()
    if not cfg.data_parallel or n == 1 or batch_size % n:
        return None
    return parallel.make_mesh(n)


def place(state, mesh):
    """``state`` replicated over ``mesh`` (as the steps return it), or as is."""
    return state if mesh is None else jax.device_put(state, parallel.replicated(mesh))


def abstract(make_state):
    """Shapes, dtypes and (one-device) shardings of ``make_state(key)``, nothing computed:
    a template to restore a checkpoint into without compiling an init."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(make_state, jax.random.key(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def restore_latest(directory: pathlib.Path, template):
    """The state of the latest checkpoint under ``directory`` (a ``checkpoints`` folder)."""
    ckpts = Checkpoints(directory, keep=2)
    try:
        if ckpts.latest_step() is None:
            raise CheckpointError(f"no checkpoint in {directory}: train that GAN first")
        return ckpts.restore(template)[0]
    finally:
        ckpts.close()


def train(
    workdir: pathlib.Path,
    *,
    name: str,
    state,
    step: Callable,
    arrays: dict[str, np.ndarray],
    batch_size: int,
    steps: int,
    seed: int,
    key: jax.Array,
    metric_keys: tuple[str, ...],
    mesh=None,
    checkpoint_every_steps: int | None = None,
    on_epoch_end: Callable | None = None,
    log_every: int = 50,
):
    """Trains ``state`` for ``steps`` optimiser steps through :func:`loop.fit`.

    Args:
      workdir: checkpoints, ``metrics.jsonl`` and ``tb/`` go here; a rerun resumes.
      name: the phase name in the logs (``dcgan``, ``srresnet``, ``srgan``).
      state: the initial state (replaced by the latest checkpoint on resume).
      step: ``step(state, batch, key) -> (state, metrics)``.
      arrays: host arrays with equal leading axis N; a batch is ``{k: v[indices]}``.
      batch_size, steps, seed: the budget and the batch order.
      key: base key of the step (noise); saved with the checkpoints.
      metric_keys: the step's scalar metrics to log and summarise.
      checkpoint_every_steps: mid-epoch checkpoints (default: every epoch only).
      on_epoch_end: ``on_epoch_end(epoch, state, record)``.

    Returns:
      ``(state, summary)``: ``steps``, ``epochs``, ``batch_size``, ``train_images``,
      ``images_seen``, ``final_<metric>`` (the last epoch's means), ``images_per_s``
      (this process's steps, compilation included), ``seconds``, ``resumed_from_step``.
    """
    n = len(next(iter(arrays.values())))
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{name}: {n} training images is less than one batch of {batch_size}; lower batch_size or use more images"
        )
    num_epochs = -(-steps // steps_per_epoch)

    def train_batches(epoch):
        # Every process draws the same global batch and keeps its block of rows
        # (parallel.process_rows; all of them with one process), so the global batch
        # the step sees does not depend on how devices spread over processes.
        for idx in epoch_batches(n, batch_size, seed, epoch):
            rows = parallel.process_rows(idx, mesh)
            yield {k: v[rows] for k, v in arrays.items()}

    place_batch = (lambda batch: parallel.shard_batch(batch, mesh)) if mesh is not None else None
    started = time.perf_counter()
    start_step = int(jax.device_get(state.step))
    latest = Checkpoints(workdir / "checkpoints", keep=2)
    try:
        resumed_from = latest.latest_step() or 0
    finally:
        latest.close()
    state, history = loop.fit(
        state=place(state, mesh),
        train_step=step,
        eval_step=None,
        train_batches=train_batches,
        eval_batches=None,
        num_epochs=num_epochs,
        workdir=workdir,
        key=key,
        mesh=mesh,
        steps_per_epoch=steps_per_epoch,
        checkpoint_every_steps=checkpoint_every_steps,
        keep=2,
        best_metric=None,
        log_every=log_every,
        on_epoch_end=on_epoch_end,
        phase=name,
        max_steps=steps,
        metric_keys=metric_keys,
        place_batch=place_batch,
    )
    seconds = time.perf_counter() - started
    done = int(jax.device_get(state.step)) - max(start_step, resumed_from)
    last = history[-1] if history else {}
    summary = {
        "steps": int(steps),
        "epochs": len(history),
        "batch_size": int(batch_size),
        "train_images": int(n),
        "images_seen": int(steps) * int(batch_size),
        **{f"final_{k}": last.get(f"train_{k}", float("nan")) for k in metric_keys},
        "images_per_s": done * batch_size / seconds if done > 0 else float("nan"),
        "seconds": seconds,
        "resumed_from_step": int(resumed_from),
    }
    return state, summary
