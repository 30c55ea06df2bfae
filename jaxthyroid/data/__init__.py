"""Data: TFDS builders (phantom, a user's folder), the grain pipeline, augmentation.

This package's ``__init__`` imports neither TFDS nor grain (the GPU machines have
neither); those load with the modules that need them:

- ``transforms``      normalisation and augmentation, NumPy or JAX (device-safe)
- ``images``          reading PNG/TIFF/JPEG/DICOM files (Pillow, pydicom)
- ``features``        the record layout, ``load_source``, ``load_taxonomy``, ``DataError``
- ``sources``         subset / concatenation / real+synthetic wrappers
- ``phantom_builder`` ``build_phantom``, ``phantom_source``        (TFDS)
- ``folder_builder``  ``build_folder``                              (TFDS)
- ``pipeline``        ``make_loader`` (grain), ``eval_batches``
"""

from jaxthyroid.data.features import DataError, load_source, load_taxonomy  # noqa: F401
from jaxthyroid.data.sources import mix_sources, single_feature  # noqa: F401
from jaxthyroid.data.transforms import AugmentConfig, normalize_counts  # noqa: F401
