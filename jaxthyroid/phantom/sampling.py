"""Name-keyed random draws: every parameter of an image has its own key.

The key of a draw named ``name`` is ``fold_in(image_key, stable_id(name))``, with
``stable_id`` the CRC-32 of the name (not Python's ``hash``, which is salted per
process). So a draw's value depends only on the image's key and its name: adding,
removing or reordering draws leaves every other parameter of every image unchanged.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid.phantom.params import Range


def stable_id(name: str) -> np.uint32:
    """CRC-32 of the UTF-8 name: the same in every process, Python version and machine."""
    return np.uint32(zlib.crc32(name.encode("utf-8")))


def named_key(key: jax.Array, name: str) -> jax.Array:
    """The typed key of the draw ``name`` under ``key``."""
    return jax.random.fold_in(key, stable_id(name))


WIDTH = 8  # numbers per named draw: the largest draw shape (6 nodule slots) fits


class Draws:
    """The random numbers of one image, each drawn from its own named key.

    Made with every name the image will draw (``names``; see :func:`record`), it
    draws them all at once: ``WIDTH`` uniforms from ``fold_in(key, stable_id(name))``
    per name, as two vmapped threefry calls (one draw call per name made XLA compile
    ~2.5x longer). A draw of shape ``s`` takes the first ``prod(s)`` of its name's row,
    so its value depends on the key and the name only. Made with ``key=None`` it
    records the names (and returns zeros), for :func:`record`.

    A name may be drawn once per image (a second draw of it would repeat the first's
    numbers): a repeat raises at trace time.
    """

    def __init__(self, key: jax.Array | None, names: tuple[str, ...] = ()):
        self._key = key
        self._names: set[str] = set()
        self._index = {name: i for i, name in enumerate(names)}
        if key is None:
            self._table = None
        else:
            ids = jnp.asarray(np.array([stable_id(n) for n in names], np.uint32))
            keys = jax.vmap(jax.random.fold_in, (None, 0))(key, ids)
            self._table = jax.vmap(lambda k: jax.random.uniform(k, (WIDTH,)))(keys)  # [len(names), WIDTH]

    def _take(self, name: str) -> None:
        if name in self._names:
            raise ValueError(f"phantom: the draw {name!r} is taken twice for one image; give each draw its own name")
        self._names.add(name)

    def key(self, name: str) -> jax.Array:
        """A typed key of its own for ``name`` (for draws of image size: texture, noise)."""
        self._take(name)
        return named_key(self._key, name) if self._key is not None else jax.random.key(0)

    @property
    def names(self) -> frozenset[str]:
        """The names drawn so far."""
        return frozenset(self._names)

    def uniform(self, name: str, rng: Range, shape=()) -> jax.Array:
        self._take(name)
        n = int(np.prod(shape))
        if n > WIDTH:
            raise ValueError(f"phantom: the draw {name!r} of shape {shape} exceeds sampling.WIDTH={WIDTH}")
        if self._table is None:
            u = jnp.zeros(shape, jnp.float32)
        elif name not in self._index:
            raise KeyError(f"phantom: the draw {name!r} was not among the recorded names (see sampling.record)")
        else:
            u = self._table[self._index[name], :n].reshape(shape)
        return rng[0] + (rng[1] - rng[0]) * u

    def bernoulli(self, name: str, p, shape=()) -> jax.Array:
        return self.uniform(name, (0.0, 1.0), shape) < p

    def log_uniform(self, name: str, rng: Range, shape=()) -> jax.Array:
        return jnp.exp(self.uniform(name, (math.log(rng[0]), math.log(rng[1])), shape))

    def integer(self, name: str, rng: tuple[int, int], shape=()) -> jax.Array:
        """Uniform integer in ``[rng[0], rng[1]]`` (inclusive), int32."""
        return jnp.floor(self.uniform(name, (rng[0], rng[1] + 1.0 - 1e-4), shape)).astype(jnp.int32)

    def sign(self, name: str, shape=()) -> jax.Array:
        """+1 or -1 with equal probability (float32)."""
        return jnp.where(self.bernoulli(name, 0.5, shape), 1.0, -1.0)


def record(draws_cls, fn) -> tuple[str, ...]:
    """The names ``fn(draws)`` draws uniforms for, found by tracing it once with a
    recording ``draws_cls(None)`` (shapes only, nothing computed)."""
    rec = draws_cls(None)
    jax.eval_shape(lambda: fn(rec))
    return tuple(sorted(rec.names))


def pick(conditions_values, default):
    """First value whose condition holds, else default (a branch-free if/elif)."""
    out = default
    for cond, value in reversed(conditions_values):
        out = jnp.where(cond, value, out)
    return out
