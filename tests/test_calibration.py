"""Expected calibration error and temperature scaling (jaxthyroid.calibration)."""

import math

import numpy as np
import pytest

from jaxthyroid import calibration, findings


def test_ece_by_hand():
    p = np.array([0.05, 0.15, 0.95, 0.92])
    y = np.array([0.0, 1.0, 1.0, 1.0])
    # bins: [0, .1): {0.05 | 0} -> |0 - .05|; [.1, .2): {.15 | 1} -> .85; [.9, 1]: {.95, .92 | 1, 1} -> .065
    expected = (0.05 + 0.85 + 2 * abs(1.0 - 0.935)) / 4
    assert calibration.expected_calibration_error(p, y) == pytest.approx(expected, abs=1e-12)
    assert calibration.expected_calibration_error(np.ones(3), np.ones(3)) == 0.0  # p = 1 in the last bin


def test_calibrated_probabilities_have_ece_within_the_binomial_bound():
    rng = np.random.default_rng(0)
    n, f = 20_000, 3
    p = rng.uniform(size=(n, f))
    y = (rng.uniform(size=(n, f)) < p).astype(np.float64)  # calibrated by construction
    ece = calibration.expected_calibration_error(p, y)
    # Each bin's |mean y - mean p| is a binomial average's deviation; 6 standard deviations
    # of every bin at once bound the weighted sum (false failure far below 1e-6).
    bound = calibration.ece_noise_floor(p, sigmas=6.0)
    assert (ece <= bound).all(), (ece, bound)
    # The bound is tight enough to notice miscalibration: squared probabilities fail it.
    assert (calibration.expected_calibration_error(p**2, y) > bound).all()


def test_overconfident_logits_get_t_above_1_and_lower_ece():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, size=(4000, len(findings.DEFAULT.findings)))
    y = (rng.uniform(size=z.shape) < calibration.sigmoid(z)).astype(np.float64)
    over = 3.0 * z  # three times too confident
    val, test = slice(0, 2000), slice(2000, None)
    t = calibration.fit_temperature(over[val], y[val])
    # The maximum-likelihood T recovers the factor 3 to within sampling error (2,000 x 6 labels).
    assert 2.6 < t < 3.4, t
    report = calibration.calibration_report(
        calibration.sigmoid(over[val]),
        y[val],
        calibration.sigmoid(over[test]),
        y[test],
        findings.DEFAULT.findings,
    )
    assert report["temperature"] == pytest.approx(t, rel=1e-6)
    assert report["val_bce_after"] < report["val_bce_before"]
    for name, row in report["per_finding"].items():
        assert row["ece_after"] < row["ece_before"], name
        assert row["ece_after"] < 6 * row["noise_floor"], name
    assert set(report["per_finding"]) == set(findings.DEFAULT.findings)


def test_fit_temperature_is_the_minimum_of_the_validation_loss():
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 1.5, size=(500, 2))
    y = (rng.uniform(size=z.shape) < calibration.sigmoid(2.0 * z)).astype(np.float64)  # z is under-confident
    t = calibration.fit_temperature(z, y)
    assert t < 1.0
    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 2001))
    best = grid[np.argmin([calibration.mean_bce(z, y, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.01)  # the grid's spacing in log T is 0.3 %


def test_temperature_changes_no_threshold_decision():
    rng = np.random.default_rng(3)
    p = calibration.sigmoid(rng.normal(0.0, 3.0, size=(200, len(findings.DEFAULT.findings))))
    scaled = calibration.apply_temperature(p, 2.5)
    # The 0.5 threshold is the sign of the logit, which 1/T keeps (the set rule need not:
    # its "normal" set also collects "no finding", see the module docstring).
    np.testing.assert_array_equal(findings.predict(p), findings.predict(scaled))
    assert not np.allclose(p, scaled)


def test_saturated_probabilities_stay_finite():
    p = np.array([[0.0, 1.0, 0.5]])
    z = calibration.logits_of(p)
    assert np.isfinite(z).all() and z[0, 0] < -20 and z[0, 1] > 20 and z[0, 2] == 0.0


def test_report_section_holds_the_numbers_of_report_json():
    from jaxthyroid import paper_report

    rng = np.random.default_rng(4)
    names = findings.DEFAULT.findings
    per_seed = []
    for _ in range(2):
        p = rng.uniform(size=(300, len(names)))
        y = (rng.uniform(size=p.shape) < p**0.5).astype(np.float64)
        per_seed.append({"generalisation": {"calibration": calibration.calibration_report(p, y, p, y, names)}})
    numbers = {}
    md = "\n".join(paper_report._generalisation_section(per_seed, findings.DEFAULT, numbers))
    assert "## Calibration (final model)" in md
    assert len(numbers["calibration"]["temperature"]) == 2
    for f in names:
        row = next(line for line in md.splitlines() if line.startswith(f"| {f} "))
        mean = np.mean(numbers["calibration"][f]["ece_before"])
        assert f"{mean:.3f}" in row
    assert paper_report._generalisation_section([{}], findings.DEFAULT, {}) == []  # a run made before the stage
