"""Which implementation each op of a model gets, per backend, CPU feature set and shape.

The models in :mod:`jaxthyroid.models` are written as the papers draw them; they take an
:class:`Ops` (field ``ops``; None means :func:`default_ops`) and build every convolution,
max-pool and transposed convolution through it. This module is the one place that decides
which form computes each op. Every form computes the same function with the same
parameters (the tests in ``tests/test_models.py`` and ``tests/test_gan_models.py`` compare
values and gradients); the choice only changes speed. The measurements behind each choice,
per machine, are in ``docs/benchmarks.md``.

The forms (:mod:`jaxthyroid.models.layers`, :mod:`jaxthyroid.models.upsample`):

* convolution: XLA's own (``lax.conv_general_dilated``) or an im2col matmul
  (``layers.Im2colConv``), chosen per conv from its shape (:meth:`Ops.conv_uses_im2col`);
* max-pool: ``nn.max_pool`` or a running maximum over strided slices;
* stride-2 4×4 transposed convolution: ``nn.ConvTranspose`` or four sub-pixel stride-1
  convs (``upsample.SubPixelConvTranspose``); DCGAN's 1×1 -> k×k projection as a matmul.

The policy (:func:`default_ops`), per ``jax.default_backend()`` and the CPU's instruction
set extensions (:func:`cpu_features`, read from the CPU, not from its name):

* CPU: im2col for convs XLA:CPU runs far below its matmul rate (few input channels, or
  output maps under 4×4) when the patches stay small; sub-pixel transposed convs (their
  weight gradient is several times faster than ``conv_transpose``'s on XLA:CPU), except
  for outputs on few channels; ``nn.max_pool`` (the sliced form's faster gradient did not
  make a whole ResNet step faster). The same on every CPU feature set measured so far.
* GPU / TPU: XLA's convolutions and pools (cuDNN and the TPU compiler are the fast paths);
  sub-pixel transposed convs (not measured slower there).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from jaxthyroid.models import layers, upsample

ModuleDef = Any
Padding = tuple[tuple[int, int], tuple[int, int]]

# im2col modes: every conv whose patches fit, the policy's shapes only, or none.
IM2COL_MODES = ("all", "where_it_pays", "none")


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU's instruction-set flags (``avx2``, ``avx512f``, ``amx_bf16``, ...), lower case.

    Read from ``/proc/cpuinfo`` (Linux); empty where it cannot be read.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_kind(features: frozenset[str] | None = None) -> str:
    """A short name for the feature set the policy distinguishes: ``amx`` (AVX-512 with
    AMX-bf16 tiles), ``avx512``, ``avx2`` or ``other``."""
    f = cpu_features() if features is None else features
    if "amx_bf16" in f and "avx512f" in f:
        return "amx"
    if "avx512f" in f:
        return "avx512"
    if "avx2" in f:
        return "avx2"
    return "other"


@dataclasses.dataclass(frozen=True)
class Ops:
    """The implementation of each op for one backend; models call these and never branch on it.

    Attributes:
      im2col: ``"where_it_pays"`` (a conv is an im2col matmul when it has at most
        ``im2col_max_in_channels`` input channels or an output map under
        ``im2col_below_output_side`` on a side), ``"all"`` or ``"none"``. In every mode
        a conv whose patches would exceed ``im2col_max_patch_ratio`` times its input
        (e.g. SRResNet's 9×9 convs: 81×) stays XLA's.
      sliced_max_pool: max-pool as a running maximum over strided slices (same values;
        gradients equal except where a window holds several equal maxima, which the
        slices share and ``nn.max_pool`` gives to the first).
      sub_pixel: stride-2 4×4 transposed convs as sub-pixel convs, and DCGAN's 1×1 ->
        k×k projection as a matmul; else ``nn.ConvTranspose``.
      sub_pixel_min_features: transposed convs with fewer output channels stay
        ``nn.ConvTranspose`` even with ``sub_pixel``.
      shared_patches_min_size: im2col sub-pixel convs on inputs at least this large on a
        side share one set of 2×2 patches for the four output phases.
    """

    im2col: str = "none"
    im2col_max_in_channels: int = 4
    im2col_below_output_side: int = 4
    im2col_max_patch_ratio: float = 16.0
    sliced_max_pool: bool = False
    sub_pixel: bool = True
    sub_pixel_min_features: int = 16
    shared_patches_min_size: int = 8

    def __post_init__(self):
        if self.im2col not in IM2COL_MODES:
            raise ValueError(f"Ops.im2col must be one of {', '.join(IM2COL_MODES)}, not {self.im2col!r}")

    def replace(self, **changes: Any) -> Ops:
        """A copy with ``changes`` (dataclass fields)."""
        return dataclasses.replace(self, **changes)

    # -- convolution ---------------------------------------------------------

    def conv_uses_im2col(
        self, in_channels: int, kernel_size: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]
    ) -> bool:
        """Whether a conv of this shape computes as an im2col matmul."""
        (kh, kw), (sh, sw) = kernel_size, strides
        if self.im2col == "none" or kh * kw / (sh * sw) > self.im2col_max_patch_ratio:
            return False
        if self.im2col == "all":
            return True
        return in_channels <= self.im2col_max_in_channels or min(out_hw) < self.im2col_below_output_side

    def conv(self, features: int, kernel_size: tuple[int, int], strides=(1, 1), padding=((0, 0), (0, 0)), **kw):
        """A conv module with ``nn.Conv``'s arguments (explicit padding) and parameters,
        auto-named like ``nn.Conv``; its form is chosen per call from the input's shape."""
        return layers.Conv(features, tuple(kernel_size), tuple(strides), padding, im2col=self._im2col_rule, **kw)

    def _im2col_rule(self, in_channels, kernel_size, strides, out_hw) -> bool:
        return self.conv_uses_im2col(in_channels, kernel_size, strides, out_hw)

    # -- pooling -------------------------------------------------------------

    def max_pool(self, x: jax.Array, window: int, stride: int, padding: Padding) -> jax.Array:
        """``nn.max_pool(x, (window, window), (stride, stride), padding)``: ``[batch, H, W, C]``."""
        if self.sliced_max_pool:
            return layers.max_pool_slices(x, window, stride, padding)
        return nn.max_pool(x, (window, window), (stride, stride), padding=padding)

    # -- transposed convolution ----------------------------------------------

    def conv_transpose(
        self, features: int, kernel_size=(4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), **kw
    ) -> nn.Module:
        """``nn.ConvTranspose(features, kernel_size, strides, padding, **kw)`` (``transpose_kernel=False``).

        ``[batch, H, W, C] -> [batch, H', W', features]``; parameters are
        ``nn.ConvTranspose``'s (``kernel [kh, kw, C, features]``). The defaults are PyTorch's
        ``ConvTranspose2d(k=4, s=2, p=1)`` (lax padding ``k - 1 - p = 2``), the one shape
        with a sub-pixel form.
        """
        shape = (tuple(kernel_size), tuple(strides), tuple(map(tuple, padding)))
        if self.sub_pixel and shape == ((4, 4), (2, 2), ((2, 2), (2, 2))) and features >= self.sub_pixel_min_features:
            return upsample.SubPixelConvTranspose(
                features, im2col=self._sub_pixel_rule, shared_patches_min_size=self.shared_patches_min_size, **kw
            )
        return nn.ConvTranspose(features, kernel_size, strides=strides, padding=padding, **kw)

    def _sub_pixel_rule(self, in_channels: int, height: int, width: int) -> bool:
        # each phase is a 2×2 stride-1 conv with an H×W output
        return self.conv_uses_im2col(in_channels, (2, 2), (1, 1), (height, width))

    def project(self, features: int, kernel_size: int, **kw) -> Callable[[jax.Array], jax.Array]:
        """``nn.ConvTranspose(features, (k, k), padding='VALID')`` on a 1×1 image:
        ``[batch, in]`` -> ``[batch, k, k, features]``."""
        if self.sub_pixel:
            return upsample.ProjectConvTranspose(features, kernel_size, **kw)
        module = nn.ConvTranspose(features, (kernel_size, kernel_size), padding="VALID", **kw)
        return lambda z: module(z.reshape(z.shape[0], 1, 1, z.shape[-1]))


def default_ops(backend: str | None = None, features: frozenset[str] | None = None) -> Ops:
    """The policy: the :class:`Ops` for ``backend`` (default ``jax.default_backend()``)
    on a CPU with ``features`` (default :func:`cpu_features`). See the module doc."""
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return Ops(im2col="none", sliced_max_pool=False, sub_pixel=True)
    # Every CPU kind measured so far (AVX2 EPYC, AVX-512/AMX Xeon) takes the same forms:
    # docs/benchmarks.md has the per-kind tables. A kind that needs other forms gets its
    # own branch here, keyed by cpu_kind(features).
    del features
    return Ops(im2col="where_it_pays", sliced_max_pool=False, sub_pixel=True)


def resolve(ops: Ops | None) -> Ops:
    """``ops``, or the policy's when None (what a model does with its ``ops`` field)."""
    return default_ops() if ops is None else ops


# Old model fields / config keys -> the choice they now override, and their old defaults.
_LEGACY = {
    "conv_im2col": (None, "im2col"),
    "stem_im2col": (True, None),
    "fast_maxpool": (None, "sliced_max_pool"),
    "fast_upsample": (True, "sub_pixel"),
}


def ops_from_levers(**levers: Any) -> Ops | None:
    """Maps the speed levers models and configs used to carry to an :class:`Ops`.

    ``conv_im2col`` (None / True / False), ``fast_maxpool`` (bool), ``fast_upsample``
    (bool), ``stem_im2col`` (bool). A lever at its old default (None for
    ``conv_im2col``, True for ``fast_upsample`` and ``stem_im2col``) or None means "the
    policy" and returns None when all are so; any other value overrides that one choice
    of the policy, with a ``FutureWarning`` saying where the choice now lives.
    """
    changes: dict[str, Any] = {}
    for name, value in levers.items():
        if name not in _LEGACY:
            raise TypeError(f"unknown speed lever {name!r}; known: {', '.join(_LEGACY)}")
        default, field = _LEGACY[name]
        if value is None or value == default:
            continue
        if field is None:  # stem_im2col=False: the stem follows the conv rule like every conv
            warnings.warn(
                "stem_im2col is gone: the stem is a conv like the others (jaxthyroid.models.backend decides); ignored.",
                FutureWarning,
                stacklevel=2,
            )
            continue
        if name == "conv_im2col":
            value = "all" if value else "none"
        changes[field] = value
        warnings.warn(
            f"{name}={levers[name]!r} is deprecated: models take an `ops` (jaxthyroid.models.backend.Ops) chosen "
            f"per backend by jaxthyroid.models.backend.default_ops(); mapped to Ops.{field}={value!r}.",
            FutureWarning,
            stacklevel=2,
        )
    return default_ops().replace(**changes) if changes else None
