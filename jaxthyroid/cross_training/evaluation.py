"""Evaluation of a trained phase: validation metrics for the loop, predictions over a
source, the test-split report, the graft check and the summary table."""

from __future__ import annotations

import jax
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import metrics as metrics_lib
from jaxthyroid import parallel, report
from jaxthyroid.config import ConfigError
from jaxthyroid.cross_training.data import Data
from jaxthyroid.cross_training.phases import logits_fn


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


def eval_batches(source, batch_size: int, mesh):
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


def global_eval_batch(batch: dict, logits, mesh) -> tuple[dict, np.ndarray]:
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
    for batch in eval_batches(source, batch_size, mesh):
        images = parallel.shard_batch(batch["image"], mesh) if mesh is not None else batch["image"]
        batch, logits = global_eval_batch(batch, apply(variables, images), mesh)
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


def graft_check(plain_apply, cross_apply, plain_vars, cross_vars, data: Data, batch_size: int, mesh) -> dict:
    """Max |logit difference| between the phase-1 model and the grafted cross model
    on the first validation batch (0 up to float round-off: the cross terms are 0)."""
    batch = next(iter(eval_batches(data.validation, batch_size, mesh)))
    images = parallel.shard_batch(batch["image"], mesh) if mesh is not None else batch["image"]
    a = parallel.to_host(plain_apply(plain_vars, images))
    b = parallel.to_host(cross_apply(cross_vars, images))
    mask = parallel.gather_batch(batch["mask"], mesh) > 0
    return {"max_abs_logit_diff": float(np.max(np.abs(a - b)[mask])), "images": int(mask.sum())}


def summary_table(results: dict) -> str:
    """Markdown: steps, exact-match accuracy and macro F1 per phase on single/cross/all test images
    (a k-fold's results: its per-fold table with mean ± std)."""
    if "per_fold" in results:
        return results["table"]
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
