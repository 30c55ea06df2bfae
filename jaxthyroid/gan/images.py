"""Real images as the GANs see them, and fixed-shape batching for generation and scoring."""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid.data import transforms

GENERATE_BATCH = 64


def cpu_friendly_random(fn):
    """Runs ``fn`` with the classic (non-partitionable) threefry layout on CPU.

    XLA:CPU compiles partitionable threefry (jax's default) several times slower
    (``jax.random.normal`` and the jitted init of a tiny DCGAN); the classic layout
    draws other, equally good streams (so a seed gives other numbers on CPU than on
    an accelerator); its only drawback, unsharded random generation, does not matter
    here (initialisation and a ``[batch, nz]`` noise draw).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if jax.default_backend() != "cpu":
            return fn(*args, **kwargs)
        with jax.threefry_partitionable(False):
            return fn(*args, **kwargs)

    return wrapper


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W, C]`` -> ``[N, size, size, C]`` by area averaging.

    An integer shrink factor averages ``f×f`` blocks exactly; any other size (or an
    enlargement) uses antialiased linear resampling, the area average's continuous
    counterpart.
    """
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    if h % size == 0 and w % size == 0 and h // size == w // size:
        f = h // size
        return images.reshape(n, size, f, size, f, c).mean(axis=(2, 4))
    return np.asarray(jax.image.resize(images, (n, size, size, c), "linear", antialias=True))


def subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``limit`` of ``n`` records (all when None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def real_images(
    source, size: int, *, limit: int | None = None, seed: int = 0, with_indices: bool = False
) -> tuple[np.ndarray, ...]:
    """Records of a random-access source -> ``(images, finding_set)`` (``, indices``).

    ``images``: float32 ``[N, size, size, 1]`` in [0, 1], each normalised by its own
    99.5th percentile at the source size, then area-averaged to ``size``;
    ``finding_set``: int32 ``[N]``; ``indices``: the records taken (``limit`` takes a
    seeded random subset).
    """
    n = len(source)
    if n == 0:
        raise ValueError("the source has no records")
    order = subset(n, limit, seed)
    counts, ids = [], []
    for i in order:
        record = source[int(i)]
        counts.append(np.asarray(record["image"]))
        ids.append(int(record["finding_set"]))
    counts = np.stack(counts)
    if counts.ndim != 4 or counts.shape[-1] != 1:
        raise ValueError(f"source images must be [H, W, 1] counts, got records stacked to {counts.shape}")
    unit = transforms.normalize_counts(counts.astype(np.float32))
    out = (area_resize(unit, size), np.asarray(ids, np.int32))
    return out + (order,) if with_indices else out


def in_batches(fn, *arrays, batch_size: int = GENERATE_BATCH):
    """``fn`` over fixed-size batches of the leading axis (the last one padded by
    repeating its final row, so one compiled shape serves any N); outputs concatenated
    and trimmed to N. ``fn`` returns an array or a tuple of arrays."""
    n = len(arrays[0])
    outs = []
    for s in range(0, n, batch_size):
        chunk = [np.asarray(a[s : s + batch_size]) for a in arrays]
        k = len(chunk[0])
        if k < batch_size:
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - k, axis=0)]) for c in chunk]
        out = fn(*chunk)
        out = out if isinstance(out, tuple) else (out,)
        outs.append([np.asarray(o)[:k] for o in out])
    result = tuple(np.concatenate(parts) for parts in zip(*outs))
    return result if len(result) > 1 else result[0]


def to_tanh(x):
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


def to_unit(x) -> np.ndarray:
    """[-1, 1] -> [0, 1], clipped, float32."""
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def by_set(images: np.ndarray, ids: np.ndarray, taxonomy=findings_lib.DEFAULT) -> dict:
    """``{folder name: images of that finding set}`` for a contact sheet (one row per set)."""
    return {taxonomy.folder_name(s): images[ids == s] for s in range(taxonomy.num_sets)}
