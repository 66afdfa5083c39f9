"""Synthetic AKOA-style knee MRI: sagittal slices of left and right knees, written to disk with AKOA file names.

The OAI "AKOA" slices cannot be downloaded, so this module draws stand-ins procedurally and writes them the way AKOA
ships them (flat folder, 8-bit grayscale PNG, 228 x 260, `OAI<id>_BaseLine_<visit>[_]de3d1_SAG_3D_DESS_WE_<SIDE>
.nii.gz_<slice>.png`), so training on them runs every code path real data takes. Only numpy and Pillow are used
(and pydicom or nibabel to write volumes).

What a slice shows (DESS with water excitation, so fat is dark and fluid and cartilage are bright): femur shaft,
metaphysis, condyles and trochlea; tibia with its plateau, shaft and tuberosity; fibular head (lateral slices);
patella, quadriceps and patellar tendons, Hoffa's fat pad, prefemoral fat, suprapatellar recess; cartilage, joint
fluid and menisci; cruciate ligaments (notch slices); popliteal vessels; muscles with fascia; subcutaneous fat and
the skin outline. Across the slices of a scan the cut moves from one side of the knee to the other: condyles grow and
shrink, the notch shows the cruciates, the patella only appears in central slices, the fibula only laterally, and the
edge slices are mostly muscle and fat.

Variation (version 3). Real OAI scans differ in all of the following, and none of it says which knee it is, so
each is drawn independently of the side. Version 2 drew narrow ranges (rotation +-6 deg, shift +-6 mm, scale
0.92-1.08, weak shading), and logistic regression on the raw pixels then classified every test slice: the side was
a fixed global pattern of bright and dark. With these ranges it scores far lower (README, "Results";
`bench/experiments/baselines.py`), while the side stays plain to the eye (docs/phantom_sheet.png) and to the models
that see shapes.
- Patient (one draw per patient, shared by their scans): overall size 0.82-1.18 (normal, sd 0.08: adult knees);
  condyle radius 18.5-23.5 mm, patella half length 16-22 mm and half thickness 7.5-11 mm, tibial plateau half
  length 22-28 mm, all times the size; patella height -6 to +12 mm (baja to alta); subcutaneous fat 2-10 mm in
  front, 5-20 mm behind, posterior muscle bulk x0.8-1.25; effusion beta(1.2, 2.5), with 15% of knees a large one
  (0.6-1); tissue intensities within the usual DESS contrast. Osteoarthritis grade beta(1, 2.5) (OAI enrolled
  people with or at risk of knee OA, so most knees are mild and a tail is severe): cartilage 1.8-3.0 mm thinned by
  up to 60%, and above grade 0.35 osteophytes of up to 6 mm at the back of the femoral condyle and the front and
  back of the tibial plateau.
- Pose (per scan): flexion 0-40 deg (knees rest on a support in the coil, bent by varying amounts); in-plane
  rotation +-15 deg; scale 0.82-1.22 (log-uniform: patient size against a fixed field of view); shift +-20 mm
  left-right and +-15 mm up-down (where the knee sits in a 140 mm field); in a quarter of the scans a tighter,
  off-centre field of view (zoom 1.1-1.45, a further +-10 / +-15 mm), so that part of the knee is cut off.
- Slices (per scan): the block of slices is centred within +-0.08 of the knee's middle and spans a half width of
  0.88-1.1 of the bones', so the first and last slices show little or no bone, as the edge slices of AKOA do.
  Each slice also moves a little (patient motion: +-0.5 deg, +-0.5 mm).
- Imaging (per scan): coil shading, the product of a linear gradient of 0-50% across the field in a uniformly random
  direction, a fall-off of 0-35% towards the top and bottom of the field (the coil is a short cylinder) and an
  off-centre hot spot of 0-40%; gain 0.7-1.4 (fluid may saturate), gamma 0.65-1.5 and a black level of 0-8% of white
  (the display window); Rician noise of sd 0.01-0.07 (fluid is near 0.85); in 30% of scans motion ghosts, two copies
  of 5-20% strength shifted both ways by 10-40% of the image along the phase-encoding axis (rows or columns at
  random); in 20% of scans wrap-around, 5-20% of the image height folded in from beyond the top and the bottom,
  fading away from the edge.

Orientation (the label): images are seen with superior at the top. A RIGHT knee faces anterior (patella, front of
the knee) to the image LEFT, as sagittal MRI is usually displayed; a LEFT knee is its mirror image, anterior to the
image RIGHT. Slices run from the patient's right to left, so slice 0 of a right knee is lateral and slice 0 of a left
knee is medial. Output is byte-identical for the same seed (every scan has its own generator seeded from
(seed, patient, scan), so the number of workers does not matter).

Volumes (`--format dicom|nifti`, needing pydicom or nibabel): the same pixels as the PNGs, one scan at a time, for
testing readers of volumes. DICOM: a folder per scan, one MR Image Storage file per slice with a sagittal geometry
(ImageOrientationPatient, ImagePositionPatient stepping from the patient's right to left, PixelSpacing from FOV_MM,
slices spread over SLAB_MM) and Laterality, each file named by its SOPInstanceUID, so that listed by name they are
never in slice order and a reader must sort them by position. NIfTI: a "<AKOA name>.nii.gz" per scan, data[:, :, k]
being slice k (as AKOA's PNGs were cut), with an affine whose axis codes are I, P or A, and L. `write_dicom_series`
and `write_nifti` can also record a coronal or axial geometry for the same pixels, so that readers can be tested on
refusing them.

Commands:
    python phantom.py data/phantom-160p-10s-seed0 --patients 160 --slices 10   # what `python train.py` uses
    python phantom.py data/akoa_like --patients 330             # AKOA-sized: 18,480 slices, 462 scans
    python phantom.py data/phantom --patients 40 --sheet docs/phantom_sheet.png
    python phantom.py data/phantom-dicom --patients 4 --format dicom   # 5 series of 40 DICOM files; nifti: .nii.gz

Expected output (2-core CPU; 5-6 ms of one core per slice, about half drawing and half PNG encoding, so ~7 s with
both cores free and ~15 s with one):
    wrote 2,280 images to data/phantom: 40 patients, 57 scans, LEFT 960 / RIGHT 1,320 images (42.1% left) in 7.9 s
A second run with the same arguments finds phantom.json and prints "reused 2,280 images in data/phantom: ...".
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import importlib
import io
import json
import math
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from perceiver import fileio
from perceiver.errors import add_common_flags, console_safe, drop_stdout

VERSION = 3  # bump whenever the pictures change, so an old set on disk is not reused
HEIGHT, WIDTH = 228, 260  # AKOA slice size (rows, columns)
FOV_MM = 140.0  # width of the field of view at pose scale 1, in mm
_RENDER_DIV = 2  # anatomy is drawn at 1/2 resolution, then upsampled (partial-volume blur for free)
_EDGE_PX = 1.0  # width of the soft edge of every shape, in render pixels
_MARGIN = 6  # render pixels drawn beyond each border
_MOTION = (0.5, 0.5)  # per-slice motion: rotation (degrees) and shift (mm) drawn uniformly within +-these

FILE_RE = re.compile(
    r"^(?P<patient>OAI\d{7})_BaseLine_(?P<visit>\d+)_?de3d1_SAG_3D_DESS_WE_(?P<side>RIGHT|LEFT|Left)\.nii\.gz_"
    r"(?P<slice>\d+)\.png$"
)
_SIDE_RE = re.compile(r"_(R_I_G_H_T|L_E_F_T|RIGHT|LEFT|Right|Left|right|left)\.nii", re.IGNORECASE)

# Population: AKOA has ~42% left images; some patients have both knees, some several visits.
LEFT_FRACTION = 0.42
BOTH_KNEES_FRACTION = 0.25
SECOND_VISIT_FRACTION = 0.12
LEFT_TITLE_CASE = 0.2  # share of left scans whose name says "Left" instead of "LEFT"
_VISITS = (3, 4, 5, 6, 7, 8, 100, 101, 102)

# The default training set: what `python train.py` (and bench/experiments/baselines.py) make and use without --data.
DEFAULT_PATIENTS = 160
DEFAULT_SLICES = 10  # slices per scan, spread over the whole knee (AKOA has 40)


def default_root(patients=DEFAULT_PATIENTS, slices=DEFAULT_SLICES, seed=0):
    """The folder under the project's data/ where the synthetic set of these settings is written and reused."""
    return Path(__file__).resolve().parent.parent / "data" / f"phantom-{patients}p-{slices}s-seed{seed}"
_VISIT_WEIGHTS = (0.3, 0.14, 0.1, 0.08, 0.06, 0.05, 0.1, 0.1, 0.07)


# === Population ===
@dataclasses.dataclass(frozen=True)
class ScanSpec:
    """One scan (patient + visit + knee) of the population.

    Args:
        patient_index: int. Position of the patient in the population (seeds their anatomy).
        scan_index: int. Position of the scan among the patient's scans (seeds its pose and noise).
        patient: str. Patient id, "OAI" and 7 digits.
        visit: int. Visit number written after "BaseLine_".
        side: str. "LEFT" or "RIGHT", the label.
        side_text: str. The side as the file name spells it ("RIGHT", "LEFT" or "Left").
    """

    patient_index: int
    scan_index: int
    patient: str
    visit: int
    side: str
    side_text: str

    def stem(self):
        """The scan's AKOA name without extension: the volume "<stem>.nii.gz", cut into "<stem>.nii.gz_<k>.png"."""
        sep = "" if self.visit >= 100 else "_"  # AKOA drops the "_" after three-digit visits
        return f"{self.patient}_BaseLine_{self.visit}{sep}de3d1_SAG_3D_DESS_WE_{self.side_text}"

    def filename(self, slice_index):
        return f"{self.stem()}.nii.gz_{slice_index}.png"


