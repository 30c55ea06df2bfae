"""The phantom's public API: one image (:func:`render`), a jitted batch
(:func:`simulate`), labelled batches (:func:`make_batch`) and what a key will draw
(:func:`describe`).

An image's random numbers come from its key by name (:mod:`.sampling`): the layout
of the anatomy (:mod:`.layout`), the camera settings (:func:`.imaging.acquisition`),
the texture field (``"texture"``) and the Poisson noise (``"poisson"``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxthyroid import findings
from jaxthyroid.phantom import anatomy, imaging, sampling
from jaxthyroid.phantom.layout import layout
from jaxthyroid.phantom.params import DEFAULT_PARAMS, SIZES, PhantomParams

Draws = sampling.Draws  # looked up at call time, so a test can wrap it
_RANDOMISED = (
    "magnification",
    "distortion",
    "resolution_gradient",
    "matrix",
    "windowed",
    "inverted",
    "window_percentile",
    "oesophagus_level",
)


def _set_table():
    return jnp.asarray(findings.DEFAULT.set_table)


def _check(size, params: PhantomParams):
    if size not in SIZES:
        raise ValueError(f"phantom size must be one of {SIZES}, got {size}")
    if params.poisson not in imaging.POISSON_SAMPLERS:
        raise ValueError(f"PhantomParams.poisson must be one of {imaging.POISSON_SAMPLERS}, got {params.poisson!r}")


def _parameters(d: Draws, flags, params: PhantomParams) -> dict:
    acq = imaging.acquisition(d, params)
    lay = layout(d, flags, params, magnification=acq.get("magnification"))
    lay.update(acq)
    return lay


@functools.cache
def _draw_names(draws_cls, params: PhantomParams) -> tuple[str, ...]:
    return sampling.record(draws_cls, lambda d: _parameters(d, jnp.zeros(6), params))


def draw(key, finding_set_id, params: PhantomParams = DEFAULT_PARAMS) -> tuple[Draws, dict]:
    """The image's named draws and its parameters: the layout and the acquisition in one dict."""
    d = Draws(key, _draw_names(Draws, params))
    return d, _parameters(d, _set_table()[finding_set_id], params)


def render(key, finding_set_id, *, size=128, params=DEFAULT_PARAMS, return_aux=False):
    """One image (unbatched, not jitted: :func:`simulate` is the batched, jitted form).

    Args:
      key: typed key (scalar).
      finding_set_id: int32 scalar, index into ``findings.DEFAULT.finding_sets``.
    Returns float32 ``[size, size, 1]`` Poisson counts as exported (raw unless the
    params export 8-bit windowed images); with ``return_aux`` also a dict:
    ``counts`` ``[size, size, 1]`` raw counts, ``expected`` ``[size, size]`` noise-free counts, ``thyroid_support`` and
    ``nodule_mask`` ``[size, size]`` (pre-blur), ``thyroid_activity`` and ``activity``
    ``[size, size]``, ``layout`` (every sampled parameter, lengths in mm),
    ``mm_per_px``, ``activity_integral``, ``total`` (expected total counts).
    """
    _check(size, params)
    d, lay = draw(key, finding_set_id, params)
    activity, aux = anatomy.activity_map(d.key("texture"), lay, size, params)
    expected, counts_aux = imaging.expected_counts(activity, lay, lay["fov"], params)
    counts = imaging.poisson(d.key("poisson"), expected, params)[..., None]
    image = imaging.export(counts, lay)
    if not return_aux:
        return image
    aux.update(counts_aux, activity=activity, expected=expected, counts=counts, layout=lay, mm_per_px=lay["fov"] / size)
    return image, aux


def simulate(keys, finding_set_ids, *, size=128, params=DEFAULT_PARAMS) -> jax.Array:
    """Batch of phantom scintigrams (jitted; ``size`` and ``params`` static).

    Args:
      keys: typed key array ``[B]`` (one per image; see :func:`example_keys`).
      finding_set_ids: int32 ``[B]``, index into ``findings.DEFAULT.finding_sets``.
      size: 64, 128 or 256.
      params: :class:`PhantomParams`.
    Returns float32 ``[B, size, size, 1]`` counts as exported: raw counts
    (non-negative integers) unless ``params`` export 8-bit windowed images (0-255).
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
      in preset-count mode; the reference total in preset-time mode),
      ``pinhole`` bool ``[B]``, ``psf_fwhm_px`` ``[B]``; where the params switch them
      on, the randomisation draws (``magnification``, ``distortion``,
      ``resolution_gradient``, ``matrix``, ``windowed``, ``inverted``,
      ``window_percentile``, ``oesophagus_level``), ``[B]`` each.
    """

    def one(key, set_id):
        _, lay = draw(key, set_id, params)
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
            pinhole=lay["pinhole"],
            psf_fwhm_px=lay["psf_fwhm"] / mm,
            **{k: lay[k] for k in _RANDOMISED if k in lay},
        )

    return jax.vmap(one)(keys, finding_set_ids)
