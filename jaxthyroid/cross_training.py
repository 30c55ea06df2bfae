"""The two-phase cross-training schedule, composed from data, models and train.

Phase 1 trains a classifier on single-feature images. Phase 2 grafts the phase-1
weights into the cross-residual model (whose cross terms start at zero, so the
grafted model computes the same function) and retrains it on the cross-training set
(single- and cross-feature images); which parameters train, and how fast, is the
config's ``phase2.param_groups`` (optax ``multi_transform``). A plain model trained
once on everything is the control.

Run directory layout::

  WORKDIR/config.json            the resolved config
  WORKDIR/<phase>/               checkpoints/, metrics.jsonl, TensorBoard events
  WORKDIR/<phase>/done.json      written when the phase finished (a rerun skips it)
  WORKDIR/results.json           test metrics of every phase, histories
  WORKDIR/curves.png             validation accuracy and loss per epoch, both phases
  WORKDIR/confusion_<phase>.png  confusion matrix over finding sets

This module only composes; it holds no model, step or data code of its own.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import metrics as metrics_lib
from jaxthyroid import parallel, report
from jaxthyroid.models import registry, resnet
from jaxthyroid.train import checkpoint as checkpoint_lib
from jaxthyroid.train import loop, optim, state as state_lib, steps as steps_lib

PHASES = ("phase1", "phase2", "plain")


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass
class Data:
    """Random-access sources per split, and the label space they use."""

    taxonomy: findings_lib.Taxonomy
    train: Any
    validation: Any
    test: Any
    size: int


def load_data(data_cfg: ml_collections.ConfigDict, *, seed: int = 0) -> Data:
    """Builds (if needed) and opens the configured data set's splits."""
    from jaxthyroid.data import features, sources  # lazy: TFDS only when data is read from disk

    if data_cfg.source == "phantom":
        from jaxthyroid.data import phantom_builder

        dataset_dir = phantom_builder.build_phantom(
            data_cfg.data_dir, size=data_cfg.size, n_train=data_cfg.n_train, n_val=data_cfg.n_val,
            n_test=data_cfg.n_test, cross_fraction=data_cfg.cross_fraction, seed=seed)
    elif data_cfg.source == "folder":
        if not data_cfg.dataset_dir:
            raise ValueError("data.source=folder needs data.dataset_dir: the folder that "
                             "`jaxthyroid data build folder` printed")
        dataset_dir = data_cfg.dataset_dir
    else:
        raise ValueError(f"data.source must be 'phantom' or 'folder', not {data_cfg.source!r}")

    taxonomy = features.load_taxonomy(dataset_dir)
    train = features.load_source(dataset_dir, "train")
    if data_cfg.synthetic_dir and data_cfg.synthetic_ratio > 0:
        synthetic = features.load_source(data_cfg.synthetic_dir, "train")
        train = sources.mix_sources(train, synthetic, data_cfg.synthetic_ratio, seed=seed)
    return Data(taxonomy, train, features.load_source(dataset_dir, "validation"),
                features.load_source(dataset_dir, "test"), data_cfg.size)


