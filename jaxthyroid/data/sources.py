"""Random-access source wrappers: subsets, concatenation, real + synthetic mixes.

A *source* is anything with ``len(src)`` and ``src[i] -> record dict`` (TFDS's
``ArrayRecordDataSource`` from :func:`jaxthyroid.data.features.load_source`, or an
in-memory list). The wrappers keep random access, so grain can shuffle, shard and
checkpoint over them, and each has a stable ``repr`` (grain checks it when an
iterator state is restored). No TFDS or grain import here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class IndexedSource:
    """The records ``indices`` of ``source``, in that order (a filter or a subset)."""

    def __init__(self, source, indices: Sequence[int], *, description: str = "subset"):
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        self.description = description

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[int(self.indices[i])]

    def __repr__(self) -> str:
        return f"IndexedSource({self.description}, n={len(self)}, of={self.source!r})"


class ConcatSource:
    """Records of several sources one after another; optionally overriding fields
    per part (``overrides[k]`` is merged into every record of part ``k``)."""

    def __init__(self, parts: Sequence, overrides: Sequence[dict | None] | None = None):
        self.parts = list(parts)
        self.overrides = list(overrides) if overrides is not None else [None] * len(self.parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i):
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        record = self.parts[k][i - int(self.offsets[k])]
        if self.overrides[k]:
            record = {**record, **self.overrides[k]}
        return record

    def __repr__(self) -> str:
        return f"ConcatSource({', '.join(repr(p) for p in self.parts)}; overrides={self.overrides})"


def single_feature(source) -> IndexedSource:
    """Only the single-feature records (``subset == 0``): phase 1's training set.

    Reads every record once to find them (a few seconds for thousands of 128² images).
    """
    keep = [i for i in range(len(source)) if int(source[i]["subset"]) == 0]
    return IndexedSource(source, keep, description="single_feature")


def per_set_subset(source, per_set: int, *, seed: int = 0) -> IndexedSource:
    """At most ``per_set`` records of each finding set, drawn by a seeded permutation:
    the data-scarcity study's smaller real training sets (original order kept)."""
    set_ids = np.asarray([int(source[i]["finding_set"]) for i in range(len(source))])
    rng = np.random.default_rng(seed)
    keep = []
    for s in np.unique(set_ids):
        members = np.flatnonzero(set_ids == s)
        keep.extend(rng.permutation(members)[:per_set].tolist())
    return IndexedSource(source, sorted(keep), description=f"per_set={per_set},seed={seed}")


def mix_sources(real, synthetic, synthetic_ratio: float, *, seed: int = 0) -> ConcatSource:
    """Real records plus ``round(synthetic_ratio * len(real))`` synthetic ones.

    ``synthetic_ratio`` is synthetic : real (1.0 doubles the set). Synthetic records
    are drawn by a seeded permutation of ``synthetic``, cycling through it again if
    more are asked for than it holds; each gets ``synthetic = 1``. Shuffle the result
    (the loader does) to interleave them.
    """
    if synthetic_ratio < 0:
        raise ValueError(f"synthetic_ratio must be >= 0, got {synthetic_ratio}")
    n_syn = int(round(synthetic_ratio * len(real)))
    if n_syn == 0:
        return ConcatSource([real])
    if len(synthetic) == 0:
        raise ValueError("synthetic source is empty but synthetic_ratio > 0")
    rng = np.random.default_rng(seed)
    reps = -(-n_syn // len(synthetic))
    order = np.concatenate([rng.permutation(len(synthetic)) for _ in range(reps)])[:n_syn]
    picked = IndexedSource(synthetic, order, description=f"synthetic_ratio={synthetic_ratio},seed={seed}")
    return ConcatSource([real, picked], overrides=[None, {"synthetic": np.int64(1)}])


def stratified_folds(set_ids, folds: int, *, seed: int = 0) -> np.ndarray:
    """The fold int64 ``[N]`` of each record, given its finding set ``set_ids [N]``.

    Stratified: each finding set's records are permuted (seeded) and dealt to the folds
    in turn, continuing where the previous set stopped, so every set's count differs by
    at most one between folds, and so does every fold's size.
    """
    set_ids = np.asarray(set_ids)
    if folds < 2:
        raise ValueError(f"k-fold needs at least 2 folds, not {folds}")
    if len(set_ids) < folds:
        raise ValueError(f"{len(set_ids)} records cannot make {folds} folds")
    rng = np.random.default_rng(seed)
    out = np.empty(len(set_ids), np.int64)
    start = 0
    for s in np.unique(set_ids):
        members = rng.permutation(np.flatnonzero(set_ids == s))
        out[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return out


def fold_split(train, validation, folds: int, fold: int, *, seed: int = 0) -> tuple[IndexedSource, IndexedSource]:
    """``(train, validation)`` of fold ``fold`` of a k-fold over the records of ``train``
    and ``validation`` together: the fold's records validate, the other folds' train
    (:func:`stratified_folds`; a test split stays as it is)."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not in [0, {folds})")
    pool = ConcatSource([train, validation])
    set_ids = np.asarray([int(pool[i]["finding_set"]) for i in range(len(pool))])
    assigned = stratified_folds(set_ids, folds, seed=seed)
    name = f"fold={fold}/{folds},seed={seed}"
    return (
        IndexedSource(pool, np.flatnonzero(assigned != fold), description=f"{name},train"),
        IndexedSource(pool, np.flatnonzero(assigned == fold), description=f"{name},validation"),
    )


class ListSource:
    """An in-memory list of records as a source (tests, small generated sets)."""

    def __init__(self, records: Sequence[dict], *, description: str = "list"):
        self.records = list(records)
        self.description = description

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[int(i)]

    def __repr__(self) -> str:
        return f"ListSource({self.description}, n={len(self)})"
