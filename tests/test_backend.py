"""The backend policy: which form each op gets, the CPU feature probe, the old levers."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxthyroid.models import backend, dcgan, layers, upsample
from jaxthyroid.models.registry import get_model

KEY = jax.random.key(0)


def test_cpu_kind_reads_feature_flags():
    assert backend.cpu_kind(frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"})) == "amx"
    assert backend.cpu_kind(frozenset({"avx2", "avx512f"})) == "avx512"
    assert backend.cpu_kind(frozenset({"sse4_2", "avx2", "fma"})) == "avx2"
    assert backend.cpu_kind(frozenset()) == "other"
    assert isinstance(backend.cpu_features(), frozenset)


def test_policy_per_backend():
    cpu, gpu = backend.default_ops("cpu"), backend.default_ops("gpu")
    assert cpu.im2col == "where_it_pays" and gpu.im2col == "none"
    assert not cpu.sliced_max_pool and not gpu.sliced_max_pool
    assert cpu.sub_pixel and gpu.sub_pixel
    assert backend.resolve(None) == backend.default_ops() and backend.resolve(gpu) is gpu
    with pytest.raises(ValueError, match="im2col"):
        backend.Ops(im2col="sometimes")


def test_patches_stay_small_in_every_mode():
    """SRResNet's 9×9 convs (81× patches) stay XLA's even with ``im2col='all'``; AlexNet's
    11×11/4 stem (7.6×) and ResNet's 7×7/2 stem (12.25×) do not."""
    for mode in ("all", "where_it_pays"):
        ops = backend.Ops(im2col=mode)
        assert not ops.conv_uses_im2col(1, (9, 9), (1, 1), (64, 64))
        assert ops.conv_uses_im2col(1, (11, 11), (4, 4), (15, 15))
        assert ops.conv_uses_im2col(1, (7, 7), (2, 2), (32, 32))


def test_ops_pick_the_forms():
    x = jnp.zeros((2, 8, 8, 3))
    cpu = backend.default_ops("cpu")
    conv = cpu.conv(4, (3, 3), padding=((1, 1), (1, 1)))
    assert isinstance(conv, layers.Im2colConv) and type(conv).__name__ == "Conv"  # auto-named like nn.Conv
    wide = cpu.conv_transpose(16, use_bias=False)
    narrow = cpu.conv_transpose(8, use_bias=False)
    assert isinstance(wide, upsample.SubPixelConvTranspose) and isinstance(narrow, nn.ConvTranspose)
    assert isinstance(cpu.replace(sub_pixel=False).conv_transpose(16), nn.ConvTranspose)
    sliced = cpu.replace(sliced_max_pool=True).max_pool(x + 1.0, 3, 2, ((1, 1), (1, 1)))
    np.testing.assert_array_equal(sliced, cpu.max_pool(x + 1.0, 3, 2, ((1, 1), (1, 1))))


def test_xla_form_of_im2col_conv_is_nn_conv():
    """``Im2colConv(im2col=False)`` lowers to what ``nn.Conv`` lowers to: same values, bit for bit."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 5)), jnp.float32)
    pad = ((1, 1), (1, 1))
    ref = nn.Conv(7, (3, 3), (2, 2), padding=pad, use_bias=True)
    params = jax.jit(ref.init)(KEY, x)
    ours = layers.Im2colConv(7, (3, 3), (2, 2), padding=pad, use_bias=True, im2col=False)
    np.testing.assert_array_equal(jax.jit(ours.apply)(params, x), jax.jit(ref.apply)(params, x))


def test_old_levers_map_to_ops_with_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # their old defaults mean "the policy": no warning
        assert backend.ops_from_levers(conv_im2col=None, fast_upsample=True, stem_im2col=True) is None
        assert get_model("resnet_tiny", num_classes=6, conv_im2col=None).ops is None
    with pytest.warns(FutureWarning, match="conv_im2col"):
        assert backend.ops_from_levers(conv_im2col=False).im2col == "none"
    with pytest.warns(FutureWarning, match="fast_upsample"):
        assert not backend.ops_from_levers(fast_upsample=False).sub_pixel
    with pytest.warns(FutureWarning, match="fast_maxpool"):
        assert get_model("vgg_tiny", num_classes=6, fast_maxpool=True).ops.sliced_max_pool
    with pytest.raises(TypeError, match="unknown speed lever"):
        backend.ops_from_levers(fast_everything=True)


def test_models_carry_no_speed_levers():
    """Models take ``ops`` and nothing else that picks a form of an op."""
    levers = {"conv_im2col", "stem_im2col", "fast_maxpool", "fast_upsample", "sub_pixel_min_features"}
    for model in (get_model("resnet_tiny", num_classes=6), get_model("vgg_tiny", num_classes=6), dcgan.Generator()):
        fields = set(model.__dataclass_fields__)
        assert "ops" in fields and not fields & levers