def plan_population(patients, seed=0):
    """Patients, visits and knees of a synthetic AKOA set; the same (patients, seed) always gives the same list.

    Quotas rather than coin flips fix the mix for any size: a quarter of the patients have both knees, about 12% a
    second visit, and the single-knee patients are split so that about 42% of the scans (and images) are left knees.
    """
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    rng = np.random.default_rng([seed, 7919])
    ids = 9_000_000 + rng.choice(1_000_000, size=patients, replace=False)
    n_both = round(BOTH_KNEES_FRACTION * patients)
    n_left = max(0, min(patients - n_both, round(LEFT_FRACTION * (patients + n_both)) - n_both))
    kinds = ["both"] * n_both + ["LEFT"] * n_left + ["RIGHT"] * (patients - n_both - n_left)
    kinds = [kinds[i] for i in rng.permutation(patients)]
    n_visits = np.ones(patients, dtype=int)
    n_visits[rng.permutation(patients)[: round(SECOND_VISIT_FRACTION * patients)]] = 2
    weights = np.asarray(_VISIT_WEIGHTS) / sum(_VISIT_WEIGHTS)
    specs = []
    for p in range(patients):
        visits = sorted(int(v) for v in rng.choice(_VISITS, size=n_visits[p], replace=False, p=weights))
        sides = ["RIGHT", "LEFT"] if kinds[p] == "both" else [kinds[p]]
        scan = 0
        for visit in visits:
            for side in sides:
                text = "Left" if side == "LEFT" and rng.random() < LEFT_TITLE_CASE else side
                specs.append(ScanSpec(p, scan, f"OAI{ids[p]:07d}", visit, side, text))
                scan += 1
    return specs


