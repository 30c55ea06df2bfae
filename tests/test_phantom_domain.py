"""Domain randomisation and the held-out regime: rendered images respect each range.

Measurements are on what the simulator draws and renders: PSF width on a point
source, lesion size in pixels, count totals, the export's grey levels. One
randomised batch at 64² (one compilation) serves the rendered checks; the draws of
many images come from the cheap parameter pass (no rendering).
"""

import dataclasses
import math

import jax
import numpy as np
import pytest

from jaxthyroid import findings, phantom
from jaxthyroid.phantom import anatomy, imaging, simulator
from jaxthyroid.phantom.params import FWHM_TO_SIGMA, REGIMES

SIZE = 64
TAX = findings.DEFAULT
RANDOMISED = phantom.PhantomParams.regime("randomised")
OOD = phantom.PhantomParams.regime("ood")
DEFAULT = phantom.DEFAULT_PARAMS


def _kernel_sigma(sigma_px, params=None):
    """Standard deviation of the sampled Gaussian kernel ``imaging.psf_blur`` uses: cut
    at its static half-width (>= 3 sigma of the widest PSF), which narrows it; sampling
    at >= 1 px per sigma changes its variance by < e^(-2 pi² sigma²)."""
    h = imaging.psf_half_width(SIZE, params or RANDOMISED)
    k = np.arange(-h, h + 1)
    w = np.exp(-0.5 * (k / sigma_px) ** 2)
    return math.sqrt((w * k * k).sum() / w.sum())


def test_regimes_and_held_out_ranges():
    assert phantom.PhantomParams.regime("default") == DEFAULT
    with pytest.raises(ValueError, match="regime"):
        phantom.PhantomParams.regime("nope")
    fields = {f.name for f in dataclasses.fields(phantom.PhantomParams)}
    for overrides in REGIMES.values():
        assert set(overrides) <= fields
    # The held-out regime lies outside both training regimes: fewer counts, a
    # stronger pinhole magnification, distortion and off-axis blur.
    for train in (DEFAULT, RANDOMISED):
        assert OOD.total_counts[1] < train.total_counts[0]
        assert OOD.pinhole_magnification[0] > train.pinhole_magnification[1]
        assert OOD.pinhole_distortion[0] > train.pinhole_distortion[1]
        assert OOD.pinhole_resolution_gradient[0] > train.pinhole_resolution_gradient[1]
    assert OOD.pinhole_prob == 1.0 and OOD.preset_count_prob == 1.0


# ----------------------------------------------------------------------------- PSF
@jax.jit
def _expected(activity, acq):
    return imaging.expected_counts(activity, acq, 160.0, RANDOMISED)[0]


