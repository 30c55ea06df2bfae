"""The accelerator path: `jaxthyroid reproduce` with neither TFDS nor grain importable.

The accelerator machines have JAX, flax, optax and orbax but no tensorflow_datasets or
grain. A subprocess whose import system refuses those (a meta-path finder, installed
before anything is imported) runs the tiny preset end to end: the phantom and the
generated images become array data sets (NumPy files), batches come from the NumPy
loader, and the report is written.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCKED = ("tensorflow_datasets", "grain")

# Runs in the subprocess: refuse the blocked packages, then the CLI.
PROGRAM = f"""
import sys

BLOCKED = {BLOCKED!r}


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, Refuse())
from jaxthyroid import cli

code = cli.main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("imported modules ok", flush=True)
sys.exit(code)
"""


def _env():
    env = dict(os.environ)
    # One device, and a low LLVM optimisation level: compiling is most of a tiny run
    # (what the compiled code computes does not change).
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_blocker_refuses_the_packages():
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM.replace("from jaxthyroid import cli", "import grain  # noqa")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "blocked by the test" in done.stderr, done.stderr[-2000:]


def test_tiny_reproduce_runs_without_tfds_or_grain(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-c",
        PROGRAM,
        "reproduce",
        "--preset",
        "tiny",
        "--out",
        str(out),
        f"--config.classifier.data.data_dir={tmp_path / 'data'}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200)
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, log
    assert "imported modules ok" in done.stdout, log

    report = json.loads((out / "report.json").read_text())
    assert report  # the report's numbers are read from the stages' results
    # The data sets are array data sets (no TFDS folder anywhere).
    assert list((tmp_path / "data").glob("thyroid_spect_phantom_arrays/*/arrays.json"))
    assert not list(tmp_path.rglob("dataset_info.json"))
    result = json.loads((out / "seed0" / "classifier" / "result.json").read_text())["result"]
    exact = result["evaluations"]["phase2"]["all"]["exact_match"]
    assert 0.0 <= exact <= 1.0 and np.isfinite(exact)
