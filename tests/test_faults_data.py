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
HALVES = (0.5, 0.25, 0.25)
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


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the per-scan softmax of NaN logits
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


def test_the_dataset_summary_json_is_strict_and_names_what_it_passed_over(knees, tmp_path):
    proc = _cli("dataset.py", "summary", knees, "--json", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["schema"] == 2 and s["passed_over"] == [] and s["duplicates"] == []


# === Rule 6: the image cache index is untrusted input ===
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=False) | st.text(max_size=4),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


def _index_edits():
    """Edits of a sound cache index that keep it valid JSON: a key dropped, a value replaced by any JSON value, or a
    list where the object belongs."""
    keys = st.sampled_from(["version", "n", "ok_index", "skipped", "sha256", "created"])
    return st.one_of(st.tuples(st.just("drop"), keys, st.none()), st.tuples(st.just("set"), keys, _JSON),
                     st.tuples(st.just("list"), st.none(), st.none()),
                     st.tuples(st.just("set"), st.sampled_from(["ok_index", "skipped"]),
                               st.lists(st.integers(-2, 12), max_size=8)))


@pytest.fixture(scope="module")
def cached(knees, tmp_path_factory):
    """The knees' images decoded into a cache, with the sound index's text."""
    paths = sorted(r.path for r in dataset.discover(knees).records)
    cache = tmp_path_factory.mktemp("cache")
    first = dataset.load_images(paths, size=(8, 8), cache_dir=cache, progress=False, workers=1)
    (index,) = cache.glob("*.json")
    return paths, cache, index, index.read_text(), first.images


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=_index_edits())
def test_a_cache_index_of_the_wrong_shape_means_a_rebuild_never_a_traceback(cached, capsys, edit):
    paths, cache, index, sound, pixels = cached
    meta = json.loads(sound)
    how, key, value = edit
    if how == "drop":
        meta.pop(key)
    elif how == "set":
        meta[key] = value
    else:
        meta = list(meta.items())
    index.write_text(json.dumps(meta))
    capsys.readouterr()
    again = dataset.load_images(paths, size=(8, 8), cache_dir=cache, progress=False, workers=1)
    err = capsys.readouterr().err
    assert np.array_equal(again.images, pixels) and again.ok == paths
    if not again.from_cache:  # the edit was caught: one warning line, and the entry is written again
        assert err.count("\n") == 1 and "are damaged" in err and "decoding them again" in err
    else:  # an edit that changes nothing the cache relies on (its creation time, say)
        assert err == ""
    index.write_text(sound)


@pytest.mark.parametrize("meta", [
    {"ok_index": "0123"}, {"ok_index": [[0]]}, {"ok_index": [0, 0, 1, 2]}, {"ok_index": [7, 0, 1, 2]},
    {"skipped": {"0": "x"}}, {"skipped": [[99, "missing: gone"]]}, {"n": "8"}, {"n": True}, {"sha256": None}])
def test_the_cases_of_a_wrong_cache_index_are_each_a_rebuild(cached, capsys, meta):
    paths, cache, index, sound, pixels = cached
    index.write_text(json.dumps({**json.loads(sound), **meta}))
    capsys.readouterr()
    again = dataset.load_images(paths, size=(8, 8), cache_dir=cache, progress=False, workers=1)
    assert not again.from_cache and np.array_equal(again.images, pixels)
    assert capsys.readouterr().err.count("\n") == 1


