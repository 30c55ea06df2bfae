"""The two-phase cross-training schedule, composed from data, models and train.

Phase 1 trains a classifier on single-feature images: the plain ResNet
(``phase1.model = 'plain'``, the default) or the cross-residual ResNet with its
cross terms frozen at zero (``'cross'``: ``cross_term`` gets a frozen param group).
Phase 2 grafts the phase-1 weights into the cross-residual model (whose cross
terms start at zero, so the grafted model computes the same function; the run
checks it on a validation batch) and retrains it on the cross-training set
(single- and cross-feature images); which parameters train, and how fast, is
``phase2.param_groups`` (optax ``multi_transform``). A plain model trained once on
everything is the control.

Budgets are optimiser steps (``<phase>.steps``; ``<phase>.epochs > 0`` is converted
up front to ``epochs × real training images of the phase // batch``), so mixing in
synthetic images changes what a batch holds, not how many batches there are; the
warm-up is a fraction of the budget (``warmup_fraction``). A phase is evaluated on
the validation split every ``eval_every_steps`` steps (a *round*), and the best
round's checkpoint is its result. Predictions are finding sets of the taxonomy
(``decision = "set"``: the most probable set under the per-finding probabilities) or
per-finding 0.5 thresholds (``"threshold"``); exact match is reported under both.

Run directory layout::

  WORKDIR/config.json            the resolved config
  WORKDIR/taxonomy.json          the label space of the data set
  WORKDIR/<phase>/               checkpoints/, metrics.jsonl, tb/ (TensorBoard)
  WORKDIR/<phase>/done.json      written when the phase finished (a rerun skips it;
                                 an unfinished phase resumes from its latest checkpoint)
  WORKDIR/results.json           test metrics of every phase, histories, budgets, graft check
  WORKDIR/curves.png             validation accuracy and loss per round, both phases
  WORKDIR/confusion_<phase>.png  confusion matrix over finding sets

This module only composes; it holds no model, step or data code of its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import metrics as metrics_lib
from jaxthyroid import parallel, report, run_files, xla_options
from jaxthyroid.config import ConfigError
from jaxthyroid.models import registry, resnet
from jaxthyroid.train import loop, optim
from jaxthyroid.train import state as state_lib
from jaxthyroid.train import steps as steps_lib
from jaxthyroid.train.checkpoint import CheckpointError

PHASES = ("phase1", "phase2", "plain")
PHASE_MODELS = ("plain", "cross")
# Phase 1 of a cross model keeps its cross terms at zero: this group comes first.
FREEZE_CROSS_TERMS = (resnet.CROSS_TERM, optim.FROZEN)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass
class Data:
    """Random-access sources per split, and the label space they use.

    ``train`` holds the real training images plus any synthetic ones mixed in;
    ``train_real`` the real ones alone (epoch budgets count these).
    """

    taxonomy: findings_lib.Taxonomy
    train: Any
    validation: Any
    test: Any
    size: int
    train_real: Any = None
    # (train_on, real only) -> source: phase sources are filtered once per run.
    _phase_sources: dict = dataclasses.field(default_factory=dict, repr=False)

    def phase_train(self, train_on: str, *, real: bool = False):
        """The training records a phase with ``train_on`` uses ('all' | 'single');
        ``real``: without synthetic images."""
        key = (train_on, real and self.train_real is not None and self.train_real is not self.train)
        if key not in self._phase_sources:
            from jaxthyroid.data import sources

            base = self.train_real if key[1] else self.train
            self._phase_sources[key] = base if train_on == "all" else sources.single_feature(base)
        return self._phase_sources[key]


def load_data(data_cfg: ml_collections.ConfigDict, *, seed: int = 0) -> Data:
    """Builds (if needed) and opens the configured data set's splits."""
    from jaxthyroid.data import features, sources  # lazy: TFDS only when data is read from disk

    if data_cfg.source == "phantom":
        from jaxthyroid.data import phantom_builder

        # Process 0 builds it; the others then open the finished one (no two writers).
        dataset_dir = parallel.primary_first(
            lambda: phantom_builder.build_phantom(
                data_cfg.data_dir,
                size=data_cfg.size,
                n_train=data_cfg.n_train,
                n_val=data_cfg.n_val,
                n_test=data_cfg.n_test,
                cross_fraction=data_cfg.cross_fraction,
                seed=seed,
            ),
            "build the phantom data set",
        )
    elif data_cfg.source == "folder":
        if not data_cfg.dataset_dir:
            raise ConfigError(
                "data.source=folder needs data.dataset_dir: the folder that `jaxthyroid data build folder` printed"
            )
        dataset_dir = data_cfg.dataset_dir
    else:
        raise ConfigError(f"data.source must be 'phantom' or 'folder', not {data_cfg.source!r}")

    taxonomy = features.load_taxonomy(dataset_dir)
    real = features.load_source(dataset_dir, "train")
    if data_cfg.train_per_set:
        real = sources.per_set_subset(real, int(data_cfg.train_per_set), seed=seed)
    train = real
    if data_cfg.synthetic_dir and data_cfg.synthetic_ratio > 0:
        synthetic = features.load_source(data_cfg.synthetic_dir, "train")
        train = sources.mix_sources(real, synthetic, data_cfg.synthetic_ratio, seed=seed)
    return Data(
        taxonomy,
        train,
        features.load_source(dataset_dir, "validation"),
        features.load_source(dataset_dir, "test"),
        data_cfg.size,
        train_real=real,
    )


