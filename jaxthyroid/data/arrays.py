"""Array data sets: the record layout of :mod:`jaxthyroid.data.features` in NumPy files,
written and read with NumPy alone (no TFDS, no grain, no TensorFlow).

Where TFDS is not installed (the accelerator machines have JAX, flax, optax and orbax
only), the phantom and the GAN-generated sets are written in this format instead, and
:func:`jaxthyroid.data.features.load_source` opens either kind. A folder::

    arrays.json        {"format": 1, "splits": {"train": N, ...}}; written last
    taxonomy.json      the label space (as beside a TFDS set)
    <split>.npz        image uint16 [N, H, W, 1], findings float32 [N, F],
                       finding_set / subset / synthetic int64 [N],
                       finding_set_name / origin bytes [N]

A split is read into memory whole (a 2,400-image 128² split is 79 MB). Records come
back as TFDS's do: NumPy scalars and arrays, strings as bytes, arrays read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np

from jaxthyroid import findings as findings_lib

FORMAT_FILE = "arrays.json"
FORMAT_VERSION = 1
PHANTOM_NAME = "thyroid_spect_phantom_arrays"
SYNTHETIC_NAME = "thyroid_synthetic_arrays"
FIELDS = ("image", "findings", "finding_set", "finding_set_name", "subset", "synthetic", "origin")

# Generated images -> stored counts (the TFDS synthetic builder uses the same rules).
DEFAULT_PEAK_COUNTS = 200.0
INPUT_RANGES = ("auto", "counts", "unit")
# [0, 1] inputs may overshoot by float round-off (a tanh output rescaled); beyond
# this they are not [0, 1] images and the caller has to say what they are.
_UNIT_TOLERANCE = 0.01


def tfds_available() -> bool:
    """Whether ``tensorflow_datasets`` imports here (else data sets are array data sets)."""
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


def is_array_dataset(dataset_dir) -> bool:
    return os.path.isfile(os.path.join(os.fspath(dataset_dir), FORMAT_FILE))


class ArraySource:
    """Random access over one split of an array data set (``len``, ``src[i] -> record``)."""

    def __init__(self, dataset_dir, split: str):
        self.path = os.path.join(os.fspath(dataset_dir), f"{split}.npz")
        if not os.path.isfile(self.path):
            raise KeyError(f"split {split!r} not in {dataset_dir}")
        with np.load(self.path, allow_pickle=False) as f:
            self.arrays = {k: f[k] for k in FIELDS}
        for value in self.arrays.values():
            value.flags.writeable = False

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def __getitem__(self, i) -> dict:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records")
        return {k: v[i] for k, v in self.arrays.items()}

    def __repr__(self) -> str:
        return f"ArraySource({self.path!r}, n={len(self)})"


def load_source(dataset_dir, split: str) -> ArraySource:
    return ArraySource(dataset_dir, split)


def write_dataset(dataset_dir, splits: dict[str, dict], taxonomy: findings_lib.Taxonomy) -> str:
    """Writes ``{split: {field: [N, ...]}}`` (every field of :data:`FIELDS`) to ``dataset_dir``,
    replacing what is there. The set is built in a scratch folder beside it and renamed
    into place, so a failed write leaves no half-written set."""
    final = os.fspath(dataset_dir)
    scratch = f"{final}.build-{uuid.uuid4().hex[:8]}"
    os.makedirs(scratch)
    try:
        counts = {}
        for split, arrays in splits.items():
            missing = set(FIELDS) - set(arrays)
            if missing:
                raise ValueError(f"split {split}: fields {sorted(missing)} missing")
            np.savez(os.path.join(scratch, f"{split}.npz"), **{k: arrays[k] for k in FIELDS})
            counts[split] = len(arrays["image"])
        with open(os.path.join(scratch, "taxonomy.json"), "w") as f:
            json.dump(taxonomy.to_dict(), f, indent=1)
        with open(os.path.join(scratch, FORMAT_FILE), "w") as f:
            json.dump({"format": FORMAT_VERSION, "splits": counts}, f)
        if os.path.exists(final):
            retired = f"{final}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, retired)
            shutil.rmtree(retired, ignore_errors=True)
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        os.rename(scratch, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def records_of(counts: np.ndarray, ids: np.ndarray, taxonomy: findings_lib.Taxonomy, *, origin, synthetic: bool):
    """The fields of ``N`` records from counts uint16 ``[N, H, W, 1]`` and finding-set ids
    ``[N]``; ``origin(i)`` names record ``i``."""
    ids = np.asarray(ids, np.int64)
    return {
        "image": np.asarray(counts, np.uint16),
        "findings": np.asarray(taxonomy.set_table, np.float32)[ids],
        "finding_set": ids,
        "finding_set_name": np.asarray([taxonomy.folder_name(int(s)).encode() for s in ids], dtype=bytes),
        "subset": np.asarray([int(taxonomy.is_cross(int(s))) for s in ids], np.int64),
        "synthetic": np.full(len(ids), int(bool(synthetic)), np.int64),
        "origin": np.asarray([origin(i).encode() for i in range(len(ids))], dtype=bytes),
    }


# ----------------------------------------------------------------------------- the phantom
def phantom_dir(data_dir, **settings) -> str:
    from jaxthyroid.data import phantom_splits

    name = phantom_splits.config_name(**settings)
    return os.path.join(os.fspath(data_dir), PHANTOM_NAME, name)


def build_phantom_arrays(data_dir, *, size, n_train, n_val, n_test, cross_fraction, seed, domain="default") -> str:
    """The phantom data set (the examples the TFDS builder writes) as an array data set
    under ``<data_dir>/thyroid_spect_phantom_arrays/<config>/``; a complete one is reused."""
    from jaxthyroid.data import phantom_splits

    settings = dict(
        size=size, n_train=n_train, n_val=n_val, n_test=n_test, cross_fraction=cross_fraction, seed=seed, domain=domain
    )
    final = phantom_dir(data_dir, **settings)
    if is_array_dataset(final):
        return final
    taxonomy = findings_lib.DEFAULT
    splits = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        if n > 0:
            counts, ids = phantom_splits.simulate_split(
                seed, split, n, size=size, cross_fraction=cross_fraction, domain=domain
            )
            splits[split] = records_of(
                counts, ids, taxonomy, origin=lambda i, s=split: f"phantom/{s}/{i}", synthetic=False
            )
    return write_dataset(final, splits, taxonomy)


# ----------------------------------------------------------------------------- generated images
def to_counts(images: np.ndarray, *, input_range: str = "auto", peak_counts: float = DEFAULT_PEAK_COUNTS) -> np.ndarray:
    """Generated images ``[N, H, W, 1]`` -> stored uint16 counts ``[N, H, W, 1]``.

    ``input_range``:
      ``"counts"``: raw counts, rounded and clipped to [0, 65535];
      ``"unit"``: intensities in [0, 1], multiplied by ``peak_counts`` and rounded;
      ``"auto"``: ``"counts"`` for integer arrays and float arrays with values above
      1.01, else ``"unit"`` (a float counts array that happens to stay below 1 would
      be taken as [0, 1]: pass ``"counts"`` for it).
    """
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
    x = np.asarray(images)
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError("generated images contain NaN or Inf; check the generator's output")
    if input_range == "auto":
        is_unit = x.dtype.kind == "f" and (x.size == 0 or float(x.max()) <= 1.0 + _UNIT_TOLERANCE)
        input_range = "unit" if is_unit else "counts"
    x = x.astype(np.float64)
    lo = float(x.min()) if x.size else 0.0
    if input_range == "unit":
        hi = float(x.max()) if x.size else 0.0
        if lo < -_UNIT_TOLERANCE or hi > 1.0 + _UNIT_TOLERANCE:
            raise ValueError(
                f"input_range='unit' needs values in [0, 1], got [{lo:.3g}, {hi:.3g}]; map a tanh "
                "output from [-1, 1] with (x + 1) / 2, or pass input_range='counts'"
            )
        if not peak_counts > 0:
            raise ValueError(f"peak_counts must be > 0, got {peak_counts}")
        x = np.clip(x, 0.0, 1.0) * float(peak_counts)
    elif lo < -0.5:
        raise ValueError(f"counts must be >= 0, got a minimum of {lo:.3g}")
    return np.clip(np.rint(x), 0, 65535).astype(np.uint16)


def check_generated(counts: np.ndarray, finding_set_ids: np.ndarray, taxonomy: findings_lib.Taxonomy) -> None:
    """Raises ValueError for generated images or ids that cannot make a data set."""
    if counts.ndim != 4 or counts.shape[-1] != 1 or counts.shape[1] != counts.shape[2]:
        raise ValueError(f"generated images must be [N, H, H, 1] (square, one channel), got {counts.shape}")
    if finding_set_ids.ndim != 1 or len(finding_set_ids) != len(counts):
        raise ValueError(
            f"finding_set_ids must be [N] with N = {len(counts)} images, got shape {finding_set_ids.shape}"
        )
    if len(counts) == 0:
        raise ValueError("no generated images to write")
    if finding_set_ids.dtype.kind not in "iu":
        raise ValueError(f"finding_set_ids must be integers, got dtype {finding_set_ids.dtype}")
    bad = (finding_set_ids < 0) | (finding_set_ids >= taxonomy.num_sets)
    if bad.any():
        raise ValueError(
            f"finding_set_ids {sorted(set(finding_set_ids[bad].tolist()))[:10]} are outside this "
            f"taxonomy's 0..{taxonomy.num_sets - 1} ({', '.join(taxonomy.folder_name(s) for s in taxonomy.finding_sets)})"
        )


def build_synthetic_arrays(
    data_dir,
    name: str,
    images: np.ndarray,
    finding_set_ids: np.ndarray,
    *,
    taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT,
    origin: str = "dcgan+srgan",
    input_range: str = "auto",
    peak_counts: float = DEFAULT_PEAK_COUNTS,
) -> str:
    """Generated images as an array data set (one split ``train``, ``synthetic = 1``)
    under ``<data_dir>/thyroid_synthetic_arrays/<name>/``, replacing one of that name."""
    counts = to_counts(images, input_range=input_range, peak_counts=peak_counts)
    ids = np.asarray(finding_set_ids)
    check_generated(counts, ids, taxonomy)
    records = records_of(counts, ids, taxonomy, origin=lambda i: f"{origin}/{i}", synthetic=True)
    return write_dataset(os.path.join(os.fspath(data_dir), SYNTHETIC_NAME, name), {"train": records}, taxonomy)
