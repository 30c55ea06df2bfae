"""The training loop of every model: steps, evaluation, checkpoints, logs, resume.

Classifier phases, the DCGAN, SRResNet pre-training and SRGAN all train through
:func:`fit`; a model family brings a train step, a state, the metrics it reports
(``metric_keys``) and an evaluation (``eval_step`` + ``eval_batches`` for classifiers,
``on_epoch_end`` for anything else, e.g. a sample grid).

``fit`` resumes from ``<workdir>/checkpoints/latest`` when it holds a checkpoint and
continues bit-identically: the train state, the train iterator's position (its own
``get_state``/``set_state``, else the number of batches consumed in the epoch,
which are skipped on a freshly created iterator), the RNG key and the running
epoch sums all come back. The train step folds ``state.step`` into the key, so no
RNG state other than the base key exists.

Epochs are counted from 1 in logs and history; ``step`` is the number of optimiser
updates done (the step of a checkpoint is the update it follows).
"""

from __future__ import annotations

import base64
import logging
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import parallel
from jaxthyroid.train import checkpoint as ckpt_lib
from jaxthyroid.train import run_log as log_lib
from jaxthyroid.train.checkpoint import CheckpointError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# Steps dispatched ahead of the last finished one (JAX dispatches asynchronously).
_IN_FLIGHT = 2


class TrainingDiverged(RuntimeError):
    """The loss or gradients became NaN/Inf; nothing after the last good checkpoint was saved."""

    def __init__(self, message: str, *, step: int, last_good_step: int | None):
        super().__init__(message)
        self.step = step
        self.last_good_step = last_good_step


# -- data iterator state ---------------------------------------------------------


def _iterator_state(it: Any) -> dict:
    """The iterator's own state as JSON (grain iterators), or ``{'kind': 'none'}``."""
    get_state = getattr(it, "get_state", None)
    if get_state is None or not hasattr(it, "set_state"):
        return {"kind": "none"}
    s = get_state()
    if isinstance(s, (bytes, bytearray)):
        return {"kind": "bytes", "value": base64.b64encode(bytes(s)).decode("ascii")}
    return {"kind": "json", "value": s}


def _set_iterator_state(it: Any, data: dict) -> bool:
    kind = data.get("kind", "none") if data else "none"
    if kind == "none" or not hasattr(it, "set_state"):
        return False
    value = data["value"]
    it.set_state(base64.b64decode(value) if kind == "bytes" else value)
    return True


def _epoch_iterator(train_batches: Callable[[int], Iterable], epoch: int, skip: int, data: dict | None) -> Iterator:
    source = train_batches(epoch)
    it = source if hasattr(source, "__next__") else iter(source)
    if skip and not _set_iterator_state(it, data or {}):
        for _ in range(skip):  # no iterator state: replay the consumed batches
            try:
                next(it)
            except StopIteration:
                break
    return it


# -- evaluation -----------------------------------------------------------------


