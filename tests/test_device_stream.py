"""On-device phantom stream: layout, determinism, resume, single-only, eval padding, no TFDS/grain."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxthyroid import findings, parallel, phantom
from jaxthyroid.data import device_stream, pipeline, sources, transforms

TAX = findings.DEFAULT
SIZE = 64
B = 4  # one batch size everywhere: the simulator compiles once per static setting
KEY = jax.random.key(5)


def stream(**kw):
    args = dict(batch_size=B, size=SIZE, cross_fraction=0.5, steps=3)
    return device_stream.train_batches(KEY, **{**args, **kw})


def assert_batches_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.fixture(scope="module")
def batches():
    return list(stream())


def test_layout_and_labels(batches):
    assert len(batches) == 3
    for batch in batches:
        assert set(batch) == set(pipeline.BATCH_KEYS)
        assert all(isinstance(v, jax.Array) for v in batch.values())  # stays on the device
        img = np.asarray(batch["image"])
        assert img.shape == (B, SIZE, SIZE, 1) and img.dtype == np.float32
        # normalised per image; exactly 1: the brightest pixel is >= the percentile, clipped at 1
        assert img.min() >= 0.0 and np.all(img.max(axis=(1, 2, 3)) == 1.0)
        fs = np.asarray(batch["finding_set"])
        assert fs.dtype == np.int32 and batch["subset"].dtype == np.int32
        np.testing.assert_array_equal(batch["findings"], TAX.set_table[fs])
        np.testing.assert_array_equal(batch["subset"], [TAX.is_cross(int(i)) for i in fs])
        np.testing.assert_array_equal(batch["synthetic"], np.zeros(B))
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_labels_are_the_phantom_draws(batches):
    """Batch s draws its finding sets as phantom.make_batch(k_data) does, k_data from fold_in(key, s)."""
    for s, batch in enumerate(batches):
        k_data, _ = jax.random.split(jax.random.fold_in(KEY, s))
        k_sets, _ = jax.random.split(k_data)
        ids = phantom.sample_finding_set_ids(k_sets, B, cross_fraction=0.5)
        np.testing.assert_array_equal(batch["finding_set"], ids)


def test_deterministic_and_resumable(batches):
    assert_batches_equal(next(stream()), batches[0])
    it = stream()
    next(it)
    assert it.get_state() == {"step": 1}
    resumed = stream()
    resumed.set_state({"step": 2})  # what the training loop restores from a checkpoint
    assert_batches_equal(next(resumed), batches[2])
    with pytest.raises(StopIteration):
        next(resumed)
    with pytest.raises(ValueError, match="outside"):
        resumed.set_state({"step": 7})
    # An epoch's stream starting later: its first batch is the step it starts at.
    assert_batches_equal(next(stream(first_step=1, steps=2)), batches[1])
    other = next(device_stream.train_batches(jax.random.key(6), batch_size=B, size=SIZE, cross_fraction=0.5))
    assert not np.array_equal(other["image"], batches[0]["image"])


def test_single_only_draws_single_feature_sets():
    fs = np.concatenate([np.asarray(b["finding_set"]) for b in stream(single_only=True, steps=4)])
    assert set(fs.tolist()) <= set(TAX.single_set_ids) and len(set(fs.tolist())) > 2


def test_fixed_split_is_the_stream_of_its_seed(batches):
    arrays = device_stream.fixed_split(9, 6, size=SIZE, cross_fraction=0.5, generate_batch=B)
    again = device_stream.fixed_split(9, 6, size=SIZE, cross_fraction=0.5, generate_batch=B)
    assert_batches_equal(arrays, again)
    assert all(isinstance(v, np.ndarray) and len(v) == 6 for v in arrays.values())
    first = next(device_stream.train_batches(jax.random.key(9), batch_size=B, size=SIZE, cross_fraction=0.5))
    assert_batches_equal({k: v[:B] for k, v in arrays.items()}, first)
    out = list(device_stream.eval_batches_from_arrays(arrays, B))
    assert len(out) == 2
    np.testing.assert_array_equal(out[1]["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(out[1]["image"][:2], arrays["image"][4:])
    assert not out[1]["image"][2:].any() and out[1]["findings"].dtype == np.float32


def test_eval_batches_from_arrays_equal_pipeline_eval_batches():
    rng = np.random.default_rng(0)
    records = []
    for i in range(7):
        fs = i % TAX.num_sets
        records.append(
            {
                "image": rng.poisson(30.0, (8, 8, 1)).astype(np.uint16),
                "findings": TAX.set_table[fs],
                "finding_set": np.int64(fs),
                "subset": np.int64(TAX.is_cross(fs)),
                "synthetic": np.int64(i % 2),
            }
        )
    source = sources.ListSource(records)
    arrays = {k: np.stack([pipeline.preprocess(r)[k] for r in records]) for k in pipeline.BATCH_KEYS}
    for batch_size, count in ((3, 1), (3, 2), (2, 3), (8, 1)):
        for shard in range(count):
            expect = list(pipeline.eval_batches(source, batch_size, shard_index=shard, shard_count=count))
            got = list(device_stream.eval_batches_from_arrays(arrays, batch_size, shard_index=shard, shard_count=count))
            assert len(got) == len(expect)
            for g, e in zip(got, expect):
                assert_batches_equal(g, e)
                assert all(g[k].dtype == e[k].dtype for k in e)


def test_augmented_stream_on_a_mesh(batches):
    # One compile covers both: augmentation on the device, and batches laid out over a mesh.
    mesh = parallel.make_mesh(2)
    aug = list(stream(augment=transforms.AugmentConfig(thinning_prob=1.0), mesh=mesh, steps=2))
    for plain, warped in zip(batches, aug):
        assert warped["image"].sharding == parallel.data_sharding(mesh)
        # The same draws whatever the layout: labels equal the unsharded stream's.
        for k in ("findings", "finding_set", "subset"):
            np.testing.assert_array_equal(warped[k], plain[k])
        img = np.asarray(warped["image"])
        assert img.min() >= 0.0 and img.max() <= 1.0
        assert not np.allclose(img, np.asarray(plain["image"]), atol=0.05)  # augmented
    placed = parallel.shard_batch(aug[0], mesh)
    assert placed["image"] is aug[0]["image"]  # already where the train step wants it
    with pytest.raises(ValueError, match="does not split"):
        device_stream.train_batches(KEY, batch_size=3, size=SIZE, cross_fraction=0.5, mesh=mesh)


def test_imports_neither_tfds_nor_grain():
    # A GPU machine has neither: block them and check nothing needs them.
    code = textwrap.dedent("""
        import sys
        for name in ("tensorflow_datasets", "grain", "tensorflow"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import numpy as np
        from jaxthyroid.data import device_stream
        import jax
        it = device_stream.train_batches(jax.random.key(0), batch_size=2, size=64, steps=2)
        it.set_state(it.get_state())
        arrays = {"image": np.zeros((3, 4, 4, 1), np.float32), "findings": np.zeros((3, 6), np.float32)}
        assert [b["mask"].tolist() for b in device_stream.eval_batches_from_arrays(arrays, 2)] == [[1, 1], [1, 0]]
        bad = [m for m in ("tensorflow_datasets", "grain", "tensorflow") if sys.modules.get(m) is not None]
        assert not bad, bad
        print("ok")
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
