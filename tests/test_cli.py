"""The ``jaxthyroid`` command: help texts, one-line user errors, evaluate/predict on a run."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tolerance import fp_tolerance

from jaxthyroid import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def _subcommands() -> list[list[str]]:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    commands = [[name] for name in sub.choices]
    data = sub.choices["data"]
    data_sub = next(a for a in data._actions if getattr(a, "dest", None) == "data_command")
    return commands + [["data", name] for name in data_sub.choices]


@pytest.mark.parametrize("command", _subcommands(), ids=" ".join)
def test_help_of_every_subcommand_exits_0(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*command, "--help"])
    assert e.value.code in (0, None)
    assert "usage" in capsys.readouterr().out.lower()


def _jaxthyroid(*args, timeout=120):
    env = dict(os.environ, JAXTHYROID_NO_TQDM="1")
    return subprocess.run(
        [sys.executable, "-m", "jaxthyroid", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )


def test_unknown_config_key_is_a_one_line_error_with_exit_code_2():
    proc = _jaxthyroid("train", "--config", "cross_training_quick", "--config.x=1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxthyroid: error:") and "'x'" in lines[0]
    assert "Traceback" not in proc.stderr


def _one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jaxthyroid: error:"), err
    return err


def test_missing_run_dir_is_a_one_line_error(tmp_path, capsys):
    err = _one_line_error(capsys, ["evaluate", "--run", str(tmp_path / "nowhere")])
    assert "nowhere" in err and "config.json" in err


# -- on a finished tiny run (trained once per session, see test_cross_training) --------


def test_evaluate_json_matches_results(run_dir, capsys):
    assert cli.main(["evaluate", "--run", str(run_dir), "--which", "phase2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    results = json.loads((run_dir / "results.json").read_text())
    assert report["all"]["count"] == 32
    assert report["cross"]["exact_match"] == results["evaluations"]["phase2"]["cross"]["exact_match"]
    assert cli.main(["evaluate", "--run", str(run_dir), "--which", "plain"]) == 0
    out = capsys.readouterr().out
    steps = json.loads((run_dir / "plain" / "done.json").read_text())["steps"]
    assert f"| plain | {steps} |" in out and "recall" in out  # the steps column is filled


def test_evaluate_under_either_decision_rule(run_dir, capsys):
    results = json.loads((run_dir / "results.json").read_text())["evaluations"]["phase2"]
    for rule in ("set", "threshold"):
        assert cli.main(["evaluate", "--run", str(run_dir), "--decision", rule, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["decision"] == rule
        assert report["all"]["exact_match"] == results["all"][f"exact_match_{rule}"]


def test_predict_reads_16_bit_png_and_dicom(run_dir, tmp_path, capsys):
    from jaxthyroid.data import export, phantom_builder

    cfg = json.loads((run_dir / "config.json").read_text())
    test = phantom_builder.phantom_source(
        cfg["data"]["data_dir"],
        "test",
        size=64,
        n_train=48,
        n_val=16,
        n_test=32,
        cross_fraction=cfg["data"]["cross_fraction"],
        seed=cfg["seed"],
    )
    # The brightest test image (the phantom's count levels vary per image): values past 8 bits.
    counts = max((np.asarray(test[i]["image"])[..., 0] for i in range(len(test))), key=np.max)
    assert counts.max() > 255  # really 16 bit
    png, dcm = tmp_path / "scan.png", tmp_path / "scan.dcm"
    export.write_png16(png, counts)
    export.write_dicom(dcm, counts, finding_set_name="normal", patient_id="T1", pixel_spacing_mm=2.5)
    assert cli.main(["predict", "--run", str(run_dir), str(png), str(dcm), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    findings = json.loads((run_dir / "taxonomy.json").read_text())["findings"]
    assert [r["file"] for r in rows] == [str(png), str(dcm)]
    for r in rows:
        assert r["findings"] and set(r["findings"]) <= set(findings)
        assert set(r["probabilities"]) == set(findings)
        assert all(0.0 <= p <= 1.0 for p in r["probabilities"].values())
    # The same counts from both files: the same probabilities.
    a, b = (np.array(list(r["probabilities"].values())) for r in rows)
    # Identical inputs in one batch: only per-row vectorisation differs. Rounding through
    # the tiny run's resnet_tiny (8 and 16 channels: <= 10 weight layers, fan-in <= 3·3·16).
    np.testing.assert_allclose(a, b, **fp_tolerance(reduction_size=3 * 3 * 16, depth=10))
    assert cli.main(["predict", "--run", str(run_dir), str(png)]) == 0
    assert str(png) in capsys.readouterr().out


def test_checkpoint_of_another_architecture_is_a_one_line_error(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("tb"))
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["cross_source"] = "image"  # other cross_term parameters than the checkpoint's
    (other / "config.json").write_text(json.dumps(cfg))
    err = _one_line_error(capsys, ["evaluate", "--run", str(other), "--which", "phase2"])
    assert "does not fit" in err


def test_missing_image_is_a_one_line_error(run_dir, tmp_path, capsys):
    err = _one_line_error(capsys, ["predict", "--run", str(run_dir), str(tmp_path / "none.png")])
    assert "none.png" in err


def test_compile_cache_directory_from_the_environment(monkeypatch, tmp_path):
    from jaxthyroid import compile_cache

    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.cache_dir() is None and compile_cache.enable() is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(compile_cache.ENV)
    assert compile_cache.cache_dir() == compile_cache.DEFAULT_DIR.expanduser()
