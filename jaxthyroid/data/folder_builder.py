"""TFDS builder ``thyroid_folder``: a user's own scintigrams, from folders or a CSV.

Input, either::

    ROOT/normal/*.png   ROOT/graves+hot_nodule/*.dcm   ...   (folder = finding set)

or a labels CSV with columns ``path,finding_set`` (paths relative to ROOT, or
absolute; ``finding_set`` a folder name such as ``graves+hot_nodule``).

Every file is read and checked *before* anything is written; bad files (unreadable,
truncated, empty, not an image, over the pixel limit, DICOM without pixels) and
unknown finding-set names each get a message naming the file and the reason. By
default the build then fails with a :class:`DataError` listing all of them;
``skip_bad=True`` leaves them out and reports how many. Images are resized to
``size`` in floating point and rounded to uint16 (counts keep their scale). Splits
are drawn per finding set (stratified) from ``seed``. Output:
``<data_dir>/thyroid_folder/<name>_s<size>/1.0.0/`` with ``taxonomy.json``;
TFDS builds in an ``incomplete.*`` folder and renames it only on success.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxthyroid import findings as findings_lib
from jaxthyroid.data import features as features_lib
from jaxthyroid.data import images as images_lib
from jaxthyroid.data.features import DataError  # noqa: F401  (re-exported)

NAME = "thyroid_folder"


@dataclasses.dataclass(frozen=True)
class Item:
    path: str
    finding_set: int


@dataclasses.dataclass
class FolderPlan:
    """What a build will write: the taxonomy and the files of each split."""

    taxonomy: findings_lib.Taxonomy
    splits: dict[str, list[Item]]
    skipped: list[str]  # "<file>: <reason>" of bad files left out (skip_bad=True)


# -- finding the files ---------------------------------------------------------------
def _files_under(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if not images_lib.is_ignored(f)]
    return out


def _labelled_from_folders(root: str, taxonomy_from_folders: bool):
    """-> (taxonomy, [(path, folder name)], labelling problems, skippable problems)."""
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not folders:
        raise DataError(
            f"{root}: no finding-set folders found", [f"{root}: expected ROOT/<finding>[+<finding>]/<images>"]
        )
    taxonomy = findings_lib.Taxonomy.from_folder_names(folders) if taxonomy_from_folders else findings_lib.DEFAULT
    labelled, problems, skippable = [], [], []
    for d in folders:
        folder = os.path.join(root, d)
        files = _files_under(folder)
        try:
            taxonomy.set_id(taxonomy.parse_folder_name(d))
        except findings_lib.UnknownFindingError as e:
            problems.append(f"{folder}: {e}")
            continue
        if not files:
            skippable.append(f"{folder}: folder has no images")
        labelled += [(f, d) for f in files]
    loose = [
        os.path.join(root, f)
        for f in sorted(os.listdir(root))
        if os.path.isfile(os.path.join(root, f)) and not images_lib.is_ignored(f)
    ]
    skippable += [f"{f}: file outside any finding-set folder" for f in loose]
    return taxonomy, labelled, problems, skippable


def _labelled_from_csv(root: str, labels_csv: str, taxonomy_from_folders: bool):
    labelled, problems = [], []
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "finding_set"} <= set(rows[0]):
        raise DataError(
            f"{labels_csv}: bad labels CSV", [f"{labels_csv}: needs a header 'path,finding_set' and at least one row"]
        )
    names = sorted({r["finding_set"].strip() for r in rows})
    taxonomy = findings_lib.Taxonomy.from_folder_names(names) if taxonomy_from_folders else findings_lib.DEFAULT
    for line, r in enumerate(rows, start=2):
        path = r["path"].strip()
        path = path if os.path.isabs(path) else os.path.join(root, path)
        try:
            taxonomy.set_id(r["finding_set"].strip())
        except findings_lib.UnknownFindingError as e:
            problems.append(f"{labels_csv} line {line} ({path}): {e}")
            continue
        labelled.append((path, r["finding_set"].strip()))
    return taxonomy, labelled, problems, []


def _stratified_splits(items: list[Item], val_fraction: float, test_fraction: float, seed: int):
    """Per finding set: a seeded permutation, then test, validation, train."""
    rng = np.random.default_rng(seed)
    splits = {"train": [], "validation": [], "test": []}
    for fs in sorted({it.finding_set for it in items}):
        group = sorted((it for it in items if it.finding_set == fs), key=lambda it: it.path)
        group = [group[i] for i in rng.permutation(len(group))]
        n_test = int(round(test_fraction * len(group)))
        n_val = int(round(val_fraction * len(group)))
        splits["test"] += group[:n_test]
        splits["validation"] += group[n_test : n_test + n_val]
        splits["train"] += group[n_test + n_val :]
    return splits


def plan_folder(
    root,
    *,
    size: int = 128,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    taxonomy_from_folders: bool = False,
    labels_csv=None,
    skip_bad: bool = False,
    max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> FolderPlan:
    """Finds, labels and *reads* every file (so every problem shows before writing).

    Raises :class:`DataError` listing every problem unless ``skip_bad``; unknown
    finding-set names always fail (they are a labelling mistake, not a bad file).
    """
    import tqdm

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder", [f"{root}: no such folder"])
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and their sum < 1; got {val_fraction}, {test_fraction}"
        )
    if labels_csv is not None:
        taxonomy, labelled, label_problems, bad = _labelled_from_csv(root, os.fspath(labels_csv), taxonomy_from_folders)
    else:
        taxonomy, labelled, label_problems, bad = _labelled_from_folders(root, taxonomy_from_folders)
    if label_problems:
        raise DataError(f"{root}: {len(label_problems)} labelling problem(s)", label_problems)

    items = []
    for path, set_name in tqdm.tqdm(labelled, desc="checking images", unit="file", disable=not progress, leave=False):
        try:
            images_lib.load_image(path, size, max_pixels=max_pixels)
        except images_lib.ImageError as e:
            bad.append(str(e))
            continue
        items.append(Item(path, taxonomy.set_id(set_name)))
    if bad and not skip_bad:
        raise DataError(
            f"{root}: {len(bad)} bad file(s) of {len(labelled)} (fix or remove them, or leave them out with "
            "--skip-bad; from Python: skip_bad=True)",
            bad,
        )
    if not items:
        raise DataError(f"{root}: no usable images", bad or [f"{root}: no image files found"])
    return FolderPlan(taxonomy, _stratified_splits(items, val_fraction, test_fraction, seed), bad)


# -- the builder ---------------------------------------------------------------------
@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    size: int = 128
    max_pixels: int = images_lib.DEFAULT_MAX_PIXELS


class ThyroidFolder(features_lib.QuietPrepare, tfds.core.GeneratorBasedBuilder):
    """A user's thyroid scintigrams (PNG/TIFF/JPEG/DICOM), resized to ``size``²."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9.10 probes `importlib_resources` here, which Python >= 3.9 installs
        # lack (ModuleNotFoundError); the defining file is all TFDS needs.
        return epath.Path(__file__)

    def __init__(self, *, plan: FolderPlan, **kwargs):
        self._plan = plan
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features_lib.features_dict(self.builder_config.size, self._plan.taxonomy.num_findings),
            disable_shuffling=True,  # the split order is already a seeded permutation
        )

    def _split_generators(self, dl_manager):
        # Written inside TFDS's incomplete dir, so it appears only with a complete build.
        features_lib.save_taxonomy(self.data_dir, self._plan.taxonomy)
        return {s: self._generate_split(items) for s, items in self._plan.splits.items() if items}

    def _generate_examples(self):  # splits use _generate_split
        raise NotImplementedError

    def _generate_split(self, items: list[Item]):
        cfg = self.builder_config
        for i, it in enumerate(items):
            image = images_lib.load_image(it.path, cfg.size, max_pixels=cfg.max_pixels)
            yield i, features_lib.make_record(image, it.finding_set, self._plan.taxonomy, origin=it.path)


