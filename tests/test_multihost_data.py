"""Per-process data for multi-host runs, without starting processes: each process's
block of every global batch (train loader, eval batches, GAN rows) puts the rows a
single process with all the devices would put there."""

import numpy as np
import pytest

pytest.importorskip("grain")

from test_pipeline import assert_batches_equal, make_records  # noqa: E402

from jaxthyroid import parallel  # noqa: E402
from jaxthyroid.data import pipeline, sources, transforms  # noqa: E402


@pytest.fixture(scope="module")
def source():
    return sources.ListSource(make_records(37), description="toy37")


def concat(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("count", [2, 3])
def test_process_blocks_make_the_single_process_batches(source, count):
    """Shard k's batch j is block k of the single-process global batch j, augmentation
    included; the epoch has the same number of (whole) batches."""
    aug = transforms.AugmentConfig()
    per = 4
    whole = list(
        pipeline.make_loader(source, batch_size=per * count, seed=5, augment=aug, shard_index=0, shard_count=1)
    )
    shards = [
        list(pipeline.make_loader(source, batch_size=per, seed=5, augment=aug, shard_index=k, shard_count=count))
        for k in range(count)
    ]
    assert len(whole) == 37 // (per * count) and all(len(s) == len(whole) for s in shards)
    for j, want in enumerate(whole):
        assert_batches_equal([concat([s[j] for s in shards])], [want])


def test_process_block_iterator_state_resumes(source):
    loader = pipeline.make_loader(source, batch_size=3, seed=2, num_epochs=None, shard_index=1, shard_count=2)
    it = iter(loader)
    first = [next(it) for _ in range(4)]
    state = it.get_state()
    rest = [next(it) for _ in range(5)]
    it2 = iter(pipeline.make_loader(source, batch_size=3, seed=2, num_epochs=None, shard_index=1, shard_count=2))
    it2.set_state(state)
    assert_batches_equal(rest, [next(it2) for _ in range(5)])
    assert not np.array_equal(first[0]["image"], rest[0]["image"])


@pytest.mark.parametrize("per,count", [(4, 2), (3, 3), (8, 2)])
def test_eval_blocks_make_the_single_process_batches(source, per, count):
    """Padding included: the concatenated shard batches are the padded single-process batch."""
    whole = list(pipeline.eval_batches(source, per * count))
    shards = [list(pipeline.eval_batches(source, per, shard_index=k, shard_count=count)) for k in range(count)]
    assert all(len(s) == len(whole) for s in shards)
    for j, want in enumerate(whole):
        assert_batches_equal([concat([s[j] for s in shards])], [want])
    assert sum(b["mask"].sum() for b in whole) == 37


def test_process_batch_size_and_rows_in_one_process():
    assert parallel.process_batch_size(12) == 12
    rows = np.arange(10)
    assert parallel.process_rows(rows, None) is rows
    assert parallel.process_rows(rows, parallel.make_mesh(2)) is rows
    assert parallel.is_primary()
    assert parallel.primary_first(lambda: 7, "x") == 7
