"""A run directory on disk: its config.json (one config per workdir), and reading a
finished phase back to evaluate it or to predict image files."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import run_files
from jaxthyroid.config import ConfigError
from jaxthyroid.cross_training.data import load_data
from jaxthyroid.cross_training.evaluation import report_on_test_split
from jaxthyroid.cross_training.phases import PHASES, abstract_state, build_model, logits_fn, make_tx, phase_is_cross
from jaxthyroid.train import loop
from jaxthyroid.train import state as state_lib
from jaxthyroid.train.checkpoint import CheckpointError


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "workdir"}


RESULTS_FILE = "results.json"  # a finished run's test metrics, histories and budgets


def read_results(run_dir) -> dict | None:
    """A run's ``results.json`` (written by :func:`jaxthyroid.cross_training.run` when it
    finishes), or None when the run has none."""
    path = pathlib.Path(run_dir) / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_config(cfg, workdir: pathlib.Path) -> None:
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
    if "domain" not in cfg.data:  # saved before the phantom had regimes: the default one
        cfg.data.domain = "default"
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
    data = load_data(cfg.data, seed=cfg.seed)  # the test split: the same in every fold of a k-fold
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
