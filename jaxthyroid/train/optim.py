"""Optimisers from a config: optax SGD/AdamW, a learning-rate schedule, param groups.

Param groups let phase 2 of cross-training freeze or down-weight parts of the
phase-1 model (DESIGN §1, §5): ``param_groups`` is a list of
``(regex, lr_multiplier | 'frozen')`` matched (``re.search``) against each
parameter's path joined with ``/`` (``"stage2/block0/cross_term/conv/kernel"``).
The first matching group wins; unmatched parameters train at the base rate.
A frozen group gets ``optax.set_to_zero()``: no update and no optimiser state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

FROZEN = "frozen"


def _field(config: Any, name: str, default: Any) -> Any:
  getter = getattr(config, "get", None)
  if getter is not None:
    value = getter(name, default)
  else:
    value = getattr(config, name, default)
  return default if value is None else value


def make_schedule(config: Any) -> optax.Schedule:
  """``constant`` | ``cosine`` (to 0 over ``total_steps``) | ``warmup_cosine``
  (linear from 0 over ``warmup_steps``, then cosine to 0 at ``total_steps``)."""
  lr = float(_field(config, "learning_rate", 1e-3))
  schedule = _field(config, "schedule", "constant")
  total = int(_field(config, "total_steps", 0))
  warmup = int(_field(config, "warmup_steps", 0))
  if schedule == "constant":
    return optax.constant_schedule(lr)
  if total <= 0:
    raise ValueError(f"schedule {schedule!r} needs total_steps > 0 (got {total})")
  if schedule == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=total)
  if schedule == "warmup_cosine":
    if not 0 <= warmup < total:
      raise ValueError(f"warmup_steps must be in [0, total_steps={total}), got {warmup}")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=total)
  raise ValueError(f"unknown schedule {schedule!r}; use 'constant', 'cosine' or 'warmup_cosine'")


def _decay_mask(params):
  # Weight decay on kernels only, not on biases or BatchNorm scales (ndim 1).
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _base_optimizer(config: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  name = _field(config, "optimizer", "adamw")
  weight_decay = float(_field(config, "weight_decay", 0.0))
  if name == "sgd":
    momentum = float(_field(config, "momentum", 0.9))
    sgd = optax.sgd(schedule, momentum=momentum or None)
    if weight_decay:
      return optax.chain(optax.add_decayed_weights(weight_decay, mask=_decay_mask), sgd)
    return sgd
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=weight_decay, mask=_decay_mask)
  raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adamw'")


def param_labels(params: Any, param_groups: Sequence[tuple[str, Any]]) -> Any:
  """The group label of every parameter: ``'g<i>'`` for group i, ``'base'`` otherwise."""
  patterns = [(re.compile(rx), f"g{i}") for i, (rx, _) in enumerate(param_groups)]

  def label(path, _):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    for pattern, tag in patterns:
      if pattern.search(name):
        return tag
    return "base"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """An optax optimiser from config fields.

  Fields (a ConfigDict or mapping; missing ones take the defaults in brackets):
  ``optimizer`` ('sgd'|'adamw' [adamw]), ``learning_rate`` [1e-3], ``momentum``
  (sgd [0.9]), ``weight_decay`` [0; kernels only], ``schedule``
  ('constant'|'cosine'|'warmup_cosine' [constant]), ``warmup_steps``,
  ``total_steps``, ``param_groups`` (list of ``(regex, multiplier | 'frozen')``).
  """
  schedule = make_schedule(config)
  groups = list(_field(config, "param_groups", ()) or ())
  if not groups:
    return _base_optimizer(config, schedule)
  for rx, setting in groups:
    re.compile(rx)  # a bad pattern fails here, naming itself
    if setting != FROZEN and not isinstance(setting, (int, float)):
      raise ValueError(f"param group {rx!r}: expected a learning-rate multiplier or "
                       f"'{FROZEN}', got {setting!r}")
  transforms = {"base": _base_optimizer(config, schedule)}
  for i, (_, setting) in enumerate(groups):
    if setting == FROZEN:
      transforms[f"g{i}"] = optax.set_to_zero()
    else:
      transforms[f"g{i}"] = _base_optimizer(
          config, lambda step, m=float(setting): m * schedule(step))
  return optax.multi_transform(transforms, lambda params: param_labels(params, groups))
