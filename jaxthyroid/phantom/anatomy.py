"""The activity map: the layout's anatomy rendered to ``[size, size]`` (no blur, no noise).

Units: activity in units of the background concentration at the image centre (so
``C`` = thyroid peak / background is read directly off the map); lengths in mm.

Why it is cheap:

- Only the sharp-edged gland (lobes, isthmus, pyramidal lobe) is rendered at 2x
  resolution (2x2 sub-pixel grids, averaged); everything else is smooth (or is
  blurred by a PSF of at least ~2.4 output pixels) and is rendered at 1x.
- Lobe outlines are superellipses of exponent p evaluated as the polynomial
  Fernandez-Guasti squircle through the same axis and diagonal points (radius
  within 0.8 %), saving a log and an exp per coordinate per sub-pixel.
- The per-patient shift / rotation / scale moves the anatomy's parameters (centres,
  axes, sizes) instead of resampling images, and rotated coordinates are sums of a
  row vector and a column vector (one add per pixel).
- Gaussian blobs (salivary glands, Hashimoto patches, markers) are separable, so all
  of them together are one ``[H, k] @ [k, W]`` matmul; the texture is coarse white
  noise interpolated by two small matmuls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid.phantom.params import MAX_NODULES, PhantomParams


def axis(n, fov):
    """Pixel-centre coordinates (mm) of an n-pixel axis spanning fov, centred on 0."""
    return ((jnp.arange(n, dtype=jnp.float32) + 0.5) / n - 0.5) * fov


def gland_thickness(lay, size, params: PhantomParams):
    """Projected gland thickness (lobe peak = 1) rendered at ``supersample``² sub-pixels
    per pixel and averaged down to ``[size, size]``: lobes, isthmus, pyramidal lobe.

    Each sub-pixel grid is evaluated on its own and the grids summed: XLA:CPU fuses
    that into one loop, whereas a 2x-resolution image reshaped and averaged ran ~15x
    slower (the reduction was not fused with the rendering)."""
    f = params.supersample
    px = lay["fov"] / size
    base = axis(size, lay["fov"])
    total = None
    for i in range(f):
        for j in range(f):
            x = base + ((j + 0.5) / f - 0.5) * px
            y = base + ((i + 0.5) / f - 0.5) * px
            t = _gland_at(lay, x[None, :], y[:, None])
            total = t if total is None else total + t
    return total * (1.0 / (f * f))


def _gland_at(lay, x, y):
    """Gland thickness at points ``x`` ``[1, W]`` (mm), ``y`` ``[H, 1]`` -> ``[H, W]``."""
    # Superellipse |u|^p + |v|^p = 1, evaluated as the Fernandez-Guasti squircle
    # u² + v² - s² u² v² = 1 through the same axis and diagonal points (radius within
    # 0.8 % of the superellipse for p <= 2.6): polynomial, where |t|^p would cost a log
    # and an exp per coordinate per sub-pixel.
    diag2 = 2.0 ** (-2.0 / lay["lobe_exponent"])  # x² of the diagonal point 2 x^p = 1
    squareness = (2.0 * diag2 - 1.0) / (diag2 * diag2)
    # Structures combine by max (a union of volumes); max commutes with sqrt, so the
    # squared thickness is maximised and one sqrt taken at the end.
    thick2 = None
    for i in range(2):  # two lobes
        cx, cy = lay["lobe_c"][0, i], lay["lobe_c"][1, i]
        ev, eu = lay["lobe_ev"][:, i], lay["lobe_eu"][:, i]
        ia, ib = 1.0 / lay["lobe_a"][i], 1.0 / lay["lobe_b"][i]
        # Normalised lobe coordinates: a row vector plus a column vector. Pear shape:
        # half-width b / (1 - pear v/a), fuller towards the lower pole.
        vn = (x - cx) * (ev[0] * ia) + (y - cy) * (ev[1] * ia)
        un = ((x - cx) * (eu[0] * ib) + (y - cy) * (eu[1] * ib)) * (1.0 - lay["lobe_pear"][i] * vn)
        u2, v2 = un * un, vn * vn
        # The max() removes the squircle's far-away second branch (u², v² > 1).
        r = jnp.maximum(u2 + v2 - squareness * u2 * v2, jnp.maximum(u2, v2))
        t2 = lay["lobe_thick"][i] ** 2 * jnp.maximum(1.0 - r, 0.0)
        thick2 = t2 if thick2 is None else jnp.maximum(thick2, t2)
    # Isthmus and pyramidal lobe: ellipses (rotated with the patient).
    c, s = lay["rot_cos"], lay["rot_sin"]
    for cen, hx, hy, level, ang in (
        (lay["isthmus_c"], lay["isthmus_hx"], lay["isthmus_hy"], lay["isthmus_level"], None),
        (lay["pyr_c"], lay["pyr_hx"], lay["pyr_hy"], lay["pyr_level"], lay["pyr_angle"]),
    ):
        cc, ss = (c, s) if ang is None else (jnp.cos(ang), jnp.sin(ang))
        dx, dy = x - cen[0], y - cen[1]
        u = dx * (cc / hx) + dy * (ss / hx)
        v = dx * (-ss / hy) + dy * (cc / hy)
        thick2 = jnp.maximum(thick2, level * level * (1.0 - u * u - v * v))
    return jnp.sqrt(thick2)


def gaussians(centres, sigmas, weights, x, y):
    """Sum of axis-aligned 2-D Gaussian blobs as one matmul: ``[H, k] @ [k, W]``.

    centres ``[2, k]`` (mm), sigmas ``[k]``, weights ``[k]`` (peak heights); x ``[W]``,
    y ``[H]`` (mm)."""
    gx = jnp.exp(-0.5 * ((x[None, :] - centres[0][:, None]) / sigmas[:, None]) ** 2)  # [k, W]
    gy = jnp.exp(-0.5 * ((y[:, None] - centres[1][None, :]) / sigmas[None, :]) ** 2)  # [H, k]
    return (gy * weights[None, :]) @ gx


@functools.cache
def texture_basis(size: int, grid: int, smoothing: float) -> np.ndarray:
    """``[size, size // grid]`` Gaussian interpolation rows of unit L2 norm, so
    ``U n Uᵀ`` of white unit noise ``n`` is a smooth field with unit variance."""
    m = size // grid
    i = np.arange(size)[:, None] + 0.5
    k = (np.arange(m)[None, :] + 0.5) * grid
    u = np.exp(-0.5 * ((i - k) / (smoothing * grid)) ** 2)
    return (u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float32)


def activity_map(texture_key, lay, size, params: PhantomParams):
    """Activity ``[size, size]`` (background units) and a dict of its parts:
    ``thyroid_support`` and ``nodule_mask`` (pre-blur, ``[size, size]``),
    ``thyroid_activity``."""
    fov = lay["fov"]
    x = axis(size, fov)
    y = axis(size, fov)
    support = gland_thickness(lay, size, params)
    # Nodules: spheres that may bulge the contour, and soft-edged discs that set the
    # level; painted in slot order (later paints over earlier).
    level = jnp.full((size, size), lay["gland_level"], jnp.float32)
    nodule_mask = jnp.zeros((size, size), jnp.float32)
    for k in range(MAX_NODULES):  # inactive slots sit far outside the FOV
        r, e = lay["nod_r"][k], lay["nod_edge"][k]
        dx2 = ((x - lay["nod_c"][0, k]) / r) ** 2
        dy2 = ((y - lay["nod_c"][1, k]) / r) ** 2
        q = dy2[:, None] + dx2[None, :]  # (distance / radius)²
        rim2 = ((r + e) / r) ** 2
        sphere = jnp.sqrt(jnp.maximum(1.0 - q * (1.0 / rim2), 0.0))
        support = jnp.maximum(support, lay["nod_thick"][k] * sphere)
        # Soft edge of width e: 1 - d/r ~ (1 - q)/2 near the edge, so no sqrt.
        m = jnp.clip((1.0 - q) * (0.5 * r / e) + 0.5, 0.0, 1.0)
        m = m * m * (3.0 - 2.0 * m)  # smoothstep
        level = level + m * (lay["nod_level"][k] - level)
        nodule_mask = jnp.maximum(nodule_mask, m)
    # Texture exp(sigma g) with g a smooth unit-variance field, and Hashimoto patches.
    grid = params.texture_grid_px
    basis = jnp.asarray(texture_basis(size, grid, params.texture_smoothing))
    white = jax.random.normal(texture_key, (size // grid, size // grid))
    g = basis @ white @ basis.T
    patches = 1.0 - gaussians(lay["patch_c"], lay["patch_sigma"], lay["patch_depth"], x, y)
    thyroid = support * level * jnp.exp(lay["texture"] * g) * jnp.maximum(patches, params.hashimoto_patch_floor)
    # Background (with its cranio-caudal gradient), salivary glands and markers.
    background = 1.0 + lay["gradient"] * (y / (fov / 2))
    blobs = gaussians(
        jnp.concatenate([lay["sal_c"], lay["marker_c"]], axis=1),
        jnp.concatenate([lay["sal_sigma"], jnp.full((2,), params.marker_sigma_mm)]),
        jnp.concatenate([lay["sal_level"], lay["marker_level"]]),
        x,
        y,
    )
    if "oesophagus_x" in lay:  # a vertical band (the patient's rotation neglected)
        band = jnp.exp(-0.5 * ((x - lay["oesophagus_x"]) / lay["oesophagus_sigma"]) ** 2)
        blobs = blobs + lay["oesophagus_level"] * band[None, :]
    activity = thyroid + background[:, None] + blobs
    return activity, dict(thyroid_support=support, nodule_mask=nodule_mask, thyroid_activity=thyroid)
