"""Fault injection: each case makes its fault from scratch (a damaged weights file or resume state, weights that give
NaN, a closed pipe, an output path that cannot be written, a manifest that points outside the data folder, a write
that fails half way) and asserts the clear outcome and that nothing was lost or left behind.
"""

import csv
import dataclasses
import json
import os
import re
import shutil
import pathlib
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from perceiver import dataset
from perceiver import phantom
from perceiver import runs
import train
from perceiver import nifti
from perceiver import volumes
from perceiver.modules import PerceiverConfig, build_model

from helpers import GOLIATH, REPO, cli, one_sentence, small_knees, tiny_run


@pytest.fixture(scope="module")
def knees(tmp_path_factory):
    return small_knees(tmp_path_factory)


def _flip_bit(path, dataset_name, byte=3, mask=0x40):
    """Flips one bit inside the stored array `dataset_name` of an HDF5 file, as a failing disk or a bad copy would."""
    with h5py.File(path, "r") as f:
        offset = f[dataset_name].id.get_offset()
    data = bytearray(open(path, "rb").read())
    data[offset + byte] ^= mask
    open(path, "wb").write(bytes(data))


# === Damaged files are detected, never used ===
def test_the_shipped_weights_match_their_recorded_checksums():
    for name in (runs.BEST_WEIGHTS, runs.LAST_WEIGHTS):
        path = os.path.join(GOLIATH, name)
        recorded, file_name = open(runs.checksum_path(path)).read().split()
        assert file_name == name and recorded == runs.sha256_file(path)
        assert runs.verify_checksum(path) is True


