"""The two-phase schedule: phase 1, the graft, phase 2 and the plain control, and the
budgets of every phase computed before anything trains (the package docstring
describes the method and the run directory)."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections

from jaxthyroid import findings as findings_lib
from jaxthyroid import parallel, report, run_files
from jaxthyroid.config import ConfigError
from jaxthyroid.cross_training import kfold
from jaxthyroid.cross_training.data import Data, load_data
from jaxthyroid.cross_training.evaluation import graft_check, report_on_test_split, validation_metrics
from jaxthyroid.cross_training.phases import (
    PHASES,
    build_model,
    graft,
    init_variables,
    logits_fn,
    make_tx,
    phase_enabled,
    phase_is_cross,
    phase_steps,
    phase_train_on,
    pretrained,
    rounds,
    warmup_steps,
)
from jaxthyroid.cross_training.run_dir import RESULTS_FILE, write_config
from jaxthyroid.cross_training.training import train_phase
from jaxthyroid.data import transforms
from jaxthyroid.train import state as state_lib

log = logging.getLogger(__name__)


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with paths made absolute (a run directory is read later from anywhere)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.workdir = os.path.abspath(cfg.workdir)
    for k in ("data_dir", "dataset_dir", "synthetic_dir"):
        if cfg.data[k]:
            cfg.data[k] = os.path.abspath(cfg.data[k])
    if cfg.model.init_from:
        cfg.model.init_from = os.path.abspath(cfg.model.init_from)
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
    transforms.augment_config(cfg.data)  # data.augmentation declares every AugmentConfig field
    for k in ("seed", "workdir", "checkpoint_every_steps", "keep", "log_every"):
        cfg[k]
    if cfg.folds == 1 or cfg.folds < 0:
        raise ConfigError(f"folds must be 0 (no k-fold) or at least 2, not {cfg.folds}")
    if not -1 <= cfg.fold < max(cfg.folds, 1) or (cfg.fold >= 0 and not cfg.folds):
        raise ConfigError(f"fold must be -1 (every fold) or a fold of folds={cfg.folds}, not {cfg.fold}")
    validation_metrics(findings_lib.DEFAULT, cfg.decision)
    if cfg.model.init_from and not os.path.isfile(cfg.model.init_from):
        raise ConfigError(
            f"model.init_from={cfg.model.init_from}: no such file (make it with `jaxthyroid weights import`)"
        )
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
    if cfg.folds and cfg.fold < 0:  # every fold, each a run of its own
        return kfold.run_folds(cfg, run)
    workdir = pathlib.Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, workdir)
    mesh = parallel.make_mesh()
    data = load_data(cfg.data, seed=cfg.seed, folds=cfg.folds, fold=cfg.fold)
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

    if cfg.model.init_from:  # weights that do not fit fail here, before any training (shapes only)
        for name in ("phase1", "plain"):
            if phase_enabled(cfg, name):
                model = model_of(name)[0]
                pretrained(
                    cfg, jax.eval_shape(lambda key, m=model: init_variables(m, key, data.size), jax.random.key(0))
                )

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
        results["graft_check"] = graft_check(apply1, apply2, phase1_vars, start_vars, data, ebs, mesh)
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
    run_files.write_json(workdir / RESULTS_FILE, results)
    return results