# === Rule 5: duplicate images are reported, louder across splits ===
def test_duplicate_images_are_counted_and_named_louder_across_splits(knees, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for p in knees.glob("*.png"):
        (data / p.name).write_bytes(p.read_bytes())
    found = dataset.discover(data)
    split = dataset.split_by_patient(found.records, ratios=HALVES, seed=0)
    # a train image copied under the name of a test patient with a knee of the same side (the split, which depends on
    # each patient's set of sides, stays as it was): the same pixels in training and test, a leak
    original, patient = next((r, t.patient) for r in found.records for t in found.records
                             if split[r.path] == "train" and split[t.path] == "test" and r.label == t.label)
    train_img = original.path
    copy = data / os.path.basename(train_img).replace(original.patient, patient)
    copy.write_bytes(open(train_img, "rb").read())  # the same pixels under a test patient's name: a leak
    capsys.readouterr()
    prepared = dataset.prepare_data(data, ratios=HALVES, seed=0, size=(8, 8), cache=False, workers=1,
                                    progress=False)
    assert prepared.split[str(copy)] == "test" and prepared.split[train_img] == "train"
    err = capsys.readouterr().err
    assert prepared.duplicates == [sorted([train_img, str(copy)])]
    assert err.count("\n") == 1 and "1 image under" in err and "span splits" in err and "optimistic" in err
    s = dataset.summarize(data, ratios=HALVES, seed=0, size=(8, 8), cache=False, workers=1)
    assert [sorted(g["splits"]) for g in s["duplicates"]] == [["test", "train"]]
    assert "1 group across splits (leak" in dataset.format_summary(s)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 3), min_size=1, max_size=12))
def test_duplicate_groups_are_exactly_the_equal_images(rows):
    palette = np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1)
    pixels = palette[rows]
    paths = [f"p{i}" for i in range(len(rows))]
    expected = [[f"p{i}" for i, r in enumerate(rows) if r == v] for v in dict.fromkeys(rows)]
    assert images.duplicate_groups(pixels, paths) == [g for g in expected if len(g) > 1]


# === Rule 4, the data side: folders not searched are named and counted ===
def _class_folders(knees, root):
    """left/ and right/ class folders with the knees' images, under `root`."""
    for p in knees.glob("*.png"):
        side = "left" if "LEFT" in p.name.upper() else "right"
        (root / side).mkdir(parents=True, exist_ok=True)
        (root / side / p.name).write_bytes(p.read_bytes())
    return root


def test_a_linked_folder_is_named_and_not_followed(knees, tmp_path, capsys):
    data = _class_folders(knees, tmp_path / "data")
    outside = _class_folders(knees, tmp_path / "outside")
    os.symlink(outside / "left", data / "left" / "more")  # a link out of the data folder
    os.symlink(data, data / "right" / "loop")  # and one back into it
    found = dataset.discover(data)
    assert [(os.path.relpath(p, data), r) for p, r in found.passed_over] == [
        ("left/more", "linked-folder: a symbolic link to a folder, not followed"),
        ("right/loop", "linked-folder: a symbolic link to a folder, not followed")]
    assert not any("outside" in r.path or "/more/" in r.path or "/loop/" in r.path for r in found.records)
    capsys.readouterr()
    prepared = dataset.prepare_data(data, ratios=HALVES, size=(8, 8), cache=False, workers=1, progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: 2 folders under" in err and "left/more (linked-folder" in err
    assert len(prepared.passed_over) == 2
    proc = _cli("dataset.py", "summary", data, "--no-cache", "--split", "0.5,0.25,0.25")
    assert proc.returncode == 0 and "folders not searched 2" in proc.stdout, proc.stdout + proc.stderr
    assert "  right/loop  linked-folder: a symbolic link to a folder, not followed" in proc.stdout


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.sets(st.sampled_from(["left", "right", "left/a", "right/b/c"]), max_size=3))
def test_a_folder_that_cannot_be_listed_is_named_never_passed_over(knees, tmp_path_factory, monkeypatch, bad):
    """Tests run as root, whom chmod 000 does not stop: os.scandir is made to refuse the chosen folders instead."""
    data = _class_folders(knees, tmp_path_factory.mktemp("unreadable") / "data")
    for sub in bad:
        (data / sub).mkdir(parents=True, exist_ok=True)
    refused = {os.path.normpath(data / sub) for sub in bad}
    real = os.scandir

    def scandir(path="."):
        if os.path.normpath(os.fspath(path)) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        found = dataset.discover(data)
    except records.DataError as e:  # both class folders refused: no image left, and the message says why
        assert {"left", "right"} <= bad and "not searched" in str(e) and "unreadable-folder" in str(e)
        return
    reachable = {p for p in refused if not any(p.startswith(q + os.sep) for q in refused)}  # under a refused
    assert {p for p, _ in found.passed_over} == reachable                                   # one: never reached
    assert all(r == "unreadable-folder: the folder cannot be listed (Permission denied)" for _, r in found.passed_over)
    assert not any(r.path.startswith(tuple(q + os.sep for q in refused)) for r in found.records)


def test_a_data_folder_that_cannot_be_listed_is_one_sentence(knees, monkeypatch):
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied", path))
                        if os.path.normpath(os.fspath(path)) == str(knees) else real(path))
    with pytest.raises(records.DataError, match=r"^cannot read the data folder .* \(Permission denied\): check"):
        dataset.discover(knees)