def test_one_flipped_bit_in_the_weights_is_refused_naming_the_file(knees, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(GOLIATH, damaged, ignore=shutil.ignore_patterns("tensorboard"))
    _flip_bit(damaged / runs.BEST_WEIGHTS, "final_norm/vars/1")  # the case: left became "right 1.0000"
    proc = cli("driver.py", knees, "--run", damaged)
    assert proc.returncode == 2, proc.stdout
    assert one_sentence(proc.stderr) and proc.stdout == ""
    assert (f"{damaged / runs.BEST_WEIGHTS} does not match the SHA-256 recorded in model.weights.h5.sha256"
            in proc.stderr)
    # the last weights are untouched and still load
    assert cli("driver.py", knees, "--run", damaged, "--weights", "last").returncode == 0


def test_weights_without_a_checksum_load_with_a_warning(knees, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(GOLIATH, old, ignore=shutil.ignore_patterns("tensorboard", "*.sha256"))
    proc = cli("driver.py", knees, "--run", old)
    assert proc.returncode == 0, proc.stderr
    assert "has no recorded checksum" in proc.stderr
    # every scan gets a verdict (which one is the model's business), none fails
    assert re.search(r"\b2 scans \(4 slices\): ", proc.stdout) and ", 0 failed" in proc.stdout, proc.stdout


def test_a_damaged_resume_state_is_refused_before_it_is_used(tmp_path):
    import keras

    config = PerceiverConfig.preset("tiny", input_shape=(16, 16, 3), num_classes=2)
    model = build_model(config)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    path = tmp_path / runs.STATE
    runs.save_state(path, model, 3, 0.5, 2)
    assert runs.checksum_path(path).is_file() and runs.load_state(path, model) == (3, 0.5, 2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(runs.RunError, match="does not match the SHA-256 recorded in resume_state.npz.sha256"):
        runs.load_state(path, model)
    assert not list(tmp_path.glob(".tmp-*"))  # the writes left no temporary file


def test_nan_weights_give_failures_and_valid_json_never_a_verdict(knees, tmp_path):
    """Weights that are intact on disk (their checksum matches) but produce NaN: every input fails, exit 1."""
    def nan_logits(model):
        kernel, bias = model.classifier.get_weights()
        model.classifier.set_weights([np.full_like(kernel, np.nan), bias])

    run = tiny_run(tmp_path, edit=nan_logits)
    proc = cli("driver.py", knees, "--run", run, "--results-file", tmp_path / "r.json")
    assert proc.returncode == 1, proc.stderr
    assert "0 classified" in proc.stdout and "non-finite output" in proc.stdout
    text = (tmp_path / "r.json").read_text()

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    saved = json.loads(text, parse_constant=refuse)
    assert saved["summary"]["classified"] == 0 and saved["summary"]["failed"] == saved["summary"]["scans"] > 0
    assert all(s["verdict"] == "failed" and s["probability"] is None for s in saved["scans"])


# === Results are never lost ===
def test_a_closed_pipe_loses_no_results_and_prints_no_traceback(knees, tmp_path):
    out = tmp_path / "out.csv"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = f"{sys.executable} {os.path.join(REPO, 'driver.py')} {knees} --results-file {out} | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.stdout.startswith("scan") and len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    images = len(dataset.discover(knees).records)
    assert sum(r["level"] == "slice" for r in rows) == images  # every slice is in the file


# === Manifests name images inside the data folder, nothing else ===
def test_a_manifest_that_points_outside_the_data_folder_is_refused(knees, tmp_path):
    secret = tmp_path / "secret_LEFT.nii.gz_0.png"
    shutil.copy(next(knees.glob("*.png")), secret)
    manifest = tmp_path / "split.csv"
    found = dataset.discover(knees)
    split = dataset.split_by_patient(found.records, seed=0)
    dataset.write_manifest(manifest, found.records, split, root=knees)
    rows = manifest.read_text().splitlines()
    rows.append(f"../{secret.name},OAI0000001,left,train,OAI0000001_0_left,0,0")
    manifest.write_text("\n".join(rows) + "\n")
    with pytest.raises(dataset.DataError, match=r"lies outside the data folder"):
        dataset.read_manifest(manifest, root=knees)
    proc = cli("train.py", "--data", knees, "--split-manifest", manifest, "--out", tmp_path / "run",
                "--epochs", "1", "--quiet")
    assert proc.returncode == 2 and "lies outside the data folder" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_manifest_write_that_fails_leaves_no_temporary_file(knees, tmp_path, monkeypatch):
    found = dataset.discover(knees)
    split = dataset.split_by_patient(found.records, seed=0)

    def disk_full(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OSError, match="No space left"):
        dataset.write_manifest(tmp_path / "split.csv", found.records, split, root=knees)
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "r.csv").write_text("the old results")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        runs.atomic_write_text(tmp_path / "r.csv", "new results")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"] and (tmp_path / "r.csv").read_text() == (
        "the old results")


def test_a_leftover_temporary_file_does_not_block_the_next_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / f".tmp-{os.getpid() + 1}-split.csv").write_text("half")  # a killed run's
    (out / "split.csv.tmp12345").write_text("half")
    assert train.prepare_run_folder(train.parse_settings(["--out", str(out)])) == out
    (out / "notes.txt").write_text("mine")
    with pytest.raises(train.UsageError, match="already exists and is not empty"):
        train.prepare_run_folder(train.parse_settings(["--out", str(out)]))


# === Names are data ===
def _strict_env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONIOENCODING="utf-8:strict", LC_ALL="C.UTF-8")


