"""GAN augmentation on the phantom: DCGAN + SRGAN, super-resolution scores, generation quality.

  python experiments/gan.py --config gan_quick [--workdir DIR] [--classifier-run RUN] [--config.dcgan.steps=1000 ...]

Stages (each skipped when finished, resumed when interrupted), under WORKDIR:
  dcgan/        conditional DCGAN (samples_step<k>.png)
  srgan/        SRResNet pre-training + SRGAN (sr_comparison.png; PSNR/SSIM against the
                noisy and the noise-free high-resolution test images)
  samples.png   generated images, one row per finding set
  classifier/   plain ResNet on real images only (unless --classifier-run is given)
  result.json   everything printed at the end

This script only composes library calls (jaxthyroid.gan, cross_training).
"""

import argparse
import json
import pathlib
import time

import ml_collections


def classifier_config(cfg, workdir: pathlib.Path):
    """cross_training_quick with only the plain phase, on the same phantom set."""
    from jaxthyroid import config as config_lib

    c = config_lib.load_config("cross_training_quick")
    with c.unlocked():
        c.seed = cfg.seed
        c.workdir = str(workdir)
        for k in ("data_dir", "size", "n_train", "n_val", "n_test", "cross_fraction"):
            c.data[k] = cfg.data[k]
        c.data.batch_size = cfg.classifier.batch_size
        c.model.name = cfg.classifier.model
        c.model.num_filters = cfg.classifier.num_filters  # 0: the model's own width
        c.plain.epochs = cfg.classifier.epochs
        c.plain.learning_rate = cfg.classifier.learning_rate
    return c


def train_classifier(cfg, workdir: pathlib.Path):
    """``(model, variables, taxonomy)`` of a plain ResNet trained on the real images."""
    from jaxthyroid import cross_training, parallel
    from jaxthyroid.train import state as state_lib

    c = cross_training.resolve(classifier_config(cfg, workdir))
    data = cross_training.load_data(c.data, seed=c.seed)
    model = cross_training.build_model(c, cross=False, num_classes=data.taxonomy.num_findings)
    state, _, _ = cross_training.train_phase("plain", c, data, model, mesh=parallel.make_mesh())
    return model, state_lib.variables_of(state), data.taxonomy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="gan_quick")
    p.add_argument("--workdir", default=None)
    p.add_argument("--classifier-run", default=None, help="a cross-training run dir whose plain phase to reuse")
    args, overrides = p.parse_known_args(argv)

    from jaxthyroid import config as config_lib
    from jaxthyroid.data import features, phantom_builder
    from jaxthyroid.gan import dcgan as gan_dcgan
    from jaxthyroid.gan import generate, quality
    from jaxthyroid.gan import srgan as gan_srgan

    cfg = config_lib.load_config(args.config, [o.removeprefix("--config.") for o in overrides])
    workdir = pathlib.Path(args.workdir or cfg.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    times = {}

    t = time.perf_counter()
    d = cfg.data
    dataset = phantom_builder.build_phantom(
        d.data_dir,
        size=d.size,
        n_train=d.n_train,
        n_val=d.n_val,
        n_test=d.n_test,
        cross_fraction=d.cross_fraction,
        seed=cfg.seed,
    )
    train, test = features.load_source(dataset, "train"), features.load_source(dataset, "test")
    times["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    dcgan = gan_dcgan.train_dcgan(cfg.dcgan, train, workdir / "dcgan", seed=cfg.seed)
    times["dcgan_s"] = time.perf_counter() - t
    print(
        f"DCGAN: {dcgan['steps']} steps ({dcgan['images_seen']} images seen), {dcgan['images_per_s']:.0f} img/s, "
        f"d_loss {dcgan['final_d_loss']:.3f}, g_loss {dcgan['final_g_loss']:.3f}",
        flush=True,
    )

    t = time.perf_counter()
    sr = gan_srgan.train_srgan(
        cfg.srgan, train, test, workdir / "srgan", seed=cfg.seed, hr_size=d.size, phantom_seed=cfg.seed
    )
    times["srgan_s"] = time.perf_counter() - t
    print(f"\nSuper-resolution ×{sr['scale']} ({sr['lr_size']}² -> {sr['hr_size']}²), {sr['eval_images']} test images:")
    print("  method     PSNR (dB) / SSIM vs noisy HR   vs noise-free HR")
    clean_p, clean_s = sr.get("psnr_clean", {}), sr.get("ssim_clean", {})
    for k in list(sr["psnr"]) + (["hr_noisy"] if clean_p else []):
        noisy = f"{sr['psnr'][k]:9.2f} / {sr['ssim'][k]:.4f}" if k in sr["psnr"] else f"{'-':>9} / {'-':>6}"
        clean = f"{clean_p[k]:9.2f} / {clean_s[k]:.4f}" if k in clean_p else "-"
        print(f"  {k:<9}  {noisy}        {clean}")

    t = time.perf_counter()
    gan_cfg = ml_collections.ConfigDict({"dcgan": cfg.dcgan.to_dict(), "srgan": cfg.srgan.to_dict()})
    images, ids = generate.generate(
        workdir / "dcgan",
        workdir / "srgan",
        gan_cfg,
        per_set=cfg.generate.per_set,
        seed=cfg.seed,
        samples_path=workdir / "samples.png",
    )
    times["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if args.classifier_run:
        from jaxthyroid import cross_training

        _, taxonomy, model, variables = cross_training.load_run(args.classifier_run, "plain")
    else:
        model, variables, taxonomy = train_classifier(cfg, workdir / "classifier")
    times["classifier_s"] = time.perf_counter() - t

    t = time.perf_counter()
    judged = quality.generation_quality(model, variables, images, ids, train, test, taxonomy=taxonomy)
    judged["gate"] = verdict = quality.quality_gate(judged)
    quality.write_verdict(workdir, verdict)
    times["quality_s"] = time.perf_counter() - t
    print(f"\nGenerated images ({len(ids)}), judged by a classifier trained on real images only:")
    print(
        f"  agreement with the conditioned finding set: {judged['agreement']:.3f} "
        f"(the classifier on real test images: {judged['real_test_agreement']:.3f}, chance 1/12)"
    )
    print(
        f"  Fréchet distance ({judged['feature_space']}, {judged['feature_dim']}-d): generated vs real test "
        f"{judged['frechet_generated_vs_real']:.3f}; real train vs real test {judged['frechet_real_vs_real']:.3f}"
    )
    print("  per finding set: " + ", ".join(f"{k} {v:.2f}" for k, v in judged["agreement_per_set"].items()))
    if verdict["passed"]:
        print("  quality gate: passed")
    else:
        quality.warn_failing(verdict)
    print("\nwall times: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in times.items()))

    result = {"dcgan": dcgan, "srgan": sr, "quality": judged, "times": times}
    (workdir / "result.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"results: {workdir / 'result.json'}")
    return result


if __name__ == "__main__":
    main()
