"""Every number of the phantom simulator: :class:`PhantomParams` (DESIGN §3).

Ranges are ``(low, high)``, sampled uniformly per image unless noted; lengths in mm;
levels relative to the background concentration (``C``) or to the thyroid peak
(``S``). Each field's comment gives its source or the reason for its value. Sources
named "DESIGN §3" are the literature figures collected there (Seret 2006 phantom
study; uptake ranges from UK and Turkish series; Hashimoto and Marine-Lenhart case
series). Every random draw of an image is keyed by the name of the field it samples
(:mod:`jaxthyroid.phantom.sampling`), so a new field leaves the others' draws alone.
"""

from __future__ import annotations

import dataclasses
import math

Range = tuple[float, float]

# Finding indices in the multi-hot label (DESIGN §2 order).
NORMAL, GRAVES, HASHIMOTO, SUBACUTE, HOT, COLD = range(6)
MAX_NODULES = 6  # hot+cold goitre: 2-6 nodules; every other set has at most 1
MAX_PATCHES = 4  # Hashimoto: 1-4 ill-defined patches
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
SIZES = (64, 128, 256)


@dataclasses.dataclass(frozen=True)
class PhantomParams:
    """Every numeric range of the simulator (see the module docstring for units).

    Frozen and made of tuples, so it is hashable and can be a static jit argument.
    """

    # -- field of view and sampling -------------------------------------------------
    fov_mm: Range = (160.0, 220.0)  # square field of view (1.25-1.7 mm/px at 128²), DESIGN §3
    # Gland is rendered at this many sub-pixels per side and binned (sum) down: its edges
    # are sharp before the PSF; the rest of the activity map is smooth (DESIGN §3 "2x").
    supersample: int = 2

    # -- thyroid geometry (normal gland), DESIGN §3 --------------------------------
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
    isthmus_level: Range = (0.25, 0.5)  # isthmus thickness / lobe thickness (thin band on scans)
    isthmus_drop: Range = (0.1, 0.3)  # isthmus centre below lobe centres, x lobe half-length
    # Isthmus half-width beyond the lobe centres, x lobe half-width: reaches into the
    # lobes so the union has no gap (geometry, not a literature figure).
    isthmus_overlap: float = 0.3
    pyramidal_prob: float = 0.15
    pyramidal_prob_graves: float = 0.40
    pyramidal_length_mm: Range = (15.0, 30.0)
    pyramidal_width_mm: Range = (4.0, 8.0)
    pyramidal_level: Range = (0.25, 0.5)  # thickness / lobe thickness
    pyramidal_offset_mm: Range = (-3.0, 10.0)  # x of its base (mostly the patient's left)
    pyramidal_tilt_deg: Range = (-10.0, 10.0)  # off the midline: it ascends roughly vertically
    # Graves: lobes rounder: exponent pulled this far towards 2 (an ellipse).
    graves_exponent_shrink: float = 0.5

    # -- salivary glands, background, markers --------------------------------------
    submandibular_lateral_mm: Range = (35.0, 50.0)  # |x| from the gland centre, DESIGN §3
    submandibular_cranial_mm: Range = (45.0, 65.0)  # above the gland centre, DESIGN §3
    submandibular_sigma_mm: Range = (6.0, 9.0)  # Gaussian sigma (FWHM 14-21 mm)
    parotid_lateral_mm: Range = (50.0, 70.0)
    parotid_below_top_mm: Range = (0.0, 15.0)  # centre below the top edge of the FOV
    parotid_sigma_mm: Range = (8.0, 12.0)
    parotid_ratio: Range = (0.7, 1.2)  # parotid peak / submandibular peak
    background_gradient: Range = (-0.2, 0.2)  # fractional change, centre -> top/bottom edge, DESIGN §3
    marker_prob: float = 0.3  # one or two point-source markers (jugular notch, side)
    marker_two_prob: float = 0.5  # given markers, a side marker as well as the notch one
    marker_level: Range = (20.0, 80.0)  # peak / background
    marker_sigma_mm: float = 1.5
    # Jugular-notch marker below the gland centre: the notch lies ~1 lobe length below
    # the lobe centres on anterior views.
    marker_notch_mm: Range = (35.0, 50.0)
    # Side marker: |x| as a fraction of the FOV (near the edge, outside the neck), and
    # y as a fraction of the FOV about the gland centre.
    marker_side_x_fov: Range = (0.32, 0.42)
    marker_side_y_fov: Range = (-0.3, 0.3)
    texture_grid_px: int = 4  # texture correlation length, output pixels (coarse grid)
    texture_smoothing: float = 0.8  # interpolation sigma, x texture_grid_px (smooth, not blocky)

    # -- per finding: C = thyroid peak / background, S = salivary / thyroid peak ---
    # DESIGN §3 throughout.
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
    # Patch centres in the lobe frame, x lobe half-length (v) and half-width (u): inside
    # the lobe, where a patch reads as a patch, not as a missing pole.
    hashimoto_patch_v: Range = (-0.6, 0.6)
    hashimoto_patch_u: Range = (-0.4, 0.4)
    hashimoto_patch_floor: float = 0.1  # overlapping patches never leave less than this
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
    # Nodule centres in the lobe frame, x lobe half-length (v) and half-width (u): a
    # nodule sits inside its lobe (it may bulge the contour, never float free of it).
    nodule_v: Range = (-0.5, 0.5)
    nodule_u: Range = (-0.3, 0.3)
    nodule_right_lobe_prob: float = 0.5  # no side preference
    # Bulge: a nodule's projected thickness / the lobe's, as radius / mean lobe
    # half-width clipped to this range (a sphere in a lobe of about its own depth).
    nodule_thickness: Range = (0.5, 1.3)
    goitre_size: Range = (1.2, 2.0)  # hot+cold multinodular goitre enlargement
    goitre_nodules: tuple[int, int] = (2, 6)
    goitre_nodule_diameter_mm: Range = (8.0, 25.0)
    goitre_cold_level: Range = (0.0, 0.4)
    goitre_hot_prob: float = 0.5  # kind of goitre nodules 3-6 (1 is hot, 2 is cold)

    # -- imaging chain, DESIGN §3 ----------------------------------------------------
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
    poisson: str = "fast"  # "fast" (hash-based, see imaging.py) or "jax" (jax.random.poisson)

    # -- domain randomisation (issue 14): off at these defaults ---------------------
    # Each is switched on by a regime (REGIMES below); at the defaults the simulator
    # traces exactly the step-1 program (static branches), so default images stay put.
    # Pinhole zoom: the camera sees fov / m of the patient, magnified onto the detector
    # (pinhole thyroid views are magnified ~1.5-3x: Seret 2006; EANM thyroid guideline).
    pinhole_magnification: Range = (1.0, 1.0)
    # Pinhole radial distortion: a point at normalised radius rho (1 = the FOV edge)
    # appears at rho (1 + k rho²) (the oblique, depth-dependent pinhole projection).
    pinhole_distortion: Range = (0.0, 0.0)
    # Pinhole position-dependent resolution (the aperture's effective diameter grows
    # off-axis): the PSF at normalised radius rho is the on-axis one blended with one
    # (1 + g) times wider, by weight min(rho², 1): the width grows from FWHM on axis
    # to FWHM (1 + g) at the middle of an edge.
    pinhole_resolution_gradient: Range = (0.0, 0.0)
    # Acquisition matrix (log-uniform; 0 = the output size): a matrix coarser than the
    # output adds each acquisition pixel's box blur, as a Gaussian of the same variance
    # ((w² - 1) / 12 output px², w = size / matrix). Clinical thyroid matrices: 64-256.
    matrix_px: Range = (0.0, 0.0)
    # Salivary uptake x this factor (on top of the per-finding S ranges). Kept within
    # (0.7, 1.4) so normal (S <= 0.5) stays below 1 and subacute thyroiditis (S >= 2) above.
    salivary_scale: Range = (1.0, 1.0)
    # Oesophageal activity (swallowed pertechnetate): a vertical band behind the gland,
    # slightly to the patient's left (image right), seen on a minority of scans.
    oesophagus_prob: float = 0.0
    oesophagus_level: Range = (0.5, 2.0)  # x background
    oesophagus_sigma_mm: Range = (3.0, 6.0)  # Gaussian sigma across the band
    oesophagus_offset_mm: Range = (0.0, 10.0)  # x of its axis from the gland centre (image right)
    # Export paths: raw counts, or 8-bit windowed (value = 255 min(1, counts / the
    # window percentile)), inverted grey (255 - that) given windowed: as viewers export.
    export_windowed_prob: float = 0.0
    export_inverted_prob: float = 0.5  # given a windowed export
    export_window_percentile: Range = (97.0, 100.0)

    @classmethod
    def regime(cls, name: str) -> PhantomParams:
        """The parameters of a named regime: ``"default"`` (training data, the ranges
        above), ``"randomised"`` (domain randomisation) or ``"ood"`` (held out)."""
        if name not in REGIMES:
            raise ValueError(f"unknown phantom regime {name!r}; choose one of {sorted(REGIMES)}")
        return dataclasses.replace(cls(), **REGIMES[name])


