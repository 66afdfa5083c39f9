"""Fault injection, the run folder and the writes: the run folder as one checked unit (checksums, cross-checks,
ranges), one writer per run folder, and writes that survive a full disk and a closed or full standard output (issue
26, rules 1, 3 and 7). Each case makes its fault from scratch and asserts the clear outcome and that nothing was lost
or left behind.
"""

import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from helpers import GOLIATH, REPO, cli, goliath_copy, module_command, one_sentence, own_lines, small_knees
from perceiver import classifier
from perceiver import dataset
from perceiver import phantom
from perceiver import runs
from perceiver.errors import UsageError
from perceiver.modules import PerceiverConfig


@pytest.fixture(scope="module")
def knees(tmp_path_factory):
    return small_knees(tmp_path_factory)


# === Writes survive a full disk and a closed or full standard output ===
def _run_limited(args, *, max_file_bytes=None, patch="", cwd=REPO):
    """Runs a command of the project with a file-size limit (the kernel then fails each write past it with EFBIG, as
    a full disk fails it with ENOSPC, for every writer: Python's, HDF5's, Pillow's) and/or a patch applied first."""
    import resource
    import signal

    def limit():
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing

    script, *rest = map(str, args)
    code = (f"import runpy, sys\n{patch}\nsys.argv = {[script, *rest]!r}\n"
            f"runpy.run_path({os.path.join(REPO, script)!r}, run_name='__main__')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300, preexec_fn=limit)


def _leftovers(folder):
    return [p for p in pathlib.Path(folder).rglob("*") if p.name.startswith(".tmp-")]


def test_a_full_disk_at_the_first_weights_save_is_one_sentence_and_leaves_no_temporary_file(tmp_path):
    """HDF5 writing into a full disk printed pages of tracebacks, crashed with a segmentation fault and left
    .tmp-PID-last.weights.h5 behind: the space is now asked for first (fileio.ensure_space)."""
    data = tmp_path / "data"
    phantom.generate(data, patients=10, slices=2, height=64, width=72, progress=False)
    patch = ("import shutil, collections\n"
             "shutil.disk_usage = lambda path: collections.namedtuple('u', 'total used free')(10**9, 10**9, 1000)")
    proc = _run_limited(["train.py", "--data", data, "--preset", "tiny", "--image-size", "16", "--epochs", "1",
                         "--out", tmp_path / "run", "--quiet"], patch=patch)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error == [f"error: could not write {tmp_path / 'run' / runs.BEST_WEIGHTS}: No space left on device: "
                     f"{error[0].split('device: ')[1].split(' (')[0]} (the device is full, or a quota or file-size "
                     "limit was reached); free some space and run the command again (the files written before are "
                     "whole, and no partial file was left)."], proc.stderr
    assert "MiB needed, 0.00 MiB free" in error[0] and not _leftovers(tmp_path / "run")


def test_a_write_cut_short_by_the_kernel_names_the_file_and_leaves_nothing_half_written(knees, tmp_path):
    """The explanation images are larger than the limit, the results file is not: it is written whole, the first
    image that does not fit is named in one sentence, and no partial or temporary file is left."""
    out = tmp_path / "r.csv"
    proc = _run_limited(["driver.py", knees, "--results-file", out, "--explain", tmp_path / "ex"],
                        max_file_bytes=40_000)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(rf"error: could not write {re.escape(str(tmp_path / 'ex'))}/\S+\.explain\.png: File too "
                        r"large \(the device is full, .*", "\n".join(own_lines(proc.stderr))), proc.stderr
    rows = list(csv.DictReader(open(out, newline="")))
    assert sum(r["level"] == "slice" for r in rows) == len(dataset.discover(knees).records)
    assert not list((tmp_path / "ex").iterdir()) and not _leftovers(tmp_path)


def test_a_report_that_does_not_fit_is_one_sentence_and_an_older_one_is_kept_whole(knees, tmp_path):
    """--report into a device that is full (here: a file-size limit the report exceeds): the results file is written,
    the report is named in one sentence, and the report already there is left as it was, never half replaced."""
    out, report = tmp_path / "r.csv", tmp_path / "r.html"
    report.write_text("the report of an earlier run\n")
    proc = _run_limited(["driver.py", knees, "--results-file", out, "--report", report], max_file_bytes=10_000)
    assert proc.returncode != 0 and one_sentence(proc.stderr), proc.stderr
    assert str(report) in proc.stderr and "File too large" in proc.stderr, proc.stderr
    assert report.read_text() == "the report of an earlier run\n" and out.stat().st_size > 0
    assert not _leftovers(tmp_path)


def test_a_full_standard_output_is_one_sentence_after_the_files_are_written(knees, tmp_path):
    out = tmp_path / "r.csv"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, os.path.join(REPO, "driver.py"), knees, "--results-file", out],
                              stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert "\n".join(own_lines(proc.stderr)).startswith("error: could not write standard output: No space left on "
                                                         "device (the device is full"), proc.stderr
    assert one_sentence(proc.stderr) and out.stat().st_size > 0


