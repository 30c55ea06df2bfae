"""PyTorch reference for ``gpu_check.py``: the same classifier train steps on the same GPU.

    python benchmarks/gpu_torch_ref.py --out /tmp/gpu          # on a GPU with torch + torchvision

Benchmarks only: PyTorch is never a dependency of the package. Times torchvision's
ResNet-18 (1 channel, 128², batch 256) and ResNet-50 (1 channel, 224², batch 128) with
the stem's input channels and the head's outputs set like ours (1 → ``FINDINGS``),
SGD momentum, sigmoid cross-entropy, channels-last, in fp32 and in bf16 autocast
(fp32 parameters, as ``gpu_check``'s bf16 rows) — eager, and with ``--compile`` also
``torch.compile``. Median step time over ``--steps`` after ``--warmup``, each step
followed by ``torch.cuda.synchronize()``. Writes ``gpu_torch_ref.json`` to ``--out``.
TF32 follows PyTorch's defaults (on for convolutions, off for matmuls); XLA's default
precision on GPU also uses TF32 for fp32 convolutions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

FINDINGS = 6  # logits, as benchmarks/run.py (jaxthyroid.findings.DEFAULT); literal: no package import

CASES = (("resnet18", 256, 128), ("resnet50", 128, 224))


def _model(name: str):
    import torch
    import torchvision

    model = getattr(torchvision.models, name)(num_classes=FINDINGS)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


def measure(name: str, batch: int, size: int, dtype: str, compiled: bool, steps: int, warmup: int) -> dict:
    import torch

    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = _model(name).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.rand(batch, 1, size, size, device=dev).to(memory_format=torch.channels_last)
    y = (torch.rand(batch, FINDINGS, device=dev) < 0.3).float()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()

    run = torch.compile(step) if compiled else step
    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    return {
        "case": name,
        "impl": "torch.compile" if compiled else "PyTorch eager channels-last",
        "dtype": dtype,
        "batch": batch,
        "size": size,
        "first_step_s": round(first_s, 2),
        "step_ms": round(ms, 2),
        "images_per_s": round(batch / ms * 1e3, 1),
        "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20),
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = ap.parse_args(argv)
    import torch

    rows = []
    for name, batch, size in CASES:
        for dtype in ("bf16", "fp32"):
            for compiled in (False, True) if args.compile else (False,):
                torch.cuda.reset_peak_memory_stats()
                row = measure(name, batch, size, dtype, compiled, args.steps, args.warmup)
                print(json.dumps(row), flush=True)
                rows.append(row)
                os.makedirs(args.out, exist_ok=True)
                with open(os.path.join(args.out, "gpu_torch_ref.json"), "w") as f:
                    json.dump(
                        {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2
                    )
    print("\n| case | impl | dtype | batch | size | step ms | images/s | peak MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['impl']} | {r['dtype']} | {r['batch']} | {r['size']} | "
            f"{r['step_ms']} | {r['images_per_s']} | {r['peak_mb']} |"
        )
    return rows


if __name__ == "__main__":
    main()
