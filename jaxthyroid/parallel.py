"""Device mesh, batch sharding and multi-host start-up.

Data parallelism over a 1-D mesh with axis ``data`` (DESIGN §5): parameters are
replicated, batches are split along their leading axis. The train steps
(:mod:`jaxthyroid.train.steps`) run per-device code under ``jax.shard_map`` over
this axis.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

log = logging.getLogger(__name__)


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh, axis ``data``: over every device of every process when ``num_devices``
    is None or all of them; else over the first ``num_devices`` of this process's own
    devices (a smaller mesh over other processes' devices would not be addressable here).

    With several processes the devices are ordered by process, so process ``k``'s devices
    hold block ``k`` of every batch (what the per-process loaders and
    :func:`process_rows` feed them).
    """
    devices = jax.devices()
    if num_devices is None or num_devices == len(devices):
        if jax.process_count() > 1:
            devices = sorted(devices, key=lambda d: (d.process_index, d.id))
        return Mesh(np.asarray(devices), (DATA_AXIS,))
    local = jax.local_devices()
    if not 1 <= num_devices <= len(local):
        raise ValueError(
            f"asked for a mesh of {num_devices} devices, but this process sees {len(local)} "
            f"({local[0].platform}) of {len(devices)} in all; for CPU tests set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 before importing jax"
        )
    return Mesh(np.asarray(local[:num_devices]), (DATA_AXIS,))


def mesh_or_single(mesh: Mesh | None) -> Mesh:
    """``mesh``, or a one-device mesh when it is None (state placed like the steps' outputs)."""
    return mesh if mesh is not None else make_mesh(1)


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters and optimiser state: a full copy on every device."""
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: split along the leading (batch) axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a host batch (pytree of arrays ``[B, ...]``) split over the ``data`` axis.

    ``B`` is this process's share of the global batch and must divide evenly over the
    process's devices. With several processes, each passes its own share and the result
    is one global array (``jax.make_array_from_process_local_data``).
    """
    sharding = data_sharding(mesh)
    local_devices = mesh.local_mesh.size

    def place(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.shape[0] % local_devices:
            raise ValueError(
                f"a batch of {x.shape[0]} does not split over {local_devices} devices; "
                "use a batch size that is a multiple of the device count"
            )
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(place, batch)


# ----------------------------------------------------------------------------- processes
def is_primary() -> bool:
    """Whether this is process 0, the one that writes reports, figures and metrics files."""
    return jax.process_index() == 0


def process_batch_size(global_batch: int, what: str = "batch_size") -> int:
    """This process's share of a global batch (``global_batch / jax.process_count()``).

    Every process feeds the same number of rows to each step, so the global batch must
    split evenly; ``what`` names the setting in the error.
    """
    count = jax.process_count()
    if global_batch % count:
        raise ValueError(f"{what}={global_batch} is the global batch and must be a multiple of the {count} processes")
    return global_batch // count


def process_rows(rows: Any, mesh: Mesh | None) -> Any:
    """This process's block of a global batch ``rows`` (an array or index array
    ``[B, ...]``) on ``mesh``: the rows :func:`shard_batch` puts on this process's
    devices. All of ``rows`` without a mesh or when the mesh lies in this process.

    Every process draws the same global batch (same seed) and keeps its block, so each
    reads only its own rows, and the global array :func:`shard_batch` assembles is
    ``rows`` row for row, as one process with every device would see it: the result
    does not depend on how the devices spread over processes. (For
    :func:`make_mesh`'s meshes process ``k`` holds block ``k`` of ``B / process
    count`` rows.)
    """
    if mesh is None or jax.process_count() == 1:
        return rows
    devices = list(mesh.devices.flat)
    mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
    if not mine:
        return rows[:0]
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError("this process's devices are not contiguous in the mesh; build it with make_mesh")
    if len(rows) % len(devices):
        raise ValueError(f"a global batch of {len(rows)} does not split over the mesh's {len(devices)} devices")
    per_device = len(rows) // len(devices)
    return rows[mine[0] * per_device : (mine[-1] + 1) * per_device]


def to_host(tree: Any) -> Any:
    """NumPy copies of a pytree of arrays, each whole: an array sharded over processes is
    gathered (``multihost_utils.process_allgather``, a collective every process must call,
    in the same order), where ``np.asarray`` would raise."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def gather_batch(batch: Any, mesh: Mesh | None) -> Any:
    """The global batch as NumPy from this process's rows of it (a pytree of ``[b, ...]``):
    process ``k``'s rows land where :func:`shard_batch` puts them (block ``k``). A copy of
    ``batch`` without a mesh or with one process; a collective otherwise."""
    if mesh is None or jax.process_count() == 1:
        return jax.tree.map(np.asarray, batch)
    return to_host(shard_batch(batch, mesh))


def sync(name: str) -> None:
    """Waits until every process got here (``multihost_utils.sync_global_devices``); a
    no-op in a single process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def primary_first(fn, name: str):
    """``fn()`` on process 0, then (once it returned) on the others: for work that writes
    shared files the others then reuse (building a data set). Returns ``fn()``'s value."""
    if jax.process_count() == 1:
        return fn()
    if is_primary():
        out = fn()
        sync(name)
        return out
    sync(name)
    return fn()


def initialize_distributed(config: Any | None = None) -> None:
    """Starts ``jax.distributed`` for a multi-process run; a no-op in a single process.

    Reads ``coordinator_address``, ``num_processes`` and ``process_id`` from ``config``
    (a ConfigDict or mapping; missing fields are fine) and falls back to the environment
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). Cluster
    environments JAX detects by itself (SLURM, Cloud TPU, Open MPI) are used when
    ``JAX_DISTRIBUTED_AUTO=1``. Must run before anything touches a device. Calling it
    twice is harmless.
    """
    if jax.distributed.is_initialized():
        return

    def field(name: str):
        if config is None:
            return None
        getter = getattr(config, "get", None)
        value = getter(name, None) if getter else getattr(config, name, None)
        return value

    address = field("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = field("num_processes") or os.environ.get("JAX_NUM_PROCESSES")
    process_id = field("process_id")
    if process_id is None:
        process_id = os.environ.get("JAX_PROCESS_ID")
    auto = os.environ.get("JAX_DISTRIBUTED_AUTO", "0") == "1"

    if address is None and not auto:
        return  # single process
    if num_processes is not None and int(num_processes) <= 1 and not auto:
        return
    kwargs = {}
    if address is not None:
        kwargs["coordinator_address"] = str(address)
    if num_processes is not None:
        kwargs["num_processes"] = int(num_processes)
    if process_id is not None:
        kwargs["process_id"] = int(process_id)
    log.info("jax.distributed.initialize(%s)", kwargs)
    jax.distributed.initialize(**kwargs)
