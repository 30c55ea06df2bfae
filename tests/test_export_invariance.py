"""Export-invariant preprocessing (issue 14): one scintigram saved as 16-bit raw counts,
as an 8-bit PNG windowed at a high percentile, as an inverted 8-bit PNG and as DICOM NM
reaches the classifier as the same array (to 8-bit quantisation) and gets the same findings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxthyroid import phantom
from jaxthyroid.data import export, images, transforms

SIZE = 64


@pytest.fixture(scope="module")
def counts():
    """Two phantom images of every finding set, raw counts ``[24, 64, 64, 1]`` (and their set ids)."""
    ids = np.repeat(np.arange(12), 2)
    x = np.asarray(phantom.simulate(phantom.example_keys(3, np.arange(len(ids))), jnp.asarray(ids), size=SIZE))
    return x.astype(np.float32), ids


def _write_exports(tmp_path, image2d, name="scan", percentile=transforms.NORMALIZE_PERCENTILE):
    """The four exports of one image ``[H, W]``: 16-bit PNG, 8-bit PNG, inverted 8-bit PNG, DICOM."""
    paths = {k: tmp_path / f"{name}_{k}.{ext}" for k, ext in (("png16", "png"), ("png8", "png"), ("inv8", "png"))}
    paths["dicom"] = tmp_path / f"{name}.dcm"
    export.write_png16(paths["png16"], image2d)
    Image.fromarray(transforms.window_8bit(image2d[..., None], percentile)[..., 0]).save(paths["png8"])
    Image.fromarray(transforms.window_8bit(image2d[..., None], percentile, invert=True)[..., 0]).save(paths["inv8"])
    export.write_dicom(paths["dicom"], image2d, finding_set_name="normal", patient_id="T1", pixel_spacing_mm=2.5)
    return paths


def _preprocessed(path) -> np.ndarray:
    """What ``jaxthyroid predict`` feeds the classifier for one file."""
    return transforms.normalize_counts(images.load_image(path, SIZE).astype(np.float32))


# -- the rule --------------------------------------------------------------------------


def test_phantom_images_are_never_inverted_and_their_exports_are_detected(counts):
    x, _ = counts
    assert not transforms.is_inverted(x).any()
    for q in (99.0, transforms.NORMALIZE_PERCENTILE, 99.9, 100.0):
        assert not transforms.is_inverted(transforms.window_8bit(x, q)).any()
        assert transforms.is_inverted(transforms.window_8bit(x, q, invert=True)).all()


def test_uninvert_leaves_upright_images_bit_for_bit(counts):
    x, _ = counts
    np.testing.assert_array_equal(transforms.uninvert(x), x)
    flipped = 1000.0 - x
    np.testing.assert_array_equal(transforms.uninvert(flipped, 1000.0), x)


def test_normalisation_ignores_a_global_scale(counts):
    x, _ = counts
    a = transforms.normalize_counts(x)
    b = transforms.normalize_counts(x * 7.3)
    # x/p and (7.3 x)/(7.3 p): a few float32 roundings of values <= 1.
    np.testing.assert_allclose(a, b, rtol=0, atol=8 * np.finfo(np.float32).eps)


def test_device_and_host_normalisation_agree_on_inverted_input(counts):
    x, _ = counts
    v = transforms.window_8bit(x, 100.0, invert=True).astype(np.float32)
    host = transforms.normalize_counts(v)
    device = np.asarray(jax.jit(transforms.normalize_counts)(jnp.asarray(v)))
    # Same maths, different summation order in the moment and a differently rounded
    # percentile interpolation: float32 relative error of a handful of operations.
    np.testing.assert_allclose(device, host, rtol=0, atol=64 * np.finfo(np.float32).eps)
    assert (host.reshape(len(x), -1).mean(1) < 0.5).all()  # upright again: mostly dark background
    # An in-memory inverted 8-bit export is flipped about 255, so it equals the upright one.
    np.testing.assert_array_equal(host, transforms.normalize_counts(transforms.window_8bit(x, 100.0)))


# -- the four exports, model-free ------------------------------------------------------


# Export windows above the normaliser's percentile (99.6 is one pixel rank above 99.5 at
# 64²) and at the maximum; at or below 99.5 the export saturates the pixels the scale is
# read from (a documented failure mode of transforms.normalize_counts).
@pytest.mark.parametrize("percentile", [99.6, 99.9, 100.0])
def test_four_exports_preprocess_to_the_same_array(counts, tmp_path, percentile):
    x, _ = counts
    for i in range(len(x)):
        paths = _write_exports(tmp_path, x[i, ..., 0], f"i{i}", percentile)
        raw, png8, inv8, dicom = (_preprocessed(paths[k]) for k in ("png16", "png8", "inv8", "dicom"))
        np.testing.assert_array_equal(dicom, raw)  # same uint16 counts, same maths
        np.testing.assert_array_equal(inv8, png8)  # 255 - (255 - v) is exact
        # 8-bit quantisation: each 8-bit value is v = 255 x / x_q + e with |e| <= 1/2, and
        # the normalising percentile v_p interpolates two such values (both below the
        # window x_q, so unclipped), so it is off by <= 1/2 as well. Hence
        # |v / v_p - x / x_p| <= (1/2 + 1/2) / (W - 1/2), W = 255 x_p / x_q >= v_p - 1/2,
        # for values under the window (clipping to 1 only shrinks it): about 1/255 of the
        # window when windowed near the percentile.
        v = images.load_image(paths["png8"], SIZE).astype(np.float64)
        v_p = np.percentile(v, transforms.NORMALIZE_PERCENTILE)
        # Plus a few float32 roundings of values <= 1.
        tol = 1.0 / (v_p - 1.0) + 4 * np.finfo(np.float32).eps
        assert np.abs(png8 - raw).max() <= tol, (i, percentile, np.abs(png8 - raw).max(), tol)


def test_inverted_non_square_8_bit_export_pads_with_background(counts, tmp_path):
    x, _ = counts
    wide = np.zeros((SIZE // 2, SIZE), np.float32)
    wide[:] = x[0, SIZE // 4 : SIZE // 4 + SIZE // 2, :, 0]
    upright, inverted = tmp_path / "wide.png", tmp_path / "wide_inv.png"
    Image.fromarray(transforms.window_8bit(wide[..., None], 100.0)[..., 0]).save(upright)
    Image.fromarray(transforms.window_8bit(wide[..., None], 100.0, invert=True)[..., 0]).save(inverted)
    a, b = images.load_image(upright, SIZE), images.load_image(inverted, SIZE)
    np.testing.assert_array_equal(a, b)
    assert b[0].max() == 0  # the padded rows are no-count background, not white


# -- the acceptance test: jaxthyroid predict on the four exports -----------------------


def test_predict_gives_the_same_findings_for_the_four_exports(run_dir, counts, tmp_path, capsys):
    from jaxthyroid import cli

    x, ids = counts
    files = []
    for i in range(0, len(x), 2):  # one image of each finding set
        paths = _write_exports(tmp_path, x[i, ..., 0], f"set{ids[i]}")
        files += [str(paths[k]) for k in ("png16", "png8", "inv8", "dicom")]
    assert cli.main(["predict", "--run", str(run_dir), *files, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == files
    for g in range(0, len(rows), 4):
        four = rows[g : g + 4]
        assert all(r["findings"] == four[0]["findings"] for r in four), [r["findings"] for r in four]
