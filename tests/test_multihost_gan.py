"""Tiny DCGAN and SRGAN runs in two processes (one CPU device each, gloo on loopback)
end where one process with two devices ends: each process trains on its block of
every global batch (``parallel.process_rows``), and only process 0 writes the run's
files."""

import json
import os
import socket
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import gan_tiny  # noqa: E402
from test_multihost import ROOT, report, run_processes  # noqa: E402
from tolerance import fp_tolerance, max_abs  # noqa: E402

NUM_PROCESSES = 2
TIMEOUT_S = 300  # a hang guard
WORKER = os.path.join(ROOT, "tests", "multihost_gan_worker.py")
# Where each training logs (metrics.jsonl) and the figures it leaves.
LOG_DIRS = {"dcgan": ("",), "srgan": ("pretrain", "gan")}
FIGURES = {"dcgan": "samples_step*.png", "srgan": "sr_comparison.png"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int, **extra) -> dict:
    drop = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAXTHYROID_NO_TQDM="1",
        JAXTHYROID_CACHE_DIR=os.environ.get("JAXTHYROID_CACHE_DIR") or os.path.join(ROOT, ".jax_cache"),
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **extra,
    )
    return env


@pytest.fixture(scope="module", params=["dcgan", "srgan"])
def runs(request, tmp_path_factory):
    """``(kind, workdir of one process with 2 devices, workdir of 2 processes with 1 device)``."""
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"multihost_{kind}")
    single, multi = tmp / "one_process", tmp / "two_processes"
    port = free_port()
    commands = [[sys.executable, WORKER, kind, str(single)]] + [[sys.executable, WORKER, kind, str(multi)]] * 2
    envs = [env_for(2)] + [
        env_for(
            1,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=str(NUM_PROCESSES),
            JAX_PROCESS_ID=str(i),
        )
        for i in range(NUM_PROCESSES)
    ]
    logs = [open(tmp / f"{name}.log", "w+") for name in ("one_process", "process0", "process1")]
    codes, texts = run_processes(commands, envs, logs, TIMEOUT_S)  # all three at once: 2 cores busy
    assert None not in codes, f"not finished within {TIMEOUT_S} s\n{report(codes, texts)}"
    assert codes == [0, 0, 0], report(codes, texts)
    return kind, single, multi


def floats(tree, prefix=""):
    """``{dotted path: value}`` of the float leaves of a JSON tree."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in floats(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree} if isinstance(tree, float) else {}


def test_two_processes_train_the_gan_of_one(runs):
    kind, single, multi = runs
    want = gan_tiny.final_params(kind, single)
    got = gan_tiny.final_params(kind, multi)
    done_single = json.loads((single / "done.json").read_text())
    done_multi = json.loads((multi / "done.json").read_text())
    cfg = gan_tiny.dcgan_cfg() if kind == "dcgan" else gan_tiny.srgan_cfg()
    steps = cfg.steps if kind == "dcgan" else cfg.pretrain_steps + cfg.gan_steps
    # Same rows on the same devices: only the 2-term cross-device sums differ in where
    # they are added (exact in either order); allowed: one float32 rounding of such a
    # sum per step, on values of the parameters' scale.
    tol = fp_tolerance(np.float32, reduction_size=NUM_PROCESSES, scale=max_abs(want), depth=steps)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], **tol, err_msg=name)
    # Losses, PSNR/SSIM: means over a batch or the test images of values computed from
    # those parameters; timings differ, of course.
    want_f = {k: v for k, v in floats(done_single).items() if "seconds" not in k and "per_s" not in k}
    got_f = floats(done_multi)
    assert set(want_f) <= set(got_f) and want_f
    for k, v in want_f.items():
        np.testing.assert_allclose(
            got_f[k], v, **fp_tolerance(np.float32, reduction_size=16**2, depth=steps), err_msg=k
        )


def test_only_process_zero_writes_the_gan_files(runs):
    kind, single, multi = runs
    for sub in LOG_DIRS[kind]:
        events = [json.loads(line) for line in (multi / sub / "metrics.jsonl").read_text().splitlines()]
        reference = [json.loads(line) for line in (single / sub / "metrics.jsonl").read_text().splitlines()]
        # One writer: each event once, as many as one process logs.
        assert [(e["event"], e["step"]) for e in events] == [(e["event"], e["step"]) for e in reference]
    figures = sorted(p.name for p in multi.glob(FIGURES[kind]))
    assert figures and figures == sorted(p.name for p in single.glob(FIGURES[kind]))
    assert (multi / "config.json").is_file() and not list(multi.rglob("*.tmp"))
