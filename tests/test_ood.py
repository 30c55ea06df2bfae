"""In-distribution vs out-of-distribution (jaxthyroid.ood): the summary by hand, the
OOD split's files, and a tiny run compared on both (when the phantom has the regime)."""

import os
import sys

import numpy as np
import pytest

from jaxthyroid import findings, ood

TAX = findings.DEFAULT


def test_summary_by_hand():
    sets = [0, 0, 1, TAX.num_sets - 1]  # normal, normal, graves, a cross-feature set
    labels = TAX.set_table[sets].astype(np.float32)
    probs = np.where(labels > 0.5, 0.9, 0.1)
    probs[1] = np.where(TAX.set_table[1] > 0.5, 0.9, 0.1)  # the second normal image called graves
    s = ood.summarise(probs, labels, labels.sum(-1) > 1, np.array(sets), TAX, "set")
    assert s["exact_match"] == {"all": 0.75, "single": 2 / 3, "cross": 1.0}
    assert s["count"] == {"all": 4, "single": 3, "cross": 1}
    assert s["per_set"][TAX.folder_name(0)] == {"exact_match": 0.5, "count": 2}
    assert s["per_set"][TAX.folder_name(1)] == {"exact_match": 1.0, "count": 1}
    assert set(s["ece"]) == set(TAX.findings) and 0.0 <= s["ece_macro"] <= 1.0


needs_regime = pytest.mark.skipif(not ood.regime_available(), reason="the phantom has no 'ood' regime yet")


@needs_regime
def test_split_is_written_once_and_read_back(tmp_path):
    info = ood.build_split(tmp_path / "ood.npz", n=5, size=64, cross_fraction=0.5, seed=0)
    split = ood.load_split(info["path"])
    assert split["image"].shape == (5, 64, 64, 1) and split["image"].dtype == np.uint16
    np.testing.assert_array_equal(split["findings"], TAX.set_table[split["finding_set"]])
    np.testing.assert_array_equal(split["subset"], split["findings"].sum(-1) > 1)
    again = ood.load_split(ood.build_split(tmp_path / "again.npz", n=5, size=64, cross_fraction=0.5, seed=0)["path"])
    np.testing.assert_array_equal(again["image"], split["image"])  # deterministic for a seed


@needs_regime
def test_tiny_run_on_both_test_sets(tmp_path_factory, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("grain")
    sys.path.insert(0, os.path.dirname(__file__))
    from test_cross_training import ensure_tiny_run

    run_dir = ensure_tiny_run(tmp_path_factory.getbasetemp() / "cross_training_tiny")[0]
    path = ood.build_split(tmp_path / "ood.npz", n=10, size=64, cross_fraction=0.25, seed=0)["path"]
    result = ood.compare(run_dir, path)
    assert result["ood"]["count"]["all"] == 10 and result["in_distribution"]["count"]["all"] == 32
    for side in ("in_distribution", "ood"):
        assert 0.0 <= result[side]["exact_match"]["all"] <= 1.0
        assert sum(v["count"] for v in result[side]["per_set"].values()) == result[side]["count"]["all"]


def test_report_table_holds_the_numbers_of_report_json():
    from jaxthyroid import calibration, paper_report

    rng = np.random.default_rng(0)
    sets = np.arange(TAX.num_sets).repeat(3)
    labels = TAX.set_table[sets].astype(np.float32)
    per_seed = []
    for _ in range(2):
        sides = {}
        for side in ("in_distribution", "ood"):
            probs = np.clip(labels * 0.8 + rng.uniform(0, 0.3, labels.shape), 0, 1)
            sides[side] = ood.summarise(probs, labels, labels.sum(-1) > 1, sets, TAX, "set")
        cal = calibration.calibration_report(probs, labels, probs, labels, TAX.findings)
        per_seed.append({"generalisation": {"calibration": cal, "ood": {"decision": "set", **sides}}})
    numbers = {}
    md = "\n".join(paper_report._ood_section(per_seed, TAX, numbers))
    assert "## In-distribution vs out-of-distribution" in md
    row = next(line for line in md.splitlines() if line.startswith("| exact match, single-feature "))
    vals = numbers["ood"]["exact match, single-feature"]
    assert f"{np.mean(vals['in_distribution']):.3f}" in row and f"{np.mean(vals['ood']):.3f}" in row
    assert f"exact match, {TAX.folder_name(TAX.num_sets - 1)}" in numbers["ood"]
    assert paper_report._ood_section([{"generalisation": {}}], TAX, {}) == []
