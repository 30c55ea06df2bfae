"""Classifier names -> modules: ``get_model("resnet18", num_classes=6, cross=True)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxthyroid.models import backend, baselines, resnet

_RESNETS: dict[str, Callable[..., nn.Module]] = {
    "resnet_tiny": resnet.ResNetTiny,
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
}
_BASELINES: dict[str, Callable[..., nn.Module]] = {
    "vgg16_bn": baselines.VGG16BN,
    "vgg_tiny": baselines.VGGTiny,
    "alexnet": baselines.AlexNet,
    "densenet121": baselines.DenseNet121,
    "densenet_tiny": baselines.DenseNetTiny,
}
MODEL_NAMES: tuple[str, ...] = tuple(_RESNETS) + tuple(_BASELINES)


def get_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 1,
    dtype: Any = jnp.float32,
    cross: bool = False,
    cross_source: str = "adapter",
    **overrides: Any,
) -> nn.Module:
    """Builds classifier ``name`` with ``num_classes`` logits.

    ``in_channels`` is recorded for the caller's convenience (modules take any
    channel count from their input; build the sample input as
    ``[batch, H, W, in_channels]``). ``cross``/``cross_source`` apply to the ResNets
    only; ``overrides`` go to the module (e.g. ``ops=backend.default_ops().replace(...)``,
    ``param_dtype=jnp.float32``, ``bn_axis_name='data'``). The old speed levers
    ``conv_im2col``, ``stem_im2col`` and ``fast_maxpool`` are still accepted and mapped
    to ``ops`` by :func:`jaxthyroid.models.backend.ops_from_levers` (None / their old default:
    the policy; else a ``FutureWarning``).
    """
    del in_channels  # Flax infers input channels at init.
    levers = {k: overrides.pop(k) for k in ("conv_im2col", "stem_im2col", "fast_maxpool") if k in overrides}
    if levers and (ops := backend.ops_from_levers(**levers)) is not None:
        if overrides.get("ops") is not None:
            raise ValueError(f"get_model: pass either ops or the old levers {sorted(levers)}, not both.")
        overrides["ops"] = ops
    key = name.lower()
    if key in _RESNETS:
        return _RESNETS[key](num_classes=num_classes, dtype=dtype, cross=cross, cross_source=cross_source, **overrides)
    if key in _BASELINES:
        if cross:
            raise ValueError(f"cross=True needs a ResNet; {name!r} has no cross-residual form.")
        return _BASELINES[key](num_classes=num_classes, dtype=dtype, **overrides)
    raise ValueError(f"Unknown model {name!r}; known: {', '.join(MODEL_NAMES)}.")
