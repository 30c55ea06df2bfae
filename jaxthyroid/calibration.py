"""Calibration of the per-finding probabilities: expected calibration error and
temperature scaling (issue 14, item 4).

The classifier gives one sigmoid probability per finding. A finding's probabilities
are *calibrated* when, among images given probability ~p, a fraction ~p has the finding.

Expected calibration error (ECE), per finding, with ``B`` equal-width bins on [0, 1]
(bin ``b`` holds ``p`` in ``[b/B, (b+1)/B)``, the last one also ``p = 1``)::

    ECE = sum_b (n_b / N) · | mean(y in b) - mean(p in b) |

(Naeini et al. 2015; Guo et al. 2017 use the same estimator with B = 15 on the top-class
confidence; here each finding is its own binary problem, B = 10 by default.) Empty bins
add nothing. Even perfectly calibrated probabilities give ECE > 0 on finite data: each
bin's mean label is a binomial average with standard deviation ``sqrt(p (1 - p) / n_b)``,
so expect ECE of order ``sqrt(B / N) / 2`` (:func:`ece_noise_floor`).

Temperature scaling (Guo et al. 2017): one scalar ``T > 0`` divides every logit,
``p = sigmoid(z / T)``, chosen to minimise the mean binary cross-entropy on the
*validation* split over all findings. It changes no ranking within a finding (AUC)
and no 0.5-threshold decision (the sign of ``z``). Under the set rule a finding set S
scores ``sum_{f in S} z_f`` less a term common to all sets, and those differences all
scale by ``1/T``; but the set "normal" also collects "no finding" and scores
``log(1 + e^{z_normal})``, which does not scale, so a set decision near the normal
boundary can change. ``reproduce`` reports T and the ECE before and after; the
decisions it reports are those of the unscaled probabilities. The fit is a golden-section search on ``log T`` in
``[log 0.05, log 20]``: the loss is convex in ``1/T`` (a logistic loss of a scaled
linear score), so unimodal in ``log T``.

NumPy only (float64); the logits are recovered from the probabilities the evaluation
already computes (:func:`logits_of`).
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 10
LOG_T_RANGE = (math.log(0.05), math.log(20.0))
_P_CLIP = 1e-12  # keeps log(p) and logit(p) finite for saturated probabilities


def logits_of(probs) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities ``[N, F]`` (clipped to ``[1e-12, 1 - 1e-12]``)."""
    p = np.clip(np.asarray(probs, np.float64), _P_CLIP, 1.0 - _P_CLIP)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def expected_calibration_error(probs, labels, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """ECE of each column: probabilities and 0/1 labels ``[N, F]`` (or ``[N]``) -> ``[F]`` (or scalar).

    Equal-width bins on [0, 1], weighted by their share of the ``N`` samples (see the
    module docstring).
    """
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.float64)
    squeeze = p.ndim == 1
    p, y = p.reshape(len(p), -1), y.reshape(len(y), -1)
    if p.shape != y.shape:
        raise ValueError(f"probabilities {p.shape} and labels {y.shape} differ in shape")
    n = len(p)
    if n == 0:
        raise ValueError("no samples")
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)  # p = 1 joins the last bin
    ece = np.zeros(p.shape[1])
    for f in range(p.shape[1]):
        sum_p = np.bincount(bins[:, f], weights=p[:, f], minlength=n_bins)
        sum_y = np.bincount(bins[:, f], weights=y[:, f], minlength=n_bins)
        ece[f] = np.abs(sum_y - sum_p).sum() / n  # sum_b (n_b/N) |mean y - mean p|
    return float(ece[0]) if squeeze else ece


