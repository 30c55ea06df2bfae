"""`jaxthyroid train` in two processes (one CPU device each, gloo collectives on
loopback) ends where one process with two devices ends: the same parameters, the same
validation history and the same test metrics; only process 0 writes the run's files.

Each process feeds its block of every global batch (train, validation and test), so
the two runs put the same rows on the same devices and differ only in how the two
devices' partial sums meet (gloo across processes vs XLA within one).
"""

import json
import os
import socket
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

sys.path.insert(0, os.path.dirname(__file__))
from test_cross_training import TINY, tiny_config  # noqa: E402
from test_multihost import ROOT, report, run_processes  # noqa: E402
from tolerance import fp_tolerance, max_abs  # noqa: E402

from jaxthyroid import cross_training  # noqa: E402

NUM_PROCESSES = 2
TIMEOUT_S = 300  # a hang guard; the test takes well under that
PHASES = ("phase1", "phase2")
# TINY (phase 1, the graft, phase 2; the plain control off to save time): global
# batches of 16 split into blocks of 8 per process / device.
OVERRIDES = [*TINY, "plain.enabled=False"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(workdir, data_dir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxthyroid",
        "train",
        "--config",
        "cross_training_quick",
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        *(f"--config.{o}" for o in OVERRIDES),
    ]


def base_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR") and k != "JAX_NUM_PROCESSES"}
    env.pop("JAX_PROCESS_ID", None)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAXTHYROID_NO_TQDM="1",
        # The suite's persistent compilation cache (conftest), unless the caller chose one.
        JAXTHYROID_CACHE_DIR=os.environ.get("JAXTHYROID_CACHE_DIR") or os.path.join(ROOT, ".jax_cache"),
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(one process with 2 devices, 2 processes with 1 device)``: run dirs and outputs."""
    tmp = tmp_path_factory.mktemp("multihost_train")
    # The tiny data set of test_cross_training (built once per session, here if first):
    # both runs open it, process 0 of the pair first (parallel.primary_first).
    base = tmp_path_factory.getbasetemp() / "cross_training_tiny"
    cfg = tiny_config(base)
    cross_training.load_data(cfg.data, seed=cfg.seed)
    data_dir = cfg.data.data_dir

    port = free_port()
    single, multi = tmp / "one_process", tmp / "two_processes"
    commands = [train_command(single, data_dir)] + [train_command(multi, data_dir)] * NUM_PROCESSES
    envs = [base_env(2)] + [
        {
            **base_env(1),
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": str(NUM_PROCESSES),
            "JAX_PROCESS_ID": str(i),
        }
        for i in range(NUM_PROCESSES)
    ]
    logs = [open(tmp / f"{name}.log", "w+") for name in ("one_process", "process0", "process1")]
    codes, texts = run_processes(commands, envs, logs, TIMEOUT_S)  # all three at once: 2 cores busy
    assert None not in codes, f"not finished within {TIMEOUT_S} s\n{report(codes, texts)}"
    assert codes == [0, 0, 0], report(codes, texts)
    return single, multi, texts


def table(text: str) -> list[str]:
    """The closing summary table of `jaxthyroid train`'s output."""
    return [line for line in text.splitlines() if line.startswith("|")]


def test_two_processes_end_with_the_parameters_of_one(runs):
    single, multi, _ = runs
    total_steps = 0
    for phase in PHASES:
        want = cross_training.load_run(single, phase)[3]
        got = cross_training.load_run(multi, phase)[3]
        total_steps += json.loads((single / phase / "done.json").read_text())["steps"]
        # Same rows on the same devices: the runs differ only in the 2-term cross-device
        # sums (exact in either order); allowed: one float32 rounding of such a sum in
        # every step so far, on values of the parameters' scale.
        tol = fp_tolerance(np.float32, reduction_size=NUM_PROCESSES, scale=max_abs(want), depth=total_steps)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got)):
            np.testing.assert_allclose(
                np.asarray(g), np.asarray(w), **tol, err_msg=f"{phase} {jax.tree_util.keystr(path)}"
            )
    # The checkpoints compared are trained ones: phase 2 moved phase 1's weights.
    params = [cross_training.load_run(single, p)[3]["params"] for p in PHASES]
    moved = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(params[0]["head"]), jax.tree.leaves(params[1]["head"]))
    ]
    assert max(moved) > 1e-4


def assert_same_metrics(got, want, path=""):
    """Counts and labels equal; float metrics to float32 round-off of a mean over the
    test set (the probabilities come from parameters equal to that tolerance)."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            assert_same_metrics(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_metrics(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        np.testing.assert_allclose(got, want, **fp_tolerance(np.float32, reduction_size=64), err_msg=path)
    else:
        assert got == want, path


def test_two_processes_report_the_metrics_of_one(runs):
    single, multi, texts = runs
    want = json.loads((single / "results.json").read_text())
    got = json.loads((multi / "results.json").read_text())
    assert set(want["evaluations"]) == set(PHASES)
    assert_same_metrics(got["evaluations"], want["evaluations"], "evaluations")
    assert want["evaluations"]["phase2"]["all"]["count"] == 32  # every test image, once
    for phase in PHASES:
        history = [{k: v for k, v in h.items() if "seconds" not in k} for h in want["histories"][phase]]
        assert_same_metrics([{k: h[k] for k in history[0]} for h in got["histories"][phase]], history, phase)
    assert_same_metrics(got["graft_check"], want["graft_check"], "graft_check")
    # Every process gathered the whole test set: a table it prints is process 0's.
    assert table(texts[1]) and table(texts[2]) in ([], table(texts[1]))


def test_only_process_zero_writes_the_run_files(runs):
    single, multi, _ = runs
    for phase in PHASES:
        events = [json.loads(line) for line in (multi / phase / "metrics.jsonl").read_text().splitlines()]
        reference = [json.loads(line) for line in (single / phase / "metrics.jsonl").read_text().splitlines()]
        # One writer: each event once, as many as one process logs.
        assert [(e["event"], e["step"]) for e in events] == [(e["event"], e["step"]) for e in reference]
        assert len(list((multi / phase / "tb").glob("events.out.tfevents.*"))) == 1
        assert (multi / phase / "done.json").is_file()
    for name in ("config.json", "taxonomy.json", "results.json", "curves.png", "confusion_phase2.png"):
        assert (multi / name).is_file(), name
    assert not list(multi.glob("*.tmp"))
