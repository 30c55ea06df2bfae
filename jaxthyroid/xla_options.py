"""Per-program XLA options: keep XLA:CPU's convolutions off YNNPACK.

jaxlib 0.10's XLA:CPU hands every convolution to YNNPACK by default (the library
fusion types ``INDIVIDUAL_DOT``, ``INDIVIDUAL_CONVOLUTION`` and ``REDUCE``). YNNPACK
runs the *weight gradient* of a convolution (a convolution whose window is the whole
feature map) several times slower than XLA's own convolution does, while YNNPACK's
matmuls and reductions are fast. ``python -m benchmarks.conv_grad`` measures it per
layer and ``python -m benchmarks.train_step`` per train step, each with and without
these options; the figures per machine are in ``docs/benchmarks.md``.

:func:`jit` is ``jax.jit`` with that option on the CPU backend
(``xla_cpu_experimental_ynn_fusion_type`` without ``INDIVIDUAL_CONVOLUTION``); every
compiled program of the package goes through it. The values computed are the same up to
float rounding. It is a per-program compiler option, not a process-wide ``XLA_FLAGS``
setting, so it touches nothing else in the process and is part of each program's
compilation-cache key.

Left out (``compiler_options()`` returns None) when the backend is not CPU, when
``XLA_FLAGS`` already sets ``xla_cpu_experimental_ynn_fusion_type`` (the user decides),
when ``JAXTHYROID_YNN_CONV=1`` (keep jaxlib's default, e.g. to compare), or when this
jaxlib does not know the option.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.10's default set less INDIVIDUAL_CONVOLUTION (checked with --xla_dump_to: the
# default is INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE).
YNN_WITHOUT_CONVOLUTION = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
ENV = "JAXTHYROID_YNN_CONV"

log = logging.getLogger(__name__)
_use = True


@functools.cache
def compiler_options() -> dict[str, str] | None:
    """The ``compiler_options`` :func:`jit` passes (None: none, see the module doc)."""
    if os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    if YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    if jax.default_backend() != "cpu":
        return None
    options = {YNN_OPTION: YNN_WITHOUT_CONVOLUTION}
    try:  # an unknown option is an error at compile time; probe once
        jax.jit(lambda x: x + 1, compiler_options=options).lower(jnp.zeros(())).compile()
    except Exception as err:  # noqa: BLE001 - any failure means: leave it out
        log.info(
            "XLA option %s not available (%s); convolutions keep jaxlib's default",
            YNN_OPTION,
            str(err).splitlines()[0][:120],
        )
        return None
    return options


@contextlib.contextmanager
def jaxlib_default():
    """Within this block :func:`jit` adds no options (benchmarks compare both paths)."""
    global _use
    before, _use = _use, False
    try:
        yield
    finally:
        _use = before


def jit(fun: Callable, **kwargs: Any):
    """``jax.jit(fun, **kwargs)`` with :func:`compiler_options` (if any) added.

    JAX accepts compiler options only on a top-level ``jit``; called while tracing
    (inside another ``jit``, ``eval_shape``, ``grad``...) this runs a plain ``jit`` of
    ``fun``, whose code the outer program then compiles with the outer options.
    """
    options = compiler_options() if _use else None
    if not options:
        return jax.jit(fun, **kwargs)
    own = kwargs.pop("compiler_options", None) or {}
    return _Jitted(fun, kwargs, {**options, **own})


class _Jitted:
    """A top-level ``jit`` with compiler options, and a plain one for nested calls.

    A call tries the top-level ``jit`` first: at top level (every train step) that costs
    nothing extra. Under a trace JAX refuses its compiler options with a ``ValueError``
    before anything runs, and the call is made again with the plain ``jit``; that
    happens while the outer program is traced, once per compilation. Public API only:
    no question to JAX's trace state.
    """

    def __init__(self, fun: Callable, kwargs: dict, options: dict):
        self._top = jax.jit(fun, compiler_options=options, **kwargs)
        self._nested = jax.jit(fun, **kwargs)
        functools.update_wrapper(self, fun)

    def __call__(self, *args, **kwargs):
        try:
            return self._top(*args, **kwargs)
        except ValueError as err:
            if not _refused_under_trace(err, args, kwargs):
                raise
        return self._nested(*args, **kwargs)

    def __getattr__(self, name: str):  # lower, trace, eval_shape, ... of the top-level jit
        return getattr(self._top, name)


def _refused_under_trace(err: ValueError, args, kwargs) -> bool:
    """Whether ``err`` is JAX refusing compiler options on a nested ``jit``: its message
    names them, or (should the wording change) the arguments are tracers."""
    return "compiler_options" in str(err) or any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))
    )
