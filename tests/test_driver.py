"""Tests of driver.py: predictions, mixed inputs, wrong-side flags, DICOM and NIfTI volumes, --explain, strict loading.

Run folders are built directly with the runs/modules APIs (config.json + split.csv + weights), as train.py writes them,
so no training is needed; the models have random or hand-set weights.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from perceiver import dataset
import driver
from perceiver.metrics import softmax
from perceiver import phantom
from perceiver import runs
from perceiver import verdicts
from perceiver import volumes
from perceiver.modules import PerceiverConfig, build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16


def _make_run(run_dir, data_root, records, split, *, preset="tiny", bias=None, seed=0):
    """A run folder as train.py writes it: config.json, split.csv and model.weights.h5 (random or biased weights)."""
    import keras

    keras.utils.set_random_seed(seed)
    config = PerceiverConfig.preset(preset, input_shape=(SIZE, SIZE, 3), num_classes=2)
    model = build_model(config)
    if bias is not None:  # make one class win whatever the image: logits = W x + b with b dominating
        kernel, b = model.classifier.get_weights()
        model.classifier.set_weights([np.zeros_like(kernel), np.asarray(bias, np.float32)])
    os.makedirs(run_dir, exist_ok=True)
    runs.write_config(run_dir, {
        "train": {"preset": preset}, "model": config.to_dict(),
        "data": {"root": str(data_root), "layout": "akoa", "classes": ["left", "right"], "image_size": [SIZE, SIZE],
                 "channels": 3},
    })
    dataset.write_manifest(os.path.join(run_dir, runs.SPLIT), records, split, root=data_root)
    runs.atomic_save_weights(model, os.path.join(run_dir, runs.BEST_WEIGHTS))
    return run_dir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("driver")
    data = tmp / "data"
    phantom.generate(data, patients=8, slices=4, height=64, width=72, progress=False)
    found = dataset.discover(data)
    split = dataset.split_by_patient(found.records, seed=0)
    run = _make_run(tmp / "run", data, found.records, split)
    always_right = _make_run(tmp / "right", data, found.records, split, bias=[-20.0, 20.0])
    paths = sorted(r.path for r in found.records)
    return {"tmp": tmp, "data": data, "run": str(run), "right": str(always_right), "paths": paths,
            "loaded": driver.load(run), "loaded_right": driver.load(always_right)}


def _cli(*args, cwd=REPO, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(REPO, "driver.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def test_predictions_match_model_predict(env):
    loaded, paths = env["loaded"], env["paths"][:20]
    inputs, _ = driver.find_inputs(paths)
    results = driver.classify(driver.Predictor(loaded, batch_size=8), inputs, workers=2)
    x = dataset.normalize(np.stack([dataset.load_image(p, (SIZE, SIZE), 3) for p in paths]))
    want = softmax(loaded.model.predict(x, verbose=0))
    got = np.array([r.probabilities for r in results])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [r.predicted for r in results] == [loaded.classes[i] for i in want.argmax(1)]
    assert [r.path for r in results] == paths  # input order kept across threads and batches


def test_mixed_good_and_bad_inputs(env, tmp_path):
    good = env["paths"][:3]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(open(good[0], "rb").read()[:200])
    inputs, _ = driver.find_inputs([good[0], str(empty), good[1], str(text), str(truncated), good[2]])
    results = driver.classify(driver.Predictor(env["loaded"]), inputs, workers=2)
    ok = {r.path: r for r in results if r.error is None}
    bad = {os.path.basename(r.path): r.error for r in results if r.error is not None}
    assert sorted(ok) == sorted(good) and all(r.predicted in ("left", "right") for r in ok.values())
    assert set(bad) == {"empty.png", "notes.png", "cut.png"}
    assert bad["empty.png"].startswith("empty") and bad["notes.png"].startswith("not-image")
    proc = _cli(good[0], empty, "--run", env["run"], "--min-confidence", "0.5")  # a random model: never uncertain
    assert proc.returncode == driver.EXIT_FAILED, proc.stderr
    assert "2 scans (1 slice): 1 classified, 0 uncertain, 0 possible wrong-side labels, 1 failed" in proc.stdout
    assert "failed: empty" in proc.stdout


def _one_scan(paths, side):
    """Every slice of the first scan of `side` in the phantom set (4 slices)."""
    first = next(p for p in paths if dataset.side_from_name(p) == side)
    scan = dataset.parse_akoa_name(os.path.basename(first))["scan"]
    return [p for p in paths if dataset.parse_akoa_name(os.path.basename(p))["scan"] == scan]


def test_slices_of_one_scan_get_one_verdict_and_a_left_scan_called_right_is_flagged(env, tmp_path):
    left, right = _one_scan(env["paths"], "left"), _one_scan(env["paths"], "right")
    assert len(left) == len(right) == 4
    mixed = [left[0], right[0], left[1], right[1], left[2], left[3], right[2], right[3]]  # interleaved
    inputs, _ = driver.find_inputs(mixed)
    results = driver.classify(driver.Predictor(env["loaded_right"]), inputs)
    scans = verdicts.group(results, ["left", "right"], 0.9)
    assert [s.slices for s in scans] == [4, 4] and [len(s.members) for s in scans] == [4, 4]
    assert {r.path for r in scans[0].members} == set(left) and {r.path for r in scans[1].members} == set(right)
    assert [s.verdict for s in scans] == ["right", "right"] and [s.flagged for s in scans] == [True, False]
    assert scans[0].expected == "left" and scans[0].expected_source == "file name"
    assert scans[0].agreement == "disagrees" and scans[1].agreement == "agrees"
    assert verdicts.counts(scans)["flagged"] == 1
    proc = _cli(*mixed, "--run", env["right"], "--results-file", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    flagged_lines = [line for line in proc.stdout.splitlines() if "WRONG SIDE?" in line]
    assert len(flagged_lines) == 1 and "LEFT" in flagged_lines[0].upper()
    assert "2 scans (8 slices): 2 classified, 0 uncertain, 1 possible wrong-side label, 0 failed" in proc.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["schema"] == 2 and saved["summary"]["flagged"] == 1
    assert [s["flagged"] for s in saved["scans"]] == [True, False]
    assert [len(s["slices"]) for s in saved["scans"]] == [4, 4]
    assert sorted(x["slice"] for x in saved["scans"][0]["slices"]) == [0, 1, 2, 3]  # AKOA slice numbers
    assert _cli(*left, "--run", env["right"], "--strict").returncode == driver.EXIT_WRONG_SIDE
    # --expect right checks the batch instead of the names: nothing is flagged, and a CSV says so
    proc = _cli(*left, "--run", env["right"], "--expect", "right", "--results-file", tmp_path / "r.csv")
    assert "0 possible wrong-side labels" in proc.stdout
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("level,scan,file,slice,verdict,predicted,probability,slices_used,plane,orientation,"
                              "expected")
    assert [r.split(",")[0] for r in rows[1:]] == ["scan"] + ["slice"] * 4
    assert ",right,--expect,agrees," in rows[1]


def test_an_uncertain_scan_is_never_a_side_and_never_flagged(env, tmp_path):
    """A model that leans right (p = 0.62 on every image) on a left scan: below 0.9 the verdict is "uncertain"."""
    lean = _make_run(tmp_path / "lean", env["data"], dataset.discover(env["data"]).records,
                     dataset.split_by_patient(dataset.discover(env["data"]).records, seed=0), bias=[0.0, 0.5])
    left = _one_scan(env["paths"], "left")
    proc = _cli(*left, "--run", lean, "--results-file", tmp_path / "r.csv")
    assert proc.returncode == 0, proc.stderr
    assert "1 scan (4 slices): 0 classified, 1 uncertain, 0 possible wrong-side labels, 0 failed" in proc.stdout
    assert "uncertain (right?)" in proc.stdout and "WRONG SIDE?" not in proc.stdout
    with open(tmp_path / "r.csv", newline="") as f:
        scan_row = next(csv.DictReader(f))
    assert (scan_row["level"], scan_row["verdict"], scan_row["predicted"], scan_row["agreement"]) == (
        "scan", "uncertain", "right", "uncertain")
    assert scan_row["probability"] == f"{1 / (1 + np.exp(-0.5)):.6f}"
    assert _cli(*left, "--run", lean, "--strict").returncode == 0  # uncertain is not a wrong side
    assert _cli(*left, "--run", lean, "--strict", "uncertain").returncode == driver.EXIT_UNCERTAIN
    # a lower threshold makes the same scan a confident right: now it is a wrong side
    proc = _cli(*left, "--run", lean, "--min-confidence", "0.6", "--strict")
    assert proc.returncode == driver.EXIT_WRONG_SIDE and "1 possible wrong-side label" in proc.stdout
    proc = _cli(*left, "--run", lean, "--min-confidence", "0.3")
    assert proc.returncode == 2 and "--min-confidence 0.3 must be between 0.5" in proc.stderr


def test_the_runs_temperature_calibrates_the_probabilities(env, tmp_path):
    run = tmp_path / "hot"
    shutil.copytree(env["run"], run)
    runs.atomic_write_json(run / runs.CALIBRATION, {"temperature": 2.5, "min_confidence": 0.7})
    runs.write_checksum(run / runs.CALIBRATION)  # as calibration.py writes it: verified on load
    loaded = driver.load(run)
    assert loaded.temperature == 2.5 and loaded.min_confidence == 0.7
    paths = env["paths"][:6]
    results = driver.classify(driver.Predictor(loaded), driver.find_inputs(paths)[0])
    x = dataset.normalize(np.stack([dataset.load_image(p, (SIZE, SIZE), 3) for p in paths]))
    want = softmax(np.asarray(loaded.model.predict(x, verbose=0), np.float64) / 2.5)
    np.testing.assert_allclose([r.probabilities for r in results], want, atol=1e-5)
    (run / runs.CALIBRATION).write_text('{"temperature": -1}')
    runs.write_checksum(run / runs.CALIBRATION)  # a consistent file whose value is out of range
    proc = _cli(paths[0], "--run", run)
    assert proc.returncode == 2 and "holds the temperature -1, outside the 0.05 to 20" in proc.stderr, proc.stderr


def _volume(paths):
    """Slices as 16-bit arrays, as a scanner would store them (0..4000)."""
    return np.stack([np.asarray(Image.open(p).convert("L"), np.uint16) * 15 for p in paths])


def _write_dicom(path, frames, **tags):
    """An MR DICOM file of uint16 (12 bits stored) or uint8 frames (n, rows, cols): one frame, or a multi-frame for
    n > 1, cut sagittally as AKOA's slices are (rows towards inferior, columns towards posterior: codes IPL; without
    ImageOrientationPatient the plane could not be checked and the file would get no side). `tags` are set last
    (ImageLaterality="R", RescaleSlope=2, ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits_stored = 12 if frames.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored = 8 * frames.itemsize, bits_stored
    ds.HighBit, ds.PixelRepresentation = bits_stored - 1, 0
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(frames if len(frames) > 1 else frames[0]).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_and_nifti_volumes_classify(env, tmp_path):
    pytest.importorskip("pydicom")
    nibabel = pytest.importorskip("nibabel")

    left = [p for p in env["paths"] if dataset.side_from_name(p) == "left"][:4]
    vol = _volume(left)  # (slices, rows, cols)
    _write_dicom(tmp_path / "multi.dcm", vol, ImageLaterality="R")  # header says right, the pixels are left knees
    _write_dicom(tmp_path / "single", vol[:1], ImageLaterality="L")  # extensionless: found by its DICM preamble
    sagittal = phantom.scan_geometry(vol.shape, side="LEFT").affine()  # an axial one would be refused
    nibabel.save(nibabel.Nifti1Image(np.transpose(vol, (1, 2, 0)).astype(np.int16), sagittal),
                 str(tmp_path / "knee_LEFT.nii.gz"))
    inputs, _ = driver.find_inputs([tmp_path])
    assert sorted((os.path.basename(i.path), i.kind) for i in inputs) == [
        ("knee_LEFT.nii.gz", "nifti"), ("multi.dcm", "dicom"), ("single", "dicom")]
    loaded = env["loaded"]
    results = {os.path.basename(r.path): r for r in driver.classify(driver.Predictor(loaded), inputs)}
    # every path gives the model the same pixels: each slice equals the PNG it came from, scaled as 16-bit
    want = softmax(loaded.model.predict(dataset.normalize(np.stack(
        [dataset.array_to_uint8_image(s, (SIZE, SIZE), 3) for s in vol])), verbose=0))
    for name in ("multi.dcm", "knee_LEFT.nii.gz"):
        r = results[name]
        assert r.error is None and len(r.slices) == 4
        np.testing.assert_allclose([s["probabilities"] for s in r.slices], want, atol=1e-5)
        np.testing.assert_allclose(r.probabilities, want.mean(0), atol=1e-5)
    assert results["single"].slices is None
    np.testing.assert_allclose(results["single"].probabilities, want[0], atol=1e-5)
    assert (results["multi.dcm"].expected, results["multi.dcm"].expected_source) == ("right", "DICOM header")
    assert (results["single"].expected, results["knee_LEFT.nii.gz"].expected) == ("left", "left")
    # the 16-bit scaling is dataset.py's: the same slice written as a 16-bit PNG decodes to the same pixels
    Image.fromarray(vol[0].astype(np.uint16)).save(tmp_path / "slice16.png")
    np.testing.assert_array_equal(dataset.load_image(tmp_path / "slice16.png", (SIZE, SIZE), 3),
                                  dataset.array_to_uint8_image(vol[0], (SIZE, SIZE), 3))


def _phantom_scan(env, side):
    """(spec, its uint8 pixels (4, 64, 72), its PNG paths in slice order) of the env set's first scan of `side`."""
    names = {os.path.basename(p): p for p in env["paths"]}
    for spec in phantom.plan_population(8, 0):
        if spec.side == side and spec.filename(0) in names:
            return spec, phantom.scan_pixels(0, spec, 4, 64, 72), [names[spec.filename(k)] for k in range(4)]
    raise AssertionError(f"no {side} scan in the env set")


def _instance_numbers(paths):
    import pydicom

    return [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]


def test_dicom_series_become_one_scan_each_with_their_slices_in_position_order(env, tmp_path):
    """Two series in one folder, a copy of one in another folder, a multi-frame file and a damaged file beside them:
    each series is one scan whose slices are the phantom's in slice order (its files are named by UID, out of order)."""
    pytest.importorskip("pydicom")
    loaded = env["loaded"]
    left, left_pixels, left_pngs = _phantom_scan(env, "LEFT")
    right, right_pixels, right_pngs = _phantom_scan(env, "RIGHT")
    both, copy = tmp_path / "both", tmp_path / "copy"
    left_files = phantom.write_dicom_series(both, left_pixels, side="LEFT", patient=left.patient, seed=0)
    phantom.write_dicom_series(both, right_pixels, side="RIGHT", patient=right.patient, seed=0)
    assert _instance_numbers(sorted(left_files)) != [1, 2, 3, 4]  # listed by name, the files are out of order
    shutil.copytree(both, copy, ignore=lambda d, names: [n for n in names if n not in map(os.path.basename,
                                                                                          map(str, left_files))])
    _write_dicom(both / "multi.dcm", left_pixels, ImageLaterality="L")
    (both / "damaged.dcm").write_bytes(b"DICM but not really")
    inputs, _ = driver.find_inputs([both, copy])
    kinds = sorted((i.kind, os.path.basename(i.path).split(" ")[0]) for i in inputs)
    assert kinds == [("dicom", "damaged.dcm"), ("dicom", "multi.dcm"), ("dicom-series", "both"),
                     ("dicom-series", "both"), ("dicom-series", "copy")]
    series = [i for i in inputs if i.kind == "dicom-series"]
    assert all(" (series " in i.path for i in series[:2]) and series[2].path == str(copy)  # a UID only to tell apart
    assert sorted(len(i.files) for i in series) == [4, 4, 4]
    results = driver.classify(driver.Predictor(loaded), inputs)
    by_name = {r.path: r for r in results}
    png_probs = {side: driver.Predictor(loaded).probabilities(np.stack(
        [dataset.load_image(p, (SIZE, SIZE), 3) for p in pngs])) for side, pngs in (("left", left_pngs),
                                                                                    ("right", right_pngs))}
    for r in results:
        if r.kind != "dicom-series":
            continue
        side = r.expected
        assert r.error is None and r.expected_source == "DICOM header" and side in ("left", "right")
        assert (r.plane, r.orientation) == ("sagittal", "IAL" if side == "left" else "IPL")
        assert _instance_numbers(r.files) == [1, 2, 3, 4]  # each slice names its file, in position order
        np.testing.assert_allclose(r.slice_probabilities, png_probs[side], atol=1e-5)  # the PNG slices, in order
    multi = by_name[str(both / "multi.dcm")]  # no series UID: a volume of its own
    assert multi.error is None and len(multi.slices) == 4 and (multi.plane, multi.orientation) == ("sagittal", "IPL")
    assert by_name[str(both / "damaged.dcm")].error.startswith("not a readable DICOM file")
    scans = verdicts.group(results, loaded.classes, 0.5)
    assert len(scans) == 5 and sum(s.verdict == "failed" for s in scans) == 1


def test_axial_and_coronal_inputs_are_refused_in_one_sentence_and_the_batch_goes_on(env, tmp_path):
    pytest.importorskip("pydicom")
    pytest.importorskip("nibabel")
    spec, pixels, _ = _phantom_scan(env, "LEFT")
    batch = tmp_path / "batch"
    phantom.write_dicom_series(batch / "axial", pixels, side="LEFT", patient=spec.patient, seed=0, plane="axial")
    phantom.write_nifti(batch / "coronal_LEFT.nii.gz", pixels, side="LEFT", plane="coronal")
    phantom.write_nifti(batch / "sagittal_LEFT.nii.gz", pixels, side="LEFT")
    phantom.write_dicom_series(batch / "sagittal", pixels, side="LEFT", patient=spec.patient, seed=0)
    proc = _cli(batch, "--run", env["run"], "--results-file", tmp_path / "r.csv")
    assert proc.returncode == driver.EXIT_FAILED, proc.stderr
    assert "4 scans (8 slices): 2 classified" in proc.stdout and ", 2 failed" in proc.stdout
    lines = proc.stdout.splitlines()
    axial = next(line for line in lines if line.split()[0].endswith(os.path.join("batch", "axial")))
    coronal = next(line for line in lines if "coronal_LEFT" in line)
    for line, plane in ((axial, "an axial"), (coronal, "a coronal")):
        assert f"failed: it is {plane} scan (orientation " in line and "trained on sagittal slices" in line
        assert ". " not in line.split("failed: ", 1)[1]  # one sentence
    with open(tmp_path / "r.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["level"] == "scan"]
    geometry = {os.path.basename(r["scan"]): (r["verdict"] != "failed", r["plane"], r["orientation"]) for r in rows}
    assert geometry == {"axial": (False, "", ""), "coronal_LEFT.nii.gz": (False, "", ""),
                        "sagittal_LEFT.nii.gz": (True, "sagittal", "IAL"), "sagittal": (True, "sagittal", "IAL")}


@pytest.mark.slow
def test_the_reference_runs_per_scan_verdicts_match_its_metrics_json(tmp_path):
    """driver.py on goliath's test split (its 34 scans rendered again by the phantom, byte-identical) gives the images
    and scans right that goliath/metrics.json reports."""
    run = os.path.join(REPO, "goliath")
    with open(os.path.join(run, runs.CONFIG)) as f:
        made = json.load(f)["data"]["phantom"]
    with open(os.path.join(run, runs.SPLIT), newline="") as f:
        names = {os.path.basename(row["path"]) for row in csv.DictReader(f) if row["split"] == "test"}
    specs = [s for s in phantom.plan_population(made["patients"], made["seed"]) if s.filename(0) in names]
    for spec in specs:
        for k, pixels in enumerate(phantom.scan_pixels(made["seed"], spec, made["slices"])):
            Image.fromarray(pixels, mode="L").save(tmp_path / spec.filename(k))
    # 1,360 slices through goliath take about a minute on the 2-core CPU; the limit only guards against a hang
    proc = _cli("--data-root", tmp_path, "--results-file", tmp_path / "r.json", "--min-confidence", "0.5", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no TensorFlow start-up lines, no XLA constant-folding E-lines
    note = f"Trained on synthetic data only: knee MRI drawn by phantom.py ({made['patients']} patients, "
    assert proc.stdout.splitlines()[-1].startswith(note)  # said under the summary: goliath never saw a real knee
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["settings"]["data_note"].startswith(note)
    with open(os.path.join(run, "metrics.json")) as f:
        metrics_json = json.load(f)
    scans = saved["scans"]
    assert len(scans) == metrics_json["per_scan"]["total"] == len(specs)
    assert sum(s["predicted"] == s["expected"] for s in scans) == metrics_json["per_scan"]["correct"]
    assert sum(len(s["slices"]) for s in scans) == metrics_json["images"] == len(names)
    right = sum(x["predicted"] == s["expected"] for s in scans for x in s["slices"])
    assert right == metrics_json["correct"]


def test_dicom_modality_lut_and_rescale_are_applied(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4) * 100  # 0..2300, two frames
    _write_dicom(tmp_path / "rescaled.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024)
    frames, side = volumes.read_dicom(tmp_path / "rescaled.dcm")
    np.testing.assert_array_equal(np.stack(frames), stored * 2.0 - 1024)  # negative values too: not wrapped uint16
    assert side is None
    # a Modality LUT Sequence (no slope/intercept to read): stored value v maps to lut[v - 100], values below 100 to lut[0]
    lut = (np.arange(4096) * 7 % 4096).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 100, 16])  # entries, first stored value mapped, bits per entry
    item.add_new("LUTData", "US", lut.tolist())
    item.ModalityLUTType = "US"  # unspecified units
    _write_dicom(tmp_path / "lut.dcm", stored, ModalityLUTSequence=Sequence([item]), ImageLaterality="L")
    frames, side = volumes.read_dicom(tmp_path / "lut.dcm")
    np.testing.assert_array_equal(np.stack(frames), lut[np.clip(stored.astype(int) - 100, 0, 4095)])
    assert side == "left"
    # an identity rescale, as many MR headers carry, leaves 8-bit pixels 8-bit (so they are not rescaled to 0..255)
    small = (np.arange(12, dtype=np.uint8) * 3).reshape(1, 3, 4)
    _write_dicom(tmp_path / "plain.dcm", small, RescaleSlope=1, RescaleIntercept=0)
    (frame,), _ = volumes.read_dicom(tmp_path / "plain.dcm")
    assert frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, small[0])


def test_missing_optional_reader_names_the_package(env, tmp_path, monkeypatch):
    (tmp_path / "x.nii.gz").write_bytes(b"\x00" * 400)
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel now raises ImportError
    inputs, _ = driver.find_inputs([tmp_path / "x.nii.gz"])
    (r,) = driver.classify(driver.Predictor(env["loaded"]), inputs)
    assert r.error == "reading NIfTI needs nibabel: pip install nibabel"


def test_explain_writes_one_image_per_input_with_attention(env, tmp_path):
    paths = env["paths"][:3]
    inputs, _ = driver.find_inputs(paths)
    results, images = driver.classify(driver.Predictor(env["loaded"]), inputs, keep_images=True)
    written = driver.explain(env["loaded"], inputs, results, images, tmp_path / "ex")
    assert len(written) == 3 and len(set(written)) == 3
    maps = env["loaded"].model.attention_heatmaps(dataset.normalize(images[0]))[0]
    assert maps.shape == (2, SIZE, SIZE) and maps.std() > 0  # the attention is not flat
    for path in written:
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
        h, w, _ = rgb.shape
        assert w > 2.2 * h  # three panels side by side
        chroma = rgb.max(-1) - rgb.min(-1)  # 0 on the grayscale input, the heat overlay is coloured
        inner = slice(int(0.3 * h), int(0.85 * h))
        input_panel, last_panel = chroma[inner, int(0.04 * w):int(0.26 * w)], chroma[inner, int(0.66 * w):int(0.86 * w)]
        assert input_panel.max() < 10
        assert last_panel.std() > 5  # a heat map that varies over the image, not a flat tint


def test_mismatched_weights_are_refused_clearly(env, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(env["run"], bad)
    config = json.loads((bad / runs.CONFIG).read_text())
    config["model"]["latent_dim"] = 64  # the weights were made for 32
    config["train"]["preset"] = "tiny"
    runs.write_config(bad, config)  # with its checksum: the weights, not the edit, are what must be refused here
    with pytest.raises(driver.UserError, match="do not fit the model"):
        driver.load(bad)
    proc = _cli(env["paths"][0], "--run", bad)
    assert proc.returncode == driver.EXIT_USAGE
    last = proc.stderr.strip().splitlines()[-1]  # lines before it are TensorFlow's start-up chatter
    assert last.startswith("error: the weights in") and "Traceback" not in proc.stderr
    assert "the model needs (8, 64)" in last, last  # the latent array: 8 latents of width 64, not 32


def test_usage_errors_are_one_sentence(env, tmp_path):
    cases = [
        (["nope/*.png", "--run", env["run"]], "no files match the pattern"),
        ([tmp_path / "missing.png", "--run", env["run"]], "does not exist"),
        ([env["paths"][0], "--run", tmp_path / "no-run"], "does not exist"),
    ]
    (tmp_path / "a.txt").write_text("x")
    cases.append(([tmp_path / "a.txt", "--run", env["run"]], "not a supported file type"))
    for args, words in cases:
        proc = _cli(*args)
        assert proc.returncode == driver.EXIT_USAGE, (args, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and words in last and "Traceback" not in proc.stderr


def test_test_split_accuracy_and_confusion(env):
    import io

    args = driver.build_parser().parse_args(["--run", env["right"]])
    out = io.StringIO()
    assert driver.run(args, out=out) == 0
    text = out.getvalue()
    records, split = dataset.read_manifest(os.path.join(env["right"], runs.SPLIT), root=env["data"])
    labels = [r.label for r in records if split[r.path] == "test"]
    n_right = labels.count("right")
    assert f"accuracy {n_right / len(labels):.4f} ({n_right}/{len(labels)} images)" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.split()[:1] in (["left"],
                                                                                                   ["right"])}
    assert rows == {"left": ["0", str(len(labels) - n_right)], "right": ["0", str(n_right)]}


def test_keras_file_loads_in_safe_mode(env, tmp_path):
    path = tmp_path / "m.keras"
    env["loaded"].model.save(path)
    loaded = driver.load(path)
    assert loaded.classes == ["left", "right"] and loaded.image_size == (SIZE, SIZE)
    x = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    np.testing.assert_allclose(driver.Predictor(loaded).logits(x), driver.Predictor(env["loaded"]).logits(x),
                               atol=1e-6)
