"""External validation: a finished run scored on another data set, every metric with a
bootstrap 95 % interval.

The data set is one built by ``jaxthyroid data build folder`` (any taxonomy: its
findings are matched to the run's by name, after optional renames such as
``toxic_adenoma=hot_nodule``; a finding the run does not know is an error naming it),
a config file whose ``data`` section describes one (a phantom set with another seed or
size, or a folder set), or — with no data set given — the run's own test split.

The tables are the report's (:func:`jaxthyroid.metrics.classification_report`: per
finding, macro, exact match on single-feature, cross-feature and all images) and a
confusion matrix over finding sets. Each number gets a percentile bootstrap interval
(Efron & Tibshirani 1993, §13.3): the images are resampled with replacement ``B``
times; replicate ``b`` is a count vector ``w_b`` ``[N]`` (how often each image was
drawn), so every metric is a weighted count —

    TP_b = sum_i w_bi [pred_i and true_i]     exact_b = sum_i w_bi [pred_i == label_i] / sum_i w_bi
    AUC_b = sum_{i pos, j neg} w_bi w_bj ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg)

— computed for all ``B`` replicates at once with matrix products (NumPy), and the
interval is the 2.5th and 97.5th percentiles of the replicates where the metric is
defined. A subset's metrics use the resampled images that fall in it.

Size (over ~400 lines, on purpose): one command's chain (open and map a data set, score,
bootstrap, write tables), each step a short function used only here; the bootstrap
helpers could move to :mod:`jaxthyroid.metrics` if another command needs them.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import metrics as metrics_lib

SPLITS = ("test", "validation", "train", "all")
# Replicates per chunk of the bootstrap are chosen so a chunk's [B, N] count matrix
# stays near this many entries (memory stays ~100 MB whatever N is).
CHUNK_ENTRIES = 4_000_000


# jaxthyroid.data.phantom_builder.NAME (not imported: it needs TFDS): the folder of the
# phantom data sets under a data_dir.
PHANTOM_DATASET_NAME = "thyroid_spect_phantom"


class ExternalDataError(ValueError):
    """A data set the run cannot be scored on (unknown finding, other image size, bad path)."""


# ----------------------------------------------------------------------------- bootstrap
def bootstrap_counts(n: int, replicates: int, *, seed: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Counts ``[stop - start, n]`` (int): how often each of ``n`` images is drawn in
    replicates ``start .. stop - 1`` of a seeded bootstrap (``n`` draws with replacement
    each). Replicate ``b`` depends only on ``(seed, b)``, so chunking does not change it."""
    stop = replicates if stop is None else stop
    out = np.empty((stop - start, n), np.int64)
    for row, b in enumerate(range(start, stop)):
        draws = np.random.default_rng([seed, b]).integers(0, n, n)
        out[row] = np.bincount(draws, minlength=n)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC ``[B]`` of ``scores [N]`` for boolean ``positive [N]`` under image weights
    ``[B, N]`` (Mann-Whitney, ties 1/2); NaN where a class has zero weight. With all
    weights 1 it is :func:`jaxthyroid.metrics.roc_auc`."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    order = np.argsort(scores, kind="mergesort")
    s, pos = scores[order], positive[order]
    w = np.asarray(weights, np.float64)[:, order]
    w_pos, w_neg = w * pos, w * ~pos
    # Negative weight strictly below each score, and within its group of ties.
    cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w_neg, axis=1)], axis=1)
    first = np.searchsorted(s, s, side="left")
    last = np.searchsorted(s, s, side="right")
    below = cum[:, first]
    tied = cum[:, last] - below
    numerator = (w_pos * (below + 0.5 * tied)).sum(1)
    return _ratio(numerator, w_pos.sum(1) * w_neg.sum(1))