# === Anatomy ===
@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Everything that shapes one scan: the patient's anatomy and tissue contrast, and the scan's pose and imaging.

    Lengths are in mm, angles in degrees, intensities in arbitrary signal units (fluid near 0.85).
    """

    side: str  # "LEFT" or "RIGHT"
    # --- patient: bones and soft tissue ---
    size: float  # overall scale of the knee
    condyle_radius: float  # radius of the femoral condyles in their thickest slice
    patella_half_length: float
    patella_half_thickness: float
    patella_height: float  # patella alta (+) / baja (-), mm above the usual position
    plateau_half_length: float  # antero-posterior half length of the tibial plateau
    cartilage: float  # cartilage thickness
    fat_front: float  # subcutaneous fat in front of the knee
    fat_back: float  # subcutaneous fat behind the knee
    leg_depth: float  # multiplies the posterior soft tissue (muscle bulk)
    effusion: float  # 0..1, joint fluid in the suprapatellar recess
    # --- patient: intensities ---
    fat_signal: float
    muscle_signal: float
    marrow_signal: float
    cartilage_signal: float
    fluid_signal: float
    vessel_signal: float
    ligament_signal: float
    dark_signal: float  # cortex, tendons, menisci
    osteoarthritis: float  # 0 healthy .. 1 severe: cartilage loss and osteophytes
    osteophyte: float  # radius of the osteophytes at the joint margins, mm (0 = none)
    # --- scan: pose ---
    flexion: float  # knee flexion angle
    rotation: float  # in-plane rotation of the whole picture
    scale: float
    shift_x: float  # mm, image right positive
    shift_y: float  # mm, image up positive
    slice_from: float  # first slice position, in units of the half width of the knee (negative = medial)
    slice_to: float
    # --- scan: imaging ---
    noise: float  # standard deviation of each of the two complex noise channels
    gain: float
    gamma: float
    black: float  # share of the white level mapped to black (window level), 0 = none
    bias: tuple  # coil shading: (gradient, its direction in degrees, superior-inferior fall-off,
    #              hot spot strength, hot spot x, hot spot y, hot spot radius), image coordinates in -1..1
    ghost: float  # motion ghosts: strength of the two copies, 0 = none
    ghost_shift: float  # their offset, as a share of the image along the phase-encoding axis
    ghost_axis: int  # phase-encoding axis of the ghosts: 0 rows (vertical), 1 columns
    wrap: float  # wrap-around (always along the rows): share of the image height folded in from beyond the top
    #              and bottom, 0 = none
    texture_seed: int


def _sample_patient(rng):
    size = float(np.clip(rng.normal(1.0, 0.08), 0.82, 1.18))
    # osteoarthritis: most knees mild, a tail of severe ones (OAI enrolled people with or at risk of knee OA)
    oa = float(rng.beta(1.0, 2.5))
    return dict(
        size=size,
        condyle_radius=rng.uniform(18.5, 23.5) * size,
        patella_half_length=rng.uniform(16.0, 22.0) * size,
        patella_half_thickness=rng.uniform(7.5, 11.0) * size,
        patella_height=rng.uniform(-6.0, 12.0),
        plateau_half_length=rng.uniform(22.0, 28.0) * size,
        cartilage=rng.uniform(1.8, 3.0) * (1.0 - 0.6 * oa),
        fat_front=rng.uniform(2.0, 10.0),
        fat_back=rng.uniform(5.0, 20.0),
        leg_depth=rng.uniform(0.8, 1.25),
        effusion=float(rng.beta(1.2, 2.5)) if rng.random() < 0.85 else float(rng.uniform(0.6, 1.0)),
        fat_signal=rng.uniform(0.08, 0.2),
        muscle_signal=rng.uniform(0.24, 0.4),
        marrow_signal=rng.uniform(0.14, 0.3),
        cartilage_signal=rng.uniform(0.55, 0.72),
        fluid_signal=rng.uniform(0.75, 0.95),
        vessel_signal=rng.uniform(0.3, 0.55),
        ligament_signal=rng.uniform(0.06, 0.14),
        dark_signal=rng.uniform(0.02, 0.05),
        osteoarthritis=oa,
        osteophyte=float(rng.uniform(2.0, 6.0) * (oa - 0.35) / 0.65) if oa > 0.35 else 0.0,
    )


def _sample_pose(rng):
    """Where the knee sits in the field of view (see the module docstring for the ranges and why)."""
    scale = math.exp(rng.uniform(math.log(0.82), math.log(1.22)))
    shift_x, shift_y = rng.uniform(-20.0, 20.0), rng.uniform(-15.0, 15.0)
    if rng.random() < 0.25:  # a tighter field of view, off centre: part of the knee is cut off
        scale *= rng.uniform(1.1, 1.45)
        shift_x += rng.uniform(-10.0, 10.0)
        shift_y += rng.uniform(-15.0, 15.0)
    return dict(flexion=rng.uniform(0.0, 40.0), rotation=rng.uniform(-15.0, 15.0), scale=scale,
                shift_x=shift_x, shift_y=shift_y)


def _sample_imaging(rng):
    """Contrast, coil shading, noise and artefacts of one scan (see the module docstring for the ranges and why)."""
    ghost = rng.random() < 0.3
    return dict(  # Generator.uniform of scalars gives Python floats: the fields are typed as Anatomy declares
        noise=rng.uniform(0.01, 0.07),
        gain=rng.uniform(0.7, 1.4),
        gamma=rng.uniform(0.65, 1.5),
        black=rng.uniform(0.0, 0.08),
        bias=tuple(float(v) for v in (rng.uniform(0.0, 0.5), rng.uniform(0.0, 360.0), rng.uniform(0.0, 0.35),
                                      rng.uniform(0.0, 0.4), rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8),
                                      rng.uniform(0.3, 0.7))),
        ghost=rng.uniform(0.05, 0.2) if ghost else 0.0,
        ghost_shift=rng.uniform(0.1, 0.4),
        ghost_axis=int(rng.integers(2)),
        wrap=rng.uniform(0.05, 0.2) if rng.random() < 0.2 else 0.0,
    )


def sample_anatomy(rng, *, side=None, patient=None):
    """Draws the parameters of one scan; `patient` (from a previous draw's patient fields) keeps a patient's anatomy.

    Args:
        rng: numpy.random.Generator.
        side: str or None. "LEFT" or "RIGHT"; None draws one.
        patient: dict or None. Patient fields to reuse (as `_sample_patient` returns); None draws a new patient.

    Returns:
        An `Anatomy`.
    """
    if side is None:
        side = "LEFT" if rng.random() < LEFT_FRACTION else "RIGHT"
    if side not in ("LEFT", "RIGHT"):
        raise ValueError(f"side must be 'LEFT' or 'RIGHT', got {side!r}")
    if patient is None:
        patient = _sample_patient(rng)
    pose = _sample_pose(rng)
    centre = rng.normal(0.0, 0.08)
    half = rng.uniform(0.88, 1.1)  # bones end near |s| = 1: the edge slices show little of them
    imaging = _sample_imaging(rng)
    return Anatomy(
        side=side,
        **{k: float(v) for k, v in patient.items()},
        **{k: float(v) for k, v in pose.items()},
        slice_from=float(centre - half),
        slice_to=float(centre + half),
        **imaging,
        texture_seed=int(rng.integers(2**31)),
    )


# === Drawing ===
def _bump(s, centre, half):
    """Cross-section factor of a rounded structure centred at `centre` with half width `half` along the slices."""
    x = (s - centre) / half
    return math.sqrt(1.0 - x * x) if abs(x) < 1.0 else 0.0


def _rotate(x, y, px, py, degrees):
    """Coordinates of points (x, y) rotated by `degrees` (counter-clockwise) about (px, py)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return px + c * (x - px) - s * (y - py), py + s * (x - px) + c * (y - py)


def _ellipse(u, v, cx, cy, a, b, tilt=0.0):
    """Normalised radius of the ellipse (1 on its outline) at every point."""
    du, dv = u - cx, v - cy
    if tilt:
        c, s = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
        du, dv = c * du + s * dv, -s * du + c * dv
    return np.sqrt((du / a) ** 2 + (dv / b) ** 2)


def _segment(u, v, ax, ay, bx, by):
    """Distance from every point to the segment from (ax, ay) to (bx, by)."""
    ex, ey = bx - ax, by - ay
    t = np.clip(((u - ax) * ex + (v - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    return np.sqrt((u - ax - t * ex) ** 2 + (v - ay - t * ey) ** 2)


def _smooth_min(a, b, k):
    """Union of two shapes given as signed distances, with the joint rounded over about `k` mm."""
    h = np.maximum(k - np.abs(a - b), 0.0) * (0.5 / math.sqrt(k))
    return np.minimum(a, b) - h * h


def _paint(img, alpha, value):
    """Paints `value` over the drawing `img` (in place) with opacity `alpha`."""
    img += alpha * (value - img)


def _smooth_noise(rng, shape, cells):
    """A smooth random field (zero mean, unit-ish amplitude): coarse Gaussian grid upsampled bilinearly."""
    h, w = shape
    grid = rng.standard_normal((max(2, round(cells * h / w)), cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR))


def coil_shading(bias, height, width):
    """The receive-coil sensitivity (near 1) over an image: a linear gradient in any direction, a fall-off towards
    the top and bottom of the field (the coil is a short cylinder around the knee), and an off-centre hot spot."""
    grad, angle, falloff, hot, hx, hy, radius = bias
    yf, xf = np.mgrid[-1.0:1.0:height * 1j, -1.0:1.0:width * 1j]
    a = math.radians(angle)
    field = 1.0 + grad * (math.cos(a) * xf + math.sin(a) * yf)
    field *= 1.0 - falloff * yf**2
    field *= 1.0 + hot * np.exp(-((xf - hx) ** 2 + (yf - hy) ** 2) / (2.0 * radius**2))
    return np.clip(field, 0.3, 1.8)


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The canonical drawing frame of one scan: where every drawing pixel lies on the knee, and the key positions.

    u points anterior and v superior (mm, float64 arrays of the drawing's shape, margin included); the lateral
    femoral condyle's centre is at (xc, yc), its bone surface ending tc + 0.5 above the joint line (v = 0).
    """

    u: np.ndarray
    v: np.ndarray
    R: float  # condyle radius
    tc: float  # cartilage thickness
    xc: float
    yc: float
    yt: float  # the tibial plateau's bone surface (v), in the tibia's frame
    xm: float  # middle of the leg, front to back: the image centre


class _Scene:
    """The per-scan part of the drawing: coordinate grids, distance fields, textures, bias and the intensity table.

    `render(s, rng)` then only combines the precomputed fields for one slice position s (-1 medial .. +1 lateral).
    """

    def __init__(self, an, height, width):
        if an.side not in ("LEFT", "RIGHT"):
            raise ValueError(f"side must be 'LEFT' or 'RIGHT', got {an.side!r}")
        self.an, self.height, self.width = an, height, width
        hr, wr = -(-height // _RENDER_DIV), -(-width // _RENDER_DIV)
        m = _MARGIN
        # the drawing has a margin, so that the small per-slice motion never pulls black into the picture
        self.in_centre = ((wr + 2 * m) / 2, (hr + 2 * m) / 2)
        self.in_scale = wr / width
        mm = FOV_MM / wr  # mm per render pixel
        self.inv_edge = np.float32(1.0 / (_EDGE_PX * mm))
        fr = self._canonical_frame(hr, wr, mm)
        self.R = fr.R
        xs, hw, xtr, ytr, rtr = self._femur(fr)
        xt, tp, tub, t_back, t_front = self._tibia(fr)
        pcx, pcy, pt = self._patella(fr, xtr, ytr, rtr, tub)
        self._soft_tissue(fr, xs, hw, xt, tp, t_back, t_front)
        self._leg_outline(fr, xt, tp, pcx, pcy, pt)
        self._textures(hr + 2 * m, wr + 2 * m)

    def _canonical_frame(self, hr, wr, mm):
        """mm, u anterior, v superior, femoral condyle centre near (0, R + cartilage); hr x wr is the picture in render
        pixels, without the margin."""
        an, m = self.an, _MARGIN
        R = an.condyle_radius
        tc = an.cartilage
        xc = 0.0
        yc = tc + 0.5 + R  # lateral condyle centre; its bone surface ends tc + 0.5 above the joint line (v = 0)
        ii, jj = np.mgrid[-m : hr + m, -m : wr + m].astype(np.float64)
        X = (jj + 0.5 - wr / 2) * mm - an.shift_x
        Y = (hr / 2 - ii - 0.5) * mm - an.shift_y
        c, s = math.cos(math.radians(an.rotation)), math.sin(math.radians(an.rotation))
        u = (c * X + s * Y) / an.scale
        v = (-s * X + c * Y) / an.scale
        if an.side == "RIGHT":
            u = -u  # anterior to the image left
        xm = xc - 0.15 * R  # middle of the leg, front to back: the image centre
        u = u + xm
        v = v + 0.35 * R
        yt = -(tc + 0.5)  # plateau bone surface
        return _Frame(u=u, v=v, R=R, tc=tc, xc=xc, yc=yc, yt=yt, xm=xm)

    def _femur(self, fr):
        """Shaft, metaphysis, notch, condyles and trochlea; returns the shaft axis and half width and the trochlea
        (centre and radius)."""
        u, v, R, xc, yc, f32 = fr.u, fr.v, fr.R, fr.xc, fr.yc, np.float32
        xs, hw = xc + 0.35 * R, 0.62 * R  # shaft axis and half width
        self.f_shaft_x = np.abs(u - xs).astype(f32)
        self.f_shaft_y = (yc + 4.0 - v).astype(f32)
        self.hw = hw
        self.f_meta = _ellipse(u, v, xc + 0.2 * R, yc + 0.35 * R, 1.0 * R, 1.2 * R).astype(f32)
        self.meta_scale = 1.0 * R
        self.f_notch = (yc - v).astype(f32)  # the intercondylar notch cuts the metaphysis from below
        self.f_med = _ellipse(u, v, xc - 0.06 * R, yc + 0.05 * R, 1.12 * R * 1.05, 1.05 * R).astype(f32)
        self.f_lat = _ellipse(u, v, xc, yc, 0.95 * R * 1.05, 0.95 * R * 1.05).astype(f32)
        xtr, ytr, rtr = xc + 0.62 * R, yc + 0.3 * R, 0.72 * R  # trochlea
        self.f_troch = np.sqrt((u - xtr) ** 2 + (v - ytr) ** 2).astype(f32)
        self.rtr = rtr
        self.f_artic = ((v < yc + 0.45 * R) | ((u > xs + 0.5 * hw) & (v < yc + 1.15 * R))).astype(f32)
        return xs, hw, xtr, ytr, rtr

    def _tibia(self, fr):
        """Tibia in its own frame (rotated about the condyle centre by the flexion angle) and fibular head; returns
        the plateau's centre and half length, and three points of the tibia in the canonical frame (tuberosity, back
        and front of the plateau: where tendons and ligaments attach)."""
        an, u, v, R, xc, yc, f32 = self.an, fr.u, fr.v, fr.R, fr.xc, fr.yc, np.float32
        ut, vt = _rotate(u, v, xc, yc, an.flexion)
        yt = fr.yt
        xt, tp = xc + 0.1 * R, an.plateau_half_length
        self.t_top = (vt - yt).astype(f32)
        self.t_curve = ((ut - xt) ** 2 / R).astype(f32)
        self.t_meta = _ellipse(ut, vt, xt, yt - 0.75 * R, tp, 1.0 * R).astype(f32)
        self.t_meta_scale = min(tp, R)
        self.t_shaft_x = np.abs(ut - (xt - 0.1 * R)).astype(f32)
        self.t_shaft_y = (vt - (yt - 0.9 * R)).astype(f32)
        self.t_tub = np.sqrt((ut - (xt + 0.9 * tp)) ** 2 + (vt - (yt - 1.15 * R)) ** 2).astype(f32)
        self.t_fib = _ellipse(ut, vt, xt - 0.72 * tp, yt - 1.3 * R, 0.36 * R, 0.45 * R).astype(f32)
        self.t_artic = ((vt > yt - 0.3 * R) & (np.abs(ut - xt) < 1.05 * tp)).astype(f32)
        tub = _rotate(xt + 0.9 * tp + 0.25 * R, yt - 1.1 * R, xc, yc, -an.flexion)
        t_back = _rotate(xt - 0.8 * tp, yt - 0.2 * R, xc, yc, -an.flexion)
        t_front = _rotate(xt + 0.3 * tp, yt, xc, yc, -an.flexion)
        return xt, tp, tub, t_back, t_front

    def _patella(self, fr, xtr, ytr, rtr, tub):
        """Patella riding the trochlea (rotated about its centre by 60% of the flexion), quadriceps and patellar
        tendons; returns the patella's centre and half thickness."""
        an, u, v, R, f32 = self.an, fr.u, fr.v, fr.R, np.float32
        pt, pl = an.patella_half_thickness, an.patella_half_length
        pcx, pcy = xtr + rtr + fr.tc + 1.0 + pt, ytr + 0.2 * R + an.patella_height
        pcx, pcy = _rotate(pcx, pcy, xtr, ytr, -0.6 * an.flexion)
        tilt = 8.0 - 0.6 * an.flexion  # lower pole forward
        self.p_ell = _ellipse(u, v, pcx, pcy, pt, pl, tilt=tilt).astype(f32)
        self.p_scale = pt
        ct, st = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
        self.p_artic = ((ct * (u - pcx) + st * (v - pcy)) < -0.2 * pt).astype(f32)
        top = (pcx - st * pl, pcy + ct * pl)
        bottom = (pcx + st * pl, pcy - ct * pl)
        self.quad = _segment(u, v, top[0] - 1.0, top[1] - 2.0, top[0] - 12.0, top[1] + 90.0).astype(f32)
        self.pat_tendon = _segment(u, v, bottom[0] - 1.0, bottom[1] + 2.0, *tub).astype(f32)
        return pcx, pcy, pt

    def _soft_tissue(self, fr, xs, hw, xt, tp, t_back, t_front):
        """Fat pads, suprapatellar recess, joint space, menisci, cruciates, osteophytes, popliteal fat and vessel."""
        an, u, v, R, xc, yc, f32 = self.an, fr.u, fr.v, fr.R, fr.xc, fr.yc, np.float32
        self.hoffa = _ellipse(u, v, xc + 0.95 * R, -0.1 * R, 0.65 * R, 0.8 * R, tilt=-15.0).astype(f32)
        self.prefem = _ellipse(u, v, xs + hw + 0.45 * R, yc + 1.6 * R, 0.42 * R, 1.3 * R).astype(f32)
        self.supra = _ellipse(
            u, v, xs + hw + 0.1 * R + 2.0, yc + 0.95 * R, 0.08 * R + 0.2 * R * an.effusion, 0.8 * R, tilt=8.0
        ).astype(f32)
        self.joint = ((np.abs(v) < 0.38 * R) & (u > xc - 1.25 * R) & (u < xc + 1.3 * R)).astype(f32)
        self.men_back = _ellipse(u, v, xc - 0.92 * R, 0.0, 0.36 * R, 0.16 * R).astype(f32)
        self.men_front = _ellipse(u, v, xc + 0.85 * R, 0.0, 0.3 * R, 0.15 * R).astype(f32)
        self.pcl = _segment(u, v, *t_back, xc + 0.15 * R, yc - 0.15 * R).astype(f32)
        self.acl = _segment(u, v, *t_front, xc - 0.45 * R, yc + 0.25 * R).astype(f32)
        # osteophytes: bony spurs at the joint margins (femoral condyle back, tibial plateau front and back)
        self.spurs = []
        if an.osteophyte > 0:
            yt = fr.yt
            for px, py in ((xc - 0.98 * R, yc - 0.1 * R), _rotate(xt + tp, yt - 1.0, xc, yc, -an.flexion),
                           _rotate(xt - tp, yt - 1.0, xc, yc, -an.flexion)):
                self.spurs.append(np.sqrt((u - px) ** 2 + (v - py) ** 2).astype(f32))
        self.popliteal = _ellipse(u, v, xc - 1.65 * R, 0.4 * R, 0.5 * R, 1.1 * R).astype(f32)
        self.vessel = _segment(u, v, xc - 1.5 * R, -2.4 * R, xc - 1.35 * R, 3.2 * R).astype(f32)

    def _leg_outline(self, fr, xt, tp, pcx, pcy, pt):
        """Anterior and posterior skin as functions of height (subcutaneous fat inside), and the fascia between the
        muscles behind the knee."""
        an, u, v, R, xc, xm, f32 = self.an, fr.u, fr.v, fr.R, fr.xc, fr.xm, np.float32
        d = an.leg_depth
        knots = np.array([-200.0, -1.6 * R, -0.2 * R, pcy, pcy + 2.5 * R, 250.0])
        front = np.array([xt + tp, xt + tp + 4.0, pcx + 0.2 * pt, pcx + pt, pcx + pt + 6.0, pcx + pt + 30.0])
        back = xc - R * np.array([2.6, 2.95, 2.5, 2.6, 2.75, 2.95]) * d
        vv = v.ravel()
        self.front = (np.interp(vv, knots, front + 3.0).reshape(v.shape) - xm).astype(f32)
        self.back = (xm - np.interp(vv, knots, back).reshape(v.shape)).astype(f32)
        self.um = (u - xm).astype(f32)
        # fascia between muscles (behind the knee), as signed offsets; the slice position moves them
        self.fascia1 = (u - (xc - 1.25 * R) - 5.0 * np.sin(v / 17.0) + 0.15 * v).astype(f32)
        self.fascia2 = (u - (xc - 1.75 * R) - 4.0 * np.sin(v / 23.0 + 1.0) - 0.1 * v).astype(f32)
        self.fascia3 = (v - 0.6 * R + 0.3 * (u - xc) + 4.0 * np.sin(u / 9.0)).astype(f32)
        self.back_region = (u < xc - 0.9 * R).astype(f32)

    def _textures(self, hr, wr):
        """Marrow and muscle textures over the hr x wr drawing, the coil's bias field and the intensity table."""
        an, f32 = self.an, np.float32
        trng = np.random.default_rng(an.texture_seed)
        self.tex = [_smooth_noise(trng, (hr, wr), n) for n in (9, 9, 26, 26)]
        self.bias = (coil_shading(an.bias, self.height, self.width) * an.gain).astype(f32)
        self.levels = 1024
        white = 1.05 * an.fluid_signal
        self.black = np.float32(an.black * white)
        self.to_level = np.float32((self.levels - 1) / (white - self.black))
        self.lut = np.round(255.0 * np.linspace(0.0, 1.0, self.levels) ** an.gamma).astype(np.uint8)
        self.noise_bank = None

    def _noise(self, rng):
        """Two noise fields for one slice: windows at random offsets into a per-scan bank (cheaper than drawing)."""
        h, w = self.height, self.width
        if self.noise_bank is None:
            self.noise_bank = rng.standard_normal((2, 2 * h, 2 * w), dtype=np.float32)
        oy, ox = rng.integers(0, h, size=2), rng.integers(0, w, size=2)
        return (self.noise_bank[0, oy[0] : oy[0] + h, ox[0] : ox[0] + w],
                self.noise_bank[1, oy[1] : oy[1] + h, ox[1] : ox[1] + w])

    def render(self, s, rng):
        """The 8-bit slice at position s; `rng` draws the patient's motion and the noise (in that order)."""
        a1 = 0.9 * s
        tex = self.tex[0] * math.cos(a1) + self.tex[1] * math.sin(a1)  # coarse, drifts slowly across slices
        fine = self.tex[2] * math.cos(2.5 * s) + self.tex[3] * math.sin(2.5 * s)
        img = self._draw_soft_tissue(s, tex, fine)
        d_fem, f_med, f_lat = self._femur_distance(s)
        d_tib, f_fib = self._tibia_distance(s)
        d_pat = (self.p_ell - _bump(s, 0.05, 0.55)) * self.p_scale if _bump(s, 0.05, 0.55) > 0 else None
        self._draw_joint(img, d_fem, d_tib, d_pat, max(f_med, f_lat), fine)
        self._draw_ligaments(img, s, fine)
        self._draw_bones(img, (d_fem, d_tib, d_pat), f_fib, max(f_med, f_lat), tex, fine)
        return self._to_full_size(img, rng)

    def _cover(self, d):
        """Soft inside-mask of a signed distance (mm): 1 inside, 0 outside, a ramp _EDGE_PX render pixels wide."""
        a = 0.5 - d * self.inv_edge
        np.clip(a, 0.0, 1.0, out=a)
        return a

    def _draw_soft_tissue(self, s, tex, fine):
        """A new drawing of the leg at slice position s: skin, fat, muscles and fascia, popliteal fat and vessel, the
        fat pads and fluid in front of the femur."""
        an, R, cover = self.an, self.R, self._cover
        # leg outline: narrower front to back towards the edge slices
        w = math.sqrt(max(0.0, 1.0 - (s / 1.7) ** 2))
        d_skin = np.maximum(self.um - self.front * w, -self.back * w - self.um)
        img = cover(d_skin) * (an.fat_signal * (1.0 + 0.25 * tex))
        fat_f, fat_b = an.fat_front * w, an.fat_back * w
        d_musc = np.maximum(self.um - (self.front * w - fat_f), fat_b - self.back * w - self.um)
        muscle = cover(d_musc)
        _paint(img, muscle, an.muscle_signal * (1.0 + 0.12 * tex + 0.05 * fine))
        for field, off, amp in ((self.fascia1, 9.0, 1.0), (self.fascia2, -7.0, 1.0), (self.fascia3, 12.0, 0.7)):
            d = np.abs(field - off * s) - 0.8
            _paint(img, cover(d) * muscle * self.back_region * amp, an.fat_signal)
        f = _bump(s, 0.05, 0.6)
        if f > 0:
            _paint(img, cover((self.popliteal - f) * 0.5 * R), an.fat_signal * (1.0 + 0.3 * fine))
        f = _bump(s, 0.05, 0.35)
        if f > 0:
            _paint(img, cover(self.vessel - 3.0 * f), an.vessel_signal)

        # fat pads and fluid in front of the femur
        f = _bump(s, 0.0, 0.85)
        if f > 0:
            _paint(img, cover((self.prefem - f) * R * 0.42), an.fat_signal * (1.0 + 0.3 * fine))
            _paint(img, cover((self.hoffa - f) * R * 0.65), an.fat_signal * (1.0 + 0.3 * fine))
        f = _bump(s, 0.0, 0.6)
        if f > 0 and an.effusion > 0.05:
            _paint(img, cover((self.supra - f) * R * 0.1), an.fluid_signal * min(1.0, 0.5 + an.effusion))
        return img

    def _femur_distance(self, s):
        """Signed distance to the femur at slice position s (None where the slice misses it): shaft (central
        slices), metaphysis, condyles (medial / lateral), trochlea; and the medial and lateral condyles' sizes."""
        R = self.R
        f_shaft = _bump(s, 0.0, 0.62)
        f_meta = _bump(s, 0.0, 1.0)
        f_med = _bump(s, -0.5, 0.44)
        f_lat = _bump(s, 0.48, 0.42)
        f_tr = _bump(s, 0.0, 0.85) * (0.8 + 0.2 * min(1.0, abs(s) / 0.3))
        d_fem = np.maximum(self.f_shaft_x - self.hw * f_shaft, self.f_shaft_y) if f_shaft > 0 else None
        parts = []
        if f_meta > 0:
            d = (self.f_meta - f_meta) * self.meta_scale
            notch = _bump(s, 0.0, 0.2)
            if notch > 0:  # the notch roof rises to the condyle centres between the condyles
                d = np.maximum(d, self.f_notch + (0.85 - 1.1 * notch) * R)
            parts.append(d)
        if f_med > 0:
            parts.append((self.f_med - f_med) * R)
        if f_lat > 0:
            parts.append((self.f_lat - f_lat) * R * 0.95)
        if f_tr > 0:
            parts.append(self.f_troch - self.rtr * f_tr)
        for p in parts:
            d_fem = p if d_fem is None else _smooth_min(d_fem, p, 6.0)
        return d_fem, f_med, f_lat

    def _tibia_distance(self, s):
        """Signed distance to the tibia at slice position s (None where the slice misses it): plateau (concave
        medially, convex laterally), metaphysis, shaft, tuberosity; and the fibular head's size."""
        R, lat = self.R, s > 0
        f_t = _bump(s, 0.0, 1.0) ** 0.5
        f_ts = _bump(s, -0.05, 0.6)
        f_tub = _bump(s, 0.15, 0.4)
        f_fib = _bump(s, 0.8, 0.26)
        d_tib = None
        if f_t > 0:
            top = self.t_top - (0.08 if not lat else -0.06) * self.t_curve
            d_tib = np.maximum((self.t_meta - f_t) * self.t_meta_scale, top)
            if f_ts > 0:
                d_tib = np.minimum(d_tib, np.maximum(self.t_shaft_x - 0.6 * R * f_ts, self.t_shaft_y))
            if f_tub > 0:
                d_tib = np.minimum(d_tib, self.t_tub - 0.3 * R * f_tub)
        return d_tib, f_fib

    def _draw_joint(self, img, d_fem, d_tib, d_pat, f_condyle, fine):
        """Joint fluid, cartilage on the three bones and, where a condyle of size f_condyle is cut, the menisci."""
        an, R, cover = self.an, self.R, self._cover
        tc = an.cartilage
        if d_fem is not None and d_tib is not None:
            _paint(img, cover(np.minimum(d_fem, d_tib) - tc - 1.0) * self.joint, an.fluid_signal)
        if d_fem is not None:
            _paint(img, cover(d_fem - tc) * self.f_artic, an.cartilage_signal * (1.0 + 0.08 * fine))
        if d_tib is not None:
            _paint(img, cover(d_tib - tc) * self.t_artic, an.cartilage_signal * (1.0 + 0.08 * fine))
        if d_pat is not None:
            _paint(img, cover(d_pat - tc - 0.8) * self.p_artic, an.cartilage_signal * (1.0 + 0.08 * fine))
        if f_condyle > 0.3:
            g = 0.6 + 0.4 * f_condyle
            _paint(img, cover((self.men_back - g) * 0.16 * R), an.dark_signal)
            _paint(img, cover((self.men_front - g) * 0.15 * R), an.dark_signal)

    def _draw_ligaments(self, img, s, fine):
        """Cruciate ligaments in the notch, quadriceps and patellar tendons in front."""
        an, R, cover = self.an, self.R, self._cover
        f = _bump(s, 0.0, 0.22)
        if f > 0:
            _paint(img, cover(self.pcl - 0.2 * R * f), an.ligament_signal)
            _paint(img, cover(self.acl - 0.14 * R * f), an.ligament_signal * 1.6 * (1.0 + 0.4 * fine))
        f = _bump(s, 0.05, 0.65)
        if f > 0:
            _paint(img, cover(self.quad - 4.0 * f), an.dark_signal)
            _paint(img, cover(self.pat_tendon - 3.0 * f), an.dark_signal)

    def _draw_bones(self, img, distances, f_fib, f_condyle, tex, fine):
        """Dark cortex and mottled marrow of femur, tibia and patella (`distances`, None where not cut), the
        fibular head and, where a condyle of size f_condyle is cut, the osteophytes."""
        an, R = self.an, self.R
        marrow = an.marrow_signal * (1.0 + 0.3 * fine + 0.1 * tex)
        bones = [d for d in distances if d is not None]
        if f_fib > 0:
            bones.append((self.t_fib - f_fib) * 0.36 * R)
        for spur in self.spurs if f_condyle > 0.2 else ():
            bones.append(spur - an.osteophyte * f_condyle)
        for d in bones:
            _paint(img, self._cover(d), an.dark_signal)
            _paint(img, self._cover(d + 1.4), marrow)

    def _to_full_size(self, img, rng):
        """The drawing as the 8-bit slice: upsampled with the patient's motion between slices (a small rotation and
        shift, drawn from rng), then bias field, artefacts, Rician noise (drawn from rng), window, gamma."""
        an = self.an
        angle, dx, dy = rng.uniform(-_MOTION[0], _MOTION[0]), *rng.uniform(-_MOTION[1], _MOTION[1], size=2)
        zoom = self.in_scale
        a, b = zoom * math.cos(math.radians(angle)), zoom * math.sin(math.radians(angle))
        cx, cy = self.in_centre
        mm_in = FOV_MM / (self.width * zoom)  # mm per drawing pixel
        coeffs = (a, -b, cx + dx / mm_in - (a * self.width / 2 - b * self.height / 2),
                  b, a, cy + dy / mm_in - (b * self.width / 2 + a * self.height / 2))
        full = np.asarray(
            Image.fromarray(img, mode="F").transform(
                (self.width, self.height), Image.AFFINE, coeffs, resample=Image.BILINEAR
            )
        )
        full = self._artefacts(full * self.bias)
        n1, n2 = self._noise(rng)
        re_ = full + an.noise * n1
        im_ = an.noise * n2
        mag = np.sqrt(re_ * re_ + im_ * im_)
        mag -= self.black
        mag *= self.to_level
        np.clip(mag, 0, self.levels - 1, out=mag)
        return self.lut[mag.astype(np.intp)]

    def _artefacts(self, full):
        """Motion ghosts (two faint copies shifted both ways along the phase-encoding axis) and wrap-around."""
        an = self.an
        if an.ghost > 0:
            axis = an.ghost_axis
            shift = max(1, round(an.ghost_shift * full.shape[axis]))
            full = full + (0.5 * an.ghost) * (np.roll(full, shift, axis) + np.roll(full, -shift, axis))
        if an.wrap > 0:
            # what lies beyond the top edge (the thigh, continuing the top of the picture) folds into the bottom,
            # and what lies beyond the bottom edge into the top; the continuation is drawn as the edge's mirror
            n = max(1, round(an.wrap * full.shape[0]))
            fade = np.linspace(1.0, 0.0, n, dtype=np.float32)[:, None]  # the coil sees less of it further out
            top, bottom = full[:n] * fade, full[-n:] * fade[::-1]
            full[-n:] += top[::-1]
            full[:n] += bottom[::-1]
        return full

    def slice_position(self, slice_index, num_slices):
        """Position of a slice across the knee, -1 (medial) .. +1 (lateral); slices run from patient right to left."""
        t = 0.5 if num_slices == 1 else slice_index / (num_slices - 1)
        an = self.an
        s = an.slice_from + (an.slice_to - an.slice_from) * t  # left knee: medial to lateral
        return -s if an.side == "RIGHT" else s  # right knee: lateral to medial


def render_slice(anatomy, slice_index, num_slices, rng, height=HEIGHT, width=WIDTH):
    """One slice of a scan as an 8-bit grayscale image of shape (height, width); `rng` draws its noise."""
    if not 0 <= slice_index < num_slices:
        raise ValueError(f"slice_index {slice_index} is outside 0..{num_slices - 1}")
    scene = _Scene(anatomy, height, width)
    return scene.render(scene.slice_position(slice_index, num_slices), rng)


def render_scan(anatomy, num_slices, rng, height=HEIGHT, width=WIDTH):
    """All slices of a scan, shape (num_slices, height, width), uint8; the per-scan work is done once."""
    scene = _Scene(anatomy, height, width)
    return np.stack([scene.render(scene.slice_position(i, num_slices), rng) for i in range(num_slices)])


# === Writing a set ===
def _scan_rngs(seed, spec):
    base = [seed, spec.patient_index]
    return (np.random.default_rng(base), np.random.default_rng(base + [spec.scan_index + 1]),
            np.random.default_rng(base + [spec.scan_index + 1, 1]))


def scan_anatomy(seed, spec):
    """The `Anatomy` that `generate` draws for scan `spec` of the population made with `seed`."""
    patient_rng, scan_rng, _ = _scan_rngs(seed, spec)
    return sample_anatomy(scan_rng, side=spec.side, patient=_sample_patient(patient_rng))


def scan_pixels(seed, spec, slices, height=HEIGHT, width=WIDTH):
    """The slices of scan `spec` exactly as `generate` writes them as PNGs: (slices, height, width) uint8."""
    return render_scan(scan_anatomy(seed, spec), slices, _scan_rngs(seed, spec)[2], height, width)


def _write_scan(job):
    """Writes a scan's slices as PNGs; returns {file name: SHA-256 of the bytes written} for phantom.json."""
    out_dir, seed, spec, slices, height, width = job
    digests = {}
    for i, pixels in enumerate(scan_pixels(seed, spec, slices, height, width)):
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=1)
        (Path(out_dir) / spec.filename(i)).write_bytes(buffer.getvalue())
        digests[spec.filename(i)] = hashlib.sha256(buffer.getvalue()).hexdigest()
    return digests


def _parameters(patients, seed, slices, height, width):
    return dict(version=VERSION, patients=patients, seed=seed, slices=slices, height=height, width=width)


def _reusable(out, params, paths):
    """Whether folder `out` already holds the complete set made with `params` (its phantom.json says so)."""
    if (Path(out) / "phantom.partial").exists():
        return False
    old = _read_record(Path(out) / "phantom.json", warn=False)
    return old is not None and old["parameters"] == params and all(p.is_file() for p in paths)


# phantom.json and phantom.partial are read back, so they are untrusted input: a damaged or edited one is treated as
# absent (with one warning line), and neither ever decides alone that a file may be deleted or overwritten. A file is
# the generator's own (`_ours`) only when its bytes match the SHA-256 that phantom.json recorded when it was written,
# or its pixels are those that a recorded set of parameters renders under its name, or (an interrupted run's
# half-written file) phantom.partial lists it, it changed after phantom.partial was written and it is not an image.
_LIMITS = dict(version=(VERSION, VERSION), patients=(1, 100_000), seed=(0, 2**63), slices=(1, 10_000),
               height=(16, 8192), width=(16, 8192))


def _parameters_problem(params):
    if not isinstance(params, dict) or set(params) != set(_LIMITS):
        return "its parameters are not those phantom.py records"
    for key, (low, high) in _LIMITS.items():
        value = params[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            return f"its parameter {key} is {value!r}"
    return None


def _record_problem(record, partial):
    """Why a parsed phantom.json (or, `partial`, phantom.partial) cannot be used; None when it can."""
    if not isinstance(record, dict):
        return "it is not a JSON object"
    params = record.get("parameters")
    problem = next(filter(None, map(_parameters_problem, params)), None) if partial and isinstance(params, list) \
        else "its parameters are not a list" if partial else _parameters_problem(params)
    if problem:
        return problem
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(n, str) and FILE_RE.match(n) for n in files):
        return "its files are not a list of image names"
    digests = record.get("sha256", {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) and k in files for k, v in digests.items()):
        return "its sha256 is not a map of its files to checksums"
    return None


def _read_record(path, *, partial=False, warn=True):
    """phantom.json (or phantom.partial) as a dict, or None when absent; a damaged one is None with a warning."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        problem = _record_problem(record, partial)
    except (OSError, ValueError, RecursionError) as e:
        problem = f"it cannot be read as JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if problem is None:
        return record
    if warn:
        print(f"warning: {path} is damaged ({problem}); treated as absent: phantom.py replaces only images it can "
              "prove it wrote.", file=sys.stderr, flush=True)
    return None


def _ours(path, meta, partial, candidates, renders):
    """Whether the image file `path` can be proven the generator's own (the rules above `_LIMITS`)."""
    name = path.name
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if meta is not None and meta.get("sha256", {}).get(name) == hashlib.sha256(data).hexdigest():
        return True
    try:
        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im.convert("L")) if im.mode in ("L", "P", "1") else None
    except Exception:  # not an image Pillow can decode: compared by the partial rule only
        pixels = False
    for params in candidates:  # renders: {params: {name: (spec, slice)}, (params, spec): the scan's pixels}
        which = json.dumps(params, sort_keys=True)
        if which not in renders:
            renders[which] = {spec.filename(i): (spec, i) for spec in plan_population(params["patients"],
                                                                                       params["seed"])
                              for i in range(params["slices"])}
        if name in renders[which] and isinstance(pixels, np.ndarray):
            spec, i = renders[which][name]
            key = (which, spec)
            if key not in renders:
                renders[key] = scan_pixels(params["seed"], spec, params["slices"], params["height"], params["width"])
            if np.array_equal(pixels, renders[key][i]):
                return True
    if partial is not None and name in partial["files"] and pixels is False:
        try:
            return path.stat().st_mtime_ns >= (path.parent / "phantom.partial").stat().st_mtime_ns
        except OSError:
            return False
    return False


def _run_jobs(function, jobs, workers, progress):
    """Runs `function(job)` for every job, on `workers` processes (None: min(2, CPU count)), printing progress to
    stderr (a live count on a terminal, else one line at the end) when `progress` is true; returns the results, in
    the order they finished."""
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    workers = min(workers, len(jobs))
    done, results = 0, []

    live = progress and sys.stderr.isatty()

    def report(n):
        if live:
            print(f"\rphantom: {n}/{len(jobs)} scans", end="", file=sys.stderr, flush=True)

    if workers == 1:
        for job in jobs:
            results.append(function(job))
            done += 1
            report(done)
    else:
        # spawn, not fork: the caller may already run threads (TensorFlow) that a fork would copy half-locked
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(function, jobs, chunksize=1):
                results.append(result)
                done += 1
                report(done)
    if live:
        print(file=sys.stderr)
    elif progress:
        print(f"phantom: {len(jobs)}/{len(jobs)} scans", file=sys.stderr)
    return results


def _output_folder(out_dir, slices, height, width, what):
    """`out_dir` as a Path, once the set's settings and the folder are checked (`what` the folder will hold)."""
    if slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}")
    if height < 16 or width < 16:
        raise ValueError(f"image size {height} x {width} is too small; use at least 16 x 16")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; pass a folder for the synthetic {what}")
    return out


def generate(out_dir, *, patients=40, seed=0, slices=40, height=HEIGHT, width=WIDTH, workers=None, progress=True):
    """Writes a synthetic AKOA set into the flat folder `out_dir` and returns the sorted paths of its images.

    A folder that already holds the same set (its `phantom.json` matches and every image is there) is reused as it
    is. `phantom.json` (parameters, counts, the file names and each file's SHA-256) is written last, so a half-written
    set is never reused; images of an earlier phantom set in the folder that the new plan does not contain are
    deleted. phantom.json and phantom.partial are untrusted input: every AKOA-named image in the folder must be
    proven the generator's own before it is deleted or overwritten (`_ours`: its recorded checksum, or the pixels
    its recorded parameters render), else the run is refused: it never deletes or overwrites a file it did not
    write, whatever those two files say.

    Args:
        out_dir: str or Path. Folder to write into (created if missing).
        patients: int. Number of patients (about 1.4 scans each). Defaults to 40.
        seed: int. Seed of the population and of every picture. Defaults to 0.
        slices: int. Slices per scan. Defaults to 40.
        height, width: int. Image size. Defaults to 228 x 260, as AKOA.
        workers: int or None. Processes; None uses min(2, CPU count). Defaults to None.
        progress: bool. Print a progress line to stderr. Defaults to True.
    """
    out = _output_folder(out_dir, slices, height, width, "images")
    specs = plan_population(patients, seed)
    names = sorted(spec.filename(i) for spec in specs for i in range(slices))
    paths = [out / n for n in names]
    params = _parameters(patients, seed, slices, height, width)
    meta_path, partial_path = out / "phantom.json", out / "phantom.partial"
    if _reusable(out, params, paths):
        return paths

    out.mkdir(parents=True, exist_ok=True)
    meta = _read_record(meta_path)
    partial = _read_record(partial_path, partial=True)
    candidates = [params] + ([meta["parameters"]] if meta else []) + (partial["parameters"] if partial else [])
    candidates = [c for i, c in enumerate(candidates) if c not in candidates[:i]]
    present = sorted(p.name for p in out.iterdir() if FILE_RE.match(p.name))
    renders = {}
    foreign = [n for n in present if not _ours(out / n, meta, partial, candidates, renders)]
    if foreign:
        raise ValueError(
            f"{out} already holds {len(foreign)} knee image{'s' if len(foreign) != 1 else ''} that phantom.py did not "
            f"write or cannot prove it wrote (e.g. {foreign[0]}); move them, or pick an empty folder: phantom.py never "
            "deletes or overwrites files it did not write"
        )
    # what this run may leave behind, and the parameters that prove it (a run killed before phantom.json is written)
    fileio.atomic_write_bytes(partial_path, fileio.json_text(
        dict(parameters=candidates, files=sorted(set(present) | set(names)))).encode("utf-8"))
    if meta_path.exists():
        meta_path.unlink()
    for name in sorted(set(present) - set(names)):
        (out / name).unlink()

    digests = {}
    for written in _run_jobs(_write_scan, [(str(out), seed, spec, slices, height, width) for spec in specs], workers,
                             progress):
        digests.update(written)
    left = sum(slices for spec in specs if spec.side == "LEFT")
    counts = dict(
        images=len(names), scans=len(specs), patients=patients, left_images=left, right_images=len(names) - left
    )
    fileio.atomic_write_bytes(meta_path, fileio.json_text(dict(
        parameters=params, counts=counts, files=names, sha256=dict(sorted(digests.items())))).encode("utf-8"))
    partial_path.unlink()
    return paths


# === Volumes: a scan as a DICOM series or a NIfTI file ===
SLAB_MM = 112.0  # left-right extent of a scan's slices: OAI's sagittal DESS is 160 slices of 0.7 mm
PLANES = ("sagittal", "coronal", "axial")
# How the pixels of a volume are written. "akoa": a left knee is the mirror image of a right one (anterior to the image
# right), as AKOA stores its slices, so within one slice the side is a storage convention. "scanner": both knees in
# the same in-plane orientation (anterior to the image left, superior up), as a scanner writes its sagittal series:
# only the geometry and the anatomy across the slices (the fibular head lies laterally) tell the side.
CONVENTIONS = ("akoa", "scanner")
# How the axes of a volume are stored: "as-acquired" (rows, columns, slices of the sagittal acquisition), or "random":
# one of the 48 legal orders (canonical.storage_orders), drawn per scan, with the geometry to match.
STORAGES = ("as-acquired", "random")
VOLUME_FORMATS = ("png", "dicom", "nifti")

# Directions in DICOM's patient frame (LPS: x towards the patient's left, y posterior, z superior) of image right (the
# column index), image down (the row index) and the next slice, for a RIGHT knee; a LEFT knee is its mirror image, so
# its image right is reversed. "sagittal" is what the pictures show: anterior to the image left, superior up, slices
# from the patient's right to left. The other two record the same pixels with a wrong geometry: test data for
# readers that must refuse non-sagittal scans.
_PLANE_AXES = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
}