# Named regimes: field overrides of PhantomParams(). Each value's reason is given here.
REGIMES: dict[str, dict] = {
    "default": {},
    # Domain randomisation (issue 14 item 1): the literature's ranges and past them
    # where practice varies between sites, cameras and viewers.
    "randomised": dict(
        fov_mm=(140.0, 250.0),  # camera zoom 1-1.6 on a ~250 mm view
        pinhole_magnification=(1.0, 1.5),
        pinhole_distortion=(0.0, 0.1),
        pinhole_resolution_gradient=(0.0, 0.5),
        pinhole_fwhm_mm=(3.0, 9.0),  # 2-6 mm apertures at 5-10 cm
        parallel_fwhm_mm=(6.0, 14.0),  # high-resolution to general-purpose collimators
        matrix_px=(64.0, 256.0),
        total_counts=(5e4, 1e6),  # short low-dose scans to long high-count ones
        scatter_weight=(0.05, 0.4),  # narrow vs wide energy windows, neck thickness
        scatter_fwhm_mm=(20.0, 50.0),
        thyroid_offset_mm=(-10.0, 25.0),  # positioning: chin up or down
        shift_px=10.0,
        isthmus_absent_prob=0.25,
        pyramidal_prob=0.30,
        salivary_scale=(0.7, 1.4),
        oesophagus_prob=0.3,
        cold_nodule_diameter_mm=(7.0, 35.0),  # scintigraphy's ~1 cm limit, and past it
        cold_nodule_level=(0.0, 0.5),
        marker_prob=0.6,
        marker_level=(10.0, 150.0),
        export_windowed_prob=0.5,
    ),
    # Out of distribution (issue 14 item 3): ranges outside both training regimes'.
    # Strongly magnified pinhole views only (another collimator regime) with more
    # distortion and off-axis blur, and fewer counts than any training image; raw counts.
    "ood": dict(
        fov_mm=(200.0, 250.0),
        pinhole_prob=1.0,
        pinhole_magnification=(1.7, 2.2),
        pinhole_distortion=(0.12, 0.2),
        pinhole_resolution_gradient=(0.6, 1.0),
        preset_count_prob=1.0,
        total_counts=(2e4, 4.5e4),
    ),
}

DEFAULT_PARAMS = PhantomParams()
