"""The "k-fold cross-validation" section of a reproduce report (``classifier.folds = K``).

Reads the ``kfold`` stage's result of every seed (:func:`jaxthyroid.reproduce._stage_kfold`):
per fold and arm, exact match on the fixed test split and on the fold's validation
split (the best round, which picked the checkpoint); mean ± sample std over the folds
(:func:`jaxthyroid.cross_training.kfold.summarise`), and the same for the per-fold
difference full − plain. The std describes the spread over partitions of one data set:
the folds share most of their training images, so it is no interval and no claim is
made from it (claims are over seeds).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxthyroid import report

ARMS = {"full": "full method (phase 1 + phase 2)", "plain": "plain control", "full − plain": "full − plain"}
# Column -> the fold metric (jaxthyroid.cross_training.kfold.fold_metrics).
COLUMNS = {
    "test single": "exact_match_single",
    "test cross": "exact_match_cross",
    "test all": "exact_match_all",
    "validation single": "val_exact_match_single_best",
    "validation cross": "val_exact_match_cross_best",
    "validation all": "val_exact_match_best",
}


def fold_rows(seed_kfold: dict) -> list[dict[str, dict[str, float]]]:
    """``[{arm: {metric: value}}]`` per fold of one seed, with the difference full − plain."""
    out = []
    for fold in seed_kfold["per_fold"]:
        row = {arm: {m: float(fold[arm][m]) for m in COLUMNS.values()} for arm in ("full", "plain")}
        row["full − plain"] = {m: row["full"][m] - row["plain"][m] for m in COLUMNS.values()}
        out.append(row)
    return out


def numbers_of(per_seed: Sequence[dict]) -> dict:
    """``report.json``'s ``kfold``: every value a list over seeds, as in the rest of the file.

    ``per_fold[k][arm][metric]``, ``per_fold[k]['images']``, ``mean[arm][metric]`` and
    ``std[arm][metric]`` (sample std over the folds), ``steps[arm]``.
    """
    from jaxthyroid.cross_training import kfold

    runs = [r["kfold"] for r in per_seed]
    k = runs[0]["folds"]
    rows = [fold_rows(run) for run in runs]
    summaries = [kfold.summarise(r) for r in rows]
    per_fold = []
    for fold in range(k):
        entry = {arm: {m: [r[fold][arm][m] for r in rows] for m in COLUMNS.values()} for arm in ARMS}
        entry["images"] = {
            s: [run["per_fold"][fold]["images"][s] for run in runs] for s in ("train", "validation", "test")
        }
        per_fold.append(entry)
    return {
        "folds": k,
        "arms": {arm: runs[0]["arms"][arm]["phase"] for arm in ("full", "plain")},
        "per_fold": per_fold,
        "mean": {arm: {m: [s["mean"][arm][m] for s in summaries] for m in COLUMNS.values()} for arm in ARMS},
        "std": {arm: {m: [s["std"][arm][m] for s in summaries] for m in COLUMNS.values()} for arm in ARMS},
        "steps": {
            arm: {
                "steps": [run["per_fold"][0][arm]["steps"] for run in runs],
                "images_seen": [run["per_fold"][0][arm]["images_seen"] for run in runs],
            }
            for arm in ("full", "plain")
        },
    }


def table(per_seed: Sequence[dict], numbers: dict) -> str:
    """Markdown: one row per (seed,) fold and arm, then mean ± std over the folds per arm."""
    seeds = len(per_seed)
    rows = []
    for s, run in enumerate(per_seed):
        seed_col = {"seed": str(run["kfold"]["seed"])} if seeds > 1 else {}
        for k, fold in enumerate(run["kfold"]["per_fold"]):
            images = fold["images"]
            for arm in ARMS:
                values = numbers["per_fold"][k][arm]
                sign = "+" if arm == "full − plain" else ""
                cells = {c: f"{values[m][s]:{sign}.3f}" for c, m in COLUMNS.items()}
                steps = f"{fold[arm]['steps']} / {fold[arm]['images_seen']}" if arm in fold else ""
                rows.append(
                    {
                        **seed_col,
                        "fold": str(k),
                        "train / validation / test": f"{images['train']} / {images['validation']} / {images['test']}",
                        "arm": ARMS[arm],
                        "steps / images seen": steps,
                        **cells,
                    }
                )
        for arm in ARMS:
            mean, std = numbers["mean"][arm], numbers["std"][arm]
            sign = "+" if arm == "full − plain" else ""
            cells = {c: f"{mean[m][s]:{sign}.3f} ± {std[m][s]:.3f}" for c, m in COLUMNS.items()}
            rows.append(
                {
                    **seed_col,
                    "fold": "mean ± std",
                    "train / validation / test": "",
                    "arm": ARMS[arm],
                    "steps / images seen": "",
                    **cells,
                }
            )
    head = (["seed"] if seeds > 1 else []) + ["fold", "train / validation / test", "arm", "steps / images seen"]
    return report.markdown_table(rows, [*head, *COLUMNS])


def section(cfg, per_seed: Sequence[dict], numbers: dict) -> list[str]:
    """The section's Markdown lines; fills ``numbers['kfold']``. Nothing without a kfold stage."""
    if not per_seed or any("kfold" not in r for r in per_seed):
        return []
    numbers["kfold"] = kf = numbers_of(per_seed)
    md = [f"## k-fold cross-validation ({kf['folds']} folds)\n"]
    md.append(
        f"The training and validation images of each seed's phantom are cut into {kf['folds']} folds stratified by "
        "finding set (seeded by the seed); fold k validates (its best round picks the checkpoint) and the other "
        "folds train; every fold is scored on the same, fixed test split. Each fold trains the full method "
        "(phase 1 + phase 2, real + GAN images) and the plain control (real images only), step-matched as in "
        '"Training budgets"; the data, GAN and synthetic stages are shared by the folds. Exact match under the '
        f"`{cfg.classifier.decision}` rule on single-, cross-feature and all images; validation: the fold's "
        "validation split at the best round. std: the sample standard deviation over the folds — the folds share "
        "most of their training images, so it is the spread over partitions, not an interval, and no claim rests "
        "on it. Every other section of this report (final model, calibration, localisation, ablations, "
        "baselines, scarcity) uses the fixed train/validation split, not the folds.\n"
    )
    md.append(table(per_seed, kf))
    md.append("")
    return md