def weighted_report(
    weights: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    preds: Mapping[str, np.ndarray],
    *,
    cross: np.ndarray,
    taxonomy: findings_lib.Taxonomy,
    decision: str,
) -> dict:
    """The report's numbers under image weights ``[B, N]``: ``{subset: {'exact_match',
    'exact_match_<rule>', 'per_finding': {finding: {measure}}, 'macro': {measure}}}``,
    each an array ``[B]`` (NaN where undefined). ``preds`` maps each decision rule to
    its multi-hot prediction ``[N, F]``; ``decision`` picks the one behind the
    per-finding metrics and ``exact_match``."""
    weights = np.asarray(weights, np.float64)
    true = np.asarray(labels) > 0.5
    preds = {rule: np.asarray(p) > 0.5 for rule, p in preds.items()}
    masks = {"single": ~cross, "cross": cross, "all": np.ones(len(true), bool)}
    out = {}
    for name, m in masks.items():
        w = weights[:, m]
        total = w.sum(1)
        exact = {rule: _ratio(w @ np.all(p[m] == true[m], axis=1), total) for rule, p in preds.items()}
        pred, t = preds[decision][m], true[m]
        tp, fp = w @ (pred & t), w @ (pred & ~t)  # [B, F]
        fn, tn = w @ (~pred & t), w @ (~pred & ~t)
        measures = {
            "recall": _ratio(tp, tp + fn),
            "precision": _ratio(tp, tp + fp),
            "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "auc": np.stack([weighted_auc(probs[m, f], t[:, f], w) for f in range(t.shape[1])], axis=1),
        }
        with np.errstate(invalid="ignore"), _quiet_nanmean():
            macro = {k: np.nanmean(v, axis=1) for k, v in measures.items()}
        out[name] = {
            "exact_match": exact[decision],
            **{f"exact_match_{rule}": v for rule, v in exact.items()},
            "per_finding": {f: {k: v[:, i] for k, v in measures.items()} for i, f in enumerate(taxonomy.findings)},
            "macro": macro,
        }
    return out


class _quiet_nanmean:
    """Silences NumPy's 'mean of empty slice' (an all-NaN row is NaN, as intended)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def bootstrap_intervals(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    taxonomy: findings_lib.Taxonomy,
    subset: np.ndarray | None = None,
    decision: str = "set",
    replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals of every number of
    :func:`jaxthyroid.metrics.classification_report` (same nesting; each leaf ``[low,
    high]``, NaN where the metric is undefined in every replicate), plus
    ``{'replicates', 'seed', 'confidence'}``.

    ``probs``/``labels`` ``[N, F]``; ``subset`` ``[N]`` marks cross-feature images (None:
    two or more findings in the label).
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    cross = (labels > 0.5).sum(-1) >= 2 if subset is None else np.asarray(subset).astype(bool)
    preds = {rule: findings_lib.predict(probs, decision=rule, taxonomy=taxonomy) for rule in findings_lib.DECISIONS}
    n = len(labels)
    chunk = max(1, CHUNK_ENTRIES // max(n, 1))
    parts = []
    for start in range(0, replicates, chunk):
        stop = min(start + chunk, replicates)
        w = bootstrap_counts(n, replicates, seed=seed, start=start, stop=stop)
        parts.append(weighted_report(w, probs, labels, preds, cross=cross, taxonomy=taxonomy, decision=decision))
    import jax  # tree utilities only

    values = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
    q = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]

    def interval(v):
        v = v[~np.isnan(v)]
        return [float(x) for x in np.percentile(v, q)] if v.size else [float("nan")] * 2

    out = jax.tree.map(interval, values)
    out.update(replicates=int(replicates), seed=int(seed), confidence=float(confidence))
    return out


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (for checking the bootstrap)."""
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Clamped: at p = 0 or 1 the bound is 0 or 1 exactly, up to one rounding.
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


# ----------------------------------------------------------------------------- taxonomy mapping
def parse_renames(pairs: Sequence[str]) -> dict[str, str]:
    """``["toxic_adenoma=hot_nodule", ...]`` -> ``{"toxic_adenoma": "hot_nodule", ...}``."""
    out = {}
    for pair in pairs or ():
        name, sep, target = pair.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ExternalDataError(f"--map takes DATA_FINDING=RUN_FINDING, not {pair!r}")
        out[name.strip()] = target.strip()
    return out


