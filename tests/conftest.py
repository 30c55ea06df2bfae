"""Test set-up: 8 host CPU devices for the multi-device tests, quiet logs; the tiny
finished run the CLI, explain, export and external-validation tests share."""

import os
import sys

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Persistent XLA compilation cache (gitignored .jax_cache/; JAXTHYROID_CACHE_DIR=off disables).
from jaxthyroid import compile_cache  # noqa: E402

compile_cache.enable(
    os.environ.get("JAXTHYROID_CACHE_DIR") or os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny cross-training run (trained once per session, see test_cross_training)."""
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("grain")
    sys.path.insert(0, os.path.dirname(__file__))
    from test_cross_training import ensure_tiny_run

    return ensure_tiny_run(tmp_path_factory.getbasetemp() / "cross_training_tiny")[0]
