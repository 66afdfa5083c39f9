"""Calibrated confidence, the math: one temperature fitted on the validation split, how well calibrated a model is
(expected calibration error, Brier score), and the calibration section of metrics.json. It sits low, beside
metrics.py: it reads no file and writes none. The end of a run (finish.py) writes what it computes.

    python -m perceiver.calibration goliath        # (re)fit a finished run's temperature (finish.refit_run): updates
                                         # calibration.json, metrics.json["calibration"], reliability.png,
                                         # model.keras, report.html

driver.py reads the temperature and the default confidence threshold from the run's calibration.json
(`runs.read_calibration`).

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the calibrated
probabilities are `softmax(logits / T)` with one scalar T > 0 that minimises the negative log-likelihood of the
validation split. It never changes which class wins, so accuracy is untouched; only the confidence moves.

A scan's verdict comes from its slices' calibrated probabilities by the one rule in `metrics.scan_probabilities`
(their mean; its docstring says why), which train.py's per-scan metric and driver.py both use.

Refitting a run is idempotent: numbers that agree with the recorded ones to SETTLE_RTOL (or SETTLE_ATOL) are float
noise (another CPU's kernels round the logits differently), and the recorded values are kept (`settled`); finish.py
writes a file only when its content changes, model.keras only when its weights, configuration or calibration do. So
`python -m perceiver.calibration goliath` on a clone leaves `git status` clean.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from scipy import optimize

from perceiver import metrics

DEFAULT_MIN_CONFIDENCE = 0.9  # below it a verdict is "uncertain" (driver.py --min-confidence overrides it)
ECE_BINS = 15
RECORD_KEYS = ("temperature", "min_confidence", "scan_rule", "fitted_on", "validation_nll")  # calibration.json
# A refit whose every number is within these of the recorded one changed nothing but rounding. The fit stops at
# 1e-4 in log T, so the temperature itself can move by about 1e-4 when the logits move in their last bits.
SETTLE_RTOL, SETTLE_ATOL = 1e-3, 1e-5


# === Temperature ===
def nll(logits, labels, temperature=1.0):
    """Mean negative log-likelihood of the true classes under `metrics.calibrated(logits, temperature)`."""
    return metrics.cross_entropy(np.asarray(logits, np.float64) / float(temperature), np.asarray(labels))


def fit_temperature(logits, labels, *, bounds=metrics.TEMPERATURE_BOUNDS):
    """The temperature in `bounds` that minimises `nll` on (logits, labels): a bounded search over log T.

    Raises:
        ValueError: with fewer than 2 examples or non-finite logits.
    """
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    if len(labels) < 2 or not np.isfinite(logits).all():
        raise ValueError(f"a temperature needs at least 2 examples with finite logits, got {len(labels)}.")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    result = optimize.minimize_scalar(lambda t: nll(logits, labels, math.exp(t)), bounds=(lo, hi), method="bounded",
                                      options={"xatol": 1e-4})
    return float(math.exp(result.x))


# === How calibrated ===
def reliability(probs, labels, bins=ECE_BINS):
    """Equal-width bins of the top-class probability: per bin (lower edge, upper edge, mean confidence, accuracy,
    count); empty bins are left out."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append((float(edges[b]), float(edges[b + 1]), float(confidence[mask].mean()),
                         float(correct[mask].mean()), int(mask.sum())))
    return rows


def expected_calibration_error(probs, labels, bins=ECE_BINS):
    """Sum over bins of (bin share) x |accuracy - mean confidence| (top-class, equal-width bins)."""
    n = len(labels)
    return float(sum(count / n * abs(acc - conf) for _, _, conf, acc, count in reliability(probs, labels, bins)))


def brier_score(probs, labels):
    """Mean over examples of sum over classes of (p_k - [k is the true class])^2 (0 is perfect, 2 the worst)."""
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def calibration_scores(probs, labels):
    return {"ece": expected_calibration_error(probs, labels), "brier": brier_score(probs, labels),
            "nll": metrics.cross_entropy(np.log(np.clip(probs, 1e-12, 1.0)), np.asarray(labels))}


# === From slices to a scan ===
def by_scan(probs, labels, scans, rule=metrics.SCAN_RULE):
    """Groups slices by scan id: (scan ids, scan probabilities (scans, classes), scan labels, slices per scan)."""
    order = metrics.grouped(scans)
    ids = list(order)
    scan_probs = np.stack([metrics.scan_probabilities(np.asarray(probs)[order[s]], rule) for s in ids])
    return ids, scan_probs, np.array([labels[order[s][0]] for s in ids]), [len(order[s]) for s in ids]


