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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

FROZEN = "frozen"


def _field(config: Any, name: str, default: Any) -> Any:
    getter = getattr(config, "get", None)
    if getter is not None:
        value = getter(name, default)
    else:
        value = getattr(config, name, default)
    return default if value is None else value


SCHEDULES = ("constant", "cosine", "warmup_cosine")


def schedule_value(kind: str, count, peak, warmup, total):
    """The learning rate at step ``count`` (traceable; ``kind`` is static).

    ``constant``: ``peak``. ``cosine``: ``peak`` to 0 over ``total`` steps.
    ``warmup_cosine``: linear from 0 over ``warmup`` steps, then cosine to 0 at
    ``total`` (optax's ``warmup_cosine_decay_schedule(0, peak, warmup, total)``).
    """
    count = jnp.asarray(count, jnp.float32)
    peak = jnp.asarray(peak, jnp.float32)
    if kind == "constant":
        return peak
    warmup = jnp.asarray(warmup if kind == "warmup_cosine" else 0, jnp.float32)
    total = jnp.asarray(total, jnp.float32)
    frac = jnp.clip((count - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cosine = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(count < warmup, peak * count / jnp.maximum(warmup, 1.0), cosine)


def _schedule_fields(config: Any) -> tuple[str, float, int, int]:
    lr = float(_field(config, "learning_rate", 1e-3))
    kind = _field(config, "schedule", "constant")
    total = int(_field(config, "total_steps", 0))
    warmup = int(_field(config, "warmup_steps", 0))
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; use 'constant', 'cosine' or 'warmup_cosine'")
    if kind != "constant" and total <= 0:
        raise ValueError(f"schedule {kind!r} needs total_steps > 0 (got {total})")
    if kind == "warmup_cosine" and not 0 <= warmup < total:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total}), got {warmup}")
    return kind, lr, warmup, total


def make_schedule(config: Any) -> optax.Schedule:
    """``constant`` | ``cosine`` (to 0 over ``total_steps``) | ``warmup_cosine``
    (linear from 0 over ``warmup_steps``, then cosine to 0 at ``total_steps``)."""
    kind, lr, warmup, total = _schedule_fields(config)
    return lambda step: schedule_value(kind, step, lr, warmup, total)


class RuntimeScheduleState(NamedTuple):
    count: jax.Array  # int32 []: updates done
    peak: jax.Array  # float32 []: the schedule's numbers, as data
    warmup: jax.Array
    total: jax.Array


def scale_by_runtime_schedule(kind: str, peak: float, warmup: int = 0, total: int = 1) -> optax.GradientTransformation:
    """``optax.scale_by_learning_rate`` for a schedule whose numbers live in the
    optimiser state instead of the compiled program.

    An optax schedule closes over Python floats, which XLA bakes into the train step
    as constants: two runs that differ only in learning rate or length compile (and
    cache) two programs. Here only ``kind`` is static, so every run of one model and
    batch shape reuses one executable from the persistent compilation cache (the
    reproduce pipeline trains ~16 such runs). Same values as the optax schedules.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; use 'constant', 'cosine' or 'warmup_cosine'")

    def init(params):
        del params
        return RuntimeScheduleState(
            jnp.zeros([], jnp.int32),
            jnp.asarray(peak, jnp.float32),
            jnp.asarray(warmup, jnp.float32),
            jnp.asarray(total, jnp.float32),
        )

    def update(updates, state, params=None):
        del params
        lr = schedule_value(kind, state.count, state.peak, state.warmup, state.total)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, state._replace(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def _decay_mask(params):
    # Weight decay on kernels only, not on biases or BatchNorm scales (ndim 1).
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _base_optimizer(config: Any, multiplier: float = 1.0) -> optax.GradientTransformation:
    """SGD (momentum) or AdamW, as optax builds them, with the runtime schedule."""
    kind, lr, warmup, total = _schedule_fields(config)
    schedule = scale_by_runtime_schedule(kind, lr * multiplier, warmup, total)
    name = _field(config, "optimizer", "adamw")
    weight_decay = float(_field(config, "weight_decay", 0.0))
    if name == "sgd":
        momentum = float(_field(config, "momentum", 0.9))
        parts = [optax.add_decayed_weights(weight_decay, mask=_decay_mask)] if weight_decay else []
        if momentum:
            parts.append(optax.trace(decay=momentum))
        return optax.chain(*parts, schedule)
    if name == "adamw":
        return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay, mask=_decay_mask), schedule)
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
    groups = list(_field(config, "param_groups", ()) or ())
    if not groups:
        return _base_optimizer(config)
    for rx, setting in groups:
        re.compile(rx)  # a bad pattern fails here, naming itself
        if setting != FROZEN and not isinstance(setting, (int, float)):
            raise ValueError(f"param group {rx!r}: expected a learning-rate multiplier or '{FROZEN}', got {setting!r}")
    transforms = {"base": _base_optimizer(config)}
    for i, (_, setting) in enumerate(groups):
        if setting == FROZEN:
            transforms[f"g{i}"] = optax.set_to_zero()
        else:
            transforms[f"g{i}"] = _base_optimizer(config, float(setting))
    return optax.multi_transform(transforms, lambda params: param_labels(params, groups))