def _point_source_image(acq, where_px=(SIZE // 2, SIZE // 2)):
    """Noise-free image of a one-pixel source through the PSF (no scatter), FOV 160 mm.
    Every acquisition key is given (neutral where not set), so all calls share one
    compiled program."""
    activity = np.zeros((SIZE, SIZE), np.float32)
    activity[where_px] = 1.0
    neutral = dict(matrix=1e9, distortion=0.0, resolution_gradient=0.0)
    base = dict(scatter_weight=0.0, scatter_fwhm=30.0, preset_count=True, counts=1e6)
    acq = {k: np.float32(v) for k, v in {**neutral, **base, **acq}.items()}
    acq["preset_count"] = np.bool_(True)
    return np.asarray(_expected(activity, acq), np.float64)


def _second_moment_sigma(profile):
    x = np.arange(profile.size)
    p = profile / profile.sum()
    mean = (p * x).sum()
    return math.sqrt((p * (x - mean) ** 2).sum()), mean


@pytest.mark.parametrize("fwhm_mm", [7.0, 14.0])
def test_psf_fwhm_measured_on_a_point_source(fwhm_mm):
    img = _point_source_image(dict(psf_fwhm=fwhm_mm))
    sigma, _ = _second_moment_sigma(img[SIZE // 2])
    # float32 image, one pixel row of 64: rounding far below 1e-4 of sigma.
    assert sigma == pytest.approx(_kernel_sigma(fwhm_mm * FWHM_TO_SIGMA / (160.0 / SIZE)), rel=1e-4)


def test_coarse_acquisition_matrix_adds_its_pixel_blur():
    fwhm = 7.0
    sharp, _ = _second_moment_sigma(_point_source_image(dict(psf_fwhm=fwhm))[SIZE // 2])
    coarse, _ = _second_moment_sigma(_point_source_image(dict(psf_fwhm=fwhm, matrix=16.0))[SIZE // 2])
    box = SIZE / 16.0  # each acquisition pixel spans 4 output pixels: variance (4² - 1) / 12
    sigma_psf = fwhm * FWHM_TO_SIGMA / (160.0 / SIZE)
    assert coarse == pytest.approx(_kernel_sigma(math.sqrt(sigma_psf**2 + (box * box - 1.0) / 12.0)), rel=1e-4)
    assert coarse > sharp * 1.05


def test_pinhole_resolution_worsens_off_axis():
    fwhm, g = 6.0, 0.5
    acq = dict(psf_fwhm=fwhm, resolution_gradient=g)
    centre, _ = _second_moment_sigma(_point_source_image(acq)[SIZE // 2])
    edge_x = int(SIZE * 0.9)  # rho ~ 0.8
    edge, _ = _second_moment_sigma(_point_source_image(acq, (SIZE // 2, edge_x))[:, edge_x])
    on_axis = _kernel_sigma(fwhm * FWHM_TO_SIGMA / (160.0 / SIZE))
    assert centre == pytest.approx(on_axis, rel=0.01)  # rho² ~ 1e-3 at the centre
    assert on_axis * (1 + 0.5 * g * 0.64) < edge < on_axis * (1 + g)


def test_pinhole_distortion_moves_a_point_outward_by_one_plus_k_rho_squared():
    k = 0.2
    col = SIZE // 2 + SIZE // 4  # rho = 0.5 + half a pixel
    acq = dict(psf_fwhm=3.0, distortion=k)
    img = _point_source_image(acq, (SIZE // 2, col))
    _, mean = _second_moment_sigma(img[SIZE // 2])
    rho = (col + 0.5) / SIZE * 2 - 1
    expected_px = (rho * (1 + k * rho * rho) + 1) * SIZE / 2 - 0.5
    # Bilinear resampling of a one-pixel source keeps its centroid to a small fraction of a pixel.
    assert mean == pytest.approx(expected_px, abs=0.1)
    assert mean - col > 0.5


# ----------------------------------------------------------------------------- draws
@pytest.fixture(scope="module")
def draws():
    """Parameters of 1,200 randomised images (no rendering)."""
    n = 1200
    keys = phantom.example_keys(11, np.arange(n))
    ids = (np.arange(n) % TAX.num_sets).astype(np.int32)
    lay = jax.jit(jax.vmap(lambda k, i: simulator.draw(k, i, RANDOMISED)[1]))(keys, ids)
    return ids, jax.tree.map(np.asarray, lay)


def test_randomised_draws_span_their_ranges(draws):
    ids, lay = draws
    pin = lay["pinhole"]
    m = lay["magnification"]
    assert np.all(m[~pin] == 1.0)
    assert RANDOMISED.pinhole_magnification[0] <= m[pin].min() and m[pin].max() <= RANDOMISED.pinhole_magnification[1]
    assert m[pin].max() > 1.4
    assert np.all(lay["distortion"][~pin] == 0) and np.all(lay["resolution_gradient"][~pin] == 0)
    lo, hi = RANDOMISED.matrix_px
    assert lo <= lay["matrix"].min() < 70 and 240 < lay["matrix"].max() <= hi
    lo, hi = RANDOMISED.total_counts
    assert lo <= lay["counts"].min() < 6e4 and 9e5 < lay["counts"].max() <= hi
    assert 0.4 < lay["windowed"].mean() < 0.6
    assert 0.4 < lay["inverted"][lay["windowed"]].mean() < 0.6 and not lay["inverted"][~lay["windowed"]].any()
    assert 0.2 < (lay["oesophagus_level"] > 0).mean() < 0.4


def test_small_cold_nodules_are_drawn(draws):
    ids, lay = draws
    cold = ids == TAX.set_id("cold_nodule")
    d = 2 * lay["nod_r"][cold, 0] / (1 + np.abs(RANDOMISED.scale))  # undo the patient's scale
    assert d.min() >= RANDOMISED.cold_nodule_diameter_mm[0] * (1 - RANDOMISED.scale) / (1 + RANDOMISED.scale) - 1e-4
    assert np.sum(2 * lay["nod_r"][cold, 0] < 10.0) >= 3  # under scintigraphy's ~1 cm


def test_salivary_scaling_keeps_the_subacute_thyroiditis_sign(draws):
    ids, lay = draws
    ratio = lay["sal_level"][:, 0] / lay["gland_level"]  # submandibular peak / thyroid peak
    normal = ids == TAX.set_id("normal")
    subacute = ids == TAX.set_id("subacute_thyroiditis")
    assert ratio[normal].max() < 1.0 and ratio[subacute].min() > 1.0
    assert ratio[normal].max() > 0.5  # the scaling moved it past the default S range


# ----------------------------------------------------------------------------- rendered
@pytest.fixture(scope="module")
def rendered():
    per_set = 4
    ids = np.repeat(np.arange(TAX.num_sets), per_set).astype(np.int32)
    keys = phantom.example_keys(12, np.arange(ids.size))
    render = jax.jit(jax.vmap(lambda k, i: phantom.render(k, i, size=SIZE, params=RANDOMISED, return_aux=True)))
    image, aux = render(keys, ids)
    return ids, np.asarray(image), jax.tree.map(np.asarray, aux)


def test_rendered_counts_follow_the_total_counts_range(rendered):
    _, image, aux = rendered
    lay = aux["layout"]
    raw = aux["counts"].sum(axis=(1, 2, 3))
    pc = lay["preset_count"]
    lo, hi = RANDOMISED.total_counts
    assert np.all(np.abs(raw[pc] - lay["counts"][pc]) < 5 * np.sqrt(lay["counts"][pc]))
    assert np.all(raw[pc] > lo * 0.99) and np.all(raw[pc] < hi * 1.01)
    raw_export = ~lay["windowed"]
    np.testing.assert_array_equal(image[raw_export], aux["counts"][raw_export])


@pytest.mark.parametrize("q", [0.0, 0.3, 0.97, 0.995, 1.0])
def test_count_quantile_is_numpys_inverted_cdf(q):
    counts = np.random.default_rng(0).poisson(30.0, (64, 64, 1)).astype(np.float32)
    got = float(jax.jit(imaging.count_quantile)(counts, q))
    assert got == np.percentile(counts, 100 * q, method="inverted_cdf")


def test_exports_are_8_bit_windowed_and_inverted(rendered):
    _, image, aux = rendered
    lay = aux["layout"]
    win, inv = lay["windowed"], lay["inverted"]
    assert win.any() and inv.any() and (win & ~inv).any()
    grey = image[win]
    assert np.all(grey == np.round(grey)) and grey.min() >= 0 and grey.max() <= 255
    for i in np.flatnonzero(win):
        counts = aux["counts"][i]
        # The window's top is the drawn percentile of the counts: every pixel at or
        # above it saturates, and the next lower count does not.
        top = np.percentile(counts, lay["window_percentile"][i], method="inverted_cdf")
        upright = 255 - image[i] if inv[i] else image[i]
        assert upright.max() == 255 and np.all(upright[counts >= top] == 255)
        if top > 1:
            assert np.all(upright[counts < top] < 255)
        # Brighter counts never give a darker upright grey (monotone window).
        order = np.argsort(counts.ravel(), kind="stable")
        assert np.all(np.diff(upright.ravel()[order]) >= 0)
        if inv[i]:  # inverted: the background is light (high grey values)
            assert np.median(image[i]) > 128


def test_nodule_size_in_pixels_matches_its_drawn_radius(rendered):
    ids, _, aux = rendered
    lay = aux["layout"]
    for i in np.flatnonzero(np.isin(ids, [TAX.set_id("cold_nodule"), TAX.set_id("hot_nodule")])):
        r_px = lay["nod_r"][i, 0] / aux["mm_per_px"][i]
        area = (aux["nodule_mask"][i] > 0.5).sum()
        # The mask is 0.5 at the drawn radius: pixel centres inside a disc of radius r
        # number pi r² to within its perimeter (2 pi r) in pixels.
        assert abs(area - math.pi * r_px**2) <= 2 * math.pi * r_px + 1, (area, r_px)


def test_oesophagus_is_a_vertical_band_at_its_drawn_position(rendered):
    _, _, aux = rendered
    lay = jax.tree.map(lambda v: v[0], aux["layout"])
    fn = jax.jit(lambda lay: anatomy.activity_map(jax.random.key(0), lay, SIZE, RANDOMISED)[0])
    with_band = np.asarray(fn({**lay, "oesophagus_level": np.float32(1.5)}))
    without = np.asarray(fn({**lay, "oesophagus_level": np.float32(0.0)}))
    band = with_band - without
    np.testing.assert_allclose(band, np.broadcast_to(band[:1], band.shape), atol=1e-5)  # the same in every row
    col = int(np.argmax(band[0]))
    x_mm = ((col + 0.5) / SIZE - 0.5) * lay["fov"]
    assert abs(x_mm - lay["oesophagus_x"]) <= lay["fov"] / SIZE
    assert band[0, col] == pytest.approx(1.5, rel=0.02)


def test_ood_images_have_counts_below_every_training_range():
    keys = phantom.example_keys(13, np.arange(12))
    ids = np.arange(12, dtype=np.int32) % TAX.num_sets
    info = jax.tree.map(np.asarray, phantom.describe(keys, ids, size=SIZE, params=OOD))
    assert info["pinhole"].all() and info["preset_count"].all()
    assert np.all(info["magnification"] >= OOD.pinhole_magnification[0])
    assert np.all(info["counts"] <= OOD.total_counts[1]) and np.all(info["counts"] >= OOD.total_counts[0])


def test_data_build_phantom_writes_a_held_out_test_split(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from jaxthyroid.data import phantom_builder, phantom_splits

    settings = dict(size=SIZE, n_train=0, n_val=0, n_test=4, seed=5, cross_fraction=0.25)
    path = phantom_builder.build_phantom(tmp_path, domain="ood", **settings)
    assert "_ood" in path and path == phantom_builder.phantom_dir(tmp_path, domain="ood", **settings)
    assert phantom_splits.config_name(SIZE, 0.25, 0, 0, 4, 5) + "_ood" in path  # the default name, suffixed
    source = phantom_builder.phantom_source(tmp_path, "test", domain="ood", **settings)
    assert len(source) == 4
    ids = phantom_splits.split_finding_set_ids(5, "test", 4, 0.25)
    keys = phantom.example_keys(phantom_splits.split_seed(5, "test"), np.arange(4))
    expected = np.asarray(phantom.simulate(keys, ids, size=SIZE, params=OOD))
    stored = np.stack([np.asarray(source[i]["image"], np.float32).reshape(SIZE, SIZE, 1) for i in range(4)])
    np.testing.assert_array_equal(stored, expected)
    assert stored.sum(axis=(1, 2, 3)).max() < OOD.total_counts[1] * 1.05
