"""A user's folder -> TFDS: formats, labels, bad inputs, atomic builds."""

import csv
import os
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow_datasets")

from jaxthyroid import findings
from jaxthyroid.data import features, folder_builder, images

SIZE = 32


def write_dicom(path, pixels: np.ndarray, *, with_pixels: bool = True):
    """A minimal single-frame NM DICOM (uint16 MONOCHROME2)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    nm_storage = "1.2.840.10008.5.1.4.1.1.20"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = nm_storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = nm_storage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "NM"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels, np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def blob(size, peak, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    g = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 6) ** 2))
    return rng.poisson(peak * g).astype(np.float64)


@pytest.fixture
def good_root(tmp_path):
    """normal: 16-bit PNG; graves: 8-bit PNG; hot_nodule: RGB JPEG + RGB TIFF;
    graves+hot_nodule: DICOM NM. Four of each."""
    root = tmp_path / "scans"
    for d in ("normal", "graves", "hot_nodule", "graves+hot_nodule"):
        (root / d).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(blob(SIZE, 40000, i).astype(np.uint16)).save(root / "normal" / f"n{i}.png")
        Image.fromarray(blob(64, 250, 10 + i).astype(np.uint8)).save(root / "graves" / f"g{i}.png")
        rgb = np.repeat(blob(48, 200, 20 + i).astype(np.uint8)[..., None], 3, -1)
        fmt = "jpg" if i % 2 else "tif"
        Image.fromarray(rgb, "RGB").save(root / "hot_nodule" / f"h{i}.{fmt}")
        write_dicom(str(root / "graves+hot_nodule" / f"m{i}.dcm"), blob(SIZE, 3000, 30 + i))
    (root / ".DS_Store").write_bytes(b"junk")  # ignored silently
    return root


def test_readers_keep_the_count_scale(good_root):
    png16 = images.load_image(good_root / "normal" / "n0.png", SIZE)
    assert png16.dtype == np.uint16 and png16.shape == (SIZE, SIZE, 1)
    np.testing.assert_array_equal(png16[..., 0], blob(SIZE, 40000, 0).astype(np.uint16))
    dcm = images.read_counts(good_root / "graves+hot_nodule" / "m0.dcm")
    np.testing.assert_array_equal(dcm, blob(SIZE, 3000, 30))
    rgb = images.read_counts(good_root / "hot_nodule" / "h0.tif")
    assert rgb.ndim == 2 and 150 < rgb.max() <= 255  # luminance of a grey RGB
    resized = images.load_image(good_root / "graves" / "g0.png", SIZE)
    assert 150 < resized.max() <= 255  # an 8-bit image keeps its 0-255 scale


def test_build_folder_labels_and_splits(good_root, tmp_path):
    path, plan = folder_builder.build_folder(
        good_root, tmp_path / "tfds", size=SIZE, val_fraction=0.25, test_fraction=0.25, seed=3, progress=False
    )
    assert os.path.isfile(os.path.join(path, "dataset_info.json"))
    assert features.load_taxonomy(path) == findings.DEFAULT
    seen = {}
    for split, expect in (("train", 8), ("validation", 4), ("test", 4)):
        src = features.load_source(path, split)
        assert len(src) == expect
        for i in range(len(src)):
            r = src[i]
            assert r["image"].shape == (SIZE, SIZE, 1) and r["image"].dtype == np.uint16
            folder = os.path.basename(os.path.dirname(r["origin"].decode()))
            assert r["finding_set_name"].decode() == folder
            assert int(r["finding_set"]) == findings.DEFAULT.set_id(folder)
            np.testing.assert_array_equal(r["findings"], findings.DEFAULT.encode(folder))
            assert int(r["subset"]) == (folder == "graves+hot_nodule")
            seen.setdefault(split, []).append(folder)
    # Stratified: each of the four finding sets has 2 train, 1 validation, 1 test image.
    for split, per_set in (("train", 2), ("validation", 1), ("test", 1)):
        assert sorted(set(seen[split])) == sorted(set(seen["train"]))
        assert all(seen[split].count(f) == per_set for f in set(seen[split]))
    assert "tensorflow" not in sys.modules


def test_labels_csv_and_folder_taxonomy(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    rows = []
    for i in range(6):
        name = f"img{i}.png"
        Image.fromarray(blob(SIZE, 900, i).astype(np.uint16)).save(root / name)
        rows.append({"path": name, "finding_set": ["toxic", "toxic+cyst", "cyst"][i % 3]})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "finding_set"])
        w.writeheader()
        w.writerows(rows)
    path, plan = folder_builder.build_folder(
        root,
        tmp_path / "tfds",
        labels_csv=tmp_path / "labels.csv",
        taxonomy_from_folders=True,
        size=SIZE,
        val_fraction=0.0,
        test_fraction=0.5,
        progress=False,
    )
    tax = features.load_taxonomy(path)
    assert set(tax.findings) == {"toxic", "cyst"} and len(tax.finding_sets) == 3
    src = features.load_source(path, "train")
    names = {src[i]["origin"].decode(): src[i]["finding_set_name"].decode() for i in range(len(src))}
    for r in rows:
        p = str(root / r["path"])
        if p in names:
            assert names[p] == tax.folder_name(tax.parse_folder_name(r["finding_set"]))
    assert len(src) == 3 and src[0]["findings"].shape == (2,)


@pytest.fixture
def bad_root(good_root):
    """The good folder plus one file of each kind of bad input."""
    d = good_root / "normal"
    good = (d / "n0.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("not an image at all\n" * 20)
    Image.fromarray(np.zeros((400, 400), np.uint8)).save(d / "huge.png")
    write_dicom(str(d / "nopixels.dcm"), np.zeros((8, 8)), with_pixels=False)
    return good_root


BAD = {
    "truncated.png": "truncated",
    "empty.png": "empty",
    "notes.txt": "not an image",
    "huge.png": "exceeds the limit",
    "nopixels.dcm": "no pixel data",
}


def test_bad_files_are_all_listed_and_nothing_is_written(bad_root, tmp_path):
    with pytest.raises(features.DataError) as err:
        folder_builder.build_folder(bad_root, tmp_path / "tfds", size=SIZE, max_pixels=100_000, progress=False)
    assert len(err.value.problems) == len(BAD)
    message = str(err.value)
    assert "--skip-bad" in message  # the CLI flag (`jaxthyroid data build folder`), not only the Python argument
    for name, reason in BAD.items():
        line = next(p for p in err.value.problems if name in p)
        assert reason in line, line
        assert str(bad_root / "normal" / name) in message
    assert not (tmp_path / "tfds").exists() or not list((tmp_path / "tfds").rglob("dataset_info.json"))


def test_skip_bad_reports_the_count(bad_root, tmp_path):
    path, plan = folder_builder.build_folder(
        bad_root, tmp_path / "tfds", size=SIZE, max_pixels=100_000, skip_bad=True, progress=False
    )
    assert len(plan.skipped) == len(BAD)
    total = sum(len(features.load_source(path, s)) for s in ("train", "validation", "test"))
    assert total == 16


def test_unknown_folder_name_lists_the_known_ones(good_root, tmp_path):
    (good_root / "gravez").mkdir()
    Image.fromarray(np.ones((8, 8), np.uint8)).save(good_root / "gravez" / "x.png")
    with pytest.raises(features.DataError) as err:
        folder_builder.build_folder(good_root, tmp_path / "tfds", size=SIZE, progress=False)
    msg = str(err.value)
    assert "gravez" in msg and "Known folder names" in msg and "graves+hot_nodule" in msg


def test_failed_build_leaves_no_complete_looking_dataset(good_root, tmp_path, monkeypatch):
    real = images.load_image
    calls = {"n": 0}

    def flaky(path, size, **kw):  # fails while writing, after every file was checked
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError(f"{path}: disk went away")
        return real(path, size, **kw)

    monkeypatch.setattr(images, "load_image", flaky)
    with pytest.raises(OSError):
        folder_builder.build_folder(good_root, tmp_path / "tfds", size=SIZE, progress=False)
    final = folder_builder.folder_dir(tmp_path / "tfds", good_root, size=SIZE)
    assert not os.path.exists(final)
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
    assert not list((tmp_path / "tfds").rglob("*incomplete*"))
    monkeypatch.setattr(images, "load_image", real)
    path, _ = folder_builder.build_folder(good_root, tmp_path / "tfds", size=SIZE, progress=False)
    assert path == final and os.path.isfile(os.path.join(path, "dataset_info.json"))
