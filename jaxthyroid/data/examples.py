"""One stored record -> one model example (:func:`preprocess`), the normalisation of
stored images computed once per process (:class:`NormalizedImages`). The input pipeline
(:mod:`jaxthyroid.data.pipeline`) and its grain transformations
(:mod:`jaxthyroid.data.grain_ops`) both use :func:`preprocess`. No TFDS or grain import.
"""

from __future__ import annotations

import weakref

import numpy as np

from jaxthyroid.data import transforms


class NormalizedImages:
    """:func:`transforms.normalize_counts`, computed once per read-only NumPy array.

    Without augmentation an image's normalised form depends on its counts alone, and the
    decoded-record cache (:class:`jaxthyroid.data.features.InMemorySource`) hands out the
    same read-only array every time the record is read: every pass of every training
    over a split would otherwise normalise each image again (a percentile and a skewness
    per image, ~0.2 ms at 64², on the host core that the train step also needs). A
    read-only array is taken to be immutable; a writeable one (or a JAX array) is
    normalised every time. An entry lives as long as the array it was computed from: for
    the decoded-record cache, as long as the process, so the memory it takes is that
    cache's images again in float32: twice their uint16 size, so at most twice that
    cache's budget (``$JAXTHYROID_MEMORY_CACHE_MB``).
    """

    def __init__(self):
        self._memo: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    def __call__(self, image):
        if not isinstance(image, np.ndarray) or image.flags.writeable:
            return transforms.normalize_counts(image)
        key = id(image)
        hit = self._memo.get(key)
        if hit is not None and hit[0]() is image:
            return hit[1]
        out = transforms.normalize_counts(image)
        out.flags.writeable = False
        self._memo[key] = (weakref.ref(image, lambda _, key=key: self._memo.pop(key, None)), out)
        return out

    def __len__(self) -> int:
        return len(self._memo)


normalized_image = NormalizedImages()


def preprocess(record: dict, augment: transforms.AugmentConfig | None = None, rng=None) -> dict:
    """One stored record -> one model example (the batch layout of
    :mod:`jaxthyroid.data.pipeline`, without ``B``).

    With ``augment``, the raw counts are thinned and warped first (``rng`` draws it); the
    stored image's normalisation is remembered (:data:`normalized_image`; an augmented
    copy is writeable, so it is normalised afresh).
    """
    counts = record["image"]
    if augment is not None:
        counts = transforms.augment_counts_np(np.asarray(counts, np.float32), augment, rng)
    return {
        "image": normalized_image(counts),
        "findings": np.asarray(record["findings"], np.float32),
        "finding_set": np.int32(record["finding_set"]),
        "subset": np.int32(record["subset"]),
        "synthetic": np.int32(record.get("synthetic", 0)),
    }