def evaluate(
    state,
    eval_step: Callable,
    eval_batches: Callable[[], Iterable],
    *,
    mesh=None,
    eval_fn: Callable[[dict], dict] | None = None,
) -> dict:
    """Validation metrics over ``eval_batches()`` (padding rows masked out).

    Returns ``{'val_loss', 'val_exact_match', 'val_count'}`` plus ``eval_fn``'s
    scalars prefixed ``val_``. ``eval_fn`` receives ``{'probs': [N, F], 'findings':
    [N, F], ...}`` with every other per-image array of the batches (``finding_set``,
    ``is_cross``, ...), padding removed.
    """
    loss_sum, count = 0.0, 0.0
    columns: dict[str, list] = {}
    for batch in eval_batches():
        size = np.shape(batch["image"])[0]
        placed = (
            parallel.shard_batch(
                {k: batch[k] for k in ("image", "findings") + (("mask",) if "mask" in batch else ())}, mesh
            )
            if mesh is not None
            else batch
        )
        out = eval_step(state, placed)
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
        # Per-image columns of the whole global batch (with several processes each fed
        # its block of it: gathered, a collective), padding dropped after the gather.
        per_image = {
            k: np.asarray(v)
            for k, v in batch.items()
            if k not in ("image", "mask") and np.ndim(v) >= 1 and np.shape(v)[0] == size
            if np.asarray(v).dtype.kind in "biuf"
        }
        per_image["mask"] = np.asarray(batch.get("mask", np.ones(size, np.float32)))
        per_image = parallel.gather_batch(per_image, mesh)
        mask = per_image.pop("mask") > 0
        logits = parallel.to_host(out["logits"])[mask]
        columns.setdefault("probs", []).append(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))
        for k, v in per_image.items():
            columns.setdefault(k, []).append(v[mask])
    if not columns:
        raise ValueError("eval_batches() yielded no batches")
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    pred = findings_lib.predict(arrays["probs"])
    record = {
        "val_loss": loss_sum / max(count, 1.0),
        "val_exact_match": float(np.mean(np.all(pred == (arrays["findings"] > 0.5), -1))),
        "val_count": int(count),
    }
    if eval_fn is not None:
        for k, v in eval_fn(arrays).items():
            record[k if k.startswith("val_") else f"val_{k}"] = v
    return record


# -- the loop -------------------------------------------------------------------


def _key_from(key: jax.Array, data: list[int]) -> jax.Array:
    return jax.random.wrap_key_data(np.asarray(data, np.uint32), impl=jax.random.key_impl(key))