@dataclasses.dataclass(frozen=True)
class ScanGeometry:
    """Where the voxels of a scan lie in the patient, in DICOM's patient frame (LPS, mm), centred on the origin.

    Args:
        right: tuple of 3 floats. Unit vector of image right (increasing column index).
        down: tuple of 3 floats. Unit vector of image down (increasing row index).
        through: tuple of 3 floats. Unit vector from one slice to the next.
        pixel_mm: float. Pixel spacing, rows and columns alike: the field of view (FOV_MM) over the width.
        slice_mm: float. Distance between slice centres, also recorded as the slice thickness.
        shape: tuple of 3 ints. (slices, rows, columns).
    """

    right: tuple
    down: tuple
    through: tuple
    pixel_mm: float
    slice_mm: float
    shape: tuple

    def position(self, k):
        """ImagePositionPatient of slice k: the centre of its top-left pixel, mm (rounded to 0.1 micrometre)."""
        n, rows, cols = self.shape
        steps = (-(cols - 1) / 2 * self.pixel_mm, -(rows - 1) / 2 * self.pixel_mm, (k - (n - 1) / 2) * self.slice_mm)
        return tuple(round(sum(s * a[i] for s, a in zip(steps, (self.right, self.down, self.through))), 4) + 0.0
                     for i in range(3))

    def affine(self):
        """NIfTI affine (RAS+, mm) of the volume data[row, column, slice]: voxel (0, 0, k) is slice k's position."""
        return self.frame().affine()

    def frame(self):
        """The `VoxelFrame` of the volume data[row, column, slice] (the pixels transposed to (rows, columns, slices))."""
        return VoxelFrame((self.down, self.right, self.through), (self.pixel_mm, self.pixel_mm, self.slice_mm),
                          self.position(0))