# === Rule 6: split.csv is untrusted input ===
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=["Cs"]), max_size=200), header=st.booleans())
def test_a_damaged_split_csv_is_one_sentence_naming_it(knees, tmp_path, text, header):
    path = tmp_path / "split.csv"
    path.write_text(("path,patient,label,split,scan,visit,slice\n" if header else "") + text, encoding="utf-8",
                    errors="surrogateescape")
    try:
        recs, split = dataset.read_manifest(path, root=knees)
    except records.DataError as e:
        assert str(path) in str(e) and "\n" not in str(e).strip()
        return
    for r in recs:  # what it accepts is a set of images inside the data folder, each in one split
        assert os.path.commonpath([str(knees), r.path]) == str(knees) and "\0" not in r.path
        assert split[r.path] in records.SPLITS


# === Rule 6: resuming on other data is refused; history.csv is untrusted input ===
def _copy_set(knees, data):
    data.mkdir(parents=True)
    for p in knees.glob("*.png"):
        (data / p.name).write_bytes(p.read_bytes())
    return data


def _prepared_with_manifest(data, manifest, **kw):
    return dataset.prepare_data(data, manifest=manifest, size=(8, 8), cache=False, workers=1, progress=False, **kw)


def test_resume_data_that_lost_or_changed_an_image_is_refused_and_additions_are_said(knees, tmp_path, capsys):
    data = _copy_set(knees, tmp_path / "data")
    found = dataset.discover(data)
    manifest = tmp_path / "split.csv"
    dataset.write_manifest(manifest, found.records, dataset.split_by_patient(found.records, ratios=HALVES), root=data)
    dataset.check_same_data(manifest, _prepared_with_manifest(data, manifest))  # unchanged: accepted in silence
    assert capsys.readouterr().err == ""
    extra = data / found.records[0].path.replace(found.records[0].patient, "OAI9999999").split(os.sep)[-1]
    extra.write_bytes(b"")  # added since: left out, said in one line (it would not even decode)
    dataset.check_same_data(manifest, _prepared_with_manifest(data, manifest))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"1 image is under {data} but not in {manifest}" in err and "leaves it out" in err
    for change in ("removed", "emptied"):
        victim = found.records[1 if change == "removed" else 2].path
        saved = open(victim, "rb").read()
        os.remove(victim) if change == "removed" else open(victim, "wb").close()
        with pytest.raises(records.DataError) as caught:
            dataset.check_same_data(manifest, _prepared_with_manifest(data, manifest))
        message = str(caught.value)
        assert message.startswith(f"1 of the {len(found.records)} images that {manifest} lists are no longer usable")
        assert os.path.basename(victim) in message and "restore it, or start a new run with another --out" in message
        assert ("missing" if change == "removed" else "empty") in message and "\n" not in message
        open(victim, "wb").write(saved)


