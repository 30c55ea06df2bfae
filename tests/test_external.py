"""External validation: bootstrap intervals against closed forms, taxonomy mapping, the command."""

import json

import jax
import numpy as np
import pytest

from jaxthyroid import cli, external, metrics
from jaxthyroid import findings as findings_lib

TAX = findings_lib.DEFAULT


def _synthetic(n: int, seed: int = 0):
    """Labels of random finding sets and probabilities near them, rounded to 0.05 so
    the AUC has ties."""
    rng = np.random.default_rng(seed)
    labels = TAX.set_table[rng.integers(0, TAX.num_sets, n)]
    probs = np.clip(labels * 0.6 + rng.uniform(0, 0.5, labels.shape), 0, 1)
    return np.round(probs * 20) / 20, labels


def test_unit_weights_give_the_report():
    """With every image drawn once, the weighted counts are the report's counts."""
    probs, labels = _synthetic(300)
    cross = labels.sum(-1) >= 2
    preds = {r: findings_lib.predict(probs, decision=r, taxonomy=TAX) for r in findings_lib.DECISIONS}
    got = external.weighted_report(
        np.ones((1, len(labels))), probs, labels, preds, cross=cross, taxonomy=TAX, decision="set"
    )
    want = metrics.classification_report(probs, labels, subset=cross, taxonomy=TAX, decision="set")
    for subset in metrics.SUBSETS:
        for key in ("exact_match", "exact_match_set", "exact_match_threshold"):
            # Both are a count over the same count: one division each, float64.
            assert got[subset][key][0] == pytest.approx(want[subset][key], rel=4 * 2.0**-52)
        for m in metrics.MEASURES:
            assert got[subset]["macro"][m][0] == pytest.approx(want[subset]["macro"][m], rel=1e-12, nan_ok=True)
            for f in TAX.findings:
                # Sums of at most N = 300 integers and halves: exact in float64; AUC a rank
                # sum against a weighted tie count, one division each (relative 2 eps).
                assert got[subset]["per_finding"][f][m][0] == pytest.approx(
                    want[subset]["per_finding"][f][m], rel=1e-12, nan_ok=True
                )


def test_weighted_auc_of_a_duplicated_image_counts_it_twice():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positive = np.array([False, False, True, True])
    # Weights (1, 2, 1, 1): the pair lists are those of scores [0.1, 0.4, 0.4, 0.35, 0.8].
    got = external.weighted_auc(scores, positive, np.array([[1, 2, 1, 1]]))
    want = metrics.roc_auc(np.array([0.1, 0.4, 0.4, 0.35, 0.8]), np.array([0, 0, 0, 1, 1], bool))
    assert got[0] == pytest.approx(want, rel=1e-15)
    assert np.isnan(external.weighted_auc(scores, positive, np.array([[1, 1, 0, 0]]))[0])  # no positive drawn


def test_bootstrap_interval_of_exact_match_is_the_binomial_interval():
    """Exact match is a proportion: its bootstrap interval matches the Wilson interval.

    n = 400 images, 320 right. The bootstrap distribution is Binomial(400, 0.8)/400,
    whose 2.5/97.5 % quantiles differ from the Wilson bounds by O(1/n) skew terms
    (~0.004) and, with 2,000 replicates, by a Monte-Carlo error of
    sqrt(q (1 - q) / B) / density ~ 0.002: 0.02 is several times both."""
    n, right = 400, 320
    labels = np.zeros((n, TAX.num_findings))
    labels[:, 0] = 1  # all normal
    probs = np.where(labels > 0.5, 0.9, 0.05)
    probs[right:, 0], probs[right:, 1] = 0.05, 0.9  # the last 80 called graves
    iv = external.bootstrap_intervals(probs, labels, taxonomy=TAX, replicates=2000, seed=0)
    low, high = iv["all"]["exact_match"]
    w_low, w_high = external.wilson_interval(right, n)
    assert abs(low - w_low) < 0.02 and abs(high - w_high) < 0.02
    assert low < right / n < high
    # No cross-feature image is ever drawn: its metrics are undefined, not 0.
    assert np.isnan(iv["cross"]["exact_match"]).all()


def test_bootstrap_is_seeded_and_does_not_depend_on_chunking(monkeypatch):
    probs, labels = _synthetic(50, seed=1)
    a = external.bootstrap_intervals(probs, labels, taxonomy=TAX, replicates=30, seed=3)
    monkeypatch.setattr(external, "CHUNK_ENTRIES", 7 * 50)  # 7 replicates per chunk
    b = external.bootstrap_intervals(probs, labels, taxonomy=TAX, replicates=30, seed=3)
    c = external.bootstrap_intervals(probs, labels, taxonomy=TAX, replicates=30, seed=4)
    leaves = lambda t: jax.tree.leaves(t)  # noqa: E731
    np.testing.assert_array_equal(leaves(a), leaves(b))  # same draws, same arithmetic per replicate
    assert leaves(a) != leaves(c)
    counts = external.bootstrap_counts(50, 30, seed=3)
    assert counts.shape == (30, 50) and (counts.sum(1) == 50).all()


