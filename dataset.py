"""Find, label, split, decode, cache and batch knee MRI slices for laterality (left vs right).

Two folder layouts are read, searched recursively:

* AKOA file names, anywhere under DIR:
  `OAI9001234_BaseLine_3_de3d1_SAG_3D_DESS_WE_RIGHT.nii.gz_17.png` gives patient `OAI9001234`, visit 3, side
  `right`, slice 17. The side may be spelled RIGHT, LEFT, Right, Left, R_I_G_H_T, L_E_F_T in any case; the `_`
  before `de3d1` may be missing; another image extension or a missing slice number still parses. A scan is
  patient + visit + side.
* One sub-folder per class: `DIR/<class>/**/*.png`. Any number of classes; the class is the first folder level under
  DIR; class names are sorted and index `i` is the i-th name (the mapping is saved with every run). Folder names that
  spell a side (`Left`, `R_I_G_H_T`, ...) become `left` / `right`. A file whose name holds an OAI id is grouped with
  that patient; any other file is its own group.

Mixed layouts: a file whose name parses as AKOA is labelled by its name, whatever folder it is in, except that a file
in a folder named for the other side is skipped as a label conflict (a wrong-side label is a patient-safety error, so
it is reported, never guessed). A file that is neither is skipped with its reason. `Discovery.layout` is "akoa" when
every label came from a file name, else "folders".

Usage:

    python dataset.py summary DIR                  # counts, the patient split, skipped files and why
    python dataset.py summary DIR --json           # the same as JSON (schema below)
    python dataset.py summary DIR --seed 1 --split 0.7,0.15,0.15
    python dataset.py summary DIR --manifest runs/x/split.csv   # reuse a saved split
    python dataset.py summary DIR --no-decode      # names only: quick, but cannot see corrupt files

Expected output for the AKOA-sized synthetic set (`python phantom.py data/akoa_like --patients 330`); the first run
decodes every image (about 15-20 s on 2 busy cores) and fills the cache that training reuses at the same size and
channels, later runs take about a second:

    AKOA data under /work/main/data/akoa_like (layout: akoa, classes: left, right)
    images     18,480   left 7,800 (42.2%)   right 10,680 (57.8%)
    patients      330   left 173   right 239
    scans         462   left 195   right 267
    split by patient (seed 0, ratios 0.6/0.2/0.2):
               images  patients         left        right   (images per class)
      train    11,080       198        4,600        6,480
      val       3,720        66        1,640        2,080
      test      3,680        66        1,560        2,120
    skipped 0 files
    ignored, not image types: .json 1

In code:

    found = discover("data/")                       # Discovery(records, skipped, classes, layout, root)
    split = split_by_patient(found.records, seed=0)  # {path: "train" | "val" | "test"}
    write_manifest("run/split.csv", found.records, split, root="data/")
    loaded = load_images([r.path for r in found.records])  # uint8 (n, 64, 64, 3), cached on disk
    labels = labels_to_indices([found.records[i] for i in loaded.ok_index], found.classes)
    ds = make_dataset(loaded.images, labels, batch_size=32, training=True, seed=0, augment=Augment(),
                      class_names=found.classes)    # tf.data under TensorFlow, a PyDataset otherwise
    # or all of the above at once: prepare_data("data/", seed=0)

Files whose extension is not an image type (IMAGE_EXTENSIONS) are ignored and only counted by extension (a
data folder often holds a README or a JSON beside the slices). Every other file left out is "skipped" with a reason
`"<code>: <sentence>"`; the codes are stable:
    no-label        no side in the file name and not inside a class folder
    no-patient      a side in the file name but no OAI patient id, and not inside a class folder
    ambiguous-label the file name names both sides
    label-conflict  the file name names one side, its folder the other
    not-in-manifest found on disk but not listed in the manifest in use
    missing         listed, but not on disk
    unreadable      the file cannot be opened (permissions, I/O error)
    empty           zero bytes
    not-image       Pillow does not recognise the content as an image
    truncated       the image data ends early
    too-large       more than MAX_PIXELS pixels (a decompression bomb, or not a slice)
    corrupt         any other decoding failure

Summary JSON (`--json`, `summarize()`), schema 1; keys are only ever added under a new schema number:
    schema          int, 1
    root            str, absolute data folder
    layout          "akoa" | "folders"
    classes         list[str], sorted; label index i is classes[i]
    decoded         bool, whether images were decoded (False with --no-decode: load failures unknown)
    image_size      [height, width] | null (null when not decoded)
    channels        int | null
    images          int, usable images (labelled and, when decoded, decoded)
    patients        int, patient groups (a file without a patient id is its own group)
    scans           int
    per_label       {label: {"images": int, "patients": int, "scans": int}} for every class
    split           {"source": "computed" | "manifest", "seed": int | null, "ratios": [float x3] | null,
                     "manifest": str | null}
    splits          {"train" | "val" | "test": {"images": int, "patients": int, "scans": int,
                     "per_label": {label: {"images": int, "patients": int}}}}
    skipped         list of {"path": str (relative to root when under it), "code": str, "reason": str}
    skipped_by_code {code: int}
    ignored_by_extension {".ext": int}, files that are not an image type

Pixel scaling happens in one place, `normalize` (uint8 [0, 255] -> float32 [-1, 1]); `load_image` + `normalize`
is the whole preprocessing at inference. Images are resized to the target size without keeping the aspect ratio
(228 x 260 slices become 64 x 64), with Pillow's antialiased bilinear filter; 16-bit and float images are scaled
so that their maximum becomes 255; alpha is composited onto black; EXIF orientation is ignored (pixels as stored).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

# === Constants ===
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_SIZE = (64, 64)  # (height, width)
DEFAULT_RATIOS = (0.6, 0.2, 0.2)  # train, val, test
SPLITS = ("train", "val", "test")
MAX_PIXELS = 64 * 1024 * 1024  # larger images are skipped as possible decompression bombs
PIXEL_SCALE = 127.5  # normalize: x / PIXEL_SCALE - PIXEL_OFFSET
PIXEL_OFFSET = 1.0
CACHE_VERSION = 1  # bump when decoding changes, to invalidate every cache entry
CACHE_KEEP = 8  # cache entries kept per cache folder (newest first)
_RESAMPLE_NAME = "bilinear"  # Pillow's bilinear resize is antialiased (the filter widens when shrinking)
_MANIFEST_COLUMNS = ("path", "patient", "label", "split", "scan", "visit", "slice")
_SERIAL_BELOW = 64  # fewer images than this are decoded in-process


class DataError(ValueError):
    """A problem with the user's data or arguments, stated in one sentence."""


# === Names and labels ===
_SIDE_RE = re.compile(r"(?<![A-Za-z])(R_?I_?G_?H_?T|L_?E_?F_?T)(?![A-Za-z])", re.IGNORECASE)
_PATIENT_RE = re.compile(r"(?<![A-Za-z])OAI[_-]?(\d+)", re.IGNORECASE)
_VISIT_RE = re.compile(r"baseline_(\d+)", re.IGNORECASE)
_VISIT_FALLBACK_RE = re.compile(r"_(\d+)_?de3d1", re.IGNORECASE)
_TRAILING_NUMBER_RE = re.compile(r"(\d+)$")


