"""GAN-augmented data set: labels round-trip through TFDS, mixing gives the asked ratio."""

import os
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from jaxthyroid import findings
from jaxthyroid.data import features, pipeline, sources, synthetic_builder

TAX = findings.DEFAULT
SIZE = 16
N = 30


def generated(n=N, seed=0):
    """What a generator hands over: [0, 1] images and the ids it was conditioned on."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TAX.num_sets, n)
    k = min(n, TAX.num_sets)
    ids[:k] = np.arange(k)  # every finding set at least once (n >= 12)
    images = rng.uniform(0.0, 1.0, (n, SIZE, SIZE, 1)).astype(np.float32)
    return images, ids


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    images, ids = generated()
    path = synthetic_builder.build_synthetic(data_dir, "gan run/1", images, ids, peak_counts=1000.0)
    return data_dir, path, images, ids


def test_labels_round_trip(built):
    data_dir, path, images, ids = built
    assert path == synthetic_builder.synthetic_dir(data_dir, "gan run/1")
    assert os.path.basename(os.path.dirname(path)) == "gan_run_1"
    assert features.load_taxonomy(path) == TAX
    src = synthetic_builder.synthetic_source(data_dir, "gan run/1")
    assert len(src) == N and len(synthetic_builder.synthetic_source(path)) == N
    for i in range(N):
        r = src[i]
        fs = int(ids[i])
        assert int(r["finding_set"]) == fs
        assert r["finding_set_name"].decode() == TAX.folder_name(fs)
        np.testing.assert_array_equal(r["findings"], TAX.encode(TAX.finding_sets[fs]))
        assert TAX.decode(r["findings"]) == TAX.finding_sets[fs]
        assert int(r["subset"]) == int(len(TAX.finding_sets[fs]) > 1)
        assert int(r["synthetic"]) == 1 and r["origin"].decode() == f"dcgan+srgan/{i}"
        # [0, 1] intensities are stored as counts with 1.0 -> peak_counts.
        assert r["image"].dtype == np.uint16
        np.testing.assert_array_equal(r["image"], np.rint(images[i].astype(np.float64) * 1000.0).astype(np.uint16))
    assert {int(src[i]["subset"]) for i in range(N)} == {0, 1}
    assert "tensorflow" not in sys.modules


def test_counts_input_and_bad_inputs(tmp_path):
    counts = np.arange(2 * SIZE * SIZE, dtype=np.int32).reshape(2, SIZE, SIZE, 1) * 200  # up to 102k
    stored = synthetic_builder.to_counts(counts)
    assert stored.max() == 65535 and stored[0, 0, 1, 0] == 200  # counts kept, clipped to uint16
    floats = counts.astype(np.float32)  # float counts above 1 are counts under "auto"
    np.testing.assert_array_equal(synthetic_builder.to_counts(floats), stored)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        synthetic_builder.to_counts(np.full((1, 4, 4, 1), -1.0, np.float32), input_range="unit")
    with pytest.raises(ValueError, match="NaN"):
        synthetic_builder.to_counts(np.full((1, 4, 4, 1), np.nan, np.float32))
    images, ids = generated(4)
    with pytest.raises(ValueError, match="outside this taxonomy"):
        synthetic_builder.build_synthetic(tmp_path, "bad", images, np.array([0, 1, 2, 99]))
    with pytest.raises(ValueError, match="N = 4"):
        synthetic_builder.build_synthetic(tmp_path, "bad", images, ids[:3])
    with pytest.raises(ValueError, match="square"):
        synthetic_builder.build_synthetic(tmp_path, "bad", images[:, :, :8], ids)
    assert not list(tmp_path.rglob("dataset_info.json"))  # nothing written for bad input


def test_existing_set_kept_unless_overwrite(tmp_path):
    images, ids = generated(4)
    path = synthetic_builder.build_synthetic(tmp_path, "g", images, ids)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synthetic_builder.build_synthetic(tmp_path, "g", images, ids)
    path2 = synthetic_builder.build_synthetic(tmp_path, "g", images[:2], ids[:2], overwrite=True)
    assert path2 == path and len(synthetic_builder.synthetic_source(path)) == 2
    # Only the finished set is left: no scratch or retired folders beside it.
    assert sorted(os.listdir(tmp_path / synthetic_builder.NAME)) == ["g"]
    assert os.listdir(os.path.dirname(path)) == ["1.0.0"]


def real_records(n):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        fs = int(TAX.single_set_ids[i % len(TAX.single_set_ids)])
        out.append(features.make_record(rng.poisson(40.0, (SIZE, SIZE, 1)), fs, TAX, origin=f"real/{i}"))
    return out


@pytest.mark.parametrize("ratio", [0.5, 1.5])
def test_mixed_loader_has_requested_synthetic_ratio(built, ratio):
    data_dir, path, _, _ = built
    real = sources.ListSource(real_records(40), description="real40")
    mixed = sources.mix_sources(real, synthetic_builder.synthetic_source(path), ratio, seed=3)
    n_syn = int(round(ratio * 40))  # 20, or 60 (cycles through the 30 generated images)
    assert len(mixed) == 40 + n_syn
    loader = pipeline.make_loader(mixed, batch_size=10, seed=0, shard_index=0, shard_count=1, drop_remainder=False)
    batches = list(loader)
    flags = np.concatenate([b["synthetic"] for b in batches])
    sets = np.concatenate([b["finding_set"] for b in batches])
    assert len(flags) == len(mixed)  # one epoch, every record once
    assert flags.sum() == n_syn
    np.testing.assert_allclose(flags.mean(), ratio / (1.0 + ratio))  # closed form in float64: default rtol 1e-7
    # Shuffled: synthetic images are spread over the batches, not all at the end.
    per_batch = [int(b["synthetic"].sum()) for b in batches]
    assert per_batch[0] > 0 and max(per_batch) < 10
    # Generated cross-feature sets came through; the real set has single ones only.
    assert set(sets[flags == 1].tolist()) & set(TAX.cross_set_ids)
    assert not set(sets[flags == 0].tolist()) & set(TAX.cross_set_ids)
