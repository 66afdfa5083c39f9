"""Run folders: the one home of their format, which `train.py` writes and `driver.py` and bench/ read.

A run folder holds `config.json` (every setting, the classes, the image size, versions, the command; `run_config`),
`split.csv`, the best and the last weights (`model.weights.h5`, `last.weights.h5`), `model.keras` (the best weights as
one self-describing model file: pre-processing, classes and calibration inside; classifier.py), `history.csv` (one
row per epoch, `HISTORY_COLUMNS`), `metrics.json`, `calibration.json` (calibration.py), the plots, `report.html`
(htmlreport.py), a TensorBoard log and, while training, `resume_state.npz` (`save_state`).
Inference rebuilds the model from `config.json` plus weights and never imports the training script; nothing is
unpickled (Keras `.weights.h5` files are plain HDF5 arrays, the resume state a plain `.npz`).

Checksums. Every weights file, model.keras and the resume state get a SHA-256 beside them when they are written, in
`<file>.sha256` (the format of `sha256sum`, so `cd RUN && sha256sum -c *.sha256` checks a whole folder by hand), and
loading verifies it: one flipped bit in a weights file otherwise turns a left knee into a confident right one. A file
that does not match is refused with one sentence naming it; a file with no checksum (a run from before they were
written) is loaded with a warning. The file is renamed into place first and its checksum second, so a kill between
the two renames (a moment) leaves a mismatch that is refused, never a damaged file that is used.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import pathlib
import platform
import re
import shlex
import sys
import zipfile

import h5py
import numpy as np

from perceiver import errors
from perceiver.errors import UserError, first_line
from perceiver import fileio
from perceiver import metrics
from perceiver import phantom

CONFIG = "config.json"
BEST_WEIGHTS = "model.weights.h5"
LAST_WEIGHTS = "last.weights.h5"
STATE = "resume_state.npz"  # weights + optimizer variables of the last completed epoch (for --resume)
HISTORY = "history.csv"
METRICS = "metrics.json"
SPLIT = "split.csv"
CALIBRATION = "calibration.json"  # the temperature fitted on the validation split, the default confidence threshold
REPORT = "report.html"  # the run's HTML report (htmlreport.py), written after metrics.json and the plots
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")
CHECKSUM_SUFFIX = ".sha256"
MODEL_FILE = "model.keras"  # the best weights with pre-processing, classes and calibration inside (classifier.py)
ACC_PLOT, LOSS_PLOT = "acc.png", "loss.png"  # training and validation per epoch (plots.plot_run)
CONFUSION_PLOT, ROC_PLOT, RELIABILITY_PLOT = "confusion.png", "roc.png", "reliability.png"  # the test split's
PLOTS = (ACC_PLOT, LOSS_PLOT, CONFUSION_PLOT, ROC_PLOT, RELIABILITY_PLOT)
TENSORBOARD = "tensorboard"  # a folder: Keras' TensorBoard logs
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 4, 1024  # train.py's --image-size, and what config.json may record: one home
CHANNELS = (1, 3)  # train.py's --channels
RUN_FILES = (CONFIG, BEST_WEIGHTS, LAST_WEIGHTS, STATE, HISTORY, METRICS, SPLIT, CALIBRATION,
             MODEL_FILE, REPORT, *PLOTS, TENSORBOARD)  # everything train.py writes: no command's output may replace one


PROJECT = pathlib.Path(__file__).resolve().parent.parent  # the checkout: the package is one folder below it


def portable_root(root):
    """The data folder as config.json records it: relative to the project when inside it, so a clone elsewhere
    (the shipped reference run) still finds the synthetic set; absolute otherwise."""
    root = pathlib.Path(root).resolve()
    try:
        return str(root.relative_to(PROJECT))
    except ValueError:
        return str(root)


def data_root(config, *, regenerate=True, progress=False):
    """The run's data folder as an absolute path. A synthetic set that is missing (a fresh clone) is made again:
    phantom.py is byte-identical for the same settings, so the recorded split still fits it."""
    data = config.get("data", {})
    root = pathlib.Path(data.get("root", ""))
    if not root.is_absolute():
        root = PROJECT / root
    params = data.get("phantom")
    if regenerate and params and not root.is_dir():
        print(f"making the synthetic knee set this run was trained on in {root} ...", flush=True)
        phantom.generate(root, patients=params["patients"], slices=params["slices"], seed=params["seed"],
                         progress=progress)
    return root


class RunError(UserError):
    """A run folder that cannot be used; the message is one sentence for the user."""


def atomic_write_text(path, text):
    """Writes text (UTF-8; a file name's undecodable byte, held as a surrogate escape, is written back as that byte)
    atomically and durably (`fileio.atomic`): a kill never leaves half a file in place and a failed write (a full
    disk) leaves no temporary file behind."""
    fileio.atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_json(path, obj):
    atomic_write_text(path, fileio.json_text(obj))


def atomic_save_weights(model, path):
    """Saves Keras weights to `path` atomically, with their checksum (see the module docstring)."""
    path = pathlib.Path(path)
    fileio.ensure_space(path, weights_bytes(model))
    tmp = fileio.temporary_name(path)
    try:
        model.save_weights(tmp)
        replace_with_checksum(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def weights_bytes(model):
    """A generous estimate of a weights file's size: the arrays' bytes plus a tenth, 4 kB a variable and 64 kB for
    HDF5's own records (goliath's best weights: 2.39 MiB estimated, 2.00 MiB on disk)."""
    arrays = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    return int(arrays * 1.1) + 4096 * len(model.weights) + 2**16


# === Checksums ===
def sha256_file(path):
    """The SHA-256 of a file's bytes, as 64 hexadecimal digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path):
    """Where the checksum of `path` is kept: `<path>.sha256`."""
    path = pathlib.Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path, digest=None):
    """Writes `path`'s SHA-256 (or `digest`, computed earlier) beside it, as `sha256sum` would."""
    path = pathlib.Path(path)
    atomic_write_text(checksum_path(path), f"{digest or sha256_file(path)}  {path.name}\n")


