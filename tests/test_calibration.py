"""Tests of calibration.py and the scan rule in metrics.py, against values worked out by hand or by construction."""

import json
import math

import numpy as np
import pytest

import calibration
import metrics


def _overconfident(n=4000, true_temperature=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports logits 3z: over-confident by a known temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 2))
    p = metrics.softmax(z)
    labels = (rng.random(n) < p[:, 1]).astype(int)
    return z * true_temperature, labels


def test_fitted_temperature_recovers_a_known_overconfidence():
    logits, labels = _overconfident()
    t = calibration.fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    assert calibration.nll(logits, labels, t) < calibration.nll(logits, labels, 1.0)
    before = calibration.expected_calibration_error(calibration.calibrated(logits, 1.0), labels)
    after = calibration.expected_calibration_error(calibration.calibrated(logits, t), labels)
    assert after < 0.03 < before
    assert (calibration.calibrated(logits, t).argmax(1) == logits.argmax(1)).all()  # accuracy is untouched
    with pytest.raises(ValueError, match="at least 2 examples"):
        calibration.fit_temperature(logits[:1], labels[:1])


def test_ece_and_brier_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # bins of width 1/15: 0.9 and 0.8 fall in different bins, 0.7 and 0.6 too: four bins of one example each
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(expected)
    brier = ((0.1 ** 2 + 0.1 ** 2) + (0.8 ** 2 + 0.8 ** 2) + (0.3 ** 2 + 0.3 ** 2) + (0.4 ** 2 + 0.4 ** 2)) / 4
    assert calibration.brier_score(probs, labels) == pytest.approx(brier)
    rows = calibration.reliability(probs, labels)
    assert sum(r[4] for r in rows) == 4 and all(r[0] < r[2] <= r[1] for r in rows)


def test_scan_rules_on_a_split_scan():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.45, 0.55], [0.3, 0.7]])
    np.testing.assert_allclose(metrics.scan_probabilities(probs), [0.6125, 0.3875])
    np.testing.assert_allclose(metrics.scan_probabilities(probs, "vote"), [0.5, 0.5])
    log_odds = math.log(0.9 * 0.8 * 0.45 * 0.3) - math.log(0.1 * 0.2 * 0.55 * 0.7)
    np.testing.assert_allclose(metrics.scan_probabilities(probs, "sum-log-odds")[0], 1 / (1 + math.exp(-log_odds)))
    with pytest.raises(ValueError, match="scan rule 'median'"):
        metrics.scan_probabilities(probs, "median")
    # one verdict per group, by the rule: scan a (mean left) is right, b (right) is wrong
    groups, labels = ["a"] * 4 + ["b"] * 2, np.array([0] * 4 + [0] * 2)
    both = np.concatenate([probs, [[0.2, 0.8], [0.4, 0.6]]])
    assert metrics.group_accuracy(groups, labels, both) == {"accuracy": 0.5, "correct": 1, "total": 2}


def test_uncertain_report_counts_below_the_threshold():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.2, 0.8], [0.05, 0.95]])
    labels = np.array([0, 1, 0, 1])
    r = calibration.uncertain_report(probs, labels, 0.9)
    assert r == {"total": 4, "uncertain": 2, "classified": 2, "accuracy_of_classified": 1.0, "correct": 2}
    assert calibration.uncertain_report(probs, labels, 0.5)["accuracy_of_classified"] == 0.5


def test_a_threshold_above_every_probability_leaves_none_and_writes_valid_json():
    probs, labels = np.array([[0.95, 0.05], [0.2, 0.8]]), np.array([0, 1])
    r = calibration.uncertain_report(probs, labels, 0.99)
    assert (r["classified"], r["uncertain"], r["accuracy_of_classified"]) == (0, 2, None)
    json.dumps(r, allow_nan=False)  # metrics.json stays strict JSON: no NaN
    scans = calibration.uncertain_report(probs[:1], labels[:1], 0.9)
    stats = {"ece": 0.1, "brier": 0.2}
    section = {"temperature": 1.0, "fitted_on": "validation split", "test_before": stats, "test_after": stats,
               "min_confidence": 0.99, "uncertain_at_min_confidence": {"slices": r, "scans": scans}}
    text = calibration.describe(section)
    assert "accuracy on the rest none left (slices), 1.0000 (scans)" in text
