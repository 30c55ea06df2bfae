"""Two-phase cross-training end to end on a tiny config (resnet_tiny, 64² phantom)."""

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerance import max_abs, network_tolerance

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from jaxthyroid import config as config_lib  # noqa: E402
from jaxthyroid import cross_training  # noqa: E402
from jaxthyroid.models import resnet  # noqa: E402

# 48 train images (~36 single-feature), batches of 16; phase 1 2 steps + phase 2 3
# steps (evaluated after steps 2 and 3: a short last round) = the control's 5.
# Batches are multiples of the 8 test devices (conftest).
TINY = [
    "model.name=resnet_tiny",
    "model.num_filters=0",
    "data.n_train=48",
    "data.n_val=16",
    "data.n_test=32",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "phase1.steps=2",
    "phase2.steps=3",
    "plain.steps=5",
    "phase1.warmup_fraction=0.0",
    "phase2.warmup_fraction=0.0",
    "plain.warmup_fraction=0.0",
    "eval_every_steps=2",
    "checkpoint_every_steps=0",
    "log_every=1",
]


def tiny_config(base: pathlib.Path, *extra: str):
    return config_lib.load_config(
        "cross_training_quick", [*TINY, f"workdir={base / 'run'}", f"data.data_dir={base / 'data'}", *extra]
    )


def ensure_tiny_run(base: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """The tiny run under ``base`` (trained once per pytest session, shared with test_cli)."""
    run_dir = base / "run"
    if not (run_dir / "results.json").exists():
        cross_training.run(tiny_config(base))
    return run_dir, json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return ensure_tiny_run(tmp_path_factory.getbasetemp() / "cross_training_tiny")


def test_run_writes_the_run_directory(tiny_run):
    run_dir, _ = tiny_run
    for name in (
        "config.json",
        "taxonomy.json",
        "results.json",
        "curves.png",
        "confusion_phase1.png",
        "confusion_phase2.png",
        "confusion_plain.png",
    ):
        assert (run_dir / name).is_file(), name
    for phase in cross_training.PHASES:
        d = run_dir / phase
        assert (d / "done.json").is_file() and (d / "metrics.jsonl").is_file(), phase
        assert list((d / "checkpoints" / "best").iterdir()), phase
        assert list((d / "tb").glob("events.out.tfevents.*")), phase
        events = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert {e["event"] for e in events} >= {"train", "eval"}
        assert all(e["phase"] == phase for e in events)


def test_results_hold_three_evaluations_with_metrics(tiny_run):
    _, results = tiny_run
    assert set(results["evaluations"]) == {"phase1", "phase2", "plain"}
    for ev in results["evaluations"].values():
        assert ev["all"]["count"] == 32
        assert ev["single"]["count"] + ev["cross"]["count"] == 32 and ev["cross"]["count"] > 0
        for subset in ("single", "cross", "all"):
            assert 0.0 <= ev[subset]["exact_match"] <= 1.0
            assert set(ev[subset]["macro"]) == {"recall", "precision", "specificity", "f1", "auc"}
            assert set(ev[subset]["per_finding"]) == set(
                json.loads((tiny_run[0] / "taxonomy.json").read_text())["findings"]
            )
        assert np.asarray(ev["confusion_matrix"]).sum() == 32
        assert ev["decision"] == "set"
        for rule in ("set", "threshold"):
            assert 0.0 <= ev["all"][f"exact_match_{rule}"] <= 1.0
        assert ev["all"]["exact_match"] == ev["all"]["exact_match_set"]
    # The set rule never predicts a combination outside the taxonomy ('other', last column).
    assert all(row[-1] == 0 for ev in results["evaluations"].values() for row in ev["confusion_matrix"])
    assert [h["step"] for h in results["histories"]["phase2"]] == [2, 3]
    assert [h["step"] for h in results["histories"]["phase1"]] == [2]
    assert set(results["histories"]["phase1"][0]) >= {
        "val_loss",
        "val_exact_match",
        "val_exact_match_set",
        "val_exact_match_threshold",
        "val_exact_match_single",
        "val_exact_match_cross",
    }
    budgets = results["budgets"]
    assert {p: b["steps"] for p, b in budgets.items()} == {"phase1": 2, "phase2": 3, "plain": 5}
    assert budgets["plain"]["images_seen"] == 5 * 16
    assert budgets["phase1"]["steps"] + budgets["phase2"]["steps"] == budgets["plain"]["steps"]


def test_graft_keeps_the_trained_phase1_function(tiny_run):
    run_dir, results = tiny_run
    cfg, taxonomy, plain_model, phase1 = cross_training.load_run(run_dir, "phase1")
    # Real trained weights: phase 1 moved them away from a fresh init.
    fresh = cross_training.init_variables(plain_model, jax.random.key(cfg.seed), cfg.data.size)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), phase1["params"], fresh["params"])
    assert max(jax.tree.leaves(moved)) > 1e-3
    cross_model = cross_training.build_model(cfg, cross=True, num_classes=taxonomy.num_findings)
    grafted = cross_training.graft(phase1, cross_model, size=cfg.data.size, key=jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (8, cfg.data.size, cfg.data.size, 1))
    a = cross_training.logits_fn(plain_model)(phase1, images)
    b = cross_training.logits_fn(cross_model)(grafted, images)
    # The zero cross terms add exactly 0; another program (the cross model's) may round
    # differently: a forward pass's bound at the scale of the logits.
    tol = network_tolerance(grafted["params"], scale=max_abs(a))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=tol["atol"])
    assert results["graft_check"]["max_abs_logit_diff"] <= tol["atol"]  # the run's own check, same bound
    # ... and phase 2 then trained the cross terms away from zero.
    _, _, _, phase2 = cross_training.load_run(run_dir, "phase2")
    expand = [
        np.abs(np.asarray(x)).max()
        for path, x in jax.tree_util.tree_flatten_with_path(phase2["params"])[0]
        if resnet.CROSS_TERM in jax.tree_util.keystr(path) and "expand" in jax.tree_util.keystr(path)
    ]
    assert expand and max(expand) > 0