@dataclasses.dataclass(frozen=True)
class VoxelFrame:
    """Where the axes of a stored volume data[i, j, k] lie in the patient (DICOM's LPS frame, mm): one file's storage.

    Args:
        directions: 3 unit vectors, the way index i (image rows), j (image columns) and k (slices) run.
        spacing: 3 floats, mm between neighbours along i, j and k.
        origin: 3 floats, the position of voxel (0, 0, 0).
    """

    directions: tuple
    spacing: tuple
    origin: tuple

    def position(self, k):
        """ImagePositionPatient of slice k (its voxel (0, 0, k)), mm rounded to 0.1 micrometre."""
        return tuple(round(o + k * self.spacing[2] * d, 4) + 0.0 for o, d in zip(self.origin, self.directions[2]))

    def affine(self):
        """NIfTI affine (RAS+, mm): voxel (i, j, k) to the patient."""
        ras = np.diag([-1.0, -1.0, 1.0])  # LPS to RAS
        affine = np.eye(4)
        for axis in range(3):
            affine[:3, axis] = ras @ np.multiply(self.directions[axis], self.spacing[axis])
        affine[:3, 3] = ras @ np.asarray(self.position(0))
        return affine

    def stored(self, data, order, flips):
        """The same voxels stored another legal way (canonical.store's order and flips: stored axis a is axis
        order[a] of `data`, reversed when flips[a]); returns (stored data, its VoxelFrame)."""
        from perceiver import canonical

        geometry = canonical.Geometry(np.asarray(self.directions, float), self.spacing)
        stored, moved = canonical.store(data, geometry, order, flips)
        corner = np.asarray(self.origin, float)  # the voxel that becomes (0, 0, 0): the far end of a flipped axis
        for a, (axis, flip) in enumerate(zip(order, flips)):
            if flip:
                corner = corner + (data.shape[axis] - 1) * self.spacing[axis] * np.asarray(self.directions[axis])
        directions = tuple(tuple(float(x) + 0.0 for x in v) for v in moved.directions)
        return stored, VoxelFrame(directions, moved.spacing, tuple(float(x) for x in corner))


