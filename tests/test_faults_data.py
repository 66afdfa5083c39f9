"""Issue 26 on the data side: every JSON file the project writes is strict JSON, an undefined figure is null with its
reason; every file read back (the image cache index, split.csv, history.csv, phantom.json) is untrusted input; a
data folder's symbolic links, unreadable folders and duplicate images are named, never passed over in silence.
Each rule is tested as a property over generated inputs (hypothesis), then on the case that found it.
"""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceiver import dataset, fileio, htmlreport, images, metrics, phantom, records, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--image-size", "16", "--batch-size", "16", "--no-xla", "--quiet"]
SMALL = dict(patients=2, slices=2, height=32, width=32, progress=False, workers=1)


def _cli(script, *args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


def _one_sentence(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in text


@pytest.fixture(scope="module")
def knees(tmp_path_factory):
    """A small phantom set: 4 patients, 2 slices per scan, 32 x 32."""
    root = tmp_path_factory.mktemp("faults-data") / "knees"
    phantom.generate(root, patients=4, slices=2, height=32, width=32, progress=False, workers=1)
    return root


# === Rule 5: strict JSON, an undefined figure is null with its reason ===
def _undefined_have_reasons(obj):
    """Every None in a metrics dict has a "<name>_undefined" string beside it; every number is finite."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if value is None and not key.endswith("_undefined"):
                assert isinstance(obj.get(f"{key}_undefined"), str) and obj[f"{key}_undefined"], key
            if isinstance(value, float):
                assert math.isfinite(value), key
            _undefined_have_reasons(value)
    elif isinstance(obj, list):
        for value in obj:
            _undefined_have_reasons(value)


def _records(n, patients):
    return [records.Record(f"/d/{i}.png", "x", f"p{i % patients}", f"s{i % patients}") for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 4), data=st.data())
def test_metrics_are_strict_json_whatever_the_test_split(k, data):
    n = data.draw(st.integers(1, 12))
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    values = st.one_of(st.floats(-30, 30), st.sampled_from([math.nan, math.inf, -math.inf]))
    logits = np.array(data.draw(st.lists(st.lists(values, min_size=k, max_size=k), min_size=n, max_size=n)))
    m = metrics.classification_metrics(logits, labels, _records(n, data.draw(st.integers(1, n))),
                                       [f"c{i}" for i in range(k)], 0.1)
    json.loads(fileio.json_text(m))  # raises on NaN or infinity anywhere
    _undefined_have_reasons(m)
    assert (m["roc_auc"] is None) == (not np.isfinite(logits).all() or len(set(labels.tolist())) == 1)
    for _, _, _, text, _ in htmlreport._metric_rows({**m, "best_epoch": 1}):
        assert not re.search(r"\b(nan|inf|None)\b", text)  # how Python formats them


def test_a_one_class_test_split_gives_a_null_roc_auc_with_its_reason():
    m = metrics.classification_metrics(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1, 1]), _records(2, 1),
                                       ["left", "right"], 0.0)
    assert m["roc_auc"] is None and m["roc_auc_undefined"] == "the test split holds images of one class only"
    assert "accuracy_undefined" not in m and m["accuracy"] == 0.5
    text = fileio.json_text(m)
    assert '"roc_auc": null' in text and "NaN" not in text
    assert metrics.shown(m, "roc_auc") == "undefined (the test split holds images of one class only)"
    rows = {row[0]: row for row in htmlreport._metric_rows({**m, "best_epoch": 1})}
    assert rows["roc_auc"][3] == "undefined (the test split holds images of one class only)"


def test_a_group_with_no_members_has_a_null_accuracy():
    vote = metrics.group_vote([], np.array([], int), np.array([], int))
    assert vote == {"accuracy": None, "accuracy_undefined": "the test split holds no groups", "correct": 0,
                    "total": 0}
    assert metrics.shown(vote, "accuracy") == "undefined (the test split holds no groups)"
