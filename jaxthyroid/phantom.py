"""The phantom: planar 99mTc-pertechnetate thyroid scintigrams, simulated in JAX.

The default data set of the package (DESIGN §3). One call renders a batch on the
device: anatomy -> activity map -> collimator blur and scatter -> counts -> Poisson
noise, all in ``jax.numpy``, jitted and vmapped, branch-free (every finding's effect
is computed for every image and switched on by its multi-hot flags), so it runs
unchanged on CPU, GPU and TPU and inside other jitted code.

Units: lengths in mm, activity in units of the background concentration at the
image centre (so ``C`` = thyroid peak / background is read directly off the map).
Image axes: x to the right (the patient's left in this anterior view, so the
patient's right lobe is on the image's left), y downwards (caudal).

Where the time goes and why it is cheap (measured, see
``benchmarks/phantom_throughput.py``):

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
  noise interpolated by two small matmuls; the PSF is a separable convolution of
  shifted multiply-adds, the wide scatter tail is blurred from 4x4 block sums
  with two small matmuls (both ~2x faster than FFT here).
- ``jax.random.poisson`` costs ~10 ms per 128² image on this CPU (a data-dependent
  while loop of threefry draws), 10x our whole budget, so the default sampler
  (``poisson="fast"``) draws the same distribution from a counter-based integer hash:
  inversion for λ < 10 and Hörmann's transformed rejection (the algorithm
  ``jax.random.poisson`` uses) for λ ≥ 10, with three fixed rounds.
  ``poisson="jax"`` uses ``jax.random.poisson`` itself.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid import findings

Range = tuple[float, float]

# Finding indices in the multi-hot label (DESIGN §2 order).
_NORMAL, _GRAVES, _HASHIMOTO, _SUBACUTE, _HOT, _COLD = range(6)
_MAX_NODULES = 6  # hot+cold goitre: 2-6 nodules; every other set has at most 1
_MAX_PATCHES = 4  # Hashimoto: 1-4 ill-defined patches
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclasses.dataclass(frozen=True)
class PhantomParams:
    """Every numeric range of the simulator (DESIGN §3). Ranges are ``(low, high)``
    and sampled uniformly per image unless noted; lengths in mm; levels relative to
    the background concentration (``C``) or to the thyroid peak (``S``).

    Frozen and made of tuples, so it is hashable and can be a static jit argument.
    """

    # -- field of view and sampling -------------------------------------------------
    fov_mm: Range = (160.0, 220.0)  # square field of view (1.25-1.7 mm/px at 128²)
    # Gland is rendered at this many sub-pixels per side and binned (sum) down.
    supersample: int = 2

    # -- thyroid geometry (normal gland) -------------------------------------------
    lobe_exponent: Range = (2.0, 2.6)  # superellipse |u|^p + |v|^p = 1
    lobe_length_mm: Range = (40.0, 55.0)  # full cranio-caudal length of a lobe
    lobe_width_mm: Range = (13.0, 18.0)  # full width of a lobe (at its centre)
    lobe_separation_mm: Range = (28.0, 40.0)  # distance between the lobe centres
    lobe_tilt_deg: Range = (8.0, 22.0)  # upper poles lean outward by this angle
    lobe_pear: Range = (0.1, 0.35)  # half-width x (1 + pear * v/a): lower pole fuller
    right_lobe_ratio: Range = (1.0, 1.15)  # right lobe size / left lobe size
    thyroid_offset_mm: Range = (0.0, 12.0)  # gland centre below the image centre
    isthmus_height_mm: Range = (5.0, 12.0)
    isthmus_absent_prob: float = 0.10
    isthmus_level: Range = (0.25, 0.5)  # isthmus thickness / lobe thickness
    isthmus_drop: Range = (0.1, 0.3)  # isthmus centre below lobe centres, x lobe half-length
    pyramidal_prob: float = 0.15
    pyramidal_prob_graves: float = 0.40
    pyramidal_length_mm: Range = (15.0, 30.0)
    pyramidal_width_mm: Range = (4.0, 8.0)
    pyramidal_level: Range = (0.25, 0.5)  # thickness / lobe thickness
    pyramidal_offset_mm: Range = (-3.0, 10.0)  # x of its base (mostly the patient's left)

    # -- salivary glands, background, markers --------------------------------------
    submandibular_lateral_mm: Range = (35.0, 50.0)  # |x| from the gland centre
    submandibular_cranial_mm: Range = (45.0, 65.0)  # above the gland centre
    submandibular_sigma_mm: Range = (6.0, 9.0)  # Gaussian sigma (FWHM 14-21 mm)
    parotid_lateral_mm: Range = (50.0, 70.0)
    parotid_below_top_mm: Range = (0.0, 15.0)  # centre below the top edge of the FOV
    parotid_sigma_mm: Range = (8.0, 12.0)
    parotid_ratio: Range = (0.7, 1.2)  # parotid peak / submandibular peak
    background_gradient: Range = (-0.2, 0.2)  # fractional change, centre -> top/bottom edge
    marker_prob: float = 0.3  # one or two point-source markers (jugular notch, side)
    marker_level: Range = (20.0, 80.0)  # peak / background
    marker_sigma_mm: float = 1.5
    texture_grid_px: int = 4  # texture correlation length, output pixels (coarse grid)

    # -- per finding: C = thyroid peak / background, S = salivary / thyroid peak ---
    normal_contrast: Range = (6.0, 15.0)
    normal_texture: Range = (0.05, 0.10)  # sigma of the log-normal texture exp(sigma g)
    normal_salivary: Range = (0.15, 0.5)
    graves_size: Range = (1.15, 1.6)
    graves_roundness: Range = (1.05, 1.25)  # extra width factor (rounder lobes)
    graves_contrast: Range = (20.0, 60.0)
    graves_texture: Range = (0.04, 0.08)
    graves_salivary: Range = (0.02, 0.10)
    hashimoto_size: Range = (0.9, 1.4)
    hashimoto_contrast: Range = (3.0, 25.0)
    hashimoto_texture: Range = (0.25, 0.5)
    hashimoto_salivary: Range = (0.15, 0.5)
    hashimoto_patches: tuple[int, int] = (1, 4)  # number of ill-defined patches
    hashimoto_patch_level: Range = (0.4, 0.8)  # patch activity / surround
    hashimoto_patch_sigma_mm: Range = (4.0, 8.0)
    subacute_size: Range = (1.0, 1.3)
    subacute_contrast: Range = (1.0, 2.5)
    subacute_texture: Range = (0.15, 0.35)
    subacute_salivary: Range = (2.0, 6.0)
    hot_nodule_diameter_mm: Range = (15.0, 40.0)
    hot_nodule_contrast: Range = (10.0, 40.0)  # nodule peak / background (alone)
    hot_nodule_rest: Range = (0.0, 0.15)  # rest of the gland / nodule (suppressed)
    hot_nodule_salivary: Range = (0.05, 0.3)  # salivary / nodule peak
    graves_hot_ratio: Range = (1.3, 2.5)  # Marine-Lenhart: nodule / surround
    hot_ratio: Range = (1.5, 4.0)  # nodule / surround beside another finding
    cold_nodule_diameter_mm: Range = (10.0, 35.0)
    cold_nodule_level: Range = (0.0, 0.3)  # defect / surround
    nodule_edge_mm: Range = (1.0, 3.0)  # soft edge (and contour bulge rim) width
    goitre_size: Range = (1.2, 2.0)  # hot+cold multinodular goitre enlargement
    goitre_nodules: tuple[int, int] = (2, 6)
    goitre_nodule_diameter_mm: Range = (8.0, 25.0)
    goitre_cold_level: Range = (0.0, 0.4)

    # -- imaging chain ---------------------------------------------------------------
    pinhole_prob: float = 0.5
    pinhole_fwhm_mm: Range = (4.0, 8.0)
    parallel_fwhm_mm: Range = (7.0, 11.0)
    scatter_weight: Range = (0.1, 0.25)
    scatter_fwhm_mm: Range = (25.0, 40.0)
    preset_count_prob: float = 0.7
    total_counts: Range = (1e5, 5e5)  # log-uniform
    # Preset-time mode: counts = N * activity / reference_activity, N as above, so a
    # gland with low uptake gives a noisy image. The reference is the mean activity
    # integral of normal images (bg-units x mm², measured with the defaults).
    reference_activity: float = 5.0e4
    shift_px: float = 6.0  # per-patient shift, uniform +-shift_px pixels at 128² (same mm at other sizes)
    rotation_deg: float = 8.0
    scale: float = 0.10  # size factor uniform in 1 +- scale
    poisson: str = "fast"  # "fast" (hash-based, see module doc) or "jax" (jax.random.poisson)


DEFAULT_PARAMS = PhantomParams()
SIZES = (64, 128, 256)


# ----------------------------------------------------------------------------------
# Per-image scalars: the layout
# ----------------------------------------------------------------------------------
class _Draws:
    """Uniform numbers for one image, drawn in one threefry call and handed out in
    order (cheaper than a split per parameter; the order fixes the meaning)."""

    def __init__(self, key, n=256):
        self._u = jax.random.uniform(key, (n,))
        self._i = 0

    def uniform(self, rng: Range, shape=()):
        n = int(np.prod(shape)) if shape else 1
        if self._i + n > self._u.shape[0]:
            raise RuntimeError("phantom: raise _Draws(n), more parameters than draws")
        u = self._u[self._i : self._i + n].reshape(shape)
        self._i += n
        return rng[0] + (rng[1] - rng[0]) * u

    def bernoulli(self, p, shape=()):
        return self.uniform((0.0, 1.0), shape) < p

    def log_uniform(self, rng: Range):
        return jnp.exp(self.uniform((math.log(rng[0]), math.log(rng[1]))))

    def integer(self, rng: tuple[int, int]):  # inclusive
        return jnp.floor(self.uniform((rng[0], rng[1] + 1.0 - 1e-4))).astype(jnp.int32)


def _pick(conditions_values, default):
    """First value whose condition holds, else default (a branch-free if/elif)."""
    out = default
    for cond, value in reversed(conditions_values):
        out = jnp.where(cond, value, out)
    return out


def _rot(v, cos, sin):
    return jnp.stack([cos * v[0] - sin * v[1], sin * v[0] + cos * v[1]])


def _layout(key, flags, params: PhantomParams = DEFAULT_PARAMS):
    """Every per-image random quantity, as scalars and small arrays (no images).

    Args:
      key: typed key for this image.
      flags: float32 ``[6]`` multi-hot findings.
    Returns a dict of arrays; lengths in mm in image coordinates (origin at the FOV
    centre), after the per-patient shift / rotation / scale.
    """
    p = params
    d = _Draws(key)
    f = flags > 0.5
    graves, hashimoto, subacute, hot, cold = f[_GRAVES], f[_HASHIMOTO], f[_SUBACUTE], f[_HOT], f[_COLD]
    goitre = hot & cold
    hot_alone = hot & ~cold & ~graves & ~hashimoto & ~subacute

    fov = d.uniform(p.fov_mm)
    # -- gland size and shape per finding --
    size = _pick(
        [
            (graves, d.uniform(p.graves_size)),
            (hashimoto, d.uniform(p.hashimoto_size)),
            (subacute, d.uniform(p.subacute_size)),
            (goitre, d.uniform(p.goitre_size)),
        ],
        1.0,
    )
    roundness = jnp.where(graves, d.uniform(p.graves_roundness), 1.0)
    exponent = d.uniform(p.lobe_exponent)
    exponent = jnp.where(graves, 2.0 + 0.5 * (exponent - 2.0), exponent)  # rounder
    half_len = 0.5 * d.uniform(p.lobe_length_mm) * size
    half_wid = 0.5 * d.uniform(p.lobe_width_mm) * size * roundness
    sep = d.uniform(p.lobe_separation_mm) * size
    tilt = jnp.deg2rad(d.uniform(p.lobe_tilt_deg, (2,)))
    pear = d.uniform(p.lobe_pear, (2,))
    right_ratio = d.uniform(p.right_lobe_ratio)
    # Image-left lobe is the patient's right one.
    lobe_scale = jnp.stack([right_ratio, 1.0])
    y0 = d.uniform(p.thyroid_offset_mm)
    isthmus_on = ~d.bernoulli(p.isthmus_absent_prob)
    isthmus_h = 0.5 * d.uniform(p.isthmus_height_mm) * size
    isthmus_level = d.uniform(p.isthmus_level) * isthmus_on
    isthmus_drop = d.uniform(p.isthmus_drop)
    pyr_on = d.bernoulli(jnp.where(graves, p.pyramidal_prob_graves, p.pyramidal_prob))
    pyr_half_len = 0.5 * d.uniform(p.pyramidal_length_mm) * size
    pyr_half_wid = 0.5 * d.uniform(p.pyramidal_width_mm)
    pyr_level = d.uniform(p.pyramidal_level) * pyr_on
    pyr_x = d.uniform(p.pyramidal_offset_mm)
    pyr_tilt = jnp.deg2rad(d.uniform((-10.0, 10.0)))

    # -- levels: gland concentration g (x background), texture, salivary --
    contrast = _pick(
        [
            (graves, d.uniform(p.graves_contrast)),
            (hashimoto, d.uniform(p.hashimoto_contrast)),
            (subacute, d.uniform(p.subacute_contrast)),
        ],
        d.uniform(p.normal_contrast),
    )
    texture = _pick(
        [
            (graves, d.uniform(p.graves_texture)),
            (hashimoto, d.uniform(p.hashimoto_texture)),
            (subacute, d.uniform(p.subacute_texture)),
        ],
        d.uniform(p.normal_texture),
    )
    hot_alone_peak = d.uniform(p.hot_nodule_contrast)
    gland_level = jnp.where(hot_alone, d.uniform(p.hot_nodule_rest) * hot_alone_peak, contrast)
    thyroid_peak = jnp.where(hot_alone, hot_alone_peak, contrast)
    salivary_rel = _pick(
        [
            (graves, d.uniform(p.graves_salivary)),
            (hashimoto, d.uniform(p.hashimoto_salivary)),
            (subacute, d.uniform(p.subacute_salivary)),
            (hot_alone, d.uniform(p.hot_nodule_salivary)),
        ],
        d.uniform(p.normal_salivary),
    )
    salivary_peak = salivary_rel * thyroid_peak

    # -- lobes in the patient frame (origin = gland centre) --
    side = jnp.array([-1.0, 1.0])  # image-left (patient right), image-right
    centres = jnp.stack([side * sep / 2, jnp.zeros(2)])  # [2(xy), 2(lobe)]
    # Along-axis unit vector points caudally and, for upper poles leaning outward,
    # medially: e_v = (-side sin t, cos t); across e_u = (cos t, side sin t).
    e_v = jnp.stack([-side * jnp.sin(tilt), jnp.cos(tilt)])
    e_u = jnp.stack([jnp.cos(tilt), side * jnp.sin(tilt)])
    a = half_len * lobe_scale  # [2]
    b = half_wid * lobe_scale
    b_mean = jnp.mean(b)

    # -- nodules: slot k in lobe side[k], at (vn, un) in that lobe's frame --
    k = jnp.arange(_MAX_NODULES)
    n_goitre = d.integer(p.goitre_nodules)
    active = jnp.where(goitre, k < n_goitre, (k == 0) & (hot | cold))
    goitre_kind_hot = jnp.where(k == 0, True, jnp.where(k == 1, False, d.bernoulli(0.5, (_MAX_NODULES,))))
    is_hot = jnp.where(goitre, goitre_kind_hot, hot)
    lobe_of = (d.uniform((0.0, 1.0), (_MAX_NODULES,)) < 0.5).astype(jnp.int32)
    vn = d.uniform((-0.5, 0.5), (_MAX_NODULES,))
    un = d.uniform((-0.3, 0.3), (_MAX_NODULES,))
    nod_c = centres[:, lobe_of] + vn * a[lobe_of] * e_v[:, lobe_of] + un * b[lobe_of] * e_u[:, lobe_of]
    diameter = jnp.where(
        goitre,
        d.uniform(p.goitre_nodule_diameter_mm, (_MAX_NODULES,)),
        jnp.where(
            hot,
            d.uniform(p.hot_nodule_diameter_mm, (_MAX_NODULES,)),
            d.uniform(p.cold_nodule_diameter_mm, (_MAX_NODULES,)),
        ),
    )
    radius = 0.5 * diameter
    edge = d.uniform(p.nodule_edge_mm, (_MAX_NODULES,))
    # Nodule / surround; a hot nodule alone has its own absolute level (below).
    hot_ratio = jnp.where(
        graves & ~goitre, d.uniform(p.graves_hot_ratio, (_MAX_NODULES,)), d.uniform(p.hot_ratio, (_MAX_NODULES,))
    )
    cold_ratio = jnp.where(
        goitre, d.uniform(p.goitre_cold_level, (_MAX_NODULES,)), d.uniform(p.cold_nodule_level, (_MAX_NODULES,))
    )
    nod_level = gland_level * jnp.where(is_hot, hot_ratio, cold_ratio)
    nod_level = jnp.where(hot_alone, hot_alone_peak, nod_level)
    # A nodule is a sphere: it thickens the gland where it bulges out of the lobe.
    nod_thick = jnp.clip(radius / b_mean, 0.5, 1.3) * active

    # -- Hashimoto patches (ill-defined cold patches) --
    kp = jnp.arange(_MAX_PATCHES)
    patch_on = hashimoto & (kp < d.integer(p.hashimoto_patches))
    patch_lobe = (d.uniform((0.0, 1.0), (_MAX_PATCHES,)) < 0.5).astype(jnp.int32)
    pv = d.uniform((-0.6, 0.6), (_MAX_PATCHES,))
    pu = d.uniform((-0.4, 0.4), (_MAX_PATCHES,))
    patch_c = centres[:, patch_lobe] + pv * a[patch_lobe] * e_v[:, patch_lobe] + pu * b[patch_lobe] * e_u[:, patch_lobe]
    patch_sigma = d.uniform(p.hashimoto_patch_sigma_mm, (_MAX_PATCHES,))
    patch_depth = (1.0 - d.uniform(p.hashimoto_patch_level, (_MAX_PATCHES,))) * patch_on

    # -- isthmus and pyramidal lobe centres --
    isthmus_c = jnp.stack([0.0, isthmus_drop * half_len])
    pyr_c = jnp.stack([pyr_x, isthmus_c[1] - isthmus_h - pyr_half_len])

    # -- salivary glands (relative to the gland centre; parotids to the FOV top) --
    sm_x = d.uniform(p.submandibular_lateral_mm, (2,)) * side
    sm_y = -d.uniform(p.submandibular_cranial_mm, (2,))
    sm_sigma = d.uniform(p.submandibular_sigma_mm, (2,))
    par_x = d.uniform(p.parotid_lateral_mm, (2,)) * side
    par_y = -fov / 2 + d.uniform(p.parotid_below_top_mm, (2,)) - y0
    par_sigma = d.uniform(p.parotid_sigma_mm, (2,))
    par_level = d.uniform(p.parotid_ratio, (2,))
    sal_c = jnp.stack([jnp.concatenate([sm_x, par_x]), jnp.concatenate([sm_y, par_y])])
    sal_sigma = jnp.concatenate([sm_sigma, par_sigma])
    sal_level = salivary_peak * jnp.concatenate([jnp.ones(2), par_level])

    # -- markers: jugular-notch point source and/or a side marker --
    marker_on = d.bernoulli(p.marker_prob)
    marker_two = d.bernoulli(0.5)
    notch = jnp.stack([0.0, d.uniform((35.0, 50.0))])
    side_m = jnp.stack(
        [d.uniform((0.32, 0.42)) * fov * jnp.where(d.bernoulli(0.5), 1.0, -1.0), d.uniform((-0.3, 0.3)) * fov - y0]
    )
    marker_c = jnp.stack([notch, side_m], axis=1)
    marker_level = d.uniform(p.marker_level, (2,)) * marker_on * jnp.stack([1.0, marker_two])

    # -- per-patient shift / rotation / scale, applied to the anatomy's parameters --
    shift_mm = d.uniform((-p.shift_px, p.shift_px), (2,)) * fov / 128.0
    phi = jnp.deg2rad(d.uniform((-p.rotation_deg, p.rotation_deg)))
    s = d.uniform((1.0 - p.scale, 1.0 + p.scale))
    cos, sin = jnp.cos(phi), jnp.sin(phi)
    origin = jnp.stack([0.0, y0]) + shift_mm

    def place(c):  # patient-frame points [2, n] -> image mm
        return _rot(c * s, cos, sin) + origin[:, None]

    pinhole = d.bernoulli(p.pinhole_prob)
    out = dict(
        fov=fov,
        lobe_c=place(centres),
        lobe_ev=_rot(e_v, cos, sin),
        lobe_eu=_rot(e_u, cos, sin),
        lobe_a=a * s,
        lobe_b=b * s,
        lobe_pear=pear,
        lobe_exponent=exponent,
        lobe_thick=b / b_mean,
        isthmus_c=place(isthmus_c[:, None])[:, 0],
        isthmus_hx=(sep / 2 + 0.3 * half_wid) * s,
        isthmus_hy=isthmus_h * s,
        isthmus_level=isthmus_level,
        pyr_c=place(pyr_c[:, None])[:, 0],
        pyr_hx=pyr_half_wid * s,
        pyr_hy=pyr_half_len * s,
        pyr_level=pyr_level,
        pyr_angle=phi + pyr_tilt,
        rot_cos=cos,
        rot_sin=sin,
        gland_level=gland_level,
        texture=texture,
        nod_c=jnp.where(active, place(nod_c), 1e4),
        nod_r=radius * s,
        nod_edge=edge * s,
        nod_level=nod_level,
        nod_thick=nod_thick,
        nod_active=active,
        nod_hot=is_hot & active,
        patch_c=place(patch_c),
        patch_sigma=patch_sigma * s,
        patch_depth=patch_depth,
        sal_c=place(sal_c),
        sal_sigma=sal_sigma * s,
        sal_level=sal_level,
        marker_c=place(marker_c),
        marker_level=marker_level,
        gradient=d.uniform(p.background_gradient),
        pinhole=pinhole,
        psf_fwhm=jnp.where(pinhole, d.uniform(p.pinhole_fwhm_mm), d.uniform(p.parallel_fwhm_mm)),
        scatter_weight=d.uniform(p.scatter_weight),
        scatter_fwhm=d.uniform(p.scatter_fwhm_mm),
        preset_count=d.bernoulli(p.preset_count_prob),
        counts=d.log_uniform(p.total_counts),
    )
    return out


# ----------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------
def _axis(n, fov):
    """Pixel-centre coordinates (mm) of an n-pixel axis spanning fov, centred on 0."""
    return ((jnp.arange(n, dtype=jnp.float32) + 0.5) / n - 0.5) * fov


def _gland_thickness(lay, size, params):
    """Projected gland thickness (lobe peak = 1) rendered at ``supersample``² sub-pixels
    per pixel and averaged down to ``[size, size]``: lobes, isthmus, pyramidal lobe.

    Each sub-pixel grid is evaluated on its own and the grids summed: XLA:CPU fuses
    that into one loop, whereas a 2x-resolution image reshaped and averaged ran ~15x
    slower (the reduction was not fused with the rendering)."""
    f = params.supersample
    px = lay["fov"] / size
    base = _axis(size, lay["fov"])
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
    # Isthmus: an ellipse between the lobes (rotated with the patient).
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


def _gaussians(centres, sigmas, weights, x, y):
    """Sum of axis-aligned 2-D Gaussian blobs as one matmul: ``[H, k] @ [k, W]``.

    centres ``[2, k]`` (mm), sigmas ``[k]``, weights ``[k]`` (peak heights)."""
    gx = jnp.exp(-0.5 * ((x[None, :] - centres[0][:, None]) / sigmas[:, None]) ** 2)  # [k, W]
    gy = jnp.exp(-0.5 * ((y[:, None] - centres[1][None, :]) / sigmas[None, :]) ** 2)  # [H, k]
    return (gy * weights[None, :]) @ gx


@functools.cache
def _texture_basis(size: int, grid: int) -> np.ndarray:
    """``[size, size // grid]`` Gaussian interpolation rows of unit L2 norm, so
    ``U n Uᵀ`` of white unit noise ``n`` is a smooth field with unit variance."""
    m = size // grid
    i = np.arange(size)[:, None] + 0.5
    k = (np.arange(m)[None, :] + 0.5) * grid
    u = np.exp(-0.5 * ((i - k) / (0.8 * grid)) ** 2)
    return (u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float32)


def _psf_half_width(size, params):
    """Static kernel half-width (pixels): 3 sigma of the widest PSF at the finest pixel."""
    fwhm = max(params.pinhole_fwhm_mm[1], params.parallel_fwhm_mm[1])
    return int(math.ceil(3.0 * fwhm * _FWHM_TO_SIGMA / (params.fov_mm[0] / size)))


def _psf_blur(image, sigma_px, half_width):
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


def _scatter_blur(image, sigma_px, grid=4):
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


def _expected_counts(key, lay, size, params):
    """Noise-free counts ``[size, size]`` and the pre-blur thyroid support / nodule
    masks (for tests and figures)."""
    fov = lay["fov"]
    px = fov / size
    x = _axis(size, fov)
    y = _axis(size, fov)
    support = _gland_thickness(lay, size, params)
    # Nodules: spheres that may bulge the contour, and soft-edged discs that set the
    # level; painted in slot order (later paints over earlier).
    level = jnp.full((size, size), lay["gland_level"], jnp.float32)
    nodule_mask = jnp.zeros((size, size), jnp.float32)
    for k in range(_MAX_NODULES):  # inactive slots sit far outside the FOV
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
    basis = jnp.asarray(_texture_basis(size, grid))
    k_tex, _ = jax.random.split(key)
    white = jax.random.normal(k_tex, (size // grid, size // grid))
    g = basis @ white @ basis.T
    patches = 1.0 - _gaussians(lay["patch_c"], lay["patch_sigma"], lay["patch_depth"], x, y)
    thyroid = support * level * jnp.exp(lay["texture"] * g) * jnp.maximum(patches, 0.1)
    # Background (with its cranio-caudal gradient), salivary glands and markers.
    background = 1.0 + lay["gradient"] * (y / (fov / 2))
    blobs = _gaussians(
        jnp.concatenate([lay["sal_c"], lay["marker_c"]], axis=1),
        jnp.concatenate([lay["sal_sigma"], jnp.full((2,), params.marker_sigma_mm)]),
        jnp.concatenate([lay["sal_level"], lay["marker_level"]]),
        x,
        y,
    )
    activity = thyroid + background[:, None] + blobs
    # Collimator PSF + scatter tail: (1-w) G_psf + w G_scatter, each separable.
    w = lay["scatter_weight"]
    psf = _psf_blur(activity, lay["psf_fwhm"] * _FWHM_TO_SIGMA / px, _psf_half_width(size, params))
    scatter = _scatter_blur(activity, lay["scatter_fwhm"] * _FWHM_TO_SIGMA / px)
    image = (1.0 - w) * psf + w * scatter
    # Counts: preset count (log-uniform total), or preset time (total ∝ activity).
    integral = activity.sum() * px * px
    total = jnp.where(lay["preset_count"], lay["counts"], lay["counts"] * integral / params.reference_activity)
    expected = image * (total / image.sum())
    return expected, dict(
        thyroid_support=support,
        nodule_mask=nodule_mask,
        thyroid_activity=thyroid,
        activity=activity,
        activity_integral=integral,
        total=total,
    )


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


def _poisson_fast(key, lam, *, small_iters=28, rounds=3):
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


def _poisson(key, lam, params):
    if params.poisson == "jax":
        return jax.random.poisson(key, lam).astype(jnp.float32)
    if params.poisson != "fast":
        raise ValueError(f"PhantomParams.poisson must be 'fast' or 'jax', got {params.poisson!r}")
    return _poisson_fast(key, lam)


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------
def _set_table():
    return jnp.asarray(findings.DEFAULT.set_table)


def render(key, finding_set_id, *, size=128, params=DEFAULT_PARAMS, return_aux=False):
    """One image (unbatched, not jitted: :func:`simulate` is the batched, jitted form).

    Args:
      key: typed key (scalar).
      finding_set_id: int32 scalar, index into ``findings.DEFAULT.finding_sets``.
    Returns float32 ``[size, size, 1]`` Poisson counts; with ``return_aux`` also a
    dict: ``expected`` ``[size, size]`` noise-free counts, ``thyroid_support`` and
    ``nodule_mask`` ``[size, size]`` (pre-blur), ``layout`` (every sampled parameter,
    lengths in mm), ``mm_per_px``, ``total`` (expected total counts).
    """
    if size not in SIZES:
        raise ValueError(f"phantom size must be one of {SIZES}, got {size}")
    if params.poisson not in ("fast", "jax"):
        raise ValueError(f"PhantomParams.poisson must be 'fast' or 'jax', got {params.poisson!r}")
    k_layout, k_texture, k_noise = jax.random.split(key, 3)
    flags = _set_table()[finding_set_id]
    lay = _layout(k_layout, flags, params)
    expected, aux = _expected_counts(k_texture, lay, size, params)
    image = _poisson(k_noise, expected, params)[..., None]
    if not return_aux:
        return image
    aux.update(expected=expected, layout=lay, mm_per_px=lay["fov"] / size)
    return image, aux


def simulate(keys, finding_set_ids, *, size=128, params=DEFAULT_PARAMS) -> jax.Array:
    """Batch of phantom scintigrams (jitted; ``size`` and ``params`` static).

    Args:
      keys: typed key array ``[B]`` (one per image; see :func:`example_keys`).
      finding_set_ids: int32 ``[B]``, index into ``findings.DEFAULT.finding_sets``.
      size: 64, 128 or 256.
      params: :class:`PhantomParams`.
    Returns float32 ``[B, size, size, 1]`` raw counts (non-negative integers).
    """
    # One jit entry with every static argument given explicitly: a default left out
    # and the same value passed in would otherwise compile twice.
    return _simulate(keys, jnp.asarray(finding_set_ids, jnp.int32), size, params)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _simulate(keys, finding_set_ids, size, params):
    return jax.vmap(lambda k, i: render(k, i, size=size, params=params))(keys, finding_set_ids)


def example_keys(seed: int, indices) -> jax.Array:
    """Typed key array ``[N]``: ``fold_in(key(seed), i)`` for each index, so example
    ``i`` is the same whatever batch it is generated in."""
    indices = jnp.asarray(indices, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(indices)


@functools.partial(jax.jit, static_argnames=("n",))
def sample_finding_set_ids(key, n: int, *, cross_fraction=0.25) -> jax.Array:
    """int32 ``[n]``: a cross-feature set (uniform over ``DEFAULT.cross_set_ids``)
    with probability ``cross_fraction``, else a single-feature set (uniform over
    ``DEFAULT.single_set_ids``)."""
    singles = jnp.asarray(findings.DEFAULT.single_set_ids, jnp.int32)
    crosses = jnp.asarray(findings.DEFAULT.cross_set_ids, jnp.int32)
    k_sub, k_single, k_cross = jax.random.split(key, 3)
    is_cross = jax.random.uniform(k_sub, (n,)) < cross_fraction
    single = singles[jax.random.randint(k_single, (n,), 0, singles.shape[0])]
    cross = crosses[jax.random.randint(k_cross, (n,), 0, crosses.shape[0])]
    return jnp.where(is_cross, cross, single)


def make_batch(key, batch_size: int, *, size=128, cross_fraction=0.25, params=DEFAULT_PARAMS) -> dict:
    """A labelled batch generated on the device.

    Returns ``{'image': float32 [B, size, size, 1] raw counts, 'findings': float32
    [B, 6] multi-hot, 'finding_set': int32 [B], 'subset': int32 [B]}`` (subset 0 =
    single-feature, 1 = cross-feature).

    Not itself jitted, so that it reuses :func:`simulate`'s compiled program (one
    compilation per ``batch_size``/``size``/``params``); it traces fine inside a
    caller's ``jax.jit``.
    """
    k_sets, k_images = jax.random.split(key)
    sets = sample_finding_set_ids(k_sets, batch_size, cross_fraction=cross_fraction)
    keys = jax.random.split(k_images, batch_size)
    images = simulate(keys, sets, size=size, params=params)
    labels = _set_table()[sets]
    return {
        "image": images,
        "findings": labels,
        "finding_set": sets,
        "subset": (labels.sum(-1) > 1).astype(jnp.int32),
    }


@functools.partial(jax.jit, static_argnames=("size", "params"))
def describe(keys, finding_set_ids, *, size=128, params=DEFAULT_PARAMS) -> dict:
    """What :func:`simulate` will draw for these keys, without rendering (cheap).

    For tests and figures. Returns a dict of arrays, batch-first, pixel units with
    (0, 0) the centre of the top-left pixel, x = column:
      ``nodule_centre_px`` float32 ``[B, 6, 2]`` (x, y), ``nodule_radius_px`` ``[B, 6]``,
      ``nodule_active`` bool ``[B, 6]``, ``nodule_hot`` bool ``[B, 6]``,
      ``lobe_centre_px`` ``[B, 2, 2]``, ``mm_per_px`` ``[B]``,
      ``preset_count`` bool ``[B]`` (else preset time), ``counts`` ``[B]`` (the total
      in preset-count mode; the reference total in preset-time mode).
    """

    def one(key, set_id):
        lay = _layout(jax.random.split(key, 3)[0], _set_table()[set_id], params)
        mm = lay["fov"] / size

        def to_px(c):  # [2, n] mm -> [n, 2] px
            return (c / mm + size / 2 - 0.5).T

        return dict(
            nodule_centre_px=to_px(lay["nod_c"]),
            nodule_radius_px=lay["nod_r"] / mm,
            nodule_active=lay["nod_active"],
            nodule_hot=lay["nod_hot"],
            lobe_centre_px=to_px(lay["lobe_c"]),
            mm_per_px=mm,
            preset_count=lay["preset_count"],
            counts=lay["counts"],
        )

    return jax.vmap(one)(keys, finding_set_ids)
