"""Classify knee MRI images as left or right with a trained Perceiver; check the side that files claim; show where the
model looked.

    python driver.py                                  # the reference run's test split: accuracy, confusion matrix
    python driver.py scans/                           # every image under scans/ (recursive): a table
    python driver.py 'scans/**/*.png' knee.dcm vol.nii.gz --run runs/akoa   # globs, DICOM, NIfTI, another run
    python driver.py scans/ --expect left             # every input should be a left knee: flag the others
    python driver.py scans/ --results-file out.csv    # also write the table (csv, or json with .json / --results-format)
    python driver.py knee.png --explain explain/      # a PNG per input: the image beside each cross-attend's map
    python driver.py knee.png --run model.keras       # a whole saved model (loaded in safe mode)

With INPUTs, the table looks like this (probability is the softmax probability of the predicted class; expected is
what the file name or DICOM header says, or --expect; a disagreement is flagged as a possible wrong-side label):

    file                                                        predicted  probability  expected  flag
    OAI9001234_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_7.png  left          0.9971  left
    OAI9001234_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_8.png  right         0.8123  left      WRONG SIDE?
    knee.dcm (volume, 40 slices)                                left          0.9930  left
    notes.png                                                   -                  -  -         failed: not-image: ...
    3 classified, 1 failed, 1 possible wrong-side label

Without INPUT, the test split recorded in the run's split.csv is classified and accuracy plus a confusion matrix
(rows: true class, columns: predicted) are printed, e.g. `test split: accuracy 0.9951 (3,662/3,680 images)`.

Inputs: PNG, JPEG, TIFF and BMP files (preprocessed exactly as in training: `dataset.load_image` then
`dataset.normalize`); DICOM (.dcm, .dicom, or any extensionless file with the DICM preamble; single- or multi-frame)
through pydicom; NIfTI (.nii, .nii.gz) through nibabel. A DICOM or NIfTI file with more than one slice is a volume:
each slice is classified and the volume's probabilities are the mean of its slices' (`--per-slice` shows each slice).
NIfTI slices are taken along the stored array's last axis, as stored (no reorientation): slice k is
`data[:, :, k]` with array axis 0 as image rows. That is how AKOA's PNGs were cut from their .nii.gz volumes
(`..._LEFT.nii.gz_17.png` is slice 17), so a volume gives the pictures the model was trained on; reorienting to
RAS+ would turn a knee's anterior side to the same side for left and right knees and mirror some slices relative to
the training images. 16-bit, signed and float slices are scaled so that their maximum becomes 255, exactly like
16-bit PNGs in training (DICOM rescale slope/intercept is applied first; MONOCHROME1 is inverted).

Expected side (only when the run's classes are exactly left and right): `--expect`, else for DICOM the header's
ImageLaterality (0020,0062), else Laterality (0020,0060), else a side spelled in the file name (AKOA style: LEFT,
Right, R_I_G_H_T, ...).

Exit status: 0 every input was classified; 1 some input could not be classified (its reason is printed, the others
are classified); 2 a usage error (missing run, weights that do not fit, no input found, unsupported file): one
sentence on stderr; 3 only with --strict, when a possible wrong-side label was found (takes precedence over 1,
a wrong side being the more serious finding). Without --strict a flagged mismatch is reported but exits 0.

Loading is strict and safe: a run folder's model is rebuilt from config.json and its weights loaded from the
`.weights.h5` file (plain HDF5 arrays, nothing unpickled); weights of another shape or preset are refused in one
sentence. A `.keras` file is loaded with `safe_mode=True` (no Python lambdas deserialised); its classes are
`--classes`, or left,right when the model has two outputs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import io
import json
import math
import os
import pathlib
import sys
import time

import numpy as np

PROJECT = pathlib.Path(__file__).resolve().parent
DEFAULT_RUN = PROJECT / "goliath"
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
DEFAULT_BATCH = 256
SIDES = ("left", "right")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WRONG_SIDE = 0, 1, 2, 3
_CHUNK = 16  # inputs per decoding task


class UsageError(Exception):
    """A mistake the user can fix; printed as one sentence on stderr, exit status 2."""


class InputError(Exception):
    """One input that cannot be classified; the message is the reason, shown beside the file."""


# === Loading a model ===
def load(run=None, *, weights="best", classes=None):
    """Loads a run folder (rebuilt from config.json + weights) or a `.keras` file (safe mode).

    Args:
        run: str | None. Run folder or `.keras` file. Defaults to the shipped reference run `goliath/`.
        weights: str. "best" or "last" weights of a run folder. Defaults to "best".
        classes: list[str] | None. Class names for a `.keras` file. Defaults to left, right for two outputs.

    Returns:
        runs.LoadedRun.

    Raises:
        UsageError: with one sentence when the run cannot be used.
    """
    import runs

    path = pathlib.Path(run) if run is not None else DEFAULT_RUN
    if run is None and not path.exists():
        raise UsageError(f"the shipped reference run {path.name}/ is not in this checkout; pass a run folder written "
                         "by train.py with --run DIR.")
    if path.suffix == ".keras":
        return _load_keras_file(path, classes)
    if classes is not None:
        raise UsageError("--classes applies only to a .keras file; a run folder names its classes in config.json.")
    try:
        return runs.load_run(path, weights=weights)
    except runs.RunError as e:
        raise UsageError(str(e).rstrip(".") + ".") from None


def _load_keras_file(path, classes):
    import keras

    import modules  # noqa: F401  (registers Perceiver and its layers for deserialisation)
    import runs

    if not path.is_file():
        raise UsageError(f"model file {path} does not exist; pass a .keras file or a run folder with --run.")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # a damaged zip, an unknown layer, a lambda refused by safe mode, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot load {path} in safe mode: {first}") from None
    config = getattr(model, "config", None)  # a Perceiver knows its shapes; another model may declare them
    try:
        shape = tuple(config.input_shape) if config is not None else tuple(model.input_shape[1:])
        outputs = int(config.num_classes) if config is not None else int(model.output_shape[-1])
    except (AttributeError, TypeError, ValueError):
        shape, outputs = None, None
    if shape is None or len(shape) != 3 or None in shape:
        raise UsageError(f"{path} does not take fixed-size images (its input shape is {shape}).")
    if classes is None:
        if outputs != 2:
            raise UsageError(f"{path} has {outputs} outputs; name them in order with --classes a,b,c.")
        classes = list(SIDES)
    if len(classes) != outputs:
        raise UsageError(f"--classes names {len(classes)} classes but {path} has {outputs} outputs.")
    return runs.LoadedRun(run_dir=path.parent, config={}, model=model, classes=list(classes),
                          image_size=tuple(int(v) for v in shape[:2]), channels=int(shape[2]), weights_path=path)


# === Finding inputs ===
@dataclasses.dataclass
class Input:
    """One file to classify.

    Args:
        path: str. The file.
        kind: str. "image", "dicom" or "nifti".
        expected: str | None. A known label (the test split's), overriding what the file says.
    """

    path: str
    kind: str
    expected: str | None = None


def _has_dicom_preamble(path):
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def input_kind(path, *, sniff=True):
    """"image", "dicom" or "nifti" by extension (an extensionless file with the DICM preamble is DICOM), else None."""
    import dataset

    name = os.path.basename(path).lower()
    if name.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    ext = os.path.splitext(name)[1]
    if ext in DICOM_EXTENSIONS:
        return "dicom"
    if ext in dataset.IMAGE_EXTENSIONS:
        return "image"
    if sniff and not ext and _has_dicom_preamble(path):
        return "dicom"
    return None


def _supported():
    import dataset

    return ", ".join(e.lstrip(".") for e in dataset.IMAGE_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS)


def find_inputs(specs):
    """Expands INPUTs (files, folders searched recursively, globs) into Inputs, in order, without duplicates.

    Returns:
        (inputs, ignored): list[Input], and the number of files in folders or glob matches that are not a supported
        type (a README beside the scans, say).

    Raises:
        UsageError: for a path that does not exist, a glob that matches nothing, a named file of an unsupported type,
            or when nothing at all is found.
    """
    inputs, seen, ignored = [], set(), 0

    def add(path, named):
        nonlocal ignored
        kind = input_kind(path)
        if kind is None:
            if named:
                raise UsageError(f"{path} is not a supported file type; supported: {_supported()}.")
            ignored += 1
            return
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            inputs.append(Input(path, kind))

    def walk(folder):
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                if not name.startswith("."):
                    add(os.path.join(root, name), named=False)

    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            walk(spec)
        elif os.path.isfile(spec):
            add(spec, named=True)
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise UsageError(f"no files match the pattern {spec}.")
            for m in matches:
                walk(m) if os.path.isdir(m) else add(m, named=False)
        else:
            raise UsageError(f"{spec} does not exist; pass image files, folders or glob patterns.")
    if not inputs:
        raise UsageError(f"no supported files found in {', '.join(map(str, specs))}; supported: {_supported()}.")
    return inputs, ignored


# === Decoding ===
def _slice_to_uint8(array2d, size, channels):
    import dataset

    try:
        return dataset.array_to_uint8_image(array2d, size, channels)
    except dataset.DataError as e:
        raise InputError(str(e)) from None


def _side_letter(value):
    text = str(value or "").strip().upper()
    return {"L": "left", "R": "right"}.get(text[:1]) if text[:1] in ("L", "R") and len(text) <= 5 else None


def read_dicom(path):
    """Reads a DICOM file's frames as 2-D arrays and its laterality.

    Returns:
        (frames, side): list of 2-D arrays (or (h, w, 3) uint8 for RGB), and "left" / "right" from ImageLaterality
        (0020,0062), else Laterality (0020,0060), else None.
    """
    try:
        import pydicom
    except ImportError:
        raise InputError("reading DICOM needs pydicom: pip install pydicom") from None
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # InvalidDicomError, truncated files, ...
        raise InputError(f"not a readable DICOM file ({_first_line(e)})") from None
    side = _side_letter(ds.get("ImageLaterality")) or _side_letter(ds.get("Laterality"))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError("the DICOM file has no pixel data")
    try:
        a = ds.pixel_array
    except Exception as e:  # a compressed transfer syntax without its decoder, inconsistent tags, ...
        raise InputError(f"pydicom cannot decode the pixels ({_first_line(e)})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rgb = int(ds.get("SamplesPerPixel", 1) or 1) == 3
    if frames == 1:
        a = a[None]
    if rgb:
        if a.dtype != np.uint8:
            raise InputError(f"{a.dtype} colour DICOM is not supported; convert it to grayscale")
        return [f for f in a], side
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        a = a.astype(np.float32) * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":  # 0 is white: invert
        a = a.max() - a if a.dtype != np.uint8 else 255 - a
    return [f for f in a], side


def read_nifti(path):
    """Reads a NIfTI volume as a list of 2-D slices along the stored array's last axis (see the module docstring)."""
    try:
        import nibabel
    except ImportError:
        raise InputError("reading NIfTI needs nibabel: pip install nibabel") from None
    try:
        image = nibabel.load(path)
        data = np.asanyarray(image.dataobj)  # stored dtype, or float when the header scales the values
    except Exception as e:  # ImageFileError, gzip errors, truncated data
        raise InputError(f"not a readable NIfTI file ({_first_line(e)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        return [data]
    if data.ndim != 3:
        raise InputError(f"a {data.ndim}-D NIfTI image of shape {data.shape} is not supported; pass a 2-D or 3-D one")
    if data.dtype.kind == "c" or data.dtype.names:
        raise InputError(f"NIfTI data of type {data.dtype} is not supported")
    return [data[:, :, k] for k in range(data.shape[2])]


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_slices(item):
    """Raw 2-D slices of a DICOM or NIfTI input and the side its header states (None for NIfTI)."""
    if item.kind == "dicom":
        return read_dicom(item.path)
    return read_nifti(item.path), None


def decode(item, size, channels):
    """Decodes one input to uint8 (n, height, width, channels): n = 1 for an image, one per slice for a volume.

    Returns:
        (images, header_side).

    Raises:
        InputError: with the reason.
    """
    import dataset

    if item.kind == "image":
        try:
            return dataset.load_image(item.path, size=size, channels=channels)[None], None
        except dataset.DataError as e:
            text = str(e)
            prefix = f"cannot use image {item.path}: "
            raise InputError((text[len(prefix):] if text.startswith(prefix) else text).rstrip(".")) from None
    slices, side = read_slices(item)
    if not slices:
        raise InputError("the volume has no slices")
    return np.stack([_slice_to_uint8(s, size, channels) for s in slices]), side


def _decode_chunk(items, size, channels):
    out = []
    for item in items:
        try:
            out.append(decode(item, size, channels))
        except InputError as e:
            out.append(e)
        except MemoryError:
            out.append(InputError("not enough memory to decode it"))
    return out


# === Predicting ===
def _bucket(n, batch_size):
    """Next power of two >= n, at most batch_size: few distinct shapes, so few compiled traces."""
    return min(batch_size, 1 << max(0, n - 1).bit_length())


class Predictor:
    """Batched, compiled inference for a loaded run: uint8 images in, class probabilities out.

    Batches are padded to a power of two up to `batch_size`, so the compiled predict function (Keras'
    `predict_on_batch`, a traced function, XLA where the backend supports it) is traced for a handful of shapes only.

    Args:
        loaded: runs.LoadedRun.
        batch_size: int. Largest batch. Defaults to 256.
    """

    def __init__(self, loaded, batch_size=DEFAULT_BATCH):
        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size} must be at least 1.")
        import keras

        self.loaded = loaded
        self.model = loaded.model
        if keras.backend.backend() in ("tensorflow", "jax"):
            # XLA-compiled prediction: 425 against 326 images/s at batch 256 under TensorFlow on the 2-core CPU.
            self.model.compile(jit_compile=True)
        self.batch_size = int(batch_size)
        self.shape = (*loaded.image_size, loaded.channels)

    def logits(self, images):
        """Logits (n, classes) for uint8 (n, height, width, channels) images, preprocessed as in training."""
        import dataset

        images = np.asarray(images)
        if images.shape[1:] != self.shape:
            raise ValueError(f"images of shape {images.shape[1:]} given to a model of input shape {self.shape}")
        out = []
        for start in range(0, len(images), self.batch_size):
            x = dataset.normalize(images[start:start + self.batch_size])
            n = len(x)
            padded = _bucket(n, self.batch_size)
            if padded != n:
                x = np.concatenate([x, np.zeros((padded - n, *self.shape), np.float32)])
            out.append(np.asarray(self.model.predict_on_batch(x), np.float32)[:n])
        return np.concatenate(out) if out else np.zeros((0, len(self.loaded.classes)), np.float32)

    def probabilities(self, images):
        from metrics import softmax

        return softmax(self.logits(images))


# === Classifying ===
@dataclasses.dataclass
class Result:
    """The outcome for one input.

    Args:
        path: str. The input file.
        kind: str. "image", "dicom" or "nifti".
        predicted: str | None. Predicted class (None when the input failed).
        probability: float | None. Probability of the predicted class (a volume: mean over its slices).
        probabilities: list[float] | None. Every class's probability, in the run's class order.
        expected: str | None. The label the input should have, when known.
        expected_source: str | None. Where `expected` came from: "test split", "--expect", "DICOM header",
            "file name".
        error: str | None. Why the input could not be classified.
        slices: list[dict] | None. For a volume: {"slice", "predicted", "probability", "probabilities"} per slice.
    """

    path: str
    kind: str
    predicted: str | None = None
    probability: float | None = None
    probabilities: list | None = None
    expected: str | None = None
    expected_source: str | None = None
    error: str | None = None
    slices: list | None = None

    @property
    def flagged(self):
        """True when the expected label is known and the prediction differs."""
        return self.error is None and self.expected is not None and self.predicted != self.expected

    @property
    def is_volume(self):
        return self.slices is not None


def _expected(item, header_side, classes, expect):
    if item.expected is not None:
        return item.expected, "test split"
    if sorted(classes) != sorted(SIDES):
        return None, None
    if expect is not None:
        return expect, "--expect"
    if header_side is not None:
        return header_side, "DICOM header"
    import dataset

    side = dataset.side_from_name(item.path)
    return (side, "file name") if side else (None, None)


def classify(predictor, inputs, *, expect=None, workers=None, progress=False, keep_images=False):
    """Decodes inputs in a thread pool while the previous batch is predicted; returns one Result per input.

    Args:
        predictor: Predictor.
        inputs: list[Input].
        expect: str | None. "left" or "right": the side every input should be. Defaults to None.
        workers: int | None. Decoding threads. Defaults to half the usable CPUs (at least 1).
        progress: bool. A progress bar on stderr. Defaults to False.
        keep_images: bool. Also return the decoded uint8 images, {input index: (n, h, w, c)}. Defaults to False.

    Returns:
        list[Result] in input order, or (results, images) with keep_images.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    loaded = predictor.loaded
    classes, size, channels = loaded.classes, loaded.image_size, loaded.channels
    if workers is None:  # half the cores decode; prediction (the slower part) uses the rest through its own threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = max(1, cpus // 2)
    workers = max(1, int(workers))
    results = [Result(item.path, item.kind) for item in inputs]
    kept = {}
    pending_images, pending_owner = [], []  # decoded, not yet predicted: arrays and (input index, slice count)
    pending_count = 0

    def flush():
        nonlocal pending_images, pending_owner, pending_count
        if not pending_images:
            return
        probs = predictor.probabilities(np.concatenate(pending_images))
        at = 0
        for index, count in pending_owner:
            finish(index, probs[at:at + count])
            at += count
        pending_images, pending_owner, pending_count = [], [], 0

    def finish(index, probs):
        r = results[index]
        p = probs[0]
        if len(probs) > 1:  # a volume: the mean of its slices' probabilities
            p = probs.mean(axis=0)
            r.slices = [{"slice": k, "predicted": classes[int(np.argmax(q))], "probability": float(q.max()),
                         "probabilities": [float(v) for v in q]} for k, q in enumerate(probs)]
        k = int(np.argmax(p))
        r.predicted, r.probability, r.probabilities = classes[k], float(p[k]), [float(v) for v in p]

    chunks = [list(range(s, min(s + _CHUNK, len(inputs)))) for s in range(0, len(inputs), _CHUNK)]
    # decoding tasks in flight: two batches ahead, so decoding goes on while a batch is predicted; bounds memory
    window = max(2 * workers, 2 * math.ceil(predictor.batch_size / _CHUNK))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool, \
            tqdm(total=len(inputs), desc="classifying", unit="img", file=sys.stderr, disable=not progress,
                 dynamic_ncols=True, smoothing=0.1) as bar:
        futures = []
        next_chunk = 0
        while next_chunk < len(chunks) and len(futures) < window:
            futures.append((chunks[next_chunk], pool.submit(_decode_chunk, [inputs[i] for i in chunks[next_chunk]],
                                                            size, channels)))
            next_chunk += 1
        while futures:
            indices, future = futures.pop(0)
            outcomes = future.result()
            if next_chunk < len(chunks):
                futures.append((chunks[next_chunk], pool.submit(
                    _decode_chunk, [inputs[i] for i in chunks[next_chunk]], size, channels)))
                next_chunk += 1
            for index, outcome in zip(indices, outcomes):
                item, r = inputs[index], results[index]
                if isinstance(outcome, InputError):
                    r.error = str(outcome)
                    r.expected, r.expected_source = _expected(item, None, classes, expect)
                    continue
                images, header_side = outcome
                r.expected, r.expected_source = _expected(item, header_side, classes, expect)
                if keep_images:
                    kept[index] = images
                pending_images.append(images)
                pending_owner.append((index, len(images)))
                pending_count += len(images)
            bar.update(len(indices))
            if pending_count >= predictor.batch_size:
                flush()
        flush()
    return (results, kept) if keep_images else results


# === Reporting ===
def _display_path(path):
    p = os.path.abspath(path)
    rel = os.path.relpath(p)
    return rel if not rel.startswith("..") else p


def _label(r, classes):
    sides = sorted(classes) == sorted(SIDES)
    return "WRONG SIDE?" if sides else "MISMATCH"


def format_table(results, classes, *, per_slice=False):
    """The plain-text table: file, predicted, probability, expected, flag (failures last, with their reasons)."""
    rows = []
    for r in results:
        name = _display_path(r.path)
        if r.is_volume:
            name += f" (volume, {len(r.slices)} slices)"
        if r.error is not None:
            rows.append((name, "-", "-", r.expected or "-", f"failed: {r.error}"))
            continue
        rows.append((name, r.predicted, f"{r.probability:.4f}", r.expected or "-",
                     _label(r, classes) if r.flagged else ""))
        if per_slice and r.is_volume:
            for s in r.slices:
                flag = _label(r, classes) if r.expected is not None and s["predicted"] != r.expected else ""
                rows.append((f"  slice {s['slice']}", s["predicted"], f"{s['probability']:.4f}",
                             r.expected or "-", flag))
    header = ("file", "predicted", "probability", "expected", "flag")
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(4)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:>{widths[2]}}  "
             f"{header[3]:<{widths[3]}}  {header[4]}"]
    for row in rows:
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
                     f"{row[3]:<{widths[3]}}  {row[4]}".rstrip())
    return "\n".join(lines)


def summary(results, classes, ignored=0):
    """{"classified", "failed", "flagged", "ignored"} counts."""
    return {"classified": sum(r.error is None for r in results), "failed": sum(r.error is not None for r in results),
            "flagged": sum(r.flagged for r in results), "ignored": int(ignored)}


def format_summary(counts, classes):
    sides = sorted(classes) == sorted(SIDES)
    what = "possible wrong-side label" if sides else "mismatch with the expected class"
    text = (f"{counts['classified']:,} classified, {counts['failed']:,} failed, {counts['flagged']:,} {what}"
            f"{'s' if counts['flagged'] != 1 and sides else ''}")
    if counts.get("ignored"):
        n = counts["ignored"]
        text += f" ({n:,} other file{'s' if n != 1 else ''} ignored: not a supported type)"
    return text


def _result_dict(r):
    return {"file": r.path, "kind": r.kind, "predicted": r.predicted, "probability": r.probability,
            "probabilities": r.probabilities, "expected": r.expected, "expected_source": r.expected_source,
            "flagged": r.flagged, "error": r.error, "slices": r.slices}


def write_results(path, results, classes, *, fmt, run, counts, per_slice=False):
    """Writes the results as CSV (one row per input; with per_slice also one per volume slice) or JSON (schema 1:
    {"schema", "run", "classes", "summary", "results": [{"file", "kind", "predicted", "probability",
    "probabilities", "expected", "expected_source", "flagged", "error", "slices"}]})."""
    import runs

    path = pathlib.Path(path)
    if path.parent and not path.parent.exists():
        raise UsageError(f"the folder of --results-file {path} does not exist.")
    if fmt == "json":
        text = json.dumps({"schema": 1, "run": str(run), "classes": list(classes), "summary": counts,
                           "results": [_result_dict(r) for r in results]}, indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "kind", "slice", "predicted", "probability", "expected", "expected_source", "flag",
                         "error", *[f"p_{c}" for c in classes]])
        for r in results:
            probs = r.probabilities or [""] * len(classes)
            writer.writerow([r.path, r.kind, "", r.predicted or "", "" if r.probability is None else
                             f"{r.probability:.6f}", r.expected or "", r.expected_source or "",
                             _label(r, classes) if r.flagged else "", r.error or "",
                             *[p if p == "" else f"{p:.6f}" for p in probs]])
            if per_slice and r.is_volume:
                for s in r.slices:
                    flag = _label(r, classes) if r.expected is not None and s["predicted"] != r.expected else ""
                    writer.writerow([r.path, r.kind, s["slice"], s["predicted"], f"{s['probability']:.6f}",
                                     r.expected or "", r.expected_source or "", flag, "",
                                     *[f"{p:.6f}" for p in s["probabilities"]]])
        text = buf.getvalue()
    try:
        runs.atomic_write_text(path, text)
    except OSError as e:
        raise UsageError(f"cannot write --results-file {path}: {e.strerror or e}.") from None


# === Test split ===
def test_split_inputs(loaded, data_root=None):
    """The test images recorded in the run folder's split.csv, with their labels as the expected class."""
    import dataset
    import runs

    split_path = loaded.run_dir / runs.SPLIT
    if not loaded.config or not split_path.is_file():
        raise UsageError(f"{loaded.run_dir} has no {runs.SPLIT} to take test images from; pass images to classify.")
    root = data_root or str(runs.data_root(loaded.config))
    try:
        records, split = dataset.read_manifest(split_path, root=root)
    except dataset.DataError as e:
        raise UsageError(str(e)) from None
    test = [r for r in records if split[r.path] == "test"]
    if not test:
        raise UsageError(f"{split_path} lists no test images.")
    if not any(os.path.exists(r.path) for r in test[:50]):
        raise UsageError(f"the test images of {loaded.run_dir} are not under {root} (moved or deleted?); "
                         "pass the data folder with --data-root.")
    return [Input(r.path, input_kind(r.path, sniff=False) or "image", expected=r.label) for r in test]


def confusion_matrix(results, classes):
    """(classes x classes) counts: rows the expected class, columns the predicted class (classified inputs only)."""
    from metrics import confusion_counts

    index = {c: i for i, c in enumerate(classes)}
    pairs = [(index[r.expected], index[r.predicted]) for r in results if r.error is None and r.expected in index]
    true, predicted = zip(*pairs) if pairs else ((), ())
    return confusion_counts(true, predicted, len(classes))


def format_confusion(m, classes):
    width = max(8, *(len(c) for c in classes), len(f"{m.max():,}") if m.size else 1)
    corner = "true \\ predicted"
    lines = [f"{corner:<{max(16, width)}}" + "".join(f"  {c:>{width}}" for c in classes)]
    for c, row in zip(classes, m):
        lines.append(f"{c:<{max(16, width)}}" + "".join(f"  {v:>{width},}" for v in row))
    return "\n".join(lines)


# === Explaining ===
def _explain_name(path, used):
    base = os.path.basename(path)
    for ext in (".nii.gz",) + NIFTI_EXTENSIONS + DICOM_EXTENSIONS + (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    name, k = f"{base}.explain.png", 2
    while name in used:
        name, k = f"{base}.explain-{k}.png", k + 1
    used.add(name)
    return name


def _display_size(h, w, longest=384, shortest=192):
    scale = min(longest / max(h, w), 1.0) if max(h, w) > longest else max(1.0, shortest / min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def display_image(item, slice_index=None):
    """The input as a uint8 grayscale (h, w) array near its own resolution, decoded as for the model."""
    import dataset
    from PIL import Image

    if item.kind == "image":
        with Image.open(item.path) as im:
            w, h = im.size
        return dataset.load_image(item.path, size=_display_size(h, w), channels=1)[..., 0]
    slices, _ = read_slices(item)
    s = slices[slice_index or 0]
    return _slice_to_uint8(s, _display_size(*s.shape[:2]), 1)[..., 0]


def _upsample(m, size):
    from PIL import Image

    return np.asarray(Image.fromarray(m.astype(np.float32), "F").resize((size[1], size[0]),
                                                                      Image.Resampling.BILINEAR))


def _mass_threshold(m, mass=0.5):
    """The value above which the largest cells of map m (summing to 1) hold `mass` of it, and their area fraction."""
    v = np.sort(m.ravel())[::-1]
    k = int(np.searchsorted(np.cumsum(v), mass * v.sum())) + 1
    return float(v[min(k, len(v)) - 1]), k / len(v)


def explain_figure(out_path, gray, maps, *, title, subtitle, flagged=False):
    """Writes a PNG: the input, then each cross-attend's map (mean over heads and latents) as a heat overlay.

    Maps are shown in units of "x uniform" (1 = the attention every pixel would get if spread evenly), on one colour
    scale shared by all panels; the dashed contour encloses the smallest region holding half the attention.

    Args:
        out_path: str. PNG to write.
        gray: np.ndarray. uint8 (h, w) image at display resolution.
        maps: np.ndarray. (num_cross_attends, gh, gw) attention on the model's grid, each summing to 1.
        title: str. First line (the file).
        subtitle: str. Second line (prediction, expected side).
        flagged: bool. Draws the subtitle in red. Defaults to False.
    """
    import matplotlib
    from matplotlib import cm, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    n = len(maps)
    h, w = gray.shape
    grid_cells = maps.shape[1] * maps.shape[2]
    relative = maps * grid_cells  # x uniform
    vmax = max(float(np.percentile(relative, 99.9)), 1.5)
    norm = colors.Normalize(vmin=1.0, vmax=vmax)  # at or below uniform: no heat
    cmap = matplotlib.colormaps["inferno"]
    bg, fg = "#0d1117", "#e6edf3"
    panel_w = 3.1
    fig_w, fig_h = panel_w * (n + 1) + 0.9, panel_w * h / w + 1.35
    fig = Figure(figsize=(fig_w, fig_h), facecolor=bg)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    fig.subplots_adjust(left=0.02, right=0.9, top=1 - 1.0 / fig_h, bottom=0.35 / fig_h, wspace=0.05)
    base = gray.astype(np.float32) / 255.0
    axes[0].imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    axes[0].set_title("input", color=fg, fontsize=10)
    for i in range(n):
        ax = axes[i + 1]
        up = _upsample(relative[i], (h, w))
        rgba = cmap(norm(up))
        strength = np.clip(norm(up), 0, 1) ** 0.75
        dim = (0.35 + 0.65 * base)[..., None] * 0.75  # the anatomy stays visible under the heat
        rgb = dim * (1 - strength[..., None] * 0.85) + rgba[..., :3] * strength[..., None] * 0.85
        ax.imshow(np.clip(rgb, 0, 1), interpolation="bilinear")
        level, area = _mass_threshold(maps[i])
        ax.contour(_upsample(maps[i], (h, w)), levels=[level], colors=["#c9d1d9"], linewidths=0.7,
                   linestyles="--", alpha=0.8)
        ax.set_title(f"cross-attend {i + 1}", color=fg, fontsize=10)
        ax.text(0.02, 0.02, f"peak {relative[i].max():.1f}x  |  half the attention in {100 * area:.0f}% of the image",
                transform=ax.transAxes, color=fg, fontsize=6.5, va="bottom", ha="left",
                bbox=dict(facecolor=bg, alpha=0.6, edgecolor="none", pad=1.5))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("#30363d")
    cax = fig.add_axes([0.915, 0.35 / fig_h + 0.03, 0.012, 1 - 1.35 / fig_h - 0.06])
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label("attention (x uniform)", color=fg, fontsize=8)
    bar.ax.tick_params(colors=fg, labelsize=7)
    bar.outline.set_edgecolor("#30363d")
    fig.text(0.02, 1 - 0.22 / fig_h, title, color=fg, fontsize=10, fontweight="bold", ha="left", va="top")
    fig.text(0.02, 1 - 0.5 / fig_h, subtitle, color="#ff7b72" if flagged else "#8b949e", fontsize=9, ha="left",
             va="top", fontweight="bold" if flagged else "normal")
    fig.savefig(out_path, dpi=110, facecolor=bg)


def explain(loaded, inputs, results, images, out_dir, *, per_slice=False, progress=False):
    """Writes one explanation PNG per classified input (a volume: its middle slice, or every slice with per_slice).

    Returns:
        list[str] of the PNGs written.
    """
    from tqdm import tqdm

    import dataset

    out_dir = pathlib.Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the --explain folder {out_dir}: {e.strerror or e}.") from None
    classes = loaded.classes
    used, written = set(), []
    jobs = []  # (input index, slice index or None)
    for i, r in enumerate(results):
        if r.error is not None:
            continue
        if r.is_volume:
            ks = range(len(r.slices)) if per_slice else [len(r.slices) // 2]
            jobs += [(i, k) for k in ks]
        else:
            jobs.append((i, None))
    maps_all = []
    for start in range(0, len(jobs), 64):
        x = np.stack([images[i][0 if k is None else k] for i, k in jobs[start:start + 64]])
        maps_all.append(loaded.model.attention_heatmaps(dataset.normalize(x), batch_size=64))
    maps_all = np.concatenate(maps_all) if maps_all else None
    for (i, k), maps in tqdm(zip(jobs, maps_all if maps_all is not None else []), total=len(jobs), desc="explaining",
                             unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True):
        r, item = results[i], inputs[i]
        try:
            gray = display_image(item, k)
        except (InputError, dataset.DataError, OSError) as e:
            print(f"warning: no explanation for {item.path}: {e}", file=sys.stderr)
            continue
        if k is None:
            pred, prob, stem = r.predicted, r.probability, item.path
        else:
            s = r.slices[k]
            pred, prob, stem = s["predicted"], s["probability"], f"{item.path}_slice{k}"
        where = f" slice {k} of {len(r.slices)}" if k is not None else ""
        expected = f"   expected {r.expected} ({r.expected_source})" if r.expected else ""
        flagged = r.expected is not None and pred != r.expected
        flag = f"   {_label(r, classes)}" if flagged else ""
        volume = (f"   volume: {r.predicted} p={r.probability:.3f}" if k is not None else "")
        path = out_dir / _explain_name(stem, used)
        explain_figure(str(path), gray, maps, title=os.path.basename(item.path) + where,
                       subtitle=f"predicted {pred}  p={prob:.3f}{volume}{expected}{flag}", flagged=flagged)
        written.append(str(path))
    return written


# === Command line ===
def build_parser():
    p = argparse.ArgumentParser(
        prog="driver.py",
        description="Classify knee MRI images (left vs right knee) with a trained Perceiver; without INPUT, evaluate "
                    "the run's test split.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image file, DICOM or NIfTI file, folder (searched recursively) or glob (default: the run's "
                        "test split)")
    g = p.add_argument_group("model")
    g.add_argument("--run", default=None,
                   help="run folder written by train.py, or a .keras file (default: goliath/, the reference run)")
    g.add_argument("--weights", default="best", choices=("best", "last"),
                   help="which weights of the run folder (default: best)")
    g.add_argument("--classes", default=None,
                   help="comma-separated class names of a .keras model (default: left,right for two outputs)")
    g = p.add_argument_group("checks")
    g.add_argument("--expect", default=None, choices=SIDES,
                   help="the side every input should be; others are flagged (default: from file names and DICOM "
                        "headers)")
    g.add_argument("--strict", action="store_true",
                   help="exit with status 3 when a possible wrong-side label is found (default: off, exit 0)")
    g.add_argument("--data-root", default=None,
                   help="folder the run's split.csv paths are relative to (default: the training data folder in "
                        "config.json)")
    g = p.add_argument_group("output")
    g.add_argument("--results-file", default=None, help="also write the results to this file (default: none)")
    g.add_argument("--results-format", default=None, choices=("csv", "json"),
                   help="format of --results-file (default: json for a .json file, else csv)")
    g.add_argument("--per-slice", action="store_true",
                   help="list every slice of a volume, and explain every slice (default: off, volumes only)")
    g.add_argument("--explain", default=None, metavar="OUTDIR",
                   help="write a PNG per input: the image beside each cross-attend's attention map (default: none)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    g = p.add_argument_group("speed")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"images per prediction batch "
                                                                         f"(default: {DEFAULT_BATCH})")
    g.add_argument("--workers", type=int, default=None, help="decoding threads (default: half the CPUs, at least 1)")
    return p


def run(args, out=sys.stdout):
    """Runs the command line; returns the exit status. Raises UsageError for mistakes the user can fix."""
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if classes is not None and (len(set(classes)) != len(classes) or not all(classes)):
        raise UsageError(f"--classes {args.classes!r} must be distinct, non-empty names separated by commas.")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1.")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers} must be at least 1.")
    fmt = args.results_format or ("json" if str(args.results_file or "").lower().endswith(".json") else "csv")
    test_mode = not args.inputs
    if not test_mode:
        inputs, ignored = find_inputs(args.inputs)  # before loading: a typo fails at once
    loaded = load(args.run, weights=args.weights, classes=classes)
    if test_mode:
        inputs, ignored = test_split_inputs(loaded, args.data_root), 0
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    predictor = Predictor(loaded, args.batch_size)
    t0 = time.perf_counter()
    classified = classify(predictor, inputs, expect=args.expect, workers=args.workers, progress=progress,
                          keep_images=args.explain is not None)
    results, images = classified if args.explain is not None else (classified, None)
    seconds = time.perf_counter() - t0
    counts = summary(results, loaded.classes, ignored)
    where = args.run or DEFAULT_RUN
    if test_mode:
        ok = [r for r in results if r.error is None]
        correct = sum(r.predicted == r.expected for r in ok)
        print(f"test split of {where}: {len(ok):,} images", file=out)
        print(f"test split: accuracy {correct / max(len(ok), 1):.4f} ({correct:,}/{len(ok):,} images)", file=out)
        print(format_confusion(confusion_matrix(results, loaded.classes), loaded.classes), file=out)
        wrong = [r for r in ok if r.predicted != r.expected]
        for r in wrong[:10]:
            print(f"  misclassified: {_display_path(r.path)}  true {r.expected}, predicted {r.predicted} "
                  f"(p={r.probability:.3f})", file=out)
        if len(wrong) > 10:
            print(f"  ... and {len(wrong) - 10:,} more (--results-file lists all)", file=out)
        for r in results:
            if r.error is not None:
                print(f"  failed: {_display_path(r.path)}: {r.error}", file=out)
        counts["accuracy"] = correct / max(len(ok), 1)
        counts["confusion_matrix"] = confusion_matrix(results, loaded.classes).tolist()
    else:
        print(format_table(results, loaded.classes, per_slice=args.per_slice), file=out)
        print(format_summary(counts, loaded.classes), file=out)
    n_images = sum(len(r.slices) if r.is_volume else 1 for r in results if r.error is None)
    if progress:
        print(f"{n_images:,} images in {seconds:.2f} s ({n_images / max(seconds, 1e-9):,.0f} images/s)",
              file=sys.stderr)
    if args.results_file:
        write_results(args.results_file, results, loaded.classes, fmt=fmt, run=where, counts=counts,
                      per_slice=args.per_slice)
    if args.explain is not None:
        written = explain(loaded, inputs, results, images, args.explain, per_slice=args.per_slice,
                          progress=progress)
        print(f"wrote {len(written):,} explanation image{'s' if len(written) != 1 else ''} to {args.explain}",
              file=out)
    if args.strict and counts["flagged"]:
        return EXIT_WRONG_SIDE
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the table
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
