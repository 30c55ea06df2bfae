"""Robustness augmentations of jaxthyroid.data.transforms as training-config options:
count thinning, PSF blur, small affine changes, export window (issue 14 item 2)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxthyroid import config as config_lib
from jaxthyroid.data import transforms

FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _data_cfg(augment=True, **changes):
    block = transforms.augmentation_block()
    block.update(changes)
    return ml_collections.ConfigDict({"augment": augment, "augmentation": block})


def test_augment_config_from_the_training_config():
    assert transforms.augment_config(_data_cfg(False, blur_prob=1.0)) is None
    assert transforms.augment_config(_data_cfg()) == transforms.AugmentConfig()
    cfg = transforms.augment_config(_data_cfg(blur_prob=0.5, window_prob=0.25, min_count_fraction=0.1))
    assert (cfg.blur_prob, cfg.window_prob, cfg.min_count_fraction) == (0.5, 0.25, 0.1)
    with pytest.raises(ValueError, match="blurr_prob"):
        transforms.augment_config(_data_cfg(blurr_prob=0.5))
    incomplete = _data_cfg()
    del incomplete.augmentation["window_prob"]
    with pytest.raises(ValueError, match="missing.*window_prob"):
        transforms.augment_config(incomplete)


def test_every_augmentation_field_is_a_key_of_the_presets():
    for name in ("cross_training_quick", "cross_training_paper"):
        cfg = config_lib.load_config(name, [])
        if "augmentation" not in cfg.data:
            pytest.skip("the presets' data.augmentation block has not landed")
        assert dict(cfg.data.augmentation) == transforms.augmentation_block(), name
        cfg.data.augment = True
        cfg.data.augmentation.blur_prob = 0.5  # overridable like any key
        assert transforms.augment_config(cfg.data).blur_prob == 0.5


def test_blur_has_the_drawn_width_on_a_point_source():
    n, sigma = 33, 1.7
    point = np.zeros((n, n, 1), np.float32)
    point[n // 2, n // 2] = 1000.0
    out = transforms.gaussian_blur(point, sigma, max_sigma=2.0)
    # Total counts kept (the kernel, 3 sigma wide, sums to 1 and sits inside the field).
    assert abs(out.sum() - 1000.0) < 1000.0 * 1e-5
    profile = out[n // 2, :, 0].astype(np.float64)
    x = np.arange(n) - n // 2
    measured = math.sqrt((profile * x**2).sum() / profile.sum())
    # A Gaussian sampled at integers and truncated at 3 sigma: its second moment is sigma^2
    # less the truncated tails (~3 % of it at 3 sigma) plus nothing else: within 3 %.
    assert abs(measured - sigma) < 0.03 * sigma, measured
    device = np.asarray(jax.jit(transforms.gaussian_blur, static_argnums=2)(jnp.asarray(point), sigma, 2.0))
    np.testing.assert_allclose(device, out, rtol=0, atol=1000.0 * 64 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(transforms.gaussian_blur(point, 0.0, 2.0), point, atol=1e-6 * 1000.0)


def test_saturate_clips_the_top_like_a_windowed_export():
    x = np.random.default_rng(0).poisson(5.0, (64, 64, 1)).astype(np.float32)
    np.testing.assert_array_equal(transforms.saturate(x, 100.0), x)
    sat = transforms.saturate(x, 97.0)
    top = np.percentile(x, 97.0)
    assert sat.max() == top and (sat >= top).mean() >= 0.03
    # After normalisation the saturated image is the 97th-percentile window of the original.
    np.testing.assert_allclose(
        transforms.normalize_counts(sat), np.clip(x / top, 0, 1), rtol=0, atol=4 * np.finfo(np.float32).eps
    )


def test_device_params_keep_their_stream_when_blur_and_window_are_added():
    key = jax.random.key(5)
    base = transforms.sample_params_jax(key, transforms.AugmentConfig(), 64, (16,))
    more = transforms.sample_params_jax(key, transforms.AugmentConfig(blur_prob=1.0, window_prob=1.0), 64, (16,))
    for name in ("shift_y", "shift_x", "angle", "scale", "keep_fraction"):
        np.testing.assert_array_equal(getattr(base, name), getattr(more, name))
    assert (np.asarray(base.blur_sigma) == 0).all() and (np.asarray(base.window_percentile) == 100).all()
    sigma = np.asarray(more.blur_sigma)
    assert (sigma > 0).all() and (sigma <= 3.0 / FWHM).all()
    pct = np.asarray(more.window_percentile)
    assert (pct >= 97.0).all() and (pct <= 100.0).all()


def test_augment_batch_with_every_option_on_device_and_host():
    cfg = transforms.AugmentConfig(blur_prob=1.0, window_prob=1.0, min_window_percentile=90.0)
    counts = np.random.default_rng(1).poisson(20.0, (4, 32, 32, 1)).astype(np.float32)
    counts[:, 12:20, 10:22] += 200.0  # a bright "gland"
    out = np.asarray(jax.jit(transforms.augment_batch, static_argnums=2)(jax.random.key(0), counts, cfg))
    assert out.shape == counts.shape and np.isfinite(out).all()
    unit = transforms.normalize_counts(out)
    # Windowed at <= the 100th percentile and blurred: a plateau at 1 in every image.
    assert ((unit == 1.0).reshape(4, -1).sum(1) >= 1).all()
    host = transforms.augment_counts_np(counts[0], cfg, np.random.default_rng(2))
    assert host.shape == counts[0].shape and np.isfinite(host).all()
    assert host.max() < counts[0].max()  # thinned or blurred or windowed: the peak drops


def test_validate_refuses_an_incomplete_augmentation_block():
    from jaxthyroid import cross_training
    from jaxthyroid.config import ConfigError

    cfg = config_lib.load_config("cross_training_quick", [])
    del cfg.data.augmentation["blur_prob"]
    with pytest.raises(ConfigError, match="blur_prob"):
        cross_training.validate(cfg)


@pytest.mark.parametrize("kind", ["counts", "fractional", "negative", "constant", "ties"])
def test_device_image_percentile_equals_jnp_percentile_bit_for_bit(kind):
    """The bisection percentile of the device normalisation gives jnp.percentile's value
    exactly (same order statistics, same float32 interpolation), on every kind of image."""
    rng = np.random.default_rng(5)
    x = rng.poisson(rng.uniform(0.5, 60.0, (6, 1, 1, 1)), (6, 32, 24, 1)).astype(np.float32)
    if kind == "fractional":
        x = x * 0.37 + rng.uniform(size=x.shape).astype(np.float32)
    elif kind == "negative":
        x = -(x * 0.37 + rng.uniform(size=x.shape).astype(np.float32))
    elif kind == "constant":
        x = np.full_like(x, 3.0)
    elif kind == "ties":
        x = np.minimum(x, 5.0)
    for q in (99.5, 50.0, 0.0, 100.0, 97.3):
        want = np.asarray(jax.jit(lambda v, q=q: jnp.percentile(v, q, axis=(-3, -2, -1), keepdims=True))(x))
        got = np.asarray(jax.jit(lambda v, q=q: transforms.image_percentile_jax(v, q))(x))
        np.testing.assert_array_equal(got, want, err_msg=f"{kind} q={q}")
