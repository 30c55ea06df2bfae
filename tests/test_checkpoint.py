"""Checkpoint restore errors: only a checkpoint whose files fail to read is called corrupt
(and the previous step is named); other failures keep their type."""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxthyroid import parallel
from jaxthyroid.train.checkpoint import CheckpointError, Checkpoints, CorruptCheckpointError

STATE = {"w": jnp.arange(1000.0).reshape(10, 100), "b": jnp.ones(3)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> pathlib.Path:
    """Checkpoints at steps 1 and 2 (the template for every test, copied per test)."""
    directory = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    ck = Checkpoints(directory, keep=3)
    for step in (1, 2):
        ck.save(step, jax.tree.map(lambda x, s=step: x * s, STATE), data={}, loop={"epoch": step})
    ck.close()
    return directory


@pytest.fixture
def ckpt_dir(saved, tmp_path) -> pathlib.Path:
    directory = tmp_path / "checkpoints"
    shutil.copytree(saved, directory)
    return directory


def _restore(directory, template=STATE, **kwargs):
    ck = Checkpoints(directory, keep=3)
    try:
        return ck.restore(template, **kwargs)
    finally:
        ck.close()


def _array_files(directory, step=2):
    files = [p for p in (directory / f"latest/{step}/state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, "expected OCDBT data files"
    return files


def test_restores_the_latest(ckpt_dir):
    state, _, loop = _restore(ckpt_dir)
    assert loop["epoch"] == 2
    np.testing.assert_array_equal(state["w"], 2 * STATE["w"])  # exact: a round trip


@pytest.mark.parametrize(
    "damage",
    [
        "missing_item",
        "deleted_arrays",
        "truncated_arrays",
        "overwritten_arrays",
        "garbage_metadata_json",
        "garbage_loop_json",
    ],
)
def test_read_failures_are_corrupt_and_name_the_previous_step(ckpt_dir, damage):
    step_dir = ckpt_dir / "latest/2"
    if damage == "missing_item":
        shutil.rmtree(step_dir / "state")
    elif damage == "deleted_arrays":
        for f in _array_files(ckpt_dir):
            f.unlink()
    elif damage == "truncated_arrays":
        for f in _array_files(ckpt_dir):
            with open(f, "r+b") as fh:
                fh.truncate(10)
    elif damage == "overwritten_arrays":
        for f in _array_files(ckpt_dir):
            with open(f, "r+b") as fh:
                fh.write(b"\0" * 50)
    elif damage == "garbage_metadata_json":
        (step_dir / "state/_METADATA").write_text("{not json")
    elif damage == "garbage_loop_json":
        (step_dir / "loop/metadata").write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match=r"latest/2 is corrupt.*previous checkpoint is step 1") as err:
        _restore(ckpt_dir)
    assert err.value.previous_step == 1 and err.value.path == step_dir
    # and the previous one it names restores
    _, _, loop = _restore(ckpt_dir, step=1)
    assert loop["epoch"] == 1


def test_corrupt_first_checkpoint_says_there_is_no_earlier_one(ckpt_dir):
    shutil.rmtree(ckpt_dir / "latest/1/state")
    with pytest.raises(CorruptCheckpointError, match="no earlier latest checkpoint") as err:
        _restore(ckpt_dir, step=1)
    assert err.value.previous_step is None


def test_a_model_that_does_not_fit_is_not_called_corrupt(ckpt_dir):
    other = {"w": jnp.zeros((10, 99)), "b": jnp.ones(3)}
    with pytest.raises(CheckpointError, match=r"does not fit(.|\n)*w: checkpoint shape \(10, 100\)") as err:
        _restore(ckpt_dir, other)
    assert not isinstance(err.value, CorruptCheckpointError)
    assert "corrupt" not in str(err.value) and "delete" not in str(err.value)


def test_a_sharding_error_keeps_its_type(ckpt_dir):
    mesh = parallel.make_mesh(8)  # conftest: 8 host devices; 3 rows do not split over 8
    template = {
        "w": STATE["w"],
        "b": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=NamedSharding(mesh, P(parallel.DATA_AXIS))),
    }
    with pytest.raises(Exception) as err:
        _restore(ckpt_dir, template)
    assert not isinstance(err.value, CheckpointError)
    assert any("not corrupt" in note for note in getattr(err.value, "__notes__", []))


@pytest.mark.parametrize("error", [MemoryError("out of host memory"), TypeError("cannot cast float32 to int4")])
def test_memory_and_dtype_errors_keep_their_type(ckpt_dir, monkeypatch, error):
    def failing_restore(self, *args, **kwargs):
        raise error

    import orbax.checkpoint as ocp

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_restore)
    with pytest.raises(type(error)) as err:
        _restore(ckpt_dir)
    assert err.value is error
    assert any("not corrupt, do not delete" in note for note in err.value.__notes__)


def test_a_state_is_saved_packed_and_restores_exactly(tmp_path):
    """One flat array per dtype on disk; the round trip gives every leaf back bit for bit,
    with its dtype, in the template's structure."""
    from jaxthyroid.train import checkpoint as ckpt_lib

    state = {
        "params": {"kernel": jnp.linspace(-1.0, 1.0, 24).reshape(2, 3, 4), "bias": jnp.full((4,), 0.5)},
        "step": jnp.asarray(7, jnp.int32),
        "half": jnp.arange(5, dtype=jnp.bfloat16) / 3,
        "empty": jnp.zeros((0, 3)),
    }
    ck = Checkpoints(tmp_path / "checkpoints")
    ck.save(3, state, data={}, loop={"epoch": 1})
    tree = ck.managers["latest"].item_metadata(3)["state"]  # what restore reads
    ck.close()
    assert set(tree.keys()) == {ckpt_lib.PACKED}
    assert {d: tuple(m.shape) for d, m in tree[ckpt_lib.PACKED].items()} == {
        "float32": (28,),
        "int32": (1,),
        "bfloat16": (5,),
    }
    template = jax.tree.map(jnp.zeros_like, state)
    restored, _, loop = _restore(tmp_path / "checkpoints", template)
    assert ckpt_lib.LAYOUT not in loop and loop["epoch"] == 1
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(state)):
        assert got.dtype == want.dtype and got.shape == want.shape, path
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_checkpoint_saved_leaf_by_leaf_still_restores(tmp_path):
    """States that cannot be packed (and checkpoints from before packing) keep orbax's
    own tree layout and restore as before."""
    ck = Checkpoints(tmp_path / "checkpoints", pack=False)
    ck.save(1, STATE, data={}, loop={"epoch": 1})
    ck.close()
    assert (tmp_path / "checkpoints/latest/1/state").is_dir()
    state, _, _ = _restore(tmp_path / "checkpoints")
    np.testing.assert_array_equal(state["w"], STATE["w"])
    with pytest.raises(CheckpointError, match=r"w: checkpoint shape \(10, 100\), model shape \(10, 99\)"):
        _restore(tmp_path / "checkpoints", {"w": jnp.zeros((10, 99)), "b": jnp.ones(3)})


def test_typed_keys_and_mixed_placements_are_not_packed():
    from jaxthyroid.train import checkpoint as ckpt_lib

    assert ckpt_lib._pack({"key": jax.random.key(0), "w": jnp.ones(2)}) is None
    mesh = parallel.make_mesh(8)
    sharded = jax.device_put(jnp.ones(8), NamedSharding(mesh, P(parallel.DATA_AXIS)))
    assert ckpt_lib._pack({"a": sharded, "b": jnp.ones(2)}) is None
    assert ckpt_lib._pack({"a": jnp.ones(2), "b": jnp.ones(3)}) is not None