def _sides_in(name):
    return {("right" if m.group(1)[0].lower() == "r" else "left") for m in _SIDE_RE.finditer(name)}


def _stem(name):
    base = os.path.basename(name)
    root, ext = os.path.splitext(base)
    return root if ext.lower() in IMAGE_EXTENSIONS else base


def side_from_name(name):
    """Returns "left" or "right" when a file name states exactly one side, else None.

    Args:
        name: str. A file name or path; only the last component is read.
    """
    sides = _sides_in(_stem(name))
    return sides.pop() if len(sides) == 1 else None


def _patient_from_name(name):
    m = _PATIENT_RE.search(_stem(name))
    return f"OAI{m.group(1)}" if m else None


def _scan_id(patient, visit, label):
    return f"{patient}_{'x' if visit is None else visit}_{label}"


def parse_akoa_name(name):
    """Parses an AKOA slice file name; returns None unless it holds an OAI patient id and exactly one side.

    Args:
        name: str. A file name or path, e.g.
            `OAI9001234_BaseLine_3_de3d1_SAG_3D_DESS_WE_RIGHT.nii.gz_17.png`.

    Returns:
        `{"side": "right", "label": "right", "patient": "OAI9001234", "visit": 3, "slice": 17,
        "scan": "OAI9001234_3_right"}`; visit and slice are None when the name has none.
    """
    stem = _stem(name)
    patient = _patient_from_name(stem)
    matches = list(_SIDE_RE.finditer(stem))
    sides = {("right" if m.group(1)[0].lower() == "r" else "left") for m in matches}
    if patient is None or len(sides) != 1:
        return None
    side = sides.pop()
    m = _VISIT_RE.search(stem) or _VISIT_FALLBACK_RE.search(stem)
    visit = int(m.group(1)) if m else None
    m = _TRAILING_NUMBER_RE.search(stem[matches[-1].end():])
    slice_ = int(m.group(1)) if m else None
    return {"side": side, "label": side, "patient": patient, "visit": visit, "slice": slice_,
            "scan": _scan_id(patient, visit, side)}


def _folder_label(folder):
    """A class folder's label: side spellings become left/right, other names are kept as they are."""
    sides = _sides_in(folder)
    if len(sides) == 1 and _SIDE_RE.fullmatch(folder):
        return sides.pop()
    return folder


# === Discovery ===
@dataclass(frozen=True)
class Record:
    """One labelled image file.

    Args:
        path: str. Absolute path of the file.
        label: str. Class name ("left"/"right" for AKOA).
        patient: str. Patient group: "OAI<digits>", or the path relative to the data root when no id is known.
        scan: str. Scan group: patient_visit_side for AKOA names.
        visit: int | None. AKOA visit number.
        slice: int | None. AKOA slice index.
    """

    path: str
    label: str
    patient: str
    scan: str
    visit: int | None = None
    slice: int | None = None


@dataclass
class Discovery:
    """What `discover` found under a data root.

    Args:
        records: list[Record]. Labelled images, sorted by path.
        skipped: list[tuple[str, str]]. (path, "code: reason") for every file left out.
        classes: list[str]. Sorted class names; label index i is classes[i].
        layout: str. "akoa" when every label came from a file name, else "folders".
        root: str. The absolute data root.
        ignored: list[str]. Files whose extension is not an image type.
    """

    records: list
    skipped: list
    classes: list
    layout: str
    root: str = ""
    ignored: list = field(default_factory=list)


def _skip(code, detail):
    return f"{code}: {detail}"


