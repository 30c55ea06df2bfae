"""Reading a user's scintigrams: PNG, TIFF, JPEG (8 or 16 bit) and DICOM.

:func:`read_counts` turns one file into a float32 grey image ``[H, W]`` whose values
keep the file's scale (counts for 16-bit and DICOM NM images, 0–255 for 8-bit);
:func:`to_size` pads it to a square and resizes it in floating point;
:func:`load_image` does both, flips an inverted-grey export back at the file's full
scale (:func:`jaxthyroid.data.transforms.uninvert`: 255 for 8-bit files, 65535 for
16-bit ones, the image's maximum otherwise) and rounds to uint16 ``[size, size, 1]``.
Training on a folder and ``jaxthyroid predict`` both read files through it, and both
then normalise with :func:`jaxthyroid.data.transforms.normalize_counts`.

Every failure is an :class:`ImageError` whose message names the file and the reason,
so a data-set build can list all bad files at once.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

DEFAULT_MAX_PIXELS = 50_000_000  # decompression-bomb guard (50 MP)
PIL_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# Files a file manager or OS leaves in folders: never images, never errors.
IGNORED_NAMES = ("thumbs.db", "desktop.ini")
UINT16_MAX = 65535


class ImageError(ValueError):
    """A file that cannot be used as an image; the message names file and reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_ignored(path) -> bool:
    """Hidden files and OS clutter (``.DS_Store``, ``Thumbs.db``) are skipped silently."""
    name = os.path.basename(str(path))
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _grey(a: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, C] -> float32 [H, W]; RGB(A) by luminance (ITU-R 601)."""
    a = np.asarray(a)
    if a.ndim == 3:
        if a.shape[-1] in (3, 4):
            a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        elif a.shape[-1] in (1, 2):  # grey, grey+alpha
            a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grey or RGB image, got shape {a.shape}")
    return a.astype(np.float32)


def _read_pil(path: str, max_pixels: int) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        # We apply our own pixel limit, before decoding; silence PIL's own warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        path, f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (max_pixels)"
                    )
                if w == 0 or h == 0:
                    raise ImageError(path, "image has no pixels")
                im.seek(0)  # first frame/page of a multi-page TIFF
                if im.mode == "P":
                    im = im.convert("RGBA")
                elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB" if im.mode != "1" else "L")
                im.load()
                is_float = im.mode == "F"
                raw = np.asarray(im)
                a = raw.astype(np.float32)
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
    # The value an inverted export gives to zero counts: the format's maximum.
    full_scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(raw.dtype)
    if is_float and a.size and np.nanmax(a) <= 1.0:
        a = a * 255.0  # a float image normalised to [0, 1]: give it an 8-bit scale
        full_scale = 255.0
    return _grey(a), full_scale


def _read_dicom(path: str, max_pixels: int) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise ImageError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "SOPClassUID" not in ds and "Rows" not in ds:
            raise ImageError(path, "not an image file (neither PNG/TIFF/JPEG nor DICOM)")
        raise ImageError(path, "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols * frames > max_pixels:
        raise ImageError(path, f"DICOM {cols}x{rows}x{frames} exceeds the limit of {max_pixels:,} pixels (max_pixels)")
    if rows == 0 or cols == 0:
        raise ImageError(path, "DICOM image has no pixels (Rows/Columns are 0)")
    try:
        a = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - truncated data, missing codec, ...
        raise ImageError(path, f"cannot decode DICOM pixel data ({type(e).__name__}: {e})") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1 or (a.ndim == 3 and samples == 1) or a.ndim == 4:
        raise ImageError(path, f"multi-frame DICOM ({frames} frames) is not supported: export one static frame")
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        from pydicom.pixels import apply_modality_lut

        a = apply_modality_lut(a, ds)
    a = _grey(a)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        a = a.max() - a  # MONOCHROME1: high values are dark
    return a, None  # full scale: the image's own maximum


def read_counts(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One image file -> float32 grey ``[H, W]`` in the file's own scale.

    PNG/TIFF/JPEG by suffix via Pillow (8/16-bit, RGB -> luminance, first page of a
    multi-page TIFF); ``.dcm``/``.dicom``/``.ima`` or any other suffix via pydicom
    (DICOM files often have no suffix). Raises :class:`ImageError` naming the file
    and the reason for anything unusable.
    """
    return _read(path, max_pixels)[0]


def _read(path, max_pixels: int) -> tuple[np.ndarray, float | None]:
    """:func:`read_counts` and the file's full scale (255, 65535, or None: the image's max)."""
    path = str(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ImageError(path, f"cannot read file ({e.strerror})") from None
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in PIL_SUFFIXES:
            a, full_scale = _read_pil(path, max_pixels)
        else:
            a, full_scale = _read_dicom(path, max_pixels)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data from any decoder
        raise ImageError(path, f"unreadable or truncated image ({type(e).__name__}: {e})") from None
    if not np.all(np.isfinite(a)):
        raise ImageError(path, "image contains NaN or infinite values")
    return a, full_scale


def to_size(image: np.ndarray, size: int) -> np.ndarray:
    """float32 ``[H, W]`` -> float32 ``[size, size]``: zero-pad to a centred square,
    then an antialiased bilinear resize in floating point (values keep their scale)."""
    from PIL import Image

    h, w = image.shape
    side = max(h, w)
    if h != w:
        sq = np.zeros((side, side), np.float32)
        y, x = (side - h) // 2, (side - w) // 2
        sq[y : y + h, x : x + w] = image
        image = sq
    if side == size:
        return image.astype(np.float32)
    im = Image.fromarray(np.ascontiguousarray(image, np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Rounds to uint16, clipping negatives; an image brighter than 65535 is scaled
    down to fit (its relative values, which is what normalisation uses, are kept)."""
    image = np.maximum(image, 0.0)
    peak = float(image.max()) if image.size else 0.0
    if peak > UINT16_MAX:
        image = image * (UINT16_MAX / peak)
    return np.rint(image).astype(np.uint16)


def load_image(path, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One file -> uint16 ``[size, size, 1]`` (see :func:`read_counts`, :func:`to_size`).

    An inverted-grey export is flipped back at the file's full scale before the resize
    (so the zero padding of a non-square image stays background):
    ``255 - v`` restores an inverted 8-bit PNG exactly.
    """
    from jaxthyroid.data import transforms

    grey, full_scale = _read(str(path), max_pixels)
    grey = transforms.uninvert(grey, full_scale, axis=(-2, -1))
    return to_uint16(to_size(grey, size))[..., None]