def replace_with_checksum(tmp, path):
    """Renames the written temporary file `tmp` over `path`, then records its checksum."""
    digest = sha256_file(tmp)
    fileio.replace(tmp, path)
    write_checksum(path, digest)


def verify_checksum(path, *, warn=True):
    """Checks `path` against the SHA-256 recorded beside it.

    Returns:
        True when it matches; False when no checksum is recorded (a warning on stderr with `warn`).

    Raises:
        RunError: naming the file when it does not match, or the checksum file cannot be read.
    """
    path = pathlib.Path(path)
    record = checksum_path(path)
    if not record.is_file():
        if warn:
            print(f"warning: {path} has no recorded checksum ({record.name}), so it cannot be verified; a run from "
                  "before checksums were written.", file=sys.stderr)
        return False
    try:
        recorded = record.read_text().split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise RunError(f"cannot read the checksum {record} ({e}); restore it, or delete it to load {path.name} "
                       "unverified.") from None
    if not re.fullmatch(r"[0-9a-f]{64}", recorded):  # garbage there says nothing about the file it guards
        raise RunError(f"{record} is not a SHA-256 record (64 hexadecimal digits, as sha256sum writes); restore it, "
                       f"or delete it to load {path.name} unverified.")
    if recorded != sha256_file(path):
        raise RunError(f"{path} does not match the SHA-256 recorded in {record.name}: the file is damaged (or was "
                       "replaced without its checksum); restore it from a copy or train the run again.")
    return True


