"""AKOA names and labels, discovery, the patient split and the manifest: which image files there are, what each one
shows, and which split it is in. Decoding and the image cache are in images.py, normalisation and batches in
batches.py; dataset.py is the front door (it re-exports these names and holds `prepare_data`, the summary and the CLI).

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

Files whose extension is not an image type (IMAGE_EXTENSIONS) are ignored; every other file left out is skipped with a
reason `"<code>: <sentence>"` (`_skip`). Discovery gives the codes no-label, no-patient, ambiguous-label and
label-conflict; docs/data.md ("The data command") lists them all.

Folders not searched are named, never passed over in silence (`Discovery.passed_over`, with the codes
linked-folder and unreadable-folder). A sub-folder that is a symbolic link is not followed: a link can lead out of the
data folder (pulling in another set's images, or the same images twice under two names) or back into it (a loop),
and a data set's meaning should not depend on where its links point; copy or move the folder in instead. A
sub-folder that cannot be listed (permission denied, an I/O error) is named with the system's reason; a data folder
that cannot be listed at all is an error. Hidden folders (a leading ".") are ignored, as before, and not named.
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from perceiver import fileio
from perceiver.errors import UserError

# === Constants ===
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_RATIOS = (0.6, 0.2, 0.2)  # train, val, test
SPLITS = ("train", "val", "test")
_MANIFEST_COLUMNS = ("path", "patient", "label", "split", "scan", "visit", "slice")


class DataError(UserError, ValueError):
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
        passed_over: list[tuple[str, str]]. (folder, "code: reason") for every sub-folder not searched: a symbolic
            link (linked-folder) or one that cannot be listed (unreadable-folder).
    """

    records: list
    skipped: list
    classes: list
    layout: str
    root: str = ""
    ignored: list = field(default_factory=list)
    passed_over: list = field(default_factory=list)


def _skip(code, detail):
    return f"{code}: {detail}"


def discover(root, *, extensions=IMAGE_EXTENSIONS):
    """Walks `root` recursively and labels every image file it can (see the module docstring for the rules).

    Args:
        root: str | os.PathLike. The data folder.
        extensions: tuple[str]. File extensions to read, lower case with the dot. Defaults to IMAGE_EXTENSIONS.

    Returns:
        A `Discovery`. Hidden files and folders (leading ".") are ignored; sub-folders that are symbolic links, or
        that cannot be listed, are not searched and are named in `passed_over`.

    Raises:
        DataError: if root is not a folder, cannot be listed, or holds no image with a readable label.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.exists(root) and os.path.lexists(root):
        raise DataError(f"data folder {root} is a symbolic link that leads nowhere (broken, or a loop): pass the "
                        "folder it should point to.")
    if not os.path.exists(root):
        raise DataError(f"data folder {root} does not exist: pass the folder that holds the images.")
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a folder: pass the folder that holds the images.")
    extensions = tuple(e.lower() for e in extensions)
    records, skipped, ignored, passed_over = [], [], [], []
    from_folders = False

    def unreadable(error):  # os.walk's onerror: a folder it could not list
        folder = os.path.normpath(error.filename or root)
        why = error.strerror or str(error)
        if folder == root:
            raise DataError(f"cannot read the data folder {root} ({why}): check its permissions, or pass another "
                            "folder.")
        passed_over.append((folder, _skip("unreadable-folder", f"the folder cannot be listed ({why})")))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if os.path.islink(os.path.join(dirpath, d)):  # not followed: see the module docstring
                passed_over.append((os.path.join(dirpath, d),
                                    _skip("linked-folder", "a symbolic link to a folder, not followed")))
                continue
            kept.append(d)
        dirnames[:] = kept
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
        if passed_over:
            note += (f" (not searched: {len(passed_over)} folder{'s' if len(passed_over) != 1 else ''}, e.g. "
                     f"{passed_over[0][0]}, {passed_over[0][1]})")
        raise DataError(f"no images with a readable label under {root}: expected AKOA file names or one "
                        f"sub-folder per class{note}.")
    records.sort(key=lambda r: r.path)
    classes = sorted({r.label for r in records})
    passed_over.sort()
    return Discovery(records, skipped, classes, "folders" if from_folders else "akoa", root, ignored, passed_over)


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
    # a failed write (a full disk, a name it cannot encode) leaves no temporary file behind (fileio.atomic)
    with fileio.atomic(path) as tmp:
        # surrogateescape: a file name's byte that is not UTF-8 is written back as that byte, and read back the same
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.DictWriter(f, fieldnames=_MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def read_manifest(path, *, root=None):
    """Reads a manifest written by `write_manifest`.

    Args:
        path: str. The CSV file.
        root: str | None. Data folder that relative paths are joined to; needed when the manifest has any.

    Returns:
        (records, split): list[Record] with absolute paths, and {path: split}.

    Raises:
        DataError: if the file is missing or malformed, a patient is in more than one split, or (with `root`) a path
            lies outside the data folder: a manifest reused with --split-manifest names images, never other files
            (`../../home/...`).
    """
    path = os.fspath(path)
    try:
        f = open(path, newline="", encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise DataError(f"cannot read manifest {path}: {e.strerror}.") from None
    with f:
        reader = csv.DictReader(f)
        try:  # a file read back is untrusted input: any damage is one sentence naming it
            missing = [c for c in ("path", "patient", "label", "split") if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"manifest {path} lacks the column(s) {', '.join(missing)}: expected "
                                f"{','.join(_MANIFEST_COLUMNS[:4])}.")
            rows = list(reader)
        except (csv.Error, OSError) as e:
            raise DataError(f"manifest {path} is damaged ({e}): write it again, or pass another.") from None
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
        if None in row or "\0" in p:
            why = "more fields than columns" if None in row else "a NUL byte in its path"
            raise DataError(f"manifest {path} line {line} is damaged ({why}): write it again, or pass another.")
        if row["split"] not in SPLITS:
            raise DataError(f"manifest {path} line {line}: split {row['split']!r} is not one of "
                            f"{', '.join(SPLITS)}.")
        if not os.path.isabs(p):
            if root_abs is None:
                raise DataError(f"manifest {path} lists relative paths: pass the data folder they are relative to.")
            p = os.path.join(root_abs, *p.split("/"))
        p = os.path.normpath(p)
        if root_abs is not None and os.path.commonpath([root_abs, p]) != root_abs:
            raise DataError(f"manifest {path} line {line}: {row['path']} lies outside the data folder {root_abs}; a "
                            "manifest may only name images inside it.")
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