def discover(root, *, extensions=IMAGE_EXTENSIONS):
    """Walks `root` recursively and labels every image file it can (see the module docstring for the rules).

    Args:
        root: str | os.PathLike. The data folder.
        extensions: tuple[str]. File extensions to read, lower case with the dot. Defaults to IMAGE_EXTENSIONS.

    Returns:
        A `Discovery`. Hidden files and folders (leading ".") are ignored.

    Raises:
        DataError: if root is not a folder or holds no image with a readable label.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.exists(root):
        raise DataError(f"data folder {root} does not exist: pass the folder that holds the images.")
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a folder: pass the folder that holds the images.")
    extensions = tuple(e.lower() for e in extensions)
    records, skipped, ignored = [], [], []
    from_folders = False
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            path = os.path.join(dirpath, fname)
            ext = os.path.splitext(fname)[1].lower()
            if ext not in extensions:
                ignored.append(path)
                continue
            rel = "/".join(parts + [fname])
            folder = _folder_label(parts[0]) if parts else None
            parsed = parse_akoa_name(fname)
            sides = _sides_in(_stem(fname))
            if len(sides) > 1 and folder in (None, "left", "right"):
                skipped.append((path, _skip("ambiguous-label", "the file name names both left and right")))
                continue
            name_side = next(iter(sides), None)
            if name_side and folder in ("left", "right") and folder != name_side:
                skipped.append((path, _skip("label-conflict",
                                            f"the file name says {name_side} but its folder says {folder}")))
                continue
            if parsed is not None:
                records.append(Record(path, parsed["label"], parsed["patient"], parsed["scan"],
                                      parsed["visit"], parsed["slice"]))
                continue
            if folder is None:
                if name_side:
                    skipped.append((path, _skip("no-patient", f"the file name says {name_side} but has no OAI "
                                                              "patient id, and the file is not in a class folder")))
                else:
                    skipped.append((path, _skip("no-label", "no left/right in the file name and the file is not "
                                                            "in a class folder")))
                continue
            from_folders = True
            patient = _patient_from_name(fname)
            if patient is None:
                records.append(Record(path, folder, rel, rel))
            else:
                m = _VISIT_RE.search(fname) or _VISIT_FALLBACK_RE.search(fname)
                visit = int(m.group(1)) if m else None
                records.append(Record(path, folder, patient, _scan_id(patient, visit, folder), visit, None))
    if not records:
        others = Counter(os.path.splitext(p)[1].lower() or "no extension" for p in ignored)
        note = (f" (also ignored, not image types: {', '.join(f'{k} {v}' for k, v in others.most_common(3))})"
                if others else "")
        raise DataError(f"no images with a readable label under {root}: expected AKOA file names or one "
                        f"sub-folder per class{note}.")
    records.sort(key=lambda r: r.path)
    classes = sorted({r.label for r in records})
    return Discovery(records, skipped, classes, "folders" if from_folders else "akoa", root, ignored)


def labels_to_indices(labels, classes):
    """Maps label names (or Records) to int32 class indices in `classes`."""
    index = {c: i for i, c in enumerate(classes)}
    names = [r.label if isinstance(r, Record) else r for r in labels]
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"labels {unknown} are not among the classes {list(classes)}.")
    return np.array([index[n] for n in names], dtype=np.int32)


# === Split by patient ===
def _check_ratios(ratios):
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError):
        raise DataError(f"split ratios {ratios!r} are not numbers: give three, e.g. 0.6,0.2,0.2.") from None
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-6 \
            or values[0] == 0:
        raise DataError(f"split ratios {tuple(ratios)} must be three non-negative numbers for train, val and test "
                        "that sum to 1, with train above 0.")
    fractions = [Fraction(v).limit_denominator(10**6) for v in values]
    total = sum(fractions)
    return [f / total for f in fractions]


def _dependent_round(frac, rng):
    """Rounds a bipartite table of fractions to 0/1, keeping every vertex's sum at its floor or ceiling.

    `frac` maps (row, column) to a Fraction in (0, 1) whose row sums are integers; the result is the set of cells
    rounded up. Row sums stay exact and column sums end within one of their fractional totals (dependent rounding,
    Gandhi et al. 2006), with the seeded `rng` choosing which cells.
    """
    x = {e: v for e, v in frac.items() if 0 < v < 1}
    up = set()
    while x:
        adj = defaultdict(list)
        for r, c in x:
            adj[("r", r)].append(("c", c))
            adj[("c", c)].append(("r", r))
        vertices = sorted(adj)
        leaves = [v for v in vertices if len(adj[v]) == 1]
        path, pos, prev = [rng.choice(leaves or vertices)], {}, None
        pos[path[0]] = 0
        while True:  # walk fractional edges until a cycle closes or the path gets stuck at a leaf
            u = path[-1]
            options = sorted(v for v in adj[u] if v != prev)
            if not options:
                break
            v = rng.choice(options)
            if v in pos:
                path = path[pos[v]:] + [v]
                break
            pos[v], prev = len(path), u
            path.append(v)
        edges = [(a[1], b[1]) if a[0] == "r" else (b[1], a[1]) for a, b in zip(path, path[1:])]
        plus, minus = edges[0::2], edges[1::2]
        alpha = min([1 - x[e] for e in plus] + [x[e] for e in minus])
        beta = min([x[e] for e in plus] + [1 - x[e] for e in minus])
        step = alpha if rng.random() * (alpha + beta) < beta else -beta
        for e in plus:
            x[e] += step
        for e in minus:
            x[e] -= step
        for e in edges:
            if x[e] == 1:
                up.add(e)
            if x[e] in (0, 1):
                del x[e]
    return up


def split_by_patient(records, *, ratios=DEFAULT_RATIOS, seed=0):
    """Splits records into train/val/test by patient, stratified by each patient's set of labels.

    All images of a patient (both knees, every visit) land in one split. Within each stratum (e.g. patients with
    only left scans, only right, both) and over all patients, each split's patient count is within one of
    ratio x count. The result depends only on the records' (path, patient, label) set and the seed.

    Args:
        records: iterable of Record.
        ratios: tuple[float, float, float]. Train, validation, test fractions of patients. Defaults to (0.6, 0.2,
            0.2).
        seed: int. Seeds the shuffle. Defaults to 0.

    Returns:
        dict mapping each record's path to "train", "val" or "test".
    """
    r = _check_ratios(ratios)
    records = list(records)
    labels_of = defaultdict(set)
    for rec in records:
        labels_of[rec.patient].add(rec.label)
    strata = defaultdict(list)
    for patient in sorted(labels_of):
        strata[tuple(sorted(labels_of[patient]))].append(patient)
    rng = random.Random(seed)
    floors, frac = {}, {}
    for s, patients in sorted(strata.items()):
        rng.shuffle(patients)
        for k in range(3):
            target = len(patients) * r[k]
            floors[s, k] = target.numerator // target.denominator
            frac[s, k] = target - floors[s, k]
    up = _dependent_round(frac, rng)
    split_of = {}
    for s, patients in sorted(strata.items()):
        start = 0
        for k in range(3):
            count = floors[s, k] + ((s, k) in up)
            for p in patients[start:start + count]:
                split_of[p] = SPLITS[k]
            start += count
        assert start == len(patients), (s, start, len(patients))
    split = {rec.path: split_of[rec.patient] for rec in records}
    seen = defaultdict(set)
    for rec in records:
        seen[rec.patient].add(split[rec.path])
    overlap = [p for p, s in seen.items() if len(s) > 1]
    assert not overlap, f"patients in more than one split: {overlap[:5]}"
    return split


# === Manifest ===
def write_manifest(path, records, split, *, root=None):
    """Writes the split as CSV: path, patient, label, split, scan, visit, slice (one row per image).

    Paths under `root` are written relative to it with "/" separators (so a moved data folder still matches);
    other paths, or all when root is None, are written absolute. The file is replaced atomically.
    """
    path = os.fspath(path)
    root_abs = os.path.abspath(os.fspath(root)) if root is not None else None
    rows = []
    for rec in records:
        p = os.path.abspath(rec.path)
        if root_abs is not None and (p == root_abs or p.startswith(root_abs.rstrip(os.sep) + os.sep)):
            p = os.path.relpath(p, root_abs).replace(os.sep, "/")
        rows.append({"path": p, "patient": rec.patient, "label": rec.label, "split": split[rec.path],
                     "scan": rec.scan, "visit": "" if rec.visit is None else rec.visit,
                     "slice": "" if rec.slice is None else rec.slice})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_manifest(path, *, root=None):
    """Reads a manifest written by `write_manifest`.

    Args:
        path: str. The CSV file.
        root: str | None. Data folder that relative paths are joined to; needed when the manifest has any.

    Returns:
        (records, split): list[Record] with absolute paths, and {path: split}.

    Raises:
        DataError: if the file is missing or malformed, or a patient is in more than one split.
    """
    path = os.fspath(path)
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read manifest {path}: {e.strerror}.") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in ("path", "patient", "label", "split") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"manifest {path} lacks the column(s) {', '.join(missing)}: expected "
                            f"{','.join(_MANIFEST_COLUMNS[:4])}.")
        rows = list(reader)
    if not rows:
        raise DataError(f"manifest {path} lists no images.")
    root_abs = os.path.abspath(os.fspath(root)) if root is not None else None
    records, split, splits_of = [], {}, defaultdict(set)

    def as_int(value, line, column):
        if value in (None, ""):
            return None
        try:
            return int(value)
        except ValueError:
            raise DataError(f"manifest {path} line {line}: {column} {value!r} is not a whole number.") from None

    for line, row in enumerate(rows, start=2):
        p = row["path"]
        if not p or not row["label"] or not row["patient"]:
            raise DataError(f"manifest {path} line {line} has an empty path, label or patient.")
        if row["split"] not in SPLITS:
            raise DataError(f"manifest {path} line {line}: split {row['split']!r} is not one of "
                            f"{', '.join(SPLITS)}.")
        if not os.path.isabs(p):
            if root_abs is None:
                raise DataError(f"manifest {path} lists relative paths: pass the data folder they are relative to.")
            p = os.path.join(root_abs, *p.split("/"))
        p = os.path.normpath(p)
        if p in split:
            raise DataError(f"manifest {path} lists {row['path']} twice.")
        visit = as_int(row.get("visit"), line, "visit")
        records.append(Record(p, row["label"], row["patient"],
                              row.get("scan") or _scan_id(row["patient"], visit, row["label"]),
                              visit, as_int(row.get("slice"), line, "slice")))
        split[p] = row["split"]
        splits_of[row["patient"]].add(row["split"])
    for patient, s in splits_of.items():
        if len(s) > 1:
            raise DataError(f"manifest {path} puts patient {patient} in more than one split "
                            f"({', '.join(sorted(s))}).")
    return records, split


# === Decoding ===
def _check_size(size):
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"image size {size!r} must be (height, width).") from None
    if h < 1 or w < 1:
        raise DataError(f"image size {size!r} must be positive.")
    return h, w


def _check_channels(channels):
    if channels not in (1, 3):
        raise DataError(f"channels {channels!r} must be 1 or 3.")
    return int(channels)


class _Skip(Exception):
    pass


def _to_array(im, size, channels):
    """Converts an opened, loaded Pillow image to uint8 (H, W, channels)."""
    from PIL import Image

    h, w = size
    resample = Image.Resampling.BILINEAR
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;"):  # 16/32-bit integer or float: scale the maximum to 255
        a = np.asarray(im, dtype=np.float32)
        if a.ndim != 2:
            raise _Skip(_skip("corrupt", f"unexpected {mode} image shape {a.shape}"))
        lo, hi = min(0.0, float(a.min())), float(a.max())
        fim = Image.fromarray(a, "F")
        if fim.size != (w, h):
            fim = fim.resize((w, h), resample)
        a = np.asarray(fim, dtype=np.float32)
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        out = np.clip(np.rint(a), 0, 255).astype(np.uint8)[..., None]
        return np.repeat(out, 3, axis=-1) if channels == 3 else out
    if mode == "P":
        mode_to = "RGBA" if "transparency" in im.info else "RGB"
        im = im.convert(mode_to)
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    gray = im.mode in ("L", "LA", "La")
    if im.mode in ("RGBA", "RGBa", "LA", "La"):  # composite onto black
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba).convert("L" if gray else "RGB")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if channels == 1 and im.mode == "RGB":
        im = im.convert("L")
    if im.size != (w, h):
        im = im.resize((w, h), resample)
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[..., None]
        if channels == 3:
            a = np.repeat(a, 3, axis=-1)
    return a


def _decode(path, size, channels, max_pixels):
    """Decodes one file to uint8 (H, W, C); raises _Skip("code: reason") for files to leave out."""
    from PIL import Image

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _Skip(_skip("missing", "file not found")) from None
    except OSError as e:
        raise _Skip(_skip("unreadable", e.strerror or str(e))) from None
    if st.st_size == 0:
        raise _Skip(_skip("empty", "the file is empty (0 bytes)"))
    im = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
            w, h = im.size
            if w * h > max_pixels:
                raise _Skip(_skip("too-large", f"{w} x {h} pixels is over the limit of {max_pixels:,} "
                                               "(possible decompression bomb)"))
            if w < 1 or h < 1:
                raise _Skip(_skip("corrupt", f"the image is {w} x {h} pixels"))
            if im.format == "JPEG":
                im.draft(im.mode, (size[1], size[0]))  # DCT scaling: decode no larger than needed
            im.load()
        except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
            if im is not None:
                im.close()
            raise e if isinstance(e, _Skip) else _pillow_skip(e) from None
    with im:
        try:
            return _to_array(im, size, channels)
        except (ValueError, OSError) as e:
            raise _Skip(_skip("corrupt", f"cannot convert the {im.mode} image: {e}")) from None


def _pillow_skip(e):
    """The skip reason for an exception raised while Pillow opened or decoded a file."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _Skip(_skip("too-large", str(e).rstrip(".")))
    if isinstance(e, UnidentifiedImageError):
        return _Skip(_skip("not-image", "Pillow does not recognise the content as an image"))
    if isinstance(e, (PermissionError, IsADirectoryError)):
        return _Skip(_skip("unreadable", e.strerror or str(e)))
    message = str(e) or type(e).__name__
    if isinstance(e, OSError) and "truncated" in message.lower():
        return _Skip(_skip("truncated", message))
    return _Skip(_skip("corrupt", message if isinstance(e, OSError) else f"{type(e).__name__}: {message}"))


