"""Writing scintigrams to disk: 16-bit PNG, DICOM NM, and a folder of phantom images.

:func:`write_simulated` writes ``out_dir/<finding set folder>/<index>.png`` — the
layout the folder-data loader reads back — plus ``out_dir/contact_sheet.png``.
No TFDS, no grain: Pillow, pydicom, matplotlib (via :mod:`jaxthyroid.report`).
"""

from __future__ import annotations

import collections
import datetime
import pathlib

import numpy as np

from jaxthyroid import findings

UINT16_MAX = 65535
NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"  # Nuclear Medicine Image Storage SOP class


def _as_uint16(counts2d) -> np.ndarray:
    a = np.asarray(counts2d)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image [H, W] (or [H, W, 1]), got shape {a.shape}")
    return np.clip(np.rint(a), 0, UINT16_MAX).astype(np.uint16)


def write_png16(path, counts2d) -> None:
    """A 16-bit greyscale PNG of counts ``[H, W]`` (rounded, clipped to 0..65535)."""
    from PIL import Image

    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_as_uint16(counts2d)).save(path, format="PNG")


def write_dicom(path, counts2d, *, finding_set_name: str, patient_id: str, pixel_spacing_mm: float) -> None:
    """A single-frame static NM DICOM file (uint16 counts, explicit VR little endian).

    ``finding_set_name`` goes to ImageComments and the series description, so the
    label travels with the file; ``pixel_spacing_mm`` to PixelSpacing.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = _as_uint16(counts2d)
    now = datetime.datetime.now()
    sop_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NM_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "NM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.PatientID = str(patient_id)
    ds.PatientName = f"Phantom^{patient_id}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "jaxthyroid phantom (simulated)"
    ds.StudyDescription = "Thyroid scintigraphy 99mTc-pertechnetate (simulated)"
    ds.SeriesDescription = f"ANT thyroid - {finding_set_name}"
    ds.ImageComments = finding_set_name
    ds.PatientOrientation = ["L", "F"]  # anterior view: columns to patient left, rows to feet
    # A static acquisition: one frame, one energy window, one detector.
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]
    ds.EnergyWindowVector = [1]
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = [1]
    ds.NumberOfDetectors = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{pixel_spacing_mm:.6g}", f"{pixel_spacing_mm:.6g}"]
    ds.PixelData = pixels.astype("<u2").tobytes()

    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_simulated(
    out_dir,
    n: int,
    *,
    size: int = 128,
    seed: int = 0,
    cross_fraction: float = 0.25,
    dicom: bool = False,
    params=None,
    chunk: int = 64,
) -> dict:
    """Simulates ``n`` phantom scintigrams and writes them as a folder data set.

    Image ``i`` is ``phantom.simulate(example_keys(seed, [i]), [set_i])`` with the
    sets from ``sample_finding_set_ids(key(seed), n, cross_fraction=...)``; it goes to
    ``out_dir/png/<findings.DEFAULT.folder_name(set_i)>/<i:05d>.png`` (16-bit counts),
    and with ``dicom=True`` also to ``out_dir/dicom/<folder>/<i:05d>.dcm``: each tree is
    a folder data set of its own (``jaxthyroid data build folder out_dir/png``).
    ``out_dir/contact_sheet.png`` shows up to 6 images per finding set.

    Returns ``{'out_dir', 'n', 'size', 'counts_per_set': {folder: count},
    'contact_sheet': path, 'paths': [png paths in index order]}``.
    """
    import jax
    from tqdm import tqdm

    from jaxthyroid import phantom, report

    params = phantom.DEFAULT_PARAMS if params is None else params
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taxonomy = findings.DEFAULT
    set_ids = np.asarray(phantom.sample_finding_set_ids(jax.random.key(seed), n, cross_fraction=cross_fraction))
    chunk = max(1, min(chunk, n))
    paths, counts = [], collections.Counter()
    sheet: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    with tqdm(total=n, desc=f"simulating {size}x{size}", unit="img") as bar:
        for start in range(0, n, chunk):
            # Fixed chunk shape (the last one padded) so the simulator compiles once.
            idx = np.arange(start, start + chunk)
            real = idx < n
            idx = np.where(real, idx, n - 1)
            keys = phantom.example_keys(seed, idx)
            images = np.asarray(phantom.simulate(keys, set_ids[idx], size=size, params=params))
            spacing = np.asarray(phantom.describe(keys, set_ids[idx], size=size, params=params)["mm_per_px"])
            for j in np.flatnonzero(real):
                i, sid = int(idx[j]), int(set_ids[idx[j]])
                folder = taxonomy.folder_name(sid)
                path = out / "png" / folder / f"{i:05d}.png"
                write_png16(path, images[j, ..., 0])
                if dicom:
                    write_dicom(
                        out / "dicom" / folder / f"{i:05d}.dcm",
                        images[j, ..., 0],
                        finding_set_name=folder,
                        patient_id=f"PHANTOM-{seed}-{i:05d}",
                        pixel_spacing_mm=float(spacing[j]),
                    )
                paths.append(str(path))
                counts[folder] += 1
                if len(sheet[folder]) < 6:
                    sheet[folder].append(images[j, ..., 0])
            bar.update(int(real.sum()))
    ordered = {
        taxonomy.folder_name(s): sheet[taxonomy.folder_name(s)]
        for s in range(taxonomy.num_sets)
        if taxonomy.folder_name(s) in sheet
    }
    sheet_path = out / "contact_sheet.png"
    report.contact_sheet(ordered, sheet_path, per_row=6)
    return {
        "out_dir": str(out),
        "n": n,
        "size": size,
        "counts_per_set": {k: counts[k] for k in ordered},
        "contact_sheet": str(sheet_path),
        "paths": paths,
    }
