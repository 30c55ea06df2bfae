"""Several cross-training runs at once, each in a worker process of its own.

On a 2-core CPU one small training keeps the cores only partly busy (Python dispatch,
host-side batching, single-threaded compilation); two at once finish together in about
0.7× the time of one after the other (README, "make demo"). Each worker runs
:func:`jaxthyroid.cross_training.run` on its config exactly as the parent would — the
same programs, the same data order, the same numbers — with its progress bar off and
its output in ``<workdir>/train.log``; the parent shows one bar over the runs.

Only on a single-process CPU backend: an accelerator is one device that every worker
would try to fill, and a multi-host job has its own process layout.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import pathlib
import sys

import ml_collections

LOG_FILE = "train.log"


def usable_processes(requested: int) -> int:
    """``requested`` worker processes where they help (a single-process CPU backend with
    at least 2 cores), else 1 (run in this process)."""
    if requested <= 1:
        return 1
    import jax

    if jax.default_backend() != "cpu" or jax.process_count() > 1 or (os.cpu_count() or 1) < 2:
        return 1
    return int(requested)


def summary(c: ml_collections.ConfigDict) -> dict:
    """One run of :func:`jaxthyroid.cross_training.run`: its evaluations, histories and
    budgets, and its workdir."""
    from jaxthyroid import cross_training

    results = cross_training.run(c)
    return {
        "evaluations": results["evaluations"],
        "histories": results["histories"],
        "budgets": results["budgets"],
        "workdir": str(c.workdir),
    }


def _worker(c: ml_collections.ConfigDict) -> dict:
    """In a worker process: :func:`summary` with the bar off and output in ``train.log``."""
    from jaxthyroid import compile_cache

    os.environ["JAXTHYROID_NO_TQDM"] = "1"
    compile_cache.enable()  # the parent's cache (its JAX settings came along in the environment)
    workdir = pathlib.Path(c.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(workdir / LOG_FILE, "a") as log:
        # At the descriptor level, so XLA's and absl's own output lands there too.
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        log.write(f"{c.workdir}: cross-training in worker process {os.getpid()}\n")
        log.flush()
        try:
            return summary(c)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def _last_step(workdir: pathlib.Path) -> str:
    """'<phase> <step>' of the run's most recent metrics line, for the parent's bar."""
    latest, where = -1.0, ""
    for path in workdir.glob("*/metrics.jsonl"):
        mtime = path.stat().st_mtime
        if mtime <= latest:
            continue
        lines = path.read_text().splitlines()
        if lines:
            with contextlib.suppress(json.JSONDecodeError):
                latest, where = mtime, f"{path.parent.name} {json.loads(lines[-1]).get('step', '?')}"
    return where


def run_all(configs: dict[str, ml_collections.ConfigDict], *, processes: int = 1) -> dict[str, dict]:
    """``{name: summary(config)}`` of every run, ``processes`` at a time
    (:func:`usable_processes`; 1: one after the other in this process)."""
    processes = min(usable_processes(processes), len(configs))
    if processes <= 1:
        return {name: summary(c) for name, c in configs.items()}
    from jaxthyroid.train import run_log

    names = ", ".join(configs)
    print(f"  {names}: {processes} worker processes (logs: <workdir>/{LOG_FILE})", flush=True)
    context = multiprocessing.get_context("spawn")  # a fresh JAX in each worker, never a forked one
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = {name: pool.submit(_worker, c) for name, c in configs.items()}
        bar = run_log.progress_bar(len(futures), desc="runs", unit="run")
        try:
            pending = set(futures.values())
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=2.0)
                bar.update(len(done))
                running = {n: _last_step(pathlib.Path(configs[n].workdir)) for n, f in futures.items() if not f.done()}
                bar.set_postfix(**running)
        finally:
            bar.close()
        return {name: f.result() for name, f in futures.items()}  # a worker's exception is raised here
