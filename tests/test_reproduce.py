"""The whole pipeline on the tiny preset: every stage, the report, and resuming
after a SIGKILL without redoing finished stages."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from jaxthyroid import reproduce

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env(tmp_path):
    env = dict(os.environ)
    # Compiling is most of a tiny run; LLVM's optimisation level changes how fast the
    # compiled code runs, not what it computes (118 s -> 91 s cold on 2 cores).
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny reproduce run killed with SIGKILL once the GAN stage finished, then rerun."""
    tmp = tmp_path_factory.mktemp("reproduce")
    out = tmp / "out"
    cmd = [
        sys.executable,
        "-m",
        "jaxthyroid",
        "reproduce",
        "--preset",
        "tiny",
        "--out",
        str(out),
        f"--config.classifier.data.data_dir={tmp / 'data'}",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = out / "seed0" / "gan" / "result.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert marker.exists(), proc.communicate()[0].decode()[-3000:] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {
        s: (out / "seed0" / s / "result.json").stat().st_mtime_ns
        for s in reproduce.STAGES
        if (out / "seed0" / s / "result.json").exists()
    }
    rerun = subprocess.run(cmd, cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return out, first, rerun.stdout


def test_rerun_after_sigkill_skips_finished_stages(finished_run):
    out, first, stdout = finished_run
    assert {"data", "gan"} <= set(first)
    for stage, mtime in first.items():  # finished stages were not redone
        assert (out / "seed0" / stage / "result.json").stat().st_mtime_ns == mtime
        assert re.search(rf"{stage}: finished earlier, skipped", stdout)
    for stage in reproduce.STAGES:  # and every stage is finished now
        assert (out / "seed0" / stage / "result.json").exists(), stage


def test_report_is_complete_and_matches_json(finished_run):
    out, _, _ = finished_run
    md = (out / "report.md").read_text()
    numbers = json.loads((out / "report.json").read_text())
    for heading in (
        "Against the paper",
        "Tab.1 analogue",
        "Tab.2 analogue",
        "Tab.3 analogue",
        "Validation curves",
        "Ablations",
        "Data scarcity",
        "GAN augmentation",
        "Confusion matrix",
        "What this shows",
    ):
        assert f"## {heading}" in md, heading
    # Every method of Tab.3 is in the JSON, with the value printed in its row.
    for method, metrics in numbers["methods"].items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {method} "))
        assert f"{metrics['exact_match'][0]:.3f}" in row
        assert f"{metrics['f1'][0]:.3f}" in row
    for variant, values in numbers["ablations"].items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {variant} "))
        assert f"{values['exact_match_cross'][0]:.3f}" in row
    assert set(numbers["scarcity"]) == {"2"}
    for name in ("curves.png", "confusion.png", "samples.png", "sr_comparison.png"):
        assert (out / name).stat().st_size > 1000, name
