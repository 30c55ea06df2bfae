"""Generated images: DCGAN samples per finding set, super-resolved by the SRGAN generator,
written as the TFDS ``thyroid_synthetic`` set (``jaxthyroid augment``)."""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import report
from jaxthyroid.gan import images as images_lib
from jaxthyroid.gan.dcgan import dcgan_images, load_dcgan_generator
from jaxthyroid.gan.srgan import load_sr_generator, super_resolve


@images_lib.cpu_friendly_random
def generate(
    dcgan_dir, srgan_dir, gan_cfg, *, per_set: int, seed: int, samples_path=None
) -> tuple[np.ndarray, np.ndarray]:
    """``per_set`` generated images for every finding set, super-resolved.

    Restores the DCGAN generator (``dcgan_dir``) and the SRGAN generator
    (``srgan_dir``); ``gan_cfg`` has ``.dcgan`` and ``.srgan`` sub-configs (None:
    read each run's ``config.json``). Writes a grid at ``samples_path`` (one
    labelled row per finding set, up to 8 images each) when given.

    Returns:
      ``(images, finding_set_ids)``: float32 ``[12·per_set, S, S, 1]`` in [0, 1] with
      ``S = image_size · scale``, and int32 ``[12·per_set]`` (ids of ``findings.DEFAULT``).
    """
    if per_set < 1:
        raise ValueError(f"per_set must be >= 1, got {per_set}")
    dcgan_cfg = gan_cfg.dcgan if gan_cfg is not None else None
    srgan_cfg = gan_cfg.srgan if gan_cfg is not None else None
    generator, g_vars = load_dcgan_generator(dcgan_dir, dcgan_cfg)
    sr, sr_vars = load_sr_generator(srgan_dir, srgan_cfg)
    taxonomy = findings_lib.DEFAULT
    ids = np.repeat(np.arange(taxonomy.num_sets, dtype=np.int32), per_set)
    low = dcgan_images(generator, g_vars, ids, jax.random.key(seed))
    images = super_resolve(sr, sr_vars, low).astype(np.float32)
    if samples_path is not None:
        report.contact_sheet(images_lib.by_set(images, ids, taxonomy), samples_path, per_row=min(per_set, 8))
    return images, ids


def augment(
    run_dcgan_dir, run_srgan_dir, gan_cfg, *, per_set: int, data_dir, name: str, seed: int, overwrite: bool = False
) -> str:
    """Generates ``per_set`` images per finding set and writes them as the TFDS set
    ``<data_dir>/thyroid_synthetic/<name>/1.0.0`` (returned), with a sample grid
    ``<data_dir>/thyroid_synthetic/<name>_samples.png``."""
    from jaxthyroid.data import synthetic_builder  # lazy: TFDS

    samples = pathlib.Path(data_dir) / synthetic_builder.NAME / f"{name}_samples.png"
    images, ids = generate(run_dcgan_dir, run_srgan_dir, gan_cfg, per_set=per_set, seed=seed, samples_path=samples)
    return synthetic_builder.build_synthetic(
        data_dir, name, images, ids, input_range="unit", overwrite=overwrite, origin=f"dcgan+srgan/{name}"
    )


def augment_command(args) -> None:
    """``jaxthyroid augment``: generated images as a synthetic TFDS set (prints its folder).

    ``args``: ``gan_dir`` (holding ``dcgan/`` and ``srgan/``, e.g. a reproduce run's
    ``seed0/gan``) or ``dcgan_dir`` + ``srgan_dir``; ``per_set``, ``data_dir``,
    ``name``, ``seed``, ``overwrite``. When the GAN folder holds a quality verdict
    (``quality.json``, written by ``reproduce``) that failed, says so loudly.
    """
    from jaxthyroid.gan import quality

    gan_dir = getattr(args, "gan_dir", None)
    dcgan_dir = getattr(args, "dcgan_dir", None) or (os.path.join(gan_dir, "dcgan") if gan_dir else None)
    srgan_dir = getattr(args, "srgan_dir", None) or (os.path.join(gan_dir, "srgan") if gan_dir else None)
    if not dcgan_dir or not srgan_dir:
        raise ValueError("give --gan-dir (holding dcgan/ and srgan/) or both --dcgan-dir and --srgan-dir")
    verdict = quality.read_verdict(pathlib.Path(dcgan_dir).parent)
    if verdict is not None and not verdict["passed"]:
        quality.warn_failing(verdict)
    path = augment(
        dcgan_dir,
        srgan_dir,
        None,
        per_set=args.per_set,
        data_dir=args.data_dir,
        name=args.name,
        seed=args.seed,
        overwrite=getattr(args, "overwrite", False),
    )
    print(path)
