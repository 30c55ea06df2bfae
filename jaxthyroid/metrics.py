"""Classification metrics (host side, numpy): per finding, macro, exact match, confusion.

For each finding, treating it as a binary problem over the images:

    recall (sensitivity) = TP / (TP + FN)      specificity = TN / (TN + FP)
    precision            = TP / (TP + FP)      F1 = 2 TP / (2 TP + FP + FN)
    ROC AUC = P(score of a positive > score of a negative), ties counting 1/2
            = (sum of the positives' ranks - P (P + 1) / 2) / (P N)   (Mann-Whitney)

A ratio with a zero denominator is NaN (e.g. recall of a finding absent from the
subset, AUC when all images are of one class); macro averages skip NaNs (NaN when
all are). Exact-match accuracy — the paper's "accuracy" — counts images whose
predicted finding set equals the label, under one of two decision rules
(:func:`jaxthyroid.findings.predict`): ``"set"`` (default), the most probable finding
set of the taxonomy under the per-finding probabilities, or ``"threshold"``, every
finding with p >= 0.5 (argmax when none), which can name combinations that are not
finding sets. The per-finding metrics use the chosen rule; exact match is reported
under both (``exact_match_set``, ``exact_match_threshold``). Everything is reported
on the single-feature, cross-feature and all test images (DESIGN §2).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from jaxthyroid import findings as findings_lib

SUBSETS = ("single", "cross", "all")
MEASURES = ("recall", "precision", "specificity", "f1", "auc")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Rank-based ROC AUC of ``scores [N]`` for boolean ``positive [N]``; NaN if one class."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks (1-based) with ties sharing the mean of their positions.
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(pred: np.ndarray, true: np.ndarray, scores: np.ndarray) -> dict:
    """Recall, precision, specificity, F1, AUC and counts of one finding (boolean ``[N]``)."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = int(np.sum(pred & true))
    fp = int(np.sum(pred & ~true))
    fn = int(np.sum(~pred & true))
    tn = int(np.sum(~pred & ~true))
    return {
        "recall": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auc": roc_auc(scores, true),
        "support": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def exact_match(pred: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose multi-hot prediction ``[N, F]`` equals the label ``[N, F]``
    in every finding (NaN for no images)."""
    pred, true = np.asarray(pred) > 0.5, np.asarray(labels) > 0.5
    return float(np.all(pred == true, axis=-1).mean()) if len(true) else float("nan")


def _subset_report(probs, labels, pred, other_preds, taxonomy) -> dict:
    true = labels > 0.5
    per_finding = {
        name: binary_metrics(pred[:, i], true[:, i], probs[:, i]) for i, name in enumerate(taxonomy.findings)
    }
    macro = {m: _nanmean([per_finding[f][m] for f in taxonomy.findings]) for m in MEASURES}
    return {
        "count": int(len(labels)),
        "exact_match": exact_match(pred, true),
        **{f"exact_match_{rule}": exact_match(p, true) for rule, p in other_preds.items()},
        "per_finding": per_finding,
        "macro": macro,
    }


def classification_report(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    subset: np.ndarray | None = None,
    taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT,
    threshold: float = 0.5,
    decision: str = "set",
) -> dict:
    """Per-finding and macro metrics and exact-match accuracy on each image subset.

    Args:
      probs: per-finding probabilities ``[N, F]``.
      labels: multi-hot labels ``[N, F]``.
      subset: ``[N]``, 1/True for cross-feature images, 0/False for single-feature
        (the data sets' ``subset`` field); None derives it from the labels (>= 2 findings).
      taxonomy: names the ``F`` findings.
      threshold: probability from which a finding is predicted (``decision="threshold"``).
      decision: ``"set"`` | ``"threshold"`` (:func:`jaxthyroid.findings.predict`): the
        rule behind ``exact_match`` and the per-finding metrics.

    Returns:
      ``{'single'|'cross'|'all': {'count', 'exact_match', 'exact_match_set',
      'exact_match_threshold', 'per_finding': {finding:
      {'recall', 'precision', 'specificity', 'f1', 'auc', 'support', 'tp', 'fp', 'fn',
      'tn'}}, 'macro': {'recall', 'precision', 'specificity', 'f1', 'auc'}}}``.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.float64)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be [N, F]")
    if probs.shape[1] != taxonomy.num_findings:
        raise ValueError(
            f"{probs.shape[1]} outputs but the taxonomy has "
            f"{taxonomy.num_findings} findings ({', '.join(taxonomy.findings)})"
        )
    cross = (labels > 0.5).sum(-1) >= 2 if subset is None else np.asarray(subset).astype(bool)
    preds = {
        rule: findings_lib.predict(probs, threshold, decision=rule, taxonomy=taxonomy) > 0.5
        for rule in findings_lib.DECISIONS
    }
    if decision not in preds:
        raise ValueError(f"decision must be one of {', '.join(findings_lib.DECISIONS)}, not {decision!r}")
    masks = {"single": ~cross, "cross": cross, "all": np.ones(len(labels), bool)}
    return {
        name: _subset_report(probs[m], labels[m], preds[decision][m], {r: p[m] for r, p in preds.items()}, taxonomy)
        for name, m in masks.items()
    }


def confusion_matrix(pred_set_ids: np.ndarray, true_set_ids: np.ndarray, num_sets: int) -> np.ndarray:
    """Counts ``[num_sets, num_sets + 1]``: rows true finding set, columns predicted.

    The last column, ``other``, counts predicted combinations that are not finding
    sets of the taxonomy (id -1 from ``Taxonomy.set_id_of_multi_hot``).
    """
    pred = np.asarray(pred_set_ids, np.int64).reshape(-1)
    true = np.asarray(true_set_ids, np.int64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.size} predictions but {true.size} labels")
    if true.size and (true.min() < 0 or true.max() >= num_sets):
        raise ValueError(
            f"true finding-set ids must be in [0, {num_sets}); got "
            f"{sorted(set(true[(true < 0) | (true >= num_sets)].tolist()))}"
        )
    pred = np.where((pred < 0) | (pred >= num_sets), num_sets, pred)
    cm = np.zeros((num_sets, num_sets + 1), np.int64)
    np.add.at(cm, (true, pred), 1)
    return cm


def confusion_labels(taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT) -> list[str]:
    """Row/column names of :func:`confusion_matrix`: folder names, then ``other``."""
    return [taxonomy.folder_name(s) for s in taxonomy.finding_sets] + ["other"]


# ----------------------------------------------------------------------------- image quality
def psnr(a: np.ndarray, b: np.ndarray, *, max_val: float = 1.0) -> np.ndarray:
    """PSNR in dB per image of ``a`` against ``b`` (``[N, H, W, C]`` or ``[H, W, C]``).

    ``10 log10(max_val² / MSE)`` (dm-pix, which assumes a range of 1: the images are
    divided by ``max_val`` first). Identical images give +inf.
    """
    import dm_pix
    import jax.numpy as jnp

    a = jnp.asarray(a, jnp.float32) / max_val
    b = jnp.asarray(b, jnp.float32) / max_val
    with np.errstate(divide="ignore"):
        return np.asarray(dm_pix.psnr(a, b), np.float64)


def ssim(a: np.ndarray, b: np.ndarray, *, max_val: float = 1.0) -> np.ndarray:
    """SSIM per image (Wang et al. 2004; dm-pix: 11×11 Gaussian window, σ 1.5,
    k1 0.01, k2 0.03) of ``[N, H, W, C]`` (or ``[H, W, C]``) images with range ``max_val``.
    Sides must be at least 11 pixels (the window is applied without padding)."""
    import dm_pix
    import jax.numpy as jnp

    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if min(a.shape[-3], a.shape[-2]) < 11:
        raise ValueError(f"ssim needs images of at least 11×11 pixels, got {a.shape[-3]}×{a.shape[-2]}")
    return np.asarray(dm_pix.ssim(a, b, max_val=max_val), np.float64)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]``, ``[M, D]``
    (the FID formula, Heusel et al. 2017, in whatever feature space is given):

        d² = |μ_a - μ_b|² + tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^½)

    ``tr((Σ_a Σ_b)^½)`` is computed as the sum of the square roots of the eigenvalues
    of the symmetric ``Σ_a^½ Σ_b Σ_a^½`` (same spectrum, no complex round-off).
    Returns ``d²`` (as FID does), ≥ 0. Sample covariances are biased upwards for
    small N: compare distances computed from similar numbers of images.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D] with equal D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))

    def sym_sqrt(m):
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T

    root_a = sym_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    tr_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None))))
    d2 = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
    return max(d2, 0.0)


# -- intervals over seeds ----------------------------------------------------------
def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its two-sided t-interval over seeds:
    ``t_{(1+confidence)/2, n-1} · s / sqrt(n)`` (NaN half-width for one value; NaNs ignored)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    t = float(stats.t.ppf(0.5 + confidence / 2.0, v.size - 1))
    return float(v.mean()), t * float(v.std(ddof=1)) / math.sqrt(v.size)
