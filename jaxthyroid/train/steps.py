"""Classifier train and eval steps: ``jax.jit`` over per-device code in ``jax.shard_map``.

The pmap programming model in its current form (DESIGN §5): each device runs the
step on its shard of the batch, parameters replicated, with explicit collectives
over the mesh axis ``data``:

* the loss is ``lax.pmean``-ed *inside* the differentiated function. With
  ``check_vma=True`` the parameters are axis-invariant, so autodiff already turns
  the per-device gradients into the gradient of that global mean (the transpose
  of the implicit broadcast is a ``psum``). The gradients are therefore **not**
  ``pmean``-ed again — that would be the trap of DESIGN §5 (tests compare with the
  single-device step).
* BatchNorm normalises with **global** batch statistics, so an 8-device step
  equals a 1-device step on the same global batch (to float round-off). The
  steps give every ``nn.BatchNorm`` the axis name ``data``: through the model's
  ``axis_name`` or ``bn_axis_name`` field when it has one
  (``model.clone(bn_axis_name='data')``; the model passes it to its BatchNorms),
  and by intercepting any ``nn.BatchNorm`` still without one (so a model without
  the field is synchronised too). The running statistics that come out are then
  identical on every device. Without a mesh the field is set to None.
* the per-step dropout key is ``fold_in(fold_in(key, step), device index)``.

Loss: sigmoid cross-entropy over the findings, mean over findings and images.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxthyroid import xla_options
from jaxthyroid.parallel import DATA_AXIS
from jaxthyroid.train.state import TrainState

TRAIN_KEYS = ("image", "findings")
EVAL_KEYS = ("image", "findings", "mask")


def findings_loss(logits: jax.Array, findings: jax.Array) -> jax.Array:
    """Per-image sigmoid cross-entropy, mean over findings: ``[B, F]`` x2 -> ``[B]``."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), findings).mean(-1)


def exact_match(logits: jax.Array, findings: jax.Array) -> jax.Array:
    """Per-image 1.0 where the predicted finding set equals the label ``[B]``.

    Prediction as :func:`jaxthyroid.findings.predict`: findings with p >= 0.5, the
    argmax where none reaches it.
    """
    probs = jax.nn.sigmoid(logits.astype(jnp.float32))
    pred = probs >= 0.5
    top = jax.nn.one_hot(jnp.argmax(probs, -1), probs.shape[-1], dtype=bool)
    pred = jnp.where(pred.any(-1, keepdims=True), pred, top)
    return jnp.all(pred == (findings > 0.5), axis=-1).astype(jnp.float32)


# -- BatchNorm over the data axis ----------------------------------------------

# Model fields naming the BatchNorm axis (``ResNet.bn_axis_name``, the GANs' ``axis_name``).
AXIS_FIELDS = ("axis_name", "bn_axis_name")


def _with_axis_name(model: nn.Module, axis_name: str | None) -> nn.Module:
    """The model with its BatchNorm axis field(s) set to ``axis_name`` (also None:
    a model built with ``'data'`` then runs outside shard_map too)."""
    fields = {f.name for f in dataclasses.fields(model)}
    overrides = {name: axis_name for name in AXIS_FIELDS if name in fields}
    return model.clone(**overrides) if overrides else model


def _batch_norm_interceptor(axis_name: str):
    """Runs every ``nn.BatchNorm`` without an axis name as a clone with ``axis_name``
    (global statistics), bound to the same scope, so it reads and updates the same
    variables; the module itself is not modified.
    """

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.BatchNorm) and module.axis_name is None and context.method_name == "__call__":
            return module.clone(parent=module.scope, axis_name=axis_name)(*args, **kwargs)
        return next_fun(*args, **kwargs)

    return interceptor


def _pmean(x, axis_name):
    return x if axis_name is None else lax.pmean(x, axis_name)


def _psum(x, axis_name):
    return x if axis_name is None else lax.psum(x, axis_name)


# -- the steps ---------------------------------------------------------------


