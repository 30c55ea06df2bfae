"""Classifier train-step throughput: our Flax model with each form of its ops vs PyTorch.

    python -m benchmarks.train_step --model resnet18 --size 128 --batch 32 --steps 20
    python -m benchmarks.train_step --dtype bf16 --variants "policy" --json out.json
    python -m benchmarks.train_step --xla-flags="--xla_cpu_use_onednn=true" --json out.json

Times one SGD-momentum train step (sigmoid cross-entropy over 6 findings, fp32 or bf16
compute with fp32 parameters, ``[batch, size, size, 1]`` images) for each variant of
:class:`jaxthyroid.models.backend.Ops`: "policy" (``default_ops()``: what the package
runs), "sliced max-pool", "every conv im2col", "no im2col" (every op in XLA's standard
form: plain Flax) and two compiled with jaxlib's default conv path (``with YNNPACK
convs``: without :mod:`jaxthyroid.xla_options`); ``--variants`` keeps a subset. If
``torch`` imports, the same network in PyTorch eager (NCHW and channels-last; with
``--dtype bf16``, under ``torch.autocast(bfloat16)``). Variants run *alternately*, one
step each per round, so a noisy neighbour on the shared CPU hits all of them alike; the
figure is the median over ``--steps`` rounds after warm-up. Compile time is ``lower +
compile`` of the jitted step. Results per machine: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="timed rounds (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cross", action="store_true", help="cross-residual ResNet")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="compute dtype (params stay fp32)")
    ap.add_argument("--only-ours", action="store_true", help="the policy's variant only")
    ap.add_argument("--variants", default=None, help="comma-separated variant names to keep (e.g. 'policy,no im2col')")
    ap.add_argument(
        "--xla-flags", default=None, help="appended to XLA_FLAGS before JAX starts (e.g. --xla_cpu_use_onednn=true)"
    )
    ap.add_argument("--json", default=None, help="write the results here")
    return ap.parse_args(argv)


# -- JAX ---------------------------------------------------------------------

YNN = " with YNNPACK convs"  # variant-name suffix: compiled with jaxlib's default conv path
POLICY = "policy"


def _jax_variants(args):
    """name -> model. Names ending in ``YNN`` are compiled without
    :mod:`jaxthyroid.xla_options` (convolutions on YNNPACK)."""
    import jax.numpy as jnp

    from jaxthyroid.models import backend
    from jaxthyroid.models.registry import get_model

    ops = backend.default_ops()
    variants = {POLICY: None}
    if not args.only_ours:
        variants["sliced max-pool"] = ops.replace(sliced_max_pool=True)
        variants["every conv im2col"] = ops.replace(im2col="all")
        variants["no im2col (plain Flax)"] = ops.replace(im2col="none", sliced_max_pool=False)
        variants["no im2col (plain Flax)" + YNN] = variants["no im2col (plain Flax)"]
        variants["every conv im2col" + YNN] = variants["every conv im2col"]
    keep = set(args.variants.split(",")) if args.variants and not args.only_ours else set(variants)
    if unknown := keep - set(variants):
        raise SystemExit(f"unknown --variants {sorted(unknown)}; known: {', '.join(variants)}")
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    return {
        name: get_model(args.model, num_classes=args.classes, cross=args.cross, dtype=dtype, ops=ops)
        for name, ops in variants.items()
        if name in keep
    }


def _make_step(model, args):
    """(state, step(state, batch, key) -> (state, metrics), step source)."""
    import jax
    import optax

    tx = optax.sgd(0.01, momentum=0.9)
    shape = (1, args.size, args.size, args.channels)
    from jaxthyroid.train.state import create_train_state
    from jaxthyroid.train.steps import make_classifier_steps

    # 'rbg' keys: XLA:CPU compiles threefry for every parameter slowly; init is not timed.
    state = create_train_state(jax.random.key(0, impl="rbg"), model, tx, shape)
    train_step, _ = make_classifier_steps(model, None, donate=True)
    return state, train_step, "jaxthyroid.train.steps"


class _JaxRunner:
    def __init__(self, model, args, jaxlib_default=False):
        import contextlib

        import jax
        import numpy as np

        from benchmarks import common
        from jaxthyroid import xla_options

        rng = np.random.default_rng(0)
        self.batch = {
            "image": jax.numpy.asarray(
                rng.uniform(size=(args.batch, args.size, args.size, args.channels)).astype(np.float32)
            ),
            "findings": jax.numpy.asarray((rng.uniform(size=(args.batch, args.classes)) < 0.3).astype(np.float32)),
        }
        self.key = jax.random.key(1, impl="rbg")
        with xla_options.jaxlib_default() if jaxlib_default else contextlib.nullcontext():
            self.state, step, self.source = _make_step(model, args)
        # The compiled executable itself is called from now on (see compile_jitted).
        self.step, info = common.compile_jitted(step, self.state, self.batch, self.key)
        self.compile_s = info["compile_s"]
        common.block(self.run())

    def run(self):
        """One step; returns its outputs (the timing blocks on them)."""
        self.state, metrics = self.step(self.state, self.batch, self.key)
        return self.state, metrics


# -- PyTorch -----------------------------------------------------------------


def _torch_runners(args):
    """PyTorch eager runners (NCHW, channels-last) for a torchvision-style ResNet-18/34."""
    try:
        import torch
    except ImportError:
        return {}
    if args.model not in ("resnet18", "resnet34") or args.cross:
        print(f"# PyTorch comparison only for plain resnet18/34, not {args.model}", file=sys.stderr)
        return {}
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    stages = (2, 2, 2, 2) if args.model == "resnet18" else (3, 4, 6, 3)
    layers, cin = [], 64
    for i, n in enumerate(stages):
        for j in range(n):
            cout = 64 * 2**i
            layers.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
            cin = cout

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(args.channels, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            *[l for l in layers],
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(512, args.classes),
        )

    class Runner:
        def __init__(self, channels_last):
            self.model = build()
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self.model = self.model.to(memory_format=fmt)
            self.x = torch.rand(args.batch, args.channels, args.size, args.size).to(memory_format=fmt)
            self.y = (torch.rand(args.batch, args.classes) < 0.3).float()
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
            self.loss = nn.BCEWithLogitsLoss()
            self.compile_s = 0.0
            self.source = "torch eager"
            self.run()

        def run(self):
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
                logits = self.model(self.x)
            self.loss(logits.float(), self.y).backward()
            self.opt.step()

    return {"PyTorch eager (NCHW)": Runner(False), "PyTorch eager (channels-last)": Runner(True)}


# -- main ----------------------------------------------------------------------


def main(argv=None) -> dict:
    args = _parse(argv)
    # PyTorch's OpenMP workers spin after each op by default; alternating with JAX on
    # 2 shared cores, that spinning starves XLA's threads (and vice versa).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    import jax

    from benchmarks import common

    # Throwaway compile: the first XLA compile in a process pays one-off start-up
    # costs that would otherwise land on whichever variant comes first.
    _JaxRunner(
        _jax_variants(argparse.Namespace(**{**vars(args), "model": "resnet_tiny", "only_ours": True}))[POLICY],
        argparse.Namespace(**{**vars(args), "size": 32, "batch": 2}),
    )
    runners = {}
    for name, model in _jax_variants(args).items():
        runners[name] = _JaxRunner(model, args, jaxlib_default=name.endswith(YNN))
        print(f"# {name}: compiled in {runners[name].compile_s:.1f} s", file=sys.stderr, flush=True)
    if not args.no_torch:
        runners.update(_torch_runners(args))
    # Alternate so load noise hits every variant alike.
    times = common.time_alternating({name: r.run for name, r in runners.items()}, steps=args.steps, warmup=args.warmup)

    torch_ref = next((n for n in times if n.startswith("PyTorch eager (NCHW")), None)
    rows = []
    for name, r in runners.items():
        ms = 1e3 * statistics.median(times[name])
        rows.append(
            {
                "variant": name,
                "step": r.source,
                "compile_s": round(r.compile_s, 2),
                "ms_per_step": round(ms, 1),
                "images_per_s": round(args.batch / ms * 1e3, 1),
                "ms_min": round(1e3 * min(times[name]), 1),
            }
        )
    if torch_ref:
        ref = next(row["images_per_s"] for row in rows if row["variant"] == torch_ref)
        for row in rows:
            row["vs_torch_eager"] = round(row["images_per_s"] / ref, 2)

    print(
        f"\n{args.model}{' (cross)' if args.cross else ''}, batch {args.batch}, "
        f"{args.channels}x{args.size}², {args.dtype}, SGD momentum; {jax.devices()[0].platform} "
        f"x{os.cpu_count()} cores; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"median of {args.steps} alternating rounds\n"
    )
    cols = ["variant", "compile_s", "ms_per_step", "ms_min", "images_per_s"] + (["vs_torch_eager"] if torch_ref else [])
    print(common.markdown_table(rows, [(c, c) for c in cols]))
    result = {
        "config": {k: v for k, v in vars(args).items()},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
