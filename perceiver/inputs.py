"""What driver.py classifies: finding the inputs (files, folders, globs; the test split of a run), gathering the
single-frame DICOM files of one series into one input, and decoding each input into uint8 slices the way training
decoded its images (`dataset.load_image`; volumes through volumes.py), after checking the plane it was cut in.

The plane check: the model was trained on sagittal slices (volumes.py's docstring says how AKOA's slices lie). A DICOM
or NIfTI input whose geometry says it is axial or coronal is refused, with one sentence naming its plane and
orientation codes; it is never reoriented to make it fit. A DICOM file without ImageOrientationPatient or a NIfTI file
whose qform and sform codes are 0 cannot be checked, so volumes.py refuses it as unsuitable (with the other header
rules of `volumes.check_header`); a PNG or other plain image records no geometry at all and is classified as the
training images were, its plane reported as unknown.

Unsuitable inputs: the model gives every input some side, even a blank page. An image (or volume) smaller than
MIN_SIDE pixels on a side, and one whose every pixel has the same value, shows no knee, so it is reported as
unsuitable (a failure of that input), never given a side. (A volume with some blank slices among real ones, such as
zero padding, is classified as a whole.)
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import stat
import sys
import traceback
import typing

import numpy as np
from PIL import Image

from perceiver import dataset
from perceiver import runs
from perceiver.plots import display_size
from perceiver.errors import UsageError, UserError, first_line
from perceiver.nifti import read_nifti_volume
from perceiver.volumes import (DICOM_EXTENSIONS, NIFTI_EXTENSIONS, UNSUITABLE, VolumeError, dicom_series_info,
                               looks_like_dicom, read_dicom_series, read_dicom_volume)

TRAINED_PLANE = "sagittal"
MIN_SIDE = 64  # pixels: the model sees 64 x 64; a smaller image shows no knee we can trust (AKOA's are 228 x 260)


class InputError(UserError):
    """One input that cannot be classified; the message is the reason, shown beside the file."""


# === Finding inputs ===
@dataclasses.dataclass
class Input:
    """One file to classify.

    Args:
        path: str. The file; for a DICOM series, its folder, followed by " (series <UID>)" when the folder holds
            several series.
        kind: str. "image", "dicom", "nifti" or "dicom-series".
        expected: str | None. A known label (the test split's), overriding what the file says.
        files: tuple[str] | None. A DICOM series' files, in the order they were found (decoding sorts them).
        series: str | None. A DICOM series' SeriesInstanceUID.
    """

    path: str
    kind: str
    expected: str | None = None
    files: tuple | None = None
    series: str | None = None


def input_kind(path, *, sniff=True):
    """"image", "dicom" or "nifti" by extension, else "dicom" when the content is DICOM, else None.

    DICOM is found by content, not by name: scanners and PACS exports name files by UID
    (`MR.1.3.12.2.1107.5.2...`), as `IM000123`, `I.001` or `*.IMA`, so any file whose extension is not a known image
    or NIfTI type is sniffed (`volumes.looks_like_dicom`: 132 bytes read). `.dcm` and `.dicom` files are DICOM by
    name. Only call it on a regular file (`regular_file`): opening a named pipe would wait for a writer.
    """
    name = os.path.basename(path).lower()
    if name.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    ext = os.path.splitext(name)[1]
    if ext in DICOM_EXTENSIONS:
        return "dicom"
    if ext in dataset.IMAGE_EXTENSIONS:
        return "image"
    if sniff and looks_like_dicom(path):
        return "dicom"
    return None


def regular_file(path):
    """True for a regular file (or a link to one); False for a pipe, socket, device or anything that vanished."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _supported():
    return ", ".join(e.lstrip(".") for e in dataset.IMAGE_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS)




def find_inputs(specs):
    """Expands INPUTs (files, folders searched recursively, globs) into Inputs, in order, without duplicates.

    Inside a folder, a sub-folder that is a symbolic link is not followed (a loop, or a link out of the archive,
    would otherwise pull in other scans or never end); one that cannot be read is passed over. Neither is silent:
    each is named in a warning on stderr and counted among the ignored entries. A link named on the command line
    is followed: name a linked folder to include it.

    Returns:
        (inputs, ignored): list[Input], and a collections.Counter of the entries met in folders or glob matches and
        passed over, by reason (verdicts.IGNORED's keys): files of an unsupported type, pipes and other special files,
        linked and unreadable sub-folders.

    Raises:
        UsageError: for a path that does not exist, a glob that matches nothing, a named file of an unsupported type,
            or when nothing at all is found.
    """
    inputs, seen, ignored = [], set(), collections.Counter()

    def add(path, named):
        if not regular_file(path):  # a pipe, socket or device: opening it to sniff could wait forever
            if named:
                raise UsageError(f"{path} is not a regular file (a pipe, socket or device); pass image files or "
                                 "folders.")
            ignored["special"] += 1
            return
        kind = input_kind(path)
        if kind is None:
            if named:
                raise UsageError(f"{path} is not a supported file type; supported: {_supported()}.")
            ignored["type"] += 1
            return
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            inputs.append(Input(path, kind))

    def unreadable(error):
        ignored["unreadable"] += 1
        print(f"warning: skipped the folder {error.filename}: it cannot be read ({error.strerror or error}); "
              "its files are not classified.", file=sys.stderr)

    def walk(folder):
        for root, dirs, files in os.walk(folder, onerror=unreadable):
            dirs.sort()
            for name in [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                dirs.remove(name)
                ignored["link"] += 1
                print(f"warning: skipped the folder {os.path.join(root, name)}: it is a symbolic link, and links "
                      "inside a folder are not followed; name it on the command line to include it.",
                      file=sys.stderr)
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
        elif os.path.exists(spec):
            add(spec, named=True)  # not a folder nor a regular file: refused with its reason
        elif os.path.lexists(spec):
            raise UsageError(f"{spec} is a symbolic link that leads nowhere (broken, or a loop); pass the file or "
                             "folder it should point to.")
        else:
            raise UsageError(f"{spec} does not exist; pass image files, folders or glob patterns.")
    if not inputs:
        raise UsageError(f"no supported files found in {', '.join(map(str, specs))}; supported: {_supported()}.")
    return group_dicom_series(inputs), ignored


def group_dicom_series(inputs):
    """Replaces the single-frame DICOM files of one folder that share a SeriesInstanceUID (two or more) by one
    "dicom-series" Input, at the place of the series' first file; every other input stays as it is.

    Files are gathered per folder, as exports keep a series: a copy of a series in another folder is another scan,
    not a set of duplicate slices. A file whose header cannot be read (or without pydicom) stays on its own, and
    decoding it gives the reason. A multi-frame file is a volume by itself and never joins a series.
    """
    members = {}
    for i, item in enumerate(inputs):
        if item.kind != "dicom":
            continue
        try:
            uid, frames = dicom_series_info(item.path)
        except Exception:  # noqa: BLE001  unreadable, or a header pydicom trips on: decoding it alone gives the reason
            continue
        if uid and frames == 1:
            members.setdefault((os.path.dirname(item.path), uid), []).append(i)
    series = {key: idx for key, idx in members.items() if len(idx) > 1}
    per_folder = collections.Counter(folder for folder, _ in series)
    first = {idx[0]: key for key, idx in series.items()}
    joined = {i for idx in series.values() for i in idx}
    out = []
    for i, item in enumerate(inputs):
        if i in first:
            folder, uid = first[i]
            name = folder or "."
            if per_folder[folder] > 1:
                name += f" (series {uid})"
            out.append(Input(name, "dicom-series", files=tuple(inputs[j].path for j in series[first[i]]), series=uid))
        elif i not in joined:
            out.append(item)
    return out


# === Decoding ===
def _slice_to_uint8(array2d, size, channels):
    try:
        return dataset.array_to_uint8_image(array2d, size, channels)
    except dataset.DataError as e:
        raise InputError(str(e)) from None


class Decoded(typing.NamedTuple):
    """A decoded input: uint8 images (n, height, width, channels) and what its header says.

    side: "left" / "right" from a DICOM header, or None. plane, codes: see volumes.Volume (None without geometry).
    files: a DICOM series' file of each image, in slice order; else None.
    """

    images: np.ndarray
    side: str | None = None
    plane: str | None = None
    codes: str | None = None
    files: tuple | None = None


def read_volume(item):
    """The volumes.Volume of a DICOM, NIfTI or DICOM-series input, read as stored (never reoriented).

    Raises:
        InputError: with volumes.py's reason.
    """
    try:
        if item.kind == "dicom":
            return read_dicom_volume(item.path)
        if item.kind == "dicom-series":
            return read_dicom_series(item.files)
        return read_nifti_volume(item.path)
    except VolumeError as e:
        raise InputError(str(e)) from None


def check_plane(volume):
    """Refuses a volume cut in another plane than the model was trained on (see the module docstring).

    Raises:
        InputError: naming the plane and orientation codes.
    """
    if volume.plane is not None and volume.plane != TRAINED_PLANE:
        raise InputError(f"it is {'an' if volume.plane[0] in 'aeiou' else 'a'} {volume.plane} scan (orientation "
                         f"{volume.codes}) and the model was trained on {TRAINED_PLANE} slices; pass the knee's "
                         f"{TRAINED_PLANE} series (inputs are never reoriented)")


def decode(item, size, channels):
    """Decodes one input to uint8 (n, height, width, channels): n = 1 for an image, one per slice for a volume.

    Returns:
        Decoded.

    Raises:
        InputError: with the reason (an axial or coronal volume: see `check_plane`).
    """
    if item.kind == "image":
        try:
            images = dataset.load_image(item.path, size=size, channels=channels)[None]
            with Image.open(item.path) as im:
                width, height = im.size
        except dataset.DataError as e:
            text = str(e)
            prefix = f"cannot use image {item.path}: "
            raise InputError((text[len(prefix):] if text.startswith(prefix) else text).rstrip(".")) from None
        except OSError as e:  # vanished between the two reads
            raise InputError(f"cannot read it again ({e.strerror or e})") from None
        check_suitable((height, width), images)
        return Decoded(images)
    volume = read_volume(item)
    check_plane(volume)
    if not volume.frames:
        raise InputError("the volume has no slices")
    images = np.stack([_slice_to_uint8(s, size, channels) for s in volume.frames])
    check_suitable(volume.frames[0].shape[:2], images)
    return Decoded(images, volume.side, volume.plane, volume.codes, volume.sources)


def check_suitable(shape, images):
    """Refuses an input that shows no knee (see the module docstring): `shape` (height, width) as stored, `images`
    its decoded slices.

    Raises:
        InputError: saying why it is unsuitable.
    """
    height, width = (int(d) for d in shape)
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{UNSUITABLE}it is {width} x {height} pixels, too small to show a knee (the model needs at "
                         f"least {MIN_SIDE} x {MIN_SIDE}; it was trained on 228 x 260 slices)")
    flat = images.reshape(len(images), -1)
    if (flat.min(axis=1) == flat.max(axis=1)).all():
        if len(images) > 1:
            raise InputError(f"{UNSUITABLE}every slice is blank (one value throughout), so it shows no knee")
        raise InputError(f"{UNSUITABLE}every pixel has the value {int(flat[0, 0])}, a blank image that shows no knee")


def decode_chunk(items, size, channels, *, debug=False):
    """`decode` of several inputs (one task for a worker thread); an input that fails gives its InputError.

    This is the error boundary of reading and decoding: whatever goes wrong with one input, foreseen or not, is that
    input's failure (`internal_error` for an exception the code did not foresee) and the other inputs go on. With
    `debug`, an unforeseen exception's traceback is also printed on stderr, for a bug report."""
    out = []
    for item in items:
        try:
            out.append(decode(item, size, channels))
        except InputError as e:
            out.append(e)
        except MemoryError:
            out.append(InputError("not enough memory to decode it"))
        except Exception as e:  # noqa: BLE001  the boundary: see above
            out.append(internal_error(e, item.path, debug=debug))
    return out


def internal_error(error, path, *, debug=False):
    """The InputError that stands for an exception nobody foresaw while handling the input at `path`: one sentence
    naming the exception, the file and what to do; with `debug`, the traceback is printed on stderr first."""
    if debug:
        print(f"traceback for {path}:\n{''.join(traceback.format_exception(error))}", file=sys.stderr, end="")
    detail = f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__
    return InputError(f"internal error ({detail}) while reading {path}; rerun with --debug for the traceback and "
                      "report it")


# === Test split ===
def test_split_inputs(loaded, data_root=None):
    """The test images recorded in the run folder's split.csv, with their labels as the expected class."""
    split_path = loaded.run_dir / runs.SPLIT
    if not loaded.config:
        raise UsageError(f"{loaded.weights_path} comes without its run folder's {runs.CONFIG}, so there is no test "
                         "split to classify; pass images to classify.")
    if not split_path.is_file():
        raise UsageError(f"{loaded.run_dir} has no {runs.SPLIT} to take test images from; pass images to classify.")
    root = data_root or str(runs.data_root(loaded.config))
    records, split = dataset.read_manifest(split_path, root=root)
    test = [r for r in records if split[r.path] == "test"]
    if not test:
        raise UsageError(f"{split_path} lists no test images.")
    if not any(os.path.exists(r.path) for r in test[:50]):
        raise UsageError(f"the test images of {loaded.run_dir} are not under {root} (moved or deleted?); "
                         "pass the data folder with --data-root.")
    return [Input(r.path, input_kind(r.path, sniff=False) or "image", expected=r.label) for r in test]


def display_image(item, slice_index=None):
    """The input as a uint8 grayscale (h, w) array near its own resolution, decoded as for the model."""
    if item.kind == "image":
        with Image.open(item.path) as im:
            w, h = im.size
        return dataset.load_image(item.path, size=display_size(h, w), channels=1)[..., 0]
    s = read_volume(item).frames[slice_index or 0]
    return _slice_to_uint8(s, display_size(*s.shape[:2]), 1)[..., 0]
