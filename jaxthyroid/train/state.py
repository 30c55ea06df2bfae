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


def create_train_state(key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                       sample_shape: tuple[int, ...], *, mesh=None) -> TrainState:
  """Initialises a model and its optimiser state.

  Shapes come from ``jax.eval_shape`` first (nothing is allocated to find them); the
  inits then run jitted with every leaf replicated over ``mesh`` (one device when
  None), so parameters land directly where the train step wants them.

  Args:
    key: a typed PRNG key (``jax.random.key``).
    model: a linen classifier, ``model.apply(variables, x, train=...)``.
    tx: the optimiser (:func:`jaxthyroid.train.optim.make_optimizer`).
    sample_shape: input shape for init, ``[batch, H, W, C]``; batch 1 suffices.
    mesh: the ``data`` mesh (:func:`jaxthyroid.parallel.make_mesh`) or None.
  """

  # Two programs: the model's init depends only on the model and the input shape, so its
  # (slow to compile: one RNG per parameter) program is reused from the persistent
  # compilation cache by every run of that model; the optimiser's init bakes in its
  # hyper-parameters and is cheap to compile.
  def init(key):
    return model.init(key, jnp.zeros(sample_shape, jnp.float32), train=False)

  def create(variables):
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))

  if mesh is None:
    mesh = parallel.make_mesh(1)
  replicated = lambda tree: jax.tree.map(lambda _: parallel.replicated(mesh), tree)  # noqa: E731
  variables = jax.jit(init, out_shardings=replicated(jax.eval_shape(init, key)))(key)
  return jax.jit(create, out_shardings=replicated(jax.eval_shape(create, variables)),
                 donate_argnums=0)(variables)


def variables_of(state: Any) -> dict:
  """``{'params', 'batch_stats'}`` of a TrainState (or of a mapping holding them), for
  ``model.apply``; a model without BatchNorm gets ``{}`` as its ``batch_stats``."""
  if isinstance(state, Mapping) and "params" in state:
    return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
  return {"params": state.params, "batch_stats": getattr(state, "batch_stats", None) or {}}