def _config_name(root: str, name, size: int) -> str:
    base = name or os.path.basename(os.path.normpath(root)) or "data"
    return re.sub(r"[^A-Za-z0-9_]", "_", base) + f"_s{size}"


def build_folder(
    root,
    data_dir,
    *,
    name: str | None = None,
    size: int = 128,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    taxonomy_from_folders: bool = False,
    labels_csv=None,
    skip_bad: bool = False,
    max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> tuple[str, FolderPlan]:
    """Checks and writes a user's folder as a TFDS data set -> (its folder, the plan).

    Rebuilds on every call (the user's files may have changed). ``plan.skipped``
    lists the bad files left out with ``skip_bad=True``; ``plan.taxonomy`` is the
    taxonomy (also in ``<folder>/taxonomy.json``).
    """
    import tqdm

    plan = plan_folder(
        root,
        size=size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        taxonomy_from_folders=taxonomy_from_folders,
        labels_csv=labels_csv,
        skip_bad=skip_bad,
        max_pixels=max_pixels,
        progress=progress,
    )
    config = FolderConfig(
        name=_config_name(os.fspath(root), name, size),
        size=size,
        max_pixels=max_pixels,
        description=f"images from {os.fspath(root)}",
    )
    with features_lib.builder_with_own_config():
        builder = ThyroidFolder(plan=plan, data_dir=os.fspath(data_dir), config=config, file_format="array_record")
    if plan.skipped:
        tqdm.tqdm.write(f"skipped {len(plan.skipped)} bad file(s) (--skip-bad); first: {plan.skipped[0]}")
    tfds.display_progress_bar(progress)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD)
        )
    finally:
        tfds.display_progress_bar(True)
    return os.fspath(builder.data_path), plan


def folder_dir(data_dir, root, *, name: str | None = None, size: int = 128) -> str:
    """The versioned folder :func:`build_folder` writes for these arguments."""
    return os.path.join(
        os.fspath(data_dir), NAME, _config_name(os.fspath(root), name, size), str(ThyroidFolder.VERSION)
    )
