"""Metrics against values worked out by hand; report tables and figures."""

import math

import numpy as np
import pytest

from jaxthyroid import findings, metrics, report

# Three findings a, b, c; finding sets a, b, c, a+b (ids 0..3).
TAX = findings.Taxonomy(findings=("a", "b", "c"), finding_sets=(("a",), ("b",), ("c",), ("a", "b")))
LABELS = np.array(
    [
        [1, 0, 0],  # 0: a
        [0, 1, 0],  # 1: b
        [0, 0, 1],  # 2: c
        [1, 1, 0],  # 3: a+b (cross)
        [1, 1, 0],  # 4: a+b (cross)
        [0, 0, 1],
    ],  # 5: c
    np.float32,
)
PROBS = np.array(
    [
        [0.9, 0.2, 0.1],  # pred a        right
        [0.6, 0.7, 0.1],  # pred a+b      wrong
        [0.2, 0.3, 0.4],  # none >= .5 -> argmax c, right
        [0.8, 0.6, 0.3],  # pred a+b      right
        [0.7, 0.3, 0.2],  # pred a        wrong
        [0.3, 0.1, 0.2],
    ],  # argmax a      wrong
    np.float32,
)
NAN = float("nan")


def _close(a, b):
    # metrics are ratios of small integer counts in float64: 1e-9 is far above their rounding (~1e-16)
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-9


def _check(got: dict, want: dict):
    for k, v in want.items():
        assert _close(got[k], v), (k, got[k], v)


def test_all_images_by_hand():
    r = metrics.classification_report(PROBS, LABELS, taxonomy=TAX)["all"]
    assert r["count"] == 6
    assert r["exact_match"] == 0.5  # images 0, 2, 3
    # a: TP 3 (0,3,4) FP 2 (1,5) FN 0 TN 1 (2); every positive outscores every negative.
    _check(
        r["per_finding"]["a"],
        dict(recall=1.0, precision=0.6, specificity=1 / 3, f1=0.75, auc=1.0, tp=3, fp=2, fn=0, tn=1, support=3),
    )
    # b: TP 2 (1,3) FN 1 (4) FP 0 TN 3; AUC pairs: 0.7 and 0.6 beat all 3 negatives, 0.3
    # beats 0.2 and 0.1 and ties 0.3 -> (3 + 3 + 2.5) / 9.
    _check(r["per_finding"]["b"], dict(recall=2 / 3, precision=1.0, specificity=1.0, f1=0.8, auc=8.5 / 9))
    # c: TP 1 (2) FN 1 (5) FP 0 TN 4; AUC: 0.4 beats 4, 0.2 beats 0.1, 0.1, ties 0.2 -> 6.5 / 8.
    _check(r["per_finding"]["c"], dict(recall=0.5, precision=1.0, specificity=1.0, f1=2 / 3, auc=6.5 / 8))
    _check(
        r["macro"],
        dict(
            recall=(1 + 2 / 3 + 0.5) / 3,
            precision=(0.6 + 1 + 1) / 3,
            specificity=(1 / 3 + 1 + 1) / 3,
            f1=(0.75 + 0.8 + 2 / 3) / 3,
            auc=(1 + 8.5 / 9 + 6.5 / 8) / 3,
        ),
    )


def test_single_and_cross_subsets_by_hand():
    rep = metrics.classification_report(PROBS, LABELS, taxonomy=TAX)
    single, cross = rep["single"], rep["cross"]
    assert single["count"] == 4 and cross["count"] == 2
    assert single["exact_match"] == 0.5 and cross["exact_match"] == 0.5
    # single (0,1,2,5): a TP 1 FP 2 (1,5) TN 1 (2).
    _check(single["per_finding"]["a"], dict(recall=1.0, precision=1 / 3, specificity=1 / 3, f1=0.5, auc=1.0))
    _check(single["per_finding"]["c"], dict(recall=0.5, precision=1.0, specificity=1.0, f1=2 / 3, auc=1.0))
    # cross (3,4): a and b always present -> no specificity, no AUC; c never -> no recall.
    _check(cross["per_finding"]["a"], dict(recall=1.0, precision=1.0, specificity=NAN, f1=1.0, auc=NAN))
    _check(cross["per_finding"]["b"], dict(recall=0.5, precision=1.0, specificity=NAN, f1=2 / 3, auc=NAN))
    _check(cross["per_finding"]["c"], dict(recall=NAN, precision=NAN, specificity=1.0, f1=NAN, auc=NAN))
    _check(cross["macro"], dict(recall=0.75, precision=1.0, specificity=1.0, f1=(1 + 2 / 3) / 2, auc=NAN))
    # An explicit subset (the data sets' 0/1 field) gives the same split.
    explicit = metrics.classification_report(PROBS, LABELS, taxonomy=TAX, subset=np.array([0, 0, 0, 1, 1, 0]))
    assert explicit["cross"]["exact_match"] == cross["exact_match"]
    assert explicit["single"]["per_finding"]["a"]["fp"] == 2


