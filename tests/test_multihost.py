"""Two CPU processes on loopback (gloo collectives) train to the parameters of one
process that sees the same global batch (issue: multi-host data parallelism)."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from tolerance import fp_tolerance, max_abs

sys.path.insert(0, os.path.dirname(__file__))
import multihost_worker as worker  # noqa: E402

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2  # a global mesh of 4 CPU devices over 2 processes
TIMEOUT_S = 120
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands: list[list[str]], envs: list[dict], logs: list, timeout_s: float) -> tuple[list, list]:
    """Starts one process per command (cwd: the repository), waits for all, and returns
    ``(exit codes, outputs)``; one failing stops the rest (it would leave them waiting at
    a collective), as does the timeout (exit code None)."""
    procs = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        for cmd, env, log in zip(commands, envs, logs)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
                p.returncode = None
    texts = []
    for f in logs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return [p.returncode for p in procs], texts


def report(codes, texts) -> str:
    return "\n".join(f"--- process {i} (exit {c}) ---\n{t[-3000:]}" for i, (c, t) in enumerate(zip(codes, texts)))


def run_workers(tmp_path) -> list[dict]:
    port = free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        # The parent's conftest asks for 8 host devices; each worker sets its own count.
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    outs = [tmp_path / f"process{i}.npz" for i in range(NUM_PROCESSES)]
    commands = [
        [
            sys.executable,
            os.path.join(ROOT, "tests", "multihost_worker.py"),
            "--port",
            str(port),
            "--process_id",
            str(i),
            "--num_processes",
            str(NUM_PROCESSES),
            "--out",
            str(outs[i]),
        ]
        for i in range(NUM_PROCESSES)
    ]
    logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(NUM_PROCESSES)]
    codes, texts = run_processes(commands, [env] * NUM_PROCESSES, logs, TIMEOUT_S)
    if worker.GLOO_UNAVAILABLE in codes:
        pytest.skip("this jaxlib has no gloo CPU collectives: " + next(t for t in texts if "GLOO" in t)[-500:])
    assert None not in codes, f"workers did not finish within {TIMEOUT_S} s\n{report(codes, texts)}"
    assert codes == [0] * NUM_PROCESSES, report(codes, texts)
    return [dict(np.load(o)) for o in outs]


def test_two_processes_train_like_one(tmp_path):
    results = run_workers(tmp_path)
    # The reference: one process, one device, the whole global batch each step.
    reference = worker.run(mesh=None)
    for r in results:
        assert int(r["num_devices"]) == NUM_PROCESSES * DEVICES_PER_PROCESS
        assert set(r) - {"num_devices"} == set(reference)
        assert int(r["step"]) == worker.STEPS
        for name, want in reference.items():
            # 2 processes' partial sums vs 1: BatchNorm statistics and weight gradients sum
            # GLOBAL_BATCH × SIZE² terms; STEPS steps of forward + backward through conv,
            # BatchNorm and Dense (3 stages each way).
            tol = fp_tolerance(
                reduction_size=worker.GLOBAL_BATCH * worker.SIZE**2, depth=worker.STEPS * 2 * 3, scale=max_abs(want)
            )
            np.testing.assert_allclose(r[name], want, **tol, err_msg=name)
        assert r["eval_count"] == worker.GLOBAL_BATCH - 3  # padding masked over both processes
    # Training moved the parameters (so the comparison is not trivially of the init).
    init = worker.TinyNet().init(
        __import__("jax").random.key(0), np.zeros((1, worker.SIZE, worker.SIZE, 1), np.float32), train=False
    )
    kernel = [k for k in reference if k.startswith("params") and "Dense" in k and "kernel" in k][0]
    assert not np.allclose(reference[kernel], np.asarray(init["params"]["Dense_0"]["kernel"]), atol=1e-3)
    assert reference["losses"][-1] < reference["losses"][0]
