"""Canonical volumes (issue 28, step 1): every legal storage order of one knee comes back to the same voxels in the
same frame; the acquisition plane is read from the scan, not from its storage; oblique scans within the tolerance
take the nearest axes and beyond it are refused."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from perceiver import canonical, nifti, phantom, volumes
from perceiver.canonical import Geometry
from perceiver.errors import VolumeError

# rows to inferior, columns to posterior, slices to the patient's left (LPS: L = +x, P = +y, S = +z)
IPL = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _rotation(axis, degrees):
    """The rotation matrix about unit vector `axis` by `degrees` (Rodrigues)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def test_the_48_storage_orders_have_48_codes_and_each_comes_back():
    geometry = Geometry(IPL, (0.4, 0.4, 0.8))
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    codes = set()
    for order, flips in canonical.storage_orders():
        stored, moved = canonical.store(array, geometry, order, flips)
        codes.add(moved.codes)
        back, again = canonical.canonicalize(stored, moved)
        np.testing.assert_array_equal(back, array)
        assert again.codes == "IPL" and np.allclose(again.directions, IPL) and again.spacing == (0.4, 0.4, 0.8)
    assert len(codes) == 48


@given(shape=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
       channels=st.sampled_from([None, 3]),
       which=st.integers(0, 47), tilt=st.floats(-15, 15), axis=st.sampled_from([(1, 0, 0), (0, 1, 0), (1, 1, 1)]),
       spacing=st.tuples(*[st.floats(0.1, 5.0)] * 3), seed=st.integers(0, 2**16))
