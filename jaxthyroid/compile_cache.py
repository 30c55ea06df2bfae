"""JAX's persistent compilation cache, on by default for the CLI and the tests.

A ResNet train step takes tens of seconds to compile on a 2-core CPU; with the cache
a rerun (or a resumed run, or the next phase with an equal program) loads the
executable from disk instead.

Where: ``$JAXTHYROID_CACHE_DIR`` if set, else ``~/.cache/jaxthyroid/jax``;
``JAXTHYROID_CACHE_DIR=off`` disables it.
"""

from __future__ import annotations

import os
import pathlib
import sys

ENV = "JAXTHYROID_CACHE_DIR"
DEFAULT_DIR = pathlib.Path("~/.cache/jaxthyroid/jax")
OFF = ("off", "none", "0", "false", "no")
# Programs that compile faster than this are not worth a disk round trip.
MIN_COMPILE_SECS = 0.5


def cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The directory :func:`enable` would use (None when the cache is off)."""
    value = os.fspath(cache_dir) if cache_dir is not None else os.environ.get(ENV, "")
    if value.strip().lower() in OFF and value.strip():
        return None
    return pathlib.Path(value).expanduser() if value.strip() else DEFAULT_DIR.expanduser()


def enable(
    cache_dir: str | os.PathLike | None = None, *, min_compile_secs: float = MIN_COMPILE_SECS
) -> pathlib.Path | None:
    """Turns the persistent cache on; returns its directory, or None when it is off.

    Before ``import jax`` it only sets JAX's environment variables (so ``--help``
    stays instant and any JAX imported later picks them up); after, it updates
    ``jax.config``. Settings the user gave in the environment are kept.
    """
    path = globals()["cache_dir"](cache_dir)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": float(min_compile_secs),
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    explicit = cache_dir is not None
    jax = sys.modules.get("jax")
    for name, value in settings.items():
        if not explicit and name.upper() in os.environ:
            continue  # the user's own JAX setting wins
        if jax is None:
            os.environ[name.upper()] = str(value)
        else:
            jax.config.update(name, value)
    return path
