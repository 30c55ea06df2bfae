"""``report.md`` / ``report.json`` of ``jaxthyroid reproduce``: the paper's tables from
measured numbers.

Every number comes from the stages' results; nothing is typed in except the paper's
own figures, which stand beside ours. Effects are called real only when they exceed
the noise: the seed-to-seed spread with ``--seeds >= 2``, otherwise twice the
binomial standard error of the test-set accuracy (stated as such in the report).
"""

from __future__ import annotations

import datetime
import json
import math
import pathlib
import platform
import shutil
from collections.abc import Sequence

import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import report
from jaxthyroid.reproduce import PAPER, mean_spread

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
        rows["ResNet, plain, trained once"] = cl["plain"]
    for name, res in seed_result["baselines"].items():
        rows[name] = res["evaluations"]["plain"]
    return rows


def ablation_evaluations(seed_result: dict) -> dict[str, dict]:
    ab = seed_result["ablations"]
    return {
        "full method": seed_result["classifier"]["evaluations"]["phase2"],
        "without GAN augmentation": ab["no_gan"]["evaluations"]["phase2"],
        "without cross term": ab["no_cross"]["evaluations"]["phase2"],
        "without two-phase schedule": ab["no_two_phase"]["evaluations"]["plain"],
    }


def _collect(per_seed: Sequence[dict], getter, metric_path: Sequence[str]) -> list[float]:
    values = []
    for r in per_seed:
        node = getter(r)
        for p in metric_path:
            node = node[p]
        values.append(float(node))
    return values


def _fmt(values: Sequence[float]) -> str:
    mean, spread = mean_spread(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {spread:.3f}"


def _noise(values_a: Sequence[float], values_b: Sequence[float], n_test: int) -> tuple[float, str]:
    """The size below which a difference of means is not distinguishable from noise."""
    if len(values_a) >= 2 and len(values_b) >= 2:
        spread = math.sqrt(np.var(values_a, ddof=1) / len(values_a) + np.var(values_b, ddof=1) / len(values_b))
        return 2 * spread, "twice the standard error over seeds"
    p = np.clip(np.mean(values_a + values_b), 0.05, 0.95)
    return 2 * math.sqrt(2 * p * (1 - p) / max(n_test, 1)), (
        "twice the binomial standard error of a difference on this test set (one seed: run --seeds 3 "
        "for the seed-to-seed spread)"
    )


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
        "cross-feature). Values are mean ± sample std over seeds where there are several.\n"
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
                    "quantity": "validation accuracy (exact match), last epoch",
                    "paper": f"{PAPER['val_accuracy']:.4f}",
                    "ours": _fmt(final_acc),
                },
                {
                    "quantity": "validation loss, last epoch",
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
        rows.append(row)
    md.append("## Tab.3 analogue — methods on the same test set\n")
    md.append(
        "Exact match = all findings right (the paper's accuracy); the other columns are macro "
        "averages over the six findings, on all test images.\n"
    )
    md.append(report.markdown_table(rows, ["method", *METRICS, "exact_match (cross)"]))
    md.append("")

    # -- curves -------------------------------------------------------------------------
    md.append("## Validation curves through both phases\n")
    md.append("![validation accuracy and loss per epoch](curves.png)\n")

    # -- ablations ----------------------------------------------------------------------
    numbers["ablations"] = {}
    rows = []
    for name in ablation_evaluations(first):
        evs = [ablation_evaluations(r)[name] for r in per_seed]
        entry = {
            "exact_match_cross": [e["cross"]["exact_match"] for e in evs],
            "exact_match_all": [e["all"]["exact_match"] for e in evs],
            "macro_f1": [e["all"]["macro"]["f1"] for e in evs],
        }
        numbers["ablations"][name] = entry
        rows.append({"variant": name, **{k: _fmt(v) for k, v in entry.items()}})
    md.append("## Ablations\n")
    md.append(report.markdown_table(rows, ["variant", "exact_match_cross", "exact_match_all", "macro_f1"]))
    md.append("")

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
                "difference": _fmt([g - r for g, r in zip(gan, real)]),
            }
        )
    md.append("## Data scarcity\n")
    md.append(
        f"The plain {cfg.classifier.model.name} trained once ({cfg.scarcity.epochs} epoch(s)) on the given "
        f"number of real training images per finding set, without and with the "
        f"{cfg.synthetic.per_set} GAN images per finding set mixed in at ratio {cfg.synthetic.ratio}.\n"
    )
    md.append(report.markdown_table(rows, list(rows[0]) if rows else ["real images per finding set"]))
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


