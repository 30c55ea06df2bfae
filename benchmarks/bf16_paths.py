"""Where XLA:CPU runs bfloat16: the dtype each conv and dot is compiled to, and its speed.

    python -m benchmarks.bf16_paths [--steps 5] [--options package,jaxlib,onednn,xnn] [--json FILE]

For each set of XLA:CPU library options (``package``: what :mod:`jaxthyroid.xla_options`
compiles with; ``jaxlib``: jaxlib's default, YNNPACK convolutions too; ``onednn`` /
``xnn``: oneDNN / XNNPACK library fusions for dots and convolutions instead of YNNPACK)
and each of fp32 / bf16 it compiles and times (median of ``--steps`` after one warm-up):

* ``conv fwd+bwd``: ResNet-18's layer1 3×3 conv (32²×64, batch 32), value and both gradients;
* ``matmul``: a 2048² ``a @ b`` (bf16 result);
* ``matmul, f32 acc``: the same with ``preferred_element_type=float32`` (bf16 operands,
  float32 accumulation: PyTorch's autocast matmul);
* ``weight-grad dot, f32 acc``: ``gᵀ · patches`` shaped like that conv's im2col weight
  gradient (``[32768, 64]ᵀ · [32768, 576]``: a long contraction into a small output);
  the same in 8 batched chunks; and that conv's other two im2col dots (forward,
  patches' gradient);

and reads from the optimised HLO the dtype every convolution and dot computes in, and
whether a library fusion (``__ynn_fusion``...) took it. With ``torch`` installed, PyTorch
does the same conv (channels-last) and matmul in fp32 and under bf16 autocast. Results per
machine: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_T = "LIBRARY_FUSION_TYPE_"
_Y, _O, _X = (f"xla_cpu_experimental_{lib}_fusion_type" for lib in ("ynn", "onednn", "xnn"))
OPTIONS = {
    "package": {_Y: f"{_T}INDIVIDUAL_DOT,{_T}REDUCE"},
    "jaxlib": {},
    "onednn": {_Y: "", _O: f"{_T}INDIVIDUAL_DOT,{_T}INDIVIDUAL_CONVOLUTION"},
    "xnn": {_Y: "", _X: f"{_T}INDIVIDUAL_DOT,{_T}INDIVIDUAL_CONVOLUTION"},
}
NHWC = ("NHWC", "HWIO", "NHWC")


def _cases(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 32, 32, 64)), dtype)
    k = jnp.asarray(0.05 * rng.normal(size=(3, 3, 64, 64)), dtype)
    a = jnp.asarray(rng.normal(size=(2048, 2048)), dtype)
    g = jnp.asarray(rng.normal(size=(32768, 64)), dtype)
    p = jnp.asarray(rng.normal(size=(32768, 576)), dtype)

    def conv_grad(k, x):
        conv = lambda k: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
        return jax.value_and_grad(lambda k, x: jnp.sum(conv(k).astype(jnp.float32) ** 2), argnums=(0, 1))(k, x)

    f32 = jnp.float32
    return {
        "conv fwd+bwd": (conv_grad, (k, x)),
        "matmul": (lambda a, b: a @ b, (a, a)),
        "matmul, f32 acc": (lambda a, b: jnp.matmul(a, b, preferred_element_type=f32), (a, a)),
        "weight-grad dot, f32 acc": (lambda g, p: jnp.einsum("mf,mk->fk", g, p, preferred_element_type=f32), (g, p)),
        # The same contraction cut into 8 batched chunks and summed: a batched dot that
        # YNNPACK takes in bf16.
        "weight-grad dot in 8 chunks, f32 acc": (
            lambda g, p: jnp.einsum(
                "bmf,bmk->fk", g.reshape(8, -1, 64), p.reshape(8, -1, 576), preferred_element_type=f32
            ),
            (g, p),
        ),
        # The other two dots of that conv as an im2col matmul: forward (patches · W) and
        # the patches' gradient (g · Wᵀ; col2im, not timed, would follow).
        "im2col forward dot, f32 acc": (
            lambda p, w: jnp.matmul(p, w, preferred_element_type=f32),
            (p, k.reshape(576, 64)),
        ),
        "im2col input-grad dot, f32 acc": (
            lambda g, w: jnp.matmul(g, w.T, preferred_element_type=f32),
            (g, k.reshape(576, 64)),
        ),
    }


def _compiled_dtypes(text: str) -> str:
    """``conv:f32 dot:bf16 [__ynn_fusion]``: the dtype of the first operand of every
    convolution and dot in the optimised HLO, and the library fusions present."""
    dtypes = dict(re.findall(r"(%[\w.\-]+) = (\w+)\[", text))  # instruction names are unique per module
    ops = re.findall(r"= \w+\[[^\]]*\]\S* (convolution|dot)\((%[\w.\-]+)", text)
    found = sorted({f"{'conv' if op == 'convolution' else 'dot'}:{dtypes.get(arg, '?')}" for op, arg in ops})
    libraries = sorted(set(re.findall(r"\"kind\":\"(__\w+_fusion)\"", text)))
    return " ".join(found) + (f" [{', '.join(libraries)}]" if libraries else "")


def _median_ms(fn, args, steps):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _torch_rows(steps):
    try:
        import torch
    except ImportError:
        return []
    torch.set_num_threads(os.cpu_count() or 1)
    conv = torch.nn.Conv2d(64, 64, 3, 1, 1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(32, 64, 32, 32).to(memory_format=torch.channels_last).requires_grad_()
    a = torch.randn(2048, 2048)

    def conv_step(bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        (y.float() ** 2).sum().backward()

    def matmul_step(bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return a @ a

    rows = []
    for dtype in ("fp32", "bf16"):
        for case, step in (("conv fwd+bwd", conv_step), ("matmul, f32 acc", matmul_step)):
            step(dtype == "bf16")
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                step(dtype == "bf16")
                times.append(time.perf_counter() - t)
            ms = 1e3 * statistics.median(times)
            rows.append(
                {"options": "PyTorch (bf16: autocast)", "dtype": dtype, "case": case, "ms": ms, "compiled": "–"}
            )
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--options", default=",".join(OPTIONS))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rows = []
    for dtype_name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        for case, (fn, inputs) in _cases(dtype).items():
            for name in args.options.split(","):
                jitted = jax.jit(fn, compiler_options=OPTIONS[name])
                compiled = _compiled_dtypes(jitted.lower(*inputs).compile().as_text())
                row = {"options": name, "dtype": dtype_name, "case": case, "ms": _median_ms(jitted, inputs, args.steps)}
                rows.append({**row, "compiled": compiled})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if not args.no_torch:
        rows += _torch_rows(args.steps)
    print(f"\nms (median of {args.steps}); jax {jax.__version__}, {os.cpu_count()} cores\n")
    print("| case | dtype | options | ms | compiled as (operand dtypes; library fusions) |")
    print("|---|---|---|---:|---|")
    for r in sorted(rows, key=lambda r: (r["case"], r["dtype"], r["options"])):
        print(f"| {r['case']} | {r['dtype']} | {r['options']} | {r['ms']:.1f} | {r['compiled']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
