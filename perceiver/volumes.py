"""Reading DICOM files (and, in nifti.py, NIfTI files) as lists of raw 2-D slices, and the plane they were cut in, for
driver and inputs; the Volume they give and the rules they share (size, orientation codes) live here.

    frames, side = read_dicom("knee.dcm")     # modality values (LUT or rescale applied), MONOCHROME1 inverted;
                                             # side: "left" / "right" from the header, or None
    slices = nifti.read_nifti("knee_LEFT.nii.gz")  # data[:, :, k] for each k, as stored (no reorientation)
    volume = read_dicom_volume("knee.dcm")   # Volume(frames, side, plane, codes): read_dicom's, plus the geometry
    volume = nifti.read_nifti_volume("knee.nii")   # Volume(frames, None, plane, codes), read_nifti's and geometry
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
letter of its largest component (`read_dicom_volume`, `read_dicom_series` and `nifti.read_nifti_volume` refuse a file
without geometry as unsuitable). Plane and codes are None for a file that records no geometry: a DICOM file without
ImageOrientationPatient, a NIfTI file whose qform and sform codes are both 0.

A DICOM series is sorted by ImagePositionPatient projected on the slice normal (the cross product of the two
ImageOrientationPatient direction cosines), the normal's sign chosen so that its largest component is positive in
DICOM's patient frame (LPS: towards the patient's left, posterior or superior). So a sagittal series runs from the
patient's right to left, as AKOA's slices do, whichever way its images face.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import warnings
from pathlib import Path

import numpy as np

from perceiver.canonical import PLANE_OF, Geometry, letter  # noqa: F401  (volumes.PLANE_OF for callers)
from perceiver.errors import VolumeError, first_line  # noqa: F401  (volumes.VolumeError, its old home)
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
MAX_VOXELS = 128 * 1024 * 1024  # a volume (or series) declaring more is refused before its pixels are read
_SAME_POSITION_MM = 0.01  # slices of a series closer than this along the normal are at one position
_GAP = 1.5  # a step this many times the median spacing means a slice is missing


@dataclasses.dataclass(frozen=True)
class Volume:
    """The slices of one file or series, and where they lie in the patient.

    Args:
        frames: list of 2-D arrays (or (h, w, 3) uint8 for RGB DICOM), as `read_dicom` / `nifti.read_nifti` return them.
        side: str or None. "left" / "right" from the DICOM header; None when it states neither (NIfTI: always).
        plane: str or None. "sagittal", "coronal" or "axial": the plane the slices were cut in; None without geometry.
        codes: str or None. Orientation codes of (rows, columns, slices), e.g. "IPL" (see the module docstring);
            None without geometry.
        sources: tuple or None. For a DICOM series, the file each frame came from (frame order); else None.
        geometry: canonical.Geometry or None. The direction and spacing of each axis (rows, columns, slices), as
            stored; None without geometry.
    """

    frames: list
    side: str | None
    plane: str | None
    codes: str | None
    sources: tuple | None = None
    geometry: Geometry | None = None  # where the array axes (rows, columns, slices) lie; canonical.py uses it


def looks_like_dicom(path):
    """True when the file's first bytes are DICOM: Part 10's preamble and "DICM", or (old files and some exports
    have no preamble) a data set that opens with a group 0002 or 0008 element, in explicit VR (a valid VR after the
    tag) or implicit VR little endian (a short even length after it). Reads 132 bytes, whatever the file's name."""
    return _dicom_head(_head(path))


def _dicom_head(head):
    """`looks_like_dicom` of a file's first 132 bytes."""
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in (0x0002, 0x0008) or element > 0x00FF:
            continue
        if head[4:6] in _VRS:
            return True
        length = struct.unpack("<I", head[4:8])[0]
        if order == "<" and length % 2 == 0 and length <= 1024:
            return True
    return False


_VRS = frozenset(v.encode() for v in "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
                                      "UC UI UL UN UR US UT UV".split())