def _effect(name: str, with_vals, without_vals, n_test: int, what: str) -> str:
    diff = float(np.mean(with_vals) - np.mean(without_vals))
    noise, noise_kind = _noise(list(with_vals), list(without_vals), n_test)
    verdict = "larger than the noise" if abs(diff) > noise else "within the noise"
    direction = "helps" if diff > 0 else "hurts" if diff < 0 else "makes no difference to"
    return (
        f"- **{name}** {direction} {what}: {np.mean(with_vals):.3f} with vs {np.mean(without_vals):.3f} without "
        f"(difference {diff:+.3f}; noise level {noise:.3f}, {noise_kind}) — {verdict}."
    )


def _conclusions(cfg, numbers: dict, n_test: int, n_cross: int) -> list[str]:
    ab = numbers["ablations"]
    full = ab["full method"]
    lines = [
        _effect(
            "Two-phase cross-training",
            full["exact_match_cross"],
            ab["without two-phase schedule"]["exact_match_cross"],
            n_cross,
            "exact-match accuracy on cross-feature test images",
        ),
        _effect(
            "The cross term",
            full["exact_match_cross"],
            ab["without cross term"]["exact_match_cross"],
            n_cross,
            "exact-match accuracy on cross-feature test images",
        ),
        _effect(
            "GAN augmentation (full data)",
            full["macro_f1"],
            ab["without GAN augmentation"]["macro_f1"],
            n_test,
            "macro F1",
        ),
    ]
    for n, arms in numbers["scarcity"].items():
        lines.append(
            _effect(
                f"GAN augmentation with {n} real images per finding set",
                arms["real+gan"],
                arms["real"],
                n_test,
                "macro F1 (F1 noise approximated by the accuracy's)",
            )
        )
    head = numbers["headline"]
    acc = float(np.mean(head["val_accuracy"]))
    lines.append(
        f"- The paper reports validation accuracy {PAPER['val_accuracy']:.4f} and loss "
        f"{PAPER['val_loss']:.4f}; this run reaches {acc:.4f} and {float(np.mean(head['val_loss'])):.4f}. "
        f"Its lowest macro metric is {float(np.mean(head['min_macro_metric'])):.3f} against the paper's "
        f"≥ {PAPER['other_metrics_min']:.3f}"
        + (
            " — the quick preset trains small networks for a few epochs on a few hundred images, so "
            "lower numbers are expected."
            if cfg.preset == "quick"
            else "."
        )
    )
    return lines


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
    stage_seconds = {}
    for marker in sorted(out.glob("seed*/*/result.json")):
        seconds = json.loads(marker.read_text()).get("elapsed_s", 0.0)
        stage_seconds[marker.parent.name] = stage_seconds.get(marker.parent.name, 0.0) + seconds
    numbers["stage_seconds"] = stage_seconds
    numbers["elapsed_s"] = elapsed_s
    markdown += (
        "\nTime per stage (all seeds, including earlier interrupted invocations' finished stages): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in stage_seconds.items())
        + f"; total {sum(stage_seconds.values()):.0f} s.\n"
    )
    (out / "report.json").write_text(json.dumps(numbers, indent=2, default=report.json_default))
    path = out / "report.md"
    path.write_text(markdown)
    return path
