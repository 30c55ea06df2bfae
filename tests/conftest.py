"""Test set-up: 8 host CPU devices for the multi-device tests, quiet logs."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Persistent XLA compilation cache (gitignored .jax_cache/; JAXTHYROID_CACHE_DIR=off disables).
from jaxthyroid import compile_cache  # noqa: E402

compile_cache.enable(
    os.environ.get("JAXTHYROID_CACHE_DIR") or os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
