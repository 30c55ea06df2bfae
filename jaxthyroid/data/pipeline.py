"""The grain input pipeline: shuffled, sharded, augmented, checkpointable batches.

A batch (a dict of NumPy arrays)::

    image        float32 [B, H, W, 1]  counts, augmented, then normalised per image to [0, 1]
    findings     float32 [B, F]        multi-hot labels
    finding_set  int32   [B]
    subset       int32   [B]           0 single-feature, 1 cross-feature
    synthetic    int32   [B]           1 for GAN-generated images

:func:`make_loader` is for training (grain ``DataLoader``; its iterator has
``get_state``/``set_state`` for checkpoints; each JAX process reads its own shard;
where grain is not installed, :class:`NumpyLoader`, the same contract in NumPy);
:func:`eval_batches` is for evaluation (every record once, in order, the last batch
padded and marked by ``mask``). Imports grain lazily; with ``worker_count > 0``
grain starts processes, which needs a ``__main__`` guard and
``absl.flags.FLAGS.mark_as_parsed()`` in the calling script.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from jaxthyroid.data import transforms
from jaxthyroid.data.examples import preprocess

BATCH_KEYS = ("image", "findings", "finding_set", "subset", "synthetic")


def _make_transforms(augment):
    from jaxthyroid.data import grain_ops

    return grain_ops.AugmentNormalize(augment) if augment is not None else grain_ops.Normalize()


class _BlockSampler:
    """Process ``shard_index``'s block of every global batch of a grain sampler.

    Global batch ``j`` is positions ``[j * B, (j + 1) * B)`` of ``sampler`` (``B =
    block * shard_count``); this shard reads positions ``j * B + shard_index * block + i``
    (``i < block``), so its ``j``-th batch of ``block`` is the rows one process with every
    device would put on this process's devices. Records keep the inner sampler's seeded
    ``rng`` (augmentation does not depend on the process layout); ``index`` is this
    sampler's own position (grain's iterator state counts in it). A last partial global
    batch is dropped (every process must feed whole batches).
    """

    def __init__(self, sampler, *, block: int, shard_index: int, shard_count: int):
        self.sampler, self.block = sampler, int(block)
        self.shard_index, self.shard_count = int(shard_index), int(shard_count)
        self.length = len(sampler) // (self.block * self.shard_count) * self.block

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import grain

        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range [0, {self.length})")
        j, i = divmod(int(index), self.block)
        inner = self.sampler[(j * self.shard_count + self.shard_index) * self.block + i]
        return grain.RecordMetadata(index=index, record_key=inner.record_key, rng=inner.rng)

    def __repr__(self) -> str:
        return (
            f"_BlockSampler({self.sampler!r}, block={self.block}, "
            f"shard_index={self.shard_index}, shard_count={self.shard_count})"
        )


def make_loader(
    source,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    augment: transforms.AugmentConfig | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    worker_count: int = 0,
):
    """A grain ``DataLoader`` of training batches over ``source``.

    ``batch_size`` is per process (the global batch is ``batch_size * shard_count``).
    Shards default to this JAX process (``jax.process_index()`` of
    ``jax.process_count()``). Every shard walks the same seeded order, cut into
    global batches; shard ``k``'s batch ``j`` is block ``k`` of global batch ``j``
    (records ``[k * batch_size, (k + 1) * batch_size)`` of it). So shards are disjoint,
    each process reads only its own records, and the global batch a multi-process step
    sees, row for row, is the batch of one process with ``shard_count`` times the
    batch size (a last partial global batch is dropped when ``shard_count > 1``,
    whatever ``drop_remainder`` says). ``num_epochs=None`` repeats forever.
    Deterministic for ``seed`` (order and augmentation; each record's augmentation
    rng comes from ``seed`` and its position in the global order, not from the batch
    or the shard it lands in); ``iter(loader)`` gives an iterator with
    ``get_state() -> bytes`` / ``set_state(bytes)``.

    ``worker_count > 0`` runs grain worker processes (needs a ``__main__`` guard and
    ``absl.flags.FLAGS.mark_as_parsed()``). Each worker batches its own records, so
    the batch composition (and how many records ``drop_remainder`` drops) depends on
    ``worker_count``: keep it fixed across a run and its restarts.
    Where grain is not installed (the accelerator machines), a :class:`NumpyLoader`
    with the same contract is returned instead (its own seeded order: the batches
    differ from grain's; ``worker_count`` is ignored).
    """
    try:
        import grain
    except ImportError:
        grain = None

    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if len(source) == 0:
        raise ValueError(f"empty source {source!r}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, {shard_count})")
    if grain is None:
        return NumpyLoader(
            source,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            num_epochs=num_epochs,
            augment=augment,
            shard_index=shard_index,
            shard_count=shard_count,
            drop_remainder=drop_remainder,
        )
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
        shard_options=grain.sharding.NoSharding(),  # the DataLoader shards (grain ≥ 0.2)
    )
    if shard_count > 1:
        sampler = _BlockSampler(sampler, block=batch_size, shard_index=shard_index, shard_count=shard_count)
        if len(sampler) == 0:
            raise ValueError(
                f"{len(source)} records are less than one global batch of {batch_size} x {shard_count} processes"
            )
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[_make_transforms(augment), grain.transforms.Batch(batch_size, drop_remainder=drop_remainder)],
        worker_count=worker_count,
        # The block sampler already holds only this shard's positions.
        shard_options=grain.sharding.ShardOptions(shard_index=0, shard_count=1, drop_remainder=True),
        # Read in the calling thread: grain's default 16 reader threads poll their
        # futures in a busy loop (~350k calls an epoch of 960 records, measured with
        # cProfile), which takes a core from XLA on a 2-core machine; reading inline
        # made an augmented epoch 2.05 s -> 1.5 s, and the train step runs meanwhile.
        read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0),
    )


class NumpyLoader:
    """Training batches over ``source`` in NumPy, for machines without grain.

    The contract of :func:`make_loader`: one stream of records over ``num_epochs``
    passes (None: endless), each pass a permutation seeded by ``(seed, pass)`` (or in
    order without ``shuffle``), cut into global batches of ``batch_size *
    shard_count``, shard ``k`` taking block ``k`` of each; record ``g`` of the stream
    is augmented with ``np.random.default_rng((seed, g))`` (independent of the batch
    and the shard it lands in). A last short batch is dropped with ``drop_remainder``
    or several shards. ``iter(loader)`` has ``get_state() -> {'position': int}`` and
    ``set_state``.
    """

    def __init__(
        self, source, *, batch_size, seed, shuffle, num_epochs, augment, shard_index, shard_count, drop_remainder
    ):
        self.source, self.batch_size, self.seed, self.shuffle = source, int(batch_size), int(seed), bool(shuffle)
        self.num_epochs, self.augment = num_epochs, augment
        self.shard_index, self.shard_count = int(shard_index), int(shard_count)
        self.drop_remainder = bool(drop_remainder) or self.shard_count > 1
        if self.shard_count > 1 and len(source) < self.batch_size * self.shard_count:
            raise ValueError(
                f"{len(source)} records are less than one global batch of {batch_size} x {shard_count} processes"
            )

    def __iter__(self) -> _NumpyIterator:
        return _NumpyIterator(self)

    def __repr__(self) -> str:
        return (
            f"NumpyLoader({self.source!r}, batch_size={self.batch_size}, seed={self.seed}, shuffle={self.shuffle}, "
            f"num_epochs={self.num_epochs}, shard={self.shard_index}/{self.shard_count})"
        )


class _NumpyIterator:
    def __init__(self, loader: NumpyLoader):
        self.loader = loader
        self.position = 0  # records of this shard consumed (whole batches)
        self._perm = (None, None)  # (pass, permutation): the current pass's order

    def __iter__(self):
        return self

    def _record(self, g: int):
        lo = self.loader
        n = len(lo.source)
        epoch, r = divmod(g, n)
        if lo.shuffle:
            if self._perm[0] != epoch:
                self._perm = (epoch, np.random.default_rng((lo.seed, epoch)).permutation(n))
            r = int(self._perm[1][r])
        return lo.source[r]

    def __next__(self) -> dict:
        lo = self.loader
        total = None if lo.num_epochs is None else len(lo.source) * int(lo.num_epochs)
        global_end = (self.position // lo.batch_size + 1) * lo.batch_size * lo.shard_count
        if total is not None and lo.drop_remainder and global_end > total:
            raise StopIteration  # a short last global batch: every shard stops before it
        examples = []
        for j in range(self.position, self.position + lo.batch_size):
            b, i = divmod(j, lo.batch_size)
            g = (b * lo.shard_count + lo.shard_index) * lo.batch_size + i  # position in the global stream
            if total is not None and g >= total:
                break
            rng = np.random.default_rng((lo.seed, g)) if lo.augment is not None else None
            examples.append(preprocess(self._record(g), lo.augment, rng))
        if not examples or (len(examples) < lo.batch_size and lo.drop_remainder):
            raise StopIteration
        self.position += lo.batch_size
        return {k: np.stack([e[k] for e in examples]) for k in BATCH_KEYS}

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state) -> None:
        self.position = int(state["position"] if isinstance(state, dict) else state)


def eval_batch_indices(n: int, batch_size: int, *, shard_index: int = 0, shard_count: int = 1) -> list[np.ndarray]:
    """Record indices of each eval batch of one shard (the last ones may be short or empty).

    Global eval batch ``j`` is records ``[j * E, (j + 1) * E)`` (``E = batch_size *
    shard_count``); shard ``k`` gets block ``k`` of it, records ``j * E + k *
    batch_size + i``. Every shard gets the same number of batches (``ceil(n / E)``),
    so collective ops line up across processes, and the padded global batch is the one
    a single process with ``E`` would evaluate, padding in the same rows.
    """
    global_batch = batch_size * shard_count
    num_batches = math.ceil(n / global_batch)
    out = []
    for j in range(num_batches):
        start = j * global_batch + shard_index * batch_size
        out.append(np.arange(start, min(start + batch_size, n)) if start < n else np.arange(0))
    return out


def pad_batch(examples: dict, batch_size: int) -> dict:
    """Stacked examples ``{key: [k, ...]}`` (``k <= batch_size``) -> a batch of exactly
    ``batch_size``: zero rows appended, and ``mask`` float32 ``[batch_size]`` (1 real, 0 pad)."""
    k = len(next(iter(examples.values())))
    pad = batch_size - k
    batch = {
        name: np.concatenate([np.asarray(x), np.zeros((pad,) + np.shape(x)[1:], np.asarray(x).dtype)])
        for name, x in examples.items()
    }
    batch["mask"] = np.concatenate([np.ones(k, np.float32), np.zeros(pad, np.float32)])
    return batch


def eval_batches(
    source,
    batch_size: int,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict]:
    """Every record of ``source`` once, in order, in batches of exactly ``batch_size``.

    The last batch is padded with zero examples; ``mask`` float32 ``[B]`` is 1 for
    real examples and 0 for padding, so metrics never drop images. With several
    processes give each its ``shard_index``/``shard_count``: shard ``k`` gets block
    ``k`` of every global batch (:func:`eval_batch_indices`), and every shard yields
    the same number of batches (so collective ops line up). :func:`jaxthyroid.data.device_stream.eval_batches_from_arrays`
    batches in-memory arrays the same way. ``batch_size`` is per shard.
    """
    for idx in eval_batch_indices(len(source), batch_size, shard_index=shard_index, shard_count=shard_count):
        examples = [preprocess(source[int(i)]) for i in idx]
        # A shard that ran out first gets a batch of padding only (shaped like record 0).
        rows = examples or [preprocess(source[0])]
        stacked = {k: np.stack([e[k] for e in rows])[: len(examples)] for k in BATCH_KEYS}
        yield pad_batch(stacked, batch_size)