def test_a_finding_the_run_does_not_know_is_named_and_can_be_mapped():
    data = findings_lib.Taxonomy.from_folder_names(["normal", "toxic_adenoma", "graves+toxic_adenoma"])
    with pytest.raises(external.ExternalDataError, match="toxic_adenoma.*--map"):
        external.map_taxonomy(data, TAX)
    table, names = external.map_taxonomy(data, TAX, {"toxic_adenoma": "hot_nodule"})
    assert names == ["normal", "hot_nodule", "graves+hot_nodule"]
    np.testing.assert_array_equal(table[2], TAX.encode(("graves", "hot_nodule")))
    with pytest.raises(external.ExternalDataError, match="adenoma"):
        external.map_taxonomy(data, TAX, external.parse_renames(["adenoma=hot_nodule"]))


def test_a_data_set_beside_the_runs_own_defaults_to_its_test_split(tmp_path):
    """Only a set that cannot hold the run's training images is scored whole by default."""
    import ml_collections

    phantom_run = ml_collections.ConfigDict({"data": {"source": "phantom", "data_dir": str(tmp_path / "d")}})
    phantom_set = tmp_path / "d" / external.PHANTOM_DATASET_NAME / "x" / "1.0.0"
    assert external._may_hold_training_images(phantom_run, str(phantom_set))
    # A folder set built into the same data_dir (`data build folder`'s default) is external.
    assert not external._may_hold_training_images(phantom_run, str(tmp_path / "d" / "thyroid_folder" / "x" / "1.0.0"))
    assert not external._may_hold_training_images(phantom_run, str(tmp_path / "elsewhere" / "1.0.0"))
    folder_run = ml_collections.ConfigDict({"data": {"source": "folder", "dataset_dir": str(tmp_path / "mine")}})
    assert external._may_hold_training_images(folder_run, str(tmp_path / "mine"))
    assert not external._may_hold_training_images(folder_run, str(tmp_path / "theirs"))
    tfds_builder = pytest.importorskip("jaxthyroid.data.phantom_builder")
    assert external.PHANTOM_DATASET_NAME == tfds_builder.NAME


# -- on a finished tiny run (trained once per session, see test_cross_training) --------


def test_evaluate_on_a_simulated_folder_data_set(run_dir, tmp_path, capsys):
    """`jaxthyroid simulate` -> `data build folder` -> `evaluate --data`: every image
    scored, intervals, the confusion PNG; a renamed finding needs --map."""
    sim, data_dir = tmp_path / "sim", tmp_path / "data"
    assert cli.main(["simulate", "--n", "24", "--size", "64", "--out", str(sim), "--seed", "5"]) == 0
    assert cli.main(["data", "build", "folder", str(sim / "png"), "--data-dir", str(data_dir), "--size", "64"]) == 0
    built = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if "data set ready" in line][0]

    out = tmp_path / "eval"
    args = ["evaluate", "--run", str(run_dir), "--data", built, "--bootstrap", "200", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "exact match" in printed and "[" in printed
    result = json.loads((out / "evaluation.json").read_text())
    assert result["all"]["count"] == 24  # all splits of an external set
    assert np.asarray(result["confusion_matrix"]).sum() == 24
    low, high = result["intervals"]["all"]["exact_match"]
    assert low <= result["all"]["exact_match"] <= high and result["intervals"]["replicates"] == 200
    assert (out / "confusion.png").stat().st_size > 0 and (out / "evaluation.md").is_file()

    # The same images under another name for hot nodules.
    renamed = tmp_path / "renamed"
    for folder in (sim / "png").iterdir():
        target = renamed / folder.name.replace("hot_nodule", "toxic_adenoma")
        target.mkdir(parents=True)
        for f in folder.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
    build = ["data", "build", "folder", str(renamed), "--data-dir", str(data_dir), "--size", "64"]
    assert cli.main([*build, "--taxonomy-from-folders"]) == 0
    built2 = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if "data set ready" in line][0]
    assert cli.main(["evaluate", "--run", str(run_dir), "--data", built2, "--bootstrap", "0", "--json"]) == 2
    assert "toxic_adenoma" in capsys.readouterr().err
    mapped = ["evaluate", "--run", str(run_dir), "--data", built2, "--map", "toxic_adenoma=hot_nodule"]
    assert cli.main([*mapped, "--bootstrap", "0", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["all"]["exact_match"] == result["all"]["exact_match"]  # same images, same labels
    assert "intervals" not in again


def test_evaluate_on_a_phantom_config_with_another_seed(run_dir, tmp_path, capsys):
    """--data CONFIG builds its phantom set (here: another seed, 16 test images) and
    scores its test split; overrides apply to that config."""
    overrides = [
        f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.seed=11",
        "--config.data.n_train=12",
        "--config.data.n_val=12",
        "--config.data.n_test=16",
    ]
    args = ["evaluate", "--run", str(run_dir), "--data", "cross_training_quick", "--bootstrap", "50", "--json"]
    assert cli.main([*args, *overrides]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["all"]["count"] == 16 and "seed 11" in result["dataset"] and "(test)" in result["dataset"]
    assert result["intervals"]["replicates"] == 50
    # Overrides without --data are refused: they would silently do nothing.
    assert cli.main(["evaluate", "--run", str(run_dir), "--config.seed=3"]) == 2
    assert "--data" in capsys.readouterr().err