def map_taxonomy(
    data_taxonomy: findings_lib.Taxonomy, run_taxonomy: findings_lib.Taxonomy, renames: Mapping[str, str] = {}
) -> tuple[np.ndarray, list[str]]:
    """Each finding set of the data set as the run's multi-hot label: ``[data sets, run F]``,
    and the run's names of the data set's finding sets (``graves+hot_nodule``).

    Findings are matched by name after ``renames`` (data name -> run name; several data
    findings may map to one run finding). A finding the run does not know raises
    :class:`ExternalDataError` naming every such finding and the run's findings.
    """
    unknown_renames = sorted(set(renames) - set(data_taxonomy.findings))
    if unknown_renames:
        raise ExternalDataError(
            f"--map names {', '.join(unknown_renames)}, not findings of the data set "
            f"({', '.join(data_taxonomy.findings)})"
        )
    mapped = {f: renames.get(f, f) for f in data_taxonomy.findings}
    unknown = sorted({f for f, g in mapped.items() if g not in run_taxonomy.findings})
    if unknown:
        shown = ", ".join(f if mapped[f] == f else f"{f} (-> {mapped[f]})" for f in unknown)
        raise ExternalDataError(
            f"the data set has findings the run does not know: {shown}. The run's findings: "
            f"{', '.join(run_taxonomy.findings)}. Map them with --map DATA_FINDING=RUN_FINDING, or leave "
            "those images out of the data set"
        )
    table = np.zeros((data_taxonomy.num_sets, run_taxonomy.num_findings), np.float32)
    names = []
    for s, finding_set in enumerate(data_taxonomy.finding_sets):
        run_set = run_taxonomy.canonical(mapped[f] for f in finding_set)
        table[s] = run_taxonomy.encode(run_set)
        names.append(findings_lib.SEPARATOR.join(run_set))
    return table, names


