"""Tests of the synthetic AKOA-style knee set (phantom.py): names, balance, determinism, orientation, reuse, sheet,
and scans written as DICOM series and NIfTI volumes."""

import dataclasses
import hashlib
import re
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from perceiver import phantom

AKOA_RE = re.compile(r"^OAI\d{7}_BaseLine_\d+_?de3d1_SAG_3D_DESS_WE_(RIGHT|LEFT|Left)\.nii\.gz_\d+\.png$")
SMALL = dict(patients=3, seed=5, slices=4, progress=False)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom_a")
    paths = phantom.generate(folder, workers=1, **SMALL)
    return folder, paths


@pytest.fixture(scope="module")
def slices():
    """Five slices across each of 120 scans, alternating sides: (images float32 (n, H, W), is_left (n,))."""
    images, left = [], []
    for k in range(120):
        rng = np.random.default_rng([2024, k])
        side = "LEFT" if k % 2 else "RIGHT"
        images.append(phantom.render_scan(phantom.sample_anatomy(rng, side=side), 5, rng))
        left += [side == "LEFT"] * 5
    return np.concatenate(images).astype(np.float32), np.array(left)


def test_same_seed_gives_identical_bytes_whatever_the_workers(small_set, tmp_path):
    folder, paths = small_set
    again = phantom.generate(tmp_path / "b", workers=2, **SMALL)
    assert [p.name for p in again] == [p.name for p in paths]
    assert _digests(tmp_path / "b") == _digests(folder)
    other = phantom.generate(tmp_path / "c", workers=1, **{**SMALL, "seed": 6})
    assert len(other) == len(paths)
    assert not set(_digests(tmp_path / "c").values()) & set(_digests(folder).values())


def test_files_are_akoa_named_8_bit_gray_228_by_260(small_set):
    folder, paths = small_set
    assert paths == sorted(paths)
    specs = phantom.plan_population(3, 5)
    assert len(paths) == 4 * len(specs)
    assert sorted(p.name for p in folder.glob("*.png")) == [p.name for p in paths]
    for p in paths:
        assert AKOA_RE.match(p.name), p.name
        with Image.open(p) as im:
            assert (im.mode, im.size, im.format) == ("L", (260, 228), "PNG")
    slice_numbers = {int(p.name.rsplit("_", 1)[1][:-4]) for p in paths}
    assert slice_numbers == {0, 1, 2, 3}


def test_population_has_akoa_balance_and_name_variants():
    for seed in (0, 1):
        specs = phantom.plan_population(200, seed)
        assert specs == phantom.plan_population(200, seed)
        left = sum(s.side == "LEFT" for s in specs) / len(specs)  # equal slices per scan: image fraction
        assert 0.36 <= left <= 0.48
        assert 1.2 <= len(specs) / 200 <= 1.6  # AKOA: 18,680 / 40 slices = 467 scans
        by_patient = {}
        for s in specs:
            assert re.fullmatch(r"OAI\d{7}", s.patient)
            by_patient.setdefault(s.patient, []).append(s)
        assert len(by_patient) == 200
        assert any({s.side for s in ss} == {"LEFT", "RIGHT"} for ss in by_patient.values())
        assert any(len({s.visit for s in ss}) > 1 for ss in by_patient.values())
        names = [s.filename(0) for s in specs]
        assert all(AKOA_RE.match(n) for n in names)
        assert any("_de3d1" in n for n in names) and any(re.search(r"\dde3d1", n) for n in names)
        assert {s.side_text for s in specs} == {"LEFT", "Left", "RIGHT"}
        assert all(s.side == "LEFT" for s in specs if s.side_text == "Left")
        assert {s.visit for s in specs} <= {3, 4, 5, 6, 7, 8, 100, 101, 102}
        assert len({(s.patient, s.visit, s.side) for s in specs}) == len(specs)


def test_left_and_right_knees_are_mirror_images():
    """The same knee drawn as a LEFT and as a RIGHT knee: the right one is the left one mirrored (the slice order
    reversed, as slices run from the patient's right to left), once pose and imaging are neutral."""
    rng = np.random.default_rng(4)
    base = phantom.sample_anatomy(rng, side="LEFT")
    neutral = dict(rotation=0.0, shift_x=0.0, slice_from=-base.slice_to, noise=1e-4, ghost=0.0, wrap=0.0,
                   bias=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5))
    left_knee = dataclasses.replace(base, **neutral)
    right_knee = dataclasses.replace(left_knee, side="RIGHT")
    n = 7
    for i in (1, 3, 5):
        a = phantom.render_slice(left_knee, i, n, np.random.default_rng(0)).astype(np.float32)
        b = phantom.render_slice(right_knee, n - 1 - i, n, np.random.default_rng(0)).astype(np.float32)
        mirrored = np.corrcoef(a[:, ::-1].ravel(), b.ravel())[0, 1]
        unflipped = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        # not 1: the per-slice patient motion and the marrow texture are drawn in image space, not mirrored
        assert mirrored > 0.93 and unflipped < mirrored - 0.15, (i, mirrored, unflipped)
        assert np.abs(a[:, ::-1] - b).mean() < 0.5 * np.abs(a - b).mean()


