"""Calibrated confidence: one temperature fitted on the validation split, how well calibrated a model is (expected
calibration error, Brier score), and the one rule that turns slice probabilities into a scan's verdict.

    python -m perceiver.calibration goliath        # (re)fit a finished run's temperature; updates calibration.json,
                                         # metrics.json["calibration"], reliability.png, model.keras, report.html

train.py calls `calibrate` at the end of every run; driver.py reads the temperature and the default confidence
threshold from the run's calibration.json (`runs.CALIBRATION`).

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the calibrated
probabilities are `softmax(logits / T)` with one scalar T > 0 that minimises the negative log-likelihood of the
validation split. It never changes which class wins, so accuracy is untouched; only the confidence moves.

A scan's verdict comes from its slices' calibrated probabilities by the one rule in `metrics.scan_probabilities`
(their mean; its docstring says why), which train.py's per-scan metric and driver.py both use.

Refitting a run is idempotent: numbers that agree with the recorded ones to SETTLE_RTOL (or SETTLE_ATOL) are float
noise (another CPU's kernels round the logits differently), and the recorded values are kept (`settled`); a file is
written only when its content changes, model.keras only when its weights, configuration or calibration do. So
`python -m perceiver.calibration goliath` on a clone leaves `git status` clean.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np
from scipy import optimize

from perceiver import classifier
from perceiver import dataset
from perceiver import fileio
from perceiver import htmlreport
from perceiver import metrics
from perceiver import plots
from perceiver import runs
from perceiver.errors import UsageError, add_common_flags, run_command, start_command

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


def _write_json_if_changed(path, obj):
    """Writes `obj` as the run folder's JSON (runs.atomic_write_json) unless the file already holds the same values."""
    try:
        if json.loads(pathlib.Path(path).read_text()) == obj:
            return False
    except (OSError, ValueError):  # missing or damaged: written
        pass
    runs.atomic_write_json(path, obj)
    return True


# === A run ===
def calibrate(run_dir, val_logits, val_labels, test_logits, test_labels, test_scans, *,
              min_confidence=DEFAULT_MIN_CONFIDENCE, recorded=None):
    """Fits the temperature on the validation split, writes calibration.json and reliability.png, and returns the
    "calibration" section for metrics.json: test ECE, Brier and NLL before and after, the reliability bins, and the
    uncertain counts (slices and scans) at `min_confidence` with the accuracy on the rest.

    `recorded`, a run's earlier section (or its calibration.json), is kept where the refit agrees with it (`settled`);
    each file is written only when its content changes."""
    run_dir = pathlib.Path(run_dir)
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
               "reliability": {"columns": list(plots.RELIABILITY_COLUMNS),
                               "before": [list(r) for r in reliability(before, test_labels)],
                               "after": [list(r) for r in reliability(after, test_labels)]},
               "definitions": {"ece": f"expected calibration error, {ECE_BINS} equal-width bins of the top-class "
                                      "probability", "brier": "mean of sum_k (p_k - y_k)^2", "nll": "mean -log p(true)",
                               "scans": f"scan probabilities: {metrics.SCAN_RULE} of the calibrated slice "
                                        "probabilities",
                               "reliability": "per bin of the test split's top-class probability: its edges, the "
                                              "mean confidence, the accuracy and the images in it; empty bins left "
                                              "out"}}
    section = settled(section, recorded)
    record_path = run_dir / runs.CALIBRATION
    if _write_json_if_changed(record_path, {k: section[k] for k in RECORD_KEYS}) or not runs.checksum_path(
            record_path).is_file():
        runs.write_checksum(record_path)  # it decides answers, so it is verified on load like the weights
    plots.plot_reliability(run_dir, section["reliability"]["before"], section["reliability"]["after"],
                           section["temperature"])
    return section


def split_logits(loaded, data_root, split):
    """Logits, labels and scan ids of one split of a finished run (as recorded in its split.csv)."""
    records, assignment = dataset.read_manifest(loaded.run_dir / runs.SPLIT, root=str(data_root))
    chosen = [r for r in records if assignment[r.path] == split]
    result = dataset.load_images([r.path for r in chosen], size=loaded.image_size, channels=loaded.channels,
                                 progress=False)
    if result.skipped:
        raise UsageError(f"{len(result.skipped)} {split} images of {loaded.run_dir} cannot be read (first: "
                         f"{result.skipped[0][0]}: {result.skipped[0][1]}); restore the data folder.")
    logits = np.asarray(loaded.model.predict(dataset.normalize(result.images), batch_size=256, verbose=0), np.float64)
    return logits, dataset.labels_to_indices(chosen, loaded.classes), [r.scan for r in chosen]


def calibrate_run(run_dir, *, min_confidence=DEFAULT_MIN_CONFIDENCE):
    """`calibrate` for a finished run folder: predicts its validation and test splits with the best weights, then
    writes calibration.json, reliability.png and model.keras, and when the run has a metrics.json, its calibration
    and per-scan sections and report.html; each only when its content changes (see the module docstring)."""
    run_dir = pathlib.Path(run_dir)
    loaded = runs.load_run(run_dir, check_model_file=False)  # the model.keras this refit writes again
    metrics_path = run_dir / runs.METRICS
    saved = None
    if metrics_path.is_file():
        saved = _read_json(metrics_path)
        if saved is None:
            raise UsageError(f"{metrics_path} is not readable JSON; restore it or train the run again.")
    recorded = (saved or {}).get("calibration") or _read_json(run_dir / runs.CALIBRATION)
    root = runs.data_root(loaded.config)
    val = split_logits(loaded, root, "val")
    test = split_logits(loaded, root, "test")
    section = calibrate(run_dir, val[0], val[1], *test, min_confidence=min_confidence, recorded=recorded)
    classifier.write_run_model(run_dir, loaded.model, loaded.classes, section["temperature"], min_confidence)
    if saved is not None:
        per_scan = metrics.per_scan(test[2], test[1], test[0], section["temperature"])
        _write_json_if_changed(metrics_path, {**saved, "calibration": section,
                                              "per_scan": settled(per_scan, saved.get("per_scan"))})
        htmlreport.run_report(run_dir)  # it shows the calibration: written again (if it changed), never left stale
    return section


def _read_json(path):
    """A run folder's JSON file as a dict, or None when it is missing or not a JSON object."""
    try:
        value = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(prog="python -m perceiver.calibration", description="Fit a finished run's temperature on its "
                                "validation split; report calibration on its test split.")
    p.add_argument("run", help="run folder written by train.py")
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                   help="default threshold stored with the run: below it driver.py answers 'uncertain'")
    add_common_flags(p)
    args = p.parse_args(argv)

    def body():
        if not 0.5 <= args.min_confidence < 1:
            raise UsageError(f"--min-confidence {args.min_confidence} must be in [0.5, 1).")
        with fileio.only_writer(args.run, command="python -m perceiver.calibration", create=False):
            print(describe(calibrate_run(args.run, min_confidence=args.min_confidence)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