def test_a_name_that_is_not_utf8_survives_every_output(knees, tmp_path):
    folder = os.path.join(os.fsencode(tmp_path), b"scans\xff")  # a folder name with a byte that is not UTF-8
    os.mkdir(folder)
    images = sorted(knees.glob("*.png"))[:2]
    for image in images:
        shutil.copy(image, os.path.join(folder, os.fsencode(image.name)))
    driver_py = os.path.join(REPO, "driver.py")
    for out in ("r.csv", "r.json"):
        proc = subprocess.run([sys.executable, driver_py, os.fsdecode(folder), "--results-file", tmp_path / out],
                              capture_output=True, env=_strict_env(), cwd=REPO, timeout=300)
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
        assert b"scans\\udcff" in proc.stdout  # a visible escape on the terminal
    with open(tmp_path / "r.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = [r for r in csv.DictReader(f) if r["level"] == "slice"]
    wanted = sorted(os.path.join(folder, os.fsencode(i.name)) for i in images)
    assert sorted(os.fsencode(r["file"]) for r in rows) == wanted  # the CSV holds the very bytes of the names
    assert b"scans\xff" in (tmp_path / "r.csv").read_bytes()
    saved = json.loads((tmp_path / "r.json").read_text())
    files = [os.fsencode(x["file"]) for scan in saved["scans"] for x in scan["slices"]]
    assert sorted(files) == wanted  # lossless


def test_split_csv_keeps_a_name_that_is_not_utf8(knees, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for image in sorted(knees.glob("*.png")):
        shutil.copy(image, folder / image.name)
    odd = os.path.join(os.fsencode(folder), b"extra\xff")
    os.mkdir(odd)
    found = dataset.discover(folder)
    records = [dataclasses.replace(r, path=os.fsdecode(os.path.join(odd, os.fsencode(os.path.basename(r.path)))))
               if i == 0 else r for i, r in enumerate(found.records)]
    split = dataset.split_by_patient(records, seed=0)
    dataset.write_manifest(tmp_path / "split.csv", records, split, root=folder)
    back, back_split = dataset.read_manifest(tmp_path / "split.csv", root=folder)
    assert [r.path for r in back] == [r.path for r in records] and back_split == split


def test_dataset_summary_prints_a_name_that_is_not_utf8(knees, tmp_path):
    folder = os.path.join(os.fsencode(tmp_path), b"data")
    os.mkdir(folder)
    for image in sorted(knees.glob("*.png")):
        shutil.copy(image, os.path.join(folder, os.fsencode(image.name)))
    with open(os.path.join(folder, b"OAI9999999_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT\xff.nii.gz_0.png"), "wb") as f:
        f.write(b"not a png")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "dataset.py"), "summary", os.fsdecode(folder),
                           "--no-cache"], capture_output=True, env=_strict_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert b"LEFT\\udcff.nii.gz_0.png" in proc.stdout


# === The image cache ===
def _damage_cache(cache, how):
    (npy,) = cache.glob("*.npy")
    (index,) = cache.glob("*.json")
    if how == "noise":  # the case: pixels overwritten with noise, header, dtype and shape intact
        header = len(npy.read_bytes()) - np.load(npy).nbytes
        data = bytearray(npy.read_bytes())
        data[header:] = np.random.default_rng(0).integers(0, 256, len(data) - header, dtype=np.uint8).tobytes()
        npy.write_bytes(bytes(data))
    elif how == "truncated":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif how == "index-garbage":
        index.write_text("{not json")
    elif how == "index-list":
        index.write_text("[]")
    elif how == "pixels-missing":
        npy.unlink()


@pytest.mark.parametrize("how", ["noise", "truncated", "index-garbage", "index-list", "pixels-missing"])
def test_a_damaged_cache_entry_is_decoded_again_with_a_warning_never_used(knees, tmp_path, capsys, how):
    paths = sorted(r.path for r in dataset.discover(knees).records)
    cache = tmp_path / "cache"
    first = dataset.load_images(paths, size=(16, 16), cache_dir=cache, progress=False, workers=1)
    assert not first.from_cache
    capsys.readouterr()
    _damage_cache(cache, how)
    again = dataset.load_images(paths, size=(16, 16), cache_dir=cache, progress=False, workers=1)
    err = capsys.readouterr().err
    assert not again.from_cache and np.array_equal(again.images, first.images)
    assert err.count("\n") == 1 and "are damaged" in err and "decoding them again" in err
    healed = dataset.load_images(paths, size=(16, 16), cache_dir=cache, progress=False, workers=1)
    assert healed.from_cache and np.array_equal(healed.images, first.images)  # the entry was replaced
    assert capsys.readouterr().err == ""


