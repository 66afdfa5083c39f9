"""Batched inference for a loaded run: `Predictor` (uint8 images in, calibrated class probabilities out) and
`classify` (decode a list of inputs in threads while the previous batch is predicted; one `Result` per input).

driver.py's command line and bench/speed/infer_speed.py both classify with these. An input fails alone: an unforeseen
error while decoding, predicting or filling in its Result is that input's "internal error (...)" and the batch goes
on (`_PendingBatch`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from perceiver import dataset
from perceiver import metrics
from perceiver.errors import UsageError
from perceiver.inputs import InputError, decode_chunk, internal_error
from perceiver.reports import SIDES

DEFAULT_BATCH = 256
_CHUNK = 16  # inputs per decoding task


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
        import keras  # lazy, as in _load_keras_file: a loaded model has imported it already

        self.loaded = loaded
        self.model = loaded.model
        if keras.backend.backend() in ("tensorflow", "jax"):
            # XLA-compiled prediction was the faster on the 2-core CPU (bench/speed/infer_speed.py, bench/RESULTS.md),
            # once its constant folding is off (see _xla_without_constant_folding).
            _xla_without_constant_folding()
            self.model.compile(jit_compile=True)
        self.batch_size = int(batch_size)
        self.shape = (*loaded.image_size, loaded.channels)

    def logits(self, images):
        """Logits (n, classes) for uint8 (n, height, width, channels) images, preprocessed as in training."""
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
        """Calibrated class probabilities: softmax(logits / T), T the run's temperature (calibration.json)."""
        return metrics.calibrated(self.logits(images), self.loaded.temperature)


def _xla_without_constant_folding():
    """Turns XLA's constant-folding pass off for this process (XLA_FLAGS, read at the first compilation), unless the
    user's XLA_FLAGS already choose passes.

    The position features are constants, so XLA folded the input LayerNorm's statistics over them into a new
    literal for every batch shape: four "E0000 ... Constant folding an instruction is taking > 1s" lines on stderr
    and seconds of compiling per shape. Without the pass, `python driver.py` (goliath's 1,360 test slices) took
    11.2 s instead of 21.0 s on the 2-core CPU, with the same verdicts and probabilities within 3e-6
    (`/usr/bin/time python driver.py`; bench/RESULTS.md, "Inference start-up").
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_disable_hlo_passes" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_disable_hlo_passes=constant_folding").strip()


# === Classifying ===
@dataclasses.dataclass
class Result:
    """The outcome for one input.

    Args:
        path: str. The input file (a DICOM series: its name, see inputs.Input).
        kind: str. "image", "dicom", "nifti" or "dicom-series".
        predicted: str | None. Most probable class (None when the input failed).
        probability: float | None. Calibrated probability of the predicted class (a volume: its scan rule).
        probabilities: list[float] | None. Every class's probability, in the run's class order.
        expected: str | None. The label the input should have, when known.
        expected_source: str | None. Where `expected` came from: "test split", "--expect", "DICOM header",
            "file name".
        error: str | None. Why the input could not be classified.
        slices: list[dict] | None. For a volume: {"slice", "predicted", "probability", "probabilities"} per slice.
        slice_probabilities: np.ndarray | None. (slices, classes) calibrated probabilities; one row for an image.
        plane: str | None. "sagittal" (others are refused), or None when the input records no geometry.
        orientation: str | None. The orientation codes of (rows, columns, slices), e.g. "IPL" (volumes.py).
        files: tuple | None. A DICOM series' file of each slice, in slice order.
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
    slice_probabilities: object = None
    plane: str | None = None
    orientation: str | None = None
    files: tuple | None = None

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
    side = dataset.side_from_name(item.path)
    return (side, "file name") if side else (None, None)