# ----------------------------------------------------------------------------- data sets
def _is_built(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_info.json"))


def _source_of_splits(dataset_dir: str, split: str):
    from jaxthyroid.data import features, sources

    if split != "all":
        return features.load_source(dataset_dir, split)
    import tensorflow_datasets as tfds

    names = [s for s in ("train", "validation", "test") if s in tfds.builder_from_directory(dataset_dir).info.splits]
    return sources.ConcatSource([features.load_source(dataset_dir, s) for s in names])


def _may_hold_training_images(run_cfg, dataset_dir: str) -> bool:
    """Whether ``dataset_dir`` is the run's own data set, or a phantom set beside it
    (``<data.data_dir>/<phantom set name>/...``): its train split may then be the run's."""
    path = os.path.realpath(dataset_dir)
    if run_cfg.data.source == "folder":
        return path == os.path.realpath(run_cfg.data.dataset_dir)
    phantom_sets = os.path.join(os.path.realpath(run_cfg.data.data_dir), PHANTOM_DATASET_NAME)
    return path.startswith(phantom_sets + os.sep)


def open_dataset(run_cfg, data: str | None, *, split: str | None = None, overrides: Sequence[str] = ()):
    """``(source, taxonomy, description)`` of the images to score.

    ``data``: None (the run's own data set), a built data set folder, or a config file
    or name whose ``data`` section names one (``overrides`` apply to it). ``split``
    None: ``test`` for the run's own data set, a phantom set in the run's data folder
    and a config (their other splits may be the run's training images), every image
    (``all``) for another built data set.
    """
    from jaxthyroid import cross_training
    from jaxthyroid.data import features

    if split is not None and split not in SPLITS:
        raise ExternalDataError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    if data is None:
        d = cross_training.load_data(run_cfg.data, seed=run_cfg.seed)
        if split not in (None, "test"):
            raise ExternalDataError("without --data only the run's test split is scored (its other splits trained it)")
        return d.test, d.taxonomy, "the run's own test split"
    if os.path.isdir(data):
        if not _is_built(data):
            hint = (
                f"build it first: jaxthyroid data build folder {data} --size {run_cfg.data.size}"
                if any(os.path.isdir(os.path.join(data, d)) for d in os.listdir(data))
                else "give the folder `jaxthyroid data build folder` printed"
            )
            raise ExternalDataError(f"{data} is not a built data set (no dataset_info.json); {hint}")
        split = split or ("test" if _may_hold_training_images(run_cfg, data) else "all")
        return _source_of_splits(data, split), features.load_taxonomy(data), f"{data} ({split})"
    from jaxthyroid import config as config_lib

    cfg = config_lib.load_config(data, overrides)
    d = cross_training.load_data(cfg.data, seed=cfg.seed)
    split = split or "test"
    parts = {"train": d.train_real or d.train, "validation": d.validation, "test": d.test}
    if split == "all":
        from jaxthyroid.data import sources

        source = sources.ConcatSource(list(parts.values()))
    else:
        source = parts[split]
    what = f"{cfg.data.source} data of config {data}"
    if cfg.data.source == "phantom":
        what += f" (seed {cfg.seed}, {cfg.data.size}², n_test {cfg.data.n_test})"
    return source, d.taxonomy, f"{what} ({split})"


# ----------------------------------------------------------------------------- the command
def evaluate(
    run_dir,
    *,
    data: str | None = None,
    overrides: Sequence[str] = (),
    which: str = "phase2",
    decision: str | None = None,
    split: str | None = None,
    renames: Mapping[str, str] = {},
    bootstrap: int = 1000,
    seed: int = 0,
    out_dir=None,
) -> dict:
    """Scores phase ``which`` of a run on ``data`` (see :func:`open_dataset`).

    Returns the report of :func:`jaxthyroid.metrics.classification_report` (``single``,
    ``cross``, ``all``) plus ``decision``, ``confusion_matrix`` ``[data sets, run sets +
    1]`` (rows: the data set's finding sets in the run's names, ``confusion_rows``;
    columns: the run's finding sets then ``other``, ``confusion_columns``), ``intervals``
    (:func:`bootstrap_intervals`; absent when ``bootstrap`` is 0), ``dataset``, ``run``,
    ``which``. With ``out_dir``: ``evaluation.json``, ``evaluation.md`` and
    ``confusion.png`` there.
    """
    from jaxthyroid import cross_training, parallel

    cfg, taxonomy, model, variables = cross_training.load_run(run_dir, which)
    decision = decision or cfg.decision
    source, data_taxonomy, description = open_dataset(cfg, data, split=split, overrides=overrides)
    if len(source) == 0:
        raise ExternalDataError(f"{description}: no images")
    shape = tuple(np.shape(source[0]["image"]))
    if shape[:2] != (cfg.data.size, cfg.data.size):
        raise ExternalDataError(
            f"{description}: images are {shape[0]}x{shape[1]} but the run was trained on "
            f"{cfg.data.size}x{cfg.data.size}; rebuild the data set with --size {cfg.data.size}"
        )
    table, row_names = map_taxonomy(data_taxonomy, taxonomy, renames)
    out = cross_training.predict_probs(model, variables, source, int(cfg.data.eval_batch_size))
    labels = table[out["finding_set"]]
    cross = labels.sum(-1) >= 2
    result = metrics_lib.classification_report(out["probs"], labels, subset=cross, taxonomy=taxonomy, decision=decision)
    result["decision"] = decision

    # Confusion: true sets of the data set (run's names) x the run's sets + other.
    pred_ids = taxonomy.set_id_of_multi_hot(findings_lib.predict(out["probs"], decision=decision, taxonomy=taxonomy))
    columns = metrics_lib.confusion_labels(taxonomy)
    rows = list(dict.fromkeys(row_names))
    true_rows = np.asarray([rows.index(row_names[s]) for s in out["finding_set"]], np.int64)
    cm = np.zeros((len(rows), len(columns)), np.int64)
    np.add.at(cm, (true_rows, np.where(pred_ids < 0, len(columns) - 1, pred_ids)), 1)
    result.update(confusion_matrix=cm.tolist(), confusion_rows=rows, confusion_columns=columns)
    unreachable = [r for r in rows if _set_or_none(taxonomy, r) is None]
    if unreachable:
        result["sets_the_run_cannot_predict"] = unreachable
    if bootstrap:
        result["intervals"] = bootstrap_intervals(
            out["probs"], labels, taxonomy=taxonomy, subset=cross, decision=decision, replicates=bootstrap, seed=seed
        )
    result.update(dataset=description, run=str(run_dir), which=which)
    if out_dir is not None and parallel.is_primary():
        write_outputs(result, out_dir)
    return result


def _set_or_none(taxonomy: findings_lib.Taxonomy, folder_name: str):
    try:
        return taxonomy.set_id(folder_name)
    except findings_lib.UnknownFindingError:
        return None


def _with_interval(result: dict, path: Sequence[str]) -> str:
    value = result
    for k in path:
        value = value[k]
    text = f"{value:.3f}"
    if "intervals" in result:
        iv = result["intervals"]
        for k in path:
            iv = iv[k]
        text += f" [{iv[0]:.3f}, {iv[1]:.3f}]"
    return text


def tables(result: dict) -> str:
    """Markdown: exact match and macro metrics per subset, then per finding on all
    images; each value with its bootstrap interval ``[low, high]`` when there is one."""
    from jaxthyroid import report

    summary = []
    for subset in metrics_lib.SUBSETS:
        row = {"images": subset, "count": result[subset]["count"]}
        row["exact match"] = _with_interval(result, (subset, "exact_match"))
        for m in metrics_lib.MEASURES:
            row[f"macro {m}"] = _with_interval(result, (subset, "macro", m))
        summary.append(row)
    per_finding = []
    for f, values in result["all"]["per_finding"].items():
        row = {"finding": f, "support": values["support"]}
        for m in metrics_lib.MEASURES:
            row[m] = _with_interval(result, ("all", "per_finding", f, m))
        per_finding.append(row)
    iv = result.get("intervals")
    note = (
        f"{int(iv['confidence'] * 100)} % percentile bootstrap intervals over {iv['replicates']} resamplings of "
        f"the images (seed {iv['seed']}); nan: undefined (no positives or no negatives)."
        if iv
        else "No intervals (--bootstrap 0); nan: undefined (no positives or no negatives)."
    )
    return "\n".join(
        [
            f"{result['which']} of {result['run']} on {result['dataset']}, decision rule '{result['decision']}'",
            "",
            report.markdown_table(summary, list(summary[0])),
            "",
            f"Per finding, all {result['all']['count']} images:",
            "",
            report.markdown_table(per_finding, list(per_finding[0])),
            "",
            note,
        ]
    )


def write_outputs(result: dict, out_dir) -> dict[str, str]:
    """``evaluation.json``, ``evaluation.md`` and ``confusion.png`` in ``out_dir``."""
    from jaxthyroid import report, run_files

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: str(out / n) for k, n in (("json", "evaluation.json"), ("md", "evaluation.md"))}
    run_files.write_json(out / "evaluation.json", result)
    (out / "evaluation.md").write_text(tables(result) + "\n")
    cm = np.asarray(result["confusion_matrix"])
    rows, columns = result["confusion_rows"], result["confusion_columns"]
    # plot_confusion names the columns after the rows (+ other): rows are the run's
    # finding sets, then any of the data set's that the run's taxonomy lacks.
    square_rows = columns[:-1] + [r for r in rows if r not in columns]
    square = np.zeros((len(square_rows), len(square_rows) + 1), np.int64)
    for i, r in enumerate(rows):
        square[square_rows.index(r), : len(columns) - 1] = cm[i, :-1]
        square[square_rows.index(r), -1] = cm[i, -1]
    paths["png"] = str(out / "confusion.png")
    report.plot_confusion(square, square_rows, paths["png"], title=f"{result['which']}: confusion (finding sets)")
    return paths