def _head(path):
    """The first 132 bytes of a file (fewer for a short one; none when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return b""


def _plane_and_codes(down, right, through):
    """(plane, codes) of frames whose row index runs along `down`, column index along `right`, slices along
    `through` (vectors in LPS)."""
    codes = letter(down) + letter(right) + letter(through)
    return PLANE_OF[codes[2]], codes


# === DICOM ===
def _pydicom():
    try:
        import pydicom  # optional extra: DICOM input only
        import pydicom.pixels  # noqa: F401  (pydicom 3 or later)
    except ImportError:
        raise VolumeError("reading DICOM needs pydicom 3.0.1 or later: pip install 'pydicom>=3.0.1'") from None
    # pydicom warns about every odd header it reads (an invalid IS value, implicit VR where explicit was declared);
    # a scanner archive has hundreds, and the readers here say in one sentence what makes a file unusable.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    return pydicom


def _read_dataset(path, **kwargs):
    """pydicom's data set of a file; a file without Part 10's preamble is read with `force` when its first bytes
    are a DICOM data set (`looks_like_dicom`), as old files and some exports are written."""
    pydicom = _pydicom()
    head = _head(path)  # read once: the preamble decides, and without it the data set's first bytes
    force = head[128:132] != b"DICM" and _dicom_head(head)
    try:
        return pydicom.dcmread(path, force=force, **kwargs)
    except Exception as e:  # InvalidDicomError, truncated files, ...
        raise VolumeError(f"not a readable DICOM file ({first_line(e)})") from None


def _side_letter(value):
    text = str(value or "").strip().upper()
    return {"L": "left", "R": "right"}.get(text[:1]) if text[:1] in ("L", "R") and len(text) <= 5 else None


def _dicom_side(ds):
    """"left" / "right" from ImageLaterality (0020,0062), else Laterality (0020,0060), else None."""
    return _side_letter(_get(ds, "ImageLaterality")) or _side_letter(_get(ds, "Laterality"))


def _get(ds, keyword, default=None):
    """`ds.get(keyword, default)`, where a value pydicom cannot convert (an IS of `inf`, bytes that are no number)
    is a reason, not an exception from deep inside pydicom.

    Raises:
        VolumeError: naming the element.
    """
    try:
        return ds.get(keyword, default)
    except Exception as e:  # noqa: BLE001  OverflowError, ValueError, ... from pydicom's conversion of the value
        raise VolumeError(f"its {keyword} header element cannot be read ({first_line(e)}); the file is malformed") \
            from None


def header_number(ds, keyword, default, *, whole=True):
    """A numeric header element (an IS or DS value) as int (`whole`) or float; `default` when absent or empty.

    Scanners and PACS write malformed values (`1A`, `nan`, several values where one belongs): those are a reason to
    refuse the file, said in one phrase, never a ValueError deep in the reader.

    Raises:
        VolumeError: naming the element and its value.
    """
    value = _get(ds, keyword)
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return default
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            raise ValueError("several values")
        number = float(str(value).strip())
        if not math.isfinite(number) or (whole and number != int(number)):
            raise ValueError("not finite or not whole")
    except (TypeError, ValueError):
        kind = "a whole number" if whole else "a number"
        raise VolumeError(f"its {keyword} header element is {_shown(value)}, not {kind}; the file is malformed") from None
    return int(number) if whole else number


def _shown(value):
    """A header value as the user should read it in a message: quoted, at most 40 characters."""
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _is_identity_rescale(ds):
    """True without a Modality LUT Sequence and with slope 1, intercept 0 (or neither): nothing to apply."""
    if _get(ds, "ModalityLUTSequence"):
        return False
    return (header_number(ds, "RescaleSlope", 1.0, whole=False) == 1
            and header_number(ds, "RescaleIntercept", 0.0, whole=False) == 0)


def check_size(shape):
    """Refuses a declared shape of more than MAX_VOXELS voxels (see the module docstring)."""
    voxels = math.prod(int(d) for d in shape)  # Python integers: a header may declare 10^308 frames
    if voxels > MAX_VOXELS:
        declared = f"{' x '.join(str(int(d)) for d in shape)} = {voxels:,}" if voxels < 10 ** 30 else "over 10^30"
        raise VolumeError(f"it declares {declared} voxels, over the limit of {MAX_VOXELS:,}; crop it or pass fewer "
                          "slices")


def _declared_shape(ds):
    """(frames, rows, columns, samples) as a DICOM header declares them, before any pixel is decoded.

    Raises:
        VolumeError: for a malformed or negative count (see `header_number`).
    """
    shape = []
    for keyword, default in (("NumberOfFrames", 1), ("Rows", 0), ("Columns", 0), ("SamplesPerPixel", 1)):
        value = header_number(ds, keyword, default)
        if value < 0:
            raise VolumeError(f"its {keyword} header element is {value}, a negative count; the file is malformed")
        shape.append(value)
    return tuple(shape)


def _dicom_frames(ds):
    """The frames of a dataset as `read_dicom` describes them."""
    from pydicom.pixels import apply_modality_lut  # optional extra, imported by _read_dataset already

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise VolumeError("the DICOM file has no pixel data")
    check_size(_declared_shape(ds))
    try:
        a = ds.pixel_array
    except Exception as e:  # a compressed transfer syntax without its decoder, inconsistent tags, ...
        raise VolumeError(f"pydicom cannot decode the pixels ({first_line(e)})") from None
    frames, _, _, samples = _declared_shape(ds)
    if frames <= 1 and a.ndim == (3 if samples > 1 else 2):
        a = a[None]
    if a.ndim != (4 if samples > 1 else 3):
        raise VolumeError(f"its pixels have shape {a.shape}, which does not match its header ({frames} frames of "
                          f"{samples} samples); the file is malformed")
    if samples == 3:
        if a.dtype != np.uint8:
            raise VolumeError(f"{a.dtype} colour DICOM is not supported; convert it to grayscale")
        return [f for f in a]
    if not _is_identity_rescale(ds):
        try:
            a = apply_modality_lut(a, ds)
        except Exception as e:  # a malformed LUT Descriptor or LUT Data
            raise VolumeError(f"pydicom cannot apply the modality LUT ({first_line(e)})") from None
    if str(_get(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":  # 0 is white: invert
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
    iop = _get(ds, "ImageOrientationPatient")
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if iop is not None:
            break
        try:
            iop = _get(ds, group)[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except Exception:  # noqa: BLE001  absent, or a value pydicom cannot convert: no orientation from there
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
                for g in _get(ds, "PerFrameFunctionalGroupsSequence")]
    except Exception:  # noqa: BLE001  absent, or a value pydicom cannot convert: no positions recorded
        return None
    return np.array(rows) if rows and all(r is not None for r in rows) else None


def dicom_plane(ds):
    """The plane and orientation codes of a DICOM dataset's frames, as stored: (plane, codes), or (None, None).

    The geometry is ImageOrientationPatient, or that of an enhanced multi-frame file's functional groups. The slice
    axis runs along the normal towards L, P or S (see the module docstring), or, in a multi-frame file whose frames
    record their positions, from the first frame towards the last.
    """
    geometry = dicom_geometry(ds)
    if geometry is None:
        return None, None
    return PLANE_OF[geometry.codes[2]], geometry.codes


def dicom_geometry(ds):
    """The Geometry of a DICOM dataset's frames as stored (rows, columns, frames), or None without orientation: the
    directions of `dicom_plane`, the spacing of PixelSpacing and of the frames' positions (else
    SpacingBetweenSlices, else SliceThickness; 1 mm when none is recorded)."""
    orientation = _orientation(ds)
    if orientation is None:
        return None
    row, column = orientation
    through = _normal(row, column)
    positions = _frame_positions(ds)
    step = None
    if positions is not None and len(positions) > 1:
        if np.dot(positions[-1] - positions[0], through) < 0:
            through = -through
        step = float(np.median(np.abs(np.diff(positions @ through))))
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        if not step:
            value = _vector([_get(ds, keyword)], 1)
            step = float(value[0]) if value is not None else None
    return Geometry(np.stack([column, row, through]), (*_pixel_spacing(ds), step or 1.0))


def _pixel_spacing(ds):
    """(between rows, between columns) in mm from PixelSpacing; (1, 1) when absent or malformed."""
    value = _vector(_get(ds, "PixelSpacing"), 2)
    return (float(value[0]), float(value[1])) if value is not None and (value > 0).all() else (1.0, 1.0)


# === Which DICOM images may get a side ===
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_PLANNING_TYPES = {"LOCALIZER": "a localizer", "SCOUT": "a scout"}
_TILED_TYPES = {"MOSAIC": "a Siemens mosaic (several slices tiled in one image)",
                "PROJECTION IMAGE": "a projection (several slices collapsed into one image)"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants .1 to .4
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR's MediaStorageSOPClassUID
UNSUITABLE = "unsuitable: "  # how a reason starts when the input is readable but cannot be given a side


def is_dicomdir(ds):
    """True for a DICOMDIR: the index of a DICOM export (patients, studies, series), which holds no image."""
    meta = getattr(ds, "file_meta", None)
    sop = str(meta.get("MediaStorageSOPClassUID", "") if meta is not None else "").strip()
    return sop == MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds


def check_header(ds):
    """Refuses, from the header alone and before any pixel is decoded, a DICOM image that cannot be a sagittal knee
    MR slice, or whose plane cannot be checked: the header rules of the README's "What it guarantees".

    In order: a DICOMDIR; a Modality other than MR (CT, CR, US, OT, SEG, RTDOSE, ...; a file with no Modality at all
    is judged by the rules below); a secondary capture (a screenshot or scanned page); a colour image (a
    PhotometricInterpretation other than MONOCHROME1/2, or more than one sample per pixel); a localizer or scout
    (ImageType); several slices in one image (ImageType MOSAIC or PROJECTION IMAGE); and an image without
    ImageOrientationPatient (in the dataset or an enhanced file's functional groups), whose plane cannot be checked.

    Raises:
        VolumeError: "unsuitable: <the reason>".
    """
    if is_dicomdir(ds):
        raise VolumeError("unsuitable: it is a DICOMDIR, the index of a DICOM export, not an image; the images it "
                          "lists are read from their own files")
    modality = str(_get(ds, "Modality") or "").strip().upper()
    if modality and modality != "MR":
        raise VolumeError(f"unsuitable: its Modality is {_shown(modality)}, not MR; only a knee MR image gets a side")
    sop = str(_get(ds, "SOPClassUID") or "").strip()
    if sop == _SECONDARY_CAPTURE or sop.startswith(_SECONDARY_CAPTURE + "."):
        raise VolumeError("unsuitable: it is a secondary capture (a screenshot or scanned image, SOPClassUID "
                          f"{sop}), not a scanner's slice")
    photometric = str(_get(ds, "PhotometricInterpretation") or "").strip().upper()
    if (photometric and photometric not in GREYSCALE) or header_number(ds, "SamplesPerPixel", 1) != 1:
        raise VolumeError(f"unsuitable: it is a colour image (PhotometricInterpretation {_shown(photometric)}); MR "
                          "slices are greyscale")
    image_type = {str(v).strip().upper() for v in _values(_get(ds, "ImageType"))}
    for word, what in {**_PLANNING_TYPES, **_TILED_TYPES}.items():
        if word in image_type:
            raise VolumeError(f"unsuitable: it is {what} (ImageType {word}), not a diagnostic slice")
    if _orientation(ds) is None:
        raise VolumeError("unsuitable: it has no usable ImageOrientationPatient, so the plane it was cut in cannot be "
                          "checked (the model only knows sagittal slices)")


def _values(value):
    """A DICOM element's value as a list: [] for None, one item for a single value, the items of a MultiValue."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def read_dicom_volume(path):
    """Reads a DICOM file as `read_dicom` does, with its plane and orientation codes (see `dicom_plane`).

    Returns:
        A `Volume`.

    Raises:
        VolumeError: as `read_dicom`.
    """
    ds = _read_dataset(path)
    check_header(ds)
    return Volume(_dicom_frames(ds), _dicom_side(ds), *dicom_plane(ds), geometry=dicom_geometry(ds))


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
    uid = _get(ds, "SeriesInstanceUID")
    try:
        frames = header_number(ds, "NumberOfFrames", 1)
    except VolumeError:
        frames = 1  # grouped like a single frame; reading it then says what is wrong
    return (str(uid).strip() if uid else None) or None, frames


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
    uids = sorted({str(_get(ds, "SeriesInstanceUID") or "") for ds in datasets})
    if len(uids) > 1:
        raise VolumeError(f"the files belong to {len(uids)} series ({', '.join(uids)}); pass the files of one series")
    uid = uids[0] or "(no SeriesInstanceUID)"
    row, column = _series_orientation(datasets, paths, uid)
    through = _normal(row, column)
    positions = _series_positions(datasets, paths, through, uid)
    order = np.argsort(positions, kind="stable")
    _check_spacing(positions[order], uid)
    frames, rows, columns, samples = _declared_shape(datasets[0])
    check_size((len(datasets), rows, columns, samples))
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
    steps = np.diff(positions[order])
    geometry = Geometry(np.stack([column, row, through]),
                        (*_pixel_spacing(datasets[0]), float(np.median(steps)) if len(steps) else 1.0))
    return Volume(frames, sides.pop() if sides else None, *_plane_and_codes(column, row, through),
                  sources=tuple(str(paths[i]) for i in order), geometry=geometry)


def _series_member(path):
    """One file of a series, read; refused, with its name, when it is not a single frame."""
    try:
        ds = _read_dataset(path)
    except VolumeError as e:
        raise VolumeError(f"{path.name}: {e}") from None
    try:
        check_header(ds)
        frames = header_number(ds, "NumberOfFrames", 1)
    except VolumeError as e:
        reason = str(e)
        if reason.startswith(UNSUITABLE):  # the series is unsuitable, for the reason its file gives
            raise VolumeError(f"{reason} ({path.name})") from None
        raise VolumeError(f"{path.name}: {reason}") from None
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
        position = _vector(_get(ds, "ImagePositionPatient"), 3)
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
