"""Tests of volumes.py on scans phantom.py writes: a DICOM series sorted by position, NIfTI, the plane of the slices."""

import shutil

import numpy as np
import pytest
from helpers import edit_dicom
from PIL import Image

from perceiver import phantom
from perceiver import nifti
from perceiver import volumes
from perceiver.volumes import VolumeError

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")

SEED, SLICES = 3, 5


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A RIGHT and a LEFT scan, each as its PNG slices (read back from disk, in slice order), a DICOM series and a
    NIfTI file: {side: (spec, png slices (SLICES, H, W) uint8, series folder, nifti path)}."""
    root = tmp_path_factory.mktemp("volumes")
    phantom.generate(root / "png", patients=4, seed=SEED, slices=SLICES, workers=1, progress=False)
    out = {}
    for spec in phantom.plan_population(4, SEED):
        if spec.side in out:
            continue
        png = np.stack([np.asarray(Image.open(root / "png" / spec.filename(k))) for k in range(SLICES)])
        pixels = phantom.scan_pixels(SEED, spec, SLICES)
        folder = root / spec.stem()
        phantom.write_dicom_series(folder, pixels, side=spec.side, patient=spec.patient, seed=SEED, visit=spec.visit)
        nii = phantom.write_nifti(root / f"{spec.stem()}.nii.gz", pixels, side=spec.side)
        out[spec.side] = spec, png, folder, nii
    assert set(out) == {"LEFT", "RIGHT"}
    return out


def _instance_numbers(paths):
    return [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]


def _assert_slices(frames, png):
    assert len(frames) == len(png)
    for k, (frame, expected) in enumerate(zip(frames, png)):
        assert frame.dtype == np.uint8 and np.array_equal(frame, expected), f"slice {k} is out of place"


@pytest.mark.parametrize("side", ["RIGHT", "LEFT"])
def test_dicom_series_reads_back_as_the_png_slices_in_slice_order(scans, side):
    spec, png, folder, _ = scans[side]
    listed = sorted(folder.glob("*.dcm"))
    assert len(listed) == SLICES
    assert _instance_numbers(listed) != list(range(1, SLICES + 1))  # listed by name, the files are out of order
    rng = np.random.default_rng(0)
    for paths in (listed, listed[::-1], [listed[i] for i in rng.permutation(SLICES)]):
        volume = volumes.read_dicom_series(paths)
        _assert_slices(volume.frames, png)
        assert volume.side == side.lower()
        assert volume.plane == "sagittal"
        assert volume.codes == ("IPL" if side == "RIGHT" else "IAL")


def test_the_series_is_sorted_by_position_not_by_instance_number(scans, tmp_path):
    _, png, folder, _ = scans["RIGHT"]
    for p in folder.glob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = SLICES + 1 - int(ds.InstanceNumber)
        ds.save_as(tmp_path / p.name)
    _assert_slices(volumes.read_dicom_series(sorted(tmp_path.glob("*.dcm"))).frames, png)


@pytest.mark.parametrize("side", ["RIGHT", "LEFT"])
def test_nifti_volume_holds_the_png_slices_along_its_last_axis(scans, side):
    _, png, _, path = scans[side]
    assert nibabel.aff2axcodes(nibabel.load(path).affine)[2] == "L"  # the slices run along the left-right axis
    volume = nifti.read_nifti_volume(path)
    _assert_slices(volume.frames, png)
    assert (volume.side, volume.plane, volume.codes) == (None, "sagittal", "IPL" if side == "RIGHT" else "IAL")
    _assert_slices(nifti.read_nifti(path), png)  # the plain reader is unchanged


def test_single_dicom_file_reports_its_plane_and_side(scans):
    _, png, folder, _ = scans["LEFT"]
    path = next(folder.glob("*.dcm"))
    volume = volumes.read_dicom_volume(path)
    k = _instance_numbers([path])[0] - 1
    _assert_slices(volume.frames, png[k : k + 1])
    assert (volume.side, volume.plane, volume.codes) == ("left", "sagittal", "IAL")
    assert volumes.read_dicom(path)[1] == "left" and np.array_equal(volumes.read_dicom(path)[0][0], png[k])


@pytest.mark.parametrize("plane, codes", [("coronal", "IRP"), ("axial", "PRS")])
def test_coronal_and_axial_copies_are_reported_as_such(scans, tmp_path, plane, codes):
    spec, png, _, _ = scans["LEFT"]
    paths = phantom.write_dicom_series(tmp_path / plane, png, side="LEFT", patient=spec.patient, seed=SEED,
                                       plane=plane)
    volume = volumes.read_dicom_series(sorted(paths))
    _assert_slices(volume.frames, png)
    assert (volume.plane, volume.codes) == (plane, codes)
    assert volumes.read_dicom_volume(paths[0]).plane == plane
    stored = nifti.read_nifti_volume(phantom.write_nifti(tmp_path / f"{plane}.nii", png, side="LEFT", plane=plane))
    assert (stored.plane, stored.codes) == (plane, codes)


def test_two_series_in_one_folder_are_told_apart_by_their_uid(scans, tmp_path):
    for side in ("RIGHT", "LEFT"):
        for p in scans[side][2].glob("*.dcm"):
            shutil.copy(p, tmp_path / p.name)
    groups = {}
    for p in sorted(tmp_path.glob("*.dcm")):
        groups.setdefault(volumes.dicom_series_uid(p), []).append(p)
    assert len(groups) == 2 and sorted(map(len, groups.values())) == [SLICES, SLICES]
    sides = {volumes.read_dicom_series(paths).side for paths in groups.values()}
    assert sides == {"left", "right"}
    with pytest.raises(VolumeError, match="belong to 2 series"):
        volumes.read_dicom_series(sorted(tmp_path.glob("*.dcm")))


def test_a_duplicated_slice_is_refused(scans, tmp_path):
    _, _, folder, _ = scans["RIGHT"]
    paths = sorted(folder.glob("*.dcm"))
    shutil.copy(paths[0], tmp_path / "copy.dcm")
    with pytest.raises(VolumeError, match=r"^2 files of series [\d.]+ share the position -?[\d.]+ mm; the series is"):
        volumes.read_dicom_series(paths + [tmp_path / "copy.dcm"])


def test_a_missing_middle_slice_is_refused(scans):
    _, _, folder, _ = scans["RIGHT"]
    paths = sorted(folder.glob("*.dcm"))
    middle = [p for p, n in zip(paths, _instance_numbers(paths)) if n == 3]
    end = [p for p, n in zip(paths, _instance_numbers(paths)) if n == SLICES]
    with pytest.raises(VolumeError, match=r"a slice is missing between -22\.4 mm and 22\.4 mm"):
        volumes.read_dicom_series([p for p in paths if p not in middle])
    assert len(volumes.read_dicom_series([p for p in paths if p not in end]).frames) == SLICES - 1


def test_files_without_geometry_are_unsuitable(scans, tmp_path):
    """Without ImageOrientationPatient (DICOM) or a qform/sform (NIfTI) the plane cannot be checked: no side."""
    _, png, folder, _ = scans["RIGHT"]
    paths = sorted(folder.glob("*.dcm"))
    bare = edit_dicom(paths[0], tmp_path / "no_iop.dcm", ImageOrientationPatient=None)
    with pytest.raises(VolumeError, match="^unsuitable: it has no usable ImageOrientationPatient"):
        volumes.read_dicom_volume(bare)
    with pytest.raises(VolumeError, match=r"^unsuitable: it has no usable ImageOrientationPatient.*\(no_iop.dcm\)$"):
        volumes.read_dicom_series(paths[1:] + [bare])
    no_ipp = edit_dicom(paths[0], tmp_path / "no_ipp.dcm", ImagePositionPatient=None)
    with pytest.raises(VolumeError, match="no_ipp.dcm of series .* has no usable ImagePositionPatient"):
        volumes.read_dicom_series(paths[1:] + [no_ipp])
    path = phantom.write_nifti(tmp_path / "knee.nii", png, side="RIGHT")
    assert nifti.read_nifti_volume(path).plane == "sagittal"
    _assert_slices(nifti.read_nifti(path), png)
    header = bytearray(path.read_bytes())
    header[252:256] = b"\0\0\0\0"  # NIfTI-1 qform_code and sform_code (int16 each): "unknown", as ANALYZE files
    path.write_bytes(bytes(header))
    with pytest.raises(VolumeError, match="^unsuitable: its header records no orientation"):
        nifti.read_nifti_volume(path)
    _assert_slices(nifti.read_nifti(path), png)  # the plain reader still reads it, as stored


def test_inconsistent_series_are_refused(scans, tmp_path):
    _, _, folder, _ = scans["RIGHT"]
    paths = sorted(folder.glob("*.dcm"))
    tilted = edit_dicom(paths[0], tmp_path / "tilted.dcm", ImageOrientationPatient=[0, 1, 0, 0.6, 0, -0.8])
    with pytest.raises(VolumeError, match="have different orientations .*; the series is not one volume"):
        volumes.read_dicom_series(paths[1:] + [tilted])
    other_side = edit_dicom(paths[0], tmp_path / "left.dcm", Laterality="L", ImageLaterality="L")
    with pytest.raises(VolumeError, match="disagree on the side"):
        volumes.read_dicom_series(paths[1:] + [other_side])
    with pytest.raises(VolumeError, match="no files"):
        volumes.read_dicom_series([])


def test_series_uid_of_unreadable_and_uid_less_files(scans, tmp_path):
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(VolumeError, match="not a readable DICOM file"):
        volumes.dicom_series_uid(tmp_path / "junk.dcm")
    path = next(scans["LEFT"][2].glob("*.dcm"))
    assert volumes.dicom_series_uid(edit_dicom(path, tmp_path / "no_uid.dcm", SeriesInstanceUID=None)) is None
    with pytest.raises(VolumeError, match=r"^junk.dcm: not a readable DICOM file"):
        volumes.read_dicom_series([path, tmp_path / "junk.dcm"])


def test_plane_of_an_enhanced_multi_frame_header():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def item(**kw):
        ds = Dataset()
        for k, v in kw.items():
            setattr(ds, k, v)
        return ds

    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = Sequence(
        [item(PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]))]
    )
    assert volumes.dicom_plane(ds) == ("axial", "PLS")
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[0, 0, z])])) for z in (10, 5, 0)]
    )
    assert volumes.dicom_plane(ds) == ("axial", "PLI")  # frames stored from superior to inferior
    assert volumes.dicom_plane(Dataset()) == (None, None)
