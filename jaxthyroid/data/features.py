"""The record layout every jaxthyroid TFDS data set shares, and how to open one.

Features are only ``tfds.features.Tensor``/``Scalar`` (no ``Image``, no
``ClassLabel``): TFDS then writes and random-reads ``array_record`` files without
TensorFlow. A record::

    image             uint16 [H, W, 1]  raw counts (clipped to 65535)
    findings          float32 [F]       multi-hot over the taxonomy's findings
    finding_set       int64             id into the taxonomy's finding_sets
    finding_set_name  str (bytes when read back)  folder name, e.g. b"graves+hot_nodule"
    subset            int64             0 single-feature, 1 cross-feature
    synthetic         int64             0 real/simulated, 1 generated (GAN)
    origin            str (bytes)       where it came from: a file path, or "phantom/<split>/<i>"

The taxonomy is saved beside the records as ``taxonomy.json``
(:data:`TAXONOMY_FILE`); :func:`load_taxonomy` reads it back.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np

from jaxthyroid import findings as findings_lib

TAXONOMY_FILE = "taxonomy.json"
SPLITS = ("train", "validation", "test")


class QuietPrepare:
    """Mixin for our TFDS builders: no "Downloading and preparing dataset Unknown size..."
    and "... downloaded and prepared" lines. Nothing is downloaded (the data are
    generated or read locally) and the build shows its own progress bar; TFDS prints
    these two lines itself (not through logging), from the two methods replaced here.
    """

    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass


@contextlib.contextmanager
def builder_with_own_config():
    """Around constructing a builder with a config made for the call (every phantom size
    and split count, every folder, every synthetic set has its own): TFDS logs that as
    an absl WARNING ("Using custom data configuration"), which here is the normal
    case, not a problem. absl's verbosity is ERROR inside the block only.
    """
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(before)


def is_built(dataset_dir) -> bool:
    """Whether a complete TFDS data set is in ``dataset_dir`` (TFDS writes into an
    ``incomplete.*`` folder and renames it, with ``dataset_info.json``, when done), or a
    complete array data set (:mod:`jaxthyroid.data.arrays`)."""
    from jaxthyroid.data import arrays

    folder = os.fspath(dataset_dir)
    return os.path.isfile(os.path.join(folder, "dataset_info.json")) or arrays.is_array_dataset(folder)


class DataError(ValueError):
    """A data set cannot be built; ``problems`` lists every ``"<file>: <reason>"``."""

    def __init__(self, summary: str, problems: list[str]):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:200])
        more = f"\n  ... and {len(self.problems) - 200} more" if len(self.problems) > 200 else ""
        super().__init__(f"{summary}\n  {shown}{more}")


def features_dict(size: int, num_findings: int):
    """The TFDS ``FeaturesDict`` of one record (imports TFDS lazily)."""
    import tensorflow_datasets as tfds

    tensor = tfds.features.Tensor
    return tfds.features.FeaturesDict(
        {
            "image": tensor(shape=(size, size, 1), dtype=np.uint16),
            "findings": tensor(shape=(num_findings,), dtype=np.float32),
            "finding_set": tfds.features.Scalar(dtype=np.int64),
            "finding_set_name": tensor(shape=(), dtype=np.str_),
            "subset": tfds.features.Scalar(dtype=np.int64),
            "synthetic": tfds.features.Scalar(dtype=np.int64),
            "origin": tensor(shape=(), dtype=np.str_),
        }
    )


def make_record(
    image: np.ndarray,
    finding_set: int,
    taxonomy: findings_lib.Taxonomy,
    *,
    origin: str,
    synthetic: bool = False,
) -> dict:
    """One record from a uint16 image ``[H, W, 1]`` and its finding-set id."""
    return {
        "image": np.asarray(image, np.uint16),
        "findings": taxonomy.set_table[finding_set],
        "finding_set": int(finding_set),
        "finding_set_name": taxonomy.folder_name(int(finding_set)),
        "subset": int(taxonomy.is_cross(int(finding_set))),
        "synthetic": int(bool(synthetic)),
        "origin": origin,
    }


def save_taxonomy(dataset_dir, taxonomy: findings_lib.Taxonomy) -> None:
    with open(os.path.join(os.fspath(dataset_dir), TAXONOMY_FILE), "w") as f:
        json.dump(taxonomy.to_dict(), f, indent=1)


def load_taxonomy(dataset_dir) -> findings_lib.Taxonomy:
    """The taxonomy a data set was built with (``<dataset_dir>/taxonomy.json``)."""
    path = os.path.join(os.fspath(dataset_dir), TAXONOMY_FILE)
    with open(path) as f:
        return findings_lib.Taxonomy.from_dict(json.load(f))


# Decoded records kept per (data set, split) for the life of the process, up to this
# many MiB in all ($JAXTHYROID_MEMORY_CACHE_MB; 0 turns it off).
MEMORY_CACHE_ENV = "JAXTHYROID_MEMORY_CACHE_MB"
MEMORY_CACHE_MB = 1024
_MEMORY: dict[tuple[str, str, int], InMemorySource] = {}
# Array data sets opened so far (they are NumPy arrays in memory already): (path, split) ->
# (the format file's mtime, source). Apart from _MEMORY, whose budget counts decoded TFDS splits.
_ARRAYS: dict[tuple[str, str], tuple[int, object]] = {}


class InMemorySource:
    """A random-access source that decodes each record once and keeps it.

    Reading and decoding one 64² phantom record from array_record costs ~2.4 ms on a
    2-core CPU, more than the train step's share of it; the pipeline reads every
    record once an epoch, in many runs (``jaxthyroid reproduce`` trains ~16 models on
    one data set). Arrays come back read-only, so a consumer cannot change the cache.
    """

    def __init__(self, source):
        self._source = source
        self._records: list = [None] * len(source)
        # Decoded size, from the first record (decoded once: it stays in the cache).
        first = self[0] if len(source) else {}
        self.estimated_mb = sum(np.asarray(v).nbytes for v in first.values()) * len(source) / 2**20

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):
        index = int(index)
        record = self._records[index]
        if record is None:
            record = self._source[index]
            for value in record.values():
                if isinstance(value, np.ndarray):
                    value.flags.writeable = False
            self._records[index] = record
        return record

    def __repr__(self) -> str:
        return f"InMemorySource({self._source!r})"


def _memory_budget_mb() -> float:
    try:
        return float(os.environ.get(MEMORY_CACHE_ENV, MEMORY_CACHE_MB))
    except ValueError:
        return float(MEMORY_CACHE_MB)


def load_source(dataset_dir, split: str, *, in_memory: bool | None = None):
    """Random-access source over one split of a built data set (no TensorFlow).

    ``dataset_dir`` is the versioned folder a ``build_*`` function returns
    (``<data_dir>/<name>/<config>/<version>``). Returns TFDS's ``ArrayRecordDataSource``
    (``len(src)``, ``src[i]`` -> record dict; strings come back as bytes), wrapped in
    an :class:`InMemorySource` shared by every caller in this process while the
    decoded splits fit in ``$JAXTHYROID_MEMORY_CACHE_MB`` (default 1024) MiB;
    ``in_memory=False`` never wraps, ``True`` always does.
    """
    from jaxthyroid.data import arrays

    if arrays.is_array_dataset(dataset_dir):  # NumPy files, read into memory whole: no TFDS
        key = (os.path.realpath(os.fspath(dataset_dir)), split)
        stamp = os.stat(os.path.join(os.fspath(dataset_dir), arrays.FORMAT_FILE)).st_mtime_ns
        if key not in _ARRAYS or _ARRAYS[key][0] != stamp:
            _ARRAYS[key] = (stamp, arrays.load_source(dataset_dir, split))
        return _ARRAYS[key][1]
    info = os.path.join(os.fspath(dataset_dir), "dataset_info.json")
    # The info file's mtime in the key: a data set rebuilt in place is read afresh.
    key = (os.path.realpath(os.fspath(dataset_dir)), split, os.stat(info).st_mtime_ns if os.path.isfile(info) else 0)
    if in_memory is not False and key in _MEMORY:
        return _MEMORY[key]
    source = _open_source(dataset_dir, split)
    if in_memory is False or len(source) == 0:
        return source
    cached = InMemorySource(source)
    used = sum(s.estimated_mb for s in _MEMORY.values())
    if in_memory or used + cached.estimated_mb <= _memory_budget_mb():
        _MEMORY[key] = cached
        return cached
    return source


def _open_source(dataset_dir, split: str):
    import tensorflow_datasets as tfds

    if not os.path.isfile(os.path.join(os.fspath(dataset_dir), "dataset_info.json")):
        raise FileNotFoundError(
            f"{dataset_dir} is not a built data set (no dataset_info.json); build it first "
            "(jaxthyroid data phantom / data folder)"
        )
    builder = tfds.builder_from_directory(os.fspath(dataset_dir))
    if split not in builder.info.splits:
        raise KeyError(f"split {split!r} not in {dataset_dir}; it has {list(builder.info.splits)}")
    return builder.as_data_source(split=split)
