"""Cross-training runs in worker processes (jaxthyroid.cross_training.pool): the same
numbers as in this process, a log per run, and the fallback to one process."""

import json
import os
import sys

import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

sys.path.insert(0, os.path.dirname(__file__))
from test_cross_training import ensure_tiny_run, tiny_config  # noqa: E402

from jaxthyroid import cross_training  # noqa: E402
from jaxthyroid.cross_training import pool  # noqa: E402


def test_two_workers_compute_what_this_process_computes(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "cross_training_tiny"
    reference, _ = ensure_tiny_run(base)  # trained in this process (shared with test_cross_training)
    configs = {}
    for name in ("a", "b"):
        c = tiny_config(base)  # the same data set, another workdir
        c.workdir = str(tmp_path_factory.mktemp("pool") / name)
        configs[name] = c
    results = pool.run_all(configs, processes=2)
    assert set(results) == {"a", "b"}
    for name, c in configs.items():
        workdir = results[name]["workdir"]
        assert workdir == c.workdir
        assert (os.path.getsize(os.path.join(workdir, pool.LOG_FILE))) > 0  # the worker's output went there
        for phase in cross_training.PHASES:
            got = open(os.path.join(workdir, phase, "metrics.jsonl")).read()
            want = (reference / phase / "metrics.jsonl").read_text()
            assert got == want, (name, phase)  # bit-identical: same programs, same data order
        saved = json.loads((reference / "results.json").read_text())
        assert results[name]["budgets"] == saved["budgets"]


def test_one_run_or_one_process_stays_in_this_process(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(pool, "summary", lambda c: seen.append(c) or {"workdir": c})
    assert pool.run_all({"x": "cfg-x"}, processes=2) == {"x": {"workdir": "cfg-x"}}
    assert pool.run_all({"x": "1", "y": "2"}, processes=1) == {"x": {"workdir": "1"}, "y": {"workdir": "2"}}
    assert seen == ["cfg-x", "1", "2"]
    assert pool.usable_processes(1) == 1 and pool.usable_processes(0) == 1
    assert pool.usable_processes(2) == 2  # a single-process CPU backend with >= 2 cores (the test machines)
