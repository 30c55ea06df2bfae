"""Image export: 16-bit PNG and DICOM round trips, a simulated folder data set."""

import os
import pathlib

import numpy as np
import pydicom
from PIL import Image

from jaxthyroid import findings, report
from jaxthyroid.data import export


def _counts(shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.poisson(30.0, shape).astype(np.float32)
    a[0, 0], a[1, 1] = 0, 65535  # both ends of the uint16 range
    return a


def test_png16_round_trip_exact(tmp_path):
    counts = _counts()
    path = tmp_path / "a.png"
    export.write_png16(path, counts)
    with Image.open(path) as im:
        back = np.asarray(im)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, counts.astype(np.uint16))


def test_png16_clips_to_uint16(tmp_path):
    path = tmp_path / "b.png"
    export.write_png16(path, np.array([[-3.0, 70000.0], [12.4, 12.6]])[..., None])
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), [[0, 65535], [12, 13]])


def test_dicom_round_trip_exact(tmp_path):
    counts = _counts((48, 64), seed=1)
    path = tmp_path / "a.dcm"
    export.write_dicom(path, counts, finding_set_name="graves+hot_nodule", patient_id="P7", pixel_spacing_mm=1.5625)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "NM"
    assert ds.SOPClassUID == export.NM_IMAGE_STORAGE
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.ImageComments == "graves+hot_nodule" and ds.PatientID == "P7"
    assert [float(v) for v in ds.PixelSpacing] == [1.5625, 1.5625]
    assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.shape == (48, 64)
    np.testing.assert_array_equal(ds.pixel_array, counts.astype(np.uint16))


def test_contact_sheet_small_png(tmp_path):
    rng = np.random.default_rng(2)
    sets = {f"set{i}": [rng.poisson(20.0, (128, 128)).astype(np.float32) for _ in range(6)] for i in range(12)}
    path = tmp_path / "sheet.png"
    report.contact_sheet(sets, path, per_row=6)
    assert 0 < os.path.getsize(path) <= 200_000
    with Image.open(path) as im:
        assert im.size[1] > 12 * 20  # every row drawn


def test_write_simulated_folders_and_contact_sheet(tmp_path):
    summary = export.write_simulated(tmp_path, 20, size=64, seed=3, cross_fraction=0.5, dicom=True, chunk=8)
    png, dcm = tmp_path / "png", tmp_path / "dicom"
    folders = {d for d in os.listdir(png) if (png / d).is_dir()}
    assert folders == set(summary["counts_per_set"]) == {d for d in os.listdir(dcm)}
    for d in folders:  # every folder name parses back to a finding set
        findings.DEFAULT.set_id(d)
    assert sum(summary["counts_per_set"].values()) == 20 == len(summary["paths"])
    pngs = sorted(p for d in folders for p in os.listdir(png / d) if p.endswith(".png"))
    dcms = sorted(p[:-4] for d in folders for p in os.listdir(dcm / d) if p.endswith(".dcm"))
    assert len(pngs) == 20 and [p[:-4] for p in pngs] == dcms
    with Image.open(summary["paths"][0]) as im:
        img = np.asarray(im)
    assert img.shape == (64, 64) and img.dtype == np.uint16 and img.sum() > 1e4
    first = pathlib.Path(summary["paths"][0])
    ds = pydicom.dcmread(dcm / first.parent.name / (first.stem + ".dcm"))
    np.testing.assert_array_equal(ds.pixel_array, img)
    assert ds.ImageComments == first.parent.name
    sheet = tmp_path / "contact_sheet.png"
    assert sheet.exists() and 0 < sheet.stat().st_size <= 200_000
