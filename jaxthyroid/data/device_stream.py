"""Phantom batches generated on the accelerator: training without TFDS or grain.

The GPU machines have JAX but neither tensorflow_datasets nor grain, so a run there
draws its data from the simulator directly: each batch is one jitted call
(simulate, augment, normalise) on the device, with nothing read from disk. A batch
has the layout of :mod:`jaxthyroid.data.pipeline`'s (device arrays instead of NumPy)::

    image        float32 [B, H, W, 1]  counts, augmented, normalised per image to [0, 1]
    findings     float32 [B, F]        multi-hot labels
    finding_set  int32   [B]
    subset       int32   [B]           0 single-feature, 1 cross-feature
    synthetic    int32   [B]           always 0 (simulated, not generated)

Batch ``s`` of a stream depends only on ``(key, s)`` and the static settings, so
``get_state()``/``set_state()`` (the step counter) resume it exactly. This module
imports neither TFDS nor grain (tests check it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import parallel, phantom

# pipeline imports grain only inside make_loader (test_device_stream checks it in a
# subprocess with grain and TFDS blocked): its eval padding is shared from there.
from jaxthyroid.data import pipeline, transforms

BATCH_KEYS = pipeline.BATCH_KEYS
FIXED_SPLIT_BATCH = 32  # examples per simulator call in fixed_split


def _phantom_batch(key, batch_size: int, cross_fraction, size: int, params) -> dict:
    """The draws of :func:`phantom.make_batch` with ``cross_fraction`` traced, so the
    single-feature stream (0.0) and the mixed one share one compiled function."""
    k_sets, k_images = jax.random.split(key)
    sets = phantom.sample_finding_set_ids(k_sets, batch_size, cross_fraction=cross_fraction)
    images = phantom.simulate(jax.random.split(k_images, batch_size), sets, size=size, params=params)
    table = jnp.asarray(findings_lib.DEFAULT.set_table)
    return {
        "image": images,
        "findings": table[sets],
        "finding_set": sets.astype(jnp.int32),
        "subset": (table[sets].sum(-1) > 1).astype(jnp.int32),
    }


@functools.cache
def _batch_fn(batch_size: int, size: int, augment: transforms.AugmentConfig | None, params, sharding):
    """One jitted ``(key, step, cross_fraction) -> batch`` per static setting."""

    def generate(key, step, cross_fraction):
        k_data, k_augment = jax.random.split(jax.random.fold_in(key, step))
        batch = _phantom_batch(k_data, batch_size, cross_fraction, size, params)
        counts = batch["image"]
        if augment is not None:
            counts = transforms.augment_batch(k_augment, counts, augment)
        batch["image"] = transforms.normalize_counts(counts)
        batch["synthetic"] = jnp.zeros((batch_size,), jnp.int32)
        return batch

    return jax.jit(generate, out_shardings=sharding)


class PhantomStream:
    """Iterator of device batches (see the module docstring); ``steps=None`` never ends.

    ``get_state() -> {'step': int}`` is the next batch's step; ``set_state`` takes
    that dict (or the int) and continues from there.
    """

    def __init__(
        self,
        key: jax.Array,
        *,
        batch_size: int,
        size: int,
        cross_fraction: float,
        single_only: bool,
        augment: transforms.AugmentConfig | None,
        steps: int | None,
        first_step: int,
        params,
        mesh,
    ):
        if size not in phantom.SIZES:
            raise ValueError(f"phantom size must be one of {phantom.SIZES}, got {size}")
        if not 0.0 <= cross_fraction <= 1.0:
            raise ValueError(f"cross_fraction must be in [0, 1], got {cross_fraction}")
        sharding = None
        if mesh is not None:
            if batch_size % mesh.size:
                raise ValueError(f"batch_size {batch_size} does not split over the mesh's {mesh.size} devices")
            sharding = parallel.data_sharding(mesh)
        self.key = key
        self.batch_size = batch_size
        # sample_finding_set_ids with 0 draws single-feature sets only, uniformly over
        # findings.DEFAULT.single_set_ids: phase 1's training set.
        self.cross_fraction = 0.0 if single_only else float(cross_fraction)
        self.first_step = int(first_step)
        self.end = None if steps is None else self.first_step + int(steps)
        self.step = self.first_step
        self._generate = _batch_fn(batch_size, size, augment, params, sharding)

    def __iter__(self) -> PhantomStream:
        return self

    def __next__(self) -> dict:
        if self.end is not None and self.step >= self.end:
            raise StopIteration
        batch = self._generate(self.key, jnp.uint32(self.step), jnp.float32(self.cross_fraction))
        self.step += 1
        return batch

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state) -> None:
        step = int(state["step"] if isinstance(state, dict) else state)
        if step < self.first_step or (self.end is not None and step > self.end):
            raise ValueError(
                f"stream state step {step} is outside this stream's steps "
                f"[{self.first_step}, {self.end if self.end is not None else '∞'}]"
            )
        self.step = step


def train_batches(
    key: jax.Array,
    *,
    batch_size: int,
    size: int = 128,
    cross_fraction: float = 0.25,
    single_only: bool = False,
    augment: transforms.AugmentConfig | None = None,
    steps: int | None = None,
    first_step: int = 0,
    params: phantom.PhantomParams = phantom.DEFAULT_PARAMS,
    mesh=None,
) -> PhantomStream:
    """A stream of phantom training batches generated on the device.

    Batch ``s`` (for ``s = first_step, first_step + 1, …``) is the phantom batch of
    ``fold_in(key, s)`` (split into a data and an augmentation key): finding sets drawn
    with ``cross_fraction`` (single-feature only with ``single_only``), simulated,
    augmented on the device when ``augment`` is given
    (:func:`transforms.augment_batch`), normalised (:func:`transforms.normalize_counts`),
    all in one jitted call. ``steps`` batches, or endless when None; for epochs of
    ``n`` steps use ``first_step=epoch * n, steps=n``. With ``mesh``, batches come out
    split over its ``data`` axis (what ``parallel.shard_batch`` would make of them;
    ``batch_size`` is then the global batch).
    """
    return PhantomStream(
        key,
        batch_size=batch_size,
        size=size,
        cross_fraction=cross_fraction,
        single_only=single_only,
        augment=augment,
        steps=steps,
        first_step=first_step,
        params=params,
        mesh=mesh,
    )


def fixed_split(
    seed: int,
    n: int,
    *,
    size: int = 128,
    cross_fraction: float = 0.25,
    params: phantom.PhantomParams = phantom.DEFAULT_PARAMS,
    generate_batch: int = FIXED_SPLIT_BATCH,
) -> dict[str, np.ndarray]:
    """A deterministic evaluation set, as host arrays (the layout of a batch, ``B = n``).

    The first ``n`` examples of the unaugmented stream of ``jax.random.key(seed)``
    generated ``generate_batch`` at a time; the set depends on ``(seed, n, size,
    cross_fraction, generate_batch)`` only. Use a seed no training stream's key comes
    from. Batch it with :func:`eval_batches_from_arrays`.
    """
    if n <= 0:
        raise ValueError(f"an evaluation set needs n > 0 examples, got {n}")
    stream = train_batches(
        jax.random.key(seed),
        batch_size=generate_batch,
        size=size,
        cross_fraction=cross_fraction,
        steps=math.ceil(n / generate_batch),
        params=params,
    )
    parts = [jax.device_get(b) for b in stream]
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in BATCH_KEYS}


def eval_batches_from_arrays(
    arrays: dict,
    batch_size: int,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict]:
    """Batches of exactly ``batch_size`` over in-memory arrays ``{key: [N, ...]}``.

    Every example once, in order; the last batch zero-padded with ``mask`` float32
    ``[B]`` (1 real, 0 padding); shards as :func:`jaxthyroid.data.pipeline.eval_batches`
    (the same index and padding code), so a fixed phantom split evaluates exactly like
    a TFDS one.
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    n = len(next(iter(arrays.values())))
    if any(len(v) != n for v in arrays.values()):
        raise ValueError(f"arrays differ in length: { {k: len(v) for k, v in arrays.items()} }")
    for idx in pipeline.eval_batch_indices(n, batch_size, shard_index=shard_index, shard_count=shard_count):
        yield pipeline.pad_batch({k: v[idx] for k, v in arrays.items()}, batch_size)
