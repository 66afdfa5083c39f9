"""Reading DICOM and NIfTI files as lists of raw 2-D slices, for driver.py.

    frames, side = read_dicom("knee.dcm")     # modality values (LUT or rescale applied), MONOCHROME1 inverted;
                                             # side: "left" / "right" from the header, or None
    slices = read_nifti("knee_LEFT.nii.gz")  # data[:, :, k] for each k, as stored (no reorientation)

pydicom and nibabel are optional extras (requirements-dev.txt), imported only when such a file is read; without them
the reader raises VolumeError naming the package to install.

NIfTI slices are taken along the stored array's last axis with array axis 0 as image rows and no reorientation,
because that is how AKOA's PNGs were cut from their .nii.gz volumes (driver.py's docstring says why RAS+ would be
wrong).
"""

from __future__ import annotations

import numpy as np

DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")


class VolumeError(Exception):
    """A DICOM or NIfTI file that cannot be read; the message is the reason, one phrase without the file name."""


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


# === DICOM ===
def _side_letter(value):
    text = str(value or "").strip().upper()
    return {"L": "left", "R": "right"}.get(text[:1]) if text[:1] in ("L", "R") and len(text) <= 5 else None


def _is_identity_rescale(ds):
    """True without a Modality LUT Sequence and with slope 1, intercept 0 (or neither): nothing to apply."""
    if ds.get("ModalityLUTSequence"):
        return False
    return float(ds.get("RescaleSlope", 1) or 1) == 1 and float(ds.get("RescaleIntercept", 0) or 0) == 0


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
    try:
        import pydicom  # optional extra: DICOM input only
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        raise VolumeError("reading DICOM needs pydicom 3 or later: pip install 'pydicom>=3'") from None
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # InvalidDicomError, truncated files, ...
        raise VolumeError(f"not a readable DICOM file ({_first_line(e)})") from None
    side = _side_letter(ds.get("ImageLaterality")) or _side_letter(ds.get("Laterality"))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise VolumeError("the DICOM file has no pixel data")
    try:
        a = ds.pixel_array
    except Exception as e:  # a compressed transfer syntax without its decoder, inconsistent tags, ...
        raise VolumeError(f"pydicom cannot decode the pixels ({_first_line(e)})") from None
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        a = a[None]
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        if a.dtype != np.uint8:
            raise VolumeError(f"{a.dtype} colour DICOM is not supported; convert it to grayscale")
        return [f for f in a], side
    if not _is_identity_rescale(ds):
        try:
            a = apply_modality_lut(a, ds)
        except Exception as e:  # a malformed LUT Descriptor or LUT Data
            raise VolumeError(f"pydicom cannot apply the modality LUT ({_first_line(e)})") from None
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":  # 0 is white: invert
        a = a.max() - a if a.dtype != np.uint8 else 255 - a
    return [f for f in a], side


# === NIfTI ===
def read_nifti(path):
    """Reads a NIfTI volume as a list of 2-D slices along the stored array's last axis (see the module docstring).

    Raises:
        VolumeError: without nibabel, or for an unreadable file or data that is not 2-D or 3-D real numbers.
    """
    try:
        import nibabel  # optional extra: NIfTI input only
    except ImportError:
        raise VolumeError("reading NIfTI needs nibabel: pip install nibabel") from None
    try:
        image = nibabel.load(path)
        data = np.asanyarray(image.dataobj)  # stored dtype, or float when the header scales the values
    except Exception as e:  # ImageFileError, gzip errors, truncated data
        raise VolumeError(f"not a readable NIfTI file ({_first_line(e)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        return [data]
    if data.ndim != 3:
        raise VolumeError(f"a {data.ndim}-D NIfTI image of shape {data.shape} is not supported; pass a 2-D or 3-D one")
    if data.dtype.kind == "c" or data.dtype.names:
        raise VolumeError(f"NIfTI data of type {data.dtype} is not supported")
    return [data[:, :, k] for k in range(data.shape[2])]
