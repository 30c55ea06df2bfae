"""The whole method end to end: ``jaxthyroid reproduce --preset quick|paper``.

Stages, each in its own directory under ``OUT/seed<k>/`` (``OUT/report.*`` at the top):

  data        the phantom data set (TFDS, array_record)
  gan         conditional DCGAN, then SRResNet/SRGAN (PSNR/SSIM against bicubic)
  synthetic   N generated images per finding set, super-resolved to the training size
  classifier  two-phase cross-training with GAN augmentation (+ the plain control)
  generalisation  the final model's calibration (temperature fitted on validation, ECE
              per finding on the test split before and after: jaxthyroid.calibration)
              and, where the phantom has its "ood" regime, its test split against an
              out-of-distribution split of the same size built in the data stage
              (jaxthyroid.ood)
  localisation  Grad-CAM of the final model against the phantom's hot- and cold-nodule
              masks (pointing game, IoU) beside a random map (jaxthyroid.explain)
  ablations   ``cfg.ablations``: without GAN augmentation (always: its model, trained on
              real images only, is the GAN's judge), without the cross term, without
              two phases
  baselines   the comparison networks, each trained once on the same data
  scarcity    macro F1 against real images per finding set, with and without GAN images
  kfold       only with ``--config.classifier.folds=K`` (K >= 2): k-fold cross-validation
              of the classifier stage's two arms (below)
  report      report.md, report.json and figures

k-fold (``classifier.folds = K``): the training and validation records of the seed's
phantom are cut into K folds stratified by finding set (seeded by the seed:
:mod:`jaxthyroid.cross_training.kfold`, the k-fold of ``jaxthyroid train``); fold k
validates (its best round picks the checkpoint), the other folds train, and every fold
is scored on the same, untouched test split. Each fold trains the classifier stage's
two arms, the full method (phase 1 + phase 2 on real + GAN images) and the plain
control (real images only), step-matched as there, under ``kfold/<arm>/fold_<k>/``;
the data, GAN and synthetic stages are shared by the folds. Every other stage (the
final model, its calibration and localisation, the ablations, baselines and scarcity
arms) stays on the fixed train/validation split. The report adds a per-fold table with
mean ± std over the folds (``report.json`` key ``kfold``); with ``folds = 0`` (the
default) nothing of this runs and the pipeline is as without it.

Every classifier budget is in optimiser steps, and every pair of arms a claim
compares is step-matched (same steps, batch and schedule; synthetic images change
what a batch holds, not how many batches there are): :func:`check_step_matched`
refuses a config where they are not, before anything trains.

A stage that finished wrote ``result.json`` and is skipped by a rerun; an interrupted
stage resumes (its trainings resume from their checkpoints); ``--force STAGE`` redoes
one. This module only composes library calls; every number in the report is read
from the stages' results.

Size (over ~400 lines, on purpose): the pipeline's stage functions in the order they run,
each a few lines composing library calls, beside the arm table they share; the report
itself is :mod:`jaxthyroid.paper_report`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from jaxthyroid import config as config_lib
from jaxthyroid import report

STAGES = (
    "data",
    "gan",
    "synthetic",
    "classifier",
    "generalisation",
    "localisation",
    "ablations",
    "baselines",
    "scarcity",
)


# ----------------------------------------------------------------------------- stage runner
class StageRunner:
    """Runs named stages once: skips finished ones, redoes forced ones, times each."""

    def __init__(
        self, root: pathlib.Path, force: Sequence[str] = (), *, label: str = "", stages: Sequence[str] = STAGES
    ):
        unknown = set(force) - set(stages)
        if unknown:
            raise config_lib.ConfigError(f"--force {', '.join(sorted(unknown))}: stages are {', '.join(stages)}")
        self.root, self.force, self.label, self.stages = root, set(force), label, tuple(stages)

    def __call__(self, name: str, fn: Callable[[pathlib.Path], dict]) -> dict:
        directory = self.root / name
        marker = directory / "result.json"
        index = f"[{self.stages.index(name) + 1}/{len(self.stages)}]"
        if name in self.force and directory.exists():
            shutil.rmtree(directory)
            self.force.discard(name)
        if marker.exists():
            print(f"{index} {self.label}{name}: finished earlier, skipped", flush=True)
            return json.loads(marker.read_text())["result"]
        directory.mkdir(parents=True, exist_ok=True)
        print(f"{index} {self.label}{name} ...", flush=True)
        start = time.perf_counter()
        result = fn(directory)
        elapsed = time.perf_counter() - start
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"elapsed_s": elapsed, "result": result}, indent=2, default=report.json_default))
        os.replace(tmp, marker)  # atomic: a half-written result never marks a stage done
        print(f"{index} {self.label}{name}: done in {elapsed:.0f} s", flush=True)
        return result


def stages(cfg) -> tuple[str, ...]:
    """The stages a preset runs: :data:`STAGES`, then ``kfold`` when ``classifier.folds`` is set."""
    return STAGES + (("kfold",) if cfg.classifier.folds else ())


# ----------------------------------------------------------------------------- configs
def load_preset(preset: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    name = preset if preset.endswith(".py") else f"reproduce_{preset}"
    return config_lib.load_config(name, overrides)


def classifier_config(cfg, workdir: pathlib.Path, seed: int, **changes) -> ml_collections.ConfigDict:
    """A cross-training config for one run: ``changes`` are ``"a.b": value`` pairs of
    keys the classifier config declares (the result is locked: an undeclared key is
    an error, here and wherever the run reads one). An arm is one run on the fixed
    split (``folds = 0``) unless ``changes`` set ``folds`` (the kfold stage)."""
    c = ml_collections.ConfigDict(cfg.classifier.to_dict())
    c.lock()
    c.workdir = str(workdir)
    c.seed = seed
    c.folds = 0
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        try:
            for p in parents:
                node = node[p]
            node[leaf] = value
        except (AttributeError, KeyError) as e:
            raise config_lib.ConfigError(f"classifier config has no key {key!r}: {e}") from None
    return c


# ----------------------------------------------------------------------------- arms
ABLATIONS = ("no_gan", "no_cross", "no_two_phase")


def arm_changes(cfg, synthetic_dir: str = "synthetic") -> dict[str, dict]:
    """Every classifier arm of the preset: name -> ``classifier_config`` changes.

    The classifier stage runs ``full`` (phase 1 and phase 2 on real + GAN images) and
    ``plain``, the control: the plain network trained once on the real images only, so
    that it answers "two-phase + cross term vs a plain ResNet" against ``no_gan`` (same
    data) and is untouched by the generated images. The ablations and baselines follow
    ``cfg.ablations`` and ``cfg.baselines`` (baselines on the control's data); the
    scarcity arms ``cfg.scarcity.per_set``.
    """
    gan = {"data.synthetic_dir": synthetic_dir, "data.synthetic_ratio": cfg.synthetic.ratio}
    ablations = {
        # Everything but the synthetic images (its phase-2 model, trained on real
        # images only, also judges the generated images: _gan_quality).
        "no_gan": {"plain.enabled": False},
        # Two phases, but phase 2 retrains the plain network (no cross term).
        "no_cross": {**gan, "phase2.model": "plain", "plain.enabled": False},
        # The cross-residual network trained once on everything.
        "no_two_phase": {**gan, "phase1.enabled": False, "phase2.enabled": False, "plain.model": "cross"},
    }
    unknown = set(cfg.ablations) - set(ABLATIONS)
    if unknown or "no_gan" not in cfg.ablations:
        raise config_lib.ConfigError(
            f"ablations must list no_gan (the GAN's judge) and only {', '.join(ABLATIONS)}; got {list(cfg.ablations)}"
        )
    single = {"phase1.enabled": False, "phase2.enabled": False, "plain.enabled": True}
    arms = {"full": {**gan, "plain.enabled": False}, "plain": dict(single)}
    arms.update({name: ablations[name] for name in ABLATIONS if name in cfg.ablations})
    for name in cfg.baselines:
        # Baselines train from random weights (model.init_from holds a ResNet's weights).
        arms[f"baseline/{name}"] = {"model.name": name, "model.num_filters": 0, "model.init_from": "", **single}
    for n in cfg.scarcity.per_set:
        for arm, ratio in (("real", 0.0), ("real_gan", cfg.synthetic.ratio)):
            arms[f"scarcity/n{n}_{arm}"] = {
                "data.train_per_set": int(n),
                "data.synthetic_dir": synthetic_dir if ratio else "",
                "data.synthetic_ratio": ratio,
                "plain.steps": int(cfg.scarcity.steps),
                **single,
            }
    return arms


# (claim, arm, its final phase, arm, its final phase): the comparisons the report makes.
def compared_pairs(cfg) -> list[tuple[str, str, str, str, str]]:
    arms = arm_changes(cfg)
    pairs = [("two-phase + cross vs plain", "no_gan", "phase2", "plain", "plain")]
    for name, claim in (("no_gan", "GAN"), ("no_cross", "cross term"), ("no_two_phase", "two-phase")):
        if name in arms:
            pairs.append((claim, "full", "phase2", name, "plain" if name == "no_two_phase" else "phase2"))
    for a in arms:
        if a.startswith("baseline/"):
            pairs.append((f"baseline {a.removeprefix('baseline/')} vs plain", "plain", "plain", a, "plain"))
        elif a.startswith("scarcity/") and a.endswith("_real"):
            n = a.removeprefix("scarcity/n").removesuffix("_real")
            pairs.append((f"GAN with {n} real images per set", a, "plain", f"{a}_gan", "plain"))
    if cfg.classifier.folds:
        pairs.append(("k-fold: full vs plain", "full", "phase2", "plain", "plain"))
    return pairs


def trajectory(c, final: str) -> list[dict]:
    """The phases that train ``final``'s model of run config ``c``, in order, each with
    its steps, batch and schedule."""
    from jaxthyroid import cross_training

    names = ["phase1", "phase2"] if final == "phase2" else [final]
    out = []
    for name in names:
        p = c[name]
        out.append(
            dict(
                steps=cross_training.phase_steps(c, name),
                batch_size=int(c.data.batch_size),
                optimizer=p.optimizer,
                schedule=p.schedule,
                warmup_fraction=float(p.warmup_fraction),
            )
        )
    return out


def check_step_matched(cfg) -> list[dict]:
    """Every compared pair's steps, batch and schedule; raises ConfigError if one differs.

    Same structure (two phases each): equal phase by phase. Two phases against one:
    equal total steps, batch size, optimiser and schedule.
    """
    arms = arm_changes(cfg)
    rows = []
    for claim, a, fa, b, fb in compared_pairs(cfg):
        ta = trajectory(classifier_config(cfg, pathlib.Path(a), 0, **arms[a]), fa)
        tb = trajectory(classifier_config(cfg, pathlib.Path(b), 0, **arms[b]), fb)
        if len(ta) == len(tb):
            same = ta == tb
        else:
            keys = ("batch_size", "optimizer", "schedule")
            same = sum(t["steps"] for t in ta) == sum(t["steps"] for t in tb) and all(
                len({t[k] for t in ta + tb}) == 1 for k in keys
            )
        rows.append({"claim": claim, "a": f"{a}:{fa}", "b": f"{b}:{fb}", "a_phases": ta, "b_phases": tb})
        if not same:
            raise config_lib.ConfigError(
                f"{claim}: {a} ({fa}) and {b} ({fb}) are not step-matched: {ta} vs {tb}. Compared arms need "
                "the same optimiser steps (phase 1 + phase 2 = the one-phase arm's), batch size and schedule."
            )
    return rows


def check_folds(cfg) -> None:
    """``classifier.folds`` is 0 (no k-fold) or a k-fold reproduce can run; ConfigError otherwise."""
    c = cfg.classifier
    if not c.folds:
        return
    if c.folds < 2:
        raise config_lib.ConfigError(
            f"classifier.folds={c.folds}: 0 (no k-fold, the default) or at least 2 folds "
            "(--config.classifier.folds=5 cuts train + validation into 5 folds)"
        )
    if c.fold != -1:
        raise config_lib.ConfigError(
            f"classifier.fold={c.fold}: reproduce runs every fold of classifier.folds={c.folds}; leave fold at -1"
        )
    if c.data.source == "phantom" and c.data.n_train + c.data.n_val < c.folds:
        raise config_lib.ConfigError(
            f"classifier.folds={c.folds}: the phantom's {c.data.n_train} train + {c.data.n_val} validation "
            "images cannot make that many folds"
        )


def _summary(ev: dict) -> dict:
    """The Tab.3 numbers of one evaluation (classification_report output)."""
    out = {}
    for subset in ("all", "single", "cross"):
        s = ev[subset]
        out[subset] = {"exact_match": s["exact_match"], "count": s["count"], **s["macro"]}
    return out


# ----------------------------------------------------------------------------- stages
def _stage_data(cfg, seed):
    def stage(directory):
        from jaxthyroid import cross_training

        d = cfg.classifier.data
        path = cross_training.build_phantom(d, seed=seed)
        result = {"dataset_dir": path}
        from jaxthyroid import ood

        if ood.regime_available():  # the held-out phantom regime, the test split's size
            result["ood"] = ood.build_split(
                directory / "ood_test.npz", n=d.n_test, size=d.size, cross_fraction=d.cross_fraction, seed=seed
            )
        return result

    return stage


def _stage_gan(cfg, seed, data_dir):
    def stage(directory):
        from jaxthyroid.data import features
        from jaxthyroid.gan import dcgan as gan_dcgan
        from jaxthyroid.gan import srgan as gan_srgan

        train = features.load_source(data_dir, "train")
        test = features.load_source(data_dir, "test")
        dcgan = gan_dcgan.train_dcgan(cfg.gan.dcgan, train, directory / "dcgan", seed=seed)
        # The phantom was built with this seed (_stage_data): SR is also scored against its noise-free images.
        srgan = gan_srgan.train_srgan(
            cfg.gan.srgan,
            train,
            test,
            directory / "srgan",
            seed=seed,
            hr_size=cfg.classifier.data.size,
            phantom_seed=seed,
        )
        return {"dcgan": dcgan, "srgan": srgan}

    return stage


def _stage_synthetic(cfg, seed, gan_dir):
    def stage(directory):
        from jaxthyroid.data import build  # TFDS where installed, else NumPy files
        from jaxthyroid.gan import generate

        images, ids = generate.generate(
            gan_dir / "dcgan",
            gan_dir / "srgan",
            cfg.gan,
            per_set=cfg.synthetic.per_set,
            seed=seed,
            samples_path=directory / "samples.png",
        )
        path = build.build_synthetic_dataset(directory / "tfds", "synthetic", images, ids, input_range="unit")
        return {"dataset_dir": path, "count": int(len(ids)), "samples": str(directory / "samples.png")}

    return stage


def _run_classifier(c) -> dict:
    from jaxthyroid import cross_training

    results = cross_training.run(c)
    return {
        "evaluations": results["evaluations"],
        "histories": results["histories"],
        "budgets": results["budgets"],
        "workdir": str(c.workdir),
    }


def _stage_classifier(cfg, seed, synthetic_dir):
    def stage(directory):
        arms = arm_changes(cfg, synthetic_dir)
        full = _run_classifier(classifier_config(cfg, directory / "full", seed, **arms["full"]))
        plain = _run_classifier(classifier_config(cfg, directory / "plain", seed, **arms["plain"]))
        # One result: phase 1 and 2 of the full method, the control as "plain".
        for key in ("evaluations", "histories", "budgets"):
            full[key]["plain"] = plain[key]["plain"]
        full["plain_workdir"] = plain["workdir"]
        return full

    return stage


def _stage_generalisation(run_dir, data: dict):
    def stage(directory):
        from jaxthyroid import calibration, ood

        result = {"calibration": calibration.calibrate_run(run_dir, which="phase2")}
        if "ood" in data:  # a data stage run before the OOD regime existed has none
            result["ood"] = ood.compare(run_dir, data["ood"]["path"], which="phase2")
        return result

    return stage


def _stage_localisation(run_dir):
    def stage(directory):
        from jaxthyroid import explain

        # Grad-CAM of the final model on fresh hot- and cold-nodule phantom images,
        # each map beside a random map of its grid (pointing game, IoU).
        return explain.localisation_report(run_dir, which="phase2", findings=explain.NODULE_FINDINGS)

    return stage


def _stage_ablations(cfg, seed, synthetic_dir):
    def stage(directory):
        arms = arm_changes(cfg, synthetic_dir)
        runs = {name: classifier_config(cfg, directory / name, seed, **arms[name]) for name in cfg.ablations}
        if "no_cross" in runs:
            _reuse_phase1(
                classifier_config(cfg, directory.parent / "classifier" / "full", seed, **arms["full"]), runs["no_cross"]
            )
        result = {name: _run_classifier(c) for name, c in runs.items()}
        result["gan_quality"] = _gan_quality(directory / "no_gan", synthetic_dir, gan_dir=directory.parent / "gan")
        return result

    return stage


def _reuse_phase1(done_run, run) -> None:
    """Copies ``done_run``'s finished phase 1 into ``run`` when phase 1 of both is the
    same training (same data, model, seed and phase-1 settings; training is
    deterministic), so ``run`` restores it instead of training it again."""
    source = pathlib.Path(done_run.workdir) / "phase1"
    target = pathlib.Path(run.workdir) / "phase1"
    same = all(done_run[k].to_dict() == run[k].to_dict() for k in ("data", "model", "phase1"))
    if same and done_run.seed == run.seed and (source / "done.json").exists() and not target.exists():
        shutil.copytree(source, target)


def _gan_quality(real_only_run: pathlib.Path, synthetic_dir: str, *, which: str = "phase2", gan_dir=None) -> dict:
    """How a classifier trained on real images only (phase ``which`` of the run
    ``real_only_run``; it should have seen single- and cross-feature images and be
    trained to convergence) sees the generated images: agreement, Fréchet distance,
    the judge's own accuracy, and the quality gate's verdict (``gate``). A failed
    gate is announced loudly and kept in ``<gan_dir>/quality.json`` when given."""
    from jaxthyroid import cross_training
    from jaxthyroid.data import features
    from jaxthyroid.gan import quality as gan_quality

    run_cfg, taxonomy, model, variables = cross_training.load_run(real_only_run, which)
    data = cross_training.load_data(run_cfg.data, seed=run_cfg.seed)
    synthetic = features.load_source(synthetic_dir, "train")
    records = [synthetic[i] for i in range(len(synthetic))]
    images = np.stack([r["image"] for r in records]).astype(np.float32)
    ids = np.asarray([int(r["finding_set"]) for r in records], np.int32)
    result = gan_quality.generation_quality(model, variables, images, ids, data.train, data.test, taxonomy=taxonomy)
    result["gate"] = gan_quality.quality_gate(result)
    result["judge_run"] = str(real_only_run)
    if gan_dir is not None:
        gan_quality.write_verdict(gan_dir, result["gate"])
    if not result["gate"]["passed"]:
        gan_quality.warn_failing(result["gate"])
    return result


def _stage_baselines(cfg, seed, synthetic_dir):
    def stage(directory):
        arms = arm_changes(cfg, synthetic_dir)
        return {
            name: _run_classifier(classifier_config(cfg, directory / name, seed, **arms[f"baseline/{name}"]))
            for name in cfg.baselines
        }

    return stage


def _stage_scarcity(cfg, seed, synthetic_dir):
    def stage(directory):
        arms = arm_changes(cfg, synthetic_dir)
        out = {}
        for n in cfg.scarcity.per_set:
            for arm, key in (("real", "real"), ("real+gan", "real_gan")):
                c = classifier_config(cfg, directory / f"n{n}_{key}", seed, **arms[f"scarcity/n{n}_{key}"])
                out[f"{n}/{arm}"] = _run_classifier(c)
        return out

    return stage


# The classifier stage's arms that the kfold stage repeats per fold -> the phase of each one's model.
KFOLD_ARMS = {"full": "phase2", "plain": "plain"}


def _stage_kfold(cfg, seed, synthetic_dir):
    def stage(directory):
        from jaxthyroid import cross_training, paper_report

        arms = arm_changes(cfg, synthetic_dir)
        k = int(cfg.classifier.folds)
        per_fold = [{} for _ in range(k)]
        result = {"folds": k, "seed": seed, "arms": {}, "per_fold": per_fold}
        for arm, final in KFOLD_ARMS.items():
            c = classifier_config(cfg, directory / arm, seed, folds=k, **arms[arm])
            summary = cross_training.run(c)  # kfold.run_folds: one run per fold, kfold.json
            result["arms"][arm] = {"phase": final, "workdir": summary["workdir"]}
            for row, metrics, workdir in zip(per_fold, summary["per_fold"], summary["fold_workdirs"]):
                fold_results = cross_training.read_results(workdir)
                budget = paper_report.model_budget(fold_results["budgets"], final)
                row[arm] = {
                    **metrics[final],
                    "steps": budget["steps"],
                    "images_seen": budget["images_seen"],
                    "workdir": workdir,
                }
                if final == "plain":  # the control trains on the fold's real training images alone
                    row["images"] = {
                        "train": fold_results["budgets"]["plain"]["train_images"],
                        "validation": fold_results["histories"]["plain"][-1]["val_count"],
                        "test": fold_results["evaluations"]["plain"]["all"]["count"],
                    }
        return result

    return stage


# ----------------------------------------------------------------------------- driver
def run_seed(cfg, root: pathlib.Path, seed: int, force: Sequence[str], label: str = "") -> dict:
    stage = StageRunner(root, force, label=label, stages=stages(cfg))
    data = stage("data", _stage_data(cfg, seed))
    gan = stage("gan", _stage_gan(cfg, seed, data["dataset_dir"]))
    synthetic = stage("synthetic", _stage_synthetic(cfg, seed, root / "gan"))
    sdir = synthetic["dataset_dir"]
    classifier = stage("classifier", _stage_classifier(cfg, seed, sdir))
    result = {
        "data": data,
        "gan": gan,
        "synthetic": synthetic,
        "classifier": classifier,
        "generalisation": stage("generalisation", _stage_generalisation(classifier["workdir"], data)),
        "localisation": stage("localisation", _stage_localisation(classifier["workdir"])),
        "ablations": stage("ablations", _stage_ablations(cfg, seed, sdir)),
        "baselines": stage("baselines", _stage_baselines(cfg, seed, sdir)),
        "scarcity": stage("scarcity", _stage_scarcity(cfg, seed, sdir)),
    }
    if cfg.classifier.folds:
        result["kfold"] = stage("kfold", _stage_kfold(cfg, seed, sdir))
        if result["kfold"]["folds"] != cfg.classifier.folds:  # a finished stage is not redone
            raise config_lib.ConfigError(
                f"{root / 'kfold'} holds a {result['kfold']['folds']}-fold run, not classifier.folds="
                f"{cfg.classifier.folds}: add --force kfold to redo it"
            )
    return result


def run(
    preset: str = "quick", *, out=None, force: Sequence[str] = (), seeds: int = 1, overrides: Sequence[str] = ()
) -> pathlib.Path:
    """Runs every stage for ``seeds`` seeds and writes ``OUT/report.md``; returns its path."""
    cfg = load_preset(preset, overrides)
    check_folds(cfg)
    check_step_matched(cfg)  # before anything trains
    out = pathlib.Path(out or f"runs/reproduce_{pathlib.Path(preset).stem}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    start = time.perf_counter()
    per_seed = []
    for seed in range(seeds):
        label = f"seed {seed}: " if seeds > 1 else ""
        per_seed.append(run_seed(cfg, out / f"seed{seed}", seed, force, label))
    from jaxthyroid import paper_report

    path = paper_report.write(out, cfg, per_seed, elapsed_s=time.perf_counter() - start)
    print(f"report written in {time.perf_counter() - start:.0f} s in all", flush=True)
    return path
