"""Test-set metrics of a classifier run: loss, accuracy, ROC-AUC, confusion matrix, per-patient and per-scan votes.

The curves and scores come from `sklearn.metrics` and the softmax from `scipy.special` (both on the design card), so
train.py, driver.py, bench/ and the tests compute them the same way; only the majority vote per knee is ours.

An undefined figure is never NaN (metrics.json is strict JSON, `fileio.json_text`): it is `null`, and beside it a
field named `<figure>_undefined` holds the reason in words, e.g. `"roc_auc": null, "roc_auc_undefined": "the test
split holds images of one class only"`; inside "per_patient" and "per_scan", `"accuracy": null` with
`"accuracy_undefined"`. A defined figure has no `_undefined` field. Readers (train.py's summary line, the run report)
show "undefined (<reason>)" instead (`shown`).
"""

import numpy as np
from scipy import special
from sklearn import metrics as skm

__all__ = ["confusion_counts", "softmax", "calibrated", "cross_entropy", "roc_curve", "group_vote", "classification_metrics",
           "defined", "shown"]

ONE_CLASS = "the test split holds images of one class only"  # why a ROC-AUC is undefined
NOT_FINITE = "the model's test outputs hold NaN or infinite values"  # why a loss is undefined
RELIABILITY_COLUMNS = ("lower", "upper", "confidence", "accuracy", "count")  # calibration.reliability's rows


def defined(name, value, reason):
    """`{name: value}` for a finite number; `{name: None, name + "_undefined": reason}` for NaN, infinity or None,
    the one way metrics.json says that a figure is undefined (see the module docstring)."""
    if value is not None and np.isfinite(value):
        return {name: float(value)}
    return {name: None, f"{name}_undefined": reason}


def shown(figures, name, fmt="{:.4f}"):
    """A figure of a metrics dict as text: `fmt` of its value, or "undefined (<reason>)" when it is null."""
    value = figures.get(name)
    if value is None:
        return f"undefined ({figures.get(f'{name}_undefined', 'no reason recorded')})"
    return fmt.format(value)


def confusion_counts(labels, predicted, num_classes):
    """(classes x classes) counts: rows the true class, columns the predicted class."""
    return skm.confusion_matrix(np.asarray(labels, int), np.asarray(predicted, int), labels=np.arange(num_classes))


def softmax(logits):
    """Class probabilities of each example (the softmax along the last axis)."""
    return special.softmax(logits, axis=-1)


TEMPERATURE_BOUNDS = (0.05, 20.0)  # the calibration temperature is fitted within these, and read back only within them