def load_image(path, size=DEFAULT_SIZE, channels=3, *, max_pixels=MAX_PIXELS):
    """Decodes and resizes one image file to uint8 (height, width, channels), exactly as training does.

    Raises:
        DataError: naming the file and the reason when it cannot be used.
    """
    size, channels = _check_size(size), _check_channels(channels)
    try:
        return _decode(os.fspath(path), size, channels, max_pixels)
    except _Skip as e:
        raise DataError(f"cannot use image {path}: {e}.") from None


def array_to_uint8_image(array2d, size, channels):
    """Converts one 2-D slice (a DICOM or NIfTI slice, say) to uint8 (height, width, channels) exactly as
    `load_image` treats a PNG of it.

    uint8 slices go the 8-bit grayscale way (resized as they are); any other dtype (16-bit, signed, float) the 16-bit
    way: resized as float, then scaled so that the maximum becomes 255 (the minimum, if below 0, becomes 0). An
    (h, w, 3) uint8 array is an RGB image.

    Raises:
        DataError: when the array is not a usable slice.
    """
    from PIL import Image

    a = np.asarray(array2d)
    if a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8:
        im = Image.fromarray(np.ascontiguousarray(a), "RGB")
    elif a.ndim != 2:
        raise DataError(f"a slice must be 2-D, got shape {a.shape}")
    elif a.dtype == np.uint8:
        im = Image.fromarray(np.ascontiguousarray(a), "L")
    else:
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError("the slice holds NaN or infinite values")
        im = Image.fromarray(np.ascontiguousarray(a), "F")
    try:
        return _to_array(im, _check_size(size), _check_channels(channels))
    except _Skip as e:
        raise DataError(str(e)) from None


def _decode_chunk(paths, size, channels, max_pixels):
    out = np.zeros((len(paths), size[0], size[1], channels), np.uint8)
    failed = []
    for i, p in enumerate(paths):
        try:
            out[i] = _decode(p, size, channels, max_pixels)
        except _Skip as e:
            failed.append((i, str(e)))
    return out, failed


@dataclass
class LoadResult:
    """Images decoded by `load_images`.

    Args:
        images: np.ndarray. uint8 (n_ok, height, width, channels).
        ok: list[str]. Paths of the decoded images, in input order (images[i] is ok[i]).
        ok_index: np.ndarray. int64 positions of `ok` in the input list.
        skipped: list[tuple[str, str]]. (path, "code: reason") for files that could not be used.
        from_cache: bool. True when read from the disk cache.
    """

    images: np.ndarray
    ok: list
    ok_index: np.ndarray
    skipped: list
    from_cache: bool = False


def default_cache_dir():
    """`$PERCEIVER_CACHE`, else `~/.cache/akoa-perceiver`."""
    return os.environ.get("PERCEIVER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "akoa-perceiver")


def _cache_key(paths, size, channels, max_pixels):
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "size": list(size), "channels": channels,
                         "resample": _RESAMPLE_NAME, "max_pixels": max_pixels}).encode())
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            stamp = "-"
        h.update(p.encode("utf-8", "surrogateescape") + b"\0" + stamp.encode() + b"\n")
    return h.hexdigest()[:40]


def _cache_read(cache_dir, key, paths, size, channels):
    meta_path = os.path.join(cache_dir, key + ".json")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        images = np.load(os.path.join(cache_dir, key + ".npy"), allow_pickle=False)
    except (OSError, ValueError, EOFError):  # missing or damaged: decode again
        return None
    ok_index = np.asarray(meta.get("ok_index", []), dtype=np.int64)
    if (meta.get("version") != CACHE_VERSION or meta.get("n") != len(paths) or images.dtype != np.uint8
            or images.shape != (len(ok_index), size[0], size[1], channels)):
        return None
    try:
        os.utime(meta_path)  # mark as recently used
    except OSError:
        pass
    skipped = [(paths[i], reason) for i, reason in meta.get("skipped", [])]
    return LoadResult(images, [paths[i] for i in ok_index], ok_index, skipped, from_cache=True)


