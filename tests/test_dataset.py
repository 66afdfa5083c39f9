"""Tests for dataset.py and the modules it re-exports: names, discovery, the patient split, the manifest (records.py),
decoding and the cache (images.py), batches (batches.py), the summary and the CLI (dataset.py)."""

import csv
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import zlib
from collections import defaultdict
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from perceiver import dataset
from perceiver import images
from perceiver.dataset import Augment, DataError, Record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPELLINGS = {"RIGHT": "right", "LEFT": "left", "Left": "left", "R_I_G_H_T": "right", "L_E_F_T": "left",
             "Right": "right", "right": "right", "left": "left", "rIgHt": "right", "l_e_f_t": "left"}


def akoa_name(patient=9001234, visit=3, side="RIGHT", slice_=17, underscore=True, ext=".png"):
    return (f"OAI{patient:07d}_BaseLine_{visit}{'_' if underscore else ''}de3d1_SAG_3D_DESS_WE_{side}"
            f".nii.gz_{slice_}{ext}")


def save(path, array, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def gray(value, shape=(20, 24)):
    return np.full(shape, value, np.uint8)


# === Names ===
@pytest.mark.parametrize("underscore", [True, False])
@pytest.mark.parametrize("visit", [3, 8, 101])
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_parse_every_side_spelling_and_visit_form(spelling, visit, underscore):
    name = akoa_name(patient=9012345, visit=visit, side=spelling, slice_=23, underscore=underscore)
    parsed = dataset.parse_akoa_name(name)
    side = SPELLINGS[spelling]
    assert parsed == {"side": side, "label": side, "patient": "OAI9012345", "visit": visit, "slice": 23,
                      "scan": f"OAI9012345_{visit}_{side}"}
    assert dataset.side_from_name("/some/dir/" + name) == side


@pytest.mark.parametrize("name, side, visit, slice_", [
    ("OAI9001234_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_5.jpg", "left", 3, 5),
    ("OAI9001234_BaseLine_4_de3d1_SAG_3D_DESS_WE_Right.png", "right", 4, None),
    ("OAI9001234_BaseLine_4_de3d1_SAG_3D_DESS_WE_Right.nii.gz.png", "right", 4, None),
    ("oai9001234_left_knee.tif", "left", None, None),
])
def test_parse_tolerates_variations(name, side, visit, slice_):
    parsed = dataset.parse_akoa_name(name)
    assert (parsed["side"], parsed["patient"], parsed["visit"], parsed["slice"]) == (side, "OAI9001234", visit, slice_)


@pytest.mark.parametrize("name", [
    "OAI9001234_BaseLine_3_de3d1_SAG_3D_DESS_WE.nii.gz_5.png",  # no side
    "OAI9001234_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT_RIGHT.png",  # both sides
    "knee_RIGHT_5.png",  # no patient id
    "OAI9001234_BaseLine_3_cleft_brightness.png",  # "left"/"right" inside other words do not count
])
def test_parse_rejects_names_without_exactly_one_side_and_a_patient(name):
    assert dataset.parse_akoa_name(name) is None


def test_side_from_name_needs_no_patient_but_exactly_one_side():
    assert dataset.side_from_name("scan_Left.png") == "left"
    assert dataset.side_from_name("scan_left_right.png") is None
    assert dataset.side_from_name("upright.png") is None


# === Discovery ===
def make_akoa_tree(root, patients=((1, 3, "RIGHT"), (1, 3, "LEFT"), (2, 101, "Left"), (3, 4, "R_I_G_H_T")),
                   slices=2, size=(26, 22)):
    rng = np.random.default_rng(0)
    paths = []
    for patient, visit, side in patients:
        for s in range(slices):
            a = rng.integers(0, 255, size, dtype=np.uint8)
            paths.append(save(root / "sub" / akoa_name(9000000 + patient, visit, side, s, underscore=visit < 100), a))
    return paths


def test_discover_akoa_reports_unlabelled_files(tmp_path):
    good = make_akoa_tree(tmp_path)
    save(tmp_path / "OAI9000009_BaseLine_3_de3d1_SAG_3D_DESS_WE.nii.gz_1.png", gray(5))
    save(tmp_path / "OAI9000009_LEFT_and_RIGHT.png", gray(5))
    save(tmp_path / "knee_LEFT.png", gray(5))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    found = dataset.discover(tmp_path)
    assert found.layout == "akoa" and found.classes == ["left", "right"]
    assert [r.path for r in found.records] == sorted(good)
    by_name = {os.path.basename(r.path): r for r in found.records}
    r = by_name[akoa_name(9000002, 101, "Left", 1, underscore=False)]
    assert (r.label, r.patient, r.scan, r.visit, r.slice) == ("left", "OAI9000002", "OAI9000002_101_left", 101, 1)
    codes = {os.path.basename(p): reason.split(":")[0] for p, reason in found.skipped}
    assert codes == {"OAI9000009_BaseLine_3_de3d1_SAG_3D_DESS_WE.nii.gz_1.png": "no-label",
                     "OAI9000009_LEFT_and_RIGHT.png": "ambiguous-label", "knee_LEFT.png": "no-patient"}
    assert found.ignored == [str(tmp_path / "notes.txt")]  # not an image type: counted, not "skipped"


def test_discover_class_folders(tmp_path):
    for cls, n in (("dog", 2), ("cat", 3), ("Left", 1)):
        for i in range(n):
            save(tmp_path / cls / "deeper" / f"img{i}.png", gray(i))
    save(tmp_path / "cat" / "OAI9000001_visit.png", gray(9))  # patient id parsed, no side: stays "cat"
    save(tmp_path / "stray.png", gray(1))  # not in a class folder
    save(tmp_path / "dog" / "photo_right.png", gray(1))  # a side in the name, no id: folder label
    save(tmp_path / "Left" / akoa_name(9000005, 3, "RIGHT", 1), gray(1))  # name and folder disagree
    save(tmp_path / "dog" / akoa_name(9000006, 3, "LEFT", 1), gray(1))  # AKOA name wins over "dog"
    found = dataset.discover(tmp_path)
    assert found.layout == "folders"
    assert found.classes == ["cat", "dog", "left"]
    labels = {os.path.relpath(r.path, tmp_path): (r.label, r.patient) for r in found.records}
    assert labels["cat/deeper/img0.png"] == ("cat", "cat/deeper/img0.png")  # its own group
    assert labels["cat/OAI9000001_visit.png"] == ("cat", "OAI9000001")
    assert labels["dog/photo_right.png"][0] == "dog"
    assert labels[f"dog/{akoa_name(9000006, 3, 'LEFT', 1)}"] == ("left", "OAI9000006")
    assert labels["Left/deeper/img0.png"][0] == "left"
    codes = {os.path.relpath(p, tmp_path): reason.split(":")[0] for p, reason in found.skipped}
    assert codes == {"stray.png": "no-label", f"Left/{akoa_name(9000005, 3, 'RIGHT', 1)}": "label-conflict"}


def test_discover_errors_are_one_clear_sentence(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        dataset.discover(tmp_path / "missing")
    save(tmp_path / "a.png", gray(1))
    with pytest.raises(DataError, match=r"no images with a readable label under .*: expected AKOA file names or "
                                         r"one sub-folder per class\.$"):
        dataset.discover(tmp_path)
    (tmp_path / "scan.dcm").write_bytes(b"x")
    with pytest.raises(DataError, match=r"per class \(also ignored, not image types: \.dcm 1\)\.$"):
        dataset.discover(tmp_path)


# === Split ===
@st.composite
def patient_sets(draw):
    classes = ["left", "right", "c", "d"][:draw(st.integers(2, 4))]
    records = []
    for p in range(draw(st.integers(1, 60))):
        labels = draw(st.sets(st.sampled_from(classes), min_size=1, max_size=2))
        for j, label in enumerate(sorted(labels) * draw(st.integers(1, 3))):
            records.append(Record(f"/d/p{p}_{j}.png", label, f"P{p}", f"P{p}_{label}"))
    a, b, c = draw(st.integers(1, 10)), draw(st.integers(0, 10)), draw(st.integers(0, 10))
    return records, (a, b, c)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patient_sets(), st.integers(0, 2**32))
def test_split_is_by_patient_stratified_and_within_one_patient(data, seed):
    records, (a, b, c) = data
    targets = [Fraction(v, a + b + c) for v in (a, b, c)]
    split = dataset.split_by_patient(records, ratios=[float(t) for t in targets], seed=seed)
    assert set(split) == {r.path for r in records}
    splits_of, labels_of = defaultdict(set), defaultdict(set)
    for r in records:
        splits_of[r.patient].add(split[r.path])
        labels_of[r.patient].add(r.label)
    assert all(len(s) == 1 for s in splits_of.values())  # zero patient overlap
    where = {p: s.pop() for p, s in splits_of.items()}
    strata = defaultdict(list)
    for p, labels in labels_of.items():
        strata[frozenset(labels)].append(p)
    for group in list(strata.values()) + [list(where)]:  # every stratum, and all patients together
        for name, t in zip(dataset.SPLITS, targets):
            count = sum(where[p] == name for p in group)
            assert abs(count - len(group) * t) < 1, (name, count, len(group) * t)
    shuffled = records[::-1]
    assert dataset.split_by_patient(shuffled, ratios=[float(t) for t in targets], seed=seed) == split


def test_split_same_seed_same_split_other_seed_differs():
    records = [Record(f"/d/{p}_{i}.png", "left" if p % 3 else "right", f"P{p}", f"P{p}") for p in range(50)
               for i in range(3)]
    first = dataset.split_by_patient(records, seed=7)
    assert dataset.split_by_patient(records, seed=7) == first
    assert dataset.split_by_patient(records, seed=8) != first
    counts = {s: len({r.patient for r in records if first[r.path] == s}) for s in dataset.SPLITS}
    assert counts == {"train": 30, "val": 10, "test": 10}


@pytest.mark.parametrize("ratios", [(0.5, 0.2, 0.2), (0.6, 0.4), (0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_split_rejects_bad_ratios(ratios):
    with pytest.raises(DataError, match="ratios"):
        dataset.split_by_patient([Record("/a.png", "left", "P", "P")], ratios=ratios)


# === Manifest ===
def test_manifest_round_trips_relative_to_the_data_root(tmp_path):
    make_akoa_tree(tmp_path / "data")
    found = dataset.discover(tmp_path / "data")
    split = dataset.split_by_patient(found.records, seed=3)
    out = tmp_path / "run" / "split.csv"
    dataset.write_manifest(out, found.records, split, root=tmp_path / "data")
    rows = list(csv.DictReader(open(out)))
    assert rows[0]["path"].startswith("sub/") and list(rows[0])[:4] == ["path", "patient", "label", "split"]
    records, split_back = dataset.read_manifest(out, root=tmp_path / "data")
    assert records == found.records and split_back == split
    os.rename(tmp_path / "data", tmp_path / "moved")  # a moved data folder still matches
    records, _ = dataset.read_manifest(out, root=tmp_path / "moved")
    assert [os.path.relpath(r.path, tmp_path / "moved") for r in records] == \
        [os.path.relpath(r.path, tmp_path / "data") for r in found.records]
    with pytest.raises(DataError, match="relative paths"):
        dataset.read_manifest(out)


def test_manifest_without_root_is_absolute_and_overlap_is_rejected(tmp_path):
    recs = [Record("/x/a.png", "left", "P1", "P1_3_left", 3, 1), Record("/x/b.png", "right", "P2", "P2_x_right")]
    out = tmp_path / "m.csv"
    dataset.write_manifest(out, recs, {"/x/a.png": "train", "/x/b.png": "test"})
    assert dataset.read_manifest(out) == (recs, {"/x/a.png": "train", "/x/b.png": "test"})
    out.write_text("path,patient,label,split\n/x/a.png,P1,left,train\n/x/b.png,P1,left,val\n")
    with pytest.raises(DataError, match="patient P1 in more than one split"):
        dataset.read_manifest(out)
    out.write_text("path,patient,label,split\n/x/a.png,P1,left,training\n")
    with pytest.raises(DataError, match="split 'training'"):
        dataset.read_manifest(out)


# === Decoding ===
def png_claiming(path, width, height):
    """A tiny PNG whose header claims width x height pixels (a decompression bomb shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    body += chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return str(path)


def test_bad_files_are_skipped_with_their_reason_and_good_files_load(tmp_path):
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 255, (60, 50), dtype=np.uint8)
    good1 = save(tmp_path / "good1.png", gray(40))
    good2 = save(tmp_path / "good2.png", gray(200))
    raw = open(save(tmp_path / "full.png", noisy), "rb").read()
    (tmp_path / "truncated.png").write_bytes(raw[: len(raw) // 2])
    broken = bytearray(raw)
    broken[200:260] = bytes(b ^ 0x5A for b in broken[200:260])
    (tmp_path / "corrupt.png").write_bytes(bytes(broken))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    bomb = png_claiming(tmp_path / "bomb.png", 50_000, 50_000)  # Pillow's own limit
    big = png_claiming(tmp_path / "big.png", 9000, 9000)  # over MAX_PIXELS, under Pillow's limit
    names = ["truncated", "good1", "corrupt", "empty", "text", "bomb", "big", "good2", "missing"]
    paths = [good1 if n == "good1" else good2 if n == "good2" else bomb if n == "bomb" else big if n == "big"
             else str(tmp_path / f"{n}.png") for n in names]
    result = dataset.load_images(paths, size=(8, 8), cache=False, progress=False)
    assert result.ok == [good1, good2] and result.ok_index.tolist() == [1, 7]
    assert result.images.shape == (2, 8, 8, 3) and result.images.dtype == np.uint8
    assert (result.images[0] == 40).all() and (result.images[1] == 200).all()
    codes = {os.path.basename(p)[:-4]: reason.split(":")[0] for p, reason in result.skipped}
    assert codes == {"truncated": "truncated", "corrupt": "corrupt", "empty": "empty", "text": "not-image",
                     "bomb": "too-large", "big": "too-large", "missing": "missing"}
    assert all(len(reason.split(": ", 1)[1]) > 5 for _, reason in result.skipped)
    with pytest.raises(DataError, match="cannot use image .*truncated.png: truncated"):
        dataset.load_image(tmp_path / "truncated.png")


@pytest.mark.parametrize("method", [None, "spawn", "forkserver"])
def test_parallel_decoding_matches_serial_and_keeps_input_order(tmp_path, monkeypatch, capsys, method):
    """Every start method: spawn and forkserver workers import images.py to run its _decode_chunk."""
    if method is not None and method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method on this OS")
    if method is not None:
        monkeypatch.setenv("PERCEIVER_START_METHOD", method)
    rng = np.random.default_rng(2)
    paths = [save(tmp_path / f"{i:03d}.png", rng.integers(0, 255, (30, 20), dtype=np.uint8)) for i in range(90)]
    paths[10] = str(tmp_path / "missing.png")
    order = paths[::-1]
    serial = dataset.load_images(order, size=(12, 10), workers=1, cache=False, progress=False)
    parallel = dataset.load_images(order, size=(12, 10), workers=2, cache=False, progress=False)
    assert parallel.ok == serial.ok == [p for p in order if "missing" not in p]
    assert np.array_equal(parallel.images, serial.images) and parallel.images.shape == (89, 12, 10, 3)
    assert parallel.skipped == serial.skipped == [(str(tmp_path / "missing.png"), "missing: file not found")]
    assert "decoding process died" not in capsys.readouterr().err  # no fallback to decoding in this process


@pytest.mark.parametrize("kind", ["L", "RGB", "RGBA", "P", "L16", "JPEG", "TIFF", "BMP"])
def test_formats_and_modes_decode_to_the_right_values(tmp_path, kind):
    value = 90
    a = gray(value, (40, 30))
    if kind == "L16":
        img = Image.fromarray((np.arange(40 * 30).reshape(40, 30) % 4096).astype(np.uint16))
        img.save(tmp_path / "x.png")
        out = dataset.load_image(tmp_path / "x.png", size=(40, 30), channels=1)
        assert out.max() == 255 and out[0, 1, 0] == round(255 / 4095)  # max scaled to 255
        return
    if kind == "RGBA":
        rgba = np.dstack([a, a, a, np.where(np.arange(30) < 15, 255, 0).astype(np.uint8)[None].repeat(40, 0)])
        Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
        out = dataset.load_image(tmp_path / "x.png", size=(40, 30))
        assert (out[:, :15] == value).all() and (out[:, 15:] == 0).all()  # alpha composited onto black
        return
    img = Image.fromarray(a)
    path = tmp_path / "x.png"
    if kind == "RGB":
        img = Image.fromarray(np.dstack([a, a, a]))
    elif kind == "P":
        img = img.convert("P")
    elif kind in ("JPEG", "TIFF", "BMP"):
        path = tmp_path / f"x.{kind.lower()}"
    img.save(path)
    out3 = dataset.load_image(path, size=(16, 16))
    out1 = dataset.load_image(path, size=(16, 16), channels=1)
    assert out3.shape == (16, 16, 3) and out1.shape == (16, 16, 1) and out3.dtype == np.uint8
    assert np.abs(out3.astype(int) - value).max() <= (3 if kind == "JPEG" else 0)
    assert np.array_equal(out3[..., :1], out1)


def test_colour_to_one_channel_is_luma_and_resize_is_antialiased(tmp_path):
    Image.fromarray(np.dstack([np.full((10, 10), v, np.uint8) for v in (255, 0, 0)])).save(tmp_path / "red.png")
    assert dataset.load_image(tmp_path / "red.png", size=(5, 5), channels=1)[0, 0, 0] == 76  # 0.299 * 255
    checker = ((np.indices((128, 128)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(checker).save(tmp_path / "checker.png")
    small = dataset.load_image(tmp_path / "checker.png", size=(32, 32), channels=1).astype(int)
    assert np.abs(small[4:-4, 4:-4] - 127).max() <= 2  # averaged, not aliased to 0 / 255


# === Cache ===
def test_cache_hits_and_a_changed_file_invalidates_it(tmp_path):
    a = save(tmp_path / "a.png", gray(10))
    b = save(tmp_path / "b.png", gray(20))
    bad = str(tmp_path / "bad.png")
    open(bad, "w").write("junk")
    cache = tmp_path / "cache"
    first = dataset.load_images([a, b, bad], size=(4, 4), cache_dir=cache, progress=False)
    second = dataset.load_images([a, b, bad], size=(4, 4), cache_dir=cache, progress=False)
    assert not first.from_cache and second.from_cache
    assert np.array_equal(first.images, second.images) and second.ok == [a, b] and second.skipped == first.skipped
    assert not dataset.load_images([a, b, bad], size=(5, 4), cache_dir=cache, progress=False).from_cache
    stat = os.stat(b)
    save(tmp_path / "b.png", gray(30))
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    third = dataset.load_images([a, b, bad], size=(4, 4), cache_dir=cache, progress=False)
    assert not third.from_cache and (third.images[1] == 30).all() and (third.images[0] == 10).all()
    assert dataset.load_images([a, b, bad], size=(4, 4), cache_dir=cache, progress=False).from_cache


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "c"))
    dataset.load_images([save(tmp_path / "a.png", gray(1))], size=(4, 4), progress=False)
    assert sorted(os.path.splitext(f)[1] for f in os.listdir(tmp_path / "c")) == [".json", ".npy"]


def test_cache_dir_follows_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PERCEIVER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert images.default_cache_dir() == str(tmp_path / "xdg" / "akoa-perceiver")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG rule: a relative path is ignored
    assert images.default_cache_dir() == str(tmp_path / "home" / ".cache" / "akoa-perceiver")
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "mine"))  # ours wins over both
    assert images.default_cache_dir() == str(tmp_path / "mine")


# === Normalisation, augmentation, batches ===
def test_normalize_maps_uint8_to_minus_one_one_identically_in_tf():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    y = dataset.normalize(x)
    assert y.dtype == np.float32 and y[0, 0, 0, 0] == -1.0 and y[0, -1, -1, 0] == 1.0
    assert np.allclose(y.ravel(), np.arange(256) / 127.5 - 1, atol=1e-7)
    assert np.array_equal(dataset.denormalize(y), x)
    tf = pytest.importorskip("tensorflow")
    assert np.array_equal(dataset.normalize(tf.constant(x)).numpy(), y)


def lopsided(n=16, size=32):
    """Images bright on their left third: a flip moves the brightness to the right."""
    a = np.full((n, size, size, 1), 20, np.uint8)
    a[:, :, : size // 3] = 220
    return a


def flipped(x):
    w = x.shape[2]
    mass = (np.asarray(x) + 1).sum(axis=(1, 3))  # (batch, width)
    centre = (mass * np.arange(w)).sum(1) / mass.sum(1)
    return centre > (w - 1) / 2


def test_augmentation_never_flips_without_swapping_the_label():
    x = dataset.normalize(lopsided(64))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out, y = dataset.augment_batch(x, np.zeros(64, np.int32), rng, Augment(), ["left", "right"])
        assert not flipped(out).any() and (y == 0).all()
        assert not np.allclose(out, x)  # it did augment
    seen = set()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        labels = np.tile(np.array([0, 1], np.int32), 32)
        out, y = dataset.augment_batch(x, labels, rng, Augment(flip_swap=True), ["left", "right"])
        flips = flipped(out)
        assert np.array_equal(y, np.where(flips, 1 - labels, labels))
        seen |= set(flips.tolist())
    assert seen == {True, False}
    names = ["right", "left"]  # the swap follows the names, not the indices
    out, y = dataset.augment_batch(x, np.zeros(64, np.int32), np.random.default_rng(0), Augment(flip_swap=True), names)
    assert np.array_equal(y, flipped(out).astype(np.int32))
    with pytest.raises(ValueError, match="exactly \\['left', 'right'\\]"):
        dataset.augment_batch(x, np.zeros(64, np.int32), rng, Augment(flip_swap=True), ["cat", "dog"])


def test_augment_rejects_bad_settings():
    with pytest.raises(ValueError, match="scale=1.5"):
        Augment(scale=1.5)  # would allow a negative zoom, i.e. a mirror
    with pytest.raises(ValueError, match="rotation_deg=-1"):
        Augment(rotation_deg=-1)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_batches_order_normalisation_and_seeded_shuffle(backend):
    if backend == "tensorflow":
        pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    n = 23
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    labels = np.arange(n) % 2

    def epochs(ds, count):
        out = []
        for _ in range(count):
            if backend == "tensorflow":
                batches = [(x.numpy(), y.numpy()) for x, y in ds]
            else:
                batches = [ds[i] for i in range(len(ds))]
                ds.on_epoch_end()
            out.append(batches)
        return out

    def order(batches):
        return [int(round((v + 1) * 127.5)) for x, _ in batches for v in x[:, 0, 0, 0]]

    val = epochs(dataset.make_dataset(images, labels, batch_size=5, training=False, backend=backend), 2)
    assert [len(x) for x, _ in val[0]] == [5, 5, 5, 5, 3]  # the last partial batch is kept
    assert order(val[0]) == order(val[1]) == list(range(n))
    x, y = val[0][0]
    assert x.dtype == np.float32 and y.dtype == np.int32 and np.array_equal(x, dataset.normalize(images[:5]))
    assert y.tolist() == [0, 1, 0, 1, 0]
    train = epochs(dataset.make_dataset(images, labels, batch_size=5, training=True, seed=4, backend=backend), 2)
    again = epochs(dataset.make_dataset(images, labels, batch_size=5, training=True, seed=4, backend=backend), 1)
    other = epochs(dataset.make_dataset(images, labels, batch_size=5, training=True, seed=5, backend=backend), 1)
    assert sorted(order(train[0])) == sorted(order(train[1])) == list(range(n))
    assert order(train[0]) == order(again[0]) != order(train[1])
    assert order(train[0]) != order(other[0])
    assert all((y == np.array(order([(x, y)])) % 2).all() for x, y in train[0])  # labels follow their images


def test_a_run_of_epochs_is_the_epochs_one_by_one_on_every_backend():
    """train.py's one fit: epochs 2..4 as one tf.data stream equal each epoch made alone, and the PyDataset that
    starts at epoch 2 and moves on in on_epoch_end; a resumed run at epoch 3 gets the same batches again."""
    pytest.importorskip("tensorflow")
    n = 23
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(8, 1).repeat(8, 2).repeat(3, 3)
    labels = np.arange(n) % 2
    kw = dict(batch_size=5, training=True, seed=7, augment=Augment(), class_names=["left", "right"])
    stream = [(x.numpy(), y.numpy()) for x, y in dataset.make_dataset(images, labels, epoch=2, epochs=5,
                                                                      backend="tensorflow", **kw)]
    assert len(stream) == 3 * 5 and [len(y) for _, y in stream[:5]] == [5, 5, 5, 5, 3]
    alone = [(x.numpy(), y.numpy()) for e in (2, 3, 4)
             for x, y in dataset.make_dataset(images, labels, epoch=e, backend="tensorflow", **kw)]
    resumed = [(x.numpy(), y.numpy()) for x, y in dataset.make_dataset(images, labels, epoch=3, epochs=5,
                                                                       backend="tensorflow", **kw)]
    for (xa, ya), (xb, yb) in zip(stream, alone):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    for (xa, _), (xb, _) in zip(stream[5:], resumed):
        np.testing.assert_array_equal(xa, xb)
    # the PyDataset path (JAX, PyTorch) visits the same images in the same order, epoch after epoch
    plain = dict(kw, augment=None)
    tf_order = [y.numpy() for _, y in dataset.make_dataset(images, labels, epoch=2, epochs=5, backend="tensorflow",
                                                           **plain)]
    py = dataset.make_dataset(images, labels, epoch=2, backend="jax", **plain)
    py_order = []
    for _ in range(3):
        py_order += [py[i][1] for i in range(len(py))]
        py.on_epoch_end()
    assert [y.tolist() for y in tf_order] == [y.tolist() for y in py_order]
    with pytest.raises(ValueError, match="epochs 2 needs epoch set and must be greater"):
        dataset.make_dataset(images, labels, epoch=2, epochs=2, backend="tensorflow", **kw)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_dataset_augmentation_flips_only_with_the_label_swapped(backend):
    if backend == "tensorflow":
        pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    images, labels = lopsided(40, 16), np.zeros(40, np.int32)
    for aug, can_flip in ((Augment(), False), (Augment(flip_swap=True), True)):
        ds = dataset.make_dataset(images, labels, batch_size=8, training=True, seed=1, augment=aug,
                                  class_names=["left", "right"], backend=backend)
        batches = [(x.numpy(), y.numpy()) for x, y in ds] if backend == "tensorflow" else \
            [ds[i] for i in range(len(ds))]
        flips = np.concatenate([flipped(x) for x, _ in batches])
        ys = np.concatenate([y for _, y in batches])
        assert np.array_equal(ys, flips.astype(np.int32))
        assert flips.any() == can_flip
    with pytest.raises(ValueError, match="flip_swap"):
        dataset.make_dataset(images, labels, batch_size=8, training=True, augment=Augment(flip_swap=True),
                             class_names=["a", "b"], backend=backend)


def test_augment_from_settings_takes_every_strength_and_defaults_what_an_old_config_lacks():
    settings = {"augment": True, "flip_swap": True, "aug_rotation": 0, "aug_shift": 0.0, "aug_scale": 0.0,
                "aug_brightness": 0.0, "aug_contrast": 0.0}
    still = Augment.from_settings(settings)
    assert still == Augment(rotation_deg=0, shift=0, scale=0, brightness=0, contrast=0, flip_swap=True)
    images = np.random.default_rng(0).uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
    out, _ = dataset.augment_batch(images, np.zeros(6, np.int32), np.random.default_rng(1),
                                   Augment.from_settings({**settings, "flip_swap": False}), ["left", "right"])
    assert np.array_equal(out, images)  # every strength 0: nothing moves
    assert Augment.from_settings({"augment": True}) == Augment()  # a config.json written before the flags
    assert Augment.from_settings({**settings, "augment": False}) is None
    with pytest.raises(ValueError, match="rotation_deg"):
        Augment.from_settings({"aug_rotation": 200})


# === Summary and CLI ===
def test_summary_json_counts_splits_and_skips(tmp_path, capsys):
    data = tmp_path / "data"
    make_akoa_tree(data)
    save(data / "OAI9000009_BaseLine_3_de3d1_SAG_3D_DESS_WE.nii.gz_1.png", gray(5))
    (data / akoa_name(9000008, 3, "LEFT", 0)).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (data / "README.md").write_text("about this data")
    code = dataset.main(["summary", str(data), "--json", "--seed", "2", "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    s = json.loads(capsys.readouterr().out)
    assert s["schema"] == 2 and s["layout"] == "akoa" and s["classes"] == ["left", "right"] and s["decoded"]
    assert (s["images"], s["patients"], s["scans"]) == (8, 3, 4)  # patient 8's only file is corrupt
    assert s["per_label"] == {"left": {"images": 4, "patients": 2, "scans": 2},
                              "right": {"images": 4, "patients": 2, "scans": 2}}
    assert sum(v["images"] for v in s["splits"].values()) == 8
    assert sum(v["patients"] for v in s["splits"].values()) == 3
    assert s["split"] == {"source": "computed", "seed": 2, "ratios": [0.6, 0.2, 0.2], "manifest": None}
    assert s["skipped_by_code"] == {"no-label": 1, "not-image": 1} and s["ignored_by_extension"] == {".md": 1}
    assert {x["path"] for x in s["skipped"]} == {"OAI9000009_BaseLine_3_de3d1_SAG_3D_DESS_WE.nii.gz_1.png",
                                                  akoa_name(9000008, 3, "LEFT", 0)}
    assert dataset.main(["summary", str(data), "--no-decode", "--cache-dir", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "images          9" in text and "no-label 1" in text and "split by patient (seed 0" in text


def test_summary_reuses_a_manifest(tmp_path):
    data = tmp_path / "data"
    make_akoa_tree(data)
    found = dataset.discover(data)
    split = {r.path: "test" for r in found.records}
    dataset.write_manifest(tmp_path / "m.csv", found.records[:-2], split, root=data)
    s = dataset.summarize(data, manifest=tmp_path / "m.csv", cache_dir=tmp_path / "c")
    assert s["split"]["source"] == "manifest" and s["splits"]["test"]["images"] == 6 == s["images"]
    assert s["skipped_by_code"] == {"not-in-manifest": 2}
    text = open(tmp_path / "m.csv").read().replace(",left,test", ",right,test", 1)  # a side changed since
    open(tmp_path / "m.csv", "w").write(text)
    s = dataset.summarize(data, manifest=tmp_path / "m.csv", decode=False)
    assert s["images"] == 5 and s["skipped_by_code"] == {"label-conflict": 1, "not-in-manifest": 2}


def test_importing_dataset_loads_no_deep_learning_framework():
    """`python dataset.py --help`, the summary and the decoding workers must not pay for importing Keras' backend."""
    code = ("import sys, dataset; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    for args in (["summary", str(tmp_path / "nope")], ["summary", str(tmp_path), "--split", "0.5,0.5"]):
        run = subprocess.run([sys.executable, os.path.join(REPO, "dataset.py"), *args], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
        assert run.stderr.count("\n") == 1
