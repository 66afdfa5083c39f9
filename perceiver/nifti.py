"""Reading NIfTI files as lists of raw 2-D slices, with the plane they were cut in (volumes.py's docstring gives the
shared rules: the size checked before any voxel is read, the orientation codes, slices taken as AKOA's were).

    slices = read_nifti("knee_LEFT.nii.gz")  # data[:, :, k] for each k, as stored (no reorientation)
    volume = read_nifti_volume("knee.nii")   # Volume(frames, None, plane, codes): read_nifti's, plus the geometry
"""

from __future__ import annotations

import numpy as np

from perceiver.errors import first_line
from perceiver.canonical import PLANE_OF, Geometry
from perceiver.errors import VolumeError
from perceiver.volumes import Volume, check_size

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
        raise VolumeError(f"not a readable NIfTI file ({first_line(e)})") from None
    if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):  # a CIFTI-2 matrix also ends in .nii
        raise VolumeError(f"unsuitable: it is a {type(image).__name__.replace('Image', '')} file, not a NIfTI "
                          "image of slices")
    check_size(image.shape)
    try:
        data = np.asanyarray(image.dataobj)  # stored dtype, or float when the header scales the values
    except Exception as e:  # gzip errors, truncated data
        raise VolumeError(f"not a readable NIfTI file ({first_line(e)})") from None
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
    try:
        codes = _nibabel().aff2axcodes(image.affine)
    except (ValueError, np.linalg.LinAlgError):  # NaN or infinite entries
        return None, None
    if len(codes) != 3 or None in codes:
        return None, None
    codes = "".join(codes)
    return PLANE_OF[codes[2]], codes


def read_nifti_volume(path):
    """Reads a NIfTI file as `read_nifti` does, with its plane and orientation codes (see `nifti_plane`).

    Returns:
        A `Volume` with side None (NIfTI headers do not state the side).

    Raises:
        VolumeError: as `read_nifti`.
    """
    image, frames = _load_nifti(path)
    plane, codes = nifti_plane(image)
    if plane is not None and len(image.shape) == 3:
        try:
            acquired = image.header.get_dim_info()[2]  # the slice dimension, when the writer recorded it
        except Exception:  # noqa: BLE001  an unusual header: the acquisition is then read from the spacing
            acquired = None
        geometry = Geometry.of_affine(image.affine, acquired)
    else:
        geometry = None
    if plane is None:
        raise VolumeError("unsuitable: its header records no orientation (qform and sform codes 0, or a degenerate "
                          "affine), so the plane it was cut in cannot be checked (the model only knows sagittal "
                          "slices)")
    return Volume(frames, None, plane, codes, geometry=geometry)
