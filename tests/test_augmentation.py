"""GAN augmentation (jaxthyroid.gan): DCGAN/SRGAN training with resume, generation, the
synthetic set, image-quality and Fréchet helpers, the quality gate. Tiny models on 32
in-memory records."""

import json
import time

import jax
import ml_collections
import numpy as np
import pytest
from tolerance import fp_tolerance

from jaxthyroid import findings, metrics
from jaxthyroid.data import features
from jaxthyroid.gan import budget, dcgan, generate, quality, settings, srgan
from jaxthyroid.gan import images as images_lib
from jaxthyroid.models import resnet

TAX = findings.DEFAULT
SOURCE_SIZE = 32
PER_SET = 2


def records(n=32, seed=0):
    """Blob 'glands' whose brightness and width depend on the finding set: raw counts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SOURCE_SIZE, :SOURCE_SIZE]
    out = []
    for i in range(n):
        s = i % TAX.num_sets
        width = 3.0 + s / 2.0
        blob = np.exp(-((yy - 16) ** 2 + (xx - 12 - s % 3) ** 2) / (2 * width**2))
        counts = rng.poisson(5.0 + 200.0 * blob * (1 + s / 6.0))[..., None].astype(np.uint16)
        out.append(features.make_record(counts, s, TAX, origin=f"test/{i}"))
    return out


def gan_cfg():
    c = ml_collections.ConfigDict()
    c.dcgan = ml_collections.ConfigDict(
        dict(image_size=16, nz=8, ngf=8, ndf=8, epochs=2, batch_size=8, learning_rate=2e-4)
    )
    c.srgan = ml_collections.ConfigDict(
        dict(
            scale=2,
            num_blocks=2,
            features=16,
            pretrain_epochs=1,
            gan_epochs=1,
            batch_size=8,
            learning_rate=1e-4,
            # mse content and one device keep the SRGAN step's compilation short; the
            # feature-matching loss and the sharded step are tested in test_gan_steps.py.
            adversarial_weight=1e-3,
            content_loss="mse",
            eval_images=8,
            data_parallel=False,
            d_features=8,
            d_dense_features=16,
            d_pool_size=2,
        )
    )
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    train, test = records(32, 0), records(12, 1)
    cfg = gan_cfg()
    dcgan_summary = dcgan.train_dcgan(cfg.dcgan, train, root / "dcgan", seed=0)
    srgan_summary = srgan.train_srgan(cfg.srgan, train, test, root / "srgan", seed=0, hr_size=32)
    return root, cfg, train, test, dcgan_summary, srgan_summary


def test_train_dcgan_writes_checkpoints_logs_and_samples(trained):
    root, cfg, *_, summary, _ = trained
    d = root / "dcgan"
    # epochs=2 is converted up front to a budget of 2 x 32 // 8 steps.
    assert summary["epochs"] == 2 and summary["steps"] == 2 * (32 // 8) and summary["images_seen"] == 64
    assert np.isfinite(summary["final_d_loss"]) and np.isfinite(summary["final_g_loss"])
    assert (d / "checkpoints" / "latest" / str(summary["steps"])).is_dir()
    events = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e["epoch"], e["step"]) for e in events] == [("epoch", 1, 4), ("epoch", 2, 8)]
    assert (d / "samples_step8.png").stat().st_size > 1000


def test_finished_dcgan_returns_at_once_and_resume_restores(trained):
    root, cfg, train, *_ = trained
    summary = json.loads((root / "dcgan" / "done.json").read_text())
    t = time.perf_counter()
    again = dcgan.train_dcgan(cfg.dcgan, train, root / "dcgan", seed=0)
    assert again == summary and time.perf_counter() - t < 2.0
    # Without the done marker a rerun resumes from the last checkpoint (step 8 of 8: no step left).
    (root / "dcgan" / "done.json").rename(root / "dcgan" / "done.bak")
    try:
        resumed = dcgan.train_dcgan(cfg.dcgan, train, root / "dcgan", seed=0)
        assert resumed["resumed_from_step"] == 8 and resumed["steps"] == summary["steps"]
        events = [json.loads(line) for line in (root / "dcgan" / "metrics.jsonl").read_text().splitlines()]
        assert len(events) == 2  # nothing re-logged
    finally:
        (root / "dcgan" / "done.bak").replace(root / "dcgan" / "done.json")
    # Another config in the same workdir is refused.
    other = ml_collections.ConfigDict(cfg.dcgan.to_dict())
    other.ngf = 16
    (root / "dcgan" / "done.json").rename(root / "dcgan" / "done.bak")
    try:
        with pytest.raises(ValueError, match="another config"):
            dcgan.train_dcgan(other, train, root / "dcgan", seed=0)
    finally:
        (root / "dcgan" / "done.bak").replace(root / "dcgan" / "done.json")


def test_averaged_generator_samples_with_its_own_batchnorm_statistics(trained, tmp_path):
    """ema_decay: the run keeps G's parameter average; loading samples from it with BatchNorm
    statistics re-estimated for it, which match what the averaged G computes in train mode."""
    _, cfg, train, *_ = trained
    ema_cfg = ml_collections.ConfigDict({**cfg.dcgan.to_dict(), "ema_decay": 0.99})
    dcgan.train_dcgan(ema_cfg, train, tmp_path / "dcgan", seed=0)
    generator, variables = dcgan.load_dcgan_generator(tmp_path / "dcgan")
    template = budget.abstract(lambda key: dcgan._template(settings.complete(ema_cfg, settings.DCGAN), key)[2])
    state = budget.restore_latest(tmp_path / "dcgan" / "checkpoints", template)
    for got, want in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(state.generator_average)):
        np.testing.assert_array_equal(got, want)
    again = dcgan.load_dcgan_generator(tmp_path / "dcgan")[1]
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)  # re-estimation is seeded: the same images every load
    # Eval mode with the re-estimated statistics ≈ train mode (batch statistics) on a large
    # mixed batch; with the trained G's running statistics (other weights, 8 steps from the
    # init values) it is much further off.
    z = jax.random.normal(jax.random.key(7), (512, generator.nz))
    ids = jax.numpy.arange(512) % TAX.num_sets
    batch_mode, _ = generator.apply(variables, z, ids, train=True, mutable=["batch_stats"])
    recalibrated = generator.apply(variables, z, ids, train=False)
    stale = generator.apply(
        {"params": variables["params"], "batch_stats": state.generator.batch_stats}, z, ids, train=False
    )
    err_recal = float(np.abs(np.asarray(recalibrated) - np.asarray(batch_mode)).mean())
    err_stale = float(np.abs(np.asarray(stale) - np.asarray(batch_mode)).mean())
    assert err_recal < 0.5 * err_stale, (err_recal, err_stale)


def test_train_srgan_scores_and_figure(trained):
    root, *_, summary = trained
    for measure in ("psnr", "ssim"):
        assert set(summary[measure]) == {"bicubic", "srresnet", "srgan"}
        assert all(np.isfinite(v) for v in summary[measure].values())
    assert 5.0 < summary["psnr"]["bicubic"] < 60.0 and 0.0 < summary["ssim"]["bicubic"] <= 1.0
    assert summary["eval_images"] == 8 and summary["lr_size"] == 16
    assert (root / "srgan" / "sr_comparison.png").stat().st_size > 1000
    assert (root / "srgan" / "pretrain" / "checkpoints" / "latest").is_dir()
    assert (root / "srgan" / "gan" / "checkpoints" / "latest").is_dir()
    t = time.perf_counter()
    assert srgan.train_srgan(gan_cfg().srgan, [], [], root / "srgan", seed=0, hr_size=32) == summary
    assert time.perf_counter() - t < 2.0


def test_generate_shapes_ids_range(trained, tmp_path):
    root, cfg, *_ = trained
    images, ids = generate.generate(
        root / "dcgan", root / "srgan", cfg, per_set=PER_SET, seed=3, samples_path=tmp_path / "samples.png"
    )
    n = TAX.num_sets * PER_SET
    assert images.shape == (n, 32, 32, 1) and images.dtype == np.float32
    assert ids.dtype == np.int32 and np.array_equal(ids, np.repeat(np.arange(TAX.num_sets), PER_SET))
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0
    assert (tmp_path / "samples.png").stat().st_size > 1000
    # Same seed, same images; the saved configs stand in for gan_cfg.
    again, _ = generate.generate(root / "dcgan", root / "srgan", None, per_set=PER_SET, seed=3)
    # the same programs on the same inputs: expected bit-equal (XLA:CPU is deterministic run
    # to run); 1e-6 only leaves room for a last-bit difference of values in [0, 1]
    np.testing.assert_allclose(again, images, atol=1e-6)


def test_augment_labels_round_trip(trained, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from jaxthyroid.data import synthetic_builder

    root, cfg, *_ = trained
    path = generate.augment(
        root / "dcgan", root / "srgan", cfg, per_set=PER_SET, data_dir=tmp_path, name="test_aug", seed=0
    )
    src = synthetic_builder.synthetic_source(path)
    expected = np.repeat(np.arange(TAX.num_sets), PER_SET)
    assert len(src) == len(expected)
    got = np.array([int(src[i]["finding_set"]) for i in range(len(src))])
    assert np.array_equal(got, expected)
    for i in (0, len(src) - 1):
        r = src[i]
        assert np.array_equal(r["findings"], TAX.set_table[expected[i]]) and int(r["synthetic"]) == 1
        assert r["image"].shape == (32, 32, 1)


def test_psnr_ssim_hand_computed():
    a = np.zeros((1, 16, 16, 1), np.float32)
    b = np.full((1, 16, 16, 1), 0.1, np.float32)
    # PSNR = 10·log10(max²/MSE): a relative error r of the float32 MSE (a mean of 16·16
    # squares of float32 0.1) moves it by 10/ln(10)·r dB
    psnr_tol = fp_tolerance(reduction_size=16 * 16, depth=2, scale=10 / np.log(10))
    np.testing.assert_allclose(metrics.psnr(a, b), [20.0], rtol=0, atol=psnr_tol["atol"])  # MSE 0.01
    np.testing.assert_allclose(metrics.psnr(a * 2, b * 2, max_val=2.0), [20.0], rtol=0, atol=psnr_tol["atol"])
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype(np.float32)
    # SSIM: local means/variances over an 11×11 window (121 terms), then a ratio of
    # products (4 more roundings), averaged
    ssim_tol = fp_tolerance(reduction_size=121, depth=4)
    np.testing.assert_allclose(metrics.ssim(x, x), [1.0, 1.0], **ssim_tol)
    # Flat images: only the luminance term is left, (2 μa μb + C1) / (μa² + μb² + C1), C1 = 0.01².
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.4 + c1) / (0.2**2 + 0.4**2 + c1)
    np.testing.assert_allclose(metrics.ssim(np.full_like(a, 0.2), np.full_like(a, 0.4)), [expected], **ssim_tol)


def test_frechet_distance():
    x = np.random.default_rng(0).normal(size=(400, 4))
    # float64 throughout, 4×4 covariances of trace ~4: rounding (~1e-15) and the matrix
    # square root's error (~1e-12) are far below the 1e-6 these checks allow
    assert metrics.frechet_distance(x, x) < 1e-6
    np.testing.assert_allclose(metrics.frechet_distance(x, x + 1.0), 4.0, atol=1e-6)  # |Δμ|², equal covariances
    assert metrics.frechet_distance(x, 2.0 * x) > 0.5  # scale change: trace term
    with pytest.raises(ValueError, match="equal D"):
        metrics.frechet_distance(x, x[:, :3])


def test_generation_quality_keys_and_floor(trained):
    root, cfg, train, test, *_ = trained
    model = resnet.ResNetTiny(num_classes=TAX.num_findings)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32), train=False)
    images, ids = images_lib.real_images(train, 32)  # "generated" = real train images: agreement is
    q = quality.generation_quality(model, variables, images, ids, train, test, taxonomy=TAX)
    assert q["feature_space"] == "head_input" and q["feature_dim"] == 16
    assert 0.0 <= q["agreement"] <= 1.0 and set(q["agreement_per_set"]) <= {TAX.folder_name(s) for s in range(12)}
    # Generated = real train (renormalised once more): its distance to test is the real-vs-real floor.
    # not a rounding bound: renormalising changes the images a little, hence 10 %
    np.testing.assert_allclose(q["frechet_generated_vs_real"], q["frechet_real_vs_real"], rtol=0.1)
    shifted = quality.generation_quality(
        model, variables, np.clip(images * 0.3, 0, 1) ** 3, ids, train, test, taxonomy=TAX
    )
    assert shifted["frechet_generated_vs_real"] > q["frechet_real_vs_real"]


def test_step_budget_from_steps_or_epochs():
    cfg = settings.dcgan_config(steps=30, epochs=99)
    assert budget.steps_of(cfg, "", 7) == 30  # steps win
    assert budget.steps_of(settings.dcgan_config(epochs=3), "", 7) == 21
    srgan_cfg = settings.srgan_config(pretrain_epochs=2, gan_steps=0)
    assert budget.steps_of(srgan_cfg, "pretrain", 5) == 10 and budget.steps_of(srgan_cfg, "gan", 5) == 0
    assert budget.steps_of(settings.dcgan_config(), "", 5) == 0  # no budget; train_dcgan refuses it


def test_quality_gate_thresholds(tmp_path, capsys):
    good = {"agreement": 0.7, "real_test_agreement": 0.9, "frechet_generated_vs_real": 0.5, "frechet_real_vs_real": 0.2}
    verdict = quality.quality_gate(good)
    assert verdict["passed"] and verdict["reasons"] == [] and verdict["frechet_ratio"] == pytest.approx(2.5)
    # Agreement below half the judge's accuracy fails; so does a Fréchet distance over 10x the floor.
    low = quality.quality_gate({**good, "agreement": 0.44})
    far = quality.quality_gate({**good, "frechet_generated_vs_real": 2.01})
    assert not low["passed"] and "agreement" in low["reasons"][0]
    assert not far["passed"] and "Fréchet" in far["reasons"][0]
    assert quality.quality_gate({**good, "agreement": 0.45})["passed"]
    quality.write_verdict(tmp_path, far)
    assert quality.read_verdict(tmp_path) == far and quality.read_verdict(tmp_path / "none") is None
    quality.warn_failing(far)
    assert "FAIL THE QUALITY GATE" in capsys.readouterr().err


def test_clean_phantom_images_are_the_noisy_images_truth():
    """SR is scored against the simulator's noise-free image: the right one, whatever the
    threefry layout in force (train_srgan runs under the classic one)."""
    import jax

    from jaxthyroid import phantom
    from jaxthyroid.data import phantom_builder, transforms

    ids = np.array([0, 4, 11], np.int32)
    indices = np.array([3, 7, 8])
    keys = phantom.example_keys(phantom_builder.split_seed(5, "test"), indices)
    counts = np.clip(np.rint(np.asarray(phantom.simulate(keys, ids, size=64))), 0, 65535).astype(np.uint16)
    source = [features.make_record(c, int(s), TAX, origin=f"phantom/test/{i}") for c, s, i in zip(counts, ids, indices)]
    with jax.threefry_partitionable(False):
        clean = srgan.clean_phantom_images(source, [0, 1, 2], seed=5)
    assert clean is not None and clean.shape == (3, 64, 64, 1)
    noisy = transforms.normalize_counts(counts.astype(np.float32))
    # The noisy image is the clean one plus Poisson noise: close, but not equal.
    error = np.sqrt(np.mean((noisy - clean) ** 2, axis=(1, 2, 3)))
    assert np.all(error < 0.1) and np.all(error > 0)
    assert srgan.clean_phantom_images(source, [0, 1, 2], seed=6) is None  # another data set's truth
    assert srgan.clean_phantom_images(records(3), [0, 1, 2], seed=5) is None  # not phantom records


def test_augment_command_warns_about_a_failed_gate(trained, tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    import argparse

    root, *_ = trained
    failing = quality.quality_gate(
        {"agreement": 0.1, "real_test_agreement": 0.9, "frechet_generated_vs_real": 5.0, "frechet_real_vs_real": 0.2}
    )
    quality.write_verdict(root, failing)
    try:
        args = argparse.Namespace(
            gan_dir=str(root), dcgan_dir=None, srgan_dir=None, per_set=1, data_dir=str(tmp_path), name="cli", seed=0
        )
        generate.augment_command(args)
    finally:
        (root / quality.VERDICT_FILE).unlink()
    out = capsys.readouterr()
    assert "FAIL THE QUALITY GATE" in out.err and "agreement 0.100" in out.err
    assert out.out.strip().endswith("1.0.0")  # the written set's folder