# ----------------------------------------------------------------------------- models
def build_model(cfg, *, cross: bool, num_classes: int):
    """The configured ResNet, plain or cross-residual (same parameter paths outside
    ``cross_term``)."""
    if cfg.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype must be 'float32' or 'bfloat16', not {cfg.model.dtype!r}")
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    overrides = {}
    if cfg.model.name.startswith("resnet"):  # width and stem are ResNet fields
        if cfg.model.num_filters:  # 0: the architecture's own width
            overrides["num_filters"] = int(cfg.model.num_filters)
        overrides["stem"] = cfg.model.stem
    try:
        return registry.get_model(
            cfg.model.name,
            num_classes=num_classes,
            in_channels=1,
            dtype=dtype,
            cross=cross,
            cross_source=cfg.model.cross_source,
            conv_im2col=cfg.model.conv_im2col,
            **overrides,
        )
    except ValueError as e:  # unknown name / no cross form: a config problem
        raise ConfigError(f"model: {e}") from None


def phase_is_cross(cfg, name: str) -> bool:
    """Whether phase ``name`` trains the cross-residual model (``<phase>.model``)."""
    model = cfg[name].model
    if model not in PHASE_MODELS:
        raise ConfigError(f"{name}.model must be one of {', '.join(PHASE_MODELS)}, not {model!r}")
    return model == "cross"


def phase_enabled(cfg, name: str) -> bool:
    """Whether phase ``name`` runs (``<phase>.enabled``; phase 2 needs phase 1)."""
    enabled = bool(cfg[name].enabled)
    if name == "phase2" and enabled and not phase_enabled(cfg, "phase1"):
        raise ConfigError("phase2.enabled needs phase1.enabled: phase 2 starts from phase 1's weights")
    return enabled


def phase_param_groups(cfg, name: str) -> list:
    """The phase's param groups; a cross model in phase 1 gets ``cross_term`` frozen first."""
    groups = [tuple(g) for g in (cfg[name].param_groups or ())]
    if name == "phase1" and phase_is_cross(cfg, name):
        groups = [FREEZE_CROSS_TERMS, *groups]
    return groups


def warmup_steps(cfg, name: str, total_steps: int) -> int:
    """The phase's warm-up: ``warmup_fraction`` of its steps (rounded)."""
    fraction = float(cfg[name].warmup_fraction)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{name}.warmup_fraction must be in [0, 1), not {fraction}")
    return int(round(fraction * total_steps))


def make_tx(cfg, name: str, total_steps: int, *, for_restore: bool = False):
    """The phase's optimiser. ``for_restore``: same state structure, constant schedule
    (a template to restore a checkpoint into; the schedule holds no state)."""
    p = cfg[name]
    total = max(int(total_steps), 1)
    fields = dict(
        optimizer=p.optimizer,
        learning_rate=p.learning_rate,
        momentum=p.momentum,
        weight_decay=p.weight_decay,
        schedule="constant" if for_restore else p.schedule,
        warmup_steps=warmup_steps(cfg, name, total),
        total_steps=total,
        param_groups=phase_param_groups(cfg, name),
    )
    try:
        return optim.make_optimizer(fields)
    except ValueError as e:  # bad schedule / optimiser / group: a config problem
        raise ConfigError(f"{name}: {e}") from None