@settings(max_examples=300, deadline=None)
def test_canonicalisation_undoes_any_legal_storage_exactly(shape, channels, which, tilt, axis, spacing, seed):
    """Any array, stored any of the 48 ways, in a frame tilted up to 15 degrees: canonicalize gives back the very
    voxels (a transpose and flips, no interpolation) and the same directions and spacing."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, shape + ((channels,) if channels else ()), dtype=np.uint8)
    geometry = Geometry(IPL @ _rotation(axis, tilt).T, spacing)
    order, flips = canonical.storage_orders()[which]
    stored, moved = canonical.store(array, geometry, order, flips)
    back, again = canonical.canonicalize(stored, moved)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(again.directions, geometry.directions, atol=1e-12)
    assert again.spacing == pytest.approx(geometry.spacing) and again.codes == "IPL"


@pytest.mark.parametrize("order_flips", canonical.storage_orders(), ids=lambda of: f"{of[0]}{''.join('f' if f else '.' for f in of[1])}")
def test_a_nifti_knee_in_every_storage_order_reads_back_to_the_same_canonical_voxels(order_flips, tmp_path):
    """A phantom right knee written as NIfTI, then stored again each of the 48 legal ways with its affine to match
    (as nibabel, MONAI or nnU-Net would reorient it): read back and canonicalised, every copy is the same voxels."""
    import nibabel

    spec = next(s for s in phantom.plan_population(4, 0) if s.side == "RIGHT")
    pixels = phantom.scan_pixels(0, spec, 6, 64, 72)
    source = phantom.write_nifti(tmp_path / "knee.nii", pixels, side="RIGHT")
    original = nifti.read_nifti_volume(source)
    reference, _ = canonical.canonicalize(np.stack(original.frames, axis=2), original.geometry)
    order, flips = order_flips
    image = nibabel.load(source)
    data = np.asanyarray(image.dataobj)
    stored = np.transpose(data, order)
    affine = image.affine[:, list(order) + [3]].copy()
    for k, flip in enumerate(flips):  # index i of a flipped axis is index n - 1 - i of the unflipped one
        if flip:
            stored = np.flip(stored, axis=k)
            affine[:3, 3] += affine[:3, k] * (stored.shape[k] - 1)
            affine[:3, k] = -affine[:3, k]
    copy = nibabel.Nifti1Image(np.ascontiguousarray(stored), affine)
    copy.set_qform(affine, code="scanner")
    copy.set_sform(affine, code="scanner")
    path = tmp_path / "copy.nii"
    copy.to_filename(path)
    volume = nifti.read_nifti_volume(path)
    canonical.check(volume.geometry)
    voxels, geometry = canonical.canonicalize(np.stack(volume.frames, axis=2), volume.geometry)
    np.testing.assert_array_equal(voxels, reference)
    assert geometry.codes == "IPL"


def test_a_dicom_series_has_the_geometry_of_its_codes_and_spacing(tmp_path):
    spec = next(s for s in phantom.plan_population(4, 0) if s.side == "LEFT")
    pixels = phantom.scan_pixels(0, spec, 5, 64, 72)
    paths = phantom.write_dicom_series(tmp_path / "series", pixels, side="LEFT", patient=spec.patient, seed=0)
    volume = volumes.read_dicom_series(sorted(paths))
    assert volume.geometry is not None and volume.geometry.codes == volume.codes
    assert canonical.acquisition_plane(volume.geometry) == "sagittal"
    canonical.check(volume.geometry)
    voxels, geometry = canonical.canonicalize(np.stack(volume.frames, axis=2), volume.geometry)
    assert geometry.codes == "IPL" and voxels.shape[2] == 5
    single = volumes.read_dicom_volume(sorted(paths)[0])
    assert single.geometry.codes == volume.codes


@pytest.mark.parametrize("spacing, acquired, plane", [
    ((0.4, 0.4, 1.0), None, "sagittal"),  # thick slices along the stored slice axis (L)
    ((1.0, 0.4, 0.4), None, "axial"),  # thick along the rows (S): an axial acquisition stored sagittally
    ((0.4, 0.4, 0.4), None, None),  # isotropic: unknown, and accepted (its sagittal slices are as sharp)
    ((0.4, 0.4, 0.4), 1, "coronal"),  # the file says the slices were cut along the columns (P)
])
def test_the_acquisition_plane_comes_from_the_scan_not_its_storage(spacing, acquired, plane):
    geometry = Geometry(IPL, spacing, acquired)
    assert canonical.acquisition_plane(geometry) == plane
    # stored any legal way, the acquisition plane stays what it was
    for order, flips in canonical.storage_orders():
        _, moved = canonical.store(np.zeros((2, 2, 2)), geometry, order, flips)
        assert canonical.acquisition_plane(moved) == plane, (order, flips)
    if plane in ("sagittal", None):
        canonical.check(geometry)
    else:
        with pytest.raises(VolumeError, match=f"^unsuitable: it was acquired in the {plane} plane"):
            canonical.check(geometry)


def test_a_sagittal_scan_reoriented_to_ras_is_still_sagittal():
    """The case that found it: a canonical RAS copy (MONAI's Orientation, nnU-Net) of a sagittal acquisition was
    refused as axial because its storage runs along S; its thick slices say how it was cut."""
    ras = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # rows to R, columns to A, slices to S
    geometry = Geometry(ras, (0.8, 0.4, 0.4))  # thick along R-L: cut sagittally
    assert geometry.codes == "RAS" and canonical.acquisition_plane(geometry) == "sagittal"
    canonical.check(geometry)


@given(tilt=st.floats(0, 45), axis=st.sampled_from([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1)]))
@settings(max_examples=120, deadline=None)
def test_oblique_scans_take_the_nearest_axes_within_the_tolerance_and_are_refused_beyond(tilt, axis):
    geometry = Geometry(IPL @ _rotation(axis, tilt).T, (0.4, 0.4, 0.8))
    angle = canonical.obliquity(geometry)
    assert angle <= tilt + 1e-6
    if angle <= canonical.MAX_OBLIQUE_DEG:
        canonical.check(geometry)
        assert canonical.canonicalize(np.zeros((2, 3, 4)), geometry)[0].shape == (2, 3, 4)
    else:
        with pytest.raises(VolumeError, match=r"^unsuitable: its axes lie up to \d+ degrees from the patient's"):
            canonical.check(geometry)


def test_degenerate_geometry_is_refused():
    with pytest.raises(VolumeError, match="degenerate"):
        Geometry(np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]), (1, 1, 1))
    with pytest.raises(VolumeError, match="do not name each patient axis once"):
        canonical.transform("LLS")


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_scanner_convention_volumes_in_random_storage_come_back_to_one_frame(fmt, tmp_path):
    """phantom.py --convention scanner --storage random: both knees in one in-plane orientation, each scan's axes in
    a drawn legal order with its true geometry. Read back and canonicalised, every scan is the scanner's as-acquired
    voxels in IPL, so only the anatomy across the slices tells the side."""
    spec_of = {spec.stem(): spec for spec in phantom.plan_population(6, 0)}
    paths = phantom.write_volumes(tmp_path, fmt, patients=6, seed=0, slices=6, height=64, width=72, progress=False,
                                  convention="scanner", storage="random")
    codes = set()
    for path in paths:
        stem = path.name.removesuffix(".nii.gz")
        volume = (nifti.read_nifti_volume(path) if fmt == "nifti"
                  else volumes.read_dicom_series(sorted(path.glob("*.dcm"))))
        codes.add(volume.geometry.codes)
        canonical.check(volume.geometry)  # acquired sagittally, whatever the storage
        voxels, geometry = canonical.canonicalize(np.stack(volume.frames, axis=2), volume.geometry)
        spec = spec_of[stem]
        pixels, frame = phantom.volume_pixels(0, spec, 6, 64, 72, convention="scanner")
        assert canonical.Geometry(np.asarray(frame.directions), frame.spacing).codes == "IPL", spec.side
        np.testing.assert_array_equal(voxels, pixels.transpose(1, 2, 0))
        assert geometry.codes == "IPL"
        akoa = phantom.scan_pixels(0, spec, 6, 64, 72)  # AKOA's left knee is the scanner's, mirrored in-plane
        np.testing.assert_array_equal(pixels, akoa[:, :, ::-1] if spec.side == "LEFT" else akoa)
    assert len(codes) >= 3  # the storage orders were drawn, not all the same


def test_the_conventions_apply_to_volumes_only(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        phantom.main([str(tmp_path / "png"), "--convention", "scanner"])
    assert done.value.code == 2 and "apply to volumes" in capsys.readouterr().err
    assert not (tmp_path / "png").exists()
    same = [phantom.storage_order(0, spec) for spec in phantom.plan_population(6, 0)]
    assert same == [phantom.storage_order(0, spec) for spec in phantom.plan_population(6, 0)]  # drawn, repeatably
