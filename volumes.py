"""Reading DICOM and NIfTI files as lists of raw 2-D slices, and the plane they were cut in, for driver and inputs.

    frames, side = read_dicom("knee.dcm")     # modality values (LUT or rescale applied), MONOCHROME1 inverted;
                                             # side: "left" / "right" from the header, or None
    slices = read_nifti("knee_LEFT.nii.gz")  # data[:, :, k] for each k, as stored (no reorientation)
    volume = read_dicom_volume("knee.dcm")   # Volume(frames, side, plane, codes): read_dicom's, plus the geometry
    volume = read_nifti_volume("knee.nii")   # Volume(frames, None, plane, codes): read_nifti's, plus the geometry
    uid = dicom_series_uid(path)             # group a folder's single-frame files by series, then read each group:
    volume = read_dicom_series(paths)        # Volume of the series' slices, sorted by their position (and .sources,
                                             # the file of each slice)

Size. A file can declare far more pixels than it holds: a 2 MB .nii.gz of a 1024^3 volume once took 4.8 GB and 37 s.
The declared size (NIfTI header, DICOM Rows x Columns x NumberOfFrames, summed over a series) is checked before any
pixels are decoded; over MAX_VOXELS (128 Mi, five times a 384 x 384 x 160 DESS volume) the file is refused.

pydicom and nibabel are optional extras (requirements-dev.txt), imported only when such a file is read; without them
the reader raises VolumeError naming the package to install.

Orientation. The model was trained on AKOA's sagittal slices: cut along the patient's left-right axis, each showing
the knee from the side with superior at the top. AKOA's PNGs are the slices data[:, :, k] of their .nii.gz volumes
along the stored array's last axis, with array axis 0 as image rows and no reorientation (driver.py's docstring says
why RAS+ would be wrong), so NIfTI slices are taken the same way. A scan cut in another plane shows the model a knee
it has never seen. The readers never reorient anything silently: they return the slices as stored (a DICOM series in
order of position) and report the plane they were cut in, and the caller decides to refuse a non-sagittal scan.

Orientation codes: three letters in nibabel's convention (`nibabel.aff2axcodes`), one per axis of the frames as
returned, (image rows, image columns, slices), each naming the patient direction that index runs towards: L / R
(left / right), A / P (anterior / posterior), S / I (superior / inferior). An AKOA-style sagittal scan of a right knee
is "IPL" (rows run down to inferior, columns to posterior, slices to the patient's left), of a left knee "IAL". The
plane follows from the last letter: L / R "sagittal", A / P "coronal", S / I "axial". An oblique axis takes the
letter of its largest component. Plane and codes are None for a file that records no geometry: a DICOM file without
ImageOrientationPatient, a NIfTI file whose qform and sform codes are both 0.

A DICOM series is sorted by ImagePositionPatient projected on the slice normal (the cross product of the two
ImageOrientationPatient direction cosines), the normal's sign chosen so that its largest component is positive in
DICOM's patient frame (LPS: towards the patient's left, posterior or superior). So a sagittal series runs from the
patient's right to left, as AKOA's slices do, whichever way its images face.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_PLANE_OF = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}
MAX_VOXELS = 128 * 1024 * 1024  # a volume (or series) declaring more is refused before its pixels are read
_SAME_POSITION_MM = 0.01  # slices of a series closer than this along the normal are at one position
_GAP = 1.5  # a step this many times the median spacing means a slice is missing


class VolumeError(Exception):
    """A DICOM or NIfTI file that cannot be read; the message is the reason, one phrase without the file's path (a
    series' message names its SeriesInstanceUID, and the file name where one file is at fault)."""


