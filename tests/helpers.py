"""What several test files build the same way: a small run folder with random weights, a DICOM file with some
header elements changed. Imported by the tests as `helpers` (pytest puts tests/ on sys.path)."""

import os
import re
import shutil
import subprocess
import sys

import pydicom



REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLIATH = os.path.join(REPO, "goliath")


def cli(script, *args, cwd=REPO):
    """Runs a command of the project (`driver.py`, `train.py`, ...) as a user would; the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.join(REPO, script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def module_command(name, *args):
    """Runs `python -m NAME ARGS` in the project folder; the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", name, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


_RUNTIME_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \d\d:\d\d:\d\d)")


def own_lines(stderr):
    """The non-empty lines of a command's stderr that are its own: TensorFlow and XLA's C++ log lines (absl's
    `I0000 00:00:... service.cc:148] XLA service ... initialized`), which some TensorFlow versions print when a model
    is first compiled, whatever TF_CPP_MIN_LOG_LEVEL says, are left out. The commands' start-up is kept quiet
    (errors.quiet_tensorflow, tested on its own); this lets a test check the command's words on every version."""
    return [line for line in stderr.strip().splitlines() if line.strip() and not _RUNTIME_LOG.match(line)]


def one_sentence(text):
    """Whether stderr holds exactly one line of the command's own (`own_lines`) and no traceback."""
    return len(own_lines(text)) == 1 and "Traceback" not in text


def small_knees(tmp_path_factory):
    """A small phantom set: 2 patients, 2 slices per scan (for a module-scoped `knees` fixture)."""
    from perceiver import phantom

    root = tmp_path_factory.mktemp("faults") / "knees"
    phantom.generate(root, patients=2, slices=2, progress=False)
    return root


def goliath_copy(tmp_path):
    """A copy of the shipped run (without its TensorBoard logs) to damage."""
    run = tmp_path / "run"
    shutil.copytree(GOLIATH, run, ignore=shutil.ignore_patterns("tensorboard"))
    return run

def tiny_run(tmp, *, seed=0, edit=None):
    """A run folder of the `tiny` preset (16 x 16 inputs) with random weights (keras seed `seed`) on an 8-patient
    phantom set in `tmp`/data, as train.py writes one: config.json, split.csv, model.weights.h5. `edit(model)`, if
    given, changes the model before its weights are saved (NaN weights, say). Returns the folder."""
    import keras

    from perceiver import dataset, phantom, runs
    from perceiver.modules import PerceiverConfig, build_model

    data = tmp / "data"
    phantom.generate(data, patients=8, slices=4, height=64, width=72, progress=False)
    found = dataset.discover(data)
    split = dataset.split_by_patient(found.records, seed=0)
    keras.utils.set_random_seed(seed)
    config = PerceiverConfig.preset("tiny", input_shape=(16, 16, 3), num_classes=2)
    run = tmp / "run"
    run.mkdir()
    runs.write_config(run, {
        "train": {"preset": "tiny"}, "model": config.to_dict(),
        "data": {"root": str(data), "layout": "akoa", "classes": ["left", "right"], "image_size": [16, 16],
                 "channels": 3}})
    dataset.write_manifest(run / runs.SPLIT, found.records, split, root=data)
    model = build_model(config)
    if edit is not None:
        edit(model)
    runs.atomic_save_weights(model, run / runs.BEST_WEIGHTS)
    return run


def edit_dicom(path, out, **changes):
    """A copy of the DICOM file `path` at `out` with each keyword set to its value (None: the element removed)."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(out)
    return out
