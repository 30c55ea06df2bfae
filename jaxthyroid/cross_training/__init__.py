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

This package only composes; it holds no model, step or data code of its own:

  data        the configured data set's splits as sources (``Data``, ``load_data``)
  phases      a phase's model, optimiser, budget, rounds and initial weights
              (``model.init_from``: a backbone from ``jaxthyroid weights import``)
  training    one phase's training run (``train_phase``)
  evaluation  validation metrics, predictions, the test-split report, the summary table
  schedule    phase 1, graft, phase 2 and the control (``run``, ``validate``, ``budgets``)
  kfold       ``folds = K``: one run per fold under ``WORKDIR/fold_<k>``, ``kfold.json``
  run_dir     config.json, and a finished run read back (``load_run``, ``evaluate_run``,
              ``predict_files``)

The names below are re-exported, so ``cross_training.run`` etc. work as before.
"""

from jaxthyroid.cross_training.data import Data, build_phantom, load_data
from jaxthyroid.cross_training.evaluation import (
    eval_batches,
    global_eval_batch,
    graft_check,
    predict_probs,
    report_on_test_split,
    summary_table,
    validation_metrics,
)
from jaxthyroid.cross_training.phases import (
    FREEZE_CROSS_TERMS,
    PHASE_MODELS,
    PHASES,
    abstract_state,
    build_model,
    graft,
    init_variables,
    logits_fn,
    make_tx,
    phase_enabled,
    phase_is_cross,
    phase_param_groups,
    phase_steps,
    phase_train_on,
    rounds,
    steps_from_epochs,
    warmup_steps,
)
from jaxthyroid.cross_training.run_dir import evaluate_run, load_run, predict_files, read_results, write_config
from jaxthyroid.cross_training.schedule import budgets, resolve, run, validate
from jaxthyroid.cross_training.training import train_phase

__all__ = [
    "FREEZE_CROSS_TERMS",
    "PHASES",
    "PHASE_MODELS",
    "Data",
    "abstract_state",
    "budgets",
    "build_model",
    "eval_batches",
    "evaluate_run",
    "global_eval_batch",
    "graft",
    "graft_check",
    "init_variables",
    "build_phantom",
    "load_data",
    "load_run",
    "logits_fn",
    "make_tx",
    "phase_enabled",
    "phase_is_cross",
    "phase_param_groups",
    "phase_steps",
    "phase_train_on",
    "predict_files",
    "predict_probs",
    "read_results",
    "report_on_test_split",
    "resolve",
    "rounds",
    "run",
    "steps_from_epochs",
    "summary_table",
    "train_phase",
    "validate",
    "validation_metrics",
    "warmup_steps",
    "write_config",
]
