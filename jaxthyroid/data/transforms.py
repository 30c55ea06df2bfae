"""Normalisation and augmentation of scintigrams: array maths only.

Every function here takes NumPy or JAX arrays (``xp`` is picked from the input),
so the grain pipeline runs them on the host and a GPU run without TFDS/grain runs
the same maths on device batches (:func:`normalize_counts`, :func:`augment_batch`).
No TFDS or grain import: the GPU machines have neither.

Order matters for counts (DESIGN §3): binomial *thinning* acts on raw integer
counts, so it comes first; the geometric warp follows; per-image normalisation to
[0, 1] comes last.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# -- normalisation ------------------------------------------------------------------
# Export-invariant preprocessing (issue 14): the classifier sees the same array whether a
# scintigram arrives as raw counts (16-bit PNG, DICOM NM), as an 8-bit PNG windowed at a
# high percentile, or as an inverted 8-bit PNG. Three steps, all in normalize_counts (the
# one function training and prediction call; image files are un-inverted earlier, at
# their known full scale, by jaxthyroid.data.images.load_image):
#   1. polarity: a scintigram is mostly low background with a small bright gland, so its
#      grey-value distribution is skewed to the right (third central moment > 0); an
#      inverted one (dark gland on white) is skewed to the left and is flipped back;
#   2. scale: divide by the image's own NORMALIZE_PERCENTILE-th value (a global scaling of
#      the counts, e.g. a longer acquisition or another export scale, cancels);
#   3. window: clip to [0, 1], i.e. the image is windowed at that percentile, as a viewer
#      exports it. An export windowed above the percentile (at least one pixel rank above:
#      99.6 at 64², 99.51 at 128²; or at its maximum) then differs from the raw counts only
#      by its 8-bit quantisation: at most 1/(W - 1) where W is the 8-bit value at the
#      percentile (W ~ 255 · x_99.5 / x_window).
# Failure modes: an export windowed at or *below* the 99.5th percentile has saturated the
# pixels the scale is read from (below it, more of the gland than training ever saw:
# information the file no longer holds; the augmentation's window_prob imitates it); an image whose gland fills most of the field (tight crop, large zoom on a
# goitre) can be left-skewed and is then wrongly flipped; an inverted array that did not
# come from a file and is not 8-bit (integers in [0, 255], flipped about 255) is flipped
# about its own maximum, which leaves its darkest background at 0 instead of at its count
# level (an offset, bounded by background / window).
NORMALIZE_PERCENTILE = 99.5


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def is_inverted(image, axis=(-3, -2, -1)):
    """Whether each image is stored with inverted grey (dark activity on a white field).

    The rule: the third central moment of the grey values over ``axis`` is negative
    (left-skewed). Scintigrams are right-skewed: on 2,400 phantom images (64² and 128²,
    every finding set) the skewness is >= 0.9; inverting an image negates it exactly.
    A constant image is not inverted. Returns a bool array of the input's shape without
    ``axis`` (keepdims). Generic over NumPy/JAX, jittable.
    """
    xp = _xp(image)
    x = xp.asarray(image).astype(xp.float32)
    centred = x - xp.mean(x, axis=axis, keepdims=True)
    # c * c * c, not c**3: NumPy's float32 power of negative bases takes libm's slow
    # path (~50 ns a pixel against ~0.5 ns; 0.2 ms of every 64² image's preprocessing).
    return xp.mean(centred * centred * centred, axis=axis, keepdims=True) < 0


def uninvert(image, full_scale=None, axis=(-3, -2, -1)):
    """Flips inverted images (:func:`is_inverted`) back: ``full_scale - x``.

    ``full_scale`` is the value an inverted export gives to zero counts: 255 for an
    8-bit file, 65535 for a 16-bit one (:func:`jaxthyroid.data.images.load_image` knows
    it). ``None`` (an array, not a file): 255 for an image of integers in [0, 255] (an
    8-bit export, the usual inverted one), else the image's own maximum. Images that are
    not inverted are returned unchanged (bit for bit). Generic over NumPy/JAX, jittable.
    """
    xp = _xp(image)
    x = xp.asarray(image).astype(xp.float32)
    if full_scale is None:
        peak = xp.max(x, axis=axis, keepdims=True)
        eight_bit = (peak <= 255.0) & xp.all(x == xp.round(x), axis=axis, keepdims=True)
        top = xp.where(eight_bit, xp.float32(255.0), peak)
    else:
        top = xp.float32(full_scale)
    return xp.where(is_inverted(x, axis=axis), top - x, x)


def _order_statistic(flat, index: int):
    """The ``index``-th smallest value along the last axis of a JAX float32 array
    (``[..., n] -> [...]``), by bisection on order-preserving integer keys of the float
    bits: 32 counting passes instead of a sort. Also returns the keys and the value's
    key (for the next value up)."""
    from jax import lax

    bits = lax.bitcast_convert_type(flat, jnp.uint32)
    # Negative floats: all bits flipped (larger magnitude -> smaller key); the rest: the sign bit set.
    key = jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(0x80000000))
    lo = jnp.zeros(flat.shape[:-1], jnp.uint32)
    hi = jnp.full(flat.shape[:-1], 0xFFFFFFFF, jnp.uint32)

    def halve(_, bounds):  # invariant: the answer's key is in [lo, hi]
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(key <= mid[..., None], axis=-1, dtype=jnp.int32) >= index + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    found, _ = lax.fori_loop(0, 32, halve, (lo, hi))
    bits = jnp.where((found >> 31) == 1, found & jnp.uint32(0x7FFFFFFF), ~found)
    return lax.bitcast_convert_type(bits, jnp.float32), found, key


def image_percentile_jax(x, percentile: float):
    """``jnp.percentile(x, percentile, axis=(-3, -2, -1), keepdims=True)`` (linear
    interpolation), bit for bit, for a float32 JAX array ``[..., H, W, C]``, without
    sorting each image: XLA:CPU's sort dominated ``device_stream``'s batches. The two
    order statistics around the rank come from :func:`_order_statistic` and the value
    after it; the interpolation weights are ``jnp.percentile``'s, in float32."""
    lead, n = x.shape[:-3], math.prod(x.shape[-3:])
    flat = x.reshape(lead + (n,))
    pos = np.float32(percentile) / np.float32(100) * np.float32(n - 1)
    low, high = int(np.floor(pos)), int(np.ceil(pos))
    high_weight = pos - np.floor(pos)
    low_weight = np.float32(1) - high_weight
    low_value, low_key, key = _order_statistic(flat, low)
    at_most = jnp.sum(key <= low_key[..., None], axis=-1, dtype=jnp.int32)
    above = jnp.min(jnp.where(key > low_key[..., None], flat, jnp.inf), axis=-1)
    high_value = jnp.where(at_most >= high + 1, low_value, above)
    return (low_value * low_weight + high_value * high_weight)[..., None, None, None]