def test_side_cue_is_not_a_global_intensity_pattern():
    """A linear model on the raw pixels must not read the side (version 2's narrow poses let it: 0.996 here)."""
    seed, specs = 11, phantom.plan_population(100, 11)
    pixels, is_left, patient = [], [], []
    for spec in specs:
        rng = np.random.default_rng([seed, spec.patient_index, spec.scan_index])
        for image in phantom.render_scan(phantom.scan_anatomy(seed, spec), 4, rng):
            pixels.append(np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR), np.float32).ravel())
            is_left.append(spec.side == "LEFT")
            patient.append(spec.patient_index)
    pixels, is_left, train = np.array(pixels), np.array(is_left), np.array(patient) % 2 == 0
    scaler = StandardScaler().fit(pixels[train])
    model = LogisticRegression(C=0.01, max_iter=2000).fit(scaler.transform(pixels[train]), is_left[train])
    accuracy = model.score(scaler.transform(pixels[~train]), is_left[~train])
    assert 0.5 < accuracy < 0.85  # 0.79 with version 3: well below perfect, and still above chance


def test_no_single_pixel_tells_the_side(slices):
    images, left = slices
    n = len(left)
    per_pixel = np.ascontiguousarray(images.reshape(n, -1).T)  # (pixels, images)
    ranked = left[np.argsort(per_pixel, axis=1)]  # each pixel's labels, sorted by its value
    left_below = np.cumsum(ranked, axis=1, dtype=np.int32)
    right_below = np.arange(1, n + 1, dtype=np.int32) - left_below
    n_left, n_right = left.sum(), n - left.sum()
    hits = np.maximum(left_below + n_right - right_below, right_below + n_left - left_below).max(1)
    assert hits.max() / n < 0.9  # best threshold on any one pixel (ties only make this higher)


def test_slices_change_across_the_knee():
    rng = np.random.default_rng(3)
    anatomy = phantom.sample_anatomy(rng, side="RIGHT")
    scan = phantom.render_scan(anatomy, 40, np.random.default_rng(0))
    assert scan.shape == (40, 228, 260) and scan.dtype == np.uint8
    one = phantom.render_slice(anatomy, 20, 40, np.random.default_rng(0))
    assert one.shape == (228, 260) and one.dtype == np.uint8
    # neighbours differ by little more than noise; the edge of the knee looks unlike its middle
    scan = scan.astype(np.float32)
    near = np.abs(scan[20] - scan[21]).mean()
    assert np.abs(scan[0] - scan[20]).mean() > 1.5 * near and np.abs(scan[39] - scan[20]).mean() > 1.5 * near
    with pytest.raises(ValueError, match="outside"):
        phantom.render_slice(anatomy, 40, 40, rng)


def test_second_call_reuses_the_set_and_new_parameters_replace_it(tmp_path):
    paths = phantom.generate(tmp_path, workers=1, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in paths + [tmp_path / "phantom.json"]}
    assert phantom.generate(tmp_path, workers=1, **SMALL) == paths
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    fewer = phantom.generate(tmp_path, workers=1, **{**SMALL, "patients": 2})
    assert sorted(tmp_path.glob("*.png")) == fewer
    assert len(fewer) < len(paths)
    assert (tmp_path / "phantom.json").is_file() and not (tmp_path / "phantom.partial").exists()