def ece_noise_floor(probs, n_bins: int = DEFAULT_BINS, sigmas: float = 1.0) -> np.ndarray:
    """``sigmas`` binomial standard deviations of the ECE of *calibrated* probabilities
    ``[N, F]`` -> ``[F]``: ``sum_b (n_b / N) · sigmas · sqrt(pbar_b (1 - pbar_b) / n_b)``.

    A bin's mean label deviates from its mean probability by about that much from sampling
    alone, so an ECE below it says nothing against calibration.
    """
    p = np.asarray(probs, np.float64)
    p = p.reshape(len(p), -1)
    n = len(p)
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    out = np.zeros(p.shape[1])
    for f in range(p.shape[1]):
        count = np.bincount(bins[:, f], minlength=n_bins).astype(np.float64)
        sum_p = np.bincount(bins[:, f], weights=p[:, f], minlength=n_bins)
        full = count > 0
        mean = sum_p[full] / count[full]
        out[f] = sigmas * np.sum(np.sqrt(count[full] * mean * (1.0 - mean))) / n
    return out


def mean_bce(logits, labels, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)`` against 0/1 labels."""
    z = np.asarray(logits, np.float64) / temperature
    y = np.asarray(labels, np.float64)
    # log(1 + e^z) - y z, written without overflow.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits, labels, *, iterations: int = 60) -> float:
    """The ``T`` in ``[0.05, 20]`` minimising :func:`mean_bce` on ``logits``/``labels``
    ``[N, F]`` (all findings share one ``T``), by golden-section search on ``log T``.

    60 iterations shrink the bracket (width log 400 ≈ 6) by 0.618^60 ≈ 3e-13.
    """
    lo, hi = LOG_T_RANGE
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(log_t):
        return mean_bce(logits, labels, math.exp(log_t))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2.0)


def calibration_report(
    val_probs, val_labels, test_probs, test_labels, finding_names, *, n_bins: int = DEFAULT_BINS
) -> dict:
    """Temperature fitted on the validation split, ECE per finding on the test split
    before and after it.

    Returns ``{"temperature": T, "bins": B, "val_bce_before": ..., "val_bce_after": ...,
    "per_finding": {name: {"ece_before", "ece_after", "noise_floor"}},
    "macro": {"ece_before", "ece_after"}}`` (``noise_floor``: one binomial standard
    deviation of a calibrated model's ECE on this test split, :func:`ece_noise_floor`).
    """
    val_logits = logits_of(val_probs)
    t = fit_temperature(val_logits, val_labels)
    after = sigmoid(logits_of(test_probs) / t)
    before_ece = expected_calibration_error(test_probs, test_labels, n_bins)
    after_ece = expected_calibration_error(after, test_labels, n_bins)
    floor = ece_noise_floor(after, n_bins)
    return {
        "temperature": t,
        "bins": n_bins,
        "val_bce_before": mean_bce(val_logits, val_labels),
        "val_bce_after": mean_bce(val_logits, val_labels, t),
        "per_finding": {
            name: {"ece_before": float(b), "ece_after": float(a), "noise_floor": float(f)}
            for name, b, a, f in zip(finding_names, before_ece, after_ece, floor)
        },
        "macro": {"ece_before": float(np.mean(before_ece)), "ece_after": float(np.mean(after_ece))},
    }


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Probabilities ``[N, F]`` rescaled by a fitted temperature: ``sigmoid(logit(p) / T)``."""
    return sigmoid(logits_of(probs) / temperature)


def calibrate_run(run_dir, *, which: str = "phase2") -> dict:
    """:func:`calibration_report` of one phase of a finished cross-training run: the
    temperature fitted on its validation split, ECE per finding on its test split."""
    from jaxthyroid import cross_training

    cfg, taxonomy, model, variables = cross_training.load_run(run_dir, which)
    data = cross_training.load_data(cfg.data, seed=cfg.seed)
    val = cross_training.predict_probs(model, variables, data.validation, cfg.data.eval_batch_size)
    test = cross_training.predict_probs(model, variables, data.test, cfg.data.eval_batch_size)
    return calibration_report(val["probs"], val["labels"], test["probs"], test["labels"], taxonomy.findings)
