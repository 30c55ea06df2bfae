"""Throughput of the jitted phantom simulator (images/s after compilation).

    python -m benchmarks.phantom_throughput --size 128 --batch 256 --repeats 5 [--regime randomised]

Prints one line, then the same result as JSON. The timed call is
``phantom.simulate`` on a fresh key batch each repeat (same shapes, so no
recompilation), blocked with ``block_until_ready``; the figure is the median.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import jax
import numpy as np

from jaxthyroid import findings, phantom


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, choices=phantom.SIZES)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--poisson", default="fast", choices=("fast", "jax"))
    ap.add_argument("--regime", default="default", choices=("default", "randomised", "ood"), help="phantom regime")
    args = ap.parse_args(argv)

    params = dataclasses.replace(phantom.PhantomParams.regime(args.regime), poisson=args.poisson)
    ids = np.arange(args.batch, dtype=np.int32) % findings.DEFAULT.num_sets

    def keys(r):
        return phantom.example_keys(r, np.arange(args.batch))

    t0 = time.perf_counter()
    phantom.simulate(keys(0), ids, size=args.size, params=params).block_until_ready()
    compile_s = time.perf_counter() - t0
    times, cpu_times = [], []
    for r in range(1, args.repeats + 1):
        k = keys(r)
        jax.block_until_ready(k)
        t, c = time.perf_counter(), time.process_time()
        phantom.simulate(k, ids, size=args.size, params=params).block_until_ready()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    median = statistics.median(times)
    # CPU seconds per image: on a shared machine (load above the core count) wall time
    # overstates the cost; cores / cpu_s_per_image is the figure an idle machine approaches.
    cpu_per_image = statistics.median(cpu_times) / args.batch
    result = {
        "benchmark": "phantom_throughput",
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "poisson": args.poisson,
        "regime": args.regime,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "first_call_s": round(compile_s, 3),
        "median_batch_s": round(median, 5),
        "images_per_s": round(args.batch / median, 1),
        "times_s": [round(t, 5) for t in times],
        "cpu_s_per_image": round(cpu_per_image, 6),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(
        f"phantom {args.size}x{args.size} batch {args.batch} ({args.regime}, {args.poisson} Poisson, "
        f"{result['backend']}): {result['images_per_s']:.0f} images/s "
        f"(median {median * 1e3:.1f} ms/batch; first call {compile_s:.1f} s; "
        f"{cpu_per_image * 1e3:.2f} CPU-ms/image, load {result['load_average_1min']})"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
