"""What driver.py classifies: finding the inputs (files, folders, globs; the test split of a run) and decoding each
into uint8 slices the way training decoded its images (`dataset.load_image`; volumes through volumes.py).
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
from PIL import Image

import dataset
import runs
from plots import display_size
from errors import UsageError
from volumes import DICOM_EXTENSIONS, NIFTI_EXTENSIONS, VolumeError, has_dicom_preamble, read_dicom, read_nifti


class InputError(Exception):
    """One input that cannot be classified; the message is the reason, shown beside the file."""


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


def input_kind(path, *, sniff=True):
    """"image", "dicom" or "nifti" by extension (an extensionless file with the DICM preamble is DICOM), else None."""
    name = os.path.basename(path).lower()
    if name.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    ext = os.path.splitext(name)[1]
    if ext in DICOM_EXTENSIONS:
        return "dicom"
    if ext in dataset.IMAGE_EXTENSIONS:
        return "image"
    if sniff and not ext and has_dicom_preamble(path):
        return "dicom"
    return None


def _supported():
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
    try:
        return dataset.array_to_uint8_image(array2d, size, channels)
    except dataset.DataError as e:
        raise InputError(str(e)) from None


def read_slices(item):
    """Raw 2-D slices of a DICOM or NIfTI input and the side its header states (None for NIfTI)."""
    try:
        if item.kind == "dicom":
            return read_dicom(item.path)
        return read_nifti(item.path), None
    except VolumeError as e:
        raise InputError(str(e)) from None


def decode(item, size, channels):
    """Decodes one input to uint8 (n, height, width, channels): n = 1 for an image, one per slice for a volume.

    Returns:
        (images, header_side).

    Raises:
        InputError: with the reason.
    """
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


def decode_chunk(items, size, channels):
    """`decode` of several inputs (one task for a worker thread); an input that fails gives its InputError."""
    out = []
    for item in items:
        try:
            out.append(decode(item, size, channels))
        except InputError as e:
            out.append(e)
        except MemoryError:
            out.append(InputError("not enough memory to decode it"))
    return out


# === Test split ===
def test_split_inputs(loaded, data_root=None):
    """The test images recorded in the run folder's split.csv, with their labels as the expected class."""
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


def display_image(item, slice_index=None):
    """The input as a uint8 grayscale (h, w) array near its own resolution, decoded as for the model."""
    if item.kind == "image":
        with Image.open(item.path) as im:
            w, h = im.size
        return dataset.load_image(item.path, size=display_size(h, w), channels=1)[..., 0]
    slices, _ = read_slices(item)
    s = slices[slice_index or 0]
    return _slice_to_uint8(s, display_size(*s.shape[:2]), 1)[..., 0]
