"""Per-layer convolution forward+backward on this CPU: where the train steps lose time.

    python -m benchmarks.conv_grad [--steps 11] [--only dcgan_d,dcgan_g,resnet18,dw] [--json FILE]

For each layer shape of the DCGAN (batch 64) and ResNet-18 at 128² (batch 32; and its
last stage at 64², where the output maps are 2×2) it times
``grad(sum(layer(x)²))`` with respect to input and kernel (median of ``--steps``),
one jitted program per variant:

* ``xla``: ``lax.conv_general_dilated`` / ``lax.conv_transpose`` (what ``nn.Conv`` /
  ``nn.ConvTranspose`` run), compiled as the package compiles (:mod:`jaxthyroid.xla_options`:
  XLA's own convolutions); ``xla, YNNPACK``: the same with jaxlib's default, which hands
  convolutions to YNNPACK;
* ``im2col (autodiff)``: ``extract_patches(x) @ kernel``, gradients as JAX derives them;
* ``im2col``: the same with :func:`jaxthyroid.models.layers.patch_matmul`, whose weight
  gradient is ``(gᵀ · patches)ᵀ`` (what the models run);
* generator layers: :class:`~jaxthyroid.models.upsample.SubPixelConvTranspose` as four
  XLA 2×2 convs (what the DCGAN runs by default), with four patch sets (per phase) and
  with one shared patch set;
* ``torch-cl``: PyTorch eager, channels-last (when torch is installed).

``dw`` times the weight gradient's matmul alone in both contraction orders (alone they
take the same time: ``patch_matmul``'s gain shows only inside a layer's program).
Prints one Markdown table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import common
from jaxthyroid import xla_options
from jaxthyroid.models import layers, upsample

NHWC = ("NHWC", "HWIO", "NHWC")


def _median_ms(step, steps: int) -> float:
    """Median milliseconds of ``step()`` (blocked on) over ``steps`` calls, after one warm-up."""
    common.time_call(step)
    return 1e3 * statistics.median(common.time_call(step) for _ in range(steps))


def _jit_ms(fn, *args, steps: int, ynn: bool = False) -> float:
    """:func:`_median_ms` of ``fn(*args)`` jitted as the package jits (``ynn``: jaxlib's default)."""
    with xla_options.jaxlib_default() if ynn else contextlib.nullcontext():
        jitted = xla_options.jit(fn)
    return _median_ms(lambda: jitted(*args), steps)


def _grad_ms(layer, x, k, steps, ynn=False):
    return _jit_ms(jax.grad(lambda k, x: jnp.sum(layer(x, k) ** 2), argnums=(0, 1)), k, x, steps=steps, ynn=ynn)


def _conv_variants(stride: int, pad: int):
    def xla(x, k):
        return lax.conv_general_dilated(x, k, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC)

    def patches(x, k):
        return layers.extract_patches(x, k.shape[:2], (stride, stride), ((pad, pad), (pad, pad)))

    def im2col_autodiff(x, k):
        return patches(x, k) @ k.reshape(-1, k.shape[-1])

    def im2col(x, k):
        return layers.patch_matmul(patches(x, k), k.reshape(-1, k.shape[-1]))

    return {"xla": xla, "im2col (autodiff)": im2col_autodiff, "im2col": im2col}


def _up_variants():
    def xla(x, k):
        return lax.conv_transpose(x, k, (2, 2), ((2, 2), (2, 2)), dimension_numbers=NHWC)

    def sub_pixel(shared_min, im2col=True):
        module = upsample.SubPixelConvTranspose(1, im2col=im2col, shared_patches_min_size=shared_min)

        def apply(x, k):
            return module.clone(features=k.shape[-1]).apply({"params": {"kernel": k}}, x)

        return apply

    return {
        "xla": xla,
        "sub-pixel, XLA convs": sub_pixel(10**9, im2col=False),
        "sub-pixel, per-phase patches": sub_pixel(10**9),
        "sub-pixel, shared patches": sub_pixel(1),
    }


def _torch_ms(kind, batch, side, cin, cout, k, stride, pad, steps):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    if kind == "up":
        conv = torch.nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    else:
        conv = torch.nn.Conv2d(cin, cout, k, stride, pad, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, side, side).to(memory_format=torch.channels_last).requires_grad_()

    def step():
        (conv(x) ** 2).sum().backward()

    return _median_ms(step, steps)


# (group, name, batch, side, cin, cout, kernel, stride, pad); "up" = 4×4 stride-2 transposed.
LAYERS = [
    ("dcgan_d", "D conv1", 64, 64, 1, 64, 4, 2, 1),
    ("dcgan_d", "D conv2", 64, 32, 64, 128, 4, 2, 1),
    ("dcgan_d", "D conv3", 64, 16, 128, 256, 4, 2, 1),
    ("dcgan_d", "D conv4", 64, 8, 256, 512, 4, 2, 1),
    ("dcgan_g", "G up1", 64, 4, 512, 256, 4, "up", None),
    ("dcgan_g", "G up2", 64, 8, 256, 128, 4, "up", None),
    ("dcgan_g", "G up3", 64, 16, 128, 64, 4, "up", None),
    ("dcgan_g", "G up4 (to 1 channel)", 64, 32, 64, 1, 4, "up", None),
    ("resnet18", "stem 7×7/2", 32, 128, 1, 64, 7, 2, 3),
    ("resnet18", "layer1 3×3", 32, 32, 64, 64, 3, 1, 1),
    ("resnet18", "layer2 3×3/2", 32, 32, 64, 128, 3, 2, 1),
    ("resnet18", "layer2 3×3", 32, 16, 128, 128, 3, 1, 1),
    ("resnet18", "layer3 3×3", 32, 8, 256, 256, 3, 1, 1),
    ("resnet18", "layer4 3×3", 32, 4, 512, 512, 3, 1, 1),
    ("resnet18", "at 64²: layer4 3×3/2", 32, 4, 256, 512, 3, 2, 1),
    ("resnet18", "at 64²: layer4 3×3", 32, 2, 512, 512, 3, 1, 1),
]


def _dw_rows(steps):
    """The weight gradient's matmul in both orders, for two patch shapes."""
    rows = []
    rng = np.random.default_rng(0)
    for m, k, f in ((16384, 1024, 128), (65536, 16, 64)):
        p = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(m, f)), jnp.float32)
        rows.append(
            {
                "group": "dw",
                "layer": f"dW of [{m}, {k}] patches, {f} outputs",
                "patchesᵀ·g (autodiff)": _jit_ms(lambda p, g: jnp.einsum("mk,mf->kf", p, g), p, g, steps=steps),
                "(gᵀ·patches)ᵀ (patch_matmul)": _jit_ms(
                    lambda p, g: jnp.einsum("mf,mk->fk", g, p).T, p, g, steps=steps
                ),
            }
        )
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=11)
    ap.add_argument("--only", default="dcgan_d,dcgan_g,resnet18,dw")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    groups = set(args.only.split(","))
    rng = np.random.default_rng(0)
    rows = []
    for group, name, batch, side, cin, cout, k, stride, pad in LAYERS:
        if group not in groups:
            continue
        x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
        kernel = jnp.asarray(0.05 * rng.normal(size=(k, k, cin, cout)), jnp.float32)
        variants = _up_variants() if stride == "up" else _conv_variants(stride, pad)
        row = {"group": group, "layer": f"{name}: {side}², {cin}→{cout}, batch {batch}"}
        for label, fn in variants.items():
            row[label] = _grad_ms(fn, x, kernel, args.steps)
        row["xla, YNNPACK"] = _grad_ms(variants["xla"], x, kernel, args.steps, ynn=True)
        if not args.no_torch:
            row["torch-cl"] = _torch_ms(
                "up" if stride == "up" else "conv", batch, side, cin, cout, k, stride, pad, args.steps
            )
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    if "dw" in groups:
        rows.extend(_dw_rows(args.steps))

    print(
        f"\nms per fwd+bwd (median of {args.steps}); jax {jax.__version__}, "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores\n"
    )
    for group in dict.fromkeys(r["group"] for r in rows):
        part = [r for r in rows if r["group"] == group]
        print(common.markdown_table(part, [(c, c) for c in part[0] if c != "group"]) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
