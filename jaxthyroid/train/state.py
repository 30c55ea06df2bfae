"""The classifier's train state: parameters, BatchNorm statistics, optimiser state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxthyroid import parallel


class TrainState(train_state.TrainState):
  """``flax`` TrainState plus the BatchNorm running statistics (``{}`` when none)."""

  batch_stats: Any = None


def init_key(seed: int, index: int = 0) -> jax.Array:
  """A key for parameter initialisation. XLA:CPU compiles threefry-based initialisers
  about 10x slower than RBG ones (seconds per model, measured in the model and GAN
  tests); initial weights only need to be seeded, so init keys are RBG."""
  return jax.random.key(seed * 1_000 + index, impl="rbg")


def init_state(model: nn.Module, key: jax.Array, tx: optax.GradientTransformation,
               *inputs: jax.Array, mesh=None) -> TrainState:
  """``model.init(key, *inputs, train=False)`` and ``tx``'s state, as a :class:`TrainState`.

  Two jitted programs: the model's init depends only on the model and the input
  shapes, so its program (slow to compile: one RNG per parameter) is reused from the
  persistent compilation cache by every run of that model; the optimiser's init bakes
  in its hyper-parameters and is cheap to compile. With a ``mesh`` every leaf is
  replicated over it, so parameters land where the data-parallel steps want them;
  without one they stay where JAX puts them (uncommitted).
  """

  def init(key):
    return model.init(key, *inputs, train=False)

  def create(variables):
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))

  def jit(fn, *args, **kw):
    if mesh is None:
      return jax.jit(fn, **kw)
    sharding = parallel.replicated(mesh)
    return jax.jit(fn, out_shardings=jax.tree.map(lambda _: sharding, jax.eval_shape(fn, *args)), **kw)

  variables = jit(init, key)(key)
  return jit(create, variables, donate_argnums=0)(variables)


def create_train_state(key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                       sample_shape: tuple[int, ...], *, mesh=None) -> TrainState:
  """Initialises a classifier and its optimiser state (:func:`init_state`), every leaf
  replicated over ``mesh`` (one device when None).

  Args:
    key: a typed PRNG key (``jax.random.key``; :func:`init_key` compiles fastest).
    model: a linen classifier, ``model.apply(variables, x, train=...)``.
    tx: the optimiser (:func:`jaxthyroid.train.optim.make_optimizer`).
    sample_shape: input shape for init, ``[batch, H, W, C]``; batch 1 suffices.
    mesh: the ``data`` mesh (:func:`jaxthyroid.parallel.make_mesh`) or None.
  """
  return init_state(model, key, tx, jnp.zeros(sample_shape, jnp.float32),
                    mesh=mesh if mesh is not None else parallel.make_mesh(1))


def variables_of(state: Any) -> dict:
  """``{'params', 'batch_stats'}`` of a TrainState (or of a mapping holding them), for
  ``model.apply``; a model without BatchNorm gets ``{}`` as its ``batch_stats``."""
  if isinstance(state, Mapping) and "params" in state:
    return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
  return {"params": state.params, "batch_stats": getattr(state, "batch_stats", None) or {}}
