"""Smoke tests of the benchmark suite: tiny shapes, a few steps, output format only.

Both run in subprocesses with JAX's persistent compilation cache on, in the tests'
cache directory (conftest; the simulator takes 35-90 s to compile on the shared 2-core
CPU; the second test and later runs reuse the programs).
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROW_KEYS = {
    "case",
    "impl",
    "dtype",
    "devices",
    "batch",
    "size",
    "compile_s",
    "step_ms",
    "images_per_s",
    "gflop_per_step",
    "gflops",
    "matmul_pct",
    "peak_mb",
    "steps",
}

# Makes the named packages unimportable, as on the GPU machines.
BLOCKER = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow_datasets', 'tensorflow', 'grain', 'tqdm', 'torch'):
            raise ImportError(f'{name} is blocked (not on the GPU machines)')
        return None
sys.meta_path.insert(0, Block())
sys.argv = ['benchmarks/gpu_check.py'] + sys.argv[1:]
runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')
"""


def _env():
    # The cache directory is conftest's (JAX_COMPILATION_CACHE_DIR, inherited).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one host device: the quick run measures 1 device only
    return env


def test_run_quick_writes_table_and_json(tmp_path):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--only",
            "phantom,resnet_tiny",
            "--no-torch",
            "--compile-cache",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert {"environment", "matmul_ceiling", "rows", "ratios", "steps"} <= set(result)
    assert result["matmul_ceiling"]["gflops"] > 0
    rows = {r["case"]: r for r in result["rows"]}
    assert set(rows) == {"phantom", "resnet_tiny"}
    for row in rows.values():
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["images_per_s"] > 0 and row["step_ms"] > 0 and row["steps"] == 3
        assert row["gflop_per_step"] > 0 and row["peak_mb"] > 0
    table = out_md.read_text()
    assert "| case | impl |" in table and "resnet_tiny" in table and "phantom" in table
    assert "| case | impl |" in proc.stdout


def test_gpu_check_cpu_smoke_without_tfds_or_grain(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, "--cpu-smoke", "--compile-cache", "--out", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["forbidden_imports"] == []
    assert {(r["case"], r["dtype"]) for r in result["rows"]} == {
        ("phantom", "fp32"),
        ("resnet_tiny", "bf16"),
        ("resnet_tiny", "fp32"),
    }
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    assert (tmp_path / "gpu_check.md").read_text().startswith("Benchmarks")


def test_forbidden_import_guard_sees_a_module(monkeypatch):
    from benchmarks import gpu_check

    monkeypatch.setitem(sys.modules, "grain.python", object())
    assert "grain.python" in gpu_check.forbidden_imports()
    assert "jax" not in gpu_check.forbidden_imports()
