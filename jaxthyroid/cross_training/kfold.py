"""k-fold cross-validation of the schedule: ``--config.folds=K``.

The training and validation records together are cut into ``K`` folds stratified by
finding set (:func:`jaxthyroid.data.sources.stratified_folds`, seeded by ``seed``);
run ``k`` validates on fold ``k`` (its best round is chosen there) and trains on the
others, and every run is scored on the same, untouched test split. Layout::

  WORKDIR/config.json         the k-fold's config (``fold = -1``)
  WORKDIR/fold_<k>/           run ``k``: a whole run directory (config ``fold = k``)
  WORKDIR/kfold.json          per-fold test metrics of every phase, their mean and
                              sample standard deviation, and the table below

A rerun skips finished folds (and phases); an interrupted one resumes.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import ml_collections
import numpy as np

from jaxthyroid import report, run_files
from jaxthyroid.cross_training.run_dir import write_config
from jaxthyroid.cross_training.training import best_round

# Test metrics of a fold's phase: (name in kfold.json, subset, key in the evaluation).
METRICS = (
    ("exact_match_all", "all", "exact_match"),
    ("exact_match_single", "single", "exact_match"),
    ("exact_match_cross", "cross", "exact_match"),
    ("macro_f1_all", "all", "f1"),
    ("macro_auc_all", "all", "auc"),
)


def fold_config(cfg: ml_collections.ConfigDict, fold: int) -> ml_collections.ConfigDict:
    """The config of run ``fold``: ``fold`` set, its own ``WORKDIR/fold_<fold>``."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.fold = int(fold)
    c.workdir = str(pathlib.Path(cfg.workdir) / f"fold_{fold}")
    return c


def fold_metrics(results: dict) -> dict[str, dict[str, float]]:
    """``{phase: {metric: value}}`` of one fold's results (:data:`METRICS`, plus the
    best validation round's ``val_exact_match`` on all, single- and cross-feature
    images of the fold's validation split)."""
    out = {}
    for phase, ev in results["evaluations"].items():
        row = {}
        for name, subset, key in METRICS:
            s = ev[subset]
            row[name] = float(s[key] if key == "exact_match" else s["macro"][key])
        best = best_round(results["histories"][phase])
        for subset in ("", "_single", "_cross"):
            row[f"val_exact_match{subset}_best"] = float(best.get(f"val_exact_match{subset}", float("nan")))
        out[phase] = row
    return out


def summarise(per_fold: list[dict[str, dict[str, float]]]) -> dict:
    """``mean`` and ``std`` (sample, ddof 1; nan for one fold) of every phase's metrics."""
    mean, std = {}, {}
    for phase in per_fold[0]:
        mean[phase], std[phase] = {}, {}
        for metric in per_fold[0][phase]:
            values = np.asarray([f[phase][metric] for f in per_fold], np.float64)
            mean[phase][metric] = float(values.mean())
            std[phase][metric] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return {"mean": mean, "std": std}


def table(per_fold: list[dict], mean: dict, std: dict) -> str:
    """Markdown: one row per fold and phase, then ``mean ± std`` per phase."""
    metrics = list(next(iter(per_fold[0].values())))
    rows = []
    for k, fold in enumerate(per_fold):
        for phase, values in fold.items():
            rows.append({"fold": str(k), "model": phase, **{m: f"{values[m]:.4f}" for m in metrics}})
    for phase in mean:
        cells = {m: f"{mean[phase][m]:.4f} ± {std[phase][m]:.4f}" for m in metrics}
        rows.append({"fold": "mean ± std", "model": phase, **cells})
    return report.markdown_table(rows, ["fold", "model", *metrics])


def run_folds(cfg: ml_collections.ConfigDict, run_one: Callable[[ml_collections.ConfigDict], dict]) -> dict:
    """Runs the ``cfg.folds`` folds with ``run_one`` (the schedule's ``run``) and writes
    ``WORKDIR/kfold.json``; returns it (``per_fold``, ``mean``, ``std``, ``table``,
    ``workdir``, ``folds``, ``seconds``). ``cfg`` is validated and resolved."""
    start = time.perf_counter()
    workdir = pathlib.Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, workdir)  # a workdir holding another k-fold's runs is an error
    per_fold, fold_dirs = [], []
    for k in range(cfg.folds):
        print(f"fold {k + 1}/{cfg.folds}", flush=True)
        c = fold_config(cfg, k)
        per_fold.append(fold_metrics(run_one(c)))
        fold_dirs.append(c.workdir)
    summary = {
        "workdir": str(workdir),
        "folds": int(cfg.folds),
        "seed": int(cfg.seed),
        "fold_workdirs": fold_dirs,
        "per_fold": per_fold,
        **summarise(per_fold),
    }
    summary["table"] = table(per_fold, summary["mean"], summary["std"])
    summary["seconds"] = time.perf_counter() - start
    run_files.write_json(workdir / "kfold.json", summary, indent=1)
    return summary