def scan_geometry(shape, *, side, plane="sagittal", convention="akoa"):
    """The `ScanGeometry` of a scan of `shape` (slices, rows, columns) of a "LEFT" or "RIGHT" knee.

    The slices span SLAB_MM whatever their number; the pixels span FOV_MM across the width. `plane` other than
    "sagittal" records a deliberately wrong orientation (see _PLANE_AXES). With `convention` "scanner" a left knee's
    image right is a right knee's (see CONVENTIONS; its pixels must then be un-mirrored too: `scanner_pixels`).
    """
    if side not in ("LEFT", "RIGHT"):
        raise ValueError(f"side must be 'LEFT' or 'RIGHT', got {side!r}")
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    n, rows, cols = (int(x) for x in shape)
    right, down, through = _PLANE_AXES[plane]
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if side == "LEFT" and convention == "akoa":
        right = tuple(-x + 0.0 for x in right)  # the mirror image: anterior to the image right
    return ScanGeometry(right, down, through, round(FOV_MM / cols, 6), round(SLAB_MM / n, 4), (n, rows, cols))


def _optional(fmt):
    """The optional package (requirements-dev.txt) that writes `fmt`: pydicom 3 for "dicom", nibabel for "nifti"."""
    name, needs = ("pydicom", "pydicom 3.0.1 or later: pip install 'pydicom>=3.0.1'") if fmt == "dicom" else (
        "nibabel", "nibabel: pip install nibabel")
    try:
        module = importlib.import_module(name)  # heavy and optional: imported only to write volumes
    except ImportError:
        module = None
    if module is None or (name == "pydicom" and int(module.__version__.split(".")[0]) < 3):
        raise ImportError(f"writing {'DICOM' if fmt == 'dicom' else 'NIfTI'} needs {needs}")
    return module


