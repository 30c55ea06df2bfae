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

import json
import os

import numpy as np

from jaxthyroid import findings as findings_lib

TAXONOMY_FILE = "taxonomy.json"
SPLITS = ("train", "validation", "test")


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


def load_source(dataset_dir, split: str):
    """Random-access source over one split of a built data set (no TensorFlow).

    ``dataset_dir`` is the versioned folder a ``build_*`` function returns
    (``<data_dir>/<name>/<config>/<version>``). Returns TFDS's ``ArrayRecordDataSource``:
    ``len(src)``, ``src[i]`` -> record dict (strings come back as bytes).
    """
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
