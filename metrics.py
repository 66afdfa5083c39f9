"""Test-set metrics of a classifier run: loss, accuracy, ROC-AUC, confusion matrix, per-patient and per-scan votes.

Plain numpy, so train.py, driver.py and the tests compute them the same way.
"""

import numpy as np


def confusion_counts(labels, predicted, num_classes):
    """(classes x classes) counts: rows the true class, columns the predicted class."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(labels, int), np.asarray(predicted, int)), 1)
    return confusion


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy over the examples (the same quantity Keras reports as loss)."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    k = logits.shape[1]
    target = np.full(logits.shape, label_smoothing / k)
    target[np.arange(len(labels)), labels] += 1.0 - label_smoothing
    return float(-(target * log_p).sum(axis=1).mean())


def roc_curve(scores, positive):
    """False and true positive rates over every threshold (ties handled as one step), and the area under it."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(p)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def group_vote(groups, labels, predicted):
    """Majority vote of the predictions within each group (ties go to the lower class index); accuracy of the votes."""
    by = {}
    for g, y, p in zip(groups, labels, predicted):
        by.setdefault(g, (y, []))[1].append(p)
    correct = sum(int(np.bincount(ps).argmax() == y) for y, ps in by.values())
    return {"accuracy": correct / len(by) if by else float("nan"), "correct": correct, "total": len(by)}


def classification_metrics(logits, labels, records, classes, label_smoothing):
    predicted = logits.argmax(axis=1)
    k = len(classes)
    confusion = confusion_counts(labels, predicted, k)
    probs = softmax(logits)
    if k == 2:
        auc = roc_curve(probs[:, 1], labels == 1)[2]
        auc_note = f"positive class {classes[1]!r}"
    else:
        aucs = [roc_curve(probs[:, i], labels == i)[2] for i in range(k)]
        auc = float(np.nanmean(aucs))
        auc_note = "macro average of one-vs-rest"
    correct = int((predicted == labels).sum())
    return {
        "split": "test",
        "images": int(len(labels)),
        "accuracy": correct / len(labels),
        "correct": correct,
        "loss": cross_entropy(logits, labels, label_smoothing),
        "loss_definition": f"mean cross-entropy over the {len(labels)} test images (label smoothing "
                           f"{label_smoothing})",
        "roc_auc": auc,
        "roc_auc_definition": auc_note,
        "confusion_matrix": {"classes": classes, "rows": "true class", "columns": "predicted class",
                             "counts": confusion.tolist()},
        "per_patient": {**group_vote([(r.patient, r.label) for r in records], labels, predicted),
                        "definition": "majority vote over the slices of each patient's knee (a patient with both "
                                      "knees in the set counts once per knee)"},
        "per_scan": {**group_vote([r.scan for r in records], labels, predicted),
                     "definition": "majority vote over the slices of each scan (patient, visit, side)"},
    }
