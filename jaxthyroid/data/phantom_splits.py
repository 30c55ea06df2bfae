"""What the phantom data set's examples are, without TFDS: split seeds, finding sets, images.

Example ``i`` of a split is ``phantom.simulate(phantom.example_keys(split_seed, [i]),
[ids[i]])`` with ``ids = phantom.sample_finding_set_ids(jax.random.key(split_seed), n)``
and ``split_seed = 3 * seed + {train: 0, validation: 1, test: 2}``: deterministic, and
the same whatever batch size generated it. The TFDS builder
(:mod:`jaxthyroid.data.phantom_builder`) and the array data set
(:mod:`jaxthyroid.data.arrays`) both write these examples.
"""

from __future__ import annotations

import jax
import numpy as np

SPLIT_OFFSETS = {"train": 0, "validation": 1, "test": 2}
GENERATE_BATCH = 32  # examples per jitted simulator call
DEFAULTS = dict(cross_fraction=0.25, n_train=2400, n_val=600, n_test=600, seed=0)


def config_name(size, cross_fraction, n_train, n_val, n_test, seed, domain="default") -> str:
    """``s128`` for the defaults at a size, else a name spelling out every setting
    (a phantom regime other than the default, ``PhantomParams.regime(domain)``, last)."""
    given = dict(cross_fraction=cross_fraction, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    suffix = "" if domain == "default" else f"_{domain}"
    if given == DEFAULTS and size in (64, 128, 256):
        return f"s{size}{suffix}"
    return f"s{size}_x{round(cross_fraction * 100)}_n{n_train}_{n_val}_{n_test}_seed{seed}{suffix}"


def split_seed(seed: int, split: str) -> int:
    return 3 * int(seed) + SPLIT_OFFSETS[split]


def split_finding_set_ids(seed: int, split: str, n: int, cross_fraction: float) -> np.ndarray:
    """Finding-set ids int32 ``[n]`` of a split's examples (fixed by seed and split)."""
    from jaxthyroid import phantom

    key = jax.random.key(split_seed(seed, split))
    return np.asarray(phantom.sample_finding_set_ids(key, n, cross_fraction=cross_fraction))


def simulate_examples(seed: int, split: str, indices, finding_set_ids, size: int, domain="default") -> np.ndarray:
    """Images as stored: uint16 ``[len(indices), size, size, 1]`` of those examples
    (raw counts, or as the phantom regime ``domain`` exports them)."""
    from jaxthyroid import phantom

    keys = phantom.example_keys(split_seed(seed, split), np.asarray(indices))
    params = phantom.PhantomParams.regime(domain)
    counts = phantom.simulate(keys, np.asarray(finding_set_ids, np.int32), size=size, params=params)  # jitted
    return np.clip(np.rint(np.asarray(counts)), 0, 65535).astype(np.uint16)


def simulate_split(seed: int, split: str, n: int, *, size: int, cross_fraction: float, progress=None, domain="default"):
    """``(counts uint16 [n, size, size, 1], finding-set ids int32 [n])`` of a whole split,
    generated :data:`GENERATE_BATCH` at a time (a fixed batch shape, the last one padded:
    the simulator compiles once). ``progress(k)`` is called with each batch's count."""
    ids = split_finding_set_ids(seed, split, n, cross_fraction)
    out = np.empty((n, size, size, 1), np.uint16)
    for start in range(0, n, GENERATE_BATCH):
        idx = np.arange(start, start + GENERATE_BATCH)
        real = idx < n
        out[idx[real]] = simulate_examples(seed, split, idx, ids[np.minimum(idx, n - 1)], size, domain)[real]
        if progress is not None:
            progress(int(real.sum()))
    return out, ids
