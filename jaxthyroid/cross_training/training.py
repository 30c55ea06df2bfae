"""One phase of the schedule: its training run in ``WORKDIR/<phase>`` through the loop."""

from __future__ import annotations

import itertools
import json
import logging
import pathlib
import time

import jax

from jaxthyroid import parallel, run_files
from jaxthyroid.config import ConfigError
from jaxthyroid.cross_training import evaluation
from jaxthyroid.cross_training.data import Data
from jaxthyroid.cross_training.phases import (
    PHASES,
    abstract_state,
    init_variables,
    make_tx,
    phase_steps,
    phase_train_on,
    pretrained,
    rounds,
    warmup_steps,
)
from jaxthyroid.train import loop
from jaxthyroid.train import state as state_lib
from jaxthyroid.train import steps as steps_lib

log = logging.getLogger(__name__)


def best_round(history: list[dict]) -> dict:
    """The validation round whose checkpoint is a phase's result: the first with the
    highest ``val_exact_match`` (the best checkpoint's metric)."""
    return max(history, key=lambda h: h.get("val_exact_match", -1.0))


def train_phase(name: str, cfg, data: Data, model, *, initial_variables=None, mesh=None):
    """Trains one phase in ``WORKDIR/name`` for its budget of optimiser steps
    (:func:`phase_steps`): resumes an interrupted one; a finished one
    (``done.json``) is restored, not retrained.

    Returns ``(state, history, info)``: the state of the best validation round, the
    per-round history and ``done.json``'s contents (``steps``, ``batch_size``,
    ``images_seen``, ``warmup_steps``, ``train_images``, ...).
    """
    from jaxthyroid.data import pipeline, transforms

    workdir = pathlib.Path(cfg.workdir) / name
    source = data.phase_train(phase_train_on(cfg, name))
    real = data.phase_train(phase_train_on(cfg, name), real=True)
    batch_size = cfg.data.batch_size
    n_dev = mesh.size if mesh is not None else 1
    for field in ("batch_size", "eval_batch_size"):
        if cfg.data[field] % n_dev:
            raise ConfigError(f"data.{field}={cfg.data[field]} must be a multiple of the {n_dev} devices")
    if len(source) < batch_size:
        raise ConfigError(
            f"{name}: {len(source)} training images is less than one batch of "
            f"{batch_size}; lower data.batch_size or raise data.n_train"
        )
    total_steps = phase_steps(cfg, name, len(real))
    num_rounds, steps_per_round = rounds(total_steps, cfg.eval_every_steps)
    tx = make_tx(cfg, name, total_steps)
    key = jax.random.fold_in(jax.random.key(cfg.seed), PHASES.index(name))
    template = abstract_state(model, tx, data.size, mesh)

    done = workdir / "done.json"
    if done.exists():
        info = json.loads(done.read_text())
        state = loop.restore_state(workdir, template, which="best")
        log.info("%s: finished earlier (done.json); restored its best checkpoint", name)
        return state, info["history"], info

    # Every leaf replicated over the mesh, as the train step's outputs are (placed
    # otherwise, the step would compile a second time after its first call).
    mesh_or_one = parallel.mesh_or_single(mesh)
    if initial_variables is None:
        variables = init_variables(model, state_lib.init_key(cfg.seed, PHASES.index(name)), data.size, mesh=mesh_or_one)
        if cfg.model.init_from:  # a pretrained backbone; the head and cross terms as initialised
            variables = jax.device_put(pretrained(cfg, variables), parallel.replicated(mesh_or_one))
    else:
        variables = jax.device_put(initial_variables, parallel.replicated(mesh_or_one))
    state = state_lib.state_from_variables(model, tx, variables, mesh=mesh_or_one, donate=initial_variables is None)
    train_step, eval_step = steps_lib.make_classifier_steps(model, mesh)
    augment = transforms.augment_config(cfg.data)  # None when data.augment is off
    process_batch = parallel.process_batch_size(batch_size, "data.batch_size")  # the global batch / processes

    def train_batches(round_index):
        # Seeded by phase and round: a resumed round replays the same batches. Each round
        # draws its batches from shuffled passes over the source (as many as it needs).
        seed = cfg.seed * 100_003 + PHASES.index(name) * 1_000 + round_index
        # This process's block of every global batch (parallel.process_rows, in the loader).
        loader = pipeline.make_loader(
            source, batch_size=process_batch, seed=seed, shuffle=True, num_epochs=None, augment=augment
        )
        return itertools.islice(iter(loader), min(steps_per_round, total_steps - round_index * steps_per_round))

    def eval_batches():
        return evaluation.eval_batches(data.validation, cfg.data.eval_batch_size, mesh)

    start = time.perf_counter()
    _, history = loop.fit(
        state=state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=train_batches,
        eval_batches=eval_batches,
        num_epochs=num_rounds,
        workdir=workdir,
        key=key,
        mesh=mesh,
        steps_per_epoch=steps_per_round,
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        keep=cfg.keep,
        best_metric="val_exact_match",
        best_mode="max",
        eval_fn=evaluation.validation_metrics(data.taxonomy, cfg.decision),
        log_every=cfg.log_every,
        phase=name,
    )
    # fit donated its input state; the abstract template receives the best checkpoint.
    state = loop.restore_state(workdir, template, which="best")
    best = best_round(history)
    info = {
        "history": history,
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "train_images": len(source),
        "real_train_images": len(real),
        "steps": total_steps,
        "batch_size": batch_size,
        "images_seen": total_steps * batch_size,
        "warmup_steps": warmup_steps(cfg, name, total_steps),
        "seconds": time.perf_counter() - start,
    }
    run_files.write_json(done, info, indent=1)  # process 0 writes; orbax saved the checkpoints
    return state, history, info
