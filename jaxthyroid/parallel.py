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
    """A 1-D mesh over the first ``num_devices`` devices (all when None), axis ``data``."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"asked for a mesh of {num_devices} devices, but only {len(devices)} "
            f"are visible ({devices[0].platform}); for CPU tests set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 before importing jax"
        )
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


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
