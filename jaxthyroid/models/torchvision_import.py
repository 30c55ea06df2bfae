"""ImageNet-pretrained torchvision ResNets as variables of :mod:`jaxthyroid.models.resnet`.

No network access: the user supplies the file (a safetensors file, read with NumPy
only, or a ``.pth`` state dict when torch is installed), e.g. one exported with
``safetensors.torch.save_file(torchvision.models.resnet18(weights="DEFAULT").state_dict(), F)``.

Name and layout mapping (torchvision -> ours; every ResNet block is named
explicitly in ``resnet.py``, so the mapping is one rule per kind of tensor):

==================================  ==========================================
``conv1.weight`` ``[O, I, kh, kw]``  ``params/conv_init/kernel`` ``[kh, kw, I, O]``
``bn1.{weight,bias}``               ``params/bn_init/{scale,bias}``
``bn1.running_{mean,var}``          ``batch_stats/bn_init/{mean,var}``
``layerS.B.convK`` / ``bnK``        ``stage{S}_block{B+1}/convK`` / ``bnK``
``layerS.B.downsample.0`` / ``.1``  ``stage{S}_block{B+1}/downsample_conv`` / ``downsample_bn``
``fc.{weight,bias}``                dropped (or ``head/{kernel,bias}`` with ``keep_head``)
``*.num_batches_tracked``           dropped (a counter, no weight)
==================================  ==========================================

The RGB stem becomes one channel by summing its kernel over the input channels: a
grey image ``g`` fed as ``(g, g, g)`` gives ``sum_c W_c * g = (sum_c W_c) * g``, so the
one-channel model computes exactly what the RGB model computes on the replicated
image. BatchNorm matches as is (``ResNet.bn_epsilon`` = torchvision's 1e-5; momentum
matters only in training).

:func:`import_file` writes the result with ``flax.serialization`` (msgpack, one file);
:func:`load_pretrained` copies it into a freshly initialised model's variables, plain
or cross-residual (``cross_term`` entries and the head are left as initialised).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import serialization, traverse_util

ARCHS: dict[str, tuple[tuple[int, ...], str]] = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
}
FORMAT_VERSION = 1
# Paths of our variables a pretrained file does not provide.
HEAD = "head"
CROSS_TERM = "cross_term"  # resnet.CROSS_TERM (not imported: this module needs no JAX model)

_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias")}
_BN_STATS = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


class WeightsError(ValueError):
    """A weights file that does not fit the architecture (names, shapes) or cannot be read."""


def read_state_dict(path) -> dict[str, np.ndarray]:
    """torchvision ``state_dict`` tensors from a ``.safetensors`` or ``.pth``/``.pt`` file, as NumPy."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch
        except ImportError:
            raise WeightsError(
                f"{path}: reading a .pth state dict needs torch (pip install torch), "
                "or convert it to .safetensors (safetensors.torch.save_file(state_dict, F))"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):  # checkpoints that wrap the state dict
            if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}
    raise WeightsError(f"{path}: expected a .safetensors or .pth file")


def _target(name: str, arch: str) -> tuple[str, ...] | None:
    """Our ``(collection, *path)`` for torchvision tensor ``name``; None for tensors we drop."""
    parts = name.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    if parts[0] == "fc":
        return ("params", HEAD, {"weight": "kernel", "bias": "bias"}[parts[1]])
    if parts[0] == "conv1" and parts[1:] == ["weight"]:
        return ("params", "conv_init", "kernel")
    if parts[0] == "bn1" and len(parts) == 2:
        return _bn("bn_init", parts[1])
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", name)
    if not m:
        raise WeightsError(f"{name}: not a torchvision {arch} tensor name")
    stage, block, rest = int(m[1]), int(m[2]), m[3].split(".")
    prefix = f"stage{stage}_block{block + 1}"
    if re.fullmatch(r"conv\d", rest[0]) and rest[1:] == ["weight"]:
        return ("params", prefix, rest[0], "kernel")
    if re.fullmatch(r"bn\d", rest[0]) and len(rest) == 2:
        coll, *path = _bn(rest[0], rest[1])
        return (coll, prefix, *path)
    if rest[0] == "downsample" and rest[1] == "0" and rest[2:] == ["weight"]:
        return ("params", prefix, "downsample_conv", "kernel")
    if rest[0] == "downsample" and rest[1] == "1" and len(rest) == 3:
        coll, *path = _bn("downsample_bn", rest[2])
        return (coll, prefix, *path)
    raise WeightsError(f"{name}: not a torchvision {arch} tensor name")


