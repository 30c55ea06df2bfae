"""TFDS builder ``thyroid_spect_phantom``: the simulator written to array_record.

Example ``i`` of a split is ``phantom.simulate(phantom.example_keys(split_seed, [i]),
[ids[i]])`` with ``ids = phantom.sample_finding_set_ids(jax.random.key(split_seed), n)``
and ``split_seed = 3 * seed + {train: 0, validation: 1, test: 2}``: deterministic,
and the same whatever batch size generated it (:func:`split_finding_set_ids`,
:func:`simulate_examples` recompute it). Records are stored in index order
(shuffling is off), so ``source[i]`` is example ``i``.

Written and read without TensorFlow (Tensor features, array_record). Imports TFDS:
load this module only where TFDS is installed.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxthyroid import findings as findings_lib
from jaxthyroid.data import features as features_lib

# The examples' definition lives without TFDS (the array data set writes the same ones).
from jaxthyroid.data.phantom_splits import (  # noqa: F401
    DEFAULTS,
    GENERATE_BATCH,
    SPLIT_OFFSETS,
    config_name,
    simulate_examples,
    split_finding_set_ids,
    split_seed,
)

NAME = "thyroid_spect_phantom"


@dataclasses.dataclass
class PhantomConfig(tfds.core.BuilderConfig):
    """Image size, cross-feature fraction, split sizes and seed of one phantom data set."""

    size: int = 128
    cross_fraction: float = 0.25
    n_train: int = 2400
    n_val: int = 600
    n_test: int = 600
    seed: int = 0
    domain: str = "default"  # phantom regime: PhantomParams.regime(domain) (docs/phantom.md)


class ThyroidSpectPhantom(features_lib.QuietPrepare, tfds.core.GeneratorBasedBuilder):
    """Simulated planar 99mTc thyroid scintigrams (DESIGN §3), raw counts."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "Phantom draws keyed by name (jaxthyroid.phantom package): every image redrawn once.",
    }
    BUILDER_CONFIGS = [PhantomConfig(name=f"s{s}", size=s, description=f"{s}x{s}, defaults") for s in (64, 128, 256)]
    DEFAULT_CONFIG_NAME = "s128"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9.10 probes `importlib_resources` here, which Python >= 3.9 installs
        # lack (ModuleNotFoundError); the defining file is all TFDS needs.
        return epath.Path(__file__)

    def _info(self):
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features_lib.features_dict(cfg.size, findings_lib.DEFAULT.num_findings),
            disable_shuffling=True,  # keep index order: source[i] is example i
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        # Written inside TFDS's incomplete dir, so it appears only with a complete build.
        features_lib.save_taxonomy(self.data_dir, findings_lib.DEFAULT)
        sizes = {"train": cfg.n_train, "validation": cfg.n_val, "test": cfg.n_test}
        return {split: self._generate_split(split, n) for split, n in sizes.items() if n > 0}

    def _generate_examples(self):  # splits use _generate_split
        raise NotImplementedError

    def _generate_split(self, split: str, n: int):
        import tqdm

        cfg = self.builder_config
        ids = split_finding_set_ids(cfg.seed, split, n, cfg.cross_fraction)
        tax = findings_lib.DEFAULT
        with tqdm.tqdm(total=n, desc=f"phantom {split} {cfg.size}²", unit="img", leave=False) as bar:
            for start in range(0, n, GENERATE_BATCH):
                # A fixed batch shape (the last one padded) compiles the simulator once.
                idx = np.arange(start, start + GENERATE_BATCH)
                batch_ids = ids[np.minimum(idx, n - 1)]
                images = simulate_examples(cfg.seed, split, idx, batch_ids, cfg.size, cfg.domain)
                for j, i in enumerate(idx[idx < n]):
                    yield (
                        int(i),
                        features_lib.make_record(images[j], int(ids[i]), tax, origin=f"phantom/{split}/{int(i)}"),
                    )
                bar.update(int((idx < n).sum()))


def phantom_dir(
    data_dir, *, size=128, n_train=2400, n_val=600, n_test=600, cross_fraction=0.25, seed=0, domain="default"
) -> str:
    """The versioned folder a phantom data set with these settings lives in."""
    name = config_name(size, cross_fraction, n_train, n_val, n_test, seed, domain)
    return os.path.join(os.fspath(data_dir), NAME, name, str(ThyroidSpectPhantom.VERSION))


def build_phantom(
    data_dir,
    *,
    size: int = 128,
    n_train: int = 2400,
    n_val: int = 600,
    n_test: int = 600,
    cross_fraction: float = 0.25,
    seed: int = 0,
    domain: str = "default",
) -> str:
    """Writes the phantom data set (once; a complete one is reused) -> its folder.

    ``domain`` names the phantom regime (``PhantomParams.regime``): ``"default"``,
    ``"randomised"`` or the held-out ``"ood"`` (e.g. a test split only: ``n_train=0,
    n_val=0``).

    Layout: ``<data_dir>/thyroid_spect_phantom/<config>/<VERSION>/`` with one
    array_record file per split, ``dataset_info.json`` and ``taxonomy.json``. A build
    that fails leaves no folder there (TFDS builds in ``incomplete.*`` and renames).
    A complete folder is returned as it is, without making a TFDS builder.
    """
    settings = dict(
        size=size, n_train=n_train, n_val=n_val, n_test=n_test, cross_fraction=cross_fraction, seed=seed, domain=domain
    )
    if features_lib.is_built(phantom_dir(data_dir, **settings)):
        return phantom_dir(data_dir, **settings)
    name = config_name(size, cross_fraction, n_train, n_val, n_test, seed, domain)
    if name in ThyroidSpectPhantom.builder_configs:
        config = name
    else:
        config = PhantomConfig(
            name=name,
            size=size,
            cross_fraction=cross_fraction,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            seed=seed,
            domain=domain,
        )
    with features_lib.builder_with_own_config():
        builder = ThyroidSpectPhantom(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
    # Our own tqdm bar (with a known total) replaces TFDS's bars while building.
    tfds.display_progress_bar(False)
    try:
        builder.download_and_prepare()
    finally:
        tfds.display_progress_bar(True)
    return os.fspath(builder.data_path)


def phantom_source(data_dir, split: str, **settings):
    """Random-access source over a built phantom split (``settings`` as for :func:`build_phantom`)."""
    return features_lib.load_source(phantom_dir(data_dir, **settings), split)