def _cache_write(cache_dir, key, images, ok_index, failed, n):
    """Writes images (.npy) then their index (.json), each atomically; the .json marks the entry complete."""
    os.makedirs(cache_dir, exist_ok=True)
    meta = {"version": CACHE_VERSION, "n": n, "ok_index": [int(i) for i in ok_index],
            "skipped": [[int(i), r] for i, r in sorted(failed.items())], "created": time.time()}
    tag = f".tmp{os.getpid()}_{random.getrandbits(32):08x}"
    npy, js = os.path.join(cache_dir, key + ".npy"), os.path.join(cache_dir, key + ".json")
    try:
        with open(npy + tag, "wb") as f:
            np.save(f, images, allow_pickle=False)
        os.replace(npy + tag, npy)
        with open(js + tag, "w", encoding="utf-8") as f:
            json.dump(meta, f)
        os.replace(js + tag, js)
    finally:
        for tmp in (npy + tag, js + tag):
            if os.path.exists(tmp):
                os.remove(tmp)
    entries = sorted((os.path.getmtime(os.path.join(cache_dir, f)), f[:-5]) for f in os.listdir(cache_dir)
                     if f.endswith(".json") and re.fullmatch(r"[0-9a-f]{40}\.json", f))
    for _, old in entries[:-CACHE_KEEP]:
        for ext in (".json", ".npy"):
            try:
                os.remove(os.path.join(cache_dir, old + ext))
            except OSError:
                pass


