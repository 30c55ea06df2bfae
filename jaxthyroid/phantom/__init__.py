"""The phantom: planar 99mTc-pertechnetate thyroid scintigrams, simulated in JAX.

The default data set of the package (DESIGN §3). One call renders a batch on the
device: anatomy -> activity map -> collimator blur and scatter -> counts -> Poisson
noise, all in ``jax.numpy``, jitted and vmapped, branch-free (every finding's effect
is computed for every image and switched on by its multi-hot flags), so it runs
unchanged on CPU, GPU and TPU and inside other jitted code.

Modules:
  params      :class:`PhantomParams`, every range with its source
  sampling    name-keyed draws (``fold_in(key, crc32(name))``)
  layout      the anatomy's per-image parameters (no images)
  anatomy     the activity map rendered from a layout
  imaging     acquisition draws, PSF, scatter, counts, Poisson noise
  simulator   render / simulate / make_batch / describe (the public API)

Where the time goes is measured by ``benchmarks/phantom_throughput.py``.
"""

from jaxthyroid.phantom.params import DEFAULT_PARAMS, SIZES, PhantomParams, Range
from jaxthyroid.phantom.simulator import (
    describe,
    example_keys,
    make_batch,
    render,
    sample_finding_set_ids,
    simulate,
)

__all__ = [
    "DEFAULT_PARAMS",
    "SIZES",
    "PhantomParams",
    "Range",
    "describe",
    "example_keys",
    "make_batch",
    "render",
    "sample_finding_set_ids",
    "simulate",
]