def scanner_pixels(pixels, side):
    """A scan's pixels (slices, rows, columns) as a scanner writes them: a left knee, drawn as AKOA's mirror image,
    turned back (its columns reversed) so that anterior is to the image left for both knees (CONVENTIONS)."""
    return np.ascontiguousarray(pixels[:, :, ::-1]) if side == "LEFT" else pixels


def _check_scan(pixels):
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        raise ValueError(f"a scan must be a (slices, rows, columns) uint8 array, got {pixels.dtype} {pixels.shape}")
    return pixels


def _write_atomic(path, data):
    fileio.atomic_write_bytes(path, data)  # a failed write (a full disk) leaves no temporary file behind


def write_dicom_series(folder, pixels, *, side, patient, seed, visit=0, plane="sagittal", frame=None):
    """Writes a scan as a DICOM series, one MR Image Storage file per slice, and returns the paths in slice order.

    Each file records the slice's geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness, SpacingBetweenSlices: see `scan_geometry`), Laterality and ImageLaterality ("L" / "R"), and its
    8-bit MONOCHROME2 pixels. The UIDs are derived from (seed, patient, visit, side, plane), so the same arguments
    write the same bytes. Each file is named "<SOPInstanceUID>.dcm", as PACS exports often are: listed by name, the
    files are never in slice order, so a reader has to sort them by their geometry; several series can share a
    folder.

    Args:
        folder: str or Path. Folder to write into (created if missing); files of the same names are replaced.
        pixels: uint8 array (slices, rows, columns). The scan, e.g. from `scan_pixels`.
        side: str. "LEFT" or "RIGHT".
        patient: str. PatientID and PatientName.
        seed: int. The seed that made the scan; it feeds the UIDs.
        visit: int. Visit number; it feeds the study's UID. Defaults to 0.
        plane: str. "sagittal" (true) or "coronal" / "axial" (a deliberately wrong geometry). Defaults to "sagittal".
        frame: VoxelFrame | None. The geometry of the pixels transposed to (rows, columns, slices), for a storage
            other than `scan_geometry`'s (the scanner convention, a storage order); None: `scan_geometry`'s.
    """
    pydicom = _optional("dicom")
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    pixels = _check_scan(pixels)
    voxels = frame or scan_geometry(pixels.shape, side=side, plane=plane).frame()
    key = ["phantom.py", str(seed), str(patient), str(visit)]
    study = generate_uid(entropy_srcs=key)
    series = generate_uid(entropy_srcs=key + [side, plane])
    frame_of_reference = generate_uid(entropy_srcs=key + [side, "frame of reference"])
    sops = [generate_uid(entropy_srcs=[series, str(k)]) for k in range(len(pixels))]
    if len(sops) > 1 and sops == sorted(sops):  # the file names would list in slice order (1 in n! series)
        sops.reverse()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (frame, sop) in enumerate(zip(pixels, sops)):
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        _dicom_header(ds, voxels, pixels.shape, k, side=side, patient=patient, plane=plane)
        ds.update(dict(SOPClassUID=MRImageStorage, SOPInstanceUID=sop, StudyInstanceUID=study,
                       SeriesInstanceUID=series, FrameOfReferenceUID=frame_of_reference))
        ds.PixelData = frame.tobytes() + b"\0" * (frame.size % 2)  # even length, as DICOM requires
        buffer = pydicom.filebase.DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        paths.append(folder / f"{sop}.dcm")
        _write_atomic(paths[-1], buffer.getvalue())
    return paths


def _dicom_header(ds, frame, shape, k, *, side, patient, plane):
    """The attributes of slice k of a scan that are not UIDs or pixels (MR Image IOD; type 2 ones left empty)."""
    _, rows, cols = shape
    letter = side[0]  # "L" or "R"
    ds.update(dict(
        ImageType=["DERIVED", "SECONDARY", "OTHER"], Modality="MR", Manufacturer="phantom.py",
        SeriesDescription=f"SAG_3D_DESS_WE ({plane} geometry)" if plane != "sagittal" else "SAG_3D_DESS_WE",
        PatientName=str(patient), PatientID=str(patient), PatientBirthDate="", PatientSex="",
        StudyDate="", StudyTime="", StudyID="1", AccessionNumber="", ReferringPhysicianName="",
        SeriesNumber=1, InstanceNumber=k + 1, BodyPartExamined="KNEE", Laterality=letter, ImageLaterality=letter,
        ScanningSequence="GR", SequenceVariant="SS", ScanOptions="", MRAcquisitionType="3D",
        PositionReferenceIndicator="",
        ImagePositionPatient=list(frame.position(k)),
        ImageOrientationPatient=[*frame.directions[1], *frame.directions[0]],  # image right, then image down
        PixelSpacing=[frame.spacing[0], frame.spacing[1]],  # between rows, between columns
        SliceThickness=frame.spacing[2], SpacingBetweenSlices=frame.spacing[2],
        SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", Rows=rows, Columns=cols,
        BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0,
    ))


def write_nifti(path, pixels, *, side, plane="sagittal", frame=None):
    """Writes a scan as a NIfTI-1 volume (gzip-compressed if `path` ends in ".gz") and returns the path.

    The data is stored as AKOA's volumes are cut into PNGs: data[:, :, k] is slice k, array axis 0 the image rows;
    the affine (qform and sform, code "scanner") is `frame`'s, by default `scan_geometry(...).frame()`'s, so that
    for a sagittal scan nibabel.aff2axcodes gives "I", "P" (RIGHT knee) or "A" (LEFT knee), and "L": the slices run
    along the left-right axis. The gzip stream has no time stamp, so the same scan writes the same bytes.

    Args:
        path: str or Path. File to write (its folder must exist).
        pixels: uint8 array (slices, rows, columns). The scan, e.g. from `scan_pixels`.
        side: str. "LEFT" or "RIGHT".
        plane: str. "sagittal" (true) or "coronal" / "axial" (a deliberately wrong geometry). Defaults to "sagittal".
        frame: VoxelFrame | None. The geometry of the pixels transposed to (rows, columns, slices); None:
            `scan_geometry`'s (see `write_dicom_series`).
    """
    nibabel = _optional("nifti")
    pixels = _check_scan(pixels)
    affine = (frame or scan_geometry(pixels.shape, side=side, plane=plane).frame()).affine()
    image = nibabel.Nifti1Image(np.ascontiguousarray(pixels.transpose(1, 2, 0)), affine)  # (rows, columns, slices)
    image.set_qform(affine, code="scanner")
    image.set_sform(affine, code="scanner")
    image.header.set_xyzt_units("mm")
    data = image.to_bytes()
    path = Path(path)
    _write_atomic(path, gzip.compress(data, compresslevel=6, mtime=0) if path.suffix == ".gz" else data)
    return path


def storage_order(seed, spec):
    """The legal storage order (canonical.storage_orders) drawn for a scan with storage "random": the same for the
    same seed and scan."""
    from perceiver import canonical

    orders = canonical.storage_orders()
    draw = int.from_bytes(hashlib.sha256(f"phantom.py storage {seed} {spec.stem()}".encode()).digest()[:8], "big")
    return orders[draw % len(orders)]


def volume_pixels(seed, spec, slices, height, width, *, convention="akoa", storage="as-acquired"):
    """A scan's pixels (stored slices, rows, columns) and their VoxelFrame, as `write_volumes` writes them."""
    pixels = scan_pixels(seed, spec, slices, height, width)
    frame = scan_geometry(pixels.shape, side=spec.side, convention=convention).frame()
    if convention == "scanner":
        pixels = scanner_pixels(pixels, spec.side)
    if storage == "random":
        data, frame = frame.stored(pixels.transpose(1, 2, 0), *storage_order(seed, spec))
        pixels = np.ascontiguousarray(data.transpose(2, 0, 1))
    return pixels, frame


