"""One process of the multi-host test (tests/test_multihost.py starts two of these).

Each process joins ``jax.distributed`` on loopback (CPU collectives over gloo), builds
the global ``data`` mesh over every process's CPU devices, feeds its own rows of
the global batch (``parallel.shard_batch`` -> ``jax.make_array_from_process_local_data``)
and trains a tiny conv + BatchNorm classifier with the project's train step. It
writes the final parameters, BatchNorm statistics, losses and eval sums to
``--out`` (npz). The test compares them with one process training on the whole
global batch.

Usage: python multihost_worker.py --port P --process_id I --num_processes N --out F.npz
(set XLA_FLAGS=--xla_force_host_platform_device_count=K first: K devices per process).
Exit code 77: this jaxlib has no gloo CPU collectives (the test skips).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

GLOBAL_BATCH = 8
SIZE = 16
STEPS = 3
NUM_FINDINGS = 6
GLOO_UNAVAILABLE = 77


class TinyNet(nn.Module):
    """conv 3x3 -> BatchNorm -> relu -> global mean -> dense: ``[B, H, W, 1]`` -> logits ``[B, F]``."""

    num_findings: int = NUM_FINDINGS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(8, (3, 3), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(self.num_findings, dtype=self.dtype, param_dtype=self.param_dtype)(x)


def global_batch(step: int) -> dict:
    """The global batch of ``step`` (NumPy, the same in every process)."""
    rng = np.random.default_rng(100 + step)
    images = rng.uniform(0.0, 1.0, (GLOBAL_BATCH, SIZE, SIZE, 1)).astype(np.float32)
    findings = (rng.uniform(size=(GLOBAL_BATCH, NUM_FINDINGS)) < 0.3).astype(np.float32)
    mask = np.ones(GLOBAL_BATCH, np.float32)
    mask[-3:] = 0.0  # eval: the last rows are padding
    return {"image": images, "findings": findings, "mask": mask}


def make_optimizer():
    return optax.sgd(0.1, momentum=0.9)


def run(mesh) -> dict:
    """Trains ``STEPS`` steps, each process feeding its block of every global batch
    (``parallel.process_rows``; the whole batch without a mesh). Returns the results
    as NumPy arrays."""
    from jaxthyroid import parallel
    from jaxthyroid.train import state as state_lib
    from jaxthyroid.train import steps as steps_lib

    model = TinyNet()
    state = state_lib.create_train_state(jax.random.key(0), model, make_optimizer(), (1, SIZE, SIZE, 1), mesh=mesh)
    train_step, eval_step = steps_lib.make_classifier_steps(model, mesh)

    def place(batch):
        local = {k: parallel.process_rows(v, mesh) for k, v in batch.items()}
        return parallel.shard_batch(local, mesh) if mesh is not None else local

    losses = []
    for step in range(STEPS):
        state, metrics = train_step(state, place(global_batch(step)), jax.random.key(1))
        losses.append(float(metrics["loss"]))
    evaluated = eval_step(state, place(global_batch(STEPS)))
    out = {
        "losses": np.asarray(losses),
        "step": np.asarray(int(state.step)),
        "eval_loss_sum": np.asarray(float(evaluated["loss_sum"])),
        "eval_count": np.asarray(float(evaluated["count"])),
    }
    # Parameters are replicated: every process holds a full copy to read.
    for prefix, tree in (("params", state.params), ("batch_stats", state.batch_stats)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--process_id", type=int, required=True)
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from jaxthyroid import parallel

    # gloo is jax 0.10's default; said explicitly because without it the CPU client
    # has no cross-process collectives at all.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        parallel.initialize_distributed(
            {
                "coordinator_address": f"127.0.0.1:{args.port}",
                "num_processes": args.num_processes,
                "process_id": args.process_id,
            }
        )
        devices = jax.devices()  # creates the CPU client, with its gloo collectives
    except Exception as e:  # noqa: BLE001 - only a missing gloo is a skip; the rest re-raises
        if "gloo" in str(e).lower():
            print(f"GLOO_UNAVAILABLE: {e}", file=sys.stderr)
            return GLOO_UNAVAILABLE
        raise
    assert jax.process_count() == args.num_processes and jax.process_index() == args.process_id
    mesh = parallel.make_mesh()  # every process's devices
    local = jax.local_device_count()
    assert len(devices) == local * args.num_processes, (len(devices), local)
    out = run(mesh)
    out["num_devices"] = np.asarray(len(devices))
    tmp = args.out + f".tmp{os.getpid()}.npz"
    np.savez(tmp, **out)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