def test_refuses_a_folder_of_foreign_knee_images(tmp_path):
    (tmp_path / "OAI9999999_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_0.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="did not write"):
        phantom.generate(tmp_path, workers=1, **SMALL)


def test_contact_sheet_puts_left_knees_on_top(small_set, tmp_path):
    folder, paths = small_set
    out = phantom.contact_sheet(folder, tmp_path / "sheet.png", per_side=3, seed=1)
    with Image.open(out) as im:
        assert im.size == (3 * (260 + 4) + 4, 2 * (228 + 14 + 4) + 4)
        sheet = np.asarray(im)
    pixels = {p.name: np.asarray(Image.open(p)) for p in paths}
    top, bottom = sheet[4 : 4 + 228, 4 : 4 + 260], sheet[250 : 250 + 228, 4 : 4 + 260]
    assert [n for n, a in pixels.items() if np.array_equal(a, top)][0].split("_WE_")[1].upper().startswith("LEFT")
    assert "_RIGHT." in [n for n, a in pixels.items() if np.array_equal(a, bottom)][0]


def test_command_line_writes_and_reports(tmp_path, capsys):
    phantom.main([str(tmp_path / "set"), "--patients", "2", "--slices", "2", "--sheet", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    n = len(phantom.plan_population(2, 0)) * 2
    assert f"wrote {n} images" in out and (tmp_path / "s.png").is_file()
    with pytest.raises(SystemExit):
        phantom.main([str(tmp_path / "set"), "--patients", "0"])
    assert "patients must be at least 1" in capsys.readouterr().err


def test_scan_pixels_are_the_png_slices(small_set):
    folder, _ = small_set
    spec = phantom.plan_population(3, 5)[-1]
    pixels = phantom.scan_pixels(5, spec, 4)
    assert pixels.shape == (4, 228, 260) and pixels.dtype == np.uint8
    for k in range(4):
        assert np.array_equal(pixels[k], np.asarray(Image.open(folder / spec.filename(k))))


@pytest.mark.parametrize("side", ["RIGHT", "LEFT"])
def test_dicom_series_records_a_sagittal_geometry(tmp_path, side):
    pydicom = pytest.importorskip("pydicom")
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 20, 30), dtype=np.uint8)
    paths = phantom.write_dicom_series(tmp_path / "a", pixels, side=side, patient="OAI9000001", seed=7, visit=3)
    again = phantom.write_dicom_series(tmp_path / "b", pixels, side=side, patient="OAI9000001", seed=7, visit=3)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]  # deterministic, UIDs included
    assert sorted(paths) != paths  # listed by name, the files are not in slice order
    spacing = phantom.SLAB_MM / 4
    headers = [pydicom.dcmread(p) for p in paths]
    for k, ds in enumerate(headers):
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR" and ds.PatientID == "OAI9000001"
        assert paths[k].name == f"{ds.SOPInstanceUID}.dcm"
        assert int(ds.InstanceNumber) == k + 1 and np.array_equal(ds.pixel_array, pixels[k])
        assert (ds.PhotometricInterpretation, ds.BitsStored, ds.Rows, ds.Columns) == ("MONOCHROME2", 8, 20, 30)
        assert ds.Laterality == ds.ImageLaterality == side[0]
        # image right is posterior for a RIGHT knee (anterior to the image left), anterior for a LEFT one; down is
        # inferior; so the slice normal is the patient's left-right axis
        assert [float(x) for x in ds.ImageOrientationPatient] == [0, 1 if side == "RIGHT" else -1, 0, 0, 0, -1]
        assert [float(x) for x in ds.PixelSpacing] == pytest.approx([phantom.FOV_MM / 30] * 2, abs=1e-6)
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == pytest.approx(spacing)
    positions = np.array([[float(x) for x in ds.ImagePositionPatient] for ds in headers])
    assert np.allclose(np.diff(positions, axis=0), [[spacing, 0, 0]] * 3)  # from the patient's right to left
    assert len({ds.SeriesInstanceUID for ds in headers}) == 1 and len({ds.SOPInstanceUID for ds in headers}) == 4
    other = phantom.write_dicom_series(tmp_path / "c", pixels, side=side, patient="OAI9000001", seed=8, visit=3)
    assert pydicom.dcmread(other[0]).SeriesInstanceUID != headers[0].SeriesInstanceUID


def test_nifti_holds_slices_on_the_last_axis_with_a_sagittal_affine(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 20, 30), dtype=np.uint8)
    for side, codes in (("RIGHT", ("I", "P", "L")), ("LEFT", ("I", "A", "L"))):
        path = phantom.write_nifti(tmp_path / f"{side}.nii.gz", pixels, side=side)
        image = nibabel.load(path)
        assert nibabel.aff2axcodes(image.affine) == codes
        assert image.header.get_zooms() == pytest.approx((phantom.FOV_MM / 30,) * 2 + (phantom.SLAB_MM / 4,), 1e-6)
        data = np.asarray(image.dataobj)
        assert data.dtype == np.uint8 and all(np.array_equal(data[:, :, k], pixels[k]) for k in range(4))
        assert phantom.write_nifti(tmp_path / "again.nii.gz", pixels, side=side).read_bytes() == path.read_bytes()
    axial = nibabel.load(phantom.write_nifti(tmp_path / "axial.nii", pixels, side="LEFT", plane="axial"))
    assert nibabel.aff2axcodes(axial.affine)[2] == "S"
    with pytest.raises(ValueError, match="plane must be one of"):
        phantom.write_nifti(tmp_path / "x.nii", pixels, side="LEFT", plane="oblique")


def test_command_line_writes_volumes(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pydicom")
    pytest.importorskip("nibabel")
    specs = phantom.plan_population(2, 0)
    phantom.main([str(tmp_path / "dcm"), "--patients", "2", "--slices", "3", "--format", "dicom", "--workers", "1"])
    assert f"wrote {len(specs)} DICOM series of 3 slices" in capsys.readouterr().out
    assert sorted(len(list((tmp_path / "dcm" / s.stem()).glob("*.dcm"))) for s in specs) == [3] * len(specs)
    phantom.main([str(tmp_path / "nii"), "--patients", "2", "--slices", "3", "--format", "nifti", "--workers", "1"])
    assert sorted(p.name for p in (tmp_path / "nii").iterdir()) == sorted(f"{s.stem()}.nii.gz" for s in specs)
    with pytest.raises(SystemExit):
        phantom.main([str(tmp_path / "x"), "--format", "nifti", "--sheet", str(tmp_path / "s.png")])
    assert "--sheet needs --format png" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(SystemExit):
        phantom.main([str(tmp_path / "y"), "--patients", "1", "--format", "dicom"])
    assert "writing DICOM needs pydicom 3.0.1 or later: pip install 'pydicom>=3.0.1'" in capsys.readouterr().err
