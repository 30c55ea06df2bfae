"""xla_options: the package's programs compile their convolutions without YNNPACK."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxthyroid import xla_options

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")


def _conv_grad(x, k):
    conv = lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))(x, k)


def _inputs():
    # Large enough for jaxlib's default to choose YNNPACK (it leaves 2×6×6×8 to XLA).
    rng = np.random.default_rng(0)
    return (
        jnp.asarray(rng.normal(size=(4, 16, 16, 32)), jnp.float32),
        jnp.asarray(0.1 * rng.normal(size=(3, 3, 32, 32)), jnp.float32),
    )


JAXLIB_0_10 = jax.__version_info__[:2] == (0, 10)  # the jaxlib these options were measured on


@pytest.mark.skipif(not JAXLIB_0_10, reason="options written for jaxlib 0.10")
def test_options_are_known_to_this_jaxlib():
    assert xla_options.compiler_options() == {xla_options.YNN_OPTION: xla_options.YNN_WITHOUT_CONVOLUTION}


def test_convolutions_leave_ynnpack_and_compute_the_same():
    x, k = _inputs()
    ours = xla_options.jit(_conv_grad).lower(x, k).compile()
    with xla_options.jaxlib_default():
        default = xla_options.jit(_conv_grad).lower(x, k).compile()
    # A lone conv has no matmul or reduction for YNNPACK to take: any YNNPACK fusion is a conv.
    assert "convolution(" in ours.as_text() and "__ynn_fusion" not in ours.as_text()
    if JAXLIB_0_10:  # jaxlib 0.10 sends this conv to YNNPACK; fails if that changes
        assert "__ynn_fusion" in default.as_text()
    for a, b in zip(ours(x, k), default(x, k)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_the_users_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_OPTION}=-individual_dot")
    assert xla_options.compiler_options.__wrapped__() is None
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(xla_options.ENV, "1")
    assert xla_options.compiler_options.__wrapped__() is None


@pytest.mark.parametrize("detect", ["trace state", "tracer arguments"])
def test_nested_calls_run_a_plain_jit(detect, monkeypatch):
    """JAX refuses compiler options on a nested jit; under a trace :func:`jit` drops them."""
    if detect == "tracer arguments":  # the fallback for a JAX without trace_state_clean
        monkeypatch.setattr(xla_options, "_trace_state_clean", None)
    x, k = _inputs()
    inner = xla_options.jit(_conv_grad)
    outer = xla_options.jit(lambda x, k: inner(x, k))
    shapes = jax.eval_shape(inner, x, k)
    for a, b, s in zip(outer(x, k), inner(x, k), shapes):
        assert a.shape == b.shape == s.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
