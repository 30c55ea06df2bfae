"""``report.md`` / ``report.json`` of ``jaxthyroid reproduce``: the paper's tables from
measured numbers.

Every number comes from the stages' results; nothing is typed in except the paper's
own figures, which stand beside ours. With ``--seeds N`` every number is the mean
± the half-width of its 95 % t-interval over seeds; a difference between two arms is
called real only when its *paired* interval (the per-seed differences' t-interval)
excludes 0, and "not resolved at this scale" otherwise (always, with one seed).
Every arm's optimiser steps and images seen stand beside its numbers.

Size (over ~400 lines, on purpose): one report, section by section, in the order report.md
prints them; every section reads the same collected results (``_collect``) and the same
formatting helpers, and splitting them across modules would scatter one document's layout.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import shutil
from collections.abc import Sequence

import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import kfold_report, report
from jaxthyroid.metrics import mean_interval

# The paper's figures (Yan'an University 2020): validation accuracy and loss after 100
# epochs; recall, precision, specificity and F1 all at least 93.8 %.
PAPER = {"val_accuracy": 0.9633, "val_loss": 0.1187, "other_metrics_min": 0.938}

METRICS = ("exact_match", "recall", "precision", "specificity", "f1", "auc")


# ----------------------------------------------------------------------------- numbers
def _macro(ev: dict, subset: str = "all") -> dict:
    s = ev[subset]
    return {"exact_match": s["exact_match"], "count": s["count"], **s["macro"]}


def method_evaluations(seed_result: dict) -> dict[str, dict]:
    """Tab.3 rows: method name -> evaluation (classification_report) of one seed."""
    cl = seed_result["classifier"]["evaluations"]
    rows = {
        "Cross-residual ResNet, two-phase + GAN (ours, full)": cl["phase2"],
        "ResNet after phase 1 (single-feature training)": cl["phase1"],
    }
    if "plain" in cl:
        rows[PLAIN] = cl["plain"]
    for name, res in seed_result["baselines"].items():
        rows[name] = res["evaluations"]["plain"]
    return rows


PLAIN = "ResNet, plain, trained once on real images (control)"
# Ablation arm -> (row name, the phase holding its final model).
ABLATION_ROWS = {
    "no_gan": ("without GAN augmentation", "phase2"),
    "no_cross": ("without cross term", "phase2"),
    "no_two_phase": ("without two-phase schedule", "plain"),
}


def ablation_evaluations(seed_result: dict) -> dict[str, dict]:
    ab = seed_result["ablations"]
    rows = {"full method": seed_result["classifier"]["evaluations"]["phase2"]}
    for arm, (row, phase) in ABLATION_ROWS.items():
        if arm in ab:
            rows[row] = ab[arm]["evaluations"][phase]
    return rows


def model_budget(budgets: dict, final: str) -> dict | None:
    """``steps``, ``phase_steps``, ``batch_size`` and ``images_seen`` of the model a run's
    phase ``final`` holds, from the run's ``budgets``: phase 2's model was trained through
    phase 1 as well, so both are summed. None when a phase of it did not run."""
    phases = ["phase1", "phase2"] if final == "phase2" else [final]
    if not all(p in budgets for p in phases):
        return None
    return {
        "steps": sum(budgets[p]["steps"] for p in phases),
        "phase_steps": [budgets[p]["steps"] for p in phases],
        "batch_size": budgets[phases[0]]["batch_size"],
        "images_seen": sum(budgets[p]["images_seen"] for p in phases),
    }


def arm_budgets(seed_result: dict) -> list[dict]:
    """Every trained model of one seed: its optimiser steps, batch size and images seen
    (the phases that trained it summed: :func:`model_budget`)."""
    rows = []

    def add(arm, run, final):
        b = model_budget(run.get("budgets", {}), final)
        if b is None:
            return
        rows.append(
            {
                "arm": arm,
                "steps": b["steps"],
                "phases": " + ".join(str(n) for n in b["phase_steps"]),
                "batch": b["batch_size"],
                "images seen": b["images_seen"],
            }
        )

    cl = seed_result["classifier"]
    add("full method (phase 1 + phase 2)", cl, "phase2")
    add(PLAIN, cl, "plain")
    for arm, (row, phase) in ABLATION_ROWS.items():
        if arm in seed_result["ablations"]:
            add(row, seed_result["ablations"][arm], phase)
    for name, run in seed_result["baselines"].items():
        add(f"baseline {name}", run, "plain")
    for key, run in seed_result["scarcity"].items():
        add(f"scarcity {key}", run, "plain")
    return rows


def _collect(per_seed: Sequence[dict], getter, metric_path: Sequence[str]) -> list[float]:
    values = []
    for r in per_seed:
        node = getter(r)
        for p in metric_path:
            node = node[p]
        values.append(float(node))
    return values


def _fmt(values: Sequence[float]) -> str:
    """``mean`` (one value) or ``mean ± half-width of the 95 % t-interval`` over seeds."""
    mean, half = mean_interval(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"


# ----------------------------------------------------------------------------- the report
def build(cfg, per_seed: Sequence[dict]) -> tuple[str, dict]:
    """Returns (markdown, numbers) for the report."""
    first = per_seed[0]
    taxonomy = findings_lib.DEFAULT
    numbers: dict = {"preset": cfg.preset, "seeds": len(per_seed), "paper": PAPER}
    md: list[str] = []
    md.append(f"# jaxthyroid reproduction report — preset `{cfg.preset}`\n")
    md.append(
        f"{datetime.date.today().isoformat()} · {len(per_seed)} seed(s) · Python "
        f"{platform.python_version()} on {platform.machine()} · data: thyroid scintigraphy phantom "
        f"{cfg.classifier.data.size}² ({cfg.classifier.data.n_train} train / {cfg.classifier.data.n_val} "
        f"val / {cfg.classifier.data.n_test} test, {cfg.classifier.data.cross_fraction:.0%} "
        "cross-feature). "
        + (
            f"Values are mean ± the half-width of the 95 % t-interval over the {len(per_seed)} seeds."
            if len(per_seed) > 1
            else "One seed: no intervals (`--seeds 3` gives them)."
        )
        + f" Decision rule: `{cfg.classifier.decision}`.\n"
    )

    # -- headline against the paper ---------------------------------------------------
    hist = [r["classifier"]["histories"]["phase2"] for r in per_seed]
    final_acc = [h[-1].get("val_exact_match", float("nan")) for h in hist]
    final_loss = [h[-1].get("val_loss", float("nan")) for h in hist]
    full = [r["classifier"]["evaluations"]["phase2"] for r in per_seed]
    min_metric = [min(ev["all"]["macro"][m] for m in ("recall", "precision", "specificity", "f1")) for ev in full]
    numbers["headline"] = {"val_accuracy": final_acc, "val_loss": final_loss, "min_macro_metric": min_metric}
    md.append("## Against the paper\n")
    md.append(
        report.markdown_table(
            [
                {
                    "quantity": "validation accuracy (exact match), end of training",
                    "paper": f"{PAPER['val_accuracy']:.4f}",
                    "ours": _fmt(final_acc),
                },
                {
                    "quantity": "validation loss, end of training",
                    "paper": f"{PAPER['val_loss']:.4f}",
                    "ours": _fmt(final_loss),
                },
                {
                    "quantity": "lowest of macro recall/precision/specificity/F1 (test)",
                    "paper": f"≥ {PAPER['other_metrics_min']:.3f}",
                    "ours": _fmt(min_metric),
                },
            ],
            ["quantity", "paper", "ours"],
        )
    )
    md.append(
        "\nThe paper's figures come from real clinical scintigrams at its own scale; ours from the "
        "simulator at this preset's scale, so only the direction of effects is comparable.\n"
    )

    # -- budgets ------------------------------------------------------------------------
    budgets = arm_budgets(first)
    numbers["steps"] = {row["arm"]: {k: row[k] for k in ("steps", "batch", "images seen")} for row in budgets}
    md.append("## Training budgets\n")
    md.append(
        "Optimiser steps of every trained model (phase 1 + phase 2 for the two-phase arms), batch size and "
        "images seen; arms a claim compares have equal steps, batch and schedule.\n"
    )
    md.append(report.markdown_table(budgets, ["arm", "steps", "phases", "batch", "images seen"]))
    md.append("")

    # -- Tab.1 / Tab.2 ----------------------------------------------------------------
    numbers["per_finding"] = {}
    for title, subset in (
        ("Tab.1 analogue — per finding, single-feature test images", "single"),
        ("Tab.2 analogue — per finding, cross-feature test images", "cross"),
    ):
        rows = []
        for f in taxonomy.findings:
            row = {"finding": f}
            for m in ("recall", "precision", "specificity", "f1"):
                vals = [ev[subset]["per_finding"][f][m] for ev in full]
                row[m] = _fmt(vals)
                numbers["per_finding"].setdefault(subset, {}).setdefault(f, {})[m] = vals
            row["support"] = int(full[0][subset]["per_finding"][f].get("support", 0))
            rows.append(row)
        md.append(f"## {title}\n")
        md.append(f"Final model (cross-residual ResNet after phase 2), {int(full[0][subset]['count'])} images.\n")
        md.append(report.markdown_table(rows, ["finding", "recall", "precision", "specificity", "f1", "support"]))
        md.append("")

    md.extend(_generalisation_section(per_seed, taxonomy, numbers))

    # -- Tab.3 ------------------------------------------------------------------------
    methods = list(method_evaluations(first))
    numbers["methods"] = {}
    rows = []
    for name in methods:
        row = {"method": name}
        for m in METRICS:
            vals = [_macro(method_evaluations(r)[name])[m] for r in per_seed]
            row[m] = _fmt(vals)
            numbers["methods"].setdefault(name, {})[m] = vals
        vals = [method_evaluations(r)[name]["cross"]["exact_match"] for r in per_seed]
        row["exact_match (cross)"] = _fmt(vals)
        numbers["methods"][name]["exact_match_cross"] = vals
        for rule in findings_lib.DECISIONS:
            for subset in ("all", "cross"):
                vals = [method_evaluations(r)[name][subset].get(f"exact_match_{rule}", float("nan")) for r in per_seed]
                numbers["methods"][name][f"exact_match_{rule}_{subset}"] = vals
                row[f"{rule} rule ({subset})"] = _fmt(vals)
        rows.append(row)
    md.append("## Tab.3 analogue — methods on the same test set\n")
    md.append(
        f"Exact match = all findings right (the paper's accuracy), under the `{cfg.classifier.decision}` rule; "
        "the next five columns are macro averages over the six findings, on all test images. The last four "
        "columns give exact match under both decision rules: `set` = the most probable finding set of the "
        "taxonomy, `threshold` = every finding at p ≥ 0.5.\n"
    )
    extra = [f"{rule} rule ({subset})" for rule in findings_lib.DECISIONS for subset in ("all", "cross")]
    md.append(report.markdown_table(rows, ["method", *METRICS, "exact_match (cross)", *extra]))
    md.append("")

    # -- curves -------------------------------------------------------------------------
    md.append("## Validation curves through both phases\n")
    md.append("![validation accuracy and loss against optimiser steps](curves.png)\n")

    # -- ablations ----------------------------------------------------------------------
    numbers["ablations"] = {}
    rows = []
    for name in ablation_evaluations(first):
        evs = [ablation_evaluations(r)[name] for r in per_seed]
        entry = {
            "exact_match_cross": [e["cross"]["exact_match"] for e in evs],
            "exact_match_all": [e["all"]["exact_match"] for e in evs],
            "macro_f1": [e["all"]["macro"]["f1"] for e in evs],
            "exact_match_threshold_cross": [e["cross"].get("exact_match_threshold", float("nan")) for e in evs],
            "exact_match_threshold_all": [e["all"].get("exact_match_threshold", float("nan")) for e in evs],
        }
        numbers["ablations"][name] = entry
        rows.append({"variant": name, **{k: _fmt(v) for k, v in entry.items()}})
    md.append("## Ablations\n")
    md.append(
        "Exact match under the run's decision rule, macro F1, and exact match under per-finding 0.5 thresholds.\n"
    )
    md.append(report.markdown_table(rows, ["variant", *next(iter(numbers["ablations"].values()))]))
    md.append("")
    md.extend(kfold_report.section(cfg, per_seed, numbers))  # only with classifier.folds

    # -- data scarcity ------------------------------------------------------------------
    numbers["scarcity"] = {}
    rows = []
    for n in cfg.scarcity.per_set:
        real = [r["scarcity"][f"{n}/real"]["evaluations"]["plain"]["all"]["macro"]["f1"] for r in per_seed]
        gan = [r["scarcity"][f"{n}/real+gan"]["evaluations"]["plain"]["all"]["macro"]["f1"] for r in per_seed]
        numbers["scarcity"][str(n)] = {"real": real, "real+gan": gan}
        rows.append(
            {
                "real images per finding set": n,
                "macro F1, real only": _fmt(real),
                "macro F1, real + GAN": _fmt(gan),
                "difference (paired)": _fmt([g - r for g, r in zip(gan, real)]),
            }
        )
    md.append("## Data scarcity\n")
    if rows:
        md.append(
            f"The plain {cfg.classifier.model.name} trained once ({cfg.scarcity.steps} optimiser steps) on the "
            f"given number of real training images per finding set, without and with the "
            f"{cfg.synthetic.per_set} GAN images per finding set mixed in at ratio {cfg.synthetic.ratio}.\n"
        )
        md.append(report.markdown_table(rows, list(rows[0])))
    else:
        md.append(f"Not run in the `{cfg.preset}` preset (`scarcity.per_set` is empty; the paper preset runs it).\n")
    md.append("")

    # -- GANs -----------------------------------------------------------------------------
    md.extend(_gan_section(cfg, per_seed, numbers))
    md.append("\n![generated samples, one row per finding set](samples.png)\n")
    md.append("![LR / bicubic / SR / HR](sr_comparison.png)\n")
    md.append("## Confusion matrix (final model, finding sets)\n")
    md.append("![confusion matrix](confusion.png)\n")

    # -- what this shows -------------------------------------------------------------------
    md.append("## What this shows\n")
    md.extend(_conclusions(cfg, numbers, int(full[0]["all"]["count"]), int(full[0]["cross"]["count"])))
    return "\n".join(md) + "\n", numbers


def _generalisation_section(per_seed: Sequence[dict], taxonomy, numbers: dict) -> list[str]:
    """Calibration of the final model (the ``generalisation`` stage); fills
    ``numbers['calibration']``: ``{finding: {ece_before, ece_after}, 'temperature'}``,
    each a list over seeds. Nothing for a run made before the stage existed."""
    if any("generalisation" not in r for r in per_seed):
        return []
    cals = [r["generalisation"]["calibration"] for r in per_seed]
    numbers["calibration"] = {"temperature": [c["temperature"] for c in cals], "bins": cals[0]["bins"]}
    rows = []
    for f in taxonomy.findings:
        before = [c["per_finding"][f]["ece_before"] for c in cals]
        after = [c["per_finding"][f]["ece_after"] for c in cals]
        floor = [c["per_finding"][f]["noise_floor"] for c in cals]
        numbers["calibration"][f] = {"ece_before": before, "ece_after": after, "noise_floor": floor}
        rows.append({"finding": f, "ECE before": _fmt(before), "ECE after": _fmt(after), "noise floor": _fmt(floor)})
    md = ["## Calibration (final model)\n"]
    md.append(
        f"Expected calibration error of each finding's probability on the test split ({cals[0]['bins']} "
        "equal-width bins), before and after temperature scaling; one temperature T for all findings, "
        f"fitted on the validation split by minimising its cross-entropy: T = {_fmt(numbers['calibration']['temperature'])} "
        "(T > 1: the model was over-confident; T < 1: under-confident). Noise floor: one binomial standard deviation of the ECE a "
        "calibrated model would show on this many images. The decisions in the other tables use the unscaled "
        "probabilities.\n"
    )
    md.append(report.markdown_table(rows, ["finding", "ECE before", "ECE after", "noise floor"]))
    md.append("")
    md.extend(_ood_section(per_seed, taxonomy, numbers))
    return md


def _ood_section(per_seed: Sequence[dict], taxonomy, numbers: dict) -> list[str]:
    """The final model on its test split and on the held-out phantom regime; fills
    ``numbers['ood']`` (lists over seeds). Nothing when a seed has no OOD result."""
    if any("ood" not in r["generalisation"] for r in per_seed):
        return []
    oods = [r["generalisation"]["ood"] for r in per_seed]
    numbers["ood"] = {}
    rows = []

    def row(label, get):
        ind = [get(o["in_distribution"]) for o in oods]
        out = [get(o["ood"]) for o in oods]
        numbers["ood"][label] = {"in_distribution": ind, "ood": out}
        rows.append(
            {
                "": label,
                "in-distribution": _fmt(ind),
                "out-of-distribution": _fmt(out),
                "difference": _fmt([b - a for a, b in zip(ind, out)]),
            }
        )

    row("exact match, single-feature", lambda s: s["exact_match"]["single"])
    row("exact match, cross-feature", lambda s: s["exact_match"]["cross"])
    row("exact match, all", lambda s: s["exact_match"]["all"])
    row("ECE, macro over findings", lambda s: s["ece_macro"])
    for f in taxonomy.findings:
        row(f"ECE, {f}", lambda s, f=f: s["ece"][f])
    for s_id in range(taxonomy.num_sets):
        name = taxonomy.folder_name(s_id)
        if all(name in o["in_distribution"]["per_set"] and name in o["ood"]["per_set"] for o in oods):
            row(f"exact match, {name}", lambda s, name=name: s["per_set"][name]["exact_match"])
    counts = oods[0]["ood"]["count"]
    md = ["## In-distribution vs out-of-distribution (final model)\n"]
    md.append(
        "The final model on its test split and on the same number of images of the phantom's held-out "
        f"`ood` regime ({counts['single']} single- and {counts['cross']} cross-feature images; parameter ranges "
        "outside the training ranges, `jaxthyroid.phantom.params.REGIMES['ood']`), both through the same "
        f"preprocessing; exact match under the `{oods[0]['decision']}` rule, ECE with "
        f"{calibration_bins(per_seed)} equal-width bins, before temperature scaling.\n"
    )
    md.append(report.markdown_table(rows, ["", "in-distribution", "out-of-distribution", "difference"]))
    md.append("")
    return md


def calibration_bins(per_seed: Sequence[dict]) -> int:
    return int(per_seed[0]["generalisation"]["calibration"]["bins"])


# Arms whose training sets hold GAN images (named as in the tables above).
GAN_ARMS = (
    "Cross-residual ResNet, two-phase + GAN (ours, full)",
    "without cross term",
    "without two-phase schedule",
    "the baselines",
    "the data-scarcity arms with GAN images",
)


def _gan_section(cfg, per_seed: Sequence[dict], numbers: dict) -> list[str]:
    """Super-resolution against the noisy and the noise-free truth; the generated images
    judged by a classifier trained on real images only, with the quality gate. Fills
    ``numbers['super_resolution']`` and ``numbers['generation']``."""
    md = []
    gan = [r["gan"] for r in per_seed]
    sr = [g["srgan"] for g in gan]
    clean = all("psnr_clean" in s for s in sr)
    methods = ["bicubic", "srresnet", "srgan"] + (["hr_noisy"] if clean else [])
    rows, numbers["super_resolution"] = [], {}
    for method in methods:
        row, entry = {"upsampling": method if method != "hr_noisy" else "the noisy HR image itself"}, {}
        if method in sr[0]["psnr"]:
            entry["psnr"], entry["ssim"] = [s["psnr"][method] for s in sr], [s["ssim"][method] for s in sr]
        row["PSNR vs noisy HR (dB)"] = _fmt(entry["psnr"]) if "psnr" in entry else "—"
        row["SSIM vs noisy HR"] = _fmt(entry["ssim"]) if "ssim" in entry else "—"
        if clean:
            entry["psnr_clean"] = [s["psnr_clean"][method] for s in sr]
            entry["ssim_clean"] = [s["ssim_clean"][method] for s in sr]
            row["PSNR vs noise-free HR (dB)"] = _fmt(entry["psnr_clean"])
            row["SSIM vs noise-free HR"] = _fmt(entry["ssim_clean"])
        numbers["super_resolution"][method] = entry
        rows.append(row)
    md.append("## GAN augmentation\n")
    md.append(f"Super-resolution ×{cfg.gan.srgan.scale} on held-out test images:\n")
    md.append(report.markdown_table(rows, list(rows[0])))
    md.append(
        "\nThe paper's PSNR/SSIM compare SR output with the acquired (noisy) high-resolution scan: the "
        "first two columns."
        + (
            " The phantom also knows the noise-free image: the last two columns say whether SR recovers "
            "the structure rather than reproducing the noise (the noisy HR image's own distance is the "
            "noise level)."
            if clean
            else ""
        )
        + "\n"
    )
    quality = [r["ablations"].get("gan_quality") or r["synthetic"].get("quality") for r in per_seed]
    if not all(q for q in quality):
        return md
    from jaxthyroid.gan import quality as gan_quality

    gates = [q.get("gate") or gan_quality.quality_gate(q) for q in quality]
    generation = {
        "agreement": [q["agreement"] for q in quality],
        "frechet": [q["frechet_generated_vs_real"] for q in quality],
        "frechet_real_vs_real": [q.get("frechet_real_vs_real", float("nan")) for q in quality],
        "judge_accuracy": [q["real_test_agreement"] for q in quality],
        "gate": {"passed": all(g["passed"] for g in gates), "per_seed": gates},
    }
    numbers["generation"] = generation
    numbers["gan_arms_run_with_failing_images"] = not generation["gate"]["passed"]
    md.append("\nGenerated images (DCGAN → SRGAN), judged by a classifier trained on real images only:\n")
    table = [
        ("share assigned to the conditioned finding set (agreement)", generation["agreement"]),
        ("the judge on real test images (its own exact-match accuracy)", generation["judge_accuracy"]),
        ("Fréchet distance to real test images (judge's features)", generation["frechet"]),
        ("same, real training vs real test images (floor)", generation["frechet_real_vs_real"]),
    ]
    md.append(report.markdown_table([{"measure": k, "value": _fmt(v)} for k, v in table], ["measure", "value"]))
    if generation["gate"]["passed"]:
        md.append(
            f"\nQuality gate passed: agreement ≥ {gan_quality.MIN_AGREEMENT_SHARE} × the judge's accuracy and "
            f"Fréchet distance ≤ {gan_quality.MAX_FRECHET_RATIO:g} × the floor.\n"
        )
    else:
        reasons = "; ".join(r for g in gates for r in g["reasons"])
        md.append(
            f"\n**Generated images FAIL the quality gate ({reasons}). Every GAN arm — "
            + ", ".join(GAN_ARMS)
            + " — was run with failing images: read their numbers as training on noise-like extra images, "
            "not as the paper's augmentation.**\n"
        )
    return md


def paired_verdict(with_vals: Sequence[float], without_vals: Sequence[float]) -> dict:
    """The per-seed differences ``with - without``: mean, 95 % t-interval half-width and
    whether the interval excludes 0 (``resolved``; never with one seed)."""
    diffs = [float(a) - float(b) for a, b in zip(with_vals, without_vals)]
    mean, half = mean_interval(diffs)
    resolved = not math.isnan(half) and abs(mean) > half
    return {"differences": diffs, "mean": mean, "half_width": half, "resolved": resolved}


def _effect(name: str, with_vals, without_vals, what: str, *, note: str = "") -> tuple[str, dict]:
    v = paired_verdict(with_vals, without_vals)
    a, b = float(np.mean(with_vals)), float(np.mean(without_vals))
    if math.isnan(v["half_width"]):
        interval = "one seed, no interval"
    else:
        interval = f"paired 95 % interval {v['mean'] - v['half_width']:+.3f} … {v['mean'] + v['half_width']:+.3f}"
    if v["resolved"]:
        verdict = f"**{'helps' if v['mean'] > 0 else 'hurts'}** (the interval excludes 0)"
    else:
        verdict = "not resolved at this scale"
    line = (
        f"- **{name}**, {what}: {a:.3f} with vs {b:.3f} without (difference {v['mean']:+.3f}; {interval}) — "
        f"{verdict}.{note}"
    )
    return line, v


def _conclusions(cfg, numbers: dict, n_test: int, n_cross: int) -> list[str]:
    del n_test, n_cross  # the intervals are over seeds
    ab = numbers["ablations"]
    full = ab["full method"]
    failing = numbers.get("gan_arms_run_with_failing_images", False)
    gan_note = " (GAN arm run with images that fail the quality gate.)" if failing else ""
    claims = []
    if PLAIN in numbers["methods"] and "without GAN augmentation" in ab:
        # Both on real images only: the method against a plain ResNet, nothing else differs.
        plain, no_gan = numbers["methods"][PLAIN], ab["without GAN augmentation"]
        for key, plain_key, what in (
            ("exact_match_cross", "exact_match_cross", "exact match on cross-feature test images"),
            ("exact_match_all", "exact_match", "exact match on all test images"),
        ):
            claims.append(
                (
                    "Two-phase cross-training with the cross term vs the plain control (both real images only)",
                    no_gan[key],
                    plain[plain_key],
                    what,
                    "",
                )
            )
    for row, key, what in (
        ("without cross term", "exact_match_cross", "exact match on cross-feature test images"),
        ("without two-phase schedule", "exact_match_cross", "exact match on cross-feature test images"),
        ("without GAN augmentation", "exact_match_all", "exact match on all test images"),
        ("without GAN augmentation", "exact_match_cross", "exact match on cross-feature test images"),
    ):
        if row in ab:
            name = {
                "without cross term": "The cross term",
                "without two-phase schedule": "The two-phase schedule",
                "without GAN augmentation": "GAN augmentation",
            }[row]
            claims.append((name, full[key], ab[row][key], what, gan_note if "GAN" in name else ""))
    for n, arms in numbers["scarcity"].items():
        claims.append(
            (
                f"GAN augmentation with {n} real images per finding set",
                arms["real+gan"],
                arms["real"],
                "macro F1",
                gan_note,
            )
        )
    lines, numbers["claims"] = [], []
    for name, a, b, what, note in claims:
        line, verdict = _effect(name, a, b, what, note=note)
        lines.append(line)
        numbers["claims"].append({"claim": name, "measure": what, **verdict})
    head = numbers["headline"]
    acc = float(np.mean(head["val_accuracy"]))
    lines.append(
        f"- The paper reports validation accuracy {PAPER['val_accuracy']:.4f} and loss "
        f"{PAPER['val_loss']:.4f}; this run reaches {acc:.4f} and {float(np.mean(head['val_loss'])):.4f}. "
        f"Its lowest macro metric is {float(np.mean(head['min_macro_metric'])):.3f} against the paper's "
        f"≥ {PAPER['other_metrics_min']:.3f}"
        + (
            " — the quick preset trains a 1/4-width network for a few thousand steps on a few thousand "
            "simulated images, so lower numbers are expected."
            if cfg.preset == "quick"
            else "."
        )
    )
    return lines


def localisation_section(loc: dict) -> str:
    """Markdown: how well the final model's heat maps point at the phantom's lesions
    (:func:`jaxthyroid.explain.localisation_report`), beside a random map of each grid."""
    from jaxthyroid import explain

    rows = explain.localisation_table(loc)
    return "\n".join(
        [
            "",
            "## Localisation: heat maps against the phantom's lesion masks",
            "",
            f"Final model (seed 0, {loc['which']}), {loc['images']} fresh phantom images per finding with that "
            f"finding alone (phantom seed {loc['seed']}; none is a training image). Pointing game: the map's "
            "maximum lies inside the lesion mask (Wilson 95 % interval); IoU: the map at >= "
            f"{loc['threshold']:g} x its maximum against the mask. Random map: uniform noise on the same grid, "
            "upsampled the same way (its pointing-game rate is about the mask's share of the image). 'above "
            "random': the interval's lower end exceeds the random map's rate. `detected`: share of these images "
            "where the finding's probability is >= 0.5.",
            "",
            report.markdown_table(rows, list(rows[0]), precision=3) if rows else "(no maps)",
            "",
        ]
    )


def write(out: pathlib.Path, cfg, per_seed: Sequence[dict], *, elapsed_s: float) -> pathlib.Path:
    """Writes ``out/report.md``, ``out/report.json`` and copies the figures of seed 0."""
    out = pathlib.Path(out)
    seed0 = out / "seed0"
    figures = {
        "curves.png": seed0 / "classifier" / "full" / "curves.png",
        "confusion.png": seed0 / "classifier" / "full" / "confusion_phase2.png",
        "samples.png": seed0 / "synthetic" / "samples.png",
        "sr_comparison.png": seed0 / "gan" / "srgan" / "sr_comparison.png",
    }
    for name, src in figures.items():
        if src.exists():
            shutil.copyfile(src, out / name)
    markdown, numbers = build(cfg, per_seed)
    if per_seed[0].get("localisation"):
        numbers["localisation"] = per_seed[0]["localisation"]
        markdown += localisation_section(per_seed[0]["localisation"])
    stage_seconds = {}
    for marker in sorted(out.glob("seed*/*/result.json")):
        seconds = json.loads(marker.read_text()).get("elapsed_s", 0.0)
        stage_seconds[marker.parent.name] = stage_seconds.get(marker.parent.name, 0.0) + seconds
    numbers["stage_seconds"] = stage_seconds
    numbers["elapsed_s"] = elapsed_s
    # The final model (seed 0's two-phase run; phase 2 is `predict`/`evaluate`'s default
    # --which), relative to the report's folder.
    final = pathlib.Path(per_seed[0]["classifier"]["workdir"])
    numbers["final_model"] = os.path.relpath(final.resolve(), out.resolve())
    numbers["final_model_which"] = "phase2"
    markdown += (
        f"\nFinal model: `{numbers['final_model']}` (phase 2) — `jaxthyroid predict --run "
        f"{out / numbers['final_model']} IMAGE...`, `jaxthyroid evaluate --run {out / numbers['final_model']}`.\n"
    )
    markdown += (
        "\nTime per stage (all seeds, including earlier interrupted invocations' finished stages): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in stage_seconds.items())
        + f"; total {sum(stage_seconds.values()):.0f} s.\n"
    )
    (out / "report.json").write_text(json.dumps(numbers, indent=2, default=report.json_default))
    path = out / "report.md"
    path.write_text(markdown)
    return path
