"""Name-keyed draws: an image's parameters depend on its key and their names only."""

import dataclasses
import zlib

import jax
import numpy as np
import pytest

from jaxthyroid import findings, phantom
from jaxthyroid.phantom import params as params_lib
from jaxthyroid.phantom import sampling, simulator

SIZE = 64
IDS = np.arange(findings.DEFAULT.num_sets, dtype=np.int32)  # one image per finding set


class _ExtraDraw(sampling.Draws):
    """Draws one more named parameter, first, before every other draw of the image."""

    def uniform(self, name, rng, shape=()):
        if name == "fov_mm":
            super().uniform("an_extra_parameter", (0.0, 1.0), (3,))
        return super().uniform(name, rng, shape)


def _images_and_parameters(keys):
    """Images ``[B, SIZE, SIZE, 1]`` and every drawn parameter (traced afresh: no cache)."""
    render = jax.jit(jax.vmap(lambda k, i: phantom.render(k, i, size=SIZE, return_aux=True)))
    image, aux = render(keys, IDS)
    return np.asarray(image), jax.tree.map(np.asarray, aux["layout"])


def test_stable_id_is_crc32_of_the_name():
    # Not Python's hash(), which is salted per process.
    assert int(sampling.stable_id("fov_mm")) == zlib.crc32(b"fov_mm") == 3202954170


def test_adding_a_draw_leaves_every_other_parameter_and_image_unchanged(monkeypatch):
    keys = phantom.example_keys(7, np.arange(IDS.size))
    images_before, before = _images_and_parameters(keys)
    monkeypatch.setattr(simulator, "Draws", _ExtraDraw)
    assert "an_extra_parameter" in simulator._draw_names(_ExtraDraw, phantom.DEFAULT_PARAMS)
    images_after, after = _images_and_parameters(keys)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    np.testing.assert_array_equal(images_after, images_before)


def test_a_draw_depends_on_its_name_and_the_key():
    key = jax.random.key(0)
    names = ("a", "b")
    d = sampling.Draws(key, names)
    a, b = d.uniform("a", (0.0, 1.0), (4,)), d.uniform("b", (0.0, 1.0), (4,))
    assert not np.allclose(a, b)
    # The same name under another set of names: the same numbers.
    again = sampling.Draws(key, ("z", "a")).uniform("a", (0.0, 1.0), (4,))
    np.testing.assert_array_equal(again, a)
    other_key = sampling.Draws(jax.random.key(1), names).uniform("a", (0.0, 1.0), (4,))
    assert not np.allclose(other_key, a)


def test_a_name_drawn_twice_is_an_error():
    d = sampling.Draws(jax.random.key(0), ("a",))
    d.uniform("a", (0.0, 1.0))
    with pytest.raises(ValueError, match="twice"):
        d.bernoulli("a", 0.5)


@pytest.mark.parametrize("regime", ["default", "randomised"])
def test_every_range_of_params_is_drawn_under_its_own_name(regime):
    params = phantom.PhantomParams.regime(regime)
    names = set(simulator._draw_names(sampling.Draws, params))
    not_random = {"nodule_thickness"}  # a clip range, not a draw
    # Randomisations switched off (neutral range, or probability 0) are not drawn.
    off = {"oesophagus_level", "oesophagus_sigma_mm", "oesophagus_offset_mm"} if params.oesophagus_prob == 0 else set()
    if params.export_windowed_prob == 0:
        off.add("export_window_percentile")
    ranges = set()
    for f in dataclasses.fields(params_lib.PhantomParams):
        value = getattr(params, f.name)
        if isinstance(value, tuple):
            if value in ((0.0, 0.0), (1.0, 1.0)):
                off.add(f.name)
            ranges.add(f.name)
    missing = ranges - not_random - off - names
    assert not missing, missing
    if regime == "randomised":
        assert not off, off
