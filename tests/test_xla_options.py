"""xla_options: the package's programs compile their convolutions without YNNPACK."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from tolerance import fp_tolerance, max_abs

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


# Conv gradients of _inputs(): d/dx sums 3×3×32 products, d/dk sums 4×16×16; forward + backward.
CONV_GRAD_TOL = dict(reduction_size=4 * 16 * 16, depth=2)


def _default_text(x, k) -> str:
    with xla_options.jaxlib_default():
        return xla_options.jit(_conv_grad).lower(x, k).compile().as_text()


def test_options_are_known_or_left_out():
    """The option is passed exactly when this jaxlib compiles with it (probed once)."""
    if os.environ.get(xla_options.ENV) or xla_options.YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        pytest.skip("this environment leaves the option out on purpose (see test_the_users_xla_flags_win)")
    options = xla_options.compiler_options.__wrapped__()
    if options is None:
        with pytest.raises(Exception):  # noqa: B017 - whatever XLA raises for an unknown option
            jax.jit(
                lambda x: x + 1, compiler_options={xla_options.YNN_OPTION: xla_options.YNN_WITHOUT_CONVOLUTION}
            ).lower(jnp.zeros(())).compile()
    else:
        assert options == {xla_options.YNN_OPTION: xla_options.YNN_WITHOUT_CONVOLUTION}


def test_convolutions_leave_ynnpack_and_compute_the_same():
    x, k = _inputs()
    if xla_options.compiler_options() is None:
        pytest.skip("this jaxlib does not know the YNNPACK fusion option; nothing is passed")
    if "__ynn_fusion" not in _default_text(x, k):
        pytest.skip("this jaxlib's default does not send these convolutions to YNNPACK; nothing to turn off")
    ours = xla_options.jit(_conv_grad).lower(x, k).compile()
    with xla_options.jaxlib_default():
        default = xla_options.jit(_conv_grad).lower(x, k).compile()
    # A lone conv has no matmul or reduction for YNNPACK to take: any YNNPACK fusion is a conv.
    assert "convolution(" in ours.as_text() and "__ynn_fusion" not in ours.as_text()
    for a, b in zip(ours(x, k), default(x, k)):
        np.testing.assert_allclose(a, b, **fp_tolerance(**CONV_GRAD_TOL, scale=max_abs(b)))


def test_the_users_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_OPTION}=-individual_dot")
    assert xla_options.compiler_options.__wrapped__() is None
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(xla_options.ENV, "1")
    assert xla_options.compiler_options.__wrapped__() is None


def test_nested_calls_run_a_plain_jit():
    """JAX refuses compiler options on a nested jit; under a trace :func:`jit` drops them,
    also when the nested call's arguments are concrete arrays (closed over, not tracers)."""
    x, k = _inputs()
    inner = xla_options.jit(_conv_grad)
    outer = xla_options.jit(lambda x, k: inner(x, k))
    outer_concrete = xla_options.jit(lambda s: [s * g for g in inner(x, k)])
    shapes = jax.eval_shape(inner, x, k)
    for a, b, c, s in zip(outer(x, k), inner(x, k), outer_concrete(1.0), shapes):
        assert a.shape == b.shape == c.shape == s.shape
        # inner's code compiled inside another program: another fusion, another rounding
        np.testing.assert_allclose(a, b, **fp_tolerance(**CONV_GRAD_TOL, scale=max_abs(b)))
        np.testing.assert_allclose(c, b, **fp_tolerance(**CONV_GRAD_TOL, scale=max_abs(b)))


def test_other_value_errors_still_raise():
    bad = xla_options.jit(lambda x: x.reshape(7))
    with pytest.raises((ValueError, TypeError)):
        bad(jnp.zeros(6))