def make_classifier_steps(
    model: nn.Module, mesh=None, *, donate: bool = True, compute_dtype: Any = None
) -> tuple[Callable, Callable]:
    """Jitted data-parallel train and eval steps for a multi-label classifier.

    Args:
      model: any linen classifier ``model.apply(variables, x, train=bool)`` returning
        logits ``[B, F]``; variables ``{params, batch_stats}`` (batch_stats optional).
      mesh: the 1-D ``data`` mesh (:func:`jaxthyroid.parallel.make_mesh`); None runs
        plain ``jit`` on one device without collectives.
      donate: donate the state buffers to the train step (the old state is invalid
        after the call).
      compute_dtype: e.g. ``jnp.bfloat16``: images are cast to it (the model's own
        ``dtype`` field decides its compute precision); the loss stays float32.

    Returns:
      ``train_step(state, batch, key) -> (state, metrics)`` with ``batch`` =
      ``{'image': f32 [B, H, W, C], 'findings': f32 [B, F]}`` (other keys ignored),
      ``key`` a typed key folded with ``state.step``, and ``metrics`` scalars
      ``loss``, ``exact_match`` (means over the global batch), ``grad_norm``, and
      ``finite`` (bool: loss and gradients are finite);
      ``eval_step(state, batch) -> {'logits': [B, F], 'loss_sum', 'count'}`` where
      ``batch`` may carry ``'mask'`` f32 ``[B]`` (0 = padding), ``loss_sum`` is the
      sum over unmasked images of the per-image loss and ``count`` their number.
      ``B`` is the global batch; it must divide by the mesh size.
    """
    axis_name = DATA_AXIS if mesh is not None else None
    model = _with_axis_name(model, axis_name)

    def apply(variables, images, **kwargs):
        if compute_dtype is not None:
            images = images.astype(compute_dtype)
        if axis_name is None:
            return model.apply(variables, images, **kwargs)
        with nn.intercept_methods(_batch_norm_interceptor(axis_name)):
            return model.apply(variables, images, **kwargs)

    def train_per_device(state: TrainState, batch, key):
        key = jax.random.fold_in(key, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, lax.axis_index(axis_name))

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, updates = apply(
                variables, batch["image"], train=True, mutable=["batch_stats"], rngs={"dropout": key}
            )
            # pmean inside the differentiated function: see the module docstring.
            loss = _pmean(findings_loss(logits, batch["findings"]).mean(), axis_name)
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        # Running stats are already global when BatchNorm synchronised; averaging them
        # again changes nothing (the mean of equal copies) and makes any that a custom
        # layer computed per device the same on every replica. Unconditional, so the
        # step need not ask JAX whether a value varies over the axis; the statistics
        # are a few kilobytes.
        batch_stats = jax.tree.map(lambda s: _pmean(s, axis_name), batch_stats)
        grad_norm = optax.global_norm(grads)
        metrics = {
            "loss": loss,
            "exact_match": _pmean(exact_match(logits, batch["findings"]).mean(), axis_name),
            "grad_norm": grad_norm,
            "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
        }
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        return state, metrics

    def eval_per_device(state: TrainState, batch):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        logits = apply(variables, batch["image"], train=False).astype(jnp.float32)
        mask = batch["mask"]
        loss = findings_loss(logits, batch["findings"])
        return {
            "logits": logits,
            "loss_sum": _psum(jnp.sum(loss * mask), axis_name),
            "count": _psum(jnp.sum(mask), axis_name),
        }

    if mesh is not None:
        train_per_device = jax.shard_map(
            train_per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=(P(), P()), check_vma=True
        )
        eval_per_device = jax.shard_map(
            eval_per_device,
            mesh=mesh,
            in_specs=(P(), P(DATA_AXIS)),
            out_specs={"logits": P(DATA_AXIS), "loss_sum": P(), "count": P()},
            check_vma=True,
        )

    train_jit = xla_options.jit(train_per_device, donate_argnums=(0,) if donate else ())
    eval_jit = xla_options.jit(eval_per_device)

    def select_train(batch):
        return {k: batch[k] for k in TRAIN_KEYS}

    def select_eval(batch):
        out = {k: batch[k] for k in ("image", "findings")}
        out["mask"] = batch["mask"] if "mask" in batch else jnp.ones((batch["image"].shape[0],), jnp.float32)
        return out

    @functools.wraps(train_per_device)
    def train_step(state: TrainState, batch: dict, key: jax.Array):
        return train_jit(state, select_train(batch), key)

    @functools.wraps(eval_per_device)
    def eval_step(state: TrainState, batch: dict):
        return eval_jit(state, select_eval(batch))

    # For benchmarks: ``train_step.lower(state, batch, key).compile()``.
    train_step.lower = lambda state, batch, key: train_jit.lower(state, select_train(batch), key)
    eval_step.lower = lambda state, batch: eval_jit.lower(state, select_eval(batch))
    return train_step, eval_step