@dataclasses.dataclass(frozen=True)
class Volume:
    """The slices of one file or series, and where they lie in the patient.

    Args:
        frames: list of 2-D arrays (or (h, w, 3) uint8 for RGB DICOM), as `read_dicom` / `read_nifti` return them.
        side: str or None. "left" / "right" from the DICOM header; None when it states neither (NIfTI: always).
        plane: str or None. "sagittal", "coronal" or "axial": the plane the slices were cut in; None without geometry.
        codes: str or None. Orientation codes of (rows, columns, slices), e.g. "IPL" (see the module docstring);
            None without geometry.
        sources: tuple or None. For a DICOM series, the file each frame came from (frame order); else None.
    """

    frames: list
    side: str | None
    plane: str | None
    codes: str | None
    sources: tuple | None = None


def has_dicom_preamble(path):
    """True when the file has DICOM Part 10's 128-byte preamble followed by "DICM"."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _letter(vector):
    """The patient direction (L, R, A, P, S, I) nearest to `vector`, given in DICOM's patient frame (LPS)."""
    i = int(np.argmax(np.abs(vector)))
    return ("RL", "AP", "IS")[i][int(vector[i] > 0)]


def _plane_and_codes(down, right, through):
    """(plane, codes) of frames whose row index runs along `down`, column index along `right`, slices along
    `through` (vectors in LPS)."""
    codes = _letter(down) + _letter(right) + _letter(through)
    return _PLANE_OF[codes[2]], codes


# === DICOM ===
def _pydicom():
    try:
        import pydicom  # optional extra: DICOM input only
        import pydicom.pixels  # noqa: F401  (pydicom 3 or later)
    except ImportError:
        raise VolumeError("reading DICOM needs pydicom 3 or later: pip install 'pydicom>=3'") from None
    return pydicom


def _read_dataset(path, **kwargs):
    try:
        return _pydicom().dcmread(path, **kwargs)
    except VolumeError:
        raise
    except Exception as e:  # InvalidDicomError, truncated files, ...
        raise VolumeError(f"not a readable DICOM file ({_first_line(e)})") from None


def _side_letter(value):
    text = str(value or "").strip().upper()
    return {"L": "left", "R": "right"}.get(text[:1]) if text[:1] in ("L", "R") and len(text) <= 5 else None


def _dicom_side(ds):
    """"left" / "right" from ImageLaterality (0020,0062), else Laterality (0020,0060), else None."""
    return _side_letter(ds.get("ImageLaterality")) or _side_letter(ds.get("Laterality"))


def _is_identity_rescale(ds):
    """True without a Modality LUT Sequence and with slope 1, intercept 0 (or neither): nothing to apply."""
    if ds.get("ModalityLUTSequence"):
        return False
    return float(ds.get("RescaleSlope", 1) or 1) == 1 and float(ds.get("RescaleIntercept", 0) or 0) == 0


def _check_size(shape):
    """Refuses a declared shape of more than MAX_VOXELS voxels (see the module docstring)."""
    voxels = int(np.prod([int(d) for d in shape], dtype=np.float64))
    if voxels > MAX_VOXELS:
        raise VolumeError(f"it declares {' x '.join(str(int(d)) for d in shape)} = {voxels:,} voxels, over the "
                          f"limit of {MAX_VOXELS:,}; crop it or pass fewer slices")


def _declared_shape(ds):
    """(frames, rows, columns, samples) as a DICOM header declares them, before any pixel is decoded."""
    def number(keyword, default):
        try:
            return max(int(ds.get(keyword, default) or default), 0)
        except (TypeError, ValueError):
            return default

    return number("NumberOfFrames", 1), number("Rows", 0), number("Columns", 0), number("SamplesPerPixel", 1)


def _dicom_frames(ds):
    """The frames of a dataset as `read_dicom` describes them."""
    from pydicom.pixels import apply_modality_lut  # optional extra, imported by _read_dataset already

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise VolumeError("the DICOM file has no pixel data")
    _check_size(_declared_shape(ds))
    try:
        a = ds.pixel_array
    except Exception as e:  # a compressed transfer syntax without its decoder, inconsistent tags, ...
        raise VolumeError(f"pydicom cannot decode the pixels ({_first_line(e)})") from None
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        a = a[None]
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        if a.dtype != np.uint8:
            raise VolumeError(f"{a.dtype} colour DICOM is not supported; convert it to grayscale")
        return [f for f in a]
    if not _is_identity_rescale(ds):
        try:
            a = apply_modality_lut(a, ds)
        except Exception as e:  # a malformed LUT Descriptor or LUT Data
            raise VolumeError(f"pydicom cannot apply the modality LUT ({_first_line(e)})") from None
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":  # 0 is white: invert
        a = a.max() - a if a.dtype != np.uint8 else 255 - a
    return [f for f in a]


