"""Test tolerances derived from floating-point arithmetic, not from one CPU's rounding.

Two computations of the same real number that differ only in *how* they round — the
order of a sum (XLA:CPU blocks reductions by vector width: 8 lanes on AVX2, 16 on
AVX-512), a fused versus an unfused multiply-add, im2col versus a direct convolution,
8 devices' partial sums versus one device's — agree to within a bound that follows from
the dtype's machine epsilon, the number of terms summed and their magnitude. A test
that compares such computations uses :func:`fp_tolerance` instead of a number that
happened to pass on the machine it was written on.

The bound (Higham, *Accuracy and Stability of Numerical Algorithms*, §4.2): summing
``n`` terms of magnitude at most ``s`` in floating point with unit roundoff
``u = eps / 2`` has an error of at most ``(n - 1) u s`` (worst case, every rounding in
the same direction) and typically ``~ sqrt(n) u s`` (roundings behave like independent
zero-mean errors, a random walk). Two different summation orders each carry such an
error, so their difference is at most twice that; :data:`SIGMAS` standard deviations of
the typical case (``SIGMAS * sqrt(2) * sqrt(n) * u * s``) is the default bound, the
``worst_case`` one is ``2 * n * u * s``.

Several stages (layers) in a row each add their own rounding, relative to the values
they pass on; to first order these errors add, so the bound grows linearly with
``depth``. An operation that magnifies relative error — BatchNorm over a batch of two,
which divides by the spread of two numbers; a difference of nearly equal values — is
given as ``amplification`` with the reason stated where it is used.

``scale`` is the magnitude of the *terms* (not of the result: ``1e4 - 1e4 + 1`` is
exact only to ``eps * 1e4``); for a comparison of whole arrays the largest absolute
value of the reference is the usual choice.
"""

from __future__ import annotations

import math

import numpy as np

# Standard deviations of the random-walk estimate the default bound allows: a test
# compares thousands of values, and 6 sigma keeps a false failure below ~1e-8 each.
SIGMAS = 6.0


def eps(dtype) -> float:
    """Machine epsilon of ``dtype`` (float32: 2**-23, bfloat16: 2**-7, float16: 2**-10)."""
    if np.dtype(dtype).name == "bfloat16":
        return 2.0**-7
    return float(np.finfo(dtype).eps)


def fp_tolerance(
    dtype=np.float32,
    *,
    reduction_size: int = 1,
    scale: float = 1.0,
    depth: int = 1,
    amplification: float = 1.0,
    worst_case: bool = False,
) -> dict[str, float]:
    """``rtol``/``atol`` for ``np.testing.assert_allclose`` between two roundings of one value.

    Args:
      dtype: the precision the computation accumulates in.
      reduction_size: ``n``, the number of terms in the longest sum behind each value
        (a matmul's contraction, ``kh * kw * C`` for a convolution, ``B * H * W`` for a
        BatchNorm statistic or a gradient over a batch).
      scale: magnitude of the summed terms; ``atol = rtol * scale``.
      depth: rounding stages in a row (layers, forward + backward counts twice).
      amplification: factor by which the computation magnifies relative error
        (its condition number), when it is known to exceed 1; say why where used.
      worst_case: the linear ``n`` bound instead of the typical ``sqrt(n)`` one, for
        reductions whose roundings need not be independent (e.g. a sum of equal terms).

    Returns:
      ``{"rtol": r, "atol": r * scale}`` with
      ``r = depth * amplification * c(n) * u`` and ``c(n) = 2n`` (worst case) or
      ``SIGMAS * sqrt(2 n)``, plus ``2 u`` for rounding each final result to ``dtype``.
    """
    u = eps(dtype) / 2
    n = max(int(reduction_size), 1)
    growth = 2.0 * n if worst_case else SIGMAS * math.sqrt(2.0 * n)
    rtol = depth * amplification * growth * u + 2.0 * u
    return {"rtol": rtol, "atol": rtol * scale}


def max_abs(*arrays) -> float:
    """The largest absolute value over ``arrays`` (pytrees allowed): a ``scale``."""
    import jax

    leaves = [np.asarray(x) for a in arrays for x in jax.tree.leaves(a)]
    return max(float(np.max(np.abs(x))) if x.size else 0.0 for x in leaves)


def network_tolerance(params, *, scale: float = 1.0, backward: bool = False, positions: int = 1, dtype=np.float32):
    """:func:`fp_tolerance` for the outputs (or gradients) of a network with ``params``.

    Each weight matrix or kernel (a leaf with >= 2 axes) is one rounding stage; the
    longest sum is the largest fan-in (``kh * kw * C_in``, or ``C_in`` of a Dense). With
    ``backward`` the stages count twice and a weight gradient's sum over ``positions``
    (batch × output pixels of the largest layer) joins the candidates for the longest sum.
    """
    import jax

    kernels = [x for x in jax.tree.leaves(params) if np.ndim(x) >= 2]
    fan_in = max((math.prod(np.shape(k)[:-1]) for k in kernels), default=1)
    n = max(fan_in, positions) if backward else fan_in
    depth = max(len(kernels), 1) * (2 if backward else 1)
    return fp_tolerance(dtype, reduction_size=n, depth=depth, scale=scale)