def uncertain_report(probs, labels, threshold):
    """How many predictions fall below `threshold` (uncertain), and the accuracy on the rest."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    sure = probs.max(axis=1) >= threshold
    kept = int(sure.sum())
    correct = int((probs.argmax(axis=1)[sure] == labels[sure]).sum())
    return {"total": int(len(labels)), "uncertain": int(len(labels) - kept), "classified": kept,
            "accuracy_of_classified": correct / kept if kept else None, "correct": correct}  # None: none left (JSON has no NaN)


# === Refits that change nothing ===
def _agrees(fresh, recorded):
    """Whether every value of `fresh` that `recorded` also has equals it: floats to SETTLE_RTOL or SETTLE_ATOL,
    everything else (counts, strings, flags) exactly."""
    if isinstance(fresh, dict):
        return isinstance(recorded, dict) and all(_agrees(v, recorded[k]) for k, v in fresh.items() if k in recorded)
    if isinstance(fresh, (list, tuple)):
        return (isinstance(recorded, (list, tuple)) and len(fresh) == len(recorded)
                and all(_agrees(a, b) for a, b in zip(fresh, recorded)))
    numbers = (int, float)
    if (isinstance(fresh, float) or isinstance(recorded, float)) and not isinstance(fresh, bool) and not isinstance(
            recorded, bool) and isinstance(fresh, numbers) and isinstance(recorded, numbers):
        return math.isclose(fresh, recorded, rel_tol=SETTLE_RTOL, abs_tol=SETTLE_ATOL)
    return type(fresh) is type(recorded) and fresh == recorded


def _recorded(fresh, recorded):
    """`fresh` with each value that `recorded` has replaced by the recorded one (lists as lists)."""
    if isinstance(fresh, dict):
        return {k: _recorded(v, recorded[k]) if k in recorded else v for k, v in fresh.items()}
    if isinstance(fresh, (list, tuple)):
        return [_recorded(a, b) for a, b in zip(fresh, recorded)]
    return recorded


def settled(fresh, recorded):
    """What a refit records: `fresh` when any of its values differs from `recorded` (see `_agrees`), else the
    recorded values, plus whatever `fresh` has that was not recorded. `recorded` None: `fresh`."""
    if recorded is None or not _agrees(fresh, recorded):
        return fresh
    return _recorded(fresh, recorded)


# === A run ===
def section(val_logits, val_labels, test_logits, test_labels, test_scans, *, min_confidence=DEFAULT_MIN_CONFIDENCE,
            recorded=None):
    """Fits the temperature on the validation split and returns the "calibration" section for metrics.json: test
    ECE, Brier and NLL before and after, the reliability bins, and the uncertain counts (slices and scans) at
    `min_confidence` with the accuracy on the rest. Its RECORD_KEYS are calibration.json.

    `recorded`, a run's earlier section (or its calibration.json), is kept where the refit agrees with it
    (`settled`)."""
    temperature = fit_temperature(val_logits, val_labels)
    before, after = metrics.calibrated(test_logits, 1.0), metrics.calibrated(test_logits, temperature)
    _, scan_probs, scan_labels, _ = by_scan(after, test_labels, test_scans)
    section = {"temperature": temperature, "min_confidence": min_confidence, "scan_rule": metrics.SCAN_RULE,
               "fitted_on": f"validation split, {len(val_labels)} images",
               "validation_nll": {"before": nll(val_logits, val_labels),
                                  "after": nll(val_logits, val_labels, temperature)},
               "test_before": calibration_scores(before, test_labels),
               "test_after": calibration_scores(after, test_labels),
               "uncertain_at_min_confidence": {"slices": uncertain_report(after, test_labels, min_confidence),
                                               "scans": uncertain_report(scan_probs, scan_labels, min_confidence)},
               "reliability": {"columns": list(metrics.RELIABILITY_COLUMNS),
                               "before": [list(r) for r in reliability(before, test_labels)],
                               "after": [list(r) for r in reliability(after, test_labels)]},
               "definitions": {"ece": f"expected calibration error, {ECE_BINS} equal-width bins of the top-class "
                                      "probability", "brier": "mean of sum_k (p_k - y_k)^2", "nll": "mean -log p(true)",
                               "scans": f"scan probabilities: {metrics.SCAN_RULE} of the calibrated slice "
                                        "probabilities",
                               "reliability": "per bin of the test split's top-class probability: its edges, the "
                                              "mean confidence, the accuracy and the images in it; empty bins left "
                                              "out"}}
    return settled(section, recorded)


def describe(section):
    b, a = section["test_before"], section["test_after"]
    s, c = section["uncertain_at_min_confidence"]["slices"], section["uncertain_at_min_confidence"]["scans"]
    return (f"calibration: temperature {section['temperature']:.3f} (fitted on the {section['fitted_on']}); test ECE "
            f"{b['ece']:.4f} -> {a['ece']:.4f}, Brier {b['brier']:.4f} -> {a['brier']:.4f}; at confidence "
            f">= {section['min_confidence']:g}: {s['uncertain']}/{s['total']} slices and {c['uncertain']}/{c['total']} "
            f"scans uncertain, accuracy on the rest {_rest(s)} (slices), {_rest(c)} (scans)")


def _rest(level):
    """The accuracy of the predictions above the threshold, or "none left" when every one is uncertain."""
    return "none left" if level["accuracy_of_classified"] is None else f"{level['accuracy_of_classified']:.4f}"


if __name__ == "__main__":  # the refit command keeps its name; it is the end of a run again, so it lives there
    from perceiver import finish

    sys.exit(finish.main())