def versions():
    """Versions of Python and of the libraries that shaped the run (those imported by now)."""
    out = {"python": platform.python_version()}
    for name in ("keras", "numpy", "tensorflow", "jax", "torch", "PIL"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    if "keras" in sys.modules:
        out["backend"] = sys.modules["keras"].backend.backend()
    return out


def command_line(script, argv):
    """The command as a user would type it in the project folder, e.g. `python train.py --out goliath`."""
    return shlex.join(["python", pathlib.Path(script).name, *argv])


def run_config(*, train, model, data, seed, backend, devices, command, parameters):
    """config.json's content: `train` the settings, `model` the PerceiverConfig dict, `data` where the images came
    from and how they were split and scaled, and what the run ran on."""
    return {"train": train, "model": model, "data": data, "seed": seed, "backend": backend, "devices": devices,
            "versions": versions(), "command": command, "parameters": parameters}


def read_history(path):
    """history.csv's rows as dicts of strings; no file: no rows."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


def write_history(path, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def resume_history(path, start):
    """The rows of history.csv for epochs 1..`start` (those before the resume), as floats; history.csv is untrusted
    input. Rows are kept while each is epoch i+1 with every column a number, finite but for the accuracies (NaN when
    Keras did not report one, as `epoch_callback` writes them); from the first row that is not
    (a damaged or edited file, rows missing), the rest is dropped with a warning line, and history.csv is written
    again with the kept rows at once: the curves then lack those epochs, while the training itself (weights,
    optimizer, best epoch: the checksummed resume state) is unaffected."""
    try:
        rows = read_history(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        rows, problem = [], f"it cannot be read ({e})"
    else:
        problem = None
    kept = []
    for row in rows[:start]:
        try:
            values = {c: float(row[c]) for c in HISTORY_COLUMNS}
        except (KeyError, TypeError, ValueError):
            problem = f"its row for epoch {len(kept) + 1} lacks a column or holds a value that is not a number"
            break
        finite = ("loss", "val_loss", "learning_rate", "seconds")
        if values["epoch"] != len(kept) + 1 or not all(math.isfinite(values[c]) for c in finite):
            problem = f"its row {len(kept) + 1} is not epoch {len(kept) + 1} with finite losses"
            break
        kept.append({**values, "epoch": len(kept) + 1})
    if len(kept) < start:
        problem = problem or f"it holds {len(kept)} of the {start} epochs run"
        print(f"warning: {path} is damaged ({problem}); the resumed run keeps its first {len(kept)} rows and writes "
              f"it again, so the curves lack epochs {len(kept) + 1} to {start}.", file=sys.stderr, flush=True)
        write_history(path, kept)  # now: the report and the plots read it back even if no epoch is left to run
    return kept


def save_state(path, model, epoch, best_val_loss, best_epoch):
    """Weights, optimizer variables and progress after `epoch` completed epochs, written atomically (no pickle)."""
    arrays = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)}
    arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)})
    arrays["progress"] = np.array([epoch, best_val_loss, best_epoch], dtype=np.float64)
    tmp = fileio.temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        replace_with_checksum(tmp, pathlib.Path(path))
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path, model):
    """Restores `save_state`'s weights and optimizer variables into a compiled model; returns (epoch, best validation
    loss, best epoch).

    Raises:
        RunError: when the file does not match its checksum (see `verify_checksum`), or is truncated or another
            model's.
    """
    verify_checksum(path)
    try:
        with np.load(path, allow_pickle=False) as state:
            for i, v in enumerate(model.weights):
                v.assign(state[f"w{i}"])
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            for i, v in enumerate(model.optimizer.variables):
                v.assign(state[f"o{i}"])
            epoch, best_val_loss, best_epoch = state["progress"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # truncated, or another model's
        raise RunError(f"the resume state {path} cannot be used ({first_line(e)}); it is damaged or belongs to "
                       "another model: start a new run with another --out.") from None
    return int(epoch), float(best_val_loss), int(best_epoch)


def write_config(run_dir, config):
    """Writes a run's config.json with its SHA-256 beside it: it names the classes and the input size, so it decides
    the answers as much as the weights do (swap its two class names and every verdict inverts)."""
    path = pathlib.Path(run_dir) / CONFIG
    atomic_write_json(path, config)
    write_checksum(path)


def read_config(run_dir, *, warn_unverified=False):
    """A run's config.json, verified against its checksum when one is recorded (`verify_checksum`; a run from before
    config checksums has none: a warning with `warn_unverified`).

    Raises:
        RunError: a missing folder or file, a checksum that does not match, JSON that cannot be read.
    """
    run_dir = pathlib.Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; pass a folder written by train.py with --run.")
    if not path.is_file():
        raise RunError(f"{run_dir} has no {CONFIG}; pass a folder written by train.py with --run.")
    verify_checksum(path, warn=warn_unverified)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path} is not readable JSON ({e}); re-run train.py or restore the file.") from None
    for key in ("model", "data"):
        if key not in config:
            raise RunError(f"{path} has no '{key}' section; it was not written by this project's train.py.")
    return config


@dataclasses.dataclass
class LoadedRun:
    """A model rebuilt from a run folder, with what inference needs to feed it."""

    run_dir: pathlib.Path
    config: dict  # the whole config.json
    model: object  # a built modules.Perceiver with the weights loaded
    classes: list  # class names; logit i is classes[i]
    image_size: tuple  # (height, width)
    channels: int
    weights_path: pathlib.Path
    temperature: float = 1.0  # calibration.json's; 1.0 (the raw softmax) for a run without one
    min_confidence: float | None = None  # calibration.json's default threshold; None for a run without one
    classifier: object = None  # the modules.PerceiverClassifier a .keras file held (classifier.load returns it)


def data_note(config):
    """The one-line notice about a run's training data: "trained on synthetic data only" when its config.json says the
    data was the embedded synthetic set, else "" (a --data folder, real or not, is not marked).

    The rule: `config["data"]["phantom"]` is set (train.py records the generator's settings there, patients, slices
    and seed, when it made the data itself, and null with --data). Shown by both HTML reports and driver.py.
    """
    data = (config or {}).get("data")
    params = data.get("phantom") if isinstance(data, dict) else None
    if not params:
        return ""
    size = ""
    if isinstance(params, dict) and {"patients", "slices", "seed"} <= params.keys():
        size = f" ({params['patients']} patients, {params['slices']} slices a scan, seed {params['seed']})"
    return f"Trained on synthetic data only: knee MRI drawn by phantom.py{size}, no real scans."


def read_calibration(run_dir, *, warn_unverified=False):
    """(temperature, min_confidence) from calibration.json, or (1.0, None) when the run has none.

    The file is verified against its checksum when one is recorded, and its values are checked as strictly as the
    fit and the flag that set them: the temperature within metrics.TEMPERATURE_BOUNDS (a temperature of 1e-300 would
    make every answer certain and turn "uncertain" off), the threshold in [0.5, 1].

    Raises:
        RunError: naming the file.
    """
    path = pathlib.Path(run_dir) / CALIBRATION
    if not path.is_file():
        return 1.0, None
    verify_checksum(path, warn=warn_unverified)
    refit = f"refit it with python -m perceiver.calibration {run_dir}"
    try:
        saved = json.loads(path.read_text())
        temperature, threshold = float(saved["temperature"]), saved.get("min_confidence")
        threshold = None if threshold is None else float(threshold)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunError(f"{path} is not a valid calibration file ({e}); {refit}.") from None
    low, high = metrics.TEMPERATURE_BOUNDS
    if not low <= temperature <= high:
        raise RunError(f"{path} holds the temperature {temperature:g}, outside the {low:g} to {high:g} that the fit "
                       f"allows; {refit}.")
    if threshold is not None and not 0.5 <= threshold <= 1.0:
        raise RunError(f"{path} holds the confidence threshold (min_confidence) {threshold:g}, outside 0.5 to 1; "
                       f"{refit}.")
    return temperature, threshold


def _shape_difference(weights_path, model):
    """Which array shapes the weights file has that the model lacks, and the reverse; None if they agree.

    Reads only shapes from the HDF5 file (h5py, nothing unpickled). Shared layers repeat in the file, so sets of
    shapes are compared, not counts."""
    want = {tuple(v.shape) for v in model.weights}
    got = set()
    try:
        with h5py.File(weights_path, "r") as f:
            f.visititems(lambda name, obj: got.add(tuple(obj.shape))
                         if isinstance(obj, h5py.Dataset) and obj.shape else None)
    except OSError:
        return "it is not a readable HDF5 weights file"
    extra, missing = sorted(got - want), sorted(want - got)
    parts = [f"the file has arrays of shape {', '.join(map(str, extra[:2]))} that the model lacks" if extra else "",
             f"the model needs {', '.join(map(str, missing[:2]))}" if missing else ""]
    return "; ".join(p for p in parts if p) or None


def check_input_size(data, model_config, path):
    """The (height, width) and channels that `data` (config.json's data section) records, checked as strictly as
    train.py's --image-size and --channels and against the model's own input shape, which records them too.

    Returns:
        ((height, width), channels).

    Raises:
        RunError: naming `path`: a size outside 4 to MAX_IMAGE_SIZE (100000 x 100000 asked for 15 GB before the first
            image failed), channels other than 1 or 3, or a data section that disagrees with the model.
    """
    size, channels = data.get("image_size"), data.get("channels")
    integers = isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)
    if not integers or not all(MIN_IMAGE_SIZE <= v <= MAX_IMAGE_SIZE for v in size):
        raise RunError(f"{path} records the image size {size!r}, not two whole numbers from {MIN_IMAGE_SIZE} to "
                       f"{MAX_IMAGE_SIZE} as train.py's --image-size allows; restore the file or train the run again.")
    if type(channels) is not int or channels not in CHANNELS:
        raise RunError(f"{path} records {channels!r} channels, not 1 or 3 as train.py's --channels allows; restore "
                       "the file or train the run again.")
    if (*size, channels) != tuple(model_config.input_shape):
        raise RunError(f"{path} records images of {size[0]} x {size[1]} x {channels} but its model takes "
                       f"{' x '.join(map(str, model_config.input_shape))}; the file was edited: restore it or train "
                       "the run again.")
    return tuple(size), channels


def check_agreement(run_dir, config, model_config, temperature, min_confidence):
    """Checks that the run's model.keras, if it has one, records what config.json and calibration.json record: the
    classes, the model's settings (its input size and channels among them) and the calibration. The loader of a run
    folder uses the weights, not model.keras, but a program given model.keras alone uses it, so the two must not tell
    different answers. Reads model.keras's own config.json from the zip (no Keras, no weights).

    Raises:
        RunError: naming the files and what differs, or a model.keras that is damaged.
    """
    from perceiver.modules import PerceiverConfig

    run_dir = pathlib.Path(run_dir)
    path = run_dir / MODEL_FILE
    if not path.is_file():
        return
    verify_checksum(path, warn=False)
    fix = ("restore the file that was changed, or write model.keras again with python -m perceiver.calibration "
           f"{run_dir}")
    try:
        with zipfile.ZipFile(path) as z:
            saved = json.loads(z.read("config.json"))["config"]
        recorded = (list(saved["class_names"]), PerceiverConfig.from_dict(saved["perceiver_config"]),
                    float(saved["temperature"]), saved["min_confidence"])
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
        raise RunError(f"{path} cannot be read ({first_line(e)}); it is damaged: {fix}.") from None
    classes = list(config["data"].get("classes", []))
    differ = []
    if recorded[0] != classes:
        differ.append(f"classes ({','.join(recorded[0])} in {MODEL_FILE}, {','.join(map(str, classes))} in {CONFIG})")
    if recorded[1] != model_config:
        differ.append(f"model settings (input {' x '.join(map(str, recorded[1].input_shape))} in {MODEL_FILE}, "
                      f"{' x '.join(map(str, model_config.input_shape))} in {CONFIG})")
    if (run_dir / CALIBRATION).is_file() and recorded[2:] != (temperature, min_confidence):
        differ.append(f"calibration (temperature {recorded[2]:g} and threshold {recorded[3]} in {MODEL_FILE}, "
                      f"{temperature:g} and {min_confidence} in {CALIBRATION})")
    if differ:
        raise RunError(f"the files of the run {run_dir} disagree on the {'; and the '.join(differ)}: one of them was "
                       f"edited or replaced; {fix}.")


def load_run(run_dir, *, weights="best", dtype=None, check_model_file=True):
    """Rebuilds the model of `run_dir` from config.json and loads its best (or `weights="last"`) weights.

    With `check_model_file` (all but the command that rewrites model.keras), model.keras must agree with config.json
    and calibration.json (`check_agreement`).

    Raises RunError with one sentence when the folder, its config or its weights do not fit together.
    """
    from perceiver.modules import PerceiverConfig, build_model  # imports Keras: only when a model is loaded

    run_dir = pathlib.Path(run_dir)
    config = read_config(run_dir, warn_unverified=True)
    try:
        model_config = PerceiverConfig.from_dict(config["model"])
    except (TypeError, ValueError) as e:
        raise RunError(f"{run_dir / CONFIG} describes no valid model: {e}") from None
    data = config["data"]
    classes = list(data.get("classes", []))
    if len(classes) != model_config.num_classes:
        raise RunError(
            f"{run_dir / CONFIG} lists {len(classes)} classes but its model has {model_config.num_classes} outputs."
        )
    image_size, channels = check_input_size(data, model_config, run_dir / CONFIG)
    weights_path = run_dir / (BEST_WEIGHTS if weights == "best" else LAST_WEIGHTS)
    if not weights_path.is_file():
        raise RunError(f"{run_dir} has no {weights_path.name}; train to the end of an epoch or pass another --run.")
    verify_checksum(weights_path)
    model = build_model(model_config, dtype=dtype)
    try:
        model.load_weights(weights_path)
    except (ValueError, KeyError, OSError) as e:
        preset = config.get("train", {}).get("preset", "?")
        raise RunError(
            f"the weights in {weights_path} do not fit the model described by {run_dir / CONFIG} (preset {preset}): "
            f"{_shape_difference(weights_path, model) or str(e).strip().splitlines()[0]}; pass the run folder these "
            "weights were trained in, or retrain with this config"
        ) from None
    temperature, min_confidence = read_calibration(run_dir, warn_unverified=True)
    if check_model_file:
        check_agreement(run_dir, config, model_config, temperature, min_confidence)
    return LoadedRun(
        run_dir=run_dir,
        config=config,
        model=model,
        classes=classes,
        image_size=image_size,
        channels=channels,
        weights_path=weights_path,
        temperature=temperature,
        min_confidence=min_confidence,
    )


def folder_command(argv, *, prog, description, work, options=(), loads_tensorflow=False):
    """The command line of a command that writes files of one finished run folder (the refit, the report, the
    plots): the RUN argument, `options` (pairs of flags and add_argument keywords), --version (and --verbose when it
    loads TensorFlow); then `work(args)`, whose text is printed, as the folder's one writer (fileio.only_writer), a
    UserError ending it as one sentence and exit status 2 (errors.run_command). Returns the exit status."""
    if loads_tensorflow:
        errors.start_command(argv)
    else:
        errors.console_safe()
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("run", help="run folder written by train.py")
    for flags, keywords in options:
        p.add_argument(*flags, **keywords)
    errors.add_common_flags(p, verbose=loads_tensorflow)
    args = p.parse_args(argv)

    def body():
        with fileio.only_writer(args.run, command=prog, create=False):
            print(work(args))
        return 0

    return errors.run_command(body)