# ----------------------------------------------------------------------------- one phase
def _optimizer_config(phase_cfg, total_steps: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(phase_cfg.to_dict())
    with c.unlocked():
        c.total_steps = max(total_steps, 1)
    return c


def build_model(cfg, *, cross: bool, num_classes: int):
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    return registry.get_model(cfg.model.name, num_classes=num_classes, in_channels=1, dtype=dtype,
                              cross=cross, cross_source=cfg.model.cross_source)


def train_phase(name: str, cfg, data: Data, model, *, init_variables=None, mesh=None):
    """Trains one phase in ``WORKDIR/name``; resumes, or returns at once if done."""
    from jaxthyroid.data import pipeline, sources

    phase_cfg = cfg[name]
    workdir = pathlib.Path(cfg.workdir) / name
    source = data.train if phase_cfg.train_on == "all" else sources.single_feature(data.train)
    batch_size = cfg.data.batch_size
    steps_per_epoch = len(source) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{name}: {len(source)} training images is less than one batch of {batch_size}")
    tx = optim.make_optimizer(_optimizer_config(phase_cfg, steps_per_epoch * phase_cfg.epochs))
    key = jax.random.fold_in(jax.random.key(cfg.seed), PHASES.index(name))
    sample_shape = (batch_size, data.size, data.size, 1)
    state = state_lib.create_train_state(key, model, tx, sample_shape, mesh=mesh)
    if init_variables is not None:
        state = state.replace(params=init_variables["params"],
                              batch_stats=init_variables.get("batch_stats", state.batch_stats))
    train_step, eval_step = steps_lib.make_classifier_steps(model, mesh)

    from jaxthyroid.data import transforms

    augment = transforms.AugmentConfig() if cfg.data.augment else None

    def train_batches(epoch):
        return iter(pipeline.make_loader(source, batch_size=batch_size, seed=cfg.seed * 1000 + epoch,
                                         shuffle=True, num_epochs=1, augment=augment))

    def eval_batches():
        return pipeline.eval_batches(data.validation, cfg.data.eval_batch_size)

    done = workdir / "done.json"
    if done.exists():
        state = loop.restore_state(workdir, state, which="best")
        return state, json.loads(done.read_text())["history"]
    state, history = loop.fit(
        state=state, train_step=train_step, eval_step=eval_step, train_batches=train_batches,
        eval_batches=eval_batches, num_epochs=phase_cfg.epochs, workdir=workdir, key=key, mesh=mesh,
        steps_per_epoch=steps_per_epoch, checkpoint_every_steps=cfg.checkpoint_every_steps, keep=cfg.keep,
        best_metric="val_exact_match", best_mode="max", log_every=cfg.log_every, phase=name)
    state = loop.restore_state(workdir, state, which="best")
    done.write_text(json.dumps({"history": history}, default=float))
    return state, history


# ----------------------------------------------------------------------------- evaluation
def predict_probs(model, state, source, batch_size: int, mesh=None) -> dict[str, np.ndarray]:
    """Sigmoid probabilities and labels for every image of a source (padded last batch)."""
    from jaxthyroid.data import pipeline

    _, eval_step = steps_lib.make_classifier_steps(model, mesh)
    probs, labels, subset, set_ids = [], [], [], []
    for batch in pipeline.eval_batches(source, batch_size):
        mask = np.asarray(batch["mask"]) > 0
        out = eval_step(state, {k: v for k, v in batch.items() if k in ("image", "findings", "mask")})
        probs.append(np.asarray(jax.nn.sigmoid(out["logits"].astype(jnp.float32)))[mask])
        labels.append(np.asarray(batch["findings"])[mask])
        subset.append(np.asarray(batch["subset"])[mask])
        set_ids.append(np.asarray(batch["finding_set"])[mask])
    return {"probs": np.concatenate(probs), "labels": np.concatenate(labels),
            "subset": np.concatenate(subset), "finding_set": np.concatenate(set_ids)}


def evaluate(model, state, data: Data, *, batch_size: int, mesh=None, figure_path=None) -> dict:
    out = predict_probs(model, state, data.test, batch_size, mesh)
    result = metrics_lib.classification_report(out["probs"], out["labels"], subset=out["subset"],
                                               taxonomy=data.taxonomy)
    pred_ids = data.taxonomy.set_id_of_multi_hot(findings_lib.predict(out["probs"]))
    cm = metrics_lib.confusion_matrix(pred_ids, out["finding_set"], data.taxonomy.num_sets)
    result["confusion_matrix"] = np.asarray(cm).tolist()
    if figure_path is not None:
        labels = [data.taxonomy.folder_name(s) for s in data.taxonomy.finding_sets]
        report.plot_confusion(np.asarray(cm), labels, figure_path)
    return result


# ----------------------------------------------------------------------------- the schedule
def run(cfg: ml_collections.ConfigDict) -> dict:
    """Runs phase 1, phase 2 and the plain control; writes WORKDIR/results.json."""
    workdir = pathlib.Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    mesh = parallel.make_mesh()
    data = load_data(cfg.data, seed=cfg.seed)
    num_classes = data.taxonomy.num_findings
    (workdir / "taxonomy.json").write_text(json.dumps(data.taxonomy.to_dict()))

    plain_model = build_model(cfg, cross=False, num_classes=num_classes)
    cross_model = build_model(cfg, cross=True, num_classes=num_classes)

    state1, hist1 = train_phase("phase1", cfg, data, plain_model, mesh=mesh)
    # Graft: the cross model with the phase-1 weights; its cross terms are zero, so
    # it starts from exactly the phase-1 function.
    template = state_lib.create_train_state(jax.random.key(cfg.seed), cross_model, optim.make_optimizer(
        _optimizer_config(cfg.phase2, 1)), (1, data.size, data.size, 1))
    grafted = resnet.graft_plain_into_cross(
        {"params": state1.params, "batch_stats": state1.batch_stats},
        {"params": template.params, "batch_stats": template.batch_stats})
    state2, hist2 = train_phase("phase2", cfg, data, cross_model, init_variables=grafted, mesh=mesh)

    results = {"workdir": str(workdir), "histories": {"phase1": hist1, "phase2": hist2}, "evaluations": {}}
    ebs = cfg.data.eval_batch_size
    results["evaluations"]["phase1"] = evaluate(plain_model, state1, data, batch_size=ebs, mesh=mesh,
                                                figure_path=workdir / "confusion_phase1.png")
    results["evaluations"]["phase2"] = evaluate(cross_model, state2, data, batch_size=ebs, mesh=mesh,
                                                figure_path=workdir / "confusion_phase2.png")
    if cfg.plain.enabled:
        state_p, hist_p = train_phase("plain", cfg, data, plain_model, mesh=mesh)
        results["histories"]["plain"] = hist_p
        results["evaluations"]["plain"] = evaluate(plain_model, state_p, data, batch_size=ebs, mesh=mesh,
                                                   figure_path=workdir / "confusion_plain.png")
    report.plot_curves({"phase1": hist1, "phase2": hist2}, workdir / "curves.png")
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    return results


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def summary_table(results: dict) -> str:
    """Markdown: exact-match accuracy and macro F1 per phase on single/cross/all test images."""
    rows = []
    for phase, ev in results.get("evaluations", {}).items():
        row = {"model": phase}
        for subset in ("single", "cross", "all"):
            sub = ev.get(subset, {})
            row[f"exact match ({subset})"] = sub.get("exact_match", float("nan"))
            row[f"macro F1 ({subset})"] = sub.get("macro", {}).get("f1", float("nan"))
        rows.append(row)
    if not rows:
        return "(no evaluations)"
    return report.markdown_table(rows, list(rows[0]))


# ----------------------------------------------------------------------------- runs on disk
def _load_run(run_dir, which: str):
    run = pathlib.Path(run_dir)
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json): run `jaxthyroid train` first")
    if which not in PHASES:
        raise ValueError(f"--which must be one of {', '.join(PHASES)}, not {which!r}")
    cfg = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
    taxonomy = findings_lib.Taxonomy.from_dict(json.loads((run / "taxonomy.json").read_text()))
    model = build_model(cfg, cross=(which == "phase2"), num_classes=taxonomy.num_findings)
    tx = optim.make_optimizer(_optimizer_config(cfg[which], 1))
    template = state_lib.create_train_state(jax.random.key(0), model, tx, (1, cfg.data.size, cfg.data.size, 1))
    state = loop.restore_state(run / which, template, which="best")
    return cfg, taxonomy, model, state


def evaluate_run(run_dir, *, which: str = "phase2") -> dict:
    cfg, _, model, state = _load_run(run_dir, which)
    data = load_data(cfg.data, seed=cfg.seed)
    return evaluate(model, state, data, batch_size=cfg.data.eval_batch_size)


def predict_files(run_dir, paths, *, which: str = "phase2") -> list[dict]:
    """Findings and probabilities for image files (PNG/TIFF/JPEG/DICOM)."""
    from jaxthyroid.data import images, transforms

    cfg, taxonomy, model, state = _load_run(run_dir, which)
    size = cfg.data.size
    batch = np.stack([images.load_image(p, size=size) for p in paths])  # [N, H, W, 1] raw counts
    x = transforms.normalize_counts(jnp.asarray(batch, jnp.float32))
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    probs = np.asarray(jax.nn.sigmoid(logits.astype(jnp.float32)))
    pred = findings_lib.predict(probs)
    return [{"file": str(p), "findings": list(taxonomy.decode(m)),
             "probabilities": {f: float(v) for f, v in zip(taxonomy.findings, pr)}}
            for p, m, pr in zip(paths, pred, probs)]