# === The generator never deletes what it did not write ===
SMALL = dict(patients=2, slices=2, height=32, width=32, progress=False, workers=1)


@pytest.mark.parametrize("name_clash", [False, True])
def test_rerunning_the_generator_keeps_images_a_user_added(tmp_path, name_clash):
    """A user's AKOA-named image in a phantom folder: a rerun with other settings would once have deleted it (or, with
    a name the new plan uses, overwritten it). Now the rerun is refused and the file is kept byte for byte."""
    first = phantom.generate(tmp_path, **SMALL)
    if name_clash:  # a name the rerun's plan (3 patients) will write, and the first set (2 patients) did not
        name = sorted({spec.filename(0) for spec in phantom.plan_population(3, 0)} - {p.name for p in first})[0]
    else:
        name = "OAI9999999_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_0.png"
    mine = tmp_path / name
    mine.write_bytes(b"a user's scan")
    with pytest.raises(ValueError, match="did not write .*never deletes or overwrites"):
        phantom.generate(tmp_path, **{**SMALL, "patients": 3})
    assert mine.read_bytes() == b"a user's scan" and all(p.is_file() for p in first)
    # the generator's own files are still its own: with the user's file moved away, the rerun replaces them
    mine.rename(tmp_path.parent / f"{tmp_path.name}-{name}")
    assert len(phantom.generate(tmp_path, **{**SMALL, "patients": 3})) > len(first)


