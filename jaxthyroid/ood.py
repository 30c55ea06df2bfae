"""In-distribution vs out-of-distribution: a model's test metrics on the phantom's
held-out ``"ood"`` regime beside its own test split (issue 14, item 3).

The OOD split is the phantom rendered with ``PhantomParams.regime("ood")`` (parameter
ranges outside the training regimes', see :mod:`jaxthyroid.phantom.params`), with the
test split's size, cross-feature share and finding-set draw rule, under its own seed
(``split_seed = 3 * seed + 2 + OOD_SEED_OFFSET``: no image is shared with any split of
any run seed below 10**6). It is written once per run as an ``.npz`` (uint16 raw counts
``[N, H, W, 1]`` and finding-set ids ``[N]``; 600 images at 64² are ~5 MB) and read
back by :func:`compare`, which feeds both test sets through the same preprocessing
(:func:`jaxthyroid.data.transforms.normalize_counts`) and the same model, and reports
exact match per subset and per finding set, and each finding's ECE, on both.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxthyroid import calibration
from jaxthyroid import findings as findings_lib

OOD_REGIME = "ood"
OOD_SEED_OFFSET = 1_000_003
GENERATE_BATCH = 32  # images per simulator call (a fixed shape: one compile)


def regime_available() -> bool:
    """Whether the phantom defines the held-out regime (older phantoms do not)."""
    from jaxthyroid import phantom

    regimes = getattr(getattr(phantom, "params", None), "REGIMES", None)
    return hasattr(phantom.PhantomParams, "regime") and regimes is not None and OOD_REGIME in regimes


def build_split(path, *, n: int, size: int, cross_fraction: float, seed: int) -> dict:
    """Renders ``n`` images of the OOD regime to ``path`` (.npz); returns a description.

    Returns ``{"path", "n", "size", "regime", "seed"}``.
    """
    import jax

    from jaxthyroid import phantom

    params = phantom.PhantomParams.regime(OOD_REGIME)
    split_seed = 3 * int(seed) + 2 + OOD_SEED_OFFSET
    ids = np.asarray(phantom.sample_finding_set_ids(jax.random.key(split_seed), n, cross_fraction=cross_fraction))
    counts = np.empty((n, size, size, 1), np.uint16)
    for start in range(0, n, GENERATE_BATCH):
        idx = np.arange(start, start + GENERATE_BATCH)
        real = idx < n
        idx = np.minimum(idx, n - 1)  # the last batch padded, so the simulator compiles once
        batch = phantom.simulate(phantom.example_keys(split_seed, idx), ids[idx], size=size, params=params)
        counts[idx[real]] = np.clip(np.rint(np.asarray(batch)), 0, 65535).astype(np.uint16)[real]
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, image=counts, finding_set=ids.astype(np.int32))
    tmp.replace(path)  # atomic: a half-written split is never read
    return {"path": str(path), "n": int(n), "size": int(size), "regime": OOD_REGIME, "seed": int(split_seed)}


def load_split(path, taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT) -> dict:
    """``{"image": uint16 [N, H, W, 1], "findings": [N, F], "subset": [N], "finding_set": [N]}``."""
    with np.load(path) as z:
        counts, ids = z["image"], z["finding_set"].astype(np.int64)
    labels = taxonomy.set_table[ids].astype(np.float32)
    return {"image": counts, "findings": labels, "subset": (labels.sum(-1) > 1).astype(np.int32), "finding_set": ids}


def _probs(model, variables, counts: np.ndarray, batch_size: int) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    from jaxthyroid import cross_training
    from jaxthyroid.data import transforms

    apply = cross_training.logits_fn(model)
    out = []
    for start in range(0, len(counts), batch_size):
        chunk = counts[start : start + batch_size].astype(np.float32)
        pad = batch_size - len(chunk)  # one batch shape: one compile
        x = transforms.normalize_counts(np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)]))
        logits = np.asarray(jax.device_get(apply(variables, jnp.asarray(x))), np.float64)
        out.append(calibration.sigmoid(logits)[: len(chunk)])
    return np.concatenate(out)


def summarise(probs, labels, subset, finding_set, taxonomy: findings_lib.Taxonomy, decision: str) -> dict:
    """Exact match on all / single / cross images and per finding set (under ``decision``),
    ECE per finding, and counts."""
    pred = findings_lib.predict(probs, decision=decision, taxonomy=taxonomy)
    right = (pred == (np.asarray(labels) > 0.5)).all(-1)
    subset = np.asarray(subset).astype(bool)
    finding_set = np.asarray(finding_set)
    per_set = {}
    for s in range(taxonomy.num_sets):
        sel = finding_set == s
        if sel.any():
            per_set[taxonomy.folder_name(s)] = {"exact_match": float(right[sel].mean()), "count": int(sel.sum())}
    ece = calibration.expected_calibration_error(probs, labels)
    return {
        "exact_match": {
            "all": float(right.mean()),
            "single": float(right[~subset].mean()) if (~subset).any() else float("nan"),
            "cross": float(right[subset].mean()) if subset.any() else float("nan"),
        },
        "count": {"all": int(len(right)), "single": int((~subset).sum()), "cross": int(subset.sum())},
        "per_set": per_set,
        "ece": {f: float(v) for f, v in zip(taxonomy.findings, ece)},
        "ece_macro": float(np.mean(ece)),
    }


def compare(run_dir, ood_path, *, which: str = "phase2") -> dict:
    """One phase of a finished run on its test split and on the OOD split at ``ood_path``:
    ``{"in_distribution": summary, "ood": summary, "decision", "which"}`` (:func:`summarise`)."""
    from jaxthyroid import cross_training

    cfg, taxonomy, model, variables = cross_training.load_run(run_dir, which)
    data = cross_training.load_data(cfg.data, seed=cfg.seed)
    test = cross_training.predict_probs(model, variables, data.test, cfg.data.eval_batch_size)
    ood = load_split(ood_path, taxonomy)
    if ood["image"].shape[1] != cfg.data.size:
        raise ValueError(f"{ood_path}: images of {ood['image'].shape[1]}², the run was trained at {cfg.data.size}²")
    ood_probs = _probs(model, variables, ood["image"], cfg.data.eval_batch_size)
    return {
        "which": which,
        "decision": cfg.decision,
        "in_distribution": summarise(
            test["probs"], test["labels"], test["subset"], test["finding_set"], taxonomy, cfg.decision
        ),
        "ood": summarise(ood_probs, ood["findings"], ood["subset"], ood["finding_set"], taxonomy, cfg.decision),
    }