def _bn(module: str, field: str) -> tuple[str, ...]:
    if field in _BN_FIELDS:
        coll, leaf = _BN_FIELDS[field]
    elif field in _BN_STATS:
        coll, leaf = _BN_STATS[field]
    else:
        raise WeightsError(f"{module}.{field}: unknown BatchNorm tensor")
    return (coll, module, leaf)


def expected_names(arch: str) -> set[str]:
    """The weight tensor names of torchvision's ``arch`` (``num_batches_tracked`` left out)."""
    stages, kind = ARCHS[arch]
    convs = 2 if kind == "basic" else 3
    bn = ("weight", "bias", "running_mean", "running_var")
    names = {"conv1.weight", "fc.weight", "fc.bias", *(f"bn1.{f}" for f in bn)}
    for s, n in enumerate(stages, start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            names |= {f"{p}.conv{k}.weight" for k in range(1, convs + 1)}
            names |= {f"{p}.bn{k}.{f}" for k in range(1, convs + 1) for f in bn}
            if b == 0 and (s > 1 or kind == "bottleneck"):  # shape changes: a projection shortcut
                names |= {f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{f}" for f in bn)}
    return names


def torchvision_to_flax(
    state_dict: Mapping[str, np.ndarray], arch: str, *, in_channels: int = 1, keep_head: bool = False
) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of our ``arch`` from a torchvision ``state_dict`` (NumPy).

    Args:
      state_dict: torchvision tensor name -> array (``conv`` ``[O, I, kh, kw]``).
      arch: ``resnet18`` | ``resnet34`` | ``resnet50`` | ``resnet101``.
      in_channels: 1 sums the RGB stem over its input channels; 3 keeps it.
      keep_head: keep the 1000-class ``fc`` as ``head`` (parity checks); dropped otherwise.
    Raises:
      WeightsError: a tensor is missing, unknown, or of the wrong rank.
    """
    if arch not in ARCHS:
        raise WeightsError(f"--arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    if in_channels not in (1, 3):
        raise WeightsError(f"in_channels must be 1 or 3, not {in_channels}")
    names = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    want = expected_names(arch)
    missing, extra = want - names, names - want
    if missing or extra:
        raise WeightsError(
            f"not a torchvision {arch} state dict: missing {sorted(missing)[:4]} ({len(missing)}), "
            f"unexpected {sorted(extra)[:4]} ({len(extra)}); check --arch"
        )
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for name in sorted(names):
        target = _target(name, arch)
        if target is None or (target[1] == HEAD and not keep_head):
            continue
        value = np.asarray(state_dict[name], np.float32)
        if target[-1] == "kernel" and target[1] != HEAD:
            if value.ndim != 4:
                raise WeightsError(f"{name}: a conv weight [O, I, kh, kw], got shape {value.shape}")
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            if target[1] == "conv_init" and in_channels == 1:
                value = value.sum(axis=2, keepdims=True)
        elif target[1] == HEAD and target[-1] == "kernel":
            value = value.T  # Dense: [out, in] -> [in, out]
        flat[target] = np.ascontiguousarray(value)
    return traverse_util.unflatten_dict(flat)


def save(variables: Mapping[str, Any], path, *, arch: str, in_channels: int, source: str = "") -> None:
    """Writes imported variables and what they are to one msgpack file (``flax.serialization``)."""
    blob = {
        "format": FORMAT_VERSION,
        "arch": arch,
        "in_channels": in_channels,
        "source": source,
        "variables": {k: dict(v) for k, v in variables.items()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize(blob))
    os.replace(tmp, path)


def load(path) -> dict[str, Any]:
    """``{'format', 'arch', 'in_channels', 'source', 'variables'}`` written by :func:`save`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such imported weights file (make it with `jaxthyroid weights import`)")
    with open(path, "rb") as f:
        blob = serialization.msgpack_restore(f.read())
    if not isinstance(blob, dict) or blob.get("format") != FORMAT_VERSION or "variables" not in blob:
        raise WeightsError(f"{path}: not a file written by `jaxthyroid weights import`")
    return blob


def import_file(path, arch: str, out, *, in_channels: int = 1) -> dict[str, Any]:
    """Reads a torchvision ResNet file, maps it, writes ``out``; returns a summary dict."""
    state = read_state_dict(path)
    variables = torchvision_to_flax(state, arch, in_channels=in_channels)
    save(variables, out, arch=arch, in_channels=in_channels, source=os.path.basename(os.fspath(path)))
    leaves = traverse_util.flatten_dict(variables)
    return {
        "arch": arch,
        "in_channels": in_channels,
        "tensors": len(leaves),
        "parameters": int(sum(v.size for p, v in leaves.items() if p[0] == "params")),
        "dropped": sorted(k for k in state if k.startswith("fc.")),
        "out": os.fspath(out),
    }


def load_pretrained(variables: Mapping[str, Any], weights) -> dict[str, Any]:
    """``variables`` with every backbone tensor replaced by the imported one.

    Args:
      variables: ``{'params', 'batch_stats'}`` of a freshly initialised ResNet of the
        imported depth (plain or ``cross=True``, ``stem='imagenet'``, torchvision width),
        e.g. ``cross_training.init_variables(model, key, size)``.
      weights: a path written by :func:`import_file` / ``jaxthyroid weights import``,
        or the dict :func:`load` returns.
    Returns:
      A new dict shaped like ``variables``: the head and every ``cross_term`` entry as
      given (the cross terms' last layer stays zero, so a cross model starts as the
      pretrained plain one), everything else from ``weights`` in ``variables``' dtypes.
    Raises:
      WeightsError: a backbone tensor the file lacks, one it has that the model lacks,
        or a shape that differs (another depth, width, stem or channel count).
    """
    blob = weights if isinstance(weights, Mapping) else load(weights)
    source = traverse_util.flatten_dict(blob["variables"])
    out = {}
    used = set()
    for collection, tree in variables.items():
        flat = traverse_util.flatten_dict(tree)
        merged = dict(flat)
        for path, value in flat.items():
            if path[0] == HEAD or CROSS_TERM in path:
                continue
            key = (collection, *path)
            if key not in source:
                raise WeightsError(
                    f"{'/'.join(key)}: not in the imported {blob['arch']} weights; the model must be the same "
                    "ResNet depth and width (model.num_filters=0) with stem='imagenet'"
                )
            new = np.asarray(source[key])
            if new.shape != tuple(np.shape(value)):
                raise WeightsError(
                    f"{'/'.join(key)}: imported shape {new.shape} differs from the model's {tuple(np.shape(value))} "
                    f"(imported: {blob['arch']}, {blob['in_channels']} input channel(s); stem='imagenet' needed)"
                )
            merged[path] = np.asarray(new, dtype=np.dtype(getattr(value, "dtype", np.float32)))
            used.add(key)
        out[collection] = traverse_util.unflatten_dict(merged)
    unused = [k for k in source if k not in used and k[1] != HEAD]
    if unused:
        raise WeightsError(
            f"the imported {blob['arch']} weights hold tensors the model lacks, e.g. {'/'.join(unused[0])}: "
            "a deeper model was imported than the one built"
        )
    return out