def test_an_interrupted_generator_run_is_finished_by_the_next(tmp_path, monkeypatch):
    """phantom.partial lists what the interrupted run may have written, so the next run may replace those files."""
    phantom.generate(tmp_path, **SMALL)
    planned = [spec.filename(i) for spec in phantom.plan_population(3, 0) for i in range(2)]

    def killed(function, jobs, workers, progress):  # a run with 3 patients, killed after its first scan
        function(jobs[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(phantom, "_run_jobs", killed)
    with pytest.raises(KeyboardInterrupt):
        phantom.generate(tmp_path, **{**SMALL, "patients": 3})
    monkeypatch.undo()
    assert (tmp_path / "phantom.partial").is_file() and not (tmp_path / "phantom.json").exists()
    (tmp_path / planned[-1]).write_bytes(b"half written")  # the file it was writing when killed
    paths = phantom.generate(tmp_path, **{**SMALL, "patients": 3})
    assert len(paths) == len(planned) and (tmp_path / planned[-1]).read_bytes()[:4] == b"\x89PNG"


# === Volumes that declare more than they hold ===
def test_volumes_that_declare_a_huge_size_are_refused_before_their_pixels_are_read(knees, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    pytest.importorskip("pydicom")
    import gzip

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    # a NIfTI header that says 1024^3 int16 (2 GiB) in a file of a few hundred bytes
    image = nibabel.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    image.header.set_data_shape((1024, 1024, 1024))
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(image.header.binaryblock + b"\0" * 4 + b"\0" * 64))
    # a DICOM file that says 4096 frames of 8192 x 8192, with 16 bytes of pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 8192
    ds.Modality, ds.ImageOrientationPatient = "MR", [0, 1, 0, 0, 0, -1]  # a sagittal MR: the header rules let it by
    ds.NumberOfFrames, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4096, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = b"\0" * 16
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    for name in ("huge.nii.gz", "huge.dcm"):
        with pytest.raises(volumes.VolumeError, match=r"voxels, over the limit of 134,217,728"):
            (nifti.read_nifti if name.endswith(".gz") else volumes.read_dicom)(tmp_path / name)
    good = next(knees.glob("*.png"))
    shutil.copy(good, tmp_path / good.name)
    proc = cli("driver.py", tmp_path)
    assert proc.returncode == 1 and "1 classified" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.count("over the limit of 134,217,728") == 2


# === Clear errors instead of tracebacks ===
def _fake_run(folder, **train):
    """A run folder with a resume state and the config.json train.py writes (its "train" settings)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"preset": "tiny", "epochs": 2, "lr": 0.001, "batch_size": 16, "seed": 0, "workers": None, **train}
    runs.atomic_write_json(folder / runs.CONFIG, {"train": settings, "model": {}, "data": {}})
    (folder / runs.STATE).write_bytes(b"PK not really")
    return folder


@pytest.mark.parametrize("case", ["out-is-file", "resume-no-config", "resume-other-lr", "resume-other-config"])
def test_train_refuses_in_one_sentence(tmp_path, case):
    out = tmp_path / "run"
    extra = []
    if case == "out-is-file":
        out.write_text("my notes")
        want = f"--out {out} is a file"
    elif case == "resume-no-config":
        _fake_run(out)
        (out / runs.CONFIG).unlink()
        extra, want = ["--resume"], f"has a {runs.STATE} but no {runs.CONFIG}"
    elif case == "resume-other-lr":
        _fake_run(out)
        extra, want = ["--resume", "--lr", "0.01"], "--lr 0.01 (the run's: 0.001) differs"
    else:
        _fake_run(out)
        (tmp_path / "c.json").write_text(json.dumps({"epochs": 5}))
        extra, want = ["--resume", "--config", tmp_path / "c.json"], "--epochs 5 (the run's: 2) differs"
    proc = cli("train.py", "--out", out, *extra)
    assert proc.returncode == 2 and one_sentence(proc.stderr) and want in proc.stderr, proc.stderr
    assert "--run" not in proc.stderr  # driver.py's option is not train.py's
    if case == "out-is-file":
        assert out.read_text() == "my notes"


def test_resume_with_the_runs_own_flags_is_accepted(tmp_path):
    out = _fake_run(tmp_path / "run")
    args = train.parse_settings(["--out", str(out), "--resume", "--lr", "0.001", "--epochs", "2", "--workers", "1"])
    assert train.prepare_run_folder(args) == out and args.lr == 0.001 and args.epochs == 2
    assert args.workers == 1  # how fast, not what: a resume may change it


def test_a_truncated_resume_state_without_checksum_is_one_sentence(tmp_path):
    import keras

    config = PerceiverConfig.preset("tiny", input_shape=(16, 16, 3), num_classes=2)
    model = build_model(config)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    path = tmp_path / runs.STATE
    runs.save_state(path, model, 1, 0.5, 1)
    runs.checksum_path(path).unlink()  # a run from before checksums
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(runs.RunError, match=r"the resume state .* cannot be used .*start a new run"):
        runs.load_state(path, model)


def test_a_manifest_whose_images_are_mostly_missing_names_the_manifest(knees, tmp_path):
    found = dataset.discover(knees)
    manifest = tmp_path / "split.csv"
    dataset.write_manifest(manifest, found.records, dataset.split_by_patient(found.records, seed=0), root=knees)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(found.records[0].path, elsewhere)  # the right name in the wrong folder: the rest are missing
    proc = cli("train.py", "--data", elsewhere, "--split-manifest", manifest, "--out", tmp_path / "run", "--quiet")
    assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
    assert f"images that the manifest {manifest} lists are missing under" in proc.stderr
    assert "--split" not in proc.stderr.replace("--split-manifest", "")


@pytest.mark.parametrize("command", [["driver.py"], ["dataset.py", "summary"], ["train.py", "--quiet", "--data"]])
def test_a_symlink_loop_is_not_reported_as_missing(tmp_path, command):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    proc = cli(*command, loop, *(["--out", tmp_path / "run"] if command[0] == "train.py" else []))
    assert proc.returncode == 2 and "symbolic link that leads nowhere" in proc.stderr, proc.stderr
    assert "does not exist" not in proc.stderr and one_sentence(proc.stderr)


def test_linked_and_unreadable_sub_folders_are_named_and_counted_never_passed_over_silently(knees, tmp_path):
    """driver.py skipped a linked sub-folder and an unreadable one without a word. Tests run as root, whom chmod
    does not stop, so the unreadable folder is one that vanishes between listing and reading (os.walk's error path,
    the same one a permission error takes)."""
    scans = tmp_path / "scans"
    (scans / "a").mkdir(parents=True)
    shutil.copy(sorted(knees.glob("*.png"))[0], scans / "a")
    os.symlink(knees, scans / "linked")  # a link inside the archive: not followed
    os.symlink(scans, scans / "a" / "loop")  # a loop: must not hang nor count twice
    code = ("import os, sys, driver\n"
            "real = os.scandir\n"
            "def scandir(path='.'):\n"
            "    if os.path.basename(os.fspath(path)) == 'gone': raise PermissionError(13, 'Permission denied', path)\n"
            "    return real(path)\n"
            "os.scandir = scandir\n"
            "sys.exit(driver.main(sys.argv[1:]))\n")
    (scans / "gone").mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", code, scans, "--results-file", tmp_path / "r.json"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipped the folder")]
    assert len(warnings) == 3, proc.stderr
    assert any(f"{scans / 'linked'}: it is a symbolic link" in w for w in warnings)
    assert any(f"{scans / 'a' / 'loop'}: it is a symbolic link" in w for w in warnings)
    assert any(f"{scans / 'gone'}: it cannot be read (Permission denied)" in w for w in warnings)
    assert "(3 other entries ignored: 2 linked folders, not followed, 1 unreadable folder)" in proc.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["summary"]["ignored_by_reason"] == {"link": 2, "unreadable": 1} and len(saved["scans"]) == 1


def test_dataset_summary_fails_alike_on_an_empty_folder_and_on_one_without_a_usable_image(tmp_path):
    empty, junk = tmp_path / "empty", tmp_path / "junk"
    empty.mkdir()
    junk.mkdir()
    (junk / "OAI9999999_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_0.png").write_bytes(b"not a png")
    codes = [cli("dataset.py", "summary", folder, "--no-cache").returncode for folder in (empty, junk)]
    assert codes == [2, 2]
    proc = cli("dataset.py", "summary", junk, "--no-cache")
    assert "no usable image" in proc.stderr and "OAI9999999" in proc.stdout  # the summary says which file, and why


# === Inputs that show no knee ===
def test_blank_and_tiny_images_are_unsuitable_never_a_side(knees, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((228, 260), np.uint8)).save(tmp_path / "black_LEFT.png")
    Image.fromarray(np.full((228, 260), 200, np.uint8)).save(tmp_path / "white.png")
    Image.fromarray(np.full((1, 1), 90, np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 300), dtype=np.uint8)).save(tmp_path / "strip.png")
    good = next(knees.glob("*.png"))
    shutil.copy(good, tmp_path / good.name)
    proc = cli("driver.py", tmp_path, "--results-file", tmp_path / "r.json")
    assert proc.returncode == 1, proc.stderr
    assert "5 scans (1 slice): 1 classified" in proc.stdout and "4 failed" in proc.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    reasons = {os.path.basename(s["scan"]): s["failed_files"][0]["error"] for s in saved["scans"] if s["failed_files"]}
    assert reasons["black_LEFT.png"] == "unsuitable: every pixel has the value 0, a blank image that shows no knee"
    assert reasons["white.png"].startswith("unsuitable: every pixel has the value 200")
    assert reasons["dot.png"].startswith("unsuitable: it is 1 x 1 pixels, too small to show a knee")
    assert reasons["strip.png"].startswith("unsuitable: it is 300 x 20 pixels")


@pytest.mark.parametrize("option", ["--results-file", "--report"])
@pytest.mark.parametrize("target", ["an-input", "the-weights", "the-config", "the-run-report"])
def test_a_results_file_or_report_never_overwrites_an_input_or_the_run(knees, tmp_path, target, option):
    run = tmp_path / "run"
    shutil.copytree(GOLIATH, run, ignore=shutil.ignore_patterns("tensorboard"))
    path = {"an-input": next(knees.glob("*.png")), "the-weights": run / runs.BEST_WEIGHTS,
            "the-config": run / runs.CONFIG, "the-run-report": run / runs.REPORT}[target]
    before = path.read_bytes()
    proc = cli("driver.py", knees, "--run", run, option, path)
    assert proc.returncode == 2 and one_sentence(proc.stderr) and "would destroy it" in proc.stderr, proc.stderr
    assert path.read_bytes() == before


def test_explanations_into_the_inputs_folder_are_refused_before_any_work(knees, tmp_path):
    """`driver.py DIR --explain DIR` overwrote an input named like an explanation (k.png's is k.explain.png); an
    --explain folder that already holds files is now refused before the model loads, and nothing is touched."""
    scans = tmp_path / "scans"
    shutil.copytree(knees, scans)
    first = sorted(scans.glob("*.png"))[0]
    shutil.copy(first, scans / (first.stem + ".explain.png"))  # a user's image, and an input too
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    proc = cli("driver.py", scans, "--explain", scans)
    assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
    assert f"--explain {scans} already holds {len(before)} entries" in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before


@pytest.mark.parametrize("pair", [("--report", "--explain"), ("--results-file", "--explain"),
                                  ("--results-file", "--report")])
def test_two_outputs_on_one_path_are_refused_before_any_work(knees, tmp_path, pair):
    """--report and --explain on one path failed only after the work (the report was a folder by then)."""
    target = tmp_path / "out"
    proc = cli("driver.py", knees, pair[0], target, pair[1], target)
    assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
    assert f"{pair[0]} and {pair[1]} are both {target}" in proc.stderr and not target.exists()


@given(stems=st.lists(st.sampled_from(["a", "a.explain", "b_slice0", "scan.series-1.2"]), min_size=1, max_size=8),
       present=st.sets(st.sampled_from(["a.explain.png", "a.explain-2.png", "a.explain-3.png", "a.explain.explain.png",
                                        "b_slice0.explain.png", "scan.series-1.2.explain.png"])))
@settings(max_examples=200, deadline=None)
def test_an_explanation_name_is_never_a_file_already_there(stems, present):
    """Whatever the folder holds (files that came after the check, or a library caller's folder), the names chosen
    for a run's explanations are new, distinct and explanation names."""
    import driver

    with tempfile.TemporaryDirectory() as folder:
        for name in present:
            pathlib.Path(folder, name).write_text("keep")
        used, chosen = set(), []
        for stem in stems:
            chosen.append(driver._explain_name(stem, used, folder))
        assert len(set(chosen)) == len(chosen) and not set(chosen) & present
        assert all(re.fullmatch(r".+\.explain(-\d+)?\.png", name) for name in chosen)


@pytest.mark.parametrize("option", ["--results-file", "--report"])
def test_no_file_the_run_wrote_is_replaced_by_an_output_plots_included(knees, tmp_path, option):
    """Every name of runs.RUN_FILES (the plots and tensorboard/ too: they were missing once, so
    --results-file goliath/roc.png would have written CSV over the ROC curve) is refused as an output path."""
    run = tmp_path / "run"
    shutil.copytree(GOLIATH, run, ignore=shutil.ignore_patterns("tensorboard"))
    assert set(runs.PLOTS) <= set(runs.RUN_FILES) and runs.TENSORBOARD in runs.RUN_FILES
    for name in runs.PLOTS + (runs.MODEL_FILE + runs.CHECKSUM_SUFFIX,):
        path = run / name
        before = path.read_bytes()
        proc = cli("driver.py", knees, "--run", run, option, path)
        assert proc.returncode == 2 and "is a file of the run" in proc.stderr, (name, proc.stderr)
        assert path.read_bytes() == before, name