@pytest.mark.parametrize("command", [["driver.py", "--report", "REPORT"], ["phantom.py", "OUT", "--patients", "1",
                                                                           "--slices", "1"]])
def test_a_closed_standard_output_is_said_once_and_the_files_are_written(knees, tmp_path, command):
    """`driver.py ... --report r.html >&-` ended in a traceback: Python makes a closed stdout None."""
    args = [str(tmp_path / "r.html") if a == "REPORT" else str(tmp_path / "out") if a == "OUT" else a
            for a in command]
    if command[0] == "driver.py":
        args.insert(1, str(knees))
    proc = subprocess.run([sys.executable, os.path.join(REPO, args[0]), *args[1:]], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=300,
                          preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    own = [line for line in own_lines(proc.stderr) if not line.startswith("phantom: ")]  # its progress line
    assert own == ["warning: standard output is closed, so what this command prints is dropped; the files it writes "
                   "are written as usual."], proc.stderr
    assert (tmp_path / "r.html").is_file() if command[0] == "driver.py" else any((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("option", ["results-folder", "results-is-dir", "explain-is-file", "report-folder",
                                    "report-is-dir", "report-is-the-results-file"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(knees, tmp_path, option):
    (tmp_path / "a-file").write_text("keep me")
    args = {"results-folder": ["--results-file", tmp_path / "missing" / "r.csv"],
            "results-is-dir": ["--results-file", tmp_path],
            "explain-is-file": ["--explain", tmp_path / "a-file"],
            "report-folder": ["--report", tmp_path / "missing" / "r.html"],
            "report-is-dir": ["--report", tmp_path],
            "report-is-the-results-file": ["--report", tmp_path / "a-file", "--results-file", tmp_path / "a-file"],
            }[option]
    proc = cli("driver.py", knees, *args, "--run", os.path.join(REPO, "no-such-run"))
    # refused before the run is even loaded: the message is about the output, not the missing run folder
    assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
    assert "no-such-run" not in proc.stderr and proc.stdout == ""
    assert (tmp_path / "a-file").read_text() == "keep me"


# === The run folder as one checked unit: what decides an answer is verified on load ===
def test_swapped_class_names_in_config_json_are_refused_not_inverted(knees, tmp_path):
    """Swapping the two class names in config.json inverted every answer at p ~ 0.9996 with exit 0; now config.json
    is checked against its recorded SHA-256, like the weights."""
    run = goliath_copy(tmp_path)
    config = json.loads((run / runs.CONFIG).read_text())
    config["data"]["classes"] = config["data"]["classes"][::-1]
    (run / runs.CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    proc = cli("driver.py", knees, "--run", run)
    assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
    assert f"{run / runs.CONFIG} does not match the SHA-256 recorded in config.json.sha256" in proc.stderr


@pytest.mark.parametrize("field, value, said", [
    ("temperature", 1e-300, "holds the temperature 1e-300, outside the 0.05 to 20"),
    ("temperature", "hot", "is not a valid calibration file"),
    ("min_confidence", 0.3, "holds the confidence threshold (min_confidence) 0.3, outside 0.5 to 1"),
])
def test_calibration_json_is_range_checked_and_named_even_with_a_matching_checksum(knees, tmp_path, field, value,
                                                                                     said):
    """A calibration.json rewritten with its checksum (so it verifies) is still checked as strictly as the fit and
    the flag that set it, and the message names the file, not a flag nobody gave."""
    run = goliath_copy(tmp_path)
    saved = json.loads((run / runs.CALIBRATION).read_text())
    saved[field] = value
    (run / runs.CALIBRATION).write_text(json.dumps(saved))
    runs.write_checksum(run / runs.CALIBRATION)
    proc = cli("driver.py", knees, "--run", run)
    assert proc.returncode == 2 and one_sentence(proc.stderr) and said in proc.stderr, proc.stderr
    assert str(run / runs.CALIBRATION) in proc.stderr and "--min-confidence" not in proc.stderr


def test_a_garbage_checksum_file_is_named_as_such_not_as_damaged_weights(knees, tmp_path):
    run = goliath_copy(tmp_path)
    (run / (runs.BEST_WEIGHTS + runs.CHECKSUM_SUFFIX)).write_text("hello world\n")
    proc = cli("driver.py", knees, "--run", run)
    assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
    assert "model.weights.h5.sha256 is not a SHA-256 record" in proc.stderr and "damaged" not in proc.stderr


def _edit_config(run, edit):
    config = json.loads((run / runs.CONFIG).read_text())
    edit(config)
    runs.write_config(run, config)  # with a matching checksum: the values themselves must be what is refused


def _goliath_model_config():
    return PerceiverConfig.from_dict(json.loads(open(os.path.join(GOLIATH, runs.CONFIG)).read())["model"])


@given(size=st.one_of(st.integers(-10**9, 10**9).map(lambda n: [n, 64]),
                      st.integers(-10**9, 10**9).map(lambda n: [64, n]),
                      st.lists(st.integers(1, 2000), min_size=0, max_size=4),
                      st.sampled_from([None, "64", [64.0, 64], [True, 64], {"h": 64}, [[64], 64]])),
       channels=st.one_of(st.integers(-5, 9), st.sampled_from([None, "3", 3.0, True])))
@settings(max_examples=300, deadline=None)
def test_a_recorded_input_size_is_range_checked_and_cross_checked_with_the_model(size, channels):
    """Whatever config.json records as the image size and channels, it is used only when train.py's flags could have
    written it and the model records the same: 100000 x 100000 asked for 15 GB before failing per input."""
    model_config = _goliath_model_config()
    data = {"image_size": size, "channels": channels}
    try:
        got = runs.check_input_size(data, model_config, "run/config.json")
    except runs.RunError as e:
        assert str(e).startswith("run/config.json records") and "\n" not in str(e)
    else:
        assert got == ((64, 64), 3) and size == [64, 64] and channels == 3 and type(channels) is int


@pytest.mark.parametrize("edit, said", [
    (lambda c: c["data"].update(image_size=[100000, 100000]), "records the image size [100000, 100000], not two "
                                                              "whole numbers from 4 to 1024"),
    (lambda c: c["data"].update(channels=1), "records images of 64 x 64 x 1 but its model takes 64 x 64 x 3"),
    (lambda c: c["data"].update(classes=c["data"]["classes"][::-1]), "disagree on the classes (left,right in "
                                                                     "model.keras, right,left in config.json)"),
])
def test_a_config_json_edited_with_its_checksum_is_still_refused_naming_it(knees, tmp_path, edit, said):
    """An edit that keeps config.json's checksum valid (a user who ran sha256sum again) is still caught: by the
    ranges of train.py's flags and by what model.keras records, for the run folder and for its model.keras."""
    run = goliath_copy(tmp_path)
    _edit_config(run, edit)
    for target in (run, run / runs.MODEL_FILE):
        proc = cli("driver.py", knees, "--run", target)
        assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
        assert said in proc.stderr and "config.json" in proc.stderr, proc.stderr


def test_model_keras_and_calibration_json_that_disagree_are_refused(knees, tmp_path):
    """calibration.json refitted by hand (with its checksum) but model.keras left as it was: a program given the
    folder and one given model.keras alone would answer differently, so neither is believed."""
    run = goliath_copy(tmp_path)
    saved = json.loads((run / runs.CALIBRATION).read_text())
    saved["temperature"] = 0.5
    runs.atomic_write_json(run / runs.CALIBRATION, saved)
    runs.write_checksum(run / runs.CALIBRATION)
    for target in (run, run / runs.MODEL_FILE):
        proc = cli("driver.py", knees, "--run", target)
        assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
        assert "disagree on the calibration (temperature 0.403521 and threshold 0.9 in model.keras, 0.5 and 0.9 in " \
               "calibration.json)" in proc.stderr, proc.stderr
    # the refit is the repair: it writes model.keras again from the folder, and then both agree
    assert module_command("perceiver.calibration", run).returncode == 0
    assert cli("driver.py", knees, "--run", run).returncode == 0


@given(keep=st.floats(0, 0.999))
@settings(max_examples=25, deadline=None)
def test_a_truncated_keras_file_is_called_truncated_not_missing(keep):
    """Keras says "File not found" for a cut .keras file; the loader says what it is, at any cut."""
    data = open(os.path.join(GOLIATH, runs.MODEL_FILE), "rb").read()
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "cut.keras"
        path.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(UsageError, match=r"cut.keras is not a complete .keras file \(a .keras file is a zip"):
            classifier.read_keras(path)


def test_the_shipped_run_verifies_every_file_that_decides_an_answer():
    for name in (runs.CONFIG, runs.CALIBRATION, runs.BEST_WEIGHTS, runs.MODEL_FILE):
        assert runs.verify_checksum(os.path.join(GOLIATH, name), warn=False), name


# === One writer per run folder ===
def test_a_second_writer_of_a_run_folder_is_refused_at_once_and_writes_nothing(knees, tmp_path):
    """Two trainings into one --out both reported success and one run was lost. Now the folder has one writer (an
    flock the system drops when the writer ends, however it ends): while one holds it, a training, a refit, a report
    or a redraw of that folder is refused in one sentence, and nothing in the folder changes."""
    from perceiver import fileio

    out = tmp_path / "new-run"
    with fileio.only_writer(out, command="the test"):  # as a training running there would
        proc = cli("train.py", "--data", knees, "--out", out, "--preset", "tiny", "--epochs", "1", "--quiet")
        assert proc.returncode == 2 and one_sentence(proc.stderr), proc.stderr
        assert f"is writing {out}; wait for it to finish, or give train.py --out another folder" in proc.stderr
        assert [p.name for p in out.iterdir()] == [fileio.LOCK]
    assert not out.exists()  # made by the writer and left empty: removed, so no empty run folder stays behind
    run = tmp_path / "run"
    shutil.copytree(GOLIATH, run, ignore=shutil.ignore_patterns("tensorboard"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with fileio.only_writer(run, command="the test"):
        for module in ("perceiver.calibration", "perceiver.htmlreport", "perceiver.plots"):
            proc = module_command(module, run)
            assert proc.returncode == 2 and one_sentence(proc.stderr), (module, proc.stderr)
            assert f"is writing {run}" in proc.stderr, (module, proc.stderr)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # the lock leaves no trace


def test_the_lock_is_reentrant_within_a_process_and_released_on_an_error(tmp_path):
    from perceiver import fileio

    folder = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with fileio.only_writer(folder, command="the test"):
            with fileio.only_writer(folder, command="the test"):  # a refit writing its report: the same writer
                (folder / "x").write_text("x")
                1 / 0
    assert [p.name for p in folder.iterdir()] == ["x"]  # released and removed on the way out
    with fileio.only_writer(folder, command="again"):  # and free again
        pass
