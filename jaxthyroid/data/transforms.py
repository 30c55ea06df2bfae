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

NORMALIZE_PERCENTILE = 99.5


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


# -- normalisation ------------------------------------------------------------------
def normalize_counts(counts, percentile: float = NORMALIZE_PERCENTILE):
    """Raw counts ``[..., H, W, C]`` -> float32 in [0, 1], per image.

    Each image is divided by its own ``percentile``-th value (99.5 by default, so a
    handful of hot pixels does not set the scale) and clipped to [0, 1]. An all-zero
    image stays zero. Works on NumPy (host) and JAX (device, jittable) arrays.
    """
    xp = _xp(counts)
    x = xp.asarray(counts).astype(xp.float32)
    scale = xp.percentile(x, percentile, axis=(-3, -2, -1), keepdims=True)
    # An empty or near-empty image has a 0 percentile; fall back to its max, then 1.
    peak = xp.max(x, axis=(-3, -2, -1), keepdims=True)
    scale = xp.where(scale > 0, scale, xp.where(peak > 0, peak, 1.0))
    return xp.clip(x / scale, 0.0, 1.0).astype(xp.float32)


# -- augmentation -------------------------------------------------------------------
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
    """

    max_shift: float = 0.03
    max_rotation_deg: float = 8.0
    max_scale: float = 0.08
    thinning_prob: float = 0.5
    min_count_fraction: float = 0.25
    flip_lr: bool = False


class AugmentParams(NamedTuple):
    """One image's drawn augmentation (scalars, NumPy or JAX; a pytree, so jittable)."""

    shift_y: float  # pixels
    shift_x: float
    angle: float  # radians
    scale: float
    keep_fraction: float  # 1.0 = no thinning
    flip: bool


def sample_params_np(rng: np.random.Generator, config: AugmentConfig, size: int) -> AugmentParams:
    """Draws one image's augmentation on the host from a NumPy generator."""
    shift = rng.uniform(-1.0, 1.0, size=2) * config.max_shift * size
    angle = math.radians(config.max_rotation_deg) * rng.uniform(-1.0, 1.0)
    scale = 1.0 + config.max_scale * rng.uniform(-1.0, 1.0)
    thin = rng.uniform() < config.thinning_prob
    keep = math.exp(rng.uniform(math.log(config.min_count_fraction), 0.0)) if thin else 1.0
    flip = bool(config.flip_lr and rng.uniform() < 0.5)
    return AugmentParams(float(shift[0]), float(shift[1]), float(angle), float(scale), float(keep), flip)


def sample_params_jax(key: jax.Array, config: AugmentConfig, size: int, shape: tuple[int, ...] = ()) -> AugmentParams:
    """Draws augmentations of ``shape`` images on device from one typed key (jittable).

    All seven numbers per image come from one flat uniform draw: few, flat random
    calls keep the compile short on CPU (vmapped or rank-4 draws take seconds).
    """
    n = math.prod(shape)
    u = jax.random.uniform(key, (7 * n,)).reshape((7,) + tuple(shape))
    sym = 2.0 * u - 1.0  # uniform in [-1, 1)
    thin = u[3] < config.thinning_prob
    keep = jnp.where(thin, jnp.exp(math.log(config.min_count_fraction) * u[4]), 1.0)
    return AugmentParams(
        shift_y=sym[0] * config.max_shift * size,
        shift_x=sym[1] * config.max_shift * size,
        angle=math.radians(config.max_rotation_deg) * sym[2],
        scale=1.0 + config.max_scale * sym[5],
        keep_fraction=keep,
        flip=(u[6] < 0.5) if config.flip_lr else jnp.zeros(shape, bool),
    )


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


def augment_counts_np(counts: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Host augmentation of one raw-count image ``[H, W, C]`` -> float32 counts ``[H, W, C]``."""
    params = sample_params_np(rng, config, counts.shape[0])
    thinned = thin_counts_np(counts, params.keep_fraction, rng)
    return affine_warp(thinned, params)


def augment_batch(key: jax.Array, counts: jax.Array, config: AugmentConfig) -> jax.Array:
    """Device augmentation of raw counts ``[B, H, W, C]`` -> float32 counts ``[B, H, W, C]``.

    Jit it with ``config`` static; follow with :func:`normalize_counts`.
    """
    counts = jnp.asarray(counts, jnp.float32)
    k_params, k_thin = jax.random.split(key)
    params = sample_params_jax(k_params, config, counts.shape[1], (counts.shape[0],))
    thinned = thin_counts_jax(k_thin, counts, params.keep_fraction[:, None, None, None])
    return jax.vmap(affine_warp)(thinned, params)


# -- record -> example (the grain pipeline's map) ------------------------------------
def preprocess(record: dict, augment: AugmentConfig | None = None, rng: np.random.Generator | None = None) -> dict:
    """One stored record -> one model example (the batch layout of
    :mod:`jaxthyroid.data.pipeline`, without ``B``).

    With ``augment``, the raw counts are thinned and warped first (``rng`` draws it).
    """
    counts = np.asarray(record["image"], np.float32)
    if augment is not None:
        counts = augment_counts_np(counts, augment, rng)
    return {
        "image": normalize_counts(counts),
        "findings": np.asarray(record["findings"], np.float32),
        "finding_set": np.int32(record["finding_set"]),
        "subset": np.int32(record["subset"]),
        "synthetic": np.int32(record.get("synthetic", 0)),
    }
