"""Phantom -> TFDS (array_record, no TensorFlow) -> grain: the same images as the simulator."""

import os
import sys

import jax
import numpy as np
import pytest
from tolerance import fp_tolerance

pytest.importorskip("tensorflow_datasets")

from jaxthyroid import findings, phantom
from jaxthyroid.data import features, phantom_builder, pipeline, transforms

SIZE = 64
N = dict(n_train=24, n_val=8, n_test=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    path = phantom_builder.build_phantom(data_dir, size=SIZE, cross_fraction=0.5, seed=7, **N)
    return data_dir, path


def test_build_layout_and_no_tensorflow(built):
    data_dir, path = built
    assert path == phantom_builder.phantom_dir(data_dir, size=SIZE, cross_fraction=0.5, seed=7, **N)
    assert os.path.isfile(os.path.join(path, "dataset_info.json"))
    assert features.load_taxonomy(path) == findings.DEFAULT
    for split, n in (("train", 24), ("validation", 8), ("test", 8)):
        assert len(phantom_builder.phantom_source(data_dir, split, size=SIZE, cross_fraction=0.5, seed=7, **N)) == n
    assert "tensorflow" not in sys.modules


def test_records_equal_the_simulator(built):
    _, path = built
    src = features.load_source(path, "validation")
    ids = np.asarray(
        phantom.sample_finding_set_ids(
            jax.random.key(phantom_builder.split_seed(7, "validation")), 8, cross_fraction=0.5
        )
    )
    # Recomputed straight from the pinned simulator API, each example at another place
    # in its batch (the batch shape of the build, so the compiled simulator is reused).
    pick = np.resize(np.array([6, 1, 4, 0, 7, 5, 3, 2]), phantom_builder.GENERATE_BATCH)
    keys = phantom.example_keys(phantom_builder.split_seed(7, "validation"), pick)
    counts = np.asarray(phantom.simulate(keys, ids[pick], size=SIZE))
    expect = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    for j, i in enumerate(pick[:8]):
        r = src[int(i)]
        assert int(r["finding_set"]) == ids[i]
        assert r["finding_set_name"].decode() == findings.DEFAULT.folder_name(int(ids[i]))
        assert int(r["subset"]) == findings.DEFAULT.is_cross(int(ids[i])) and int(r["synthetic"]) == 0
        np.testing.assert_array_equal(r["findings"], findings.DEFAULT.set_table[ids[i]])
        np.testing.assert_array_equal(r["image"], expect[j])
    assert r["image"].dtype == np.uint16 and r["image"].max() > 0
    # The splits differ (own seeds), so validation is not a copy of train.
    train = features.load_source(path, "train")
    assert not np.array_equal(train[0]["image"], src[0]["image"])


def test_grain_batch_equals_normalised_simulator_output(built):
    _, path = built
    src = features.load_source(path, "test")
    batch = next(iter(pipeline.make_loader(src, batch_size=8, seed=0, shuffle=False, shard_index=0, shard_count=1)))
    ids = np.asarray(
        phantom.sample_finding_set_ids(jax.random.key(phantom_builder.split_seed(7, "test")), 8, cross_fraction=0.5)
    )
    idx = np.arange(phantom_builder.GENERATE_BATCH) % 8  # the build's batch shape: no recompile
    counts = phantom.simulate(phantom.example_keys(phantom_builder.split_seed(7, "test"), idx), ids[idx], size=SIZE)
    on_device = transforms.normalize_counts(counts)[:8]  # the GPU path: jnp on the device batch
    # The 99.5th percentile's fractional rank (~0.995·H·W) is rounded in float32 by jnp,
    # float64 by NumPy: up to H·W·u apart in the interpolation weight, times a gap
    # between neighbouring order statistics (<= the value): the linear bound in H·W.
    np.testing.assert_allclose(
        batch["image"], np.asarray(on_device), **fp_tolerance(reduction_size=SIZE * SIZE, worst_case=True)
    )
    np.testing.assert_array_equal(batch["finding_set"], ids)
    assert "tensorflow" not in sys.modules


def test_build_is_quiet_and_a_built_set_opens_without_a_builder(tmp_path, monkeypatch, capfd, caplog):
    settings = dict(size=SIZE, seed=3, n_train=4, n_val=0, n_test=0)
    path = phantom_builder.build_phantom(tmp_path, **settings)
    out, err = capfd.readouterr()
    for chatter in ("Using custom data configuration", "Downloading and preparing", "downloaded and prepared"):
        assert chatter not in out + err + caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

    def no_builder(*args, **kwargs):
        raise AssertionError("a built data set was prepared again")

    monkeypatch.setattr(phantom_builder.ThyroidSpectPhantom, "__init__", no_builder)
    assert phantom_builder.build_phantom(tmp_path, **settings) == path


def test_rebuild_reuses_and_failed_build_leaves_nothing(built, tmp_path, monkeypatch):
    data_dir, path = built
    stamp = os.path.getmtime(os.path.join(path, "dataset_info.json"))
    assert phantom_builder.build_phantom(data_dir, size=SIZE, cross_fraction=0.5, seed=7, **N) == path
    assert os.path.getmtime(os.path.join(path, "dataset_info.json")) == stamp

    def broken(*args, **kwargs):
        raise RuntimeError("simulator crashed")

    monkeypatch.setattr(phantom_builder, "simulate_examples", broken)
    with pytest.raises(RuntimeError, match="simulator crashed"):
        phantom_builder.build_phantom(tmp_path, size=SIZE, seed=1, **N)
    assert not os.path.exists(phantom_builder.phantom_dir(tmp_path, size=SIZE, seed=1, **N))
    assert not list(tmp_path.rglob("dataset_info.json")) and not list(tmp_path.rglob("*incomplete*"))
