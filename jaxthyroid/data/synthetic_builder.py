"""TFDS builder ``thyroid_synthetic``: GAN-generated scintigrams written to array_record.

The augmented set of the paper (DCGAN images raised by SRGAN) as a data set of its
own: one split ``train``, the record layout of the phantom and folder sets
(:mod:`jaxthyroid.data.features`) with ``synthetic = 1``, ``origin =
"<origin>/<i>"``, and the taxonomy saved as ``taxonomy.json``. Mix it into real
training data with :func:`jaxthyroid.data.sources.mix_sources`.

Images come in either as raw counts or as intensities in [0, 1] (a generator's
output after ``(x + 1) / 2``); both are stored as uint16 counts, the [0, 1] ones
scaled so that 1.0 is ``peak_counts`` counts. The scale matters only for count
thinning (augmentation), since the pipeline normalises every image by its own
99.5th percentile; the default is of the order of a 128² phantom image's.

Written and read without TensorFlow. Imports TFDS: load this module only where
TFDS is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxthyroid import findings as findings_lib
from jaxthyroid.data import features as features_lib

# Images -> counts and the input checks live without TFDS (the array data set uses them too).
from jaxthyroid.data.arrays import DEFAULT_PEAK_COUNTS, INPUT_RANGES, to_counts  # noqa: F401
from jaxthyroid.data.arrays import check_generated as _check

NAME = "thyroid_synthetic"
SPLIT = "train"


class ThyroidSynthetic(features_lib.QuietPrepare, tfds.core.GeneratorBasedBuilder):
    """GAN-generated thyroid scintigrams (uint16 counts) with the labels they were generated for."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9.10 probes `importlib_resources` here, which Python >= 3.9 installs
        # lack (ModuleNotFoundError); the defining file is all TFDS needs.
        return epath.Path(__file__)

    def __init__(
        self, *, counts: np.ndarray, finding_set_ids: np.ndarray, taxonomy: findings_lib.Taxonomy, origin: str, **kwargs
    ):
        self._counts = counts
        self._ids = finding_set_ids
        self._taxonomy = taxonomy
        self._origin = origin
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features_lib.features_dict(self._counts.shape[1], self._taxonomy.num_findings),
            disable_shuffling=True,  # keep index order: source[i] is generated image i
        )

    def _split_generators(self, dl_manager):
        # Written inside TFDS's incomplete dir, so it appears only with a complete build.
        features_lib.save_taxonomy(self.data_dir, self._taxonomy)
        return {SPLIT: self._generate_split()}

    def _generate_examples(self):  # the split uses _generate_split
        raise NotImplementedError

    def _generate_split(self):
        for i in range(len(self._counts)):
            yield (
                i,
                features_lib.make_record(
                    self._counts[i], int(self._ids[i]), self._taxonomy, origin=f"{self._origin}/{i}", synthetic=True
                ),
            )


def _config_name(name: str) -> str:
    if not name:
        raise ValueError("a synthetic data set needs a name (e.g. 'dcgan_srgan_run1')")
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def synthetic_dir(data_dir, name: str) -> str:
    """The versioned folder :func:`build_synthetic` writes ``name`` to."""
    return os.path.join(os.fspath(data_dir), NAME, _config_name(name), str(ThyroidSynthetic.VERSION))


def build_synthetic(
    data_dir,
    name: str,
    images: np.ndarray,
    finding_set_ids: np.ndarray,
    *,
    taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT,
    origin: str = "dcgan+srgan",
    input_range: str = "auto",
    peak_counts: float = DEFAULT_PEAK_COUNTS,
    overwrite: bool = False,
) -> str:
    """Writes generated images and their labels as a TFDS data set -> its folder.

    Args:
      data_dir: TFDS data dir; the set goes to ``<data_dir>/thyroid_synthetic/<name>/1.0.0/``.
      name: the set's name (letters, digits, ``_``; other characters become ``_``).
      images: ``[N, H, H, 1]`` raw counts or [0, 1] intensities (see :func:`to_counts`).
      finding_set_ids: int ``[N]``, the finding set each image was generated for
        (ids into ``taxonomy.finding_sets``).
      taxonomy: the label space of the ids (saved as ``taxonomy.json``).
      origin: recorded per image as ``"<origin>/<i>"``.
      input_range, peak_counts: how ``images`` become uint16 counts (:func:`to_counts`).
      overwrite: replace an existing set of that name; otherwise that is an error.

    Every input is checked before anything is written. The build happens in a
    scratch folder; only a complete set is moved into place, so a failed build
    leaves the previous set (if any) untouched and nothing half-written.
    """
    counts = to_counts(images, input_range=input_range, peak_counts=peak_counts)
    ids = np.asarray(finding_set_ids)
    _check(counts, ids, taxonomy)
    ids = ids.astype(np.int64)
    final = synthetic_dir(data_dir, name)
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(
            f"{final} already exists; replace it with --overwrite (from Python: overwrite=True), or use another name"
        )

    scratch_root = os.path.join(os.fspath(data_dir), NAME, f".build-{uuid.uuid4().hex[:8]}")
    try:
        with features_lib.builder_with_own_config():
            builder = ThyroidSynthetic(
                counts=counts,
                finding_set_ids=ids,
                taxonomy=taxonomy,
                origin=origin,
                data_dir=scratch_root,
                config=tfds.core.BuilderConfig(name=_config_name(name)),
                file_format="array_record",
            )
        tfds.display_progress_bar(False)
        try:
            builder.download_and_prepare()
        finally:
            tfds.display_progress_bar(True)
        built = os.fspath(builder.data_path)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        # Swap in the complete set: the old one (if any) is removed only after the new
        # one is in place under its own name.
        retired = None
        if os.path.exists(final):
            retired = f"{final}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, retired)
        os.rename(built, final)
        if retired:
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    return final


def synthetic_source(path, name: str | None = None):
    """Random-access source over a built synthetic set's ``train`` split.

    ``synthetic_source(folder)`` with the folder :func:`build_synthetic` returned, or
    ``synthetic_source(data_dir, name)``. Records as in
    :mod:`jaxthyroid.data.features`; the taxonomy is ``load_taxonomy(folder)``.
    """
    folder = synthetic_dir(path, name) if name is not None else os.fspath(path)
    return features_lib.load_source(folder, SPLIT)
