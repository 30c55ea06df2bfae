"""The layout: every per-image random quantity of the anatomy, as scalars and small
arrays (no images). Each draw is keyed by its name (:class:`sampling.Draws`), and
names are those of the :class:`PhantomParams` fields they sample.

Coordinates: mm, origin at the FOV centre, x to the right (the patient's left in
this anterior view, so the patient's right lobe is on the image's left), y downwards
(caudal). Values are after the per-patient shift / rotation / scale.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxthyroid.phantom.params import (
    COLD,
    DEFAULT_PARAMS,
    GRAVES,
    HASHIMOTO,
    HOT,
    MAX_NODULES,
    MAX_PATCHES,
    SUBACUTE,
    PhantomParams,
)
from jaxthyroid.phantom.sampling import Draws, pick


def _rot(v, cos, sin):
    return jnp.stack([cos * v[0] - sin * v[1], sin * v[0] + cos * v[1]])


def layout(d: Draws, flags, params: PhantomParams = DEFAULT_PARAMS, magnification=None) -> dict:
    """Every per-image random quantity of the anatomy, as a dict of arrays (lengths in mm).

    Args:
      d: the image's named draws.
      flags: float32 ``[6]`` multi-hot findings.
      magnification: the pinhole zoom (the FOV covers fov / magnification of the
        patient), or None for none.
    The draws do not depend on ``flags`` (flags only select among drawn values), so
    the same key with other findings is the same patient with other findings.
    """
    p = params
    f = flags > 0.5
    graves, hashimoto, subacute, hot, cold = f[GRAVES], f[HASHIMOTO], f[SUBACUTE], f[HOT], f[COLD]
    goitre = hot & cold
    hot_alone = hot & ~cold & ~graves & ~hashimoto & ~subacute

    fov = d.uniform("fov_mm", p.fov_mm)
    if magnification is not None:
        fov = fov / magnification
    # -- gland size and shape per finding --
    size = pick(
        [
            (graves, d.uniform("graves_size", p.graves_size)),
            (hashimoto, d.uniform("hashimoto_size", p.hashimoto_size)),
            (subacute, d.uniform("subacute_size", p.subacute_size)),
            (goitre, d.uniform("goitre_size", p.goitre_size)),
        ],
        1.0,
    )
    roundness = jnp.where(graves, d.uniform("graves_roundness", p.graves_roundness), 1.0)
    exponent = d.uniform("lobe_exponent", p.lobe_exponent)
    exponent = jnp.where(graves, 2.0 + p.graves_exponent_shrink * (exponent - 2.0), exponent)  # rounder
    half_len = 0.5 * d.uniform("lobe_length_mm", p.lobe_length_mm) * size
    half_wid = 0.5 * d.uniform("lobe_width_mm", p.lobe_width_mm) * size * roundness
    sep = d.uniform("lobe_separation_mm", p.lobe_separation_mm) * size
    tilt = jnp.deg2rad(d.uniform("lobe_tilt_deg", p.lobe_tilt_deg, (2,)))
    pear = d.uniform("lobe_pear", p.lobe_pear, (2,))
    right_ratio = d.uniform("right_lobe_ratio", p.right_lobe_ratio)
    # Image-left lobe is the patient's right one.
    lobe_scale = jnp.stack([right_ratio, 1.0])
    y0 = d.uniform("thyroid_offset_mm", p.thyroid_offset_mm)
    isthmus_on = ~d.bernoulli("isthmus_absent_prob", p.isthmus_absent_prob)
    isthmus_h = 0.5 * d.uniform("isthmus_height_mm", p.isthmus_height_mm) * size
    isthmus_level = d.uniform("isthmus_level", p.isthmus_level) * isthmus_on
    isthmus_drop = d.uniform("isthmus_drop", p.isthmus_drop)
    pyr_on = d.bernoulli("pyramidal_prob", jnp.where(graves, p.pyramidal_prob_graves, p.pyramidal_prob))
    pyr_half_len = 0.5 * d.uniform("pyramidal_length_mm", p.pyramidal_length_mm) * size
    pyr_half_wid = 0.5 * d.uniform("pyramidal_width_mm", p.pyramidal_width_mm)
    pyr_level = d.uniform("pyramidal_level", p.pyramidal_level) * pyr_on
    pyr_x = d.uniform("pyramidal_offset_mm", p.pyramidal_offset_mm)
    pyr_tilt = jnp.deg2rad(d.uniform("pyramidal_tilt_deg", p.pyramidal_tilt_deg))

    # -- levels: gland concentration (x background), texture, salivary --
    def per_finding(what, shape=()):  # normal's value is the default
        return pick(
            [
                (graves, d.uniform(f"graves_{what}", getattr(p, f"graves_{what}"), shape)),
                (hashimoto, d.uniform(f"hashimoto_{what}", getattr(p, f"hashimoto_{what}"), shape)),
                (subacute, d.uniform(f"subacute_{what}", getattr(p, f"subacute_{what}"), shape)),
            ],
            d.uniform(f"normal_{what}", getattr(p, f"normal_{what}"), shape),
        )

    contrast = per_finding("contrast")
    texture = per_finding("texture")
    hot_alone_peak = d.uniform("hot_nodule_contrast", p.hot_nodule_contrast)
    gland_level = jnp.where(hot_alone, d.uniform("hot_nodule_rest", p.hot_nodule_rest) * hot_alone_peak, contrast)
    thyroid_peak = jnp.where(hot_alone, hot_alone_peak, contrast)
    salivary_rel = jnp.where(
        hot_alone,
        d.uniform("hot_nodule_salivary", p.hot_nodule_salivary),
        per_finding("salivary"),
    )
    salivary_peak = salivary_rel * thyroid_peak
    if p.salivary_scale != (1.0, 1.0):
        salivary_peak = salivary_peak * d.uniform("salivary_scale", p.salivary_scale)

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

    def in_lobe(prefix, n, v_range, u_range):  # n points inside random lobes -> [2, n]
        lobe = d.bernoulli(f"{prefix}_right_lobe", p.nodule_right_lobe_prob, (n,)).astype(jnp.int32)
        v = d.uniform(f"{prefix}_v", v_range, (n,))
        u = d.uniform(f"{prefix}_u", u_range, (n,))
        return centres[:, lobe] + v * a[lobe] * e_v[:, lobe] + u * b[lobe] * e_u[:, lobe]

    # -- nodules: slot k in a random lobe, inside it --
    k = jnp.arange(MAX_NODULES)
    n_goitre = d.integer("goitre_nodules", p.goitre_nodules)
    active = jnp.where(goitre, k < n_goitre, (k == 0) & (hot | cold))
    goitre_kind_hot = jnp.where(
        k == 0, True, jnp.where(k == 1, False, d.bernoulli("goitre_hot_prob", p.goitre_hot_prob, (MAX_NODULES,)))
    )
    is_hot = jnp.where(goitre, goitre_kind_hot, hot)
    nod_c = in_lobe("nodule", MAX_NODULES, p.nodule_v, p.nodule_u)
    diameter = jnp.where(
        goitre,
        d.uniform("goitre_nodule_diameter_mm", p.goitre_nodule_diameter_mm, (MAX_NODULES,)),
        jnp.where(
            hot,
            d.uniform("hot_nodule_diameter_mm", p.hot_nodule_diameter_mm, (MAX_NODULES,)),
            d.uniform("cold_nodule_diameter_mm", p.cold_nodule_diameter_mm, (MAX_NODULES,)),
        ),
    )
    radius = 0.5 * diameter
    edge = d.uniform("nodule_edge_mm", p.nodule_edge_mm, (MAX_NODULES,))
    # Nodule / surround; a hot nodule alone has its own absolute level (below).
    hot_ratio = jnp.where(
        graves & ~goitre,
        d.uniform("graves_hot_ratio", p.graves_hot_ratio, (MAX_NODULES,)),
        d.uniform("hot_ratio", p.hot_ratio, (MAX_NODULES,)),
    )
    cold_ratio = jnp.where(
        goitre,
        d.uniform("goitre_cold_level", p.goitre_cold_level, (MAX_NODULES,)),
        d.uniform("cold_nodule_level", p.cold_nodule_level, (MAX_NODULES,)),
    )
    nod_level = gland_level * jnp.where(is_hot, hot_ratio, cold_ratio)
    nod_level = jnp.where(hot_alone, hot_alone_peak, nod_level)
    # A nodule is a sphere: it thickens the gland where it bulges out of the lobe.
    nod_thick = jnp.clip(radius / b_mean, *p.nodule_thickness) * active

    # -- Hashimoto patches (ill-defined cold patches) --
    kp = jnp.arange(MAX_PATCHES)
    patch_on = hashimoto & (kp < d.integer("hashimoto_patches", p.hashimoto_patches))
    patch_c = in_lobe("hashimoto_patch", MAX_PATCHES, p.hashimoto_patch_v, p.hashimoto_patch_u)
    patch_sigma = d.uniform("hashimoto_patch_sigma_mm", p.hashimoto_patch_sigma_mm, (MAX_PATCHES,))
    patch_depth = (1.0 - d.uniform("hashimoto_patch_level", p.hashimoto_patch_level, (MAX_PATCHES,))) * patch_on

    # -- isthmus and pyramidal lobe centres --
    isthmus_c = jnp.stack([0.0, isthmus_drop * half_len])
    pyr_c = jnp.stack([pyr_x, isthmus_c[1] - isthmus_h - pyr_half_len])

    # -- salivary glands (relative to the gland centre; parotids to the FOV top) --
    sm_x = d.uniform("submandibular_lateral_mm", p.submandibular_lateral_mm, (2,)) * side
    sm_y = -d.uniform("submandibular_cranial_mm", p.submandibular_cranial_mm, (2,))
    sm_sigma = d.uniform("submandibular_sigma_mm", p.submandibular_sigma_mm, (2,))
    par_x = d.uniform("parotid_lateral_mm", p.parotid_lateral_mm, (2,)) * side
    par_y = -fov / 2 + d.uniform("parotid_below_top_mm", p.parotid_below_top_mm, (2,)) - y0
    par_sigma = d.uniform("parotid_sigma_mm", p.parotid_sigma_mm, (2,))
    par_level = d.uniform("parotid_ratio", p.parotid_ratio, (2,))
    sal_c = jnp.stack([jnp.concatenate([sm_x, par_x]), jnp.concatenate([sm_y, par_y])])
    sal_sigma = jnp.concatenate([sm_sigma, par_sigma])
    sal_level = salivary_peak * jnp.concatenate([jnp.ones(2), par_level])

    # -- markers: jugular-notch point source and/or a side marker --
    marker_on = d.bernoulli("marker_prob", p.marker_prob)
    marker_two = d.bernoulli("marker_two_prob", p.marker_two_prob)
    notch = jnp.stack([0.0, d.uniform("marker_notch_mm", p.marker_notch_mm)])
    side_m = jnp.stack(
        [
            d.uniform("marker_side_x_fov", p.marker_side_x_fov) * fov * d.sign("marker_side_sign"),
            d.uniform("marker_side_y_fov", p.marker_side_y_fov) * fov - y0,
        ]
    )
    marker_c = jnp.stack([notch, side_m], axis=1)
    marker_level = d.uniform("marker_level", p.marker_level, (2,)) * marker_on * jnp.stack([1.0, marker_two])

    # -- per-patient shift / rotation / scale, applied to the anatomy's parameters --
    shift_mm = d.uniform("shift_px", (-p.shift_px, p.shift_px), (2,)) * fov / 128.0
    phi = jnp.deg2rad(d.uniform("rotation_deg", (-p.rotation_deg, p.rotation_deg)))
    s = d.uniform("scale", (1.0 - p.scale, 1.0 + p.scale))
    cos, sin = jnp.cos(phi), jnp.sin(phi)
    origin = jnp.stack([0.0, y0]) + shift_mm

    def place(c):  # patient-frame points [2, n] -> image mm
        return _rot(c * s, cos, sin) + origin[:, None]

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
        isthmus_hx=(sep / 2 + p.isthmus_overlap * half_wid) * s,
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
        nod_c=jnp.where(active, place(nod_c), 1e4),  # inactive slots far outside the FOV
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
        gradient=d.uniform("background_gradient", p.background_gradient),
    )
    if p.oesophagus_prob > 0:  # a vertical band: x of its axis (image mm), sigma, level
        on = d.bernoulli("oesophagus_prob", p.oesophagus_prob)
        out.update(
            oesophagus_x=origin[0] + s * d.uniform("oesophagus_offset_mm", p.oesophagus_offset_mm),
            oesophagus_sigma=s * d.uniform("oesophagus_sigma_mm", p.oesophagus_sigma_mm),
            oesophagus_level=on * d.uniform("oesophagus_level", p.oesophagus_level),
        )
    return out