def test_threshold_changes_predictions():
    # At 0.65: image 1 predicts b only (right), image 3 a only (wrong), image 4 a (wrong).
    r = metrics.classification_report(PROBS, LABELS, taxonomy=TAX, threshold=0.65, decision="threshold")["all"]
    assert r["exact_match"] == 3 / 6  # images 0, 1, 2
    assert abs(r["per_finding"]["b"]["recall"] - 1 / 3) < 1e-12  # only image 1; a float64 ratio of counts
    assert r["per_finding"]["a"]["precision"] == 0.75  # 0, 3, 4 right; 5 wrong


def test_set_decision_never_predicts_an_impossible_combination():
    # b+c is not a finding set of TAX: the threshold rule predicts it, the set rule
    # picks the most probable set: b (0.1 * 0.9 * 0.6 = 0.054) over c (0.9 * 0.1 * 0.4
    # = 0.036), a+b (0.1 * 0.9 * 0.4), a (0.1 * 0.1 * 0.4).
    probs = np.array([[0.1, 0.9, 0.6], [0.9, 0.2, 0.1]])
    labels = np.array([[0, 1, 0], [1, 0, 0]], np.float32)
    np.testing.assert_array_equal(findings.predict(probs, taxonomy=TAX), [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(findings.predict(probs, taxonomy=TAX, decision="set"), [[0, 1, 0], [1, 0, 0]])
    r = metrics.classification_report(probs, labels, taxonomy=TAX)["all"]
    assert r["exact_match"] == r["exact_match_set"] == 1.0
    assert r["exact_match_threshold"] == 0.5
    t = metrics.classification_report(probs, labels, taxonomy=TAX, decision="threshold")["all"]
    assert t["exact_match"] == 0.5 and t["per_finding"]["c"]["fp"] == 1
    with pytest.raises(ValueError, match="decision"):
        metrics.classification_report(probs, labels, taxonomy=TAX, decision="vote")


def test_roc_auc_cases():
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # sklearn's example
    assert metrics.roc_auc([0.5, 0.5], [0, 1]) == 0.5
    assert math.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))


def test_confusion_matrix_by_hand():
    pred_ids = TAX.set_id_of_multi_hot(findings.predict(PROBS))
    true_ids = TAX.set_id_of_multi_hot(LABELS)
    assert pred_ids.tolist() == [0, 3, 2, 3, 0, 0]
    cm = metrics.confusion_matrix(pred_ids, true_ids, TAX.num_sets)
    want = np.zeros((4, 5), int)
    want[0, 0] = want[1, 3] = want[2, 2] = want[2, 0] = want[3, 3] = want[3, 0] = 1
    np.testing.assert_array_equal(cm, want)
    # A predicted combination outside the taxonomy goes to "other".
    np.testing.assert_array_equal(metrics.confusion_matrix([-1, 1], [0, 1], 2), [[0, 0, 1], [0, 1, 0]])
    assert metrics.confusion_labels(TAX)[-2:] == ["a+b", "other"]
    with pytest.raises(ValueError, match="true finding-set ids"):
        metrics.confusion_matrix([0], [7], 2)


def test_shape_errors():
    with pytest.raises(ValueError, match="taxonomy has 6 findings"):
        metrics.classification_report(PROBS, LABELS)


def test_markdown_table():
    table = report.markdown_table(
        [{"model": "phase1", "acc": 0.96331, "n": 3}, {"model": "a|b", "acc": float("nan")}], ["model", "acc", "n"]
    )
    assert table.splitlines() == ["| model | acc | n |", "|---|---|---|", "| phase1 | 0.9633 | 3 |", "| a\\|b | — |  |"]


def test_figures_are_written(tmp_path):
    hist = lambda n, a: [{"epoch": i + 1, "val_exact_match": a + 0.01 * i, "val_loss": 1 - 0.1 * i} for i in range(n)]
    report.plot_curves({"phase1": hist(3, 0.5), "phase2": hist(2, 0.7)}, tmp_path / "curves.png")
    cm = metrics.confusion_matrix([0, 3, 2, 3, 0, 0], [0, 1, 2, 3, 3, 2], 4)
    report.plot_confusion(cm, [TAX.folder_name(s) for s in TAX.finding_sets], tmp_path / "cm.png")
    for name in ("curves.png", "cm.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="does not fit"):
        report.plot_confusion(cm, ["a", "b"], tmp_path / "bad.png")
