"""Accelerator check: train throughput, simulator throughput and compile times, offline.

    OUT=/tmp/gpu bash benchmarks/gpu_check.sh           # on a GPU, < 5 minutes
    PYTHONPATH=. python benchmarks/gpu_check.py --cpu-smoke --out /tmp/smoke  # tiny, on CPU

Needs only JAX, Flax and optax — no network, no tensorflow_datasets, grain, tqdm or
torch (it fails if any of them got imported). Data are phantom batches generated on
the device (:mod:`jaxthyroid.data.device_stream`). Measures, on one device:

* the simulator: one 256 × 128² batch per call (simulate + normalise);
* ResNet-18 at 128² (batch 256; its input is that phantom batch) and ResNet-50 at
  224² (batch 128), SGD-momentum train step, bf16 and fp32;
* after those, the DCGAN D+G step (batch 256, 64²) and the SRGAN ×2 step (batch 32,
  64² → 128²), bf16 and fp32;
* compile time, median step time over ``--steps``, images/s, FLOPs per step
  (``cost_analysis``), achieved FLOP/s and its share of the measured fp32 matmul
  rate, peak memory (``memory_analysis``).

Prints a Markdown table and writes ``gpu_check.json`` and ``gpu_check.md`` to
``--out`` (default ``$OUT`` or the current directory). ``--cpu-smoke`` runs the same
code on tiny shapes (phantom 8 × 64², ResNet-tiny) for tests on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Top-level packages the GPU machines lack (or that the package must not need).
FORBIDDEN = ("tensorflow_datasets", "tensorflow", "grain", "tqdm", "torch")


def forbidden_imports() -> list[str]:
    """Names in ``sys.modules`` whose top-level package is in :data:`FORBIDDEN`."""
    return sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)


def specs(cpu_smoke: bool):
    from benchmarks.run import Spec

    if cpu_smoke:
        return [
            Spec("phantom", "fp32", 1, 8, 64),
            Spec("resnet_tiny", "bf16", 1, 8, 64),
            Spec("resnet_tiny", "fp32", 1, 8, 64),
        ]
    # ResNet-18's batch and size equal the phantom batch's: it trains on those images.
    return [
        Spec("phantom", "fp32", 1, 256, 128),
        Spec("resnet18", "bf16", 1, 256, 128),
        Spec("resnet18", "fp32", 1, 256, 128),
        Spec("resnet50", "bf16", 1, 128, 224),
        Spec("resnet50", "fp32", 1, 128, 224),
        Spec("dcgan", "bf16", 1, 256, 64),
        Spec("dcgan", "fp32", 1, 256, 64),
        Spec("srgan", "bf16", 1, 32, 128),
        Spec("srgan", "fp32", 1, 32, 128),
    ]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (for tests)")
    ap.add_argument("--out", default=os.environ.get("OUT") or ".", help="folder for gpu_check.json/.md")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; smoke 1)")
    ap.add_argument("--compile-cache", action="store_true", help="keep the persistent compilation cache")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    steps = args.steps or (3 if args.cpu_smoke else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.cpu_smoke else 3)

    import jax

    from benchmarks import common
    from benchmarks import run as bench

    if args.compile_cache:
        from jaxthyroid import compile_cache

        compile_cache.enable()
    else:
        bench._disable_persistent_cache()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    env = bench.environment()
    log(f"# {env['device_kind']} ×{env['device_count']}, jax {env['jax']}")
    ceiling = common.matmul_ceiling(512 if args.cpu_smoke else 4096, repeats=3 if args.cpu_smoke else 10)
    log(f"# fp32 matmul {ceiling['n']}²: {ceiling['gflops']:.0f} GFLOP/s")
    command = " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    os.makedirs(args.out, exist_ok=True)

    def write(rows, partial):
        """Rewrites gpu_check.json/.md, so a run cut short keeps its finished rows."""
        rows = [dict(r) for r in rows]
        bench.add_shares(rows, ceiling["gflops"])
        env["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        result = {
            "environment": env,
            "matmul_ceiling": ceiling,
            "steps": steps,
            "warmup": warmup,
            "compile_cache": args.compile_cache,
            "cpu_smoke": args.cpu_smoke,
            "command": command,
            "rows": rows,
            "ratios": {},
            "partial": partial,
            "forbidden_imports": forbidden_imports(),
            "notes": [f"jax.devices(): {[str(d) for d in jax.devices()]}"],
        }
        text = bench.render_markdown(result)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
            f.write(text)
        return result, text

    rows = bench.run_specs(
        specs(args.cpu_smoke),
        steps=steps,
        warmup=warmup,
        torch=False,
        log=log,
        on_rows=lambda rows: write(rows, partial=True),
    )
    result, text = write(rows, partial=False)
    print(text)
    if result["forbidden_imports"]:
        raise SystemExit("gpu_check imported modules the GPU machines lack: " + ", ".join(result["forbidden_imports"]))
    return result


if __name__ == "__main__":
    main()
