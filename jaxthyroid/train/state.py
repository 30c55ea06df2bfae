"""The classifier's train state: parameters, BatchNorm statistics, optimiser state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxthyroid import parallel, xla_options


class TrainState(train_state.TrainState):
    """``flax`` TrainState plus the BatchNorm running statistics (``{}`` when none)."""

    batch_stats: Any = None


def init_key(seed: int, index: int = 0) -> jax.Array:
    """A key for parameter initialisation. XLA:CPU compiles threefry-based initialisers
    about 10x slower than RBG ones (seconds per model, measured in the model and GAN
    tests); initial weights only need to be seeded, so init keys are RBG."""
    return jax.random.key(seed * 1_000 + index, impl="rbg")


def _replicated_over(mesh) -> dict:
    """``jax.jit`` keywords putting every output leaf replicated over ``mesh`` (none: no
    placement, outputs stay where JAX puts them, uncommitted)."""
    return {} if mesh is None else {"out_shardings": parallel.replicated(mesh)}


def init_variables(model: nn.Module, key: jax.Array, *inputs: jax.Array, mesh=None) -> dict:
    """``{'params', 'batch_stats'}`` of ``model.init(key, *inputs, train=False)``, jitted;
    ``batch_stats`` is ``{}`` for a model without BatchNorm.

    The program depends only on the model and the input shapes (not on an optimiser),
    so every run of a model reuses it from the persistent compilation cache: it is slow
    to compile (one RNG per parameter).
    """
    variables = xla_options.jit(lambda key: model.init(key, *inputs, train=False), **_replicated_over(mesh))(key)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def state_from_variables(
    model: nn.Module, tx: optax.GradientTransformation, variables: dict, *, mesh=None, donate: bool = False
) -> TrainState:
    """A :class:`TrainState` at step 0 holding ``variables`` and ``tx``'s fresh state, jitted
    (the program bakes in the optimiser's hyper-parameters and is cheap to compile); every
    leaf replicated over ``mesh`` when given. ``donate`` lets it reuse ``variables``' buffers."""

    def create(variables):
        return TrainState.create(
            apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats", {})
        )

    return xla_options.jit(create, donate_argnums=0 if donate else (), **_replicated_over(mesh))(variables)


def init_state(
    model: nn.Module, key: jax.Array, tx: optax.GradientTransformation, *inputs: jax.Array, mesh=None
) -> TrainState:
    """``model.init(key, *inputs, train=False)`` and ``tx``'s state, as a :class:`TrainState`:
    :func:`init_variables` then :func:`state_from_variables`, two programs so the model's
    init is shared by every optimiser setting."""
    return state_from_variables(model, tx, init_variables(model, key, *inputs, mesh=mesh), mesh=mesh, donate=True)


def create_train_state(
    key: jax.Array, model: nn.Module, tx: optax.GradientTransformation, sample_shape: tuple[int, ...], *, mesh=None
) -> TrainState:
    """Initialises a classifier and its optimiser state (:func:`init_state`), every leaf
    replicated over ``mesh`` (one device when None).

    Args:
      key: a typed PRNG key (``jax.random.key``; :func:`init_key` compiles fastest).
      model: a linen classifier, ``model.apply(variables, x, train=...)``.
      tx: the optimiser (:func:`jaxthyroid.train.optim.make_optimizer`).
      sample_shape: input shape for init, ``[batch, H, W, C]``; batch 1 suffices.
      mesh: the ``data`` mesh (:func:`jaxthyroid.parallel.make_mesh`) or None.
    """
    return init_state(model, key, tx, jnp.zeros(sample_shape, jnp.float32), mesh=parallel.mesh_or_single(mesh))


def variables_of(state: Any) -> dict:
    """``{'params', 'batch_stats'}`` of a TrainState (or of a mapping holding them), for
    ``model.apply``; a model without BatchNorm gets ``{}`` as its ``batch_stats``."""
    if isinstance(state, Mapping) and "params" in state:
        return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    return {"params": state.params, "batch_stats": getattr(state, "batch_stats", None) or {}}