def test_rerun_skips_finished_phases_and_finishes_an_unfinished_one(tiny_run):
    run_dir, results = tiny_run
    base = run_dir.parent
    lines = {p: (run_dir / p / "metrics.jsonl").read_text() for p in cross_training.PHASES}
    (run_dir / "plain" / "done.json").unlink()  # as if killed after its last checkpoint
    start = time.perf_counter()
    again = cross_training.run(tiny_config(base))
    assert (run_dir / "plain" / "done.json").is_file()
    for p in cross_training.PHASES:  # nothing retrained
        assert (run_dir / p / "metrics.jsonl").read_text() == lines[p], p
        assert again["histories"][p] == results["histories"][p]
        assert again["evaluations"][p]["all"]["exact_match"] == results["evaluations"][p]["all"]["exact_match"]
    assert time.perf_counter() - start < 60


def test_another_config_in_the_same_workdir_is_refused(tiny_run):
    run_dir, _ = tiny_run
    with pytest.raises(config_lib.ConfigError, match="phase2.steps"):
        cross_training.run(tiny_config(run_dir.parent, "phase2.steps=4"))


def test_budgets_in_steps_epochs_converted_up_front(tmp_path):
    cfg = tiny_config(tmp_path, "phase1.steps=0", "phase1.epochs=2.5", "phase2.warmup_fraction=0.05")
    # 36 real single-feature images in batches of 16: 2 steps a pass, 2.5 passes -> 5 steps.
    assert cross_training.phase_steps(cfg, "phase1", 36) == 5
    assert cross_training.phase_steps(cfg, "phase2", 36) == 3  # steps given: the images do not matter
    with pytest.raises(config_lib.ConfigError, match="phase1.*data set"):
        cross_training.budgets(cfg)  # epochs without data
    assert cross_training.warmup_steps(cfg, "phase2", 400) == 20
    assert cross_training.phase_steps(tiny_config(tmp_path, "phase1.epochs=1.0"), "phase1", 36) == 2  # epochs win
    with pytest.raises(config_lib.ConfigError, match="phase1.steps"):
        cross_training.phase_steps(tiny_config(tmp_path, "phase1.steps=0"), "phase1", 36)
    # Evaluation rounds cover the budget exactly, the last one possibly shorter.
    for total, every in ((5, 2), (900, 150), (7, 100), (1000, 300)):
        n, per = cross_training.rounds(total, every)
        assert (n - 1) * per < total <= n * per and per <= max(every, 1)


def test_phase1_cross_model_freezes_the_cross_terms(tmp_path):
    cfg = tiny_config(tmp_path, "phase1.model=cross")
    assert cross_training.phase_is_cross(cfg, "phase1")
    assert cross_training.phase_param_groups(cfg, "phase1")[0] == ("cross_term", "frozen")
    model = cross_training.build_model(cfg, cross=True, num_classes=6)
    params = cross_training.init_variables(model, jax.random.key(0), 64)["params"]
    tx = cross_training.make_tx(cfg, "phase1", 10)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    cross = [float(jnp.abs(u).max()) for p, u in flat if "cross_term" in jax.tree_util.keystr(p)]
    other = [float(jnp.abs(u).max()) for p, u in flat if "cross_term" not in jax.tree_util.keystr(p)]
    assert cross and max(cross) == 0.0
    assert max(other) > 0.0
    assert not cross_training.phase_is_cross(tiny_config(tmp_path), "phase1")  # default: plain
    with pytest.raises(config_lib.ConfigError, match="phase1.model"):
        cross_training.phase_is_cross(tiny_config(tmp_path, "phase1.model=other"), "phase1")
