r"""DCGAN variants scored by the judge of a finished ``reproduce`` run (docs/gan.md).

Command (from the folder ``jaxthyroid reproduce --preset quick --out demo`` ran in):
  python experiments/gan_variants.py --run demo/seed0 --out runs/gan_variants \
      --variant base= --variant ema999=ema_decay=0.999 --variant ema995=ema_decay=0.995

Each ``--variant NAME=KEY=VALUE,KEY=VALUE`` trains the run's DCGAN config with those
overrides (``NAME=`` alone: the config as it is) on the run's training images and seed,
generates ``--per-set`` images per finding set, super-resolves them with the run's own
SRGAN, writes them as a synthetic set and scores them exactly as ``reproduce`` does
(:func:`jaxthyroid.reproduce._gan_quality`, the run's ``no_gan`` arm as the judge):
agreement with the conditioned finding set, Fréchet distance in the judge's features
against the real-vs-real floor. Every variant has the run's step budget unless a
variant overrides ``steps``. Prints a Markdown table; numbers belong in docs/gan.md
with date and machine. A finished variant is not trained again.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition("=")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = _value(value)
    return name, overrides


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", required=True, help="a finished reproduce seed folder (holding data/, gan/, ablations/)"
    )
    parser.add_argument("--out", default="runs/gan_variants")
    parser.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE,KEY=VALUE (repeatable)")
    parser.add_argument("--per-set", type=int, default=40)
    args = parser.parse_args(argv)

    import ml_collections

    from jaxthyroid import reproduce
    from jaxthyroid.data import build, features
    from jaxthyroid.gan import dcgan, generate, settings

    run = pathlib.Path(args.run)
    out = pathlib.Path(args.out)
    saved = json.loads((run / "gan" / "dcgan" / dcgan.CONFIG_FILE).read_text())  # the run's config and seed
    seed, base_cfg = saved["seed"], saved["config"]
    data = json.loads((run / "data" / "result.json").read_text())
    train = features.load_source(data["result"]["dataset_dir"], "train")  # relative to where reproduce ran
    rows = []
    for spec in args.variant or ["base="]:
        name, overrides = _parse_variant(spec)
        cfg = settings.dcgan_config(**{**base_cfg, **overrides})
        workdir = out / name
        started = time.perf_counter()
        summary = dcgan.train_dcgan(cfg, train, workdir / "dcgan", seed=seed)
        gan_cfg = ml_collections.ConfigDict({"dcgan": cfg, "srgan": None})
        images, ids = generate.generate(
            workdir / "dcgan",
            run / "gan" / "srgan",
            gan_cfg,
            per_set=args.per_set,
            seed=seed,
            samples_path=workdir / "samples.png",
        )
        dataset_dir = build.build_synthetic_dataset(workdir / "tfds", "synthetic", images, ids, input_range="unit")
        quality = reproduce._gan_quality(run / "ablations" / "no_gan", str(dataset_dir))
        gate = quality["gate"]
        rows.append((name, overrides, summary["steps"], gate, time.perf_counter() - started))
        (workdir / "quality.json").write_text(json.dumps(quality, indent=1))
        print(
            f"{name}: agreement {gate['agreement']:.3f} ({gate['agreement'] / gate['judge_accuracy']:.2f}x judge), "
            f"Fréchet {gate['frechet']:.3f} ({gate['frechet_ratio']:.1f}x floor)",
            flush=True,
        )
    print("\n| variant | overrides | steps | agreement (× judge) | Fréchet (× floor) | wall |")
    print("|---|---|---|---|---|---|")
    for name, overrides, steps, g, wall in rows:
        print(
            f"| {name} | {overrides or '—'} | {steps} | {g['agreement']:.3f} ({g['agreement'] / g['judge_accuracy']:.2f}×) "
            f"| {g['frechet']:.3f} ({g['frechet_ratio']:.1f}×) | {wall:.0f} s |"
        )
    if rows:
        g = rows[0][3]
        print(f"\njudge accuracy on real test images {g['judge_accuracy']:.3f}; floor {g['frechet_real_vs_real']:.3f}")


if __name__ == "__main__":
    main()