HISTORY_HEAD = ",".join(runs.HISTORY_COLUMNS) + "\n"


def _row(epoch, loss="0.5"):
    return f"{epoch},{loss},0.8,0.6,0.7,0.001,1.5\n"


@pytest.mark.parametrize("text, kept, why", [
    (HISTORY_HEAD + _row(1) + _row(2), 2, None),
    (HISTORY_HEAD + _row(1) + _row(2, "abc"), 1, "not a number"),
    (HISTORY_HEAD + _row(1), 1, "holds 1 of the 2 epochs"),
    (HISTORY_HEAD + _row(2) + _row(1), 0, "row 1 is not epoch 1"),
    (HISTORY_HEAD + _row(1) + _row(2, "inf"), 1, "row 2 is not epoch 2 with finite losses"),
    ("epoch,loss\n1,0.5\n2,0.4\n", 0, "lacks a column"),
    ("\0\0\0garbage", 0, None),
    ("", 0, "holds 0 of the 2 epochs"),
])
def test_a_damaged_history_csv_keeps_its_sound_rows_with_one_warning(tmp_path, capsys, text, kept, why):
    path = tmp_path / runs.HISTORY
    path.write_text(text)
    rows = runs.resume_history(path, 2)
    err = capsys.readouterr().err
    assert [r["epoch"] for r in rows] == list(range(1, kept + 1))
    assert all(set(r) == set(runs.HISTORY_COLUMNS) and all(math.isfinite(v) for v in r.values()) for r in rows)
    if kept == 2:
        assert err == ""
    else:
        assert err.count("\n") == 1 and f"{path} is damaged" in err and (why is None or why in err), err
    runs.write_history(path, rows)  # what the resumed run writes back is accepted


@pytest.mark.slow
def test_a_run_with_a_one_class_test_split_and_its_resumes(knees, tmp_path):
    """End to end: metrics.json holds a null ROC-AUC with its reason and the summary line says why; a resume after
    an image was removed is refused in one sentence, after one was added it goes on with a warning line, and a
    damaged history.csv is written again from its sound rows."""
    data = _copy_set(knees, tmp_path / "data")
    found = dataset.discover(data)
    sides = {}
    for r in found.records:
        sides.setdefault(r.patient, set()).add(r.label)
    one_sided = sorted(p for p, s in sides.items() if len(s) == 1)
    test, val = one_sided[0], one_sided[-1]
    split = {r.path: "test" if r.patient == test else "val" if r.patient == val else "train" for r in found.records}
    manifest = tmp_path / "mine.csv"
    dataset.write_manifest(manifest, found.records, split, root=data)
    out = tmp_path / "run"
    proc = _cli("train.py", "--data", data, "--split-manifest", manifest, "--out", out, "--epochs", "1", *TINY)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / runs.METRICS).read_text())
    assert m["roc_auc"] is None and m["roc_auc_undefined"] == metrics.ONE_CLASS
    assert "ROC-AUC undefined (the test split holds images of one class only)" in proc.stdout
    assert "undefined (the test split holds images of one class only)" in (out / runs.REPORT).read_text()

    victim = next(r.path for r in found.records if split[r.path] == "train")
    saved = open(victim, "rb").read()
    os.remove(victim)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = _cli("train.py", "--out", out, "--resume", "--data", data, "--quiet")
    assert proc.returncode == 2 and _one_sentence(proc.stderr), proc.stderr
    assert f"1 of the {len(found.records)} images that {out / runs.SPLIT} lists are no longer usable" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # refused before it wrote anything

    open(victim, "wb").write(saved)
    (data / os.path.basename(victim).replace(found.records[0].patient[:3], "OAI9")).write_bytes(b"")
    (out / runs.HISTORY).write_text(HISTORY_HEAD + _row(1, "oops"))
    proc = _cli("train.py", "--out", out, "--resume", "--data", data, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "not in" in proc.stderr and "the resumed run leaves it out" in proc.stderr
    assert f"{out / runs.HISTORY} is damaged" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / runs.HISTORY).read_text() == HISTORY_HEAD  # its one row was damaged: none kept


