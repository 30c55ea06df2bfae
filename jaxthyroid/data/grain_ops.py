"""grain transformations of the pipeline (a module of their own, so worker processes
can unpickle them by reference; imports grain)."""

from __future__ import annotations

import grain

from jaxthyroid.data import examples, transforms


class Normalize(grain.transforms.Map):
    """Record -> example without augmentation (:func:`examples.preprocess`)."""

    def map(self, record):
        return examples.preprocess(record)


class AugmentNormalize(grain.transforms.RandomMap):
    """Record -> augmented example; grain hands each record its own seeded ``rng``."""

    def __init__(self, config: transforms.AugmentConfig):
        self.config = config

    def random_map(self, record, rng):
        return examples.preprocess(record, self.config, rng)