def classify(predictor, inputs, *, expect=None, workers=None, progress=False, keep_images=False, debug=False):
    """Decodes inputs in a thread pool while the previous batch is predicted; returns one Result per input.

    Args:
        predictor: Predictor.
        inputs: list[Input].
        expect: str | None. "left" or "right": the side every input should be. Defaults to None.
        workers: int | None. Decoding threads. Defaults to half the usable CPUs (at least 1).
        progress: bool. A progress bar on stderr. Defaults to False.
        keep_images: bool. Also return the decoded uint8 images, {input index: (n, h, w, c)}. Defaults to False.
        debug: bool. Print the traceback of an unforeseen error of an input (it fails alone either way). Defaults
            to False.

    Returns:
        list[Result] in input order, or (results, images) with keep_images.
    """
    loaded = predictor.loaded
    classes = loaded.classes
    workers = max(1, int(_default_workers() if workers is None else workers))
    results = [Result(item.path, item.kind) for item in inputs]
    kept = {}
    pending = _PendingBatch(predictor, results, debug)
    # decoding tasks in flight: two batches ahead, so decoding goes on while a batch is predicted; bounds memory
    window = max(2 * workers, 2 * math.ceil(predictor.batch_size / _CHUNK))
    with tqdm(total=len(inputs), desc="classifying", unit="img", file=sys.stderr, disable=not progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        for indices, outcomes in _decoded_chunks(inputs, loaded.image_size, loaded.channels, workers, window,
                                                     debug):
            for index, outcome in zip(indices, outcomes):
                r = results[index]
                failed = isinstance(outcome, InputError)
                r.expected, r.expected_source = _expected(inputs[index], None if failed else outcome.side, classes,
                                                          expect)
                if failed:
                    r.error = str(outcome)
                    continue
                r.plane, r.orientation, r.files = outcome.plane, outcome.codes, outcome.files
                if keep_images:
                    kept[index] = outcome.images
                pending.add(index, outcome.images)
            bar.update(len(indices))
            if pending.count >= predictor.batch_size:
                pending.flush()
        pending.flush()
    return (results, kept) if keep_images else results


def _default_workers():
    """Half the usable cores decode; prediction (the slower part) uses the rest through its own threads."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // 2)


def _decoded_chunks(inputs, size, channels, workers, window, debug=False):
    """Yields (input indices, decode outcomes) per chunk of _CHUNK inputs, in input order, while up to `window`
    chunks decode ahead in a thread pool. An outcome is an inputs.Decoded or an InputError."""
    chunks = [list(range(s, min(s + _CHUNK, len(inputs)))) for s in range(0, len(inputs), _CHUNK)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def submit(chunk):
            return chunk, pool.submit(decode_chunk, [inputs[i] for i in chunk], size, channels, debug=debug)

        in_flight = collections.deque(submit(c) for c in chunks[:window])
        waiting = iter(chunks[window:])
        while in_flight:
            indices, future = in_flight.popleft()
            outcomes = future.result()
            chunk = next(waiting, None)
            if chunk is not None:
                in_flight.append(submit(chunk))
            yield indices, outcomes


class _PendingBatch:
    """Decoded images not yet predicted; `flush` predicts them together and fills in their inputs' Results.

    The error boundary of classifying: an unforeseen error while predicting a batch fails that batch's inputs (each
    with `inputs.internal_error`), and one while filling in an input's Result fails that input; the batch goes on."""

    def __init__(self, predictor, results, debug=False):
        self.predictor, self.results, self.debug = predictor, results, debug
        self.images, self.owners, self.count = [], [], 0  # arrays, (input index, slice count), total images

    def add(self, index, images):
        self.images.append(images)
        self.owners.append((index, len(images)))
        self.count += len(images)

    def flush(self):
        if not self.images:
            return
        owners, images = self.owners, self.images
        self.images, self.owners, self.count = [], [], 0
        try:
            probs = self.predictor.probabilities(np.concatenate(images))
        except Exception as e:  # noqa: BLE001  the boundary: see the class docstring
            for index, _ in owners:
                self.results[index].error = str(internal_error(e, self.results[index].path, debug=self.debug))
            return
        at = 0
        for index, count in owners:
            r = self.results[index]
            try:
                _fill(r, probs[at:at + count], self.predictor.loaded.classes)
            except Exception as e:  # noqa: BLE001
                r.predicted = r.probability = r.probabilities = r.slices = r.slice_probabilities = None
                r.error = str(internal_error(e, r.path, debug=self.debug))
            at += count


NON_FINITE = ("the model gave a non-finite output (NaN or infinity) for it, so it has no verdict; check the run's "
              "weights")


def _fill(r, probs, classes):
    """Sets Result r's prediction from its slices' probabilities (n, classes); a volume's by the scan rule. A
    non-finite probability (damaged weights, an overflow) makes the input a failure, never a verdict."""
    if not np.isfinite(probs).all():
        r.error = NON_FINITE
        return
    r.slice_probabilities = probs
    p = metrics.scan_probabilities(probs)
    if len(probs) > 1:
        r.slices = [{"slice": k, "predicted": classes[int(np.argmax(q))], "probability": float(q.max()),
                     "probabilities": [float(v) for v in q]} for k, q in enumerate(probs)]
    k = int(np.argmax(p))
    r.predicted, r.probability, r.probabilities = classes[k], float(p[k]), [float(v) for v in p]