# === Rule 6: phantom.json is untrusted input; the generator replaces only what it can prove it wrote ===
USER_IMAGE = "OAI9999999_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_0.png"


def _phantom_edits():
    keys = st.sampled_from(["parameters", "counts", "files", "sha256"])
    return st.lists(st.one_of(
        st.tuples(st.just("drop"), keys, st.none()),
        st.tuples(st.just("set"), keys, _JSON),
        st.tuples(st.just("claim"), st.none(), st.none()),  # the user's image added to its files
        st.tuples(st.just("hash"), st.text("0123456789abcdef", min_size=64, max_size=64), st.none()),
        st.tuples(st.just("garbage"), st.binary(max_size=20), st.none())), min_size=1, max_size=3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_phantom_edits(), patients=st.sampled_from([2, 3]))
def test_no_edit_of_phantom_json_makes_the_generator_touch_a_users_image(tmp_path_factory, edits, patients):
    out = tmp_path_factory.mktemp("phantom")
    first = phantom.generate(out, **SMALL)
    mine = out / USER_IMAGE
    user_bytes = first[0].read_bytes()[:-30] + b"my own pixels, my own bytes..."  # a PNG-looking file of the user's
    mine.write_bytes(user_bytes)
    meta_path = out / "phantom.json"
    for how, key, value in edits:
        if how == "garbage":
            meta_path.write_bytes(key)
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            continue
        if not isinstance(meta, dict):
            continue
        if how == "drop":
            meta.pop(key, None)
        elif how == "set":
            meta[key] = value
        elif how == "claim" and isinstance(meta.get("files"), list):
            meta["files"].append(USER_IMAGE)
        elif how == "hash" and isinstance(meta.get("sha256"), dict):
            meta["sha256"][USER_IMAGE] = key
        meta_path.write_text(json.dumps(meta))
    try:
        phantom.generate(out, **{**SMALL, "patients": patients})
    except ValueError as e:
        assert "did not write or cannot prove it wrote" in str(e)
    assert mine.read_bytes() == user_bytes


def test_an_edited_phantom_json_no_longer_deletes_a_users_image(tmp_path, capsys):
    """The issue's case: a user's image named in phantom.json's files once made a rerun delete it."""
    phantom.generate(tmp_path, **SMALL)
    mine = tmp_path / USER_IMAGE
    mine.write_bytes(b"a user's scan")
    meta = json.loads((tmp_path / "phantom.json").read_text())
    meta["files"].append(USER_IMAGE)
    (tmp_path / "phantom.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"1 knee image that phantom.py did not write .*e.g. {USER_IMAGE}"):
        phantom.generate(tmp_path, **{**SMALL, "patients": 3})
    assert mine.read_bytes() == b"a user's scan"


def test_a_damaged_phantom_json_is_treated_as_absent_with_a_warning(tmp_path, capsys):
    first = phantom.generate(tmp_path, **SMALL)
    pixels = {p.name: p.read_bytes() for p in first}
    (tmp_path / "phantom.json").write_text('["not", "the record"]')
    capsys.readouterr()
    again = phantom.generate(tmp_path, **SMALL)  # its own images, proven by their pixels: written again
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "phantom.json is damaged (it is not a JSON object); treated as absent" in err
    assert {p.name: p.read_bytes() for p in again} == pixels
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert sorted(meta["sha256"]) == sorted(pixels) and meta["files"] == sorted(pixels)
    (tmp_path / "phantom.json").write_text("{")  # and with other settings, nothing it cannot prove is touched
    with pytest.raises(ValueError, match="cannot prove it wrote"):
        phantom.generate(tmp_path, **{**SMALL, "patients": 3, "seed": 1})
    assert {p.name: p.read_bytes() for p in again} == pixels
