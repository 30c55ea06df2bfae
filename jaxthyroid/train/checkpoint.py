"""Checkpoints: orbax ``CheckpointManager``s for the latest N and the best by a metric.

Layout under ``<workdir>/checkpoints``::

    latest/<step>/{state,data,loop}   the last ``keep`` saves (mid-epoch and end of epoch)
    best/<step>/{state,data,loop}     the one save with the best validation metric

Items: ``state`` (the TrainState pytree), ``data`` (the train iterator's state as
JSON, or none) and ``loop`` (epoch, batches consumed in it, RNG key data, history).
Saves are synchronous and atomic (orbax writes to a temporary directory and renames
it), so a killed run leaves the previous checkpoint intact.

A state whose leaves all share one fully replicated placement (every state this
package trains, on one device or data-parallel) is saved *packed*: one flat array per
dtype (``state = {"packed_leaves": {dtype: [n]}}``), each leaf's path, shape and dtype
listed in ``loop["state_layout"]``. orbax's cost is per array (metadata and a
TensorStore spec each) and a training saves every evaluation round, so a ResNet's
hundreds of leaves cost several times one array's save (measured:
``benchmarks/checkpoint_save.py``, ``docs/benchmarks.md``). Restoring unpacks into the template's structure, dtypes and shardings; checkpoints saved leaf by
leaf (other states, older runs) restore as before.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

WHICH = ("latest", "best")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files are missing or fail to read/verify.

    Attributes: ``path`` (the step's directory) and ``previous_step`` (the newest
    older checkpoint of the same kind, or None).
    """

    def __init__(self, message: str, *, path: pathlib.Path, previous_step: int | None):
        super().__init__(message)
        self.path = path
        self.previous_step = previous_step


# Errors that mean "the files could not be read or verified" (and nothing else).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    EOFError,
    json.JSONDecodeError,
    UnicodeDecodeError,
)
try:  # msgpack: orbax's format for small leaves and older checkpoints
    import msgpack

    _READ_ERRORS += (msgpack.exceptions.UnpackException, msgpack.exceptions.ExtraData)
except ImportError:  # pragma: no cover - orbax depends on msgpack
    pass
# TensorStore (the OCDBT/zarr arrays) reports read failures as ValueError "<STATUS>: Error
# reading/opening ..." or with a DATA_LOSS status (checksum or decompression failure).
_TENSORSTORE_READ = re.compile(r"^(DATA_LOSS|NOT_FOUND):|^[A-Z_]+: Error (reading|opening|decoding)")


def _is_read_failure(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a failure to read the files."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, _READ_ERRORS):
            return True
        if isinstance(err, ValueError) and _TENSORSTORE_READ.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _path_str(path) -> str:
    return ".".join(_key_str(k) for k in path)


def _leaf_shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(path): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}