# ----------------------------------------------------------------------------- budgets
def phase_train_on(cfg, name: str) -> str:
    """The phase's ``train_on``: 'all' images or the 'single'-feature ones."""
    train_on = cfg[name].train_on
    if train_on not in ("all", "single"):
        raise ConfigError(f"{name}.train_on must be 'single' or 'all', not {train_on!r}")
    return train_on


def steps_from_epochs(epochs: float, images: int, batch_size: int) -> int:
    """``epochs`` passes over ``images`` in batches of ``batch_size``, in whole steps
    (at least one)."""
    return max(1, int(round(epochs * (images // batch_size))))


def phase_steps(cfg, name: str, real_images: int | None = None) -> int:
    """The phase's budget in optimiser steps: ``<phase>.steps``, or, when
    ``<phase>.epochs > 0`` (which then replaces ``steps``), that many passes over the
    phase's ``real_images``."""
    p = cfg[name]
    if p.epochs:
        if real_images is None:
            raise ConfigError(f"{name}.epochs={p.epochs} needs the data set to count its steps; give {name}.steps")
        if real_images < cfg.data.batch_size:
            raise ConfigError(
                f"{name}: {real_images} training images is less than one batch of "
                f"{cfg.data.batch_size}; lower data.batch_size or raise data.n_train"
            )
        return steps_from_epochs(p.epochs, real_images, cfg.data.batch_size)
    if p.steps <= 0:
        raise ConfigError(f"{name}: set {name}.steps (optimiser steps) or {name}.epochs to a positive number")
    return int(p.steps)


def rounds(total_steps: int, eval_every_steps: int) -> tuple[int, int]:
    """``(number of rounds, steps per round)``: an evaluation every ``eval_every_steps``
    steps or so; the last round may be shorter, so the rounds sum to ``total_steps``."""
    every = max(1, min(int(eval_every_steps), total_steps)) if eval_every_steps else total_steps
    n = -(-total_steps // every)
    return n, -(-total_steps // n)


def _sample(size: int) -> jax.Array:
    """The init input: one ``[1, size, size, 1]`` image."""
    return jnp.zeros((1, size, size, 1), jnp.float32)


def init_variables(model, key, size: int, mesh=None) -> dict:
    """``{'params', 'batch_stats'}`` of a fresh model for ``[1, size, size, 1]`` images."""
    return state_lib.init_variables(model, key, _sample(size), mesh=mesh)


def abstract_state(model, tx, size: int, mesh=None):
    """The TrainState's shapes, dtypes and (replicated) shardings, nothing allocated:
    a template to restore a checkpoint into."""
    sharding = parallel.replicated(parallel.mesh_or_single(mesh))
    shapes = jax.eval_shape(lambda key: state_lib.init_state(model, key, tx, _sample(size)), jax.random.key(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def graft(phase1_variables: dict, cross_model, *, size: int, key) -> dict:
    """The phase-1 weights in the cross model (cross terms at zero): fresh arrays,
    so donating them in phase 2 leaves the phase-1 state intact."""
    template = init_variables(cross_model, key, size)
    grafted = resnet.graft_plain_into_cross(phase1_variables, template)
    return jax.tree.map(jnp.array, grafted)


def logits_fn(model):
    """Jitted inference ``(variables, images [B, H, W, 1]) -> logits [B, F]`` (float32)."""
    return xla_options.jit(lambda variables, images: model.apply(variables, images, train=False).astype(jnp.float32))


# ----------------------------------------------------------------------------- one phase
def validation_metrics(taxonomy: findings_lib.Taxonomy, decision: str):
    """``fit``'s ``eval_fn``: validation exact match under ``decision`` (it replaces
    the loop's thresholded ``val_exact_match``, so the best checkpoint is chosen by
    the rule the run reports), under the other rule, and on single/cross images."""
    if decision not in findings_lib.DECISIONS:
        raise ConfigError(f"decision must be one of {', '.join(findings_lib.DECISIONS)}, not {decision!r}")

    def eval_fn(arrays: dict) -> dict:
        out = {}
        exact = None
        for rule in findings_lib.DECISIONS:
            pred = findings_lib.predict(arrays["probs"], decision=rule, taxonomy=taxonomy)
            hit = np.all(pred == (arrays["findings"] > 0.5), -1)
            out[f"val_exact_match_{rule}"] = float(hit.mean())
            if rule == decision:
                exact = hit
        out["val_exact_match"] = float(exact.mean())
        if "subset" in arrays:
            for name, flag in (("single", 0), ("cross", 1)):
                sel = arrays["subset"] == flag
                out[f"val_exact_match_{name}"] = float(exact[sel].mean()) if sel.any() else float("nan")
        return out

    return eval_fn


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
    else:
        variables = jax.device_put(initial_variables, parallel.replicated(mesh_or_one))
    state = state_lib.state_from_variables(model, tx, variables, mesh=mesh_or_one, donate=initial_variables is None)
    train_step, eval_step = steps_lib.make_classifier_steps(model, mesh)
    augment = transforms.AugmentConfig() if cfg.data.augment else None
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
        return _eval_batches(data.validation, cfg.data.eval_batch_size, mesh)

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
        eval_fn=validation_metrics(data.taxonomy, cfg.decision),
        log_every=cfg.log_every,
        phase=name,
    )
    # fit donated its input state; the abstract template receives the best checkpoint.
    state = loop.restore_state(workdir, template, which="best")
    best = max(history, key=lambda h: h.get("val_exact_match", -1.0))
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


# ----------------------------------------------------------------------------- evaluation
def _eval_batches(source, batch_size: int, mesh):
    """Eval batches of this process: its block of every global batch of ``batch_size``
    (the whole batch without a mesh: every process then evaluates everything itself)."""
    from jaxthyroid.data import pipeline

    if mesh is None:
        return pipeline.eval_batches(source, batch_size)
    return pipeline.eval_batches(
        source,
        parallel.process_batch_size(batch_size, "data.eval_batch_size"),
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )


def _global_eval_batch(batch: dict, logits, mesh) -> tuple[dict, np.ndarray]:
    """``(batch, logits)`` of a whole global eval batch as NumPy, from this process's
    block and the sharded logits (gathered over processes, in the global order)."""
    keys = ("findings", "subset", "finding_set", "mask")
    return parallel.gather_batch({k: batch[k] for k in keys}, mesh), parallel.to_host(logits)


def predict_probs(model, variables, source, batch_size: int, mesh=None, *, apply=None) -> dict[str, np.ndarray]:
    """Sigmoid probabilities ``[N, F]``, labels ``[N, F]``, ``subset`` and
    ``finding_set`` ``[N]`` for every record of a source (the last batch padded), in
    the source's order. With several processes each feeds its block of every global
    batch of ``batch_size``, and every process gets all ``N`` rows back."""
    apply = apply or logits_fn(model)
    probs, labels, subset, set_ids = [], [], [], []
    for batch in _eval_batches(source, batch_size, mesh):
        images = parallel.shard_batch(batch["image"], mesh) if mesh is not None else batch["image"]
        batch, logits = _global_eval_batch(batch, apply(variables, images), mesh)
        mask = np.asarray(batch["mask"]) > 0
        probs.append(1.0 / (1.0 + np.exp(-logits.astype(np.float64)))[mask])
        labels.append(np.asarray(batch["findings"])[mask])
        subset.append(np.asarray(batch["subset"])[mask])
        set_ids.append(np.asarray(batch["finding_set"])[mask])
    return {
        "probs": np.concatenate(probs),
        "labels": np.concatenate(labels),
        "subset": np.concatenate(subset),
        "finding_set": np.concatenate(set_ids),
    }


def report_on_test_split(
    model,
    variables,
    data: Data,
    *,
    batch_size: int,
    mesh=None,
    figure_path=None,
    title: str | None = None,
    apply=None,
    decision: str = "set",
) -> dict:
    """Test-split report (:func:`jaxthyroid.metrics.classification_report` under
    ``decision``, exact match under both rules) plus ``confusion_matrix`` over finding
    sets (rows true, columns predicted, last ``other``) and ``decision``."""
    out = predict_probs(model, variables, data.test, batch_size, mesh, apply=apply)
    result = metrics_lib.classification_report(
        out["probs"], out["labels"], subset=out["subset"], taxonomy=data.taxonomy, decision=decision
    )
    result["decision"] = decision
    pred_ids = data.taxonomy.set_id_of_multi_hot(
        findings_lib.predict(out["probs"], decision=decision, taxonomy=data.taxonomy)
    )
    cm = metrics_lib.confusion_matrix(pred_ids, out["finding_set"], data.taxonomy.num_sets)
    result["confusion_matrix"] = cm.tolist()
    result["confusion_labels"] = metrics_lib.confusion_labels(data.taxonomy)
    if figure_path is not None and parallel.is_primary():
        labels = [data.taxonomy.folder_name(s) for s in range(data.taxonomy.num_sets)]
        kwargs = {"title": title} if title else {}
        report.plot_confusion(cm, labels, figure_path, **kwargs)
    return result


def _graft_check(plain_apply, cross_apply, plain_vars, cross_vars, data: Data, batch_size: int, mesh) -> dict:
    """Max |logit difference| between the phase-1 model and the grafted cross model
    on the first validation batch (0 up to float round-off: the cross terms are 0)."""
    batch = next(iter(_eval_batches(data.validation, batch_size, mesh)))
    images = parallel.shard_batch(batch["image"], mesh) if mesh is not None else batch["image"]
    a = parallel.to_host(plain_apply(plain_vars, images))
    b = parallel.to_host(cross_apply(cross_vars, images))
    mask = parallel.gather_batch(batch["mask"], mesh) > 0
    return {"max_abs_logit_diff": float(np.max(np.abs(a - b)[mask])), "images": int(mask.sum())}


# ----------------------------------------------------------------------------- the schedule
def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "workdir"}


def _write_config(cfg, workdir: pathlib.Path) -> None:
    """Writes config.json; a workdir holding another config's run is an error."""
    path = workdir / "config.json"
    new = json.loads(json.dumps(cfg.to_dict(), default=str))  # tuples -> lists, as read back
    if path.exists():
        old = json.loads(path.read_text())
        if _comparable(old) != _comparable(new):
            diff = sorted(_diff_keys(_comparable(old), _comparable(new)))
            raise ConfigError(
                f"{workdir} holds a run with another config (differs in "
                f"{', '.join(diff[:6])}); use another --workdir or delete it"
            )
    run_files.write_json(path, new)  # every process checks; process 0 writes, atomically


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with paths made absolute (a run directory is read later from anywhere)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.workdir = os.path.abspath(cfg.workdir)
    for k in ("data_dir", "dataset_dir", "synthetic_dir"):
        if cfg.data[k]:
            cfg.data[k] = os.path.abspath(cfg.data[k])
    return cfg


def validate(cfg) -> None:
    """Reads every key a run reads, through the functions that read them, so a config
    that lacks one (or holds a bad value) fails here, before data or training.

    Epoch budgets are checked for their sign only (their steps need the data set).
    """
    for k in ("source", "data_dir", "dataset_dir", "size", "n_train", "n_val", "n_test", "cross_fraction"):
        cfg.data[k]
    for k in ("train_per_set", "batch_size", "eval_batch_size", "augment", "synthetic_dir", "synthetic_ratio"):
        cfg.data[k]
    for k in ("seed", "workdir", "checkpoint_every_steps", "keep", "log_every"):
        cfg[k]
    validation_metrics(findings_lib.DEFAULT, cfg.decision)
    for cross in (False, True) if cfg.model.name.startswith("resnet") else (False,):
        build_model(cfg, cross=cross, num_classes=findings_lib.DEFAULT.num_findings)
    for name in PHASES:
        if not phase_enabled(cfg, name):
            continue
        phase_is_cross(cfg, name)
        phase_train_on(cfg, name)
        steps = phase_steps(cfg, name, cfg.data.batch_size) if cfg[name].epochs else phase_steps(cfg, name)
        rounds(steps, cfg.eval_every_steps)
        make_tx(cfg, name, steps)


def budgets(cfg, data: Data | None = None) -> dict[str, dict]:
    """Every enabled phase's ``steps``, ``batch_size``, ``images_seen`` and
    ``warmup_steps``, computed before anything trains (epoch budgets need ``data``)."""
    out = {}
    for name in PHASES:
        if not phase_enabled(cfg, name):
            continue
        real = None if data is None else len(data.phase_train(phase_train_on(cfg, name), real=True))
        steps = phase_steps(cfg, name, real)
        out[name] = {
            "steps": steps,
            "batch_size": int(cfg.data.batch_size),
            "images_seen": steps * int(cfg.data.batch_size),
            "warmup_steps": warmup_steps(cfg, name, steps),
        }
    return out


def run(cfg: ml_collections.ConfigDict) -> dict:
    """Runs phase 1, phase 2 and the plain control; writes WORKDIR/results.json.

    Returns the results dict (``evaluations[phase][subset]`` with ``exact_match``,
    ``macro`` and ``per_finding`` metrics; ``histories``; ``graft_check``; ``seconds``).
    """
    t0 = time.perf_counter()
    validate(cfg)
    cfg = resolve(cfg)
    workdir = pathlib.Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, workdir)
    mesh = parallel.make_mesh()
    data = load_data(cfg.data, seed=cfg.seed)
    num_classes = data.taxonomy.num_findings
    if parallel.is_primary():
        (workdir / "taxonomy.json").write_text(json.dumps(data.taxonomy.to_dict()))
    ebs = cfg.data.eval_batch_size
    plan = budgets(cfg, data)  # a bad budget fails here, before any training
    log.info("budgets: %s", plan)

    plain_model = build_model(cfg, cross=False, num_classes=num_classes)
    cross_model = build_model(cfg, cross=True, num_classes=num_classes) if cfg.model.name.startswith("resnet") else None
    plain_apply = logits_fn(plain_model)
    cross_apply = logits_fn(cross_model) if cross_model is not None else None

    def model_of(name):
        return (cross_model, cross_apply) if phase_is_cross(cfg, name) else (plain_model, plain_apply)

    results = {
        "workdir": str(workdir),
        "histories": {},
        "evaluations": {},
        "best_epochs": {},
        "train_seconds": {},
        "budgets": plan,
        "decision": cfg.decision,
    }

    def record(name, state, history, info, model, apply):
        results["histories"][name] = history
        results["best_epochs"][name] = info["best_epoch"]
        results["train_seconds"][name] = info["seconds"]
        results["budgets"][name].update(train_images=info["train_images"], best_step=info.get("best_step"))
        results["evaluations"][name] = report_on_test_split(
            model,
            state_lib.variables_of(state),
            data,
            batch_size=ebs,
            mesh=mesh,
            apply=apply,
            figure_path=workdir / f"confusion_{name}.png",
            title=f"{name}: test finding sets",
            decision=cfg.decision,
        )

    if phase_enabled(cfg, "phase1"):
        model1, apply1 = model_of("phase1")
        # Phase 1 -- evaluated before phase 2, whose steps donate their input buffers.
        state1, hist1, info1 = train_phase("phase1", cfg, data, model1, mesh=mesh)
        record("phase1", state1, hist1, info1, model1, apply1)

    if phase_enabled(cfg, "phase2"):
        model2, apply2 = model_of("phase2")
        # Graft: the cross model with the phase-1 weights (cross terms zero) computes
        # the phase-1 function; checked on real weights before phase 2 starts.
        phase1_vars = state_lib.variables_of(state1)
        if model2 is model1:  # same architecture: phase 2 continues phase 1's weights
            start_vars = jax.tree.map(jnp.array, phase1_vars)
        else:
            start_vars = graft(phase1_vars, model2, size=data.size, key=state_lib.init_key(cfg.seed, len(PHASES)))
        results["graft_check"] = _graft_check(apply1, apply2, phase1_vars, start_vars, data, ebs, mesh)
        results["graft_check"]["phase1_model"] = "cross" if phase_is_cross(cfg, "phase1") else "plain"
        del state1, phase1_vars

        state2, hist2, info2 = train_phase("phase2", cfg, data, model2, initial_variables=start_vars, mesh=mesh)
        record("phase2", state2, hist2, info2, model2, apply2)
        del state2, start_vars
        if parallel.is_primary():
            report.plot_curves({"phase1": hist1, "phase2": hist2}, workdir / "curves.png")

    if phase_enabled(cfg, "plain"):
        model_p, apply_p = model_of("plain")
        state_p, hist_p, info_p = train_phase("plain", cfg, data, model_p, mesh=mesh)
        record("plain", state_p, hist_p, info_p, model_p, apply_p)
    results["seconds"] = time.perf_counter() - t0
    run_files.write_json(workdir / "results.json", results)
    return results


def summary_table(results: dict) -> str:
    """Markdown: steps, exact-match accuracy and macro F1 per phase on single/cross/all test images."""
    rows = []
    for phase, ev in results.get("evaluations", {}).items():
        row = {"model": phase, "steps": results.get("budgets", {}).get(phase, {}).get("steps")}
        for subset in ("single", "cross", "all"):
            row[f"exact match ({subset})"] = ev.get(subset, {}).get("exact_match", float("nan"))
        for subset in ("single", "cross", "all"):
            row[f"macro F1 ({subset})"] = ev.get(subset, {}).get("macro", {}).get("f1", float("nan"))
        rows.append(row)
    if not rows:
        return "(no evaluations)"
    return report.markdown_table(rows, list(rows[0]))


# ----------------------------------------------------------------------------- runs on disk
def load_run(run_dir, which: str = "phase2"):
    """``(cfg, taxonomy, model, variables)`` of a phase's best checkpoint in a run directory."""
    run = pathlib.Path(run_dir)
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json): run `jaxthyroid train` first")
    if which not in PHASES:
        raise ConfigError(f"--which must be one of {', '.join(PHASES)}, not {which!r}")
    if not (run / which / "checkpoints").is_dir():
        raise FileNotFoundError(
            f"{run} has no {which} checkpoints: that phase has not run (rerun `jaxthyroid train` with this workdir)"
        )
    cfg = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
    taxonomy = findings_lib.Taxonomy.from_dict(json.loads((run / "taxonomy.json").read_text()))
    model = build_model(cfg, cross=phase_is_cross(cfg, which), num_classes=taxonomy.num_findings)
    template = abstract_state(model, make_tx(cfg, which, 1, for_restore=True), cfg.data.size)
    try:
        state = loop.restore_state(run / which, template, which="best")
    except CheckpointError as e:  # its message lists the differences on several lines
        raise CheckpointError(" ".join(line.strip() for line in str(e).splitlines())) from None
    return cfg, taxonomy, model, state_lib.variables_of(state)


def evaluate_run(run_dir, *, which: str = "phase2", decision: str | None = None) -> dict:
    """Test-split metrics of one phase of a finished run (as in results.json);
    ``decision`` None: the run's own."""
    cfg, _, model, variables = load_run(run_dir, which)
    data = load_data(cfg.data, seed=cfg.seed)
    return report_on_test_split(
        model, variables, data, batch_size=cfg.data.eval_batch_size, decision=decision or cfg.decision
    )


def predict_files(run_dir, paths, *, which: str = "phase2", decision: str | None = None) -> list[dict]:
    """Findings and probabilities for image files (PNG/TIFF/JPEG 8/16 bit, DICOM)."""
    from jaxthyroid.data import images, transforms

    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: no such image file")
    cfg, taxonomy, model, variables = load_run(run_dir, which)
    size = cfg.data.size
    counts = np.stack([images.load_image(p, size) for p in paths])  # uint16 [N, H, W, 1] raw counts
    x = transforms.normalize_counts(counts.astype(np.float32))
    probs = np.asarray(jax.nn.sigmoid(logits_fn(model)(variables, jnp.asarray(x))))
    pred = findings_lib.predict(probs, decision=decision or cfg.decision, taxonomy=taxonomy)
    return [
        {
            "file": str(p),
            "findings": list(taxonomy.decode(m)),
            "probabilities": {f: float(v) for f, v in zip(taxonomy.findings, pr)},
        }
        for p, m, pr in zip(paths, pred, probs)
    ]
