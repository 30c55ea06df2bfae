"""The imaging chain: activity map -> collimator PSF + scatter tail -> counts -> Poisson.

- The PSF is a separable convolution of shifted multiply-adds; the wide scatter tail
  is blurred from 4x4 block sums with two small matmuls (both ~2x faster than FFT
  here).
- ``jax.random.poisson`` costs ~10 ms per 128² image on this CPU (a data-dependent
  while loop of threefry draws), 10x the rest of the simulator, so the default
  sampler (``poisson="fast"``) draws the same distribution from a counter-based
  integer hash: inversion for λ < 10 and Hörmann's transformed rejection (the
  algorithm ``jax.random.poisson`` uses) for λ ≥ 10, with three fixed rounds.
  ``poisson="jax"`` uses ``jax.random.poisson`` itself.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid.phantom.params import FWHM_TO_SIGMA, PhantomParams
from jaxthyroid.phantom.sampling import Draws

POISSON_SAMPLERS = ("fast", "jax")


def _on(rng) -> bool:
    """Whether a randomisation range is switched on (static: decides what is traced)."""
    return tuple(rng) not in ((0.0, 0.0), (1.0, 1.0))


def acquisition(d: Draws, params: PhantomParams) -> dict:
    """The per-image camera settings (named draws): collimator, PSF and scatter
    widths (mm), counting mode and count level; with the randomisation fields on,
    also ``magnification``, ``distortion``, ``resolution_gradient`` (pinhole only,
    else neutral), ``matrix`` and the export (``windowed``, ``inverted``,
    ``window_percentile``)."""
    p = params
    pinhole = d.bernoulli("pinhole_prob", p.pinhole_prob)
    acq = dict(
        pinhole=pinhole,
        psf_fwhm=jnp.where(
            pinhole, d.uniform("pinhole_fwhm_mm", p.pinhole_fwhm_mm), d.uniform("parallel_fwhm_mm", p.parallel_fwhm_mm)
        ),
        scatter_weight=d.uniform("scatter_weight", p.scatter_weight),
        scatter_fwhm=d.uniform("scatter_fwhm_mm", p.scatter_fwhm_mm),
        preset_count=d.bernoulli("preset_count_prob", p.preset_count_prob),
        counts=d.log_uniform("total_counts", p.total_counts),
    )
    for name, neutral in (
        ("pinhole_magnification", 1.0),
        ("pinhole_distortion", 0.0),
        ("pinhole_resolution_gradient", 0.0),
    ):
        if _on(getattr(p, name)):
            acq[name.removeprefix("pinhole_")] = jnp.where(pinhole, d.uniform(name, getattr(p, name)), neutral)
    if _on(p.matrix_px):
        acq["matrix"] = d.log_uniform("matrix_px", p.matrix_px)
    if p.export_windowed_prob > 0:
        acq["windowed"] = d.bernoulli("export_windowed_prob", p.export_windowed_prob)
        acq["inverted"] = acq["windowed"] & d.bernoulli("export_inverted_prob", p.export_inverted_prob)
        acq["window_percentile"] = d.uniform("export_window_percentile", p.export_window_percentile)
    return acq


def psf_half_width(size, params: PhantomParams) -> int:
    """Static kernel half-width (pixels): 3 sigma of the widest PSF (acquisition-pixel
    blur and off-axis pinhole blur included) at the finest pixel."""
    finest_px = params.fov_mm[0] / max(params.pinhole_magnification[1], 1.0) / size
    box_var = 0.0
    if _on(params.matrix_px):
        w = size / params.matrix_px[0]
        box_var = max(w * w - 1.0, 0.0) / 12.0

    def sigma(fwhm_mm):
        return math.sqrt((fwhm_mm * FWHM_TO_SIGMA / finest_px) ** 2 + box_var)

    widest = max(
        sigma(params.pinhole_fwhm_mm[1]) * (1.0 + params.pinhole_resolution_gradient[1]),
        sigma(params.parallel_fwhm_mm[1]),
    )
    return int(math.ceil(3.0 * widest))


def psf_blur(image, sigma_px, half_width):
    """Separable Gaussian blur ``[H, W]`` as 2 x (2 half_width + 1) shifted
    multiply-adds (fused by XLA into two loops); edges replicate (the neck continues
    beyond the FOV)."""
    taps = jnp.arange(-half_width, half_width + 1, dtype=jnp.float32)
    w = jnp.exp(-0.5 * (taps / sigma_px) ** 2)
    w = w / w.sum()
    n, m = image.shape
    padded = jnp.pad(image, ((half_width, half_width), (0, 0)), mode="edge")
    rows = sum(w[k] * padded[k : k + n, :] for k in range(2 * half_width + 1))
    padded = jnp.pad(rows, ((0, 0), (half_width, half_width)), mode="edge")
    return sum(w[k] * padded[:, k : k + m] for k in range(2 * half_width + 1))


def scatter_blur(image, sigma_px, grid=4):
    """Wide Gaussian blur ``[H, W]`` (the scatter tail, sigma >= 6 pixels) computed
    from ``grid`` x ``grid`` block sums: ``U Xc Uᵀ`` with ``U[i, k]`` the normalised
    Gaussian weight of coarse block k at pixel i. Rows of U sum to 1, so edges keep
    their level."""
    n = image.shape[0]
    coarse = sum(image[i::grid, j::grid] for i in range(grid) for j in range(grid))
    i = jnp.arange(n, dtype=jnp.float32)[:, None] + 0.5
    k = (jnp.arange(n // grid, dtype=jnp.float32)[None, :] + 0.5) * grid
    u = jnp.exp(-0.5 * ((i - k) / sigma_px) ** 2)
    u = u / u.sum(axis=1, keepdims=True)
    return u @ coarse @ u.T * (1.0 / (grid * grid))


def _radius2(size):
    """Squared normalised radius ``[size, size]`` (1 at the middle of an edge)."""
    r = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2.0 - 1.0
    return r[:, None] ** 2 + r[None, :] ** 2


def distort(activity, k):
    """Radial distortion of ``[H, W]``: what lies at normalised radius rho appears at
    rho (1 + k rho²). Resampled bilinearly (edges replicate)."""
    size = activity.shape[0]
    c = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2.0 - 1.0
    yy, xx = jnp.meshgrid(c, c, indexing="ij")
    rho2_img = xx * xx + yy * yy
    # Invert rho_img = rho (1 + k rho²) by two fixed-point steps (k <= 0.2: converged to < 1e-3).
    scale = 1.0 / (1.0 + k * rho2_img)
    scale = 1.0 / (1.0 + k * rho2_img * scale * scale)
    rows, cols = ((v * scale + 1.0) * 0.5 * size - 0.5 for v in (yy, xx))
    return jax.scipy.ndimage.map_coordinates(activity, [rows, cols], order=1, mode="nearest")


def expected_counts(activity, acq, fov, params: PhantomParams):
    """Noise-free counts ``[size, size]`` of an activity map, and a dict with
    ``activity_integral`` (bg-units x mm²) and ``total`` (expected total counts)."""
    size = activity.shape[0]
    px = fov / size
    integral = activity.sum() * px * px
    if "distortion" in acq:
        activity = distort(activity, acq["distortion"])
    # Collimator PSF + scatter tail: (1-w) G_psf + w G_scatter, each separable.
    w = acq["scatter_weight"]
    sigma = acq["psf_fwhm"] * FWHM_TO_SIGMA / px
    if "matrix" in acq:  # the acquisition pixel's box blur, as a Gaussian of its variance
        box = size / acq["matrix"]
        sigma = jnp.sqrt(sigma * sigma + jnp.maximum(box * box - 1.0, 0.0) / 12.0)
    half_width = psf_half_width(size, params)
    psf = psf_blur(activity, sigma, half_width)
    if "resolution_gradient" in acq:  # FWHM (1 + g rho²), as a blend of two blurs by rho²
        off_axis = psf_blur(activity, sigma * (1.0 + acq["resolution_gradient"]), half_width)
        psf = psf + jnp.minimum(_radius2(size), 1.0) * (off_axis - psf)
    scatter = scatter_blur(activity, acq["scatter_fwhm"] * FWHM_TO_SIGMA / px)
    image = (1.0 - w) * psf + w * scatter
    # Counts: preset count (log-uniform total), or preset time (total ∝ activity).
    total = jnp.where(acq["preset_count"], acq["counts"], acq["counts"] * integral / params.reference_activity)
    return image * (total / image.sum()), dict(activity_integral=integral, total=total)


def count_quantile(counts, q, iters=24):
    """The ``q``-quantile (0-1) of integer counts (numpy's ``method="inverted_cdf"``):
    the smallest integer t with at least a fraction q of the pixels <= t. Found by
    bisection on t, one counting pass per step (a sort per image cost ~10x the rest of
    the simulator); ``iters`` steps reach counts up to 2^iters."""
    flat = counts.reshape(-1)
    need = jnp.maximum(jnp.ceil(q * flat.size), 1.0)
    lo, hi = jnp.float32(0.0), jnp.max(flat)
    for _ in range(iters):
        mid = jnp.floor(0.5 * (lo + hi))
        enough = jnp.sum(flat <= mid) >= need
        lo, hi = jnp.where(enough, lo, mid + 1.0), jnp.where(enough, mid, hi)
    return hi


def export(counts, acq):
    """The image as written: raw counts, or 8-bit windowed at the drawn percentile of
    the counts, or its inverted grey (float32, integer values; ``counts`` ``[H, W, 1]``)."""
    if "windowed" not in acq:
        return counts
    top = jnp.maximum(count_quantile(counts, acq["window_percentile"] / 100.0), 1.0)
    # Saturation decided on the counts: counts / top can round below 1 at counts == top.
    grey = jnp.where(counts >= top, 255.0, jnp.floor(255.0 * jnp.minimum(counts / top, 1.0)))
    grey = jnp.where(acq["inverted"], 255.0 - grey, grey)
    return jnp.where(acq["windowed"], grey, counts)


# ----------------------------------------------------------------------------------
# Poisson noise
# ----------------------------------------------------------------------------------
def _hash32(x):
    """lowbias32 integer hash (C. Wellons): a bijection on uint32 with good avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


@functools.cache
def _pixel_counters(n: int) -> np.ndarray:
    x = np.arange(n, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> 16
        x *= np.uint32(0x7FEB352D)
        x ^= x >> 15
        x *= np.uint32(0x846CA68B)
        x ^= x >> 16
    return x


def _log_factorial(k):
    """log(k!) for integer-valued float k >= 0 by Stirling's series (error < 3e-4 at
    k = 0, < 1e-5 from k = 1 on); XLA's lgamma costs ~4x the whole rest of a round."""
    n = jnp.maximum(k + 1.0, 1.0)
    inv = 1.0 / n
    inv2 = inv * inv
    series = inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260)))
    return (n - 0.5) * jnp.log(n) - n + 0.5 * math.log(2.0 * math.pi) + series