def check_compatible(saved_metadata, template, where: str, *, layout: list | None = None) -> None:
    """Raises CheckpointError when the saved tree's paths or shapes differ from ``template``
    (``layout``: a packed state's ``[path, shape, dtype]`` list, instead of its metadata)."""
    saved = {p: tuple(shape) for p, shape, _ in layout} if layout is not None else _leaf_shapes(saved_metadata)
    wanted = _leaf_shapes(template)
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    reshaped = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    if not (missing or unexpected or reshaped):
        return
    lines = [f"checkpoint {where} does not fit this model (another architecture, number of findings or optimiser?):"]
    if missing:
        lines.append(
            f"  not in the checkpoint: {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    if unexpected:
        lines.append(
            f"  only in the checkpoint: {', '.join(unexpected[:5])}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    for k in reshaped[:5]:
        lines.append(f"  {k}: checkpoint shape {saved[k]}, model shape {wanted[k]}")
    lines.append("Use the config the checkpoint was trained with, or another workdir.")
    raise CheckpointError("\n".join(lines))


# -- packed states ------------------------------------------------------------------

PACKED = "packed_leaves"  # the state item's one key when the state was saved packed
LAYOUT = "state_layout"  # the loop item's key listing the packed leaves


def _packable(leaves: list) -> bool:
    """Whether the leaves can share flat arrays: JAX arrays of plain dtypes with one
    common, fully replicated sharding."""
    if not leaves or not all(isinstance(leaf, jax.Array) for leaf in leaves):
        return False
    if any(jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended) for leaf in leaves):
        return False  # typed PRNG keys and other extended dtypes do not concatenate
    first = leaves[0].sharding
    return first.is_fully_replicated and all(leaf.sharding == first for leaf in leaves)


@functools.lru_cache(maxsize=32)
def _pack_fn(groups: tuple[tuple[str, tuple[int, ...]], ...]):
    """Jitted ``leaves -> {dtype: flat array}``; ``groups`` gives each dtype's leaf indices."""
    return jax.jit(lambda leaves: {d: jnp.concatenate([jnp.ravel(leaves[i]) for i in idx]) for d, idx in groups})


@functools.lru_cache(maxsize=32)
def _unpack_fn(layout: tuple[tuple[str, int, tuple[int, ...], str], ...]):
    """Jitted ``{dtype: flat array} -> leaves``; ``layout`` gives each leaf's packed dtype,
    offset and shape, and the dtype it is restored as."""

    def unpack(packed):
        return [
            packed[d][o : o + int(np.prod(shape, dtype=np.int64))].reshape(shape).astype(out)
            for d, o, shape, out in layout
        ]

    return jax.jit(unpack)


def _pack(state) -> tuple[dict, list] | None:
    """``({PACKED: {dtype: flat array}}, layout)`` of a packable state, else None.
    ``layout``: ``[path, shape, dtype]`` per leaf, in the order of the flat arrays."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    leaves = [leaf for _, leaf in flat]
    if not _packable(leaves):
        return None
    groups: dict[str, list[int]] = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault(np.dtype(leaf.dtype).name, []).append(i)
    packed = _pack_fn(tuple((d, tuple(idx)) for d, idx in groups.items()))(leaves)
    order = [i for idx in groups.values() for i in idx]
    layout = [[_path_str(flat[i][0]), list(leaves[i].shape), np.dtype(leaves[i].dtype).name] for i in order]
    return {PACKED: packed}, layout


def _replicated_like(leaf) -> jax.sharding.Sharding:
    """A fully replicated sharding on ``leaf``'s devices (its own when it is one)."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if sharding.is_fully_replicated:
        return sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.sharding.SingleDeviceSharding(next(iter(sharding.addressable_devices)))


def _is_packed(metadata) -> bool:
    """Whether a state item's metadata (orbax's tree metadata, a mapping) is a packed state."""
    keys = getattr(metadata, "keys", None)
    return keys is not None and set(keys()) == {PACKED}


def _unpack(packed: dict, layout: list, template) -> Any:
    """The state in ``template``'s structure, dtypes and shardings (``layout`` checked
    against it first: :func:`check_compatible`)."""
    offsets, position = {}, {}
    for path, shape, dtype in layout:
        position[path] = (dtype, offsets.get(dtype, 0), tuple(shape))
        offsets[dtype] = offsets.get(dtype, 0) + int(np.prod(shape, dtype=np.int64))
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    spec = tuple(position[_path_str(p)] + (np.dtype(leaf.dtype).name,) for p, leaf in flat)
    leaves = _unpack_fn(spec)(packed)
    out = []
    for (_, wanted), leaf in zip(flat, leaves):
        sharding = getattr(wanted, "sharding", None)
        out.append(leaf if sharding is None or leaf.sharding == sharding else jax.device_put(leaf, sharding))
    return jax.tree_util.tree_unflatten(treedef, out)


def _handler_registry() -> ocp.DefaultCheckpointHandlerRegistry:
    # Named handlers, so a fresh process (resume) can read metadata before any save.
    registry = ocp.DefaultCheckpointHandlerRegistry()
    state = ocp.StandardCheckpointHandler()
    registry.add("state", ocp.args.StandardSave, state)
    registry.add("state", ocp.args.StandardRestore, state)
    for item in ("data", "loop"):
        handler = ocp.JsonCheckpointHandler()
        registry.add(item, ocp.args.JsonSave, handler)
        registry.add(item, ocp.args.JsonRestore, handler)
    return registry


_UNREAD = object()  # Checkpoints._best_value before the best checkpoint was looked at


class Checkpoints:
    """The latest ``keep`` checkpoints plus the best one by ``best_metric``."""

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "max",
        pack: bool = True,
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = pathlib.Path(directory).absolute()
        self.pack = pack  # save packable states packed (the module docstring); restore reads both
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._best_value: Any = _UNREAD
        self.managers = {
            "latest": ocp.CheckpointManager(
                self.directory / "latest",
                handler_registry=_handler_registry(),
                options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
            ),
            "best": ocp.CheckpointManager(
                self.directory / "best",
                handler_registry=_handler_registry(),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1,
                    create=True,
                    enable_async_checkpointing=False,
                    best_fn=(lambda m: m[best_metric]) if best_metric else None,
                    best_mode=best_mode,
                ),
            ),
        }

    def latest_step(self, which: str = "latest") -> int | None:
        return self.managers[which].latest_step()

    def best_value(self) -> float | None:
        """The metric value of the saved best checkpoint (None when there is none)."""
        if self._best_value is _UNREAD:  # read once; save(which="best") keeps it current
            self._best_value = self._read_best_value()
        return self._best_value

    def _read_best_value(self) -> float | None:
        mgr = self.managers["best"]
        step = mgr.latest_step()
        if step is None or not self.best_metric:
            return None
        loop = mgr.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))["loop"]
        return loop.get("metrics", {}).get(self.best_metric)

    def is_better(self, value: float) -> bool:
        best = self.best_value()
        if best is None or not np.isfinite(best):
            return bool(np.isfinite(value))
        return value > best if self.best_mode == "max" else value < best

    def save(
        self, step: int, state: Any, *, data: dict, loop: dict, which: str = "latest", metrics: dict | None = None
    ) -> None:
        mgr = self.managers[which]
        if mgr.latest_step() == step:
            return  # already saved at this step (mid-epoch save that ended an epoch)
        loop = dict(loop, metrics=metrics or {})
        packed = _pack(state) if self.pack else None
        if packed is not None:
            state, loop[LAYOUT] = packed
        mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data), loop=ocp.args.JsonSave(loop)
            ),
            metrics=metrics if which == "best" else None,
        )
        mgr.wait_until_finished()
        if which == "best" and self.best_metric:
            self._best_value = (metrics or {}).get(self.best_metric)

    def _corrupt(self, which: str, step: int, why: str, cause: BaseException | None = None) -> CorruptCheckpointError:
        """The error for a checkpoint that fails to read, naming the one to fall back to."""
        where = self.directory / which / str(step)
        older = [s for s in self.managers[which].all_steps() if s < step]
        previous = max(older) if older else None
        if previous is not None:
            advice = (
                f"the previous checkpoint is step {previous} ({self.directory / which / str(previous)}): "
                f"delete {where} to resume from it"
            )
        else:
            advice = f"there is no earlier {which} checkpoint: delete {where} and train again"
        detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0][:300]})" if cause is not None else ""
        return CorruptCheckpointError(
            f"checkpoint {where} is corrupt: {why}{detail}; {advice}", path=where, previous_step=previous
        )

    def restore(self, state_template: Any, *, which: str = "latest", step: int | None = None) -> tuple[Any, dict, dict]:
        """``(state, data, loop)`` from a checkpoint; ``state`` takes the template's
        structure and shardings.

        Raises :class:`CheckpointError` when there is none or it does not fit the model,
        :class:`CorruptCheckpointError` (naming the previous step) only when its files are
        missing or fail to read/verify. Any other error (sharding, dtype, out of memory...)
        keeps its type, with a note that the checkpoint itself read fine.
        """
        if which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, got {which!r}")
        mgr = self.managers[which]
        step = mgr.latest_step() if step is None else step
        where = self.directory / which
        if step is None:
            raise CheckpointError(f"no checkpoint in {where}: train first, or point at the workdir of a finished run")
        where = where / str(step)
        missing = [item for item in ("state", "data", "loop") if not (where / item).is_dir()]
        if missing:
            raise self._corrupt(which, step, f"its item(s) {', '.join(missing)} are missing (a partial copy?)")
        try:
            metadata = mgr.item_metadata(step)["state"]
        except Exception as e:
            if _is_read_failure(e):
                raise self._corrupt(which, step, "its metadata does not read", e) from e
            e.add_note(f"while reading the metadata of checkpoint {where}")
            raise
        if metadata is None:
            raise self._corrupt(which, step, "its 'state' item has no metadata")
        packed = _is_packed(metadata)
        if packed:  # flat arrays as saved, replicated where the template's first leaf lives
            sharding = _replicated_like(jax.tree.leaves(state_template)[0])
            abstract = {
                PACKED: {
                    d: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding)
                    for d, m in metadata[PACKED].items()
                }
            }
        else:
            check_compatible(metadata, state_template, str(where))
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        try:
            restored = mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(), loop=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            if _is_read_failure(e):
                raise self._corrupt(which, step, "its files fail to read", e) from e
            e.add_note(f"while restoring checkpoint {where}; its files read fine: it is not corrupt, do not delete it")
            raise
        state, loop = restored["state"], dict(restored["loop"])
        if packed:
            layout = loop.pop(LAYOUT, None)
            if layout is None:
                raise self._corrupt(which, step, f"its state is packed but its loop item lists no {LAYOUT}")
            check_compatible(None, state_template, str(where), layout=layout)
            try:
                state = _unpack(state[PACKED], layout, state_template)
            except Exception as e:
                e.add_note(
                    f"while unpacking checkpoint {where}; its files read fine: it is not corrupt, do not delete it"
                )
                raise
        return state, restored["data"], loop

    def close(self) -> None:
        for mgr in self.managers.values():
            mgr.close()