def load_images(paths, *, size=DEFAULT_SIZE, channels=3, cache_dir=None, cache=True, workers=None, progress=True,
                max_pixels=MAX_PIXELS):
    """Decodes image files to one uint8 array, in parallel, cached on disk.

    The cache key hashes the ordered path list, each file's size and mtime_ns, the target size, channels and the
    decoder version, so a second call with the same files returns at once and any changed file reloads the lot.

    Args:
        paths: list[str]. Image files, in the order wanted.
        size: tuple[int, int] | int. Target (height, width). Defaults to (64, 64).
        channels: int. 3 (gray images repeated) or 1 (colour images to luma). Defaults to 3.
        cache_dir: str | None. Cache folder. Defaults to `default_cache_dir()`.
        cache: bool. Read and write the cache. Defaults to True.
        workers: int | None. Decoding processes; 1 decodes in this process. Defaults to the usable CPU count.
        progress: bool. Show a progress bar on stderr. Defaults to True.
        max_pixels: int. Larger images are skipped as "too-large". Defaults to MAX_PIXELS.

    Returns:
        A `LoadResult`; unusable files are in `skipped` with their reasons, never in `images`.
    """
    paths = [os.fspath(p) for p in paths]
    size, channels = _check_size(size), _check_channels(channels)
    n = len(paths)
    key = None
    if cache and n:
        cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
        key = _cache_key(paths, size, channels, max_pixels)
        hit = _cache_read(cache_dir, key, paths, size, channels)
        if hit is not None:
            return hit
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(int(workers), 61))
    out = np.zeros((n, size[0], size[1], channels), np.uint8)
    failed = {}
    from tqdm import tqdm

    with tqdm(total=n, desc="decoding images", unit="img", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        if workers == 1 or n < _SERIAL_BELOW:
            for start in range(0, n, 256):
                images, bad = _decode_chunk(paths[start:start + 256], size, channels, max_pixels)
                out[start:start + len(images)] = images
                failed.update((start + i, r) for i, r in bad)
                bar.update(len(images))
        else:
            _decode_parallel(paths, size, channels, max_pixels, workers, out, failed, bar)
    ok_index = np.array([i for i in range(n) if i not in failed], dtype=np.int64)
    images = out if not failed else out[ok_index]
    result = LoadResult(images, [paths[i] for i in ok_index], ok_index,
                        [(paths[i], failed[i]) for i in sorted(failed)])
    if key is not None:
        try:
            _cache_write(cache_dir, key, images, ok_index, failed, n)
        except OSError as e:
            print(f"warning: could not write the image cache in {cache_dir} ({e.strerror or e}); "
                  "the next run will decode again.", file=sys.stderr)
    return result


def _start_method():
    """How decoding processes start: $PERCEIVER_START_METHOD if set, else fork where the OS has it.

    fork starts workers at once and works from any calling script, guarded by `if __name__ == "__main__"` or not;
    spawn and forkserver re-import the calling script in every worker and fail without that guard. The workers
    run only Pillow and numpy, never TensorFlow or JAX, so the threads those libraries hold in the parent do not
    matter to them; JAX's warning about fork is silenced for that reason (see _decode_parallel).
    """
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    wanted = os.environ.get("PERCEIVER_START_METHOD")
    if wanted:
        if wanted not in methods:
            raise DataError(f"PERCEIVER_START_METHOD={wanted} is not one of {', '.join(methods)}.")
        return wanted
    return "fork" if "fork" in methods else None


def _decode_parallel(paths, size, channels, max_pixels, workers, out, failed, bar):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    n = len(paths)
    chunk = max(32, min(512, math.ceil(n / (workers * 8))))
    starts = list(range(0, n, chunk))
    context = multiprocessing.get_context(_start_method())
    pending = set(starts)
    executor = ProcessPoolExecutor(max_workers=min(workers, len(starts)), mp_context=context)
    try:
        with warnings.catch_warnings():  # processes start here; JAX warns on any fork (see _start_method)
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            futures = {executor.submit(_decode_chunk, paths[s:s + chunk], size, channels, max_pixels): s
                       for s in starts}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                s = futures[fut]
                images, bad = fut.result()
                out[s:s + len(images)] = images
                failed.update((s + i, r) for i, r in bad)
                pending.discard(s)
                bar.update(len(images))
    except BrokenProcessPool:
        print("warning: a decoding process died; decoding the rest in this process.", file=sys.stderr)
        for s in sorted(pending):
            images, bad = _decode_chunk(paths[s:s + chunk], size, channels, max_pixels)
            out[s:s + len(images)] = images
            failed.update((s + i, r) for i, r in bad)
            bar.update(len(images))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# === Normalisation and augmentation ===
def normalize(images):
    """The one place pixels are scaled: uint8 [0, 255] -> float32 [-1, 1] as x / 127.5 - 1.

    Works on numpy arrays, and on TensorFlow tensors (inside tf.data) with the same constants.
    """
    if type(images).__module__.startswith("tensorflow"):
        import tensorflow as tf

        return tf.cast(images, tf.float32) / PIXEL_SCALE - PIXEL_OFFSET
    return np.asarray(images).astype(np.float32) / np.float32(PIXEL_SCALE) - np.float32(PIXEL_OFFSET)


def denormalize(images):
    """Inverse of `normalize` for display: float [-1, 1] -> uint8 [0, 255]."""
    a = (np.asarray(images, np.float32) + PIXEL_OFFSET) * PIXEL_SCALE
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@dataclass
class Augment:
    """Random training augmentation that keeps laterality: never a plain horizontal flip.

    Args:
        rotation_deg: float. Rotation drawn from +-rotation_deg degrees. Defaults to 10.0.
        shift: float. Shift drawn from +-shift of the width (x) and height (y). Defaults to 0.08.
        scale: float. Zoom factor drawn from 1 +- scale (below 1; never negative, so never a mirror).
            Defaults to 0.1.
        brightness: float. Intensity offset drawn from +-brightness of the full pixel range. Defaults to 0.1.
        contrast: float. Deviations from each image's mean multiplied by 1 +- contrast. Defaults to 0.15.
        flip_swap: bool. With probability 1/2 flip an image left-right AND swap its label left <-> right (a
            mirrored left knee looks like a right knee). Only for the classes exactly ["left", "right"]; off by
            default because a mirrored knee is not a real one. Defaults to False.

    Pixels moved in from outside the image are black (-1 after normalisation), so no mirrored content appears
    at the border. Intensities are clipped to [-1, 1].
    """

    rotation_deg: float = 10.0
    shift: float = 0.08
    scale: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.15
    flip_swap: bool = False

    def __post_init__(self):
        limits = {"rotation_deg": 180.0, "shift": 1.0, "scale": 1.0, "brightness": 1.0, "contrast": 1.0}
        for name, limit in limits.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < limit:
                raise ValueError(f"Augment {name}={value!r} must be a number in [0, {limit:g}).")
        if not isinstance(self.flip_swap, bool):
            raise ValueError(f"Augment flip_swap={self.flip_swap!r} must be True or False.")


def _swap_table(class_names):
    """Index map that swaps left and right; ValueError unless the classes are exactly left and right."""
    names = list(class_names)
    if sorted(names) != ["left", "right"]:
        raise ValueError(f"flip_swap needs the classes to be exactly ['left', 'right'], not {names}: a flip "
                         "only has a known label for laterality.")
    table = np.zeros(2, dtype=np.int32)
    table[names.index("left")], table[names.index("right")] = names.index("right"), names.index("left")
    return table


def _flip_and_swap(images, labels, which, swap):
    """The only horizontal flip in this module: it always swaps the label of every image it flips."""
    images[which] = images[which][:, :, ::-1, :]
    labels[which] = swap[labels[which]]
    return images, labels


def _affine(images, theta, scale, tx, ty, fill=-1.0):
    """Rotates, scales and shifts each image about its centre with bilinear sampling; outside pixels get fill."""
    b, h, w, c = images.shape
    padded = np.full((b, h + 2, w + 2, c), fill, np.float32)  # a border of fill: taps outside land on it
    padded[:, 1:-1, 1:-1] = images
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cos = (np.cos(theta) / scale).astype(np.float32)[:, None, None]
    sin = (np.sin(theta) / scale).astype(np.float32)[:, None, None]
    dx = xx[None] - np.float32(cx) - tx.astype(np.float32)[:, None, None]  # (batch, h, w)
    dy = yy[None] - np.float32(cy) - ty.astype(np.float32)[:, None, None]
    src_x = cos * dx + sin * dy + np.float32(cx)  # inverse map: output pixel -> source position
    src_y = cos * dy - sin * dx + np.float32(cy)
    x0, y0 = np.floor(src_x), np.floor(src_y)
    wx, wy = (src_x - x0)[..., None], (src_y - y0)[..., None]  # (batch, h, w, 1)
    x0, y0 = x0.astype(np.int32), y0.astype(np.int32)
    cols = [np.clip(x0 + d, -1, w) + 1 for d in (0, 1)]  # padded column of the left and right taps
    rows = [(np.clip(y0 + d, -1, h) + 1) * (w + 2) for d in (0, 1)]
    base = (np.arange(b, dtype=np.int32) * ((h + 2) * (w + 2)))[:, None, None]
    index = np.stack([base + r + col for r in rows for col in cols])  # (4, batch, h, w)
    v00, v01, v10, v11 = np.take(padded.reshape(-1, c), index, axis=0)  # each (batch, h, w, c)
    top = v00 + (v01 - v00) * wx
    bottom = v10 + (v11 - v10) * wx
    return top + (bottom - top) * wy


def augment_batch(images, labels, rng, aug, class_names):
    """Applies `aug` to a normalised batch in numpy; returns new (images float32, labels int32).

    Args:
        images: float array (batch, height, width, channels) in [-1, 1].
        labels: int array (batch,) of class indices into class_names.
        rng: np.random.Generator.
        aug: Augment.
        class_names: list[str]. Needed to swap labels when aug.flip_swap.
    """
    x = np.array(images, dtype=np.float32, copy=True)
    y = np.array(labels, dtype=np.int32, copy=True)
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"augment_batch expects images (batch, h, w, c) and labels (batch,), got {x.shape} and "
                         f"{y.shape}.")
    swap = _swap_table(class_names) if aug.flip_swap else None
    b, h, w, _ = x.shape
    theta = np.deg2rad(rng.uniform(-aug.rotation_deg, aug.rotation_deg, b))
    scale = rng.uniform(1 - aug.scale, 1 + aug.scale, b)
    tx = rng.uniform(-aug.shift, aug.shift, b) * w
    ty = rng.uniform(-aug.shift, aug.shift, b) * h
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast, b).astype(np.float32)[:, None, None, None]
    brightness = (2 * rng.uniform(-aug.brightness, aug.brightness, b)).astype(np.float32)[:, None, None, None]
    flip = rng.random(b) < 0.5
    if aug.rotation_deg or aug.scale or aug.shift:
        x = _affine(x, theta, scale, tx, ty)
    if aug.contrast or aug.brightness:
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * contrast + mean + brightness
        np.clip(x, -1.0, 1.0, out=x)
    if swap is not None:
        x, y = _flip_and_swap(x, y, flip, swap)
    return x, y


# === Batches ===
def _check_arrays(images, labels, batch_size, seed):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (n, height, width, channels), got {images.dtype} {images.shape}.")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {images.shape[0]} images.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} must be a positive integer.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer.")
    return images, labels.astype(np.int32)