def normalize_counts(counts, percentile: float = NORMALIZE_PERCENTILE):
    """Raw counts (or any export of them) ``[..., H, W, C]`` -> float32 in [0, 1], per image.

    Inverted grey is flipped back (:func:`uninvert`), then each image is divided by its
    own ``percentile``-th value (99.5 by default, so a handful of hot pixels does not set
    the scale) and clipped to [0, 1]: windowed at that percentile. An all-zero image stays
    zero. Works on NumPy (host) and JAX (device, jittable) arrays. See the comment above
    for the rule, its tolerance and its failure modes.
    """
    xp = _xp(counts)
    x = uninvert(xp.asarray(counts).astype(xp.float32))
    # Linear interpolation between the two pixels around the rank (numpy's default): an
    # export windowed at or above the upper one of them keeps both unsaturated.
    if xp is jnp and x.ndim >= 3:
        scale = image_percentile_jax(x, percentile)
    else:
        scale = xp.percentile(x, percentile, axis=(-3, -2, -1), keepdims=True)
    # An empty or near-empty image has a 0 percentile; fall back to its max, then 1.
    peak = xp.max(x, axis=(-3, -2, -1), keepdims=True)
    scale = xp.where(scale > 0, scale, xp.where(peak > 0, peak, 1.0))
    return xp.clip(x / scale, 0.0, 1.0).astype(xp.float32)


def window_8bit(counts, percentile: float = NORMALIZE_PERCENTILE, *, invert: bool = False) -> np.ndarray:
    """What a viewer's 8-bit export does to counts ``[..., H, W, C]``: uint8, per image.

    ``round(255 · clip(x / x_percentile, 0, 1))`` (``percentile=100``: windowed at the
    maximum), optionally inverted (``255 - v``). NumPy only; for tests and export studies.
    """
    x = np.asarray(counts, np.float32)
    top = np.percentile(x, percentile, axis=(-3, -2, -1), keepdims=True)
    v = np.rint(255.0 * np.clip(x / np.where(top > 0, top, 1.0), 0.0, 1.0)).astype(np.uint8)
    return (255 - v).astype(np.uint8) if invert else v