def _write_volume(job):
    out_dir, fmt, seed, spec, slices, height, width, convention, storage = job
    pixels, frame = volume_pixels(seed, spec, slices, height, width, convention=convention, storage=storage)
    if fmt == "dicom":
        write_dicom_series(Path(out_dir) / spec.stem(), pixels, side=spec.side, patient=spec.patient, seed=seed,
                           visit=spec.visit, frame=frame)
    else:
        write_nifti(Path(out_dir) / f"{spec.stem()}.nii.gz", pixels, side=spec.side, frame=frame)
    return slices


def write_volumes(out_dir, fmt, *, patients=40, seed=0, slices=40, height=HEIGHT, width=WIDTH, workers=None,
                  progress=True, convention="akoa", storage="as-acquired"):
    """Writes the scans `generate` would write as PNG slices, with the same pixels, as volumes; returns their paths.

    fmt "dicom" writes one folder "<stem>" of DICOM files per scan (see `write_dicom_series`), "nifti" one file
    "<stem>.nii.gz" (see `write_nifti`), where <stem> is the AKOA name of the scan (`ScanSpec.stem`). Existing files
    of the same names are replaced; nothing is reused. The other arguments are those of `generate`, and
    `convention` and `storage` (CONVENTIONS, STORAGES): with "scanner" both knees are written in one in-plane
    orientation, with "random" each scan's axes in one of the 48 legal orders, the geometry always true.
    """
    if fmt not in ("dicom", "nifti"):
        raise ValueError(f"volume format must be 'dicom' or 'nifti', got {fmt!r}")
    if convention not in CONVENTIONS or storage not in STORAGES:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)} and storage one of "
                         f"{', '.join(STORAGES)}, got {convention!r} and {storage!r}")
    out = _output_folder(out_dir, slices, height, width, "volumes")
    specs = plan_population(patients, seed)
    _optional(fmt)  # fail here, not in a worker, without the package
    out.mkdir(parents=True, exist_ok=True)
    _run_jobs(_write_volume, [(str(out), fmt, seed, spec, slices, height, width, convention, storage)
                              for spec in specs], workers, progress)
    return sorted(out / (spec.stem() if fmt == "dicom" else f"{spec.stem()}.nii.gz") for spec in specs)


# === Contact sheet ===
def _side_of(name):
    m = _SIDE_RE.search(name)
    if not m:
        return None
    side = m.group(1).replace("_", "").upper()
    return "LEFT" if side == "LEFT" else "RIGHT"


SHEET_COLUMNS = 4
SHEET_LABEL = 14  # height of the caption strip under each tile, pixels
SHEET_PAD = 4


def sheet_size(per_side, tile_width=WIDTH, tile_height=HEIGHT):
    """(width, height) of the contact sheet `contact_sheet` writes for `per_side` images a side."""
    cols = min(SHEET_COLUMNS, per_side)
    rows = 2 * -(-per_side // cols)
    return cols * (tile_width + SHEET_PAD) + SHEET_PAD, rows * (tile_height + SHEET_LABEL + SHEET_PAD) + SHEET_PAD


def contact_sheet(paths_or_dir, out_png, *, per_side=8, seed=0):
    """Writes a grid of example slices: LEFT knees in the top rows, RIGHT knees below, each captioned.

    Slices come from different scans where possible, picked at random with `seed`. Tiles take the size of the first
    picked image. Returns the path written.
    """
    if per_side < 1:
        raise ValueError(f"per_side must be at least 1, got {per_side}")
    if isinstance(paths_or_dir, (str, os.PathLike)) and Path(paths_or_dir).is_dir():
        paths = sorted(Path(paths_or_dir).glob("*.png"))
    else:
        paths = sorted(Path(p) for p in paths_or_dir)
    rng = np.random.default_rng(seed)
    picked = {}
    for side in ("LEFT", "RIGHT"):
        scans = {}
        for p in paths:
            if _side_of(p.name) == side:
                scans.setdefault(p.name.split(".nii")[0], []).append(p)
        keys = sorted(scans)
        order = [keys[i] for i in rng.permutation(len(keys))]
        chosen = []
        while order and len(chosen) < per_side:  # one slice per scan, then around again
            for key in order:
                if len(chosen) == per_side:
                    break
                chosen.append(scans[key][rng.integers(len(scans[key]))])
        picked[side] = chosen
    first = next((ps[0] for ps in picked.values() if ps), None)
    if first is None:
        raise ValueError("found no LEFT or RIGHT knee images to show; pass a folder of AKOA-named PNG files")
    with Image.open(first) as im:
        tw, th = im.size
    cols = min(SHEET_COLUMNS, per_side)
    rows_per_side = -(-per_side // cols)
    sheet = Image.new("L", sheet_size(per_side, tw, th), 40)
    draw = ImageDraw.Draw(sheet)
    for block, side in enumerate(("LEFT", "RIGHT")):
        for n, p in enumerate(picked[side]):
            r, c = block * rows_per_side + n // cols, n % cols
            x = SHEET_PAD + c * (tw + SHEET_PAD)
            y = SHEET_PAD + r * (th + SHEET_LABEL + SHEET_PAD)
            with Image.open(p) as im:
                tile = im.convert("L")
                if tile.size != (tw, th):
                    tile = tile.resize((tw, th), Image.BILINEAR)
            sheet.paste(tile, (x, y))
            m = FILE_RE.match(p.name)
            detail = f"{m['patient']} v{m['visit']} slice {m['slice']}" if m else p.name[:30]
            draw.text((x + 2, y + th + 1), f"{side}  {detail}", fill=255)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out


# === Command line ===
def _parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Write a synthetic AKOA-style set of sagittal knee MRI slices (left vs right knees)."
    )
    parser.add_argument("out", type=Path, help="folder to write the PNG slices (or volumes) into")
    group = parser.add_argument_group("population")
    group.add_argument("--patients", type=int, default=40, help="number of patients (default: 40)")
    group.add_argument("--seed", type=int, default=0, help="seed of population and pictures (default: 0)")
    group.add_argument("--slices", type=int, default=40, help="slices per scan (default: 40)")
    group = parser.add_argument_group("images")
    group.add_argument("--height", type=int, default=HEIGHT, help=f"image height (default: {HEIGHT})")
    group.add_argument("--width", type=int, default=WIDTH, help=f"image width (default: {WIDTH})")
    group.add_argument("--format", choices=VOLUME_FORMATS, default="png",
                       help="png: AKOA's flat folder of slices; dicom: a folder of DICOM files per scan (needs "
                            "pydicom); nifti: a .nii.gz per scan (needs nibabel); the same pixels (default: png)")
    group.add_argument("--convention", choices=CONVENTIONS, default="akoa",
                       help="volumes only: akoa, a left knee stored as the mirror image of a right one; scanner, both "
                            "knees in one in-plane orientation, as a scanner writes them (default: akoa)")
    group.add_argument("--storage", choices=STORAGES, default="as-acquired",
                       help="volumes only: as-acquired, or random, each scan's axes stored in one of the 48 legal "
                            "orders with its geometry to match (default: as-acquired)")
    group = parser.add_argument_group("run")
    group.add_argument("--workers", type=int, default=None, help="processes (default: min(2, CPU count))")
    group.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG here (default: none)")
    group.add_argument("--sheet-per-side", type=int, default=8, help="images a side on the sheet (default: 8)")
    add_common_flags(parser, verbose=False)
    return parser, parser.parse_args(argv)


def main(argv=None):
    console_safe()  # a closed stdout: a warning, then /dev/null
    parser, args = _parse_args(argv)
    if args.sheet is not None and args.format != "png":
        parser.error("--sheet needs --format png: the contact sheet is made of the PNG slices")
    if args.format == "png" and (args.convention, args.storage) != ("akoa", "as-acquired"):
        parser.error("--convention and --storage apply to volumes (--format dicom or nifti); PNG slices are AKOA's")
    start = time.perf_counter()
    try:
        specs = plan_population(args.patients, args.seed)
        left = sum(spec.side == "LEFT" for spec in specs)
        if args.format != "png":
            paths = write_volumes(
                args.out, args.format, patients=args.patients, seed=args.seed, slices=args.slices,
                convention=args.convention, storage=args.storage,
                height=args.height, width=args.width, workers=args.workers,
            )
            kind = "DICOM series" if args.format == "dicom" else "NIfTI volumes"
            if (args.convention, args.storage) != ("akoa", "as-acquired"):
                kind += f" ({args.convention} convention, {args.storage} storage)"
            print(f"wrote {len(paths):,} {kind} of {args.slices} slices to {args.out}: {args.patients} patients, "
                  f"LEFT {left:,} / RIGHT {len(paths) - left:,} scans in {time.perf_counter() - start:.1f} s")
            return
        names = [spec.filename(i) for spec in specs for i in range(args.slices)]
        params = _parameters(args.patients, args.seed, args.slices, args.height, args.width)
        reused = _reusable(args.out, params, [args.out / n for n in names])
        paths = generate(
            args.out, patients=args.patients, seed=args.seed, slices=args.slices, height=args.height,
            width=args.width, workers=args.workers,
        )
        seconds = time.perf_counter() - start
        left *= args.slices
        done = f"reused {len(paths):,} images in" if reused else f"wrote {len(paths):,} images to"
        print(
            f"{done} {args.out}: {args.patients} patients, {len(specs)} scans, "
            f"LEFT {left:,} / RIGHT {len(paths) - left:,} images ({left / len(paths):.1%} left) in {seconds:.1f} s"
        )
        if args.sheet is not None:
            contact_sheet(paths, args.sheet, per_side=args.sheet_per_side, seed=args.seed)
            print(f"wrote contact sheet {args.sheet}")
        sys.stdout.flush()  # a full stdout fails here, inside the try, not as a traceback at exit
    except (ValueError, OSError, ImportError) as err:
        if isinstance(err, OSError):
            drop_stdout()  # what could not be printed is dropped: the flush at exit must not fail again
        parser.exit(2, f"phantom.py: error: {err}\n")


if __name__ == "__main__":
    main()