def calibrated(logits, temperature=1.0):
    """Calibrated class probabilities `softmax(logits / temperature)`, in float64: the one formula that turns a run's
    logits into the probabilities it reports (calibration.py fits the temperature; train.py's metrics, driver.py and
    the reports use this; `modules.PerceiverClassifier.call` computes the same inside the model, with keras.ops)."""
    return softmax(np.asarray(logits, np.float64) / float(temperature))


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy over the examples (the quantity Keras reports as loss), with label smoothing `s`.

    Smoothed targets are `(1 - s)` on the true class plus `s / k` on every class, so the loss is `(1 - s)` times the
    plain log loss (`sklearn.metrics.log_loss` of the softmax) plus `s` times the mean of `-log p` over the classes.
    """
    logits = np.asarray(logits, np.float64)
    k = logits.shape[1]
    hard = skm.log_loss(labels, softmax(logits), labels=np.arange(k))
    uniform = float(-special.log_softmax(logits, axis=-1).mean(axis=1).mean()) if label_smoothing else 0.0
    return float((1.0 - label_smoothing) * hard + label_smoothing * uniform)


def roc_curve(scores, positive):
    """False and true positive rates over every threshold (ties as one step) from (0, 0) to (1, 1), and the area.

    The area is NaN when the scores hold only one class (an ROC needs both).
    """
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    fpr, tpr, _ = skm.roc_curve(positive, scores, drop_intermediate=False)
    return fpr, tpr, float(skm.roc_auc_score(positive, scores))


SCAN_RULES = ("mean-probability", "vote", "sum-log-odds")
SCAN_RULE = SCAN_RULES[0]


def scan_probabilities(probs, rule=SCAN_RULE):
    """One scan's class probabilities from its slices' (calibrated) probabilities `(slices, classes)`.

    The rule, used by train.py's per-scan and per-knee metrics and by driver.py's verdicts, is "mean-probability":
    the mean of the slices' probabilities, the verdict their arg-max. The alternatives, measured by
    bench/experiments/scan_rules.py: "vote" (the share of slices each class wins) throws the confidence away, so a
    21-19 vote and a 40-0 vote look alike and "uncertain" cannot be said; "sum-log-odds" (softmax of the summed
    log-probabilities) treats 40 neighbouring slices as 40 independent witnesses and pushes nearly every scan to
    p = 1.0000, which makes a confidence threshold meaningless. The mean keeps a probability on the slices' own
    calibrated scale.
    """
    probs = np.asarray(probs, np.float64)
    if rule == "mean-probability":
        return probs.mean(axis=0)
    if rule == "vote":
        return np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(probs)
    if rule == "sum-log-odds":
        return softmax(np.log(np.clip(probs, 1e-12, 1.0)).sum(axis=0))
    raise ValueError(f"scan rule {rule!r} is not one of {', '.join(SCAN_RULES)}.")


def grouped(keys):
    """The one grouper of slices into scans (or knees): {key: the indices with that key}, keys in order of first
    appearance. Used by the per-scan and per-knee metrics, calibration's scan figures and driver.py's verdicts."""
    members = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    return members


def group_accuracy(groups, labels, probs):
    """Accuracy of one verdict per group (`scan_probabilities` of its members' probabilities) against its label."""
    members = grouped(groups)
    probs, labels = np.asarray(probs), np.asarray(labels)
    correct = sum(int(scan_probabilities(probs[idx]).argmax() == labels[idx[0]]) for idx in members.values())
    return {**_group_accuracy(correct, len(members), "scans"), "correct": correct, "total": len(members)}


def _group_accuracy(correct, total, what):
    return defined("accuracy", correct / total if total else None, f"the test split holds no {what}")


def per_scan(scans, labels, logits, temperature=1.0):
    """metrics.json's "per_scan": one verdict per scan by the scan rule on the calibrated slice probabilities."""
    return {**group_accuracy(scans, labels, calibrated(logits, temperature)),
            "definition": f"one verdict per scan (patient, visit, side): {SCAN_RULE} of its slices' calibrated "
                          f"probabilities (temperature {temperature:.4g})"}


def group_vote(groups, labels, predicted):
    """Majority vote of the predictions within each group (ties go to the lower class index); accuracy of the votes."""
    members = grouped(groups)
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    correct = sum(int(np.bincount(predicted[idx]).argmax() == labels[idx[0]]) for idx in members.values())
    return {**_group_accuracy(correct, len(members), "groups"), "correct": correct, "total": len(members)}


def classification_metrics(logits, labels, records, classes, label_smoothing, temperature=1.0):
    """metrics.json's test metrics. The per-scan verdicts use `scan_probabilities` of the slices' probabilities
    calibrated by `temperature`, as driver.py does; the per-knee figure is the benchmark's majority vote
    (bench/experiments/baselines.py's column). A figure that is undefined (one class in the test split, no images,
    outputs that are not finite) is None with its reason (`defined`), never NaN."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    predicted = logits.argmax(axis=1)
    k = len(classes)
    confusion = confusion_counts(labels, predicted, k)
    finite = bool(np.isfinite(logits).all())
    probs = softmax(logits) if finite else None  # a NaN or infinite logit: no ROC-AUC (nor its warnings)
    if not finite:
        auc, auc_why = None, NOT_FINITE
        auc_note = f"positive class {classes[1]!r}" if k == 2 else "macro average of one-vs-rest"
    elif k == 2:
        auc, auc_why = roc_curve(probs[:, 1], labels == 1)[2], ONE_CLASS
        auc_note = f"positive class {classes[1]!r}"
    else:
        aucs = [roc_curve(probs[:, i], labels == i)[2] for i in range(k)]
        present = [a for a in aucs if np.isfinite(a)]
        auc = float(np.mean(present)) if present else None
        auc_why = "no class has both its own images and others' in the test split"
        auc_note = "macro average of one-vs-rest" + (f", over the {len(present)} of {k} classes present in the test "
                                                     "split" if 0 < len(present) < k else "")
    correct = int((predicted == labels).sum())
    loss = cross_entropy(logits, labels, label_smoothing) if finite and len(labels) else None
    return {
        "split": "test",
        "images": int(len(labels)),
        **defined("accuracy", correct / len(labels) if len(labels) else None, "the test split holds no images"),
        "correct": correct,
        **defined("loss", loss, NOT_FINITE if len(labels) else "the test split holds no images"),
        "loss_definition": f"mean cross-entropy over the {len(labels)} test images (label smoothing "
                           f"{label_smoothing})",
        **defined("roc_auc", auc, auc_why),
        "roc_auc_definition": auc_note,
        "confusion_matrix": {"classes": classes, "rows": "true class", "columns": "predicted class",
                             "counts": confusion.tolist()},
        "per_patient": {**group_vote([(r.patient, r.label) for r in records], labels, predicted),
                        "definition": "majority vote over the slices of each patient's knee (a patient with both "
                                      "knees in the set counts once per knee; the benchmark's per-knee column)"},
        "per_scan": per_scan([r.scan for r in records], labels, logits, temperature),
    }