# -- augmentation -------------------------------------------------------------------
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentations that make sense for planar scintigraphy.

    Attributes:
      max_shift: largest translation, as a fraction of the image side (0.03 of 128 ≈ 4 px).
      max_rotation_deg: largest in-plane rotation, degrees.
      max_scale: largest relative zoom (0.08 -> ×0.92 … ×1.08).
      thinning_prob: probability of binomial count thinning (a shorter acquisition).
      min_count_fraction: thinning keeps a log-uniform fraction in [this, 1] of the counts.
      flip_lr: left-right flip with probability 1/2. Off by default: the anatomy is not
        mirror-symmetric (the right lobe is larger).
      blur_prob: probability of an extra Gaussian blur (a wider PSF: another collimator,
        a larger source-collimator distance). Off by default. The blur acts on the
        (thinned) noisy counts, so it also smooths their Poisson noise, which a wider PSF
        would not: it imitates lost resolution, not the count statistics.
      max_blur_fwhm_px: the blur's FWHM is uniform in [0, this] pixels (3 px at 128² with
        1.25-1.7 mm pixels is 4-5 mm: added in quadrature to the phantom's 4-11 mm PSF).
      window_prob: probability of saturating the image at a random high percentile, as an
        8-bit export windowed below the normaliser's percentile does
        (:func:`normalize_counts`' first failure mode). Off by default.
      min_window_percentile: that percentile is uniform in [this, 100].
    """

    max_shift: float = 0.03
    max_rotation_deg: float = 8.0
    max_scale: float = 0.08
    thinning_prob: float = 0.5
    min_count_fraction: float = 0.25
    flip_lr: bool = False
    blur_prob: float = 0.0
    max_blur_fwhm_px: float = 3.0
    window_prob: float = 0.0
    min_window_percentile: float = 97.0


def augment_config(data_cfg) -> AugmentConfig | None:
    """The training config's augmentation: ``None`` when ``data_cfg.augment`` is off,
    else :class:`AugmentConfig` from the ``data_cfg.augmentation`` block, which declares
    every field (a missing or unknown key is a :class:`jaxthyroid.config.ConfigError`,
    checked whether or not augmentation is on)."""
    from jaxthyroid.config import ConfigError

    values = dict(data_cfg.augmentation)
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    if set(values) != fields:
        raise ConfigError(
            f"data.augmentation: missing {sorted(fields - set(values))}, unknown {sorted(set(values) - fields)}; "
            f"it declares every field of jaxthyroid.data.transforms.AugmentConfig"
        )
    return AugmentConfig(**values) if data_cfg.augment else None


def augmentation_block() -> dict:
    """The defaults of :class:`AugmentConfig` as a dict: a config file's ``data.augmentation``."""
    return dataclasses.asdict(AugmentConfig())


class AugmentParams(NamedTuple):
    """One image's drawn augmentation (scalars, NumPy or JAX; a pytree, so jittable)."""

    shift_y: float  # pixels
    shift_x: float
    angle: float  # radians
    scale: float
    keep_fraction: float  # 1.0 = no thinning
    flip: bool
    blur_sigma: float = 0.0  # pixels; 0 = no blur
    window_percentile: float = 100.0  # 100 = no saturation


def sample_params_np(rng: np.random.Generator, config: AugmentConfig, size: int) -> AugmentParams:
    """Draws one image's augmentation on the host from a NumPy generator."""
    shift = rng.uniform(-1.0, 1.0, size=2) * config.max_shift * size
    angle = math.radians(config.max_rotation_deg) * rng.uniform(-1.0, 1.0)
    scale = 1.0 + config.max_scale * rng.uniform(-1.0, 1.0)
    thin = rng.uniform() < config.thinning_prob
    keep = math.exp(rng.uniform(math.log(config.min_count_fraction), 0.0)) if thin else 1.0
    flip = bool(config.flip_lr and rng.uniform() < 0.5)
    # Drawn only when enabled, so the draws above (and thinning's) are as before otherwise.
    blur = window = 0.0
    if config.blur_prob > 0:
        blur = float(rng.uniform() < config.blur_prob) * rng.uniform() * config.max_blur_fwhm_px * _FWHM_TO_SIGMA
    if config.window_prob > 0:
        window = float(rng.uniform() < config.window_prob) * rng.uniform()
    percentile = 100.0 - window * (100.0 - config.min_window_percentile)
    return AugmentParams(
        float(shift[0]), float(shift[1]), float(angle), float(scale), float(keep), flip, float(blur), float(percentile)
    )


def sample_params_jax(key: jax.Array, config: AugmentConfig, size: int, shape: tuple[int, ...] = ()) -> AugmentParams:
    """Draws augmentations of ``shape`` images on device from one typed key (jittable).

    The first seven numbers per image come from one flat uniform draw: few, flat random
    calls keep the compile short on CPU (vmapped or rank-4 draws take seconds). Blur
    and window come from a second draw under ``fold_in(key, 1)``, so the first seven
    are the same with or without them.
    """
    n = math.prod(shape)
    u = jax.random.uniform(key, (7 * n,)).reshape((7,) + tuple(shape))
    sym = 2.0 * u - 1.0  # uniform in [-1, 1)
    thin = u[3] < config.thinning_prob
    keep = jnp.where(thin, jnp.exp(math.log(config.min_count_fraction) * u[4]), 1.0)
    v = jax.random.uniform(jax.random.fold_in(key, 1), (4 * n,)).reshape((4,) + tuple(shape))
    blur = jnp.where(v[0] < config.blur_prob, v[1] * config.max_blur_fwhm_px * _FWHM_TO_SIGMA, 0.0)
    window = jnp.where(v[2] < config.window_prob, v[3], 0.0)
    return AugmentParams(
        shift_y=sym[0] * config.max_shift * size,
        shift_x=sym[1] * config.max_shift * size,
        angle=math.radians(config.max_rotation_deg) * sym[2],
        scale=1.0 + config.max_scale * sym[5],
        keep_fraction=keep,
        flip=(u[6] < 0.5) if config.flip_lr else jnp.zeros(shape, bool),
        blur_sigma=blur,
        window_percentile=100.0 - window * (100.0 - config.min_window_percentile),
    )


def gaussian_blur(image, sigma, max_sigma: float):
    """Separable Gaussian blur of one image ``[H, W, C]`` with ``sigma`` pixels (may be traced).

    The kernel spans ``ceil(3 max_sigma)`` pixels each side, normalised to sum 1; the
    field outside the image holds no counts (zero padding). ``sigma`` ~ 0 returns the
    image unchanged. Generic over NumPy/JAX.
    """
    xp = _xp(image)
    h, w = image.shape[0], image.shape[1]
    radius = max(int(math.ceil(3.0 * max_sigma)), 1)
    d = xp.arange(-radius, radius + 1, dtype=xp.float32)
    s = xp.maximum(xp.asarray(sigma, xp.float32), 1e-3)
    k = xp.exp(-0.5 * (d / s) ** 2)
    k = k / xp.sum(k)

    def matrix(n):  # [n, n]: row i holds the kernel centred on pixel i
        offset = xp.arange(n)[None, :] - xp.arange(n)[:, None]
        return xp.where(xp.abs(offset) <= radius, k[xp.clip(offset + radius, 0, 2 * radius)], 0.0)

    # Rows, then columns: two matrix products (NumPy runs a three-operand einsum as one
    # naive four-index loop).
    rows = xp.einsum("ij,jkc->ikc", matrix(h), xp.asarray(image, xp.float32))
    return xp.einsum("ikc,lk->ilc", rows, matrix(w)).astype(xp.float32)


def saturate(image, percentile):
    """Clips one image ``[H, W, C]`` at its own ``percentile``-th value (100: unchanged):
    what an export windowed at that percentile keeps. Generic over NumPy/JAX."""
    xp = _xp(image)
    top = xp.percentile(image, percentile)
    return xp.where(percentile >= 100.0, image, xp.minimum(image, top)).astype(xp.float32)


def affine_warp(image, params: AugmentParams):
    """Shifts, rotates and scales one image ``[H, W, C]`` about its centre.

    Bilinear resampling; pixels that come from outside the field are 0 (no counts).
    Interpolation preserves local intensity, so counts keep their scale. Generic over
    NumPy/JAX.
    """
    xp = _xp(image)
    h, w = image.shape[0], image.shape[1]
    yy, xx = xp.meshgrid(xp.arange(h, dtype=xp.float32), xp.arange(w, dtype=xp.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    # Output pixel p came from source = R(-angle) (p - centre - shift) / scale + centre.
    cos, sin = xp.cos(params.angle), xp.sin(params.angle)
    dy = (yy - cy - params.shift_y) / params.scale
    dx = (xx - cx - params.shift_x) / params.scale
    sy = cos * dy - sin * dx + cy
    sx = sin * dy + cos * dx + cx
    sx = xp.where(params.flip, (w - 1) - sx, sx)
    y0, x0 = xp.floor(sy), xp.floor(sx)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0i, x0i = y0.astype(xp.int32), x0.astype(xp.int32)

    def tap(yi, xi):
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        v = image[xp.clip(yi, 0, h - 1), xp.clip(xi, 0, w - 1)]
        return xp.where(inside[..., None], v, 0.0)

    out = (
        tap(y0i, x0i) * (1 - wy) * (1 - wx)
        + tap(y0i, x0i + 1) * (1 - wy) * wx
        + tap(y0i + 1, x0i) * wy * (1 - wx)
        + tap(y0i + 1, x0i + 1) * wy * wx
    )
    return out.astype(xp.float32)


def thin_counts_np(counts: np.ndarray, keep_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning: each recorded count survives with probability ``keep_fraction``.

    A Poisson image thinned this way is again Poisson at the lower count level, as if
    acquired for a shorter time. ``counts`` are raw (integer-valued) counts.
    """
    if keep_fraction >= 1.0:
        return counts.astype(np.float32)
    n = np.rint(np.maximum(counts, 0)).astype(np.int64)
    return rng.binomial(n, keep_fraction).astype(np.float32)


# Counts up to this are thinned exactly on device (a sum of Bernoulli draws); above
# it a rounded normal approximation is used. jax.random.binomial is exact but takes
# ~8 s to compile on CPU, too slow for a training step's compile.
EXACT_THINNING_MAX = 16


def thin_counts_jax(key: jax.Array, counts: jax.Array, keep_fraction) -> jax.Array:
    """Device version of :func:`thin_counts_np` (jittable; ``keep_fraction`` may be traced).

    Exact binomial for pixels with at most :data:`EXACT_THINNING_MAX` counts; above
    that ``round(N(n p, n p (1 - p)))`` clipped to [0, n] (mean and variance exact).
    """
    n = jnp.rint(jnp.maximum(counts, 0)).astype(jnp.float32)
    p = jnp.broadcast_to(jnp.clip(keep_fraction, 0.0, 1.0), n.shape)
    k_exact, k_normal = jax.random.split(key)
    trials = jnp.arange(EXACT_THINNING_MAX, dtype=jnp.float32)
    # Drawn flat then reshaped: rank-4 random shapes take seconds longer to compile on CPU.
    u = jax.random.uniform(k_exact, (n.size * EXACT_THINNING_MAX,)).reshape(n.shape + (EXACT_THINNING_MAX,))
    exact = jnp.sum((u < p[..., None]) & (trials < n[..., None]), axis=-1).astype(jnp.float32)
    z = jax.random.normal(k_normal, (n.size,)).reshape(n.shape)
    approx = jnp.clip(jnp.rint(n * p + jnp.sqrt(n * p * (1.0 - p)) * z), 0.0, n)
    thinned = jnp.where(n <= EXACT_THINNING_MAX, exact, approx)
    return jnp.where(p >= 1.0, n, thinned)


def _blur_warp_window(counts, params: AugmentParams, config: AugmentConfig):
    """The steps after thinning, for one image: PSF blur, affine warp, export window."""
    x = counts
    if config.blur_prob > 0:
        x = gaussian_blur(x, params.blur_sigma, config.max_blur_fwhm_px * _FWHM_TO_SIGMA)
    x = affine_warp(x, params)
    if config.window_prob > 0:
        x = saturate(x, params.window_percentile)
    return x


def augment_counts_np(counts: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Host augmentation of one raw-count image ``[H, W, C]`` -> float32 counts ``[H, W, C]``.

    Thinning (on the raw integer counts), PSF blur, affine warp, export window, each as
    ``config`` enables it.
    """
    params = sample_params_np(rng, config, counts.shape[0])
    thinned = thin_counts_np(counts, params.keep_fraction, rng)
    return _blur_warp_window(thinned, params, config)


def augment_batch(key: jax.Array, counts: jax.Array, config: AugmentConfig) -> jax.Array:
    """Device augmentation of raw counts ``[B, H, W, C]`` -> float32 counts ``[B, H, W, C]``.

    Jit it with ``config`` static; follow with :func:`normalize_counts`.
    """
    counts = jnp.asarray(counts, jnp.float32)
    k_params, k_thin = jax.random.split(key)
    params = sample_params_jax(k_params, config, counts.shape[1], (counts.shape[0],))
    thinned = thin_counts_jax(k_thin, counts, params.keep_fraction[:, None, None, None])
    return jax.vmap(lambda x, p: _blur_warp_window(x, p, config))(thinned, params)