def poisson_fast(key, lam, *, small_iters=28, rounds=3):
    """Poisson(lam) samples (float32, lam's shape) from a counter-based hash.

    lam < 10: inversion (sequential CDF search, one uniform; truncated at
    ``small_iters``, P(X >= 28 | 10) ~ 1e-5). lam >= 10: Hörmann's transformed
    rejection (PTRS, as in ``jax.random.poisson``) with ``rounds`` fixed rounds; a
    pixel still rejected after them (probability ~1e-3) takes the rounded normal
    approximation. ``log k!`` by Stirling's series. Measured total-variation distance
    to the Poisson pmf equals that of ``jax.random.poisson`` on the same sample size
    (sampling noise) from lam = 0.5 to 5000.
    """
    seeds = jax.random.bits(key, (2 + rounds,), jnp.uint32)
    base = jnp.asarray(_pixel_counters(lam.size)).reshape(lam.shape)

    def halves(j):  # two 16-bit uniforms in (0, 1) from one hashed word
        w = _hash32(base ^ seeds[j])
        scale = 1.0 / 65536
        return ((w >> 16).astype(jnp.float32) + 0.5) * scale, ((w & 0xFFFF).astype(jnp.float32) + 0.5) * scale

    # -- small lam: inversion --
    lam_s = jnp.minimum(lam, 10.0)
    u = ((_hash32(base ^ seeds[0]) >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))
    pmf = jnp.exp(-lam_s)
    cdf = pmf
    k_small = jnp.zeros_like(lam)
    for i in range(1, small_iters + 1):
        k_small = k_small + (u > cdf).astype(jnp.float32)
        pmf = pmf * lam_s * (1.0 / i)
        cdf = cdf + pmf
    # -- large lam: transformed rejection --
    lam_r = jnp.maximum(lam, 10.0)
    log_lam = jnp.log(lam_r)
    b = 0.931 + 2.53 * jnp.sqrt(lam_r)
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2.0)
    # Fallback after `rounds` rejections: the normal approximation (Box-Muller).
    u1, u2 = halves(1)
    z = jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * math.pi * u2)
    k_large = jnp.floor(lam_r + jnp.sqrt(lam_r) * z + 0.5)
    done = jnp.zeros(lam.shape, bool)
    for j in range(rounds):
        u, v = halves(2 + j)
        u = u - 0.5
        us = 0.5 - jnp.abs(u)
        k = jnp.floor((2.0 * a / us + b) * u + lam_r + 0.43)
        s = jnp.log(v * inv_alpha / (a / (us * us) + b))
        t = -lam_r + k * log_lam - _log_factorial(k)
        accept = ((us >= 0.07) & (v <= v_r)) | (~((k < 0) | ((us < 0.013) & (v > us))) & (s <= t))
        accept = accept & ~done
        k_large = jnp.where(accept, k, k_large)
        done = done | accept
    k_large = jnp.maximum(k_large, 0.0)
    return jnp.where(lam < 10.0, k_small, k_large)


def poisson(key, lam, params: PhantomParams):
    """Poisson(lam) samples (float32) with the sampler ``params.poisson`` names."""
    if params.poisson == "jax":
        return jax.random.poisson(key, lam).astype(jnp.float32)
    if params.poisson != "fast":
        raise ValueError(f"PhantomParams.poisson must be 'fast' or 'jax', got {params.poisson!r}")
    return poisson_fast(key, lam)
