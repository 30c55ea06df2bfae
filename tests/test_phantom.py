"""The phantom: physical properties measured on generated images, not on parameters.

One compiled batch (96 images at 64², 8 per finding set) serves most tests; a second
batch with the same keys but other finding sets reuses the compiled program.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxthyroid import findings, phantom
from jaxthyroid.phantom import imaging

SIZE = 64
PER_SET = 8
TAX = findings.DEFAULT
NORMAL, GRAVES, SUBACUTE, HOT, COLD = (
    TAX.set_id(n) for n in ("normal", "graves", "subacute_thyroiditis", "hot_nodule", "cold_nodule")
)


_poisson_fast = jax.jit(imaging.poisson_fast)


def _smooth(img):
    """3x3 box mean (fights Poisson noise before taking maxima)."""
    p = np.pad(img, 1, mode="edge")
    return sum(p[i : i + img.shape[0], j : j + img.shape[1]] for i in range(3) for j in range(3)) / 9.0


def _disc(centre_xy, radius):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (xx - centre_xy[0]) ** 2 + (yy - centre_xy[1]) ** 2 <= radius**2


def _background(img):
    """Median of the two bottom corners (away from thyroid, salivary glands)."""
    c = SIZE // 8
    return float(np.median(np.concatenate([img[-c:, :c].ravel(), img[-c:, -c:].ravel()])))


@pytest.fixture(scope="module")
def ids():
    return np.repeat(np.arange(TAX.num_sets), PER_SET).astype(np.int32)


@pytest.fixture(scope="module")
def keys(ids):
    return phantom.example_keys(0, np.arange(ids.size))


@pytest.fixture(scope="module")
def images(keys, ids):
    return np.asarray(phantom.simulate(keys, ids, size=SIZE))


@pytest.fixture(scope="module")
def info(keys, ids):
    return jax.tree.map(np.asarray, phantom.describe(keys, ids, size=SIZE))


def _of_set(ids, set_id):
    return np.flatnonzero(ids == set_id)


def test_shapes_dtype_integer_counts(images, ids):
    assert images.shape == (ids.size, SIZE, SIZE, 1)
    assert images.dtype == np.float32
    assert np.all(images >= 0)
    assert np.all(images == np.round(images))
    assert np.all(images.sum(axis=(1, 2, 3)) > 1e4)


def test_same_key_same_image_whatever_batch_position(keys, ids, images):
    perm = np.random.default_rng(0).permutation(ids.size)
    again = np.asarray(phantom.simulate(keys[perm], ids[perm], size=SIZE))
    np.testing.assert_array_equal(again, images[perm])


def test_different_keys_give_different_images(images, ids):
    same_set = images[_of_set(ids, NORMAL)]
    for a in range(1, len(same_set)):
        assert not np.array_equal(same_set[0], same_set[a])


def test_preset_count_totals_in_configured_range(images, info):
    totals = images.sum(axis=(1, 2, 3))
    lo, hi = phantom.DEFAULT_PARAMS.total_counts
    pc = info["preset_count"]
    assert 0.5 < pc.mean() < 0.9  # 70 % preset-count
    t, n = totals[pc], info["counts"][pc]
    assert np.all(t >= lo * 0.99) and np.all(t <= hi * 1.01)
    # Poisson total: within 5 sigma of the configured count.
    assert np.all(np.abs(t - n) < 5 * np.sqrt(n))


def test_graves_brighter_and_larger_than_normal(images, ids):
    def contrast_and_area(i):
        img = _smooth(images[i, ..., 0])
        bg = _background(img)
        peak = np.percentile(img, 99.5)
        area = np.sum(img > bg + 0.5 * (peak - bg))
        return peak / bg, area

    normal = np.array([contrast_and_area(i) for i in _of_set(ids, NORMAL)])
    graves = np.array([contrast_and_area(i) for i in _of_set(ids, GRAVES)])
    assert graves[:, 0].mean() > 1.5 * normal[:, 0].mean(), (graves[:, 0], normal[:, 0])
    assert graves[:, 1].mean() > 1.1 * normal[:, 1].mean(), (graves[:, 1], normal[:, 1])


def test_subacute_thyroiditis_salivary_brighter_than_thyroid(images, ids, info):
    def salivary_over_thyroid(i):
        img = _smooth(images[i, ..., 0])
        lobes = info["lobe_centre_px"][i]  # [2, 2] (lobe, xy)
        thyroid = max(img[_disc(c, 3)].mean() for c in lobes)
        top = int(lobes[:, 1].mean()) - 8  # salivary glands lie > 20 mm above
        return img[: max(top, 4)].max() / thyroid

    sub = np.array([salivary_over_thyroid(i) for i in _of_set(ids, SUBACUTE)])
    normal = np.array([salivary_over_thyroid(i) for i in _of_set(ids, NORMAL)])
    assert np.mean(sub > 1.0) >= 0.75, sub
    assert np.mean(normal < 1.0) >= 0.75, normal
    assert np.median(sub) > 2 * np.median(normal)


def test_cold_nodule_defect_below_same_gland_without_it(keys, ids, images, info):
    # Same keys, cold_nodule swapped for normal: the same patient without the nodule
    # (the layout's draws do not depend on the findings). Same shapes: no recompile.
    without = np.asarray(phantom.simulate(keys, np.where(ids == COLD, NORMAL, ids), size=SIZE))
    ratios = []
    for i in _of_set(ids, COLD):
        assert info["nodule_active"][i, 0] and not info["nodule_active"][i, 1:].any()
        inner = _disc(info["nodule_centre_px"][i, 0], max(1.5, 0.5 * info["nodule_radius_px"][i, 0]))
        ratios.append(images[i, ..., 0][inner].mean() / without[i, ..., 0][inner].mean())
    assert np.mean(ratios) < 0.75, ratios
    # Images whose set was not swapped are unchanged.
    i = _of_set(ids, NORMAL)[0]
    np.testing.assert_array_equal(images[i], without[i])


def test_hot_nodule_holds_most_of_the_bright_counts(images, ids, info):
    fractions = []
    for i in _of_set(ids, HOT):
        img = _smooth(images[i, ..., 0])
        bg = _background(img)
        bright = img > bg + 0.5 * (img.max() - bg)
        fwhm_px = 11.0 / info["mm_per_px"][i]
        region = _disc(info["nodule_centre_px"][i, 0], info["nodule_radius_px"][i, 0] + fwhm_px)
        fractions.append((bright & region).sum() / bright.sum())
        # a small region: the nodule disc is a minor part of the image
        assert region.mean() < 0.35
    assert np.mean(fractions) > 0.9, fractions


def test_hot_and_cold_goitre_has_both_kinds(info, ids):
    for i in _of_set(ids, TAX.set_id("hot_nodule+cold_nodule")):
        active, hot = info["nodule_active"][i], info["nodule_hot"][i]
        assert 2 <= active.sum() <= 6
        assert (active & hot).any() and (active & ~hot).any()


def test_make_batch_labels_match_finding_sets():
    batch = phantom.make_batch(jax.random.key(3), PER_SET * TAX.num_sets, size=SIZE)
    assert batch["image"].shape == (PER_SET * TAX.num_sets, SIZE, SIZE, 1)
    sets = np.asarray(batch["finding_set"])
    assert batch["finding_set"].dtype == jnp.int32 and batch["subset"].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(batch["findings"]), TAX.set_table[sets])
    np.testing.assert_array_equal(np.asarray(batch["subset"]), [int(TAX.is_cross(s)) for s in sets])


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_cross_fraction_respected(fraction):
    sets = np.asarray(phantom.sample_finding_set_ids(jax.random.key(0), 4000, cross_fraction=fraction))
    cross = np.isin(sets, TAX.cross_set_ids)
    assert abs(cross.mean() - fraction) < 0.03
    assert set(np.unique(sets[cross])) <= set(TAX.cross_set_ids)
    assert set(np.unique(sets[~cross])) <= set(TAX.single_set_ids)
    if 0 < fraction < 1:  # every set occurs
        assert len(np.unique(sets)) == TAX.num_sets


@pytest.mark.parametrize("lam", [0.7, 6.0, 10.0, 40.0, 900.0])
def test_fast_poisson_matches_poisson_moments_and_pmf(lam):
    x = np.asarray(_poisson_fast(jax.random.key(1), jnp.full((128, 128), lam))).ravel()
    n = x.size
    assert np.all(x >= 0) and np.all(x == np.round(x))
    assert abs(x.mean() - lam) < 5 * math.sqrt(lam / n)
    assert abs(x.var() / lam - 1) < 5 * math.sqrt(2 / n) + 0.01
    # P(X = mode) against the pmf
    k = int(lam)
    pmf = math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1))
    assert abs(np.mean(x == k) - pmf) < 5 * math.sqrt(pmf / n)


def test_unknown_size_and_sampler_rejected(keys, ids):
    with pytest.raises(ValueError, match="size"):
        phantom.render(keys[0], ids[0], size=100)
    with pytest.raises(ValueError, match="poisson"):
        phantom.render(keys[0], ids[0], size=SIZE, params=phantom.PhantomParams(poisson="exact"))
