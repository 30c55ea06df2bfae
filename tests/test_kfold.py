"""k-fold cross-validation: stratified folds, one run per fold, mean ± std (K=2 at tiny size)."""

import json

import numpy as np
import pytest

from jaxthyroid.data import sources


def test_folds_are_stratified_by_finding_set_and_seeded():
    rng = np.random.default_rng(3)
    set_ids = rng.integers(0, 7, size=203)
    folds = sources.stratified_folds(set_ids, 5, seed=1)
    assert set(folds.tolist()) == set(range(5))
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1, sizes
    for s in np.unique(set_ids):  # every finding set spread evenly over the folds
        counts = np.bincount(folds[set_ids == s], minlength=5)
        assert counts.max() - counts.min() <= 1, (s, counts)
    np.testing.assert_array_equal(folds, sources.stratified_folds(set_ids, 5, seed=1))
    assert not np.array_equal(folds, sources.stratified_folds(set_ids, 5, seed=2))
    with pytest.raises(ValueError, match="at least 2"):
        sources.stratified_folds(set_ids, 1)


def test_fold_split_partitions_train_and_validation():
    records = [{"finding_set": np.int64(i % 4), "id": i} for i in range(30)]
    train, validation = sources.ListSource(records[:22]), sources.ListSource(records[22:])
    seen = []
    for k in range(3):
        tr, va = sources.fold_split(train, validation, 3, k, seed=0)
        tr_ids = {tr[i]["id"] for i in range(len(tr))}
        va_ids = {va[i]["id"] for i in range(len(va))}
        assert not tr_ids & va_ids and tr_ids | va_ids == set(range(30))
        seen.extend(va_ids)
    assert sorted(seen) == list(range(30))  # every record validates in exactly one fold


def test_two_folds_end_to_end(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("grain")
    from jaxthyroid import cli, cross_training
    from jaxthyroid import config as config_lib
    from jaxthyroid.config import ConfigError

    tiny = [
        "model.name=resnet_tiny",
        "model.num_filters=0",
        "data.n_train=40",
        "data.n_val=16",
        "data.n_test=16",
        "data.batch_size=16",
        "data.eval_batch_size=16",
        "phase1.enabled=False",
        "phase2.enabled=False",
        "plain.steps=2",
        "plain.warmup_fraction=0.0",
        "eval_every_steps=2",
        "checkpoint_every_steps=0",
        f"data.data_dir={tmp_path / 'data'}",
        "folds=2",
    ]
    workdir = tmp_path / "kfold"
    assert cli.main(
        ["train", "--config", "cross_training_quick", f"--config.workdir={workdir}", *(f"--config.{o}" for o in tiny)]
    ) in (0, None)
    out = capsys.readouterr().out
    summary = json.loads((workdir / "kfold.json").read_text())
    assert summary["folds"] == 2 and len(summary["per_fold"]) == 2
    assert "mean ± std" in out and summary["table"] in out

    validation_sets = []
    for k in range(2):
        run = workdir / f"fold_{k}"
        assert json.loads((run / "config.json").read_text())["fold"] == k
        results = json.loads((run / "results.json").read_text())
        test_count = results["evaluations"]["plain"]["all"]["count"]
        assert test_count == 16  # the test split is the same, whole, in every fold
        assert (
            summary["per_fold"][k]["plain"]["exact_match_all"] == results["evaluations"]["plain"]["all"]["exact_match"]
        )
        cfg = config_lib.load_config("cross_training_quick", [*tiny, f"workdir={run}", f"fold={k}"])
        data = cross_training.load_data(cfg.data, seed=cfg.seed, folds=2, fold=k)
        assert len(data.train_real) + len(data.validation) == 56
        validation_sets.append({data.validation[i]["origin"] for i in range(len(data.validation))})
    assert not validation_sets[0] & validation_sets[1]

    values = np.asarray([f["plain"]["exact_match_all"] for f in summary["per_fold"]])
    assert summary["mean"]["plain"]["exact_match_all"] == pytest.approx(values.mean(), abs=1e-12)
    assert summary["std"]["plain"]["exact_match_all"] == pytest.approx(values.std(ddof=1), abs=1e-12)

    with pytest.raises(ConfigError, match="folds"):
        cross_training.validate(config_lib.load_config("cross_training_quick", ["folds=1"]))
