"""Tests of calibration.py and the scan rule in metrics.py, against values worked out by hand or by construction."""

import json
import math
import shutil
import time

import numpy as np
import pytest
from helpers import tiny_run

from perceiver import calibration
from perceiver import classifier
from perceiver import finish
from perceiver import metrics
from perceiver import runs


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
    before = calibration.expected_calibration_error(metrics.calibrated(logits, 1.0), labels)
    after = calibration.expected_calibration_error(metrics.calibrated(logits, t), labels)
    assert after < 0.03 < before
    assert (metrics.calibrated(logits, t).argmax(1) == logits.argmax(1)).all()  # accuracy is untouched
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


# === Refitting a run ===
def test_a_refit_that_moves_only_in_rounding_keeps_the_recorded_numbers(tmp_path):
    """Logits that differ in their last bits (another CPU's kernels) give a temperature that differs in its last bits;
    the recorded section is kept as it was. A real change (logits twice as large) is recorded."""
    logits, labels = _overconfident(n=600, seed=3)
    scans = [f"scan{i // 6}" for i in range(300)]
    def refit(val_logits, test_logits, recorded=None):  # the end of a run's first step: the section, then the file
        fitted = calibration.section(val_logits, labels[:300], test_logits, labels[300:], scans, recorded=recorded)
        finish.write_calibration(tmp_path, fitted)
        return fitted

    first = refit(logits[:300], logits[300:])
    recorded = json.loads(json.dumps(first))  # as metrics.json holds it
    assert recorded["reliability"]["columns"] == ["lower", "upper", "confidence", "accuracy", "count"]
    assert sum(r[4] for r in recorded["reliability"]["after"]) == 300
    noisy = logits * (1 + 1e-6 * np.random.default_rng(0).standard_normal(logits.shape))
    fresh = refit(noisy[:300], noisy[300:])
    assert fresh["temperature"] != first["temperature"]  # the noise does reach the fit
    refit(logits[:300], logits[300:])
    again = refit(noisy[:300], noisy[300:], recorded=recorded)
    assert again == recorded
    assert json.loads((tmp_path / "calibration.json").read_text())["temperature"] == first["temperature"]
    changed = refit(2 * logits[:300], 2 * logits[300:], recorded=recorded)
    assert changed["temperature"] == pytest.approx(2 * first["temperature"], rel=1e-3)
    assert json.loads((tmp_path / "calibration.json").read_text())["temperature"] == changed["temperature"]
    # a count is never "close": one image in another bin is a change
    assert not calibration._agrees({"count": 1000}, {"count": 1001})
    assert calibration._agrees({"ece": 0.0030001, "new": 1}, {"ece": 0.003})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run folder of the `tiny` preset with random weights on a small phantom set, with a metrics.json and
    history.csv as train.py writes them (the calibration sections left to calibration.py)."""
    run = tiny_run(tmp_path_factory.mktemp("finished"))
    runs.write_history(run / runs.HISTORY, [{"epoch": e, "loss": 0.7, "accuracy": 0.5, "val_loss": 0.7,
                                             "val_accuracy": 0.5, "learning_rate": 1e-3, "seconds": 1.0}
                                            for e in (1, 2, 3)])
    runs.atomic_write_json(run / runs.METRICS, {
        "split": "test", "images": 8, "accuracy": 0.5, "correct": 4, "loss": 0.7, "roc_auc": 0.5,
        "confusion_matrix": {"classes": ["left", "right"], "counts": [[2, 2], [2, 2]]}, "best_epoch": 2,
        "epochs_run": 3})
    return run


def test_refitting_a_run_twice_leaves_every_file_as_the_first_refit_wrote_it(finished_run, tmp_path):
    """`python -m perceiver.calibration RUN` on a run it has already calibrated writes nothing: the same bytes, not even the
    same bytes again (a .keras zip records when it was saved, so rewriting model.keras would change it)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    first = finish.refit_run(run)
    written = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    assert {"calibration.json", "reliability.png", "model.keras", "model.keras.sha256", "metrics.json",
            "report.html"} <= set(written)
    assert json.loads(written["metrics.json"][0])["calibration"] == first
    time.sleep(1.1)  # a file written again now would show a later time
    assert finish.refit_run(run) == first
    again = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    assert again.keys() == written.keys()
    for name in written:
        assert again[name] == written[name], f"{name} was written again"
    # another threshold is a change, and reaches every file that records it
    changed = finish.refit_run(run, min_confidence=0.8)
    assert changed["min_confidence"] == 0.8
    assert json.loads((run / "calibration.json").read_text())["min_confidence"] == 0.8
    assert classifier.load(run / "model.keras").min_confidence == 0.8
