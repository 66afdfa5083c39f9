"""Tests of the test-set metrics (metrics.py) against values worked out by hand."""

import math

import numpy as np
import pytest

from perceiver.dataset import Record
from perceiver.metrics import cross_entropy, group_vote, roc_curve, classification_metrics


def test_cross_entropy_is_the_mean_over_examples():
    logits = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    labels = np.array([0, 1, 1])
    expected = (math.log(2) + (math.log(1 + math.exp(2)) - 0.0) + math.log(1 + math.exp(-3))) / 3
    assert cross_entropy(logits, labels) == pytest.approx(expected, rel=1e-12)
    # Label smoothing 0.2 over 2 classes: targets 0.9 / 0.1.
    lp = np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    target = np.full((3, 2), 0.1)
    target[np.arange(3), labels] = 0.9
    assert cross_entropy(logits, labels, 0.2) == pytest.approx(-(target * lp).sum(1).mean(), rel=1e-12)


def test_roc_auc_with_ties_matches_the_pair_count():
    scores = np.array([0.9, 0.8, 0.8, 0.4, 0.3, 0.8])
    positive = np.array([1, 1, 0, 1, 0, 0], bool)
    pairs = [(p, n) for p in scores[positive] for n in scores[~positive]]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    fpr, tpr, auc = roc_curve(scores, positive)
    assert auc == pytest.approx(expected)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert math.isnan(roc_curve([0.1, 0.2], [True, True])[2])


def test_group_vote_counts_each_group_once():
    groups = ["a", "a", "a", "b", "b", "c"]
    labels = [1, 1, 1, 0, 0, 1]
    predicted = [1, 0, 1, 1, 1, 1]  # a: 2 of 3 right -> right; b: both wrong -> wrong; c: right
    assert group_vote(groups, labels, predicted) == {"accuracy": 2 / 3, "correct": 2, "total": 3}


def test_test_metrics_are_consistent_with_the_confusion_matrix():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2)) + 2.0 * np.eye(2)[labels] * (rng.random(50) < 0.8)[:, None]
    records = [Record(f"f{i}.png", ["left", "right"][y], f"P{i // 5}", f"P{i // 5}-{y}") for i, y in enumerate(labels)]
    m = classification_metrics(logits, labels, records, ["left", "right"], 0.0)
    cm = np.array(m["confusion_matrix"]["counts"])
    assert cm.sum() == m["images"] == 50
    assert np.trace(cm) == m["correct"] == int((logits.argmax(1) == labels).sum())
    assert m["accuracy"] == pytest.approx(m["correct"] / 50)
    assert cm[1].sum() == labels.sum()  # rows are the true class
    assert 0.5 < m["roc_auc"] <= 1.0
    assert m["per_patient"]["total"] == len({(r.patient, r.label) for r in records})
