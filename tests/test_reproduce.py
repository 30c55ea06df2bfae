"""The whole pipeline on the tiny preset: every stage, the report, and resuming
after a SIGKILL without redoing finished stages."""

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from subprocess_env import tiny_run_env

from jaxthyroid import metrics as metrics_lib
from jaxthyroid import reproduce

ROOT = pathlib.Path(__file__).resolve().parent.parent


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
    proc = subprocess.Popen(cmd, cwd=ROOT, env=tiny_run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
    rerun = subprocess.run(cmd, cwd=ROOT, env=tiny_run_env(), capture_output=True, text=True, timeout=900)
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
        "Training budgets",
        "Tab.3 analogue",
        "Validation curves",
        "Ablations",
        "Data scarcity",
        "GAN augmentation",
        "Confusion matrix",
        "What this shows",
    ):
        assert f"## {heading}" in md, heading

    def section(heading):
        return md.split(f"## {heading}")[1].split("\n## ")[0].splitlines()

    # Every method of Tab.3 is in the JSON, with the value printed in its row.
    for method, metrics in numbers["methods"].items():
        row = next(line for line in section("Tab.3 analogue") if line.startswith(f"| {method} "))
        assert f"{metrics['exact_match'][0]:.3f}" in row
        assert f"{metrics['f1'][0]:.3f}" in row
    for variant, values in numbers["ablations"].items():
        row = next(line for line in section("Ablations") if line.startswith(f"| {variant} "))
        assert f"{values['exact_match_cross'][0]:.3f}" in row
    assert set(numbers["scarcity"]) == {"2"}
    # Steps and images seen per arm; compared arms equal; the final model's run directory.
    steps = numbers["steps"]
    assert (
        steps["full method (phase 1 + phase 2)"]["steps"]
        == steps["ResNet, plain, trained once on real images (control)"]["steps"]
    )
    assert steps["without GAN augmentation"]["steps"] == steps["full method (phase 1 + phase 2)"]["steps"]
    for arm in steps.values():
        assert arm["images seen"] == arm["steps"] * arm["batch"] > 0
    assert "## Training budgets" in md
    assert (out / numbers["final_model"] / "phase2" / "checkpoints" / "best").is_dir()
    assert not pathlib.Path(numbers["final_model"]).is_absolute()
    for name in ("curves.png", "confusion.png", "samples.png", "sr_comparison.png"):
        assert (out / name).stat().st_size > 1000, name


# -- configs (no training) ------------------------------------------------------------------
PRESETS = sorted(p.stem.removeprefix("reproduce_") for p in (ROOT / "experiments" / "configs").glob("reproduce_*.py"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_compared_pair_is_step_matched(preset):
    cfg = reproduce.load_preset(preset)
    rows = reproduce.check_step_matched(cfg)
    claims = {row["claim"] for row in rows}
    assert "two-phase + cross vs plain" in claims and "GAN" in claims
    for row in rows:
        a, b = row["a_phases"], row["b_phases"]
        assert sum(p["steps"] for p in a) == sum(p["steps"] for p in b), row
        assert {p["batch_size"] for p in a} == {p["batch_size"] for p in b}, row
        assert {p["schedule"] for p in a} == {p["schedule"] for p in b}, row
        if len(a) == len(b):
            assert a == b, row
    # The two-phase model's phase 1 + phase 2 = the control's steps, and a change that
    # breaks it is refused before anything trains.
    method = next(r for r in rows if r["claim"] == "two-phase + cross vs plain")
    assert [p["steps"] for p in method["a_phases"]] == [cfg.classifier.phase1.steps, cfg.classifier.phase2.steps]
    assert method["a"] == "no_gan:phase2" and method["b"] == "plain:plain"  # both on real images only
    with pytest.raises(reproduce.config_lib.ConfigError, match="not step-matched"):
        reproduce.check_step_matched(reproduce.load_preset(preset, ["classifier.plain.steps=7"]))


def test_an_undeclared_arm_key_is_an_error():
    cfg = reproduce.load_preset("tiny")
    with pytest.raises(reproduce.config_lib.ConfigError, match="phase3"):
        reproduce.classifier_config(cfg, ROOT, 0, **{"phase3.steps": 1})


def test_intervals_and_paired_verdicts():
    from jaxthyroid import paper_report

    # t_{0.975, 2} = 4.3027: mean 2, s = 1, half-width 4.3027 / sqrt(3).
    mean, half = metrics_lib.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and abs(half - 4.302653 / 3**0.5) < 1e-5  # the quantile is quoted to 7 digits here
    assert np.isnan(metrics_lib.mean_interval([0.5])[1])
    # Paired: the same seed-to-seed swings in both arms cancel; a steady +0.02 is resolved.
    a, b = [0.70, 0.80, 0.90], [0.68, 0.78, 0.88]
    assert paper_report.paired_verdict(a, b)["resolved"]
    assert not paper_report.paired_verdict([0.7, 0.8, 0.9], [0.72, 0.77, 0.9])["resolved"]
    assert not paper_report.paired_verdict([0.9], [0.1])["resolved"]  # one seed: never
