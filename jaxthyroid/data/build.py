"""The phantom and generated-image data sets in whichever format this machine writes:
TFDS (array_record) where ``tensorflow_datasets`` is installed, else array data sets
(:mod:`jaxthyroid.data.arrays`, NumPy files; the same records). Both open with
:func:`jaxthyroid.data.features.load_source`.
"""

from __future__ import annotations

from jaxthyroid.data import arrays


def build_phantom_dataset(data_dir, **settings) -> str:
    """The phantom data set's folder: built with TFDS where it is installed, else as an
    array data set (:func:`jaxthyroid.data.arrays.build_phantom_arrays`; the same images)."""
    if arrays.tfds_available():
        from jaxthyroid.data import phantom_builder

        return phantom_builder.build_phantom(data_dir, **settings)
    return arrays.build_phantom_arrays(data_dir, **settings)


def build_synthetic_dataset(data_dir, name: str, images, finding_set_ids, **kwargs) -> str:
    """Generated images as a data set: TFDS's ``thyroid_synthetic`` where TFDS is
    installed (replacing one of that name), else an array data set."""
    if arrays.tfds_available():
        from jaxthyroid.data import synthetic_builder

        return synthetic_builder.build_synthetic(data_dir, name, images, finding_set_ids, overwrite=True, **kwargs)
    return arrays.build_synthetic_arrays(data_dir, name, images, finding_set_ids, **kwargs)
