"""Canonical volumes: a scan with geometry brought to one frame by axis permutations and flips only, so that where a
file put each axis (its storage order) cannot change what the model sees (issue 28, step 1).

The canonical frame, as orientation codes (volumes.py's docstring: one letter per array axis, the patient direction
that index runs towards): "IPL". Rows run from superior to inferior, columns from anterior to posterior, and slices
from the patient's right to left. It is the frame a scanner's sagittal series of a knee is most often written in and
AKOA's storage of a right knee, so a canonical volume of a right knee shows the slices the slice model was trained on;
a left knee is not mirrored into a right one, as AKOA does: its side stays in the anatomy (the fibular head lies
laterally, towards the patient's left for a left knee).

    geometry = Geometry.of_affine(affine, shape)            # from a NIfTI affine (RAS), or
    geometry = Geometry(directions, spacing)                # rows, columns, slices as unit vectors in LPS, and mm
    check(geometry)                                         # VolumeError unless a sagittal acquisition, near-axial
    canonical, moved = canonicalize(array, geometry)       # array[rows, columns, slices] in IPL order, exactly

Only permutations and flips: the voxels are the file's, none is interpolated. A volume whose axes lie obliquely to the
patient's (a tilted acquisition) takes the nearest patient axis for each of its axes, within MAX_OBLIQUE_DEG; beyond
it the volume is refused (reslicing would interpolate, and a nearest-axis reading would show the model a tilted
knee).

The acquisition plane is the plane of the slices as the scanner cut them, whatever the storage: a sagittal series
reoriented to RAS (as MONAI's Orientation or nnU-Net write it) is still a sagittal acquisition, though its storage
runs along S. It is read from the file when the file says (a NIfTI header's dim_info slice dimension), else from the
voxel spacing (slices are thicker than their pixels are wide: the axis whose spacing is at least THICKER times the
others' is the one the slices were cut along). Voxels that are (nearly) isotropic and a file that does not say leave
the plane unknown, and such a volume is accepted: its sagittal slices, a permutation away, are as sharp as the ones it
stores, whichever way it was cut.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from perceiver.errors import VolumeError

PLANE_OF = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}  # the plane cut by slices along an axis
CANONICAL = "IPL"  # rows to inferior, columns to posterior, slices to the patient's left
MAX_OBLIQUE_DEG = 20.0  # an axis further than this from every patient axis: refused, not rounded
THICKER = 1.2  # the slice spacing of an anisotropic acquisition is at least this many times the in-plane spacing
TRAINED_PLANE = "sagittal"
OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def letter(vector):
    """The patient direction (L, R, A, P, S, I) nearest to `vector`, given in DICOM's patient frame (LPS)."""
    i = int(np.argmax(np.abs(vector)))
    return ("RL", "AP", "IS")[i][int(vector[i] > 0)]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where a volume's array axes lie in the patient.

    Args:
        directions: (3, 3) array. Row k is the unit vector, in DICOM's patient frame (LPS: towards the patient's
            left, posterior, superior), that index k of the array (rows, columns, slices) runs along.
        spacing: (3,) mm between neighbouring voxels along each array axis.
        acquired_axis: int | None. The array axis the scanner cut its slices along, when the file records it (a
            NIfTI header's dim_info); None: inferred (`acquisition_axis`).
    """

    directions: np.ndarray
    spacing: tuple
    acquired_axis: int | None = None

    def __post_init__(self):
        d = np.asarray(self.directions, dtype=float)
        if d.shape != (3, 3) or not np.isfinite(d).all():
            raise VolumeError("unsuitable: its geometry is not three finite direction vectors")
        norms = np.linalg.norm(d, axis=1)
        if (norms < 1e-6).any() or abs(np.linalg.det(d / norms[:, None])) < 1e-3:
            raise VolumeError("unsuitable: its axes are degenerate (two of them point the same way)")
        object.__setattr__(self, "directions", d / norms[:, None])
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            spacing = (1.0, 1.0, 1.0)  # unknown: no anisotropy to read the acquisition from
        object.__setattr__(self, "spacing", spacing)
        if self.acquired_axis not in (None, 0, 1, 2):
            object.__setattr__(self, "acquired_axis", None)

    @classmethod
    def of_affine(cls, affine, acquired_axis=None):
        """The geometry of a NIfTI affine (4 x 4, voxel to RAS mm): its columns, turned into LPS."""
        a = np.asarray(affine, dtype=float)[:3, :3]
        lps = a.T * np.array([-1.0, -1.0, 1.0])  # row k: where index k runs, RAS -> LPS
        return cls(lps, tuple(np.linalg.norm(lps, axis=1)), acquired_axis)

    @property
    def codes(self):
        """The orientation codes of the array axes, e.g. "IPL"."""
        return "".join(letter(v) for v in self.directions)


def obliquity(geometry):
    """The largest angle, in degrees, between an array axis and the patient axis nearest to it."""
    cosines = np.clip(np.abs(geometry.directions).max(axis=1), 0.0, 1.0)
    return float(np.degrees(np.arccos(cosines)).max())


def acquisition_axis(geometry):
    """The array axis the slices were cut along: the one the file records, else the one whose spacing is at least
    THICKER times the other two's; None when neither tells (isotropic voxels, see the module docstring)."""
    if geometry.acquired_axis is not None:
        return geometry.acquired_axis
    s = np.asarray(geometry.spacing)
    k = int(np.argmax(s))
    return k if s[k] >= THICKER * np.delete(s, k).max() else None


def acquisition_plane(geometry):
    """"sagittal", "coronal" or "axial": the plane of the slices as acquired (`acquisition_axis`); None when the
    scan does not tell."""
    axis = acquisition_axis(geometry)
    return None if axis is None else PLANE_OF[letter(geometry.directions[axis])]


def check(geometry):
    """Refuses, as unsuitable, a volume that canonicalisation cannot make a sagittal knee of: axes beyond
    MAX_OBLIQUE_DEG from the patient's, or slices acquired in another plane.

    Raises:
        VolumeError: one phrase starting "unsuitable: ".
    """
    angle = obliquity(geometry)
    if angle > MAX_OBLIQUE_DEG:
        raise VolumeError(f"unsuitable: its axes lie up to {angle:.0f} degrees from the patient's axes (codes "
                          f"{geometry.codes}), more than the {MAX_OBLIQUE_DEG:g} that may be read by the nearest "
                          "axes without reslicing")
    plane = acquisition_plane(geometry)
    if plane not in (None, TRAINED_PLANE):
        axis = ("rows", "columns", "slices")[acquisition_axis(geometry)]
        raise VolumeError(f"unsuitable: it was acquired in the {plane} plane (cut along its {axis}, stored as "
                          f"{geometry.codes}), and the model knows sagittal knees only")


def transform(codes):
    """(order, flips) that bring an array stored with orientation `codes` to CANONICAL: canonical axis t is stored
    axis order[t], reversed when flips[t].

    Raises:
        VolumeError: when the codes name one patient axis twice (no legal storage does).
    """
    order, flips = [], []
    for target in CANONICAL:
        found = [k for k, c in enumerate(codes) if c in (target, OPPOSITE[target])]
        if len(found) != 1:
            raise VolumeError(f"unsuitable: its orientation codes {codes} do not name each patient axis once")
        order.append(found[0])
        flips.append(codes[found[0]] != target)
    return tuple(order), tuple(flips)


def canonicalize(array, geometry):
    """`array` (rows, columns, slices[, channels]) moved to the CANONICAL frame by a transpose and flips.

    Returns:
        (canonical array, Geometry of the canonical array): the voxels themselves, only reordered.
    """
    return store(array, geometry, *transform(geometry.codes))


def storage_orders():
    """Every legal storage of a volume: the 48 (permutation, flips) of its three axes, as (order, flips) pairs that
    `store` applies (for tests and the scanner-convention phantom)."""
    return [(order, flips) for order in itertools.permutations(range(3))
            for flips in itertools.product((False, True), repeat=3)]


def store(array, geometry, order, flips):
    """The same voxels stored another legal way: stored axis k is `array`'s axis order[k], reversed when flips[k];
    returns (stored array, its Geometry). `canonicalize` undoes it exactly."""
    extra = tuple(range(3, np.ndim(array)))
    out = np.transpose(array, tuple(order) + extra)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=axis)
    signs = np.where(flips, -1.0, 1.0)[:, None]
    moved = Geometry(geometry.directions[list(order)] * signs, tuple(geometry.spacing[k] for k in order),
                     None if geometry.acquired_axis is None else list(order).index(geometry.acquired_axis))
    return np.ascontiguousarray(out), moved
