"""The data of a cross-training run: the configured data set's splits as sources."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from jaxthyroid import findings as findings_lib
from jaxthyroid import parallel
from jaxthyroid.config import ConfigError


@dataclasses.dataclass
class Data:
    """Random-access sources per split, and the label space they use.

    ``train`` holds the real training images plus any synthetic ones mixed in;
    ``train_real`` the real ones alone (epoch budgets count these).
    """

    taxonomy: findings_lib.Taxonomy
    train: Any
    validation: Any
    test: Any
    size: int
    train_real: Any = None
    # (train_on, real only) -> source: phase sources are filtered once per run.
    _phase_sources: dict = dataclasses.field(default_factory=dict, repr=False)

    def phase_train(self, train_on: str, *, real: bool = False):
        """The training records a phase with ``train_on`` uses ('all' | 'single');
        ``real``: without synthetic images."""
        key = (train_on, real and self.train_real is not None and self.train_real is not self.train)
        if key not in self._phase_sources:
            from jaxthyroid.data import sources

            base = self.train_real if key[1] else self.train
            self._phase_sources[key] = base if train_on == "all" else sources.single_feature(base)
        return self._phase_sources[key]


def build_phantom(data_cfg: ml_collections.ConfigDict, *, seed: int) -> str:
    """Builds (if needed) the phantom data set a data config names; returns its folder."""
    from jaxthyroid.data import build  # TFDS where installed, else NumPy files

    return build.build_phantom_dataset(
        data_cfg.data_dir,
        size=data_cfg.size,
        n_train=data_cfg.n_train,
        n_val=data_cfg.n_val,
        n_test=data_cfg.n_test,
        cross_fraction=data_cfg.cross_fraction,
        seed=seed,
        domain=data_cfg.domain,
    )


def load_data(data_cfg: ml_collections.ConfigDict, *, seed: int = 0, folds: int = 0, fold: int = -1) -> Data:
    """Builds (if needed) and opens the configured data set's splits.

    ``folds > 1``: fold ``fold`` of a k-fold over the training and validation records
    together (stratified by finding set, seeded by ``seed``), the test split unchanged.
    """
    from jaxthyroid.data import features, sources  # lazy: TFDS only when a TFDS data set is read

    if data_cfg.source == "phantom":
        # Process 0 builds it (TFDS, or NumPy files where TFDS is not installed); the
        # others then open the finished one (no two writers).
        dataset_dir = parallel.primary_first(lambda: build_phantom(data_cfg, seed=seed), "build the phantom data set")
    elif data_cfg.source == "folder":
        if not data_cfg.dataset_dir:
            raise ConfigError(
                "data.source=folder needs data.dataset_dir: the folder that `jaxthyroid data build folder` printed"
            )
        dataset_dir = data_cfg.dataset_dir
    else:
        raise ConfigError(f"data.source must be 'phantom' or 'folder', not {data_cfg.source!r}")

    taxonomy = features.load_taxonomy(dataset_dir)
    real = features.load_source(dataset_dir, "train")
    validation = features.load_source(dataset_dir, "validation")
    if folds:
        real, validation = sources.fold_split(real, validation, folds, fold, seed=seed)
    if data_cfg.train_per_set:
        real = sources.per_set_subset(real, int(data_cfg.train_per_set), seed=seed)
    train = real
    if data_cfg.synthetic_dir and data_cfg.synthetic_ratio > 0:
        synthetic = features.load_source(data_cfg.synthetic_dir, "train")
        train = sources.mix_sources(real, synthetic, data_cfg.synthetic_ratio, seed=seed)
    return Data(
        taxonomy,
        train,
        validation,
        features.load_source(dataset_dir, "test"),
        data_cfg.size,
        train_real=real,
    )
