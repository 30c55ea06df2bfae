"""``jaxthyroid reproduce --config.classifier.folds=K``: the kfold stage on the tiny preset
(K = 2; one ablation, no baselines, no scarcity arms, to keep it short), its report
section and report.json entry, the folds' splits, and the config errors."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from subprocess_env import tiny_run_env

from jaxthyroid import config as config_lib
from jaxthyroid import kfold_report, reproduce

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDS = 2
SMALL = ["ablations=['no_gan']", "baselines=[]", "scarcity.per_set=[]"]


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("grain")
    tmp = tmp_path_factory.mktemp("reproduce_kfold")
    out = tmp / "out"
    overrides = [*SMALL, f"classifier.data.data_dir={tmp / 'data'}", f"classifier.folds={FOLDS}"]
    cmd = [sys.executable, "-m", "jaxthyroid", "reproduce", "--preset", "tiny", "--out", str(out)]
    cmd += [f"--config.{o}" for o in overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=tiny_run_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = reproduce.load_preset("tiny", overrides)
    return out, cfg, proc.stdout


def _section(md: str) -> list[str]:
    return md.split(f"## k-fold cross-validation ({FOLDS} folds)")[1].split("\n## ")[0].splitlines()


def test_report_has_the_per_fold_table_and_kfold_json(kfold_run):
    out, _, stdout = kfold_run
    assert f"[{len(reproduce.STAGES) + 1}/{len(reproduce.STAGES) + 1}] kfold: done" in stdout
    kf = json.loads((out / "report.json").read_text())["kfold"]
    assert kf["folds"] == FOLDS and len(kf["per_fold"]) == FOLDS
    assert kf["arms"] == {"full": "phase2", "plain": "plain"}
    rows = [line for line in _section((out / "report.md").read_text()) if line.startswith("| ")]
    for k, fold in enumerate(kf["per_fold"]):
        for arm, label in kfold_report.ARMS.items():
            row = next(r for r in rows if r.startswith(f"| {k} |") and f"| {label} |" in r)
            cells = [c.strip() for c in row.strip("|").split("|")]
            printed = [float(c) for c in cells[-len(kfold_report.COLUMNS) :]]
            expected = [fold[arm][m][0] for m in kfold_report.COLUMNS.values()]
            np.testing.assert_allclose(printed, expected, atol=5e-4)
    for arm in kfold_report.ARMS:  # mean and std over the folds, printed and in the JSON
        for metric in kfold_report.COLUMNS.values():
            values = [fold[arm][metric][0] for fold in kf["per_fold"]]
            assert kf["mean"][arm][metric][0] == pytest.approx(np.mean(values), abs=1e-12)
            assert kf["std"][arm][metric][0] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        row = next(r for r in rows if r.startswith("| mean ± std |") and f"| {kfold_report.ARMS[arm]} |" in r)
        test_all = kf["mean"][arm]["exact_match_all"][0], kf["std"][arm]["exact_match_all"][0]
        assert f"{test_all[0]:.3f} ± {test_all[1]:.3f}" in row
    diff = kf["per_fold"][0]["full − plain"]["exact_match_cross"][0]
    full, plain = kf["per_fold"][0]["full"]["exact_match_cross"][0], kf["per_fold"][0]["plain"]["exact_match_cross"][0]
    assert diff == pytest.approx(full - plain)
    # Compared arms are step-matched in every fold.
    assert kf["steps"]["full"] == kf["steps"]["plain"] and kf["steps"]["full"]["steps"][0] > 0


def test_folds_partition_train_and_validation_and_share_the_test_split(kfold_run):
    from jaxthyroid import cross_training

    out, cfg, _ = kfold_run
    d = cfg.classifier.data

    def origins(source):
        return [str(source[i]["origin"]) for i in range(len(source))]

    fixed = cross_training.load_data(d, seed=0)
    pool, test = origins(fixed.train_real) + origins(fixed.validation), origins(fixed.test)
    assert len(set(pool)) == len(pool) == d.n_train + d.n_val
    result = json.loads((out / "seed0" / "kfold" / "result.json").read_text())["result"]
    for arm in ("full", "plain"):
        validation_sets = []
        for k in range(FOLDS):
            run = out / "seed0" / "kfold" / arm / f"fold_{k}"
            rcfg = ml_config(run)
            assert (rcfg.folds, rcfg.fold, rcfg.seed) == (FOLDS, k, 0)
            data = cross_training.load_data(rcfg.data, seed=rcfg.seed, folds=rcfg.folds, fold=rcfg.fold)
            train, validation = set(origins(data.train_real)), set(origins(data.validation))
            assert not train & validation and train | validation == set(pool)
            assert origins(data.test) == test  # the same test split, in the same order, in every fold
            validation_sets.append(validation)
            results = json.loads((run / "results.json").read_text())
            phase = kfold_report_phase(arm)
            assert results["evaluations"][phase]["all"]["count"] == len(test)
            assert result["per_fold"][k]["images"] == {
                "train": len(train),
                "validation": len(validation),
                "test": len(test),
            }
            # The validation columns are the best round's, on the fold's validation split.
            best = max(results["histories"][phase], key=lambda h: h.get("val_exact_match", -1.0))
            assert result["per_fold"][k][arm]["val_exact_match_cross_best"] == pytest.approx(
                best["val_exact_match_cross"], nan_ok=True
            )
        assert not validation_sets[0] & validation_sets[1]
        assert set().union(*validation_sets) == set(pool)  # every record validates once
    # The full arm mixes the GAN images in; the control trains on real images only.
    assert ml_config(out / "seed0" / "kfold" / "full" / "fold_0").data.synthetic_dir
    assert not ml_config(out / "seed0" / "kfold" / "plain" / "fold_0").data.synthetic_dir


def test_other_stages_stay_on_the_fixed_split(kfold_run):
    out, _, _ = kfold_run
    for run in ("classifier/full", "classifier/plain", "ablations/no_gan"):
        c = ml_config(out / "seed0" / run)
        assert (c.folds, c.fold) == (0, -1), run
    assert "uses the fixed train/validation split" in "\n".join(_section((out / "report.md").read_text()))


def ml_config(run: pathlib.Path):
    import ml_collections

    return ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))


def kfold_report_phase(arm: str) -> str:
    return reproduce.KFOLD_ARMS[arm]


# -- configs (no training) ------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, match",
    [
        (["classifier.folds=1"], "classifier.folds=1: 0 .* or at least 2"),
        (["classifier.folds=-3"], "classifier.folds=-3"),
        (["classifier.folds=3", "classifier.fold=1"], "classifier.fold=1: reproduce runs every fold"),
        (["classifier.folds=500"], "cannot make that many folds"),
    ],
)
def test_bad_folds_are_config_errors_before_anything_is_written(tmp_path, overrides, match):
    out = tmp_path / "out"
    with pytest.raises(config_lib.ConfigError, match=match):
        reproduce.run("tiny", out=out, overrides=overrides)
    assert not out.exists()


def test_cli_names_the_key_in_one_line(tmp_path, capsys):
    from jaxthyroid import cli

    rc = cli.main(["reproduce", "--preset", "quick", "--out", str(tmp_path / "o"), "--config.classifier.folds=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "classifier.folds=1" in err[0], err


def test_folds_zero_leaves_the_pipeline_as_it_was():
    plain = reproduce.load_preset("tiny")
    folded = reproduce.load_preset("tiny", ["classifier.folds=3"])
    assert reproduce.stages(plain) == reproduce.STAGES
    assert reproduce.stages(folded) == (*reproduce.STAGES, "kfold")
    claims = [p[0] for p in reproduce.compared_pairs(plain)]
    assert "k-fold: full vs plain" not in claims
    assert [p[0] for p in reproduce.compared_pairs(folded)] == [*claims, "k-fold: full vs plain"]
    reproduce.check_step_matched(folded)
    # Every arm but the kfold stage's trains on the fixed split, whatever classifier.folds says.
    assert reproduce.classifier_config(folded, ROOT, 0).folds == 0
    assert reproduce.classifier_config(folded, ROOT, 0, folds=3).folds == 3
    with pytest.raises(config_lib.ConfigError, match="kfold"):
        reproduce.StageRunner(ROOT, ["kfold"])  # no kfold stage without folds


def test_several_seeds_get_one_block_each():
    rng = np.random.default_rng(0)

    def seed_result(seed):
        def arm():
            return {**{m: float(rng.uniform()) for m in kfold_report.COLUMNS.values()}, "steps": 4, "images_seen": 32}

        per_fold = [
            {"full": arm(), "plain": arm(), "images": {"train": 8, "validation": 4, "test": 6}} for _ in range(3)
        ]
        return {
            "kfold": {
                "folds": 3,
                "seed": seed,
                "arms": {"full": {"phase": "phase2"}, "plain": {"phase": "plain"}},
                "per_fold": per_fold,
            }
        }

    per_seed = [seed_result(0), seed_result(1)]
    numbers = {}
    md = "\n".join(kfold_report.section(reproduce.load_preset("tiny", ["classifier.folds=3"]), per_seed, numbers))
    kf = numbers["kfold"]
    for s, r in enumerate(per_seed):
        folds = r["kfold"]["per_fold"]
        for metric in kfold_report.COLUMNS.values():
            full = [f["full"][metric] for f in folds]
            diff = [f["full"][metric] - f["plain"][metric] for f in folds]
            assert kf["mean"]["full"][metric][s] == pytest.approx(np.mean(full))
            assert kf["std"]["full − plain"][metric][s] == pytest.approx(np.std(diff, ddof=1))
        assert md.count(f"| {s} | mean ± std |") == len(kfold_report.ARMS)
    assert kf["per_fold"][2]["images"]["test"] == [6, 6]
    assert kfold_report.section(None, [{"classifier": {}}], {}) == []  # no kfold stage: no section


def test_a_finished_kfold_of_another_k_is_not_reported_as_this_one(kfold_run):
    out, _, _ = kfold_run
    before = (out / "report.md").read_text()
    overrides = [*SMALL, f"classifier.data.data_dir={out.parent / 'data'}", f"classifier.folds={FOLDS + 1}"]
    with pytest.raises(config_lib.ConfigError, match=f"holds a {FOLDS}-fold run.*--force kfold"):
        reproduce.run("tiny", out=out, overrides=overrides)  # every stage finished: nothing trains
    assert (out / "report.md").read_text() == before