def make_dataset(images_uint8, labels_int, *, batch_size, training, seed=0, augment=None, class_names=None,
                 backend=None, workers=1, epoch=None):
    """Batches (x float32 (B, H, W, C) in [-1, 1], y int32 (B,)) for Keras.

    Training: shuffled with `seed` and reshuffled every epoch, augmented when `augment` is given. Otherwise: in
    order, no augmentation. The last partial batch is always kept.

    With `epoch` set, the dataset is one epoch's worth: its order and augmentation come from (seed, epoch) alone,
    drawn in numpy. train.py builds one such dataset per epoch, which makes a resumed run repeat the epochs it missed
    exactly, and keeps the order the same on one device or several (tf.distribute rewrites a tf.data shuffle).

    Args:
        images_uint8: np.ndarray. uint8 (n, height, width, channels).
        labels_int: np.ndarray. Class indices (n,).
        batch_size: int.
        training: bool.
        seed: int. Seeds shuffling and augmentation. Defaults to 0.
        augment: Augment | None. Applied only when training. Defaults to None.
        class_names: list[str] | None. Required for augment.flip_swap.
        backend: str | None. "tensorflow" gives a tf.data.Dataset, anything else a keras.utils.PyDataset.
            Defaults to keras.backend.backend().
        workers: int. PyDataset threads preparing batches (augmentation is numpy, ~0.5 ms an image on one
            core; raise this to feed a GPU). Batches stay deterministic. tf.data tunes itself. Defaults to 1.
        epoch: int | None. Make the dataset for this epoch only (see above). Defaults to None.
    """
    images, labels = _check_arrays(images_uint8, labels_int, batch_size, seed)
    augment = augment if training else None
    if augment is not None and augment.flip_swap:
        _swap_table(class_names or [])
    if backend is None:
        import keras

        backend = keras.backend.backend()
    if epoch is not None and (not isinstance(epoch, (int, np.integer)) or epoch < 0):
        raise ValueError(f"epoch {epoch!r} must be a non-negative integer or None.")
    if backend == "tensorflow":
        return _tf_dataset(images, labels, int(batch_size), training, int(seed), augment, class_names, epoch)
    batches = _py_dataset_class()(images, labels, batch_size=int(batch_size), training=training, seed=int(seed),
                                  augment=augment, class_names=class_names, workers=int(workers))
    if epoch is not None:
        batches.epoch = int(epoch)
        batches._order = batches._permutation()
    return batches