def read_dicom(path):
    """Reads a DICOM file's frames as 2-D arrays and its laterality.

    Grayscale frames are in modality units: the Modality LUT Sequence, or RescaleSlope and RescaleIntercept, applied
    by pydicom's `apply_modality_lut`; MONOCHROME1 (0 is white) is inverted. An identity rescale keeps the stored
    integer type, so an 8-bit image stays 8-bit.

    Returns:
        (frames, side): list of 2-D arrays (or (h, w, 3) uint8 for RGB), and "left" / "right" from ImageLaterality
        (0020,0062), else Laterality (0020,0060), else None.

    Raises:
        VolumeError: without pydicom 3, or for an unreadable file, missing or undecodable pixels, colour beyond 8 bits.
    """
    ds = _read_dataset(path)
    return _dicom_frames(ds), _dicom_side(ds)


def _vector(values, size):
    """`values` as a float array of `size` finite numbers, or None when absent or malformed."""
    try:
        v = np.array([float(x) for x in values], dtype=float)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (size,) and np.isfinite(v).all() else None


def _orientation(ds):
    """ImageOrientationPatient's (row, column) direction cosines, from the dataset or else from an enhanced
    multi-frame file's shared or first per-frame functional group; None when absent or degenerate."""
    iop = ds.get("ImageOrientationPatient")
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if iop is not None:
            break
        try:
            iop = ds.get(group)[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (AttributeError, IndexError, KeyError, TypeError):
            pass
    v = _vector(iop, 6)
    if v is None or np.linalg.norm(np.cross(v[:3], v[3:])) < 1e-3:
        return None
    return v[:3], v[3:]


def _normal(row, column):
    """Unit normal of the image plane, its largest component made positive (towards L, P or S)."""
    n = np.cross(row, column)
    n = n / np.linalg.norm(n)
    return -n if n[np.argmax(np.abs(n))] < 0 else n


def _frame_positions(ds):
    """ImagePositionPatient of every frame of an enhanced multi-frame file, (frames, 3); None when not recorded."""
    try:
        rows = [_vector(g.PlanePositionSequence[0].ImagePositionPatient, 3)
                for g in ds.get("PerFrameFunctionalGroupsSequence")]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return np.array(rows) if rows and all(r is not None for r in rows) else None


def dicom_plane(ds):
    """The plane and orientation codes of a DICOM dataset's frames, as stored: (plane, codes), or (None, None).

    The geometry is ImageOrientationPatient, or that of an enhanced multi-frame file's functional groups. The slice
    axis runs along the normal towards L, P or S (see the module docstring), or, in a multi-frame file whose frames
    record their positions, from the first frame towards the last.
    """
    orientation = _orientation(ds)
    if orientation is None:
        return None, None
    row, column = orientation
    through = _normal(row, column)
    positions = _frame_positions(ds)
    if positions is not None and len(positions) > 1 and np.dot(positions[-1] - positions[0], through) < 0:
        through = -through
    return _plane_and_codes(column, row, through)


def read_dicom_volume(path):
    """Reads a DICOM file as `read_dicom` does, with its plane and orientation codes (see `dicom_plane`).

    Returns:
        A `Volume`.

    Raises:
        VolumeError: as `read_dicom`.
    """
    ds = _read_dataset(path)
    return Volume(_dicom_frames(ds), _dicom_side(ds), *dicom_plane(ds))


def dicom_series_uid(path):
    """The SeriesInstanceUID of a DICOM file (None if it has none), read without its pixels.

    Raises:
        VolumeError: without pydicom 3, or for an unreadable file.
    """
    return dicom_series_info(path)[0]


def dicom_series_info(path):
    """(SeriesInstanceUID or None, number of frames) of a DICOM file, read without its pixels.

    Raises:
        VolumeError: without pydicom 3, or for an unreadable file.
    """
    ds = _read_dataset(path, stop_before_pixels=True)
    uid = ds.get("SeriesInstanceUID")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return (str(uid) if uid else None), frames


def read_dicom_series(paths):
    """Reads the single-frame files of one DICOM series as one volume, its slices sorted by position.

    Each file's frame is read as `read_dicom` reads it. The slices are sorted by ImagePositionPatient projected on the
    slice normal, which points towards L, P or S (see the module docstring), whatever the order of `paths`.

    Args:
        paths: iterable of str or Path. The files of one SeriesInstanceUID (see `dicom_series_uid`).

    Returns:
        A `Volume`: frames in order of position, the side the headers state, plane and codes of the sorted slices.

    Raises:
        VolumeError: for a file `read_dicom` refuses, files of several series, a multi-frame file, a file without
            ImageOrientationPatient or ImagePositionPatient, files of different orientations or image sizes, two
            files at one position, a missing slice (a step over 1.5 times the median spacing), or files that
            disagree on the side.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise VolumeError("the series has no files")
    datasets = [_series_member(p) for p in paths]
    uids = sorted({str(ds.get("SeriesInstanceUID") or "") for ds in datasets})
    if len(uids) > 1:
        raise VolumeError(f"the files belong to {len(uids)} series ({', '.join(uids)}); pass the files of one series")
    uid = uids[0] or "(no SeriesInstanceUID)"
    row, column = _series_orientation(datasets, paths, uid)
    through = _normal(row, column)
    positions = _series_positions(datasets, paths, through, uid)
    order = np.argsort(positions, kind="stable")
    _check_spacing(positions[order], uid)
    frames, rows, columns, samples = _declared_shape(datasets[0])
    _check_size((len(datasets), rows, columns, samples))
    frames = []
    for i in order:
        try:
            frames.append(_dicom_frames(datasets[i])[0])
        except VolumeError as e:
            raise VolumeError(f"{paths[i].name}: {e}") from None
    if len({f.shape for f in frames}) > 1:
        sizes = sorted({f.shape for f in frames})
        raise VolumeError(
            f"the files of series {uid} have different image sizes ({sizes}); the series is not one volume"
        )
    sides = {_dicom_side(ds) for ds in datasets} - {None}
    if len(sides) > 1:
        raise VolumeError(f"the files of series {uid} disagree on the side: some say left, some right")
    return Volume(frames, sides.pop() if sides else None, *_plane_and_codes(column, row, through),
                  sources=tuple(str(paths[i]) for i in order))


def _series_member(path):
    """One file of a series, read; refused, with its name, when it is not a single frame."""
    try:
        ds = _read_dataset(path)
    except VolumeError as e:
        raise VolumeError(f"{path.name}: {e}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise VolumeError(f"{path.name} holds {frames} frames; read a multi-frame file on its own, not in a series")
    return ds


def _series_orientation(datasets, paths, uid):
    """The (row, column) direction cosines all files of the series share."""
    first = None
    for ds, path in zip(datasets, paths):
        orientation = _orientation(ds) if "ImageOrientationPatient" in ds else None
        if orientation is None:
            raise VolumeError(f"{path.name} of series {uid} has no usable ImageOrientationPatient; "
                              "its slices cannot be put in order")
        iop = np.concatenate(orientation)
        if first is None:
            first = iop
        elif not np.allclose(iop, first, atol=1e-4):
            raise VolumeError(f"the files of series {uid} have different orientations ({_fmt(first)} and "
                              f"{_fmt(iop)}); the series is not one volume")
    return first[:3], first[3:]


def _series_positions(datasets, paths, through, uid):
    """Every file's ImagePositionPatient projected on the normal `through`, mm."""
    positions = []
    for ds, path in zip(datasets, paths):
        position = _vector(ds.get("ImagePositionPatient"), 3)
        if position is None:
            raise VolumeError(f"{path.name} of series {uid} has no usable ImagePositionPatient; "
                              "its slices cannot be put in order")
        positions.append(float(np.dot(position, through)))
    return np.array(positions)


def _check_spacing(positions, uid):
    """Refuses sorted slice positions with two at one place or a step over _GAP times the median step."""
    steps = np.diff(positions)
    if (steps < _SAME_POSITION_MM).any():
        at = positions[int(np.argmax(steps < _SAME_POSITION_MM))]
        count = int((np.abs(positions - at) < _SAME_POSITION_MM).sum())
        raise VolumeError(f"{count} files of series {uid} share the position {at:.6g} mm; the series is not one volume")
    if len(steps) >= 2:
        gap = steps > _GAP * np.median(steps)
        if gap.any():
            i = int(np.argmax(gap))
            raise VolumeError(f"a slice is missing between {positions[i]:.6g} mm and {positions[i + 1]:.6g} mm "
                              f"of series {uid} (the median spacing is {np.median(steps):.3g} mm)")


def _fmt(values):
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


# === NIfTI ===
def _nibabel():
    try:
        import nibabel  # optional extra: NIfTI input only
    except ImportError:
        raise VolumeError("reading NIfTI needs nibabel: pip install nibabel") from None
    return nibabel


def _load_nifti(path):
    """(nibabel image, its slices as `read_nifti` returns them)."""
    nibabel = _nibabel()
    try:
        image = nibabel.load(path)  # the header only: the data is read below, once its declared size is checked
    except Exception as e:  # ImageFileError, gzip errors
        raise VolumeError(f"not a readable NIfTI file ({_first_line(e)})") from None
    _check_size(image.shape)
    try:
        data = np.asanyarray(image.dataobj)  # stored dtype, or float when the header scales the values
    except Exception as e:  # gzip errors, truncated data
        raise VolumeError(f"not a readable NIfTI file ({_first_line(e)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        return image, [data]
    if data.ndim != 3:
        raise VolumeError(f"a {data.ndim}-D NIfTI image of shape {data.shape} is not supported; pass a 2-D or 3-D one")
    if data.dtype.kind == "c" or data.dtype.names:
        raise VolumeError(f"NIfTI data of type {data.dtype} is not supported")
    return image, [data[:, :, k] for k in range(data.shape[2])]


def read_nifti(path):
    """Reads a NIfTI volume as a list of 2-D slices along the stored array's last axis (see the module docstring).

    Raises:
        VolumeError: without nibabel, or for an unreadable file or data that is not 2-D or 3-D real numbers.
    """
    return _load_nifti(path)[1]


def nifti_plane(image):
    """The plane and orientation codes of a nibabel image's slices data[:, :, k]: (plane, codes), or (None, None).

    The codes are `nibabel.aff2axcodes(image.affine)` joined, e.g. "IPL"; the plane follows from the last one (see
    the module docstring). (None, None) when the header's qform and sform codes are both 0 (nibabel's affine is
    then a guess, not the scanner's geometry) or the affine is degenerate.
    """
    header = image.header
    try:
        if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
            return None, None
    except (KeyError, TypeError, ValueError):  # not a NIfTI header: trust the affine
        pass
    if image.affine is None:
        return None, None
    codes = _nibabel().aff2axcodes(image.affine)
    if len(codes) != 3 or None in codes:
        return None, None
    codes = "".join(codes)
    return _PLANE_OF[codes[2]], codes


def read_nifti_volume(path):
    """Reads a NIfTI file as `read_nifti` does, with its plane and orientation codes (see `nifti_plane`).

    Returns:
        A `Volume` with side None (NIfTI headers do not state the side).

    Raises:
        VolumeError: as `read_nifti`.
    """
    image, frames = _load_nifti(path)
    return Volume(frames, None, *nifti_plane(image))
