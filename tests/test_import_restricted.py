"""The accelerator path: `jaxthyroid reproduce` with neither TFDS nor grain importable.

The accelerator machines have JAX, flax, optax and orbax but no tensorflow_datasets or
grain. A subprocess whose import system refuses those (a meta-path finder, installed
before anything is imported) runs the tiny preset end to end: the phantom and the
generated images become array data sets (NumPy files), batches come from the NumPy
loader, and the report is written.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
from subprocess_env import tiny_run_env

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


def test_blocker_refuses_the_packages():
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM.replace("from jaxthyroid import cli", "import grain  # noqa")],
        cwd=ROOT,
        env=tiny_run_env(),
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
        # Every stage, fewer arms (test_reproduce runs them all with TFDS and grain).
        '--config.ablations=["no_gan"]',
        "--config.baselines=[]",
        "--config.scarcity.per_set=[]",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=tiny_run_env(), capture_output=True, text=True, timeout=1200)
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


# --------------------------------------------------------------------------- the NumPy pieces, in process
def _records(n=23, size=8):
    from jaxthyroid import findings as findings_lib
    from jaxthyroid.data import arrays

    rng = np.random.default_rng(0)
    ids = rng.integers(0, findings_lib.DEFAULT.num_sets, n)
    counts = rng.poisson(20.0, (n, size, size, 1)).astype(np.uint16)
    return arrays.records_of(counts, ids, findings_lib.DEFAULT, origin=lambda i: f"t/{i}", synthetic=False)


def test_array_dataset_round_trips_through_load_source(tmp_path):
    from jaxthyroid import findings as findings_lib
    from jaxthyroid.data import arrays, features

    fields = _records()
    folder = arrays.write_dataset(tmp_path / "set", {"train": fields}, findings_lib.DEFAULT)
    assert features.is_built(folder) and features.load_taxonomy(folder) == findings_lib.DEFAULT
    source = features.load_source(folder, "train")
    assert len(source) == 23
    record = source[5]
    np.testing.assert_array_equal(record["image"], fields["image"][5])
    assert int(record["finding_set"]) == int(fields["finding_set"][5]) and record["origin"] == b"t/5"


def test_numpy_loader_is_seeded_sharded_and_resumable():
    from jaxthyroid.data import pipeline, sources, transforms

    fields = _records()
    source = sources.ListSource([{k: v[i] for k, v in fields.items()} for i in range(23)])
    kw = dict(batch_size=4, seed=3, shuffle=True, num_epochs=2, augment=transforms.AugmentConfig())
    one = pipeline.NumpyLoader(source, shard_index=0, shard_count=1, drop_remainder=True, **kw)
    batches = list(iter(one))
    assert len(batches) == 46 // 4  # two passes as one stream, the short last batch dropped
    again = list(iter(pipeline.NumpyLoader(source, shard_index=0, shard_count=1, drop_remainder=True, **kw)))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    # Two shards: block k of each global batch of 8, the same rows (and augmentation) as one process.
    kw2 = {**kw, "batch_size": 2}
    shards = [
        list(iter(pipeline.NumpyLoader(source, shard_index=k, shard_count=2, drop_remainder=True, **kw2)))
        for k in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(batches)
    for j in range(len(shards[0])):
        glued = np.concatenate([shards[0][j]["image"], shards[1][j]["image"]])
        np.testing.assert_array_equal(glued, batches[j]["image"])
    # get_state / set_state resume exactly.
    it = iter(one)
    next(it), next(it)
    state = it.get_state()
    rest = [b["image"] for b in it]
    it2 = iter(one)
    it2.set_state(state)
    for a, b in zip(rest, (b["image"] for b in it2)):
        np.testing.assert_array_equal(a, b)