def _tf_dataset(images, labels, batch_size, training, seed, augment, class_names, epoch=None):
    import tensorflow as tf

    n, h, w, c = images.shape
    images_t, labels_t = tf.constant(images), tf.constant(labels)
    if training and epoch is not None:  # the same order as the PyDataset path for this (seed, epoch)
        ds = tf.data.Dataset.from_tensor_slices(np.random.default_rng([seed, epoch]).permutation(n))
    else:
        ds = tf.data.Dataset.range(n)
        if training:
            ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda i: (normalize(tf.gather(images_t, i)), tf.gather(labels_t, i)),
                num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        def numpy_augment(x, y, s):
            rng = np.random.default_rng(int(s) % 2**63)
            return augment_batch(x, y, rng, augment, class_names)

        def tf_augment(xy, s):
            x, y = tf.numpy_function(numpy_augment, [xy[0], xy[1], s], [tf.float32, tf.int32], stateful=False)
            x.set_shape((None, h, w, c))
            y.set_shape((None,))
            return x, y

        if epoch is None:
            seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        else:
            batches = math.ceil(n / batch_size)
            seeds = tf.data.Dataset.from_tensor_slices(
                np.random.default_rng([seed, epoch, 1]).integers(0, 2**62, size=batches))
        ds = tf.data.Dataset.zip((ds, seeds)).map(tf_augment, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


_PY_DATASET = None


def _py_dataset_class():
    global _PY_DATASET
    if _PY_DATASET is not None:
        return _PY_DATASET
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        """Backend-neutral batches from in-memory arrays; the order for epoch e comes from (seed, e)."""

        def __init__(self, images, labels, *, batch_size, training, seed, augment, class_names, **kwargs):
            super().__init__(**kwargs)
            # === Config ===
            self.images, self.labels = images, labels
            self.batch_size, self.training, self.seed = batch_size, training, seed
            self.augment, self.class_names = augment, class_names
            self.epoch = 0
            self._order = self._permutation()

        def _permutation(self):
            n = len(self.images)
            if not self.training:
                return np.arange(n)
            return np.random.default_rng([self.seed, self.epoch]).permutation(n)

        def __len__(self):
            return math.ceil(len(self.images) / self.batch_size)

        def __getitem__(self, i):
            if not 0 <= i < len(self):
                raise IndexError(f"batch {i} out of range for {len(self)} batches")
            idx = self._order[i * self.batch_size:(i + 1) * self.batch_size]
            x, y = normalize(self.images[idx]), self.labels[idx]
            if self.augment is not None:
                rng = np.random.default_rng([self.seed, self.epoch, i, 1])
                x, y = augment_batch(x, y, rng, self.augment, self.class_names)
            return x, y

        def on_epoch_end(self):
            if self.training:
                self.epoch += 1
                self._order = self._permutation()

    _PY_DATASET = ArrayBatches
    return ArrayBatches


# === Everything at once ===
@dataclass
class PreparedData:
    """Data ready for training: per-split arrays, with every skipped file and why.

    Args:
        root: str. Absolute data folder.
        layout: str. "akoa" or "folders".
        classes: list[str]. Sorted class names.
        records: list[Record]. Usable records (decoded when decode was on), in discovery (path) or manifest order.
        split: dict[str, str]. path -> split for `records`.
        skipped: list[tuple[str, str]]. Files left out and why (discovery, manifest and decoding).
        images: dict[str, np.ndarray] | None. split -> uint8 images; None when not decoded.
        labels: dict[str, np.ndarray]. split -> int32 class indices.
        paths: dict[str, list[str]]. split -> paths, aligned with images and labels.
        source: str. "computed" or "manifest".
        from_cache: bool. Whether images came from the disk cache.
        ignored: list[str]. Files that are not an image type (not counted as skipped).
    """

    root: str
    layout: str
    classes: list
    records: list
    split: dict
    skipped: list
    images: dict | None
    labels: dict
    paths: dict
    source: str = "computed"
    from_cache: bool = False
    ignored: list = field(default_factory=list)


def prepare_data(root, *, ratios=DEFAULT_RATIOS, seed=0, manifest=None, decode=True, size=DEFAULT_SIZE, channels=3,
                 cache_dir=None, cache=True, workers=None, progress=True):
    """Discovers, splits by patient (or reads the manifest's split), decodes, and groups arrays by split.

    The split is made on the labelled files before decoding, so a file that later fails to decode never moves a
    patient between splits. With `manifest`, its records and split are used; files on disk that it does not list
    are skipped as "not-in-manifest", and files whose label on disk now differs from the manifest's as
    "label-conflict".
    """
    found = discover(root)
    skipped = list(found.skipped)
    if manifest is not None:
        records, split = read_manifest(manifest, root=found.root)
        listed, found_label = set(split), {r.path: r.label for r in found.records}
        skipped += [(r.path, _skip("not-in-manifest", "found on disk but not listed in the manifest"))
                    for r in found.records if r.path not in listed]
        conflicts = {r.path for r in records if found_label.get(r.path, r.label) != r.label}
        skipped += [(r.path, _skip("label-conflict", f"the manifest says {r.label} but the file says "
                                                     f"{found_label[r.path]}")) for r in records if r.path in conflicts]
        records = [r for r in records if r.path not in conflicts]
        classes = sorted({r.label for r in records})
        layout, source = found.layout, "manifest"
    else:
        records, split = found.records, split_by_patient(found.records, ratios=ratios, seed=seed)
        classes, layout, source = found.classes, found.layout, "computed"
    from_cache = False
    if decode:
        loaded = load_images([r.path for r in records], size=size, channels=channels, cache_dir=cache_dir,
                             cache=cache, workers=workers, progress=progress)
        skipped += loaded.skipped
        records = [records[i] for i in loaded.ok_index]
        from_cache = loaded.from_cache
    all_images = loaded.images if decode else None
    labels_all = labels_to_indices(records, classes)
    images_by, labels_by, paths_by = ({} if decode else None), {}, {}
    for name in SPLITS:
        idx = np.array([i for i, r in enumerate(records) if split[r.path] == name], dtype=np.int64)
        labels_by[name] = labels_all[idx]
        paths_by[name] = [records[i].path for i in idx]
        if decode:
            images_by[name] = all_images[idx]
    return PreparedData(found.root, layout, classes, records, {r.path: split[r.path] for r in records}, skipped,
                        images_by, labels_by, paths_by, source, from_cache, found.ignored)


# === Summary ===
def _code_of(reason):
    code, _, detail = reason.partition(": ")
    return (code, detail) if detail else ("other", reason)


def summarize(root, *, ratios=DEFAULT_RATIOS, seed=0, manifest=None, decode=True, size=DEFAULT_SIZE, channels=3,
              cache_dir=None, cache=True, workers=None, progress=False):
    """Counts images, patients and scans per label and per split, and lists skipped files (schema in the module
    docstring)."""
    size = _check_size(size)
    data = prepare_data(root, ratios=ratios, seed=seed, manifest=manifest, decode=decode, size=size,
                        channels=channels, cache_dir=cache_dir, cache=cache, workers=workers, progress=progress)

    def counts(records, with_scans=True):
        per_label = {}
        for label in data.classes:
            rs = [r for r in records if r.label == label]
            per_label[label] = {"images": len(rs), "patients": len({r.patient for r in rs})}
            if with_scans:
                per_label[label]["scans"] = len({r.scan for r in rs})
        return {"images": len(records), "patients": len({r.patient for r in records}),
                "scans": len({r.scan for r in records})}, per_label

    total, per_label = counts(data.records)
    splits = {}
    for name in SPLITS:
        part, part_labels = counts([r for r in data.records if data.split[r.path] == name], with_scans=False)
        splits[name] = {**part, "per_label": part_labels}

    def rel(p):
        p = os.path.abspath(p)
        return os.path.relpath(p, data.root).replace(os.sep, "/") if p.startswith(data.root + os.sep) else p

    skipped = []
    for path, reason in data.skipped:
        code, detail = _code_of(reason)
        skipped.append({"path": rel(path), "code": code, "reason": detail})
    manual = data.source == "manifest"
    return {
        "schema": 1,
        "root": data.root,
        "layout": data.layout,
        "classes": list(data.classes),
        "decoded": bool(decode),
        "image_size": list(size) if decode else None,
        "channels": int(channels) if decode else None,
        **total,
        "per_label": per_label,
        "split": {"source": data.source, "seed": None if manual else int(seed),
                  "ratios": None if manual else [float(r) for r in ratios],
                  "manifest": os.path.abspath(os.fspath(manifest)) if manual else None},
        "splits": splits,
        "skipped": skipped,
        "skipped_by_code": dict(sorted(Counter(s["code"] for s in skipped).items())),
        "ignored_by_extension": dict(sorted(Counter(os.path.splitext(p)[1].lower() or "(none)"
                                                    for p in data.ignored).items())),
    }


def format_summary(s, *, max_skipped=20):
    """Renders a `summarize` dict as the text table that `python dataset.py summary DIR` prints."""
    lines = [f"{'AKOA' if s['layout'] == 'akoa' else 'Class-folder'} data under {s['root']} "
             f"(layout: {s['layout']}, classes: {', '.join(s['classes'])})"]
    n = max(s["images"], 1)
    per = "   ".join(f"{c} {v['images']:,} ({100 * v['images'] / n:.1f}%)" for c, v in s["per_label"].items())
    lines.append(f"images    {s['images']:>7,}   {per}")
    lines.append(f"patients  {s['patients']:>7,}   "
                 + "   ".join(f"{c} {v['patients']:,}" for c, v in s["per_label"].items()))
    lines.append(f"scans     {s['scans']:>7,}   "
                 + "   ".join(f"{c} {v['scans']:,}" for c, v in s["per_label"].items()))
    sp = s["split"]
    how = (f"manifest {sp['manifest']}" if sp["source"] == "manifest"
           else f"seed {sp['seed']}, ratios {'/'.join(f'{r:g}' for r in sp['ratios'])}")
    lines.append(f"split by patient ({how}):")
    header = f"  {'':6} {'images':>8} {'patients':>9}" + "".join(f" {c[:12]:>12}" for c in s["classes"])
    lines.append(header + "   (images per class)")
    for name in SPLITS:
        v = s["splits"][name]
        lines.append(f"  {name:6} {v['images']:>8,} {v['patients']:>9,}"
                     + "".join(f" {v['per_label'][c]['images']:>12,}" for c in s["classes"]))
    if not s["decoded"]:
        lines.append("images not decoded (--no-decode): corrupt files are not detected")
    lines.append(f"skipped {len(s['skipped']):,} file{'s' if len(s['skipped']) != 1 else ''}"
                 + (": " + ", ".join(f"{c} {k}" for c, k in s["skipped_by_code"].items()) if s["skipped"] else ""))
    for item in s["skipped"][:max_skipped]:
        lines.append(f"  {item['path']}  {item['code']}: {item['reason']}")
    if len(s["skipped"]) > max_skipped:
        lines.append(f"  ... and {len(s['skipped']) - max_skipped:,} more (--json lists all)")
    if s["ignored_by_extension"]:
        ignored = s["ignored_by_extension"]
        lines.append("ignored, not image types: " + ", ".join(f"{k} {v:,}" for k, v in ignored.items()))
    return "\n".join(lines)


def _parse_floats(text, count, what):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise DataError(f"{what} {text!r} must be {count} comma-separated numbers.") from None
    if len(values) != count:
        raise DataError(f"{what} {text!r} must be {count} comma-separated numbers.")
    return values


def _parse_size(text):
    parts = text.split(",")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise DataError(f"--size {text!r} must be N or HEIGHT,WIDTH in pixels.") from None
    if len(values) not in (1, 2):
        raise DataError(f"--size {text!r} must be N or HEIGHT,WIDTH in pixels.")
    return _check_size(values * 2 if len(values) == 1 else values)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dataset.py", description="Inspect an AKOA or class-folder image set.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="images per label, patients, scans, the split, skipped files")
    p.add_argument("dir", help="data folder")
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the summary as JSON (schema 1) (default: text)")
    g = p.add_argument_group("split")
    g.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    g.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test patient fractions (default: 0.6,0.2,0.2)")
    g.add_argument("--manifest", default=None, help="reuse the split in this CSV instead (default: none)")
    g = p.add_argument_group("decoding")
    g.add_argument("--no-decode", action="store_true", help="read names only; skip decoding (default: decode)")
    g.add_argument("--size", default="64,64", help="target HEIGHT,WIDTH, shares the training cache (default: 64,64)")
    g.add_argument("--channels", type=int, default=3, choices=(1, 3), help="image channels (default: 3)")
    g.add_argument("--cache-dir", default=None, help="image cache folder (default: $PERCEIVER_CACHE or "
                                                     "~/.cache/akoa-perceiver)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the cache (default: use it)")
    g.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.dir, ratios=_parse_floats(args.split, 3, "--split"), seed=args.seed,
                            manifest=args.manifest, decode=not args.no_decode, size=_parse_size(args.size),
                            channels=args.channels, cache_dir=args.cache_dir, cache=not args.no_cache,
                            workers=args.workers, progress=sys.stderr.isatty())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