def fit(
    *,
    state,
    train_step: Callable,
    eval_step: Callable | None,
    train_batches: Callable[[int], Iterable],
    eval_batches: Callable[[], Iterable] | None,
    num_epochs: int,
    workdir: str | pathlib.Path,
    key: jax.Array,
    mesh=None,
    steps_per_epoch: int | None = None,
    checkpoint_every_steps: int | None = None,
    keep: int = 3,
    best_metric: str = "val_exact_match",
    best_mode: str = "max",
    eval_fn: Callable[[dict], dict] | None = None,
    log_every: int = 50,
    on_epoch_end: Callable[[int, Any, dict], None] | None = None,
    phase: str | None = None,
    max_steps: int | None = None,
    metric_keys: tuple[str, ...] = ("loss", "exact_match"),
    place_batch: Callable[[dict], Any] | None = None,
) -> tuple[Any, list[dict]]:
    """Trains for ``num_epochs`` epochs (or ``max_steps`` steps), evaluating and
    checkpointing after each epoch.

    Args:
      state: the initial TrainState (replaced by the latest checkpoint when resuming).
      train_step, eval_step: from :func:`jaxthyroid.train.steps.make_classifier_steps`.
      train_batches: ``epoch -> iterable`` of host batches ``{'image', 'findings', ...}``
        (``epoch`` counted from 0); it must give the same batches for the same epoch.
        An iterator with ``get_state()``/``set_state()`` (grain) is checkpointed
        with its state; otherwise consumed batches are skipped on resume.
      eval_batches: ``() -> iterable`` of batches with ``'mask'`` (0 = padding), or None.
      num_epochs: total epochs, counting those of a resumed run.
      workdir: ``metrics.jsonl``, ``tb/`` and ``checkpoints/`` go here.
      key: typed base key for the train step (dropout); saved and restored.
      mesh: the ``data`` mesh; batches are placed with ``shard_batch`` when given.
      steps_per_epoch: stop each epoch after this many batches (None: when exhausted).
      checkpoint_every_steps: also checkpoint every this many steps (mid-epoch).
      keep: how many latest checkpoints to keep (plus the best).
      best_metric, best_mode: which history entry picks the best checkpoint.
      eval_fn: extra validation metrics (see :func:`evaluate`).
      log_every: steps between train log events (also the NaN check interval).
      on_epoch_end: called as ``on_epoch_end(epoch, state, record)`` (epoch from 1).
      phase: a name written into every log event (``'phase1'``).
      max_steps: the optimiser-step budget: training stops after this many steps (the
        epoch it ends in is closed early: evaluated, checkpointed, in the history).
        None: ``num_epochs`` full epochs.
      metric_keys: the train step's scalar metrics that are averaged into the logs and
        the history (``train_<key>``); a ``finite`` metric, when present, is the NaN
        check, else every one of these keys must be finite.
      place_batch: host batch -> the step's batch argument (default: with a ``mesh``,
        ``image`` and ``findings`` sharded over it; without one, the batch as is).

    Returns:
      ``(state, history)``; history holds one dict per epoch: ``epoch``, ``step``,
      ``train_loss``, ``train_exact_match``, ``val_loss``, ``val_exact_match``, ...

    Raises:
      TrainingDiverged: a NaN/Inf loss; the message names the step and the last good
        checkpoint, which the bad state never overwrites.
    """
    workdir = pathlib.Path(workdir)
    checkpoints = ckpt_lib.Checkpoints(workdir / "checkpoints", keep=keep, best_metric=best_metric, best_mode=best_mode)
    logger = log_lib.MetricsLogger(workdir, phase=phase)
    history: list[dict] = []
    start_epoch, in_epoch, data_state = 0, 0, None
    metric_keys = tuple(metric_keys)

    def zero_sums() -> dict:
        return {**{k: 0.0 for k in metric_keys}, "count": 0}

    sums = zero_sums()
    if place_batch is None and mesh is not None:

        def place_batch(batch):
            return parallel.shard_batch({k: batch[k] for k in ("image", "findings")}, mesh)

    if checkpoints.latest_step() is not None:
        state, data_state, loop = checkpoints.restore(state, which="latest")
        start_epoch, in_epoch = loop["epoch"], loop["batches_in_epoch"]
        history, sums = loop["history"], loop["epoch_sums"]
        if not np.array_equal(np.asarray(jax.random.key_data(key)), np.asarray(loop["key"])):
            log.warning("resuming with the key saved in the checkpoint, not the one given")
        key = _key_from(key, loop["key"])
        logger.truncate_after(checkpoints.latest_step())
        log.info(
            "resumed %s from step %d (epoch %d, batch %d)",
            workdir,
            checkpoints.latest_step(),
            start_epoch + 1,
            in_epoch,
        )
    step = int(jax.device_get(state.step))
    key_data = np.asarray(jax.random.key_data(key)).tolist()
    pending: list[tuple[int, dict]] = []  # device metrics not yet fetched

    def loop_position(next_epoch: int, batches: int) -> dict:
        return {
            "epoch": next_epoch,
            "batches_in_epoch": batches,
            "key": key_data,
            "history": history,
            "epoch_sums": dict(sums),
            "step": step,
        }

    def flush(epoch_now: int) -> dict | None:
        """Fetches pending metrics, stops on NaN/Inf, adds them to the epoch sums."""
        if not pending:
            return None
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            if "finite" in m:
                finite = bool(m["finite"])
            else:
                finite = all(bool(np.isfinite(m[k])) for k in metric_keys)
            if not finite:
                pending.clear()
                diverge(s, epoch_now, {k: float(m[k]) for k in metric_keys})
        window = {k: float(np.mean([m[k] for m in fetched])) for k in metric_keys}
        for k in metric_keys:
            sums[k] += float(sum(m[k] for m in fetched))
        sums["count"] += len(fetched)
        pending.clear()
        return window

    def diverge(bad_step: int, epoch_now: int, values: dict):
        last = checkpoints.latest_step()
        logger.write("diverged", step=bad_step, epoch=epoch_now + 1, **values)
        logger.close()
        checkpoints.close()
        where = (
            f"the last good checkpoint is step {last} in {checkpoints.directory / 'latest'} "
            "(restore_state(workdir, template) loads it; rerunning fit resumes from it)"
            if last is not None
            else "no checkpoint was saved before it"
        )
        raise TrainingDiverged(
            f"training diverged: loss or gradients are NaN/Inf at step {bad_step} "
            f"(epoch {epoch_now + 1}, {', '.join(f'{k}={v}' for k, v in values.items())}); "
            f"nothing after it was saved and {where}. "
            "Lower the learning rate or inspect that step's batch.",
            step=bad_step,
            last_good_step=last,
        )

    try:
        for epoch in range(start_epoch, num_epochs):
            if max_steps is not None and step >= max_steps:
                break
            it = _epoch_iterator(train_batches, epoch, in_epoch, data_state)
            total = steps_per_epoch
            bar = log_lib.progress_bar(
                total, desc=f"{phase + ' ' if phase else ''}epoch {epoch + 1}/{num_epochs}", initial=in_epoch
            )
            while steps_per_epoch is None or in_epoch < steps_per_epoch:
                if max_steps is not None and step >= max_steps:
                    break
                try:
                    batch = next(it)
                except StopIteration:
                    break
                if place_batch is not None:
                    batch = place_batch(batch)
                state, metrics = train_step(state, batch, key)
                step += 1
                in_epoch += 1
                pending.append((step, metrics))
                if len(pending) > _IN_FLIGHT:
                    # Let the host run at most _IN_FLIGHT steps ahead of the device, so the bar
                    # (and its rate) shows finished steps, not merely dispatched ones.
                    jax.block_until_ready(pending[-_IN_FLIGHT - 1][1])
                bar.update(1)
                if log_every and step % log_every == 0:
                    window = flush(epoch)
                    logger.write("train", step=step, epoch=epoch + 1, **window)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in list(window.items())[:3]})
                epoch_done = (steps_per_epoch is not None and in_epoch == steps_per_epoch) or step == max_steps
                if checkpoint_every_steps and step % checkpoint_every_steps == 0 and not epoch_done:
                    flush(epoch)  # never save past a NaN
                    checkpoints.save(step, state, data=_iterator_state(it), loop=loop_position(epoch, in_epoch))
            bar.close()
            flush(epoch)

            record = {
                "epoch": epoch + 1,
                "step": step,
                **{f"train_{k}": sums[k] / max(sums["count"], 1) for k in metric_keys},
            }
            if eval_batches is not None and eval_step is not None:
                record.update(evaluate(state, eval_step, eval_batches, mesh=mesh, eval_fn=eval_fn))
                logger.write(
                    "eval",
                    step=step,
                    epoch=epoch + 1,
                    **{k: v for k, v in record.items() if k not in ("epoch", "step")},
                )
            else:  # no evaluation: the epoch's train means are its record in the logs
                logger.write(
                    "epoch",
                    step=step,
                    epoch=epoch + 1,
                    **{k: v for k, v in record.items() if k not in ("epoch", "step")},
                )
            history.append(record)
            log.info("epoch %d: %s", epoch + 1, record)
            in_epoch, sums = 0, zero_sums()
            position = loop_position(epoch + 1, 0)
            checkpoints.save(step, state, data={"kind": "none"}, loop=position)
            value = record.get(best_metric)
            if value is not None and checkpoints.is_better(float(value)):
                checkpoints.save(
                    step, state, data={"kind": "none"}, loop=position, which="best", metrics={best_metric: float(value)}
                )
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, state, record)
    finally:
        logger.close()
    checkpoints.close()
    return state, history


def restore_state(workdir: str | pathlib.Path, state_template: Any, *, which: str = "latest") -> Any:
    """The TrainState of the ``latest`` or ``best`` checkpoint of a ``fit`` workdir.

    ``state_template`` (e.g. from ``create_train_state``) gives structure, dtypes and
    shardings. Raises CheckpointError when there is no checkpoint, it is corrupt, or
    it belongs to another architecture (the message lists the differing parameters).
    """
    directory = pathlib.Path(workdir) / "checkpoints"
    if not (directory / which).is_dir():
        raise CheckpointError(f"no {which} checkpoint under {directory}: is {workdir} the workdir of a training run?")
    checkpoints = ckpt_lib.Checkpoints(directory)
    try:
        return checkpoints.restore(state_template, which=which)[0]
    finally:
        checkpoints.close()
