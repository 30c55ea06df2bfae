"""Timing helpers shared by the benchmarks: compile, time, count FLOPs, measure the ceiling.

* :func:`compile_jitted` — ``lower + compile`` of a jitted function, timed, with the
  FLOPs of one call from XLA's ``cost_analysis()`` and the peak memory from
  ``memory_analysis()``.
* :func:`time_alternating` — steady-state step times of several runners, one call
  each per round (A/B/A/B…), so load from other processes on a shared machine hits
  every variant alike; the figure is the median over the rounds after warm-up.
* :func:`matmul_ceiling` — this machine's fp32 matmul rate (4096² through XLA),
  measured in the same run, to turn achieved FLOP/s into a share of what is possible.
* :func:`markdown_table` — rows of dicts as a Markdown table.

Imports only JAX and NumPy (no TFDS, grain, tqdm, torch): the GPU check uses it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

MIN_STEPS = 20  # the issue asks for a median of at least this many steps


def block(tree: Any) -> Any:
    """``jax.block_until_ready`` on any pytree (non-array leaves pass through)."""
    return jax.block_until_ready(tree)


def _first(analysis):
    # cost_analysis() is a dict on jax 0.10, a one-element list of dicts on some versions.
    if isinstance(analysis, (list, tuple)):
        return analysis[0] if analysis else {}
    return analysis or {}


def flops_of(compiled) -> float | None:
    """FLOPs of one call of a compiled executable (XLA ``cost_analysis()``), or None.

    For an SPMD program (``shard_map`` over a mesh) this is the per-device module's
    count; multiply by the device count for the whole step.
    """
    try:
        flops = _first(compiled.cost_analysis()).get("flops")
    except Exception:  # some backends do not implement it
        return None
    return float(flops) if flops is not None and flops >= 0 else None


def peak_bytes_of(compiled) -> int | None:
    """Peak device memory of one call (XLA ``memory_analysis()``), bytes, or None.

    The larger of ``peak_memory_in_bytes`` (on XLA:CPU only arguments + outputs) and
    arguments + outputs + temporaries − aliased (donated) buffers.
    """
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    peak = getattr(stats, "peak_memory_in_bytes", 0) or 0
    total = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )
    return int(max(peak, total))


def compile_jitted(jitted, *args, **kwargs) -> tuple[Any, dict]:
    """``jitted.lower(*args).compile()``, timed.

    Returns ``(compiled, info)`` with ``info = {'compile_s', 'flops', 'peak_bytes'}``.
    Call ``compiled`` itself afterwards: ``lower().compile()`` does not fill ``jit``'s
    own cache, so calling ``jitted`` would compile a second time.
    """
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    compile_s = time.perf_counter() - t0
    return compiled, {"compile_s": compile_s, "flops": flops_of(compiled), "peak_bytes": peak_bytes_of(compiled)}


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds for ``fn()`` including ``block_until_ready`` of what it returns."""
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def time_alternating(
    runners: Mapping[str, Callable[[], Any]], *, steps: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Step times of each runner over ``steps`` rounds, one call of each per round.

    ``runners`` map a name to a zero-argument callable doing one step (its result is
    blocked on, so asynchronous dispatch is included). ``warmup`` untimed rounds come
    first. Returns ``{name: [seconds per round]}``.
    """
    for _ in range(warmup):
        for fn in runners.values():
            time_call(fn)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(steps):
        for name, fn in runners.items():
            times[name].append(time_call(fn))
    return times


def summarize(times: Sequence[float]) -> dict:
    """``{'step_ms', 'step_ms_min', 'step_ms_max', 'steps'}`` of a list of seconds (median)."""
    return {
        "step_ms": 1e3 * statistics.median(times),
        "step_ms_min": 1e3 * min(times),
        "step_ms_max": 1e3 * max(times),
        "steps": len(times),
    }


def matmul_ceiling(n: int = 4096, *, repeats: int = 5, dtype=jnp.float32, device=None) -> dict:
    """Measured ``n × n`` matmul rate through XLA on one device: the practical ceiling.

    Expected on the 2-core dev CPU (DESIGN §6): ~386 GFLOP/s for 4096² fp32 when the
    cores are quiet. Returns ``{'n', 'dtype', 'gflops' (median), 'gflops_best',
    'ms' (median), 'repeats'}``.
    """
    device = device or jax.devices()[0]
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype), device)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), dtype), device)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
    block(matmul(a, b))
    times = [time_call(lambda: matmul(a, b)) for _ in range(repeats)]
    flops = 2.0 * n**3
    median = statistics.median(times)
    return {
        "n": n,
        "dtype": jnp.dtype(dtype).name,
        "gflops": flops / median / 1e9,
        "gflops_best": flops / min(times) / 1e9,
        "ms": 1e3 * median,
        "repeats": repeats,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows``; ``columns`` = ``[(key, header), …]``; None prints ``–``."""
    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)
