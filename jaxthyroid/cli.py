"""The ``jaxthyroid`` command (also ``python -m jaxthyroid``).

Each subcommand only composes library functions; heavy modules are imported inside
the handlers so ``jaxthyroid --help`` is instant.

  jaxthyroid simulate --n 48 --out sim/            simulated scintigrams as 16-bit PNG (+DICOM)
  jaxthyroid data build phantom --quick            the phantom TFDS data set
  jaxthyroid data build folder ROOT                a user's image folders as a TFDS data set
  jaxthyroid train --config quick [--config.k=v]   two-phase cross-training from a config
  jaxthyroid evaluate --run DIR                    metrics of a finished run on its test split
  jaxthyroid evaluate --run DIR --data D --out O   external validation with bootstrap 95 % intervals
  jaxthyroid predict --run DIR IMAGE...            findings with probabilities
  jaxthyroid explain --run DIR IMAGE... --out D    heat maps (Grad-CAM / occlusion) per image
  jaxthyroid weights import FILE --arch A --out W  torchvision ResNet weights for our ResNets
  jaxthyroid reproduce --preset quick              the whole method end to end, with report
  jaxthyroid demo                                  what `make demo` runs

Size (over ~400 lines, on purpose): one parser and one short handler per subcommand, in
one place so the command line reads as a whole; handlers only compose library calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jaxthyroid import compile_cache


class CLIError(Exception):
    """An error shown to the user as one line, without a traceback."""


# --------------------------------------------------------------------------- simulate
def _cmd_simulate(args) -> None:
    from jaxthyroid import phantom
    from jaxthyroid.data import export

    summary = export.write_simulated(
        args.out,
        args.n,
        size=args.size,
        seed=args.seed,
        cross_fraction=args.cross_fraction,
        dicom=args.dicom,
        params=phantom.PhantomParams.regime(args.domain),
    )
    print(f"wrote {args.n} simulated scintigrams ({args.size}x{args.size}, {args.domain} phantom) to {args.out}")
    for k, v in summary.items():
        if k != "paths":
            print(f"  {k}: {v}")


# --------------------------------------------------------------------------- data
QUICK_SIZES = dict(size=64, n_train=480, n_val=120, n_test=120)


def _cmd_data_build(args) -> None:
    if args.source == "phantom":
        from jaxthyroid.data import phantom_builder

        sizes = dict(size=args.size, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test)
        if args.quick:
            sizes = {k: (v if getattr(args, k) is not None else QUICK_SIZES[k]) for k, v in sizes.items()}
        sizes = {k: v for k, v in sizes.items() if v is not None}
        info = phantom_builder.build_phantom(
            args.data_dir, cross_fraction=args.cross_fraction, seed=args.seed, domain=args.domain, **sizes
        )
        print(f"phantom data set ready: {info}")
    else:
        if not args.root:
            raise CLIError("data build folder needs ROOT: a folder of <finding>[+<finding>]/ image folders")
        from jaxthyroid.data import folder_builder

        path, plan = folder_builder.build_folder(
            args.root,
            args.data_dir,
            name=args.name,
            size=args.size or 128,
            seed=args.seed,
            taxonomy_from_folders=args.taxonomy_from_folders,
            labels_csv=args.labels_csv,
            skip_bad=args.skip_bad,
        )
        print(f"folder data set ready: {path}")
        print(f"  {len(plan.taxonomy.finding_sets)} finding sets, findings: {', '.join(plan.taxonomy.findings)}")
        if plan.skipped:
            print(f"  skipped {len(plan.skipped)} bad file(s)")
        print(
            f"  train on it with: jaxthyroid train --config cross_training_quick "
            f"--config.data.source=folder --config.data.dataset_dir={path} --config.data.size={args.size or 128}"
        )


# --------------------------------------------------------------------------- train / evaluate / predict
def _cmd_train(args, overrides) -> None:
    import time

    from jaxthyroid import config as config_lib
    from jaxthyroid import cross_training

    start = time.perf_counter()
    cfg = config_lib.load_config(args.config, overrides)
    if args.workdir:
        with cfg.unlocked():
            cfg.workdir = args.workdir
    result = cross_training.run(cfg)
    print(f"run directory: {result['workdir']}  ({time.perf_counter() - start:.0f} s)")
    check = result.get("graft_check", {})
    if check:
        print(
            f"graft check: max |logit difference| phase 1 vs grafted cross model = "
            f"{check['max_abs_logit_diff']:.2e} on {check['images']} validation images"
        )
    print(cross_training.summary_table(result))


def _cmd_evaluate(args, overrides) -> None:
    from jaxthyroid import cross_training

    if overrides and not args.data:
        raise CLIError("--config.KEY=VALUE overrides apply to a --data config; give --data CONFIG")
    if args.data or args.bootstrap or args.out or args.split or args.map:
        from jaxthyroid import external

        result = external.evaluate(
            args.run,
            data=args.data,
            overrides=overrides,
            which=args.which,
            decision=args.decision,
            split=args.split,
            renames=external.parse_renames(args.map),
            bootstrap=1000 if args.bootstrap is None else args.bootstrap,
            seed=args.seed,
            out_dir=args.out,
        )
        if args.json:
            print(json.dumps(result, indent=2, default=float))
            return
        print(external.tables(result))
        lacking = result.get("sets_the_run_cannot_predict")
        if lacking:
            print(f"finding sets of the data set that the run's taxonomy lacks: {', '.join(lacking)}")
        if args.out:
            print(f"wrote evaluation.json, evaluation.md and confusion.png to {args.out}")
        return
    result = cross_training.evaluate_run(args.run, which=args.which, decision=args.decision)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return
    # The run's budgets (what `train` prints in this column), from its results.json.
    budgets = (cross_training.read_results(args.run) or {}).get("budgets", {})
    print(cross_training.summary_table({"evaluations": {args.which: result}, "budgets": budgets}))
    rows = [
        {
            "finding": name,
            **{
                m: result["all"]["per_finding"][name][m]
                for m in ("recall", "precision", "specificity", "f1", "auc", "support")
            },
        }
        for name in result["all"]["per_finding"]
    ]
    from jaxthyroid import report

    print(f"per finding, all {result['all']['count']} test images:")
    print(report.markdown_table(rows, list(rows[0]), precision=3))


def _cmd_predict(args) -> None:
    from jaxthyroid import cross_training

    rows = cross_training.predict_files(args.run, args.images, which=args.which, decision=args.decision)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        probs = "  ".join(f"{k}={v:.3f}" for k, v in row["probabilities"].items())
        print(f"{row['file']}: {'+'.join(row['findings'])}\n    {probs}")


# --------------------------------------------------------------------------- augment
def _cmd_augment(args) -> None:
    from jaxthyroid.gan import generate

    generate.augment_command(args)


# --------------------------------------------------------------------------- reproduce / demo
def _cmd_reproduce(args, overrides) -> None:
    from jaxthyroid import reproduce

    path = reproduce.run(args.preset, out=args.out, force=args.force or (), seeds=args.seeds, overrides=overrides)
    print(f"report: {path}")


def _cmd_demo(args) -> None:
    from jaxthyroid import reproduce

    path = reproduce.run("quick", out=args.out, force=(), seeds=1, overrides=())
    print(f"report: {path}")


def _cmd_bench(args, rest) -> None:
    import importlib.util
    import runpy

    # benchmarks/ is part of the source checkout, not of the installed package: run
    # from the repository root, it is found there.
    if os.path.isfile(os.path.join("benchmarks", "run.py")) and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if importlib.util.find_spec("benchmarks") is None:
        print(
            "jaxthyroid bench runs benchmarks/ from a source checkout (they are not installed with the "
            "package): cd into the repository and run `jaxthyroid bench` or `python -m benchmarks.run` there",
            file=sys.stderr,
        )
        raise SystemExit(0 if rest in (["-h"], ["--help"]) else 2)
    sys.argv = ["benchmarks.run", *rest]
    runpy.run_module("benchmarks.run", run_name="__main__")


# --------------------------------------------------------------------------- explain / weights
def _cmd_explain(args) -> None:
    from jaxthyroid import explain

    rows = explain.explain_files(
        args.run, args.images, args.out, method=args.method, which=args.which, block=args.block
    )
    for row in rows:
        probs = "  ".join(f"{k}={v:.3f}" for k, v in row["probabilities"].items())
        print(f"{row['file']}: {'+'.join(row['findings'])} -> {row['png']}\n    {probs}")


def _cmd_weights_import(args) -> None:
    from jaxthyroid.models import torchvision_import

    info = torchvision_import.import_file(args.file, args.arch, args.out, in_channels=args.channels)
    print(
        f"imported {info['arch']} ({info['parameters']:,} parameters, {info['in_channels']} input channel(s), "
        f"head dropped) -> {info['out']}"
    )
    print(
        f"  train from it: --config.model.init_from={info['out']} --config.model.name={info['arch']} "
        "--config.model.num_filters=0 --config.model.stem=imagenet (torchvision's width and stem)"
    )


# --------------------------------------------------------------------------- parser
DECISIONS = ("set", "threshold")  # jaxthyroid.findings.DECISIONS (not imported: --help stays instant)
DECISION_HELP = (
    "set: the most probable finding set of the taxonomy; threshold: every finding with p >= 0.5 "
    "(default: the run's config.decision)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxthyroid",
        description="Thyroid scintigraphy diagnosis in JAX: simulator, GAN augmentation, "
        "cross-residual ResNet, two-phase cross-training.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="write simulated scintigrams as 16-bit PNG (and DICOM)")
    s.add_argument("--n", type=int, default=48, help="number of images (default 48)")
    s.add_argument("--out", required=True, help="output folder (one subfolder per finding set)")
    s.add_argument("--size", type=int, default=128, choices=(64, 128, 256))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cross-fraction", type=float, default=0.25, help="share of cross-feature images")
    s.add_argument("--dicom", action="store_true", help="also write NM DICOM files")
    s.add_argument(
        "--domain",
        default="default",
        choices=("default", "randomised", "ood"),
        help="phantom regime (docs/phantom.md): the training default, domain-randomised, or held out",
    )
    s.set_defaults(handler=_cmd_simulate)

    d = sub.add_parser("data", help="build data sets (TFDS, array_record)")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    b = dsub.add_parser("build", help="build the phantom data set or one from a folder of images")
    b.add_argument("source", choices=("phantom", "folder"))
    b.add_argument("root", nargs="?", help="folder: ROOT/<finding>[+<finding>]/*.png|tif|jpg|dcm")
    b.add_argument(
        "--data-dir",
        default=os.environ.get("JAXTHYROID_DATA_DIR", "data_dir"),
        help="where data sets are written (default ./data_dir or $JAXTHYROID_DATA_DIR)",
    )
    b.add_argument("--size", type=int, default=None, help="image size (phantom: 64/128/256; default 128)")
    b.add_argument("--n-train", type=int, default=None)
    b.add_argument("--n-val", type=int, default=None)
    b.add_argument("--n-test", type=int, default=None)
    b.add_argument("--quick", action="store_true", help=f"phantom at quick size {QUICK_SIZES}")
    b.add_argument("--cross-fraction", type=float, default=0.25)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--domain",
        default="default",
        choices=("default", "randomised", "ood"),
        help="phantom: the regime (docs/phantom.md); e.g. --domain ood --n-train 0 --n-val 0 for a held-out test split",
    )
    b.add_argument("--name", default=None, help="folder: data set name (default: the folder's name)")
    b.add_argument(
        "--taxonomy-from-folders",
        action="store_true",
        help="folder: take the findings from the folder names instead of the default six",
    )
    b.add_argument("--labels-csv", default=None, help="folder: CSV of path,finding_set instead of folders")
    b.add_argument("--skip-bad", action="store_true", help="folder: skip unreadable files (reports a count)")
    b.set_defaults(handler=_cmd_data_build)

    t = sub.add_parser(
        "train",
        help="two-phase cross-training from a config file",
        description="Overrides: --config.KEY=VALUE (e.g. --config.phase2.epochs=5).",
    )
    t.add_argument("--config", required=True, help="config file or name in experiments/configs (e.g. quick)")
    t.add_argument("--workdir", default=None, help="run directory (default: the config's workdir)")
    t.set_defaults(handler=_cmd_train, takes_overrides=True)

    e = sub.add_parser("evaluate", help="evaluate a run's final model on its test split")
    e.add_argument("--run", required=True, help="run directory written by `jaxthyroid train`")
    e.add_argument(
        "--which",
        default="phase2",
        choices=("phase1", "phase2", "plain"),
        help="which model of the run (default phase2, the cross-trained one)",
    )
    e.add_argument("--json", action="store_true", help="the full report as JSON")
    e.add_argument("--decision", choices=DECISIONS, default=None, help=DECISION_HELP)
    e.add_argument(
        "--data",
        default=None,
        help="external validation: a data set folder printed by `jaxthyroid data build folder`, or a config "
        "(file or name) whose data section names one, e.g. a phantom set with --config.seed=7 (default: the "
        "run's own test split)",
    )
    e.add_argument(
        "--split",
        default=None,
        choices=("test", "validation", "train", "all"),
        help="which images of --data (default: all of a data set folder; test of a config or the run's own data)",
    )
    e.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="DATA=RUN",
        help="rename a finding of --data to the run's name (repeatable), e.g. toxic_adenoma=hot_nodule",
    )
    e.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        help="bootstrap resamplings of the images for 95%% intervals (default 1000 with --data/--out, 0: none)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    e.add_argument("--out", default=None, help="folder for evaluation.json, evaluation.md and confusion.png")
    e.set_defaults(handler=_cmd_evaluate, takes_overrides=True)

    pr = sub.add_parser("predict", help="findings with probabilities for image files")
    pr.add_argument("--run", required=True, help="run directory written by `jaxthyroid train`")
    pr.add_argument("images", nargs="+", help="PNG/TIFF/JPEG/DICOM files")
    pr.add_argument(
        "--which",
        default="phase2",
        choices=("phase1", "phase2", "plain"),
        help="which model of the run (default phase2, the cross-trained one)",
    )
    pr.add_argument("--json", action="store_true", help="one JSON list of {file, findings, probabilities}")
    pr.add_argument("--decision", choices=DECISIONS, default=None, help=DECISION_HELP)
    pr.set_defaults(handler=_cmd_predict)

    a = sub.add_parser("augment", help="generate images with trained DCGAN+SRGAN into a synthetic TFDS set")
    a.add_argument(
        "--gan-dir", default=None, help="folder holding dcgan/ and srgan/ (e.g. a reproduce run's seed0/gan)"
    )
    a.add_argument("--dcgan-dir", default=None)
    a.add_argument("--srgan-dir", default=None)
    a.add_argument("--per-set", type=int, default=100, help="images per finding set (default 100)")
    a.add_argument("--data-dir", default=os.environ.get("JAXTHYROID_DATA_DIR", "data_dir"))
    a.add_argument("--name", default="synthetic", help="data set name (default synthetic)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--overwrite", action="store_true", help="replace an existing set of that name")
    a.set_defaults(handler=_cmd_augment)

    r = sub.add_parser(
        "reproduce",
        help="the whole method end to end, with report.md",
        description="Overrides: --config.KEY=VALUE apply to the preset.",
    )
    r.add_argument("--preset", default="quick", help="quick | paper | a config file")
    r.add_argument("--out", default=None, help="output folder (default runs/reproduce_<preset>)")
    r.add_argument("--force", action="append", help="redo this stage (repeatable)")
    r.add_argument("--seeds", type=int, default=1, help="repeat the runs with this many seeds")
    r.set_defaults(handler=_cmd_reproduce, takes_overrides=True)

    ex = sub.add_parser("explain", help="heat maps (Grad-CAM or occlusion) of a run's findings for image files")
    ex.add_argument("--run", required=True, help="run directory written by `jaxthyroid train`")
    ex.add_argument("images", nargs="+", help="PNG/TIFF/JPEG/DICOM files")
    ex.add_argument("--out", required=True, help="folder for one PNG per image (and explain.json)")
    ex.add_argument("--method", default="gradcam", choices=("gradcam", "occlusion"), help="default gradcam")
    ex.add_argument(
        "--which",
        default="phase2",
        choices=("phase1", "phase2", "plain"),
        help="which model of the run (default phase2, the cross-trained one)",
    )
    ex.add_argument("--block", default=None, help="gradcam: the block whose output is explained (default the last)")
    ex.set_defaults(handler=_cmd_explain)

    w = sub.add_parser("weights", help="pretrained weights (torchvision ResNets)")
    wsub = w.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    wi = wsub.add_parser("import", help="torchvision ResNet weights (.safetensors, or .pth with torch) -> our ResNet")
    wi.add_argument("file", help="torchvision state dict: .safetensors (or .pth when torch is installed)")
    wi.add_argument("--arch", required=True, choices=("resnet18", "resnet34", "resnet50", "resnet101"))
    wi.add_argument("--out", required=True, help="output file (msgpack), for model.init_from")
    wi.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1: RGB stem summed to grey (default)")
    wi.set_defaults(handler=_cmd_weights_import)

    dm = sub.add_parser("demo", help="what `make demo` runs: reproduce --preset quick")
    dm.add_argument("--out", default="demo")
    dm.set_defaults(handler=_cmd_demo)

    bn = sub.add_parser("bench", help="run the benchmark suite (python -m benchmarks.run)", add_help=False)
    bn.set_defaults(handler=_cmd_bench, takes_rest=True)
    return p


def main(argv: list[str] | None = None) -> int:
    compile_cache.enable()  # persistent XLA cache ($JAXTHYROID_CACHE_DIR; 'off' disables)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command in ("train", "evaluate", "predict", "augment", "reproduce", "demo"):
            from jaxthyroid import parallel

            # Multi-process runs (JAX_COORDINATOR_ADDRESS / JAX_DISTRIBUTED_AUTO=1); a no-op otherwise.
            parallel.initialize_distributed()
        if getattr(args, "takes_rest", False):
            args.handler(args, rest)
        elif getattr(args, "takes_overrides", False):
            bad = [a for a in rest if not a.startswith("--config.")]
            if bad:
                parser.error(f"unrecognized arguments: {' '.join(bad)}")
            args.handler(args, rest)
        else:
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            args.handler(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # known user errors get one line; anything else a traceback
        if os.environ.get("JAXTHYROID_DEBUG"):
            raise
        from jaxthyroid.config import ConfigError
        from jaxthyroid.findings import UnknownFindingError

        user_errors = (CLIError, ConfigError, UnknownFindingError, FileNotFoundError)
        extra = _user_error_types()
        if isinstance(e, user_errors + extra):
            print(f"jaxthyroid: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


def _user_error_types() -> tuple[type, ...]:
    """Error classes of the library that mean a bad input, not a bug (imported lazily)."""
    types = []
    for module, name in (
        ("jaxthyroid.data.features", "DataError"),
        ("jaxthyroid.data.images", "ImageError"),
        ("jaxthyroid.train.loop", "TrainingDiverged"),
        ("jaxthyroid.train.checkpoint", "CheckpointError"),
        ("jaxthyroid.models.torchvision_import", "WeightsError"),
        ("jaxthyroid.explain", "ExplainError"),
        ("jaxthyroid.external", "ExternalDataError"),
    ):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            types.append(getattr(mod, name))
    return tuple(types)


if __name__ == "__main__":
    raise SystemExit(main())
