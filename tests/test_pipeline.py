"""grain pipeline and transforms: determinism, checkpoint state, shards, eval padding."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerance import fp_tolerance

pytest.importorskip("grain")

from jaxthyroid import findings
from jaxthyroid.data import examples, pipeline, sources, transforms

SIZE = 16
TAX = findings.DEFAULT


def make_records(n, *, seed=0, synthetic=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fs = i % TAX.num_sets
        img = rng.poisson(50.0 + 10 * fs, size=(SIZE, SIZE, 1)).astype(np.uint16)
        img[0, 0, 0] = i  # makes every record identifiable from its image
        out.append(
            {
                "image": img,
                "findings": TAX.set_table[fs],
                "finding_set": np.int64(fs),
                "subset": np.int64(TAX.is_cross(fs)),
                "synthetic": np.int64(synthetic),
                "index": i,
            }
        )
    return out


@pytest.fixture(scope="module")
def source():
    return sources.ListSource(make_records(40), description="toy40")


def take(it, k):
    return [next(it) for _ in range(k)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_batch_layout_and_normalisation(source):
    loader = pipeline.make_loader(source, batch_size=8, seed=0, shuffle=False, shard_index=0, shard_count=1)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, SIZE, SIZE, 1) and batch["image"].dtype == np.float32
    assert batch["findings"].shape == (8, TAX.num_findings) and batch["findings"].dtype == np.float32
    for k in ("finding_set", "subset", "synthetic"):
        assert batch[k].shape == (8,) and batch[k].dtype == np.int32
    expect = transforms.normalize_counts(np.stack([source[i]["image"] for i in range(8)]).astype(np.float32))
    # the same NumPy code per record and stacked: a percentile (3 roundings) and a division
    np.testing.assert_allclose(batch["image"], expect, **fp_tolerance(depth=4))
    assert batch["image"].max() == 1.0 and batch["image"].min() >= 0.0
    np.testing.assert_array_equal(batch["finding_set"], [source[i]["finding_set"] for i in range(8)])


def test_normalize_counts_same_on_host_and_device():
    x = np.random.default_rng(1).poisson(30.0, size=(3, SIZE, SIZE, 1)).astype(np.float32)
    x[2] = 0  # an empty image stays zero rather than dividing by 0
    host = transforms.normalize_counts(x)
    dev = jax.jit(transforms.normalize_counts)(jnp.asarray(x))
    assert isinstance(dev, jax.Array)
    # jnp rounds the percentile's fractional rank (~0.995·H·W) in float32, NumPy in float64:
    # up to H·W·u in the interpolation weight, times an order-statistic gap (<= the value)
    np.testing.assert_allclose(np.asarray(dev), host, **fp_tolerance(reduction_size=SIZE * SIZE, worst_case=True))
    assert np.all(host[2] == 0)
    p = np.percentile(x[0], 99.5)
    np.testing.assert_allclose(host[0], np.clip(x[0] / p, 0, 1), **fp_tolerance(depth=4))  # p in float64 here


def test_determinism_for_a_seed(source):
    aug = transforms.AugmentConfig(thinning_prob=1.0)

    def run(seed):
        loader = pipeline.make_loader(source, batch_size=8, seed=seed, augment=aug, shard_index=0, shard_count=1)
        return list(loader)

    a, b, c = run(5), run(5), run(6)
    assert len(a) == 40 // 8
    assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_iterator_state_round_trip(source):
    aug = transforms.AugmentConfig()
    loader = pipeline.make_loader(
        source, batch_size=4, seed=1, num_epochs=None, augment=aug, shard_index=0, shard_count=1
    )
    it = iter(loader)
    take(it, 3)
    state = it.get_state()
    rest = take(it, 12)  # runs past the end of the first epoch
    it2 = iter(
        pipeline.make_loader(source, batch_size=4, seed=1, num_epochs=None, augment=aug, shard_index=0, shard_count=1)
    )
    it2.set_state(state)
    assert_batches_equal(rest, take(it2, 12))


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_are_disjoint_and_cover(count):
    n = 36
    src = sources.ListSource(make_records(n), description="toy36")
    seen = []
    for k in range(count):
        loader = pipeline.make_loader(src, batch_size=1, seed=3, shard_index=k, shard_count=count, drop_remainder=False)
        seen.append([_record_index(src, b) for b in loader])
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat)) == n  # disjoint, and together every record once
    assert all(len(s) == n // count for s in seen)


def _record_index(src, batch):
    """Which record a batch of one came from (the images are all distinct)."""
    img = batch["image"][0]
    for i in range(len(src)):
        if np.array_equal(transforms.normalize_counts(src[i]["image"].astype(np.float32)), img):
            return i
    raise AssertionError("batch matches no record")


def test_eval_batches_pad_and_mask(source):
    batches = list(pipeline.eval_batches(source, 16))
    assert [b["image"].shape[0] for b in batches] == [16, 16, 16]
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == np.float32 and mask.sum() == 40 and np.all(mask[:40] == 1) and np.all(mask[40:] == 0)
    fs = np.concatenate([b["finding_set"] for b in batches])[:40]
    np.testing.assert_array_equal(fs, [source[i]["finding_set"] for i in range(40)])
    assert np.all(batches[-1]["image"][8:] == 0)
    # Sharded evaluation: equal batch counts everywhere, every record exactly once.
    shards = [list(pipeline.eval_batches(source, 8, shard_index=k, shard_count=3)) for k in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert sum(b["mask"].sum() for s in shards for b in s) == 40


def test_single_feature_and_mix(source):
    single = sources.single_feature(source)
    assert len(single) == sum(1 for i in range(40) if not TAX.is_cross(i % TAX.num_sets))
    assert all(int(single[i]["subset"]) == 0 for i in range(len(single)))
    synth = sources.ListSource(make_records(10, seed=9), description="gan10")
    mixed = sources.mix_sources(source, synth, 0.5, seed=0)
    assert len(mixed) == 60
    flags = [int(mixed[i]["synthetic"]) for i in range(len(mixed))]
    assert flags == [0] * 40 + [1] * 20
    assert sorted(mixed[i]["index"] for i in range(40, 60)) == sorted(list(range(10)) * 2)
    assert repr(mixed) == repr(sources.mix_sources(source, synth, 0.5, seed=0))  # grain checks it
    batch = next(iter(pipeline.make_loader(mixed, batch_size=60, seed=0, shard_index=0, shard_count=1)))
    assert batch["synthetic"].sum() == 20


def test_thinning_lowers_counts_and_keeps_poisson_mean():
    rng = np.random.default_rng(0)
    counts = rng.poisson(200.0, size=(64, 64, 1)).astype(np.float32)
    thinned = transforms.thin_counts_np(counts, 0.25, rng)
    assert np.all(thinned <= counts) and np.all(thinned == np.round(thinned))
    assert abs(thinned.mean() - 50.0) < 1.0
    dev = jax.jit(transforms.thin_counts_jax)(jax.random.key(0), jnp.asarray(counts), 0.25)
    assert abs(float(dev.mean()) - 50.0) < 1.0 and bool(jnp.all(dev <= counts))
    assert abs(float(dev.var()) - 50.0 * 0.75 - 200 * 0.25**2) < 5.0  # binomial of Poisson
    low = jax.jit(transforms.thin_counts_jax)(jax.random.key(1), jnp.full((64, 64, 1), 4.0), 0.5)
    assert abs(float(low.mean()) - 2.0) < 0.1 and abs(float(low.var()) - 1.0) < 0.1  # exact branch


def test_affine_warp_identity_and_device_agreement():
    img = np.random.default_rng(2).uniform(size=(SIZE, SIZE, 1)).astype(np.float32)
    ident = transforms.AugmentParams(0.0, 0.0, 0.0, 1.0, 1.0, False)
    # Sample coordinates (up to SIZE) carry ~SIZE·u of rounding; bilinear weights move by
    # that much, values in [0, 1] by at most that times the largest neighbour difference (1).
    warp_tol = fp_tolerance(reduction_size=SIZE, worst_case=True)
    np.testing.assert_allclose(transforms.affine_warp(img, ident), img, **warp_tol)
    shift = transforms.AugmentParams(0.0, 2.0, 0.0, 1.0, 1.0, False)
    np.testing.assert_allclose(transforms.affine_warp(img, shift)[:, 2:], img[:, :-2], **warp_tol)
    flip = transforms.AugmentParams(0.0, 0.0, 0.0, 1.0, 1.0, True)
    np.testing.assert_allclose(transforms.affine_warp(img, flip), img[:, ::-1], **warp_tol)
    p = transforms.AugmentParams(1.3, -0.7, 0.1, 1.05, 1.0, False)
    np.testing.assert_allclose(  # rotation: cos/sin and a 2×2 product add a few roundings
        np.asarray(jax.jit(transforms.affine_warp)(jnp.asarray(img), p)),
        transforms.affine_warp(img, p),
        **fp_tolerance(reduction_size=SIZE, worst_case=True, depth=4),
    )
    counts = jnp.asarray(np.stack([img * 100] * 4))
    out = jax.jit(transforms.augment_batch, static_argnums=2)(jax.random.key(0), counts, transforms.AugmentConfig())
    assert out.shape == counts.shape and bool(jnp.all(jnp.isfinite(out)))


def test_no_tensorflow_imported():
    assert "tensorflow" not in sys.modules


def test_per_set_subset_caps_each_finding_set():
    from jaxthyroid.data import sources

    records = [{"finding_set": s, "subset": int(s >= 6)} for s in [0] * 5 + [1] * 2 + [7] * 4]
    sub = sources.per_set_subset(records, 3, seed=1)
    ids = [sub[i]["finding_set"] for i in range(len(sub))]
    assert sorted(ids) == [0, 0, 0, 1, 1, 7, 7, 7]
    assert list(sub.indices) == sorted(sub.indices)
    assert list(sources.per_set_subset(records, 3, seed=1).indices) == list(sub.indices)


def test_normalisation_of_read_only_images_is_remembered(monkeypatch):
    """The pipeline normalises a read-only stored image once, and gets what
    normalize_counts gives; a writeable array (which may change) every time."""
    rng = np.random.default_rng(3)
    stored = rng.poisson(30.0, (16, 16, 1)).astype(np.uint16)
    stored[5:9, 5:9] += 400  # a gland: right-skewed, as scintigrams are
    stored.flags.writeable = False
    calls = []
    real = transforms.normalize_counts
    monkeypatch.setattr(transforms, "normalize_counts", lambda x: calls.append(1) or real(x))
    memo = examples.NormalizedImages()
    first, second = memo(stored), memo(stored)
    assert len(calls) == 1 and second is first and not first.flags.writeable
    np.testing.assert_array_equal(first, real(stored))
    record = {"image": stored, "findings": np.zeros(6, np.float32), "finding_set": 0, "subset": 0}
    np.testing.assert_array_equal(pipeline.preprocess(record)["image"], real(stored))  # the module's memo
    assert len(calls) == 2
    writeable = np.array(stored)
    memo(writeable), memo(writeable)
    assert len(calls) == 4
    del stored, first, second, record
    import gc

    gc.collect()
    assert len(memo) == 0  # the entry went with its array
