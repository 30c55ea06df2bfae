"""Where the phantom simulator's time goes: each stage of ``phantom.render``, cumulatively.

    python -m benchmarks.phantom_profile [--size 128] [--batch 64] [--repeats 7]

Jits ``render`` cut after each of its stages — the named draws and the layout, the
activity map (anatomy, texture), the noise-free expected counts (distortion, PSF and
scatter blurs, count scaling), the Poisson noise, the export — vmapped over one batch,
and prints the median time of each prefix (after a compile call) and the difference to
the previous one: the stage's own share; the last row adds the per-image normalisation
(``transforms.normalize_counts``) that ``device_stream`` applies to every batch. XLA fuses across stages, so a difference is
what adding the stage costs, not a kernel time. Results per machine: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid import findings, phantom
from jaxthyroid.data import transforms
from jaxthyroid.phantom import anatomy, imaging, simulator

STAGES = (
    "draws + layout",
    "+ activity map",
    "+ expected counts (blurs)",
    "+ Poisson noise",
    "+ export (= render)",
    "+ normalisation (device_stream's batch)",
)


def _render_until(stage: int, key, i, *, size: int, params):
    """``phantom.render``'s steps up to ``STAGES[stage]``, returning that stage's output
    (the draws as one number per parameter, so nothing is left for XLA to drop)."""
    d, lay = simulator.draw(key, i, params)
    if stage == 0:
        return jnp.stack([jnp.sum(jnp.asarray(v, jnp.float32)) for v in jax.tree.leaves(lay)])
    out = anatomy.activity_map(d.key("texture"), lay, size, params)[0]
    if stage >= 2:
        out = imaging.expected_counts(out, lay, lay["fov"], params)[0]
    if stage >= 3:
        out = imaging.poisson(d.key("poisson"), out, params)
    if stage >= 4:
        out = imaging.export(out[..., None], lay)
    if stage >= 5:
        out = transforms.normalize_counts(out[None])[0]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, choices=phantom.SIZES)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--regime", default="default", choices=("default", "randomised", "ood"))
    args = ap.parse_args(argv)

    params = phantom.PhantomParams.regime(args.regime)
    ids = jnp.asarray(np.arange(args.batch) % findings.DEFAULT.num_sets, jnp.int32)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}; size {args.size}², batch {args.batch}")
    print("\n| stage (cumulative) | ms per batch | stage's own ms | images/s |")
    print("|---|---|---|---|")
    previous = 0.0
    for stage, name in enumerate(STAGES):
        fn = functools.partial(_render_until, stage, size=args.size, params=params)
        batched = jax.jit(jax.vmap(fn))
        jax.block_until_ready(batched(phantom.example_keys(0, np.arange(args.batch)), ids))  # compile
        times = []
        for r in range(args.repeats):
            keys = phantom.example_keys(r + 1, np.arange(args.batch))
            t0 = time.perf_counter()
            jax.block_until_ready(batched(keys, ids))
            times.append(time.perf_counter() - t0)
        ms = 1e3 * statistics.median(times)
        print(f"| {name} | {ms:.1f} | {ms - previous:+.1f} | {args.batch / ms * 1e3:.0f} |", flush=True)
        previous = ms


if __name__ == "__main__":
    main()
