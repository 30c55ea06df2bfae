"""SRResNet pre-training then SRGAN (both through the one loop), and their evaluation.

The generator maps ``hr_size / scale`` images to ``hr_size`` (DESIGN §1, point 2).
Held-out test images are scored by PSNR/SSIM of bicubic, SRResNet and SRGAN
against two truths: the noisy high-resolution image (what the paper compares with:
its HR images are real, noisy scans) and, for phantom data, the noise-free
expected counts the simulator renders (whether SR recovers structure rather than
reproducing noise).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxthyroid import metrics as metrics_lib
from jaxthyroid import parallel, report, run_files, xla_options
from jaxthyroid.gan import budget, settings
from jaxthyroid.gan import images as images_lib
from jaxthyroid.models import backend, srgan
from jaxthyroid.train import gan_steps
from jaxthyroid.train.state import init_key, variables_of

DONE_FILE = "done.json"
_PARTITIONABLE = bool(jax.config.jax_threefry_partitionable)  # the layout the phantom data set was drawn with
CONFIG_FILE = "config.json"
PRETRAIN_METRICS = ("mse", "psnr")
GAN_METRICS = ("d_loss", "g_loss", "content", "adversarial", "mse", "psnr")


def srgan_models(cfg):
    """``(SRResNet, SRDiscriminator)`` of an SRGAN config. Optional keys size the
    discriminator: ``d_features`` (64), ``d_dense_features`` (1024), ``d_pool_size``
    (None = the paper's flatten; an int average-pools to that grid first);
    ``conv_im2col`` (deprecated: the backend policy decides, see
    :func:`jaxthyroid.models.backend.ops_from_levers`) goes to both."""
    cfg = settings.complete(cfg, settings.SRGAN)
    g = srgan.SRResNet(
        channels=1,
        scale=cfg.scale,
        num_blocks=cfg.num_blocks,
        features=cfg.features,
        bicubic_skip=cfg.bicubic_skip,
        ops=backend.ops_from_levers(conv_im2col=cfg.conv_im2col),
    )
    d = srgan.SRDiscriminator(
        features=cfg.d_features,
        dense_features=cfg.d_dense_features,
        pool_size=cfg.d_pool_size,
        ops=backend.ops_from_levers(conv_im2col=cfg.conv_im2col),
    )
    return g, d


@functools.lru_cache(maxsize=8)
def _sr_fn(generator):
    return xla_options.jit(lambda variables, lr: generator.apply(variables, lr, train=False))


def super_resolve(generator, variables, lr_unit: np.ndarray) -> np.ndarray:
    """LR images in [0, 1] ``[N, h, w, 1]`` -> SR images in [0, 1] ``[N, h·s, w·s, 1]``
    (generator in inference mode, batches of 64)."""
    fn = _sr_fn(generator)
    batch = min(images_lib.GENERATE_BATCH, len(lr_unit))
    return images_lib.to_unit(
        images_lib.in_batches(lambda x: fn(variables, images_lib.to_tanh(x)), lr_unit, batch_size=batch)
    )


def bicubic(lr_unit: np.ndarray, size: int) -> np.ndarray:
    """Bicubic upsampling of ``[N, h, w, 1]`` in [0, 1] to ``size``, clipped to [0, 1]."""
    n, _, _, c = lr_unit.shape
    return np.clip(np.asarray(jax.image.resize(jnp.asarray(lr_unit), (n, size, size, c), "cubic")), 0.0, 1.0)


def _generator_state(cfg, key, lr_size: int):
    g, d = srgan_models(cfg)
    lr = cfg.pretrain_learning_rate or cfg.learning_rate
    g_state = gan_steps.create_state(g, key, gan_steps.srgan_optimizer(lr), jnp.zeros((1, lr_size, lr_size, 1)))
    return g, d, g_state


def _gan_state(g, d, g_state, cfg, key, lr_size):
    return gan_steps.create_srgan_state(
        g,
        d,
        key,
        lr_shape=(lr_size, lr_size, 1),
        generator_state=g_state,
        g_tx=gan_steps.srgan_optimizer(cfg.learning_rate),
        d_tx=gan_steps.srgan_optimizer(cfg.learning_rate),
    )


def _text(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return value.decode() if isinstance(value, bytes) else str(value)


def clean_phantom_images(source, indices, *, seed: int, split: str = "test") -> np.ndarray | None:
    """The simulator's noise-free expected counts ``[N, S, S, 1]`` of phantom records,
    normalised like their noisy images (divided by the noisy image's 99.5th percentile,
    clipped to [0, 1]); None when the records are not phantom images of ``split``
    (origin ``phantom/<split>/<i>``) of the data set built with ``seed``."""
    from jaxthyroid import phantom
    from jaxthyroid.data import phantom_splits, transforms  # no TFDS: phantom_splits defines the examples

    records = [source[int(i)] for i in indices]
    prefix = f"phantom/{split}/"
    origins = [_text(r.get("origin", "")) for r in records]
    if not all(o.startswith(prefix) for o in origins):
        return None
    example = np.asarray([int(o[len(prefix) :]) for o in origins])
    ids = np.asarray([int(r["finding_set"]) for r in records], np.int32)
    counts = np.stack([np.asarray(r["image"], np.float32) for r in records])
    size = counts.shape[1]
    # The builder's random streams: the global threefry layout, not the classic one that
    # cpu_friendly_random (train_srgan) switches to.
    with jax.threefry_partitionable(_PARTITIONABLE):
        keys = phantom.example_keys(phantom_splits.split_seed(seed, split), example)
        render = jax.jit(jax.vmap(lambda k, i: phantom.render(k, i, size=size, return_aux=True)[1]["expected"]))
        expected = np.asarray(render(keys, jnp.asarray(ids)), np.float32)[..., None]
    a = expected.reshape(len(ids), -1) - expected.mean((1, 2, 3))[:, None]
    b = counts.reshape(len(ids), -1) - counts.mean((1, 2, 3))[:, None]
    corr = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)
    if np.median(corr) < 0.5:
        return None  # another simulator version or seed: not these images' truth
    scale = np.percentile(counts, transforms.NORMALIZE_PERCENTILE, axis=(1, 2, 3), keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(expected / scale, 0.0, 1.0).astype(np.float32)


def _evaluate(g, srresnet_vars, srgan_vars, test_source, cfg, *, hr_size, lr_size, seed, phantom_seed, workdir):
    """PSNR/SSIM per method against the noisy HR image and, when known, the clean one."""
    limit = int(cfg.eval_images)
    test_hr, _, indices = images_lib.real_images(test_source, hr_size, limit=limit, seed=seed, with_indices=True)
    test_lr = images_lib.area_resize(test_hr, lr_size)
    outputs = {"bicubic": bicubic(test_lr, hr_size), "srresnet": super_resolve(g, srresnet_vars, test_lr)}
    if srgan_vars is not None:
        outputs["srgan"] = super_resolve(g, srgan_vars, test_lr)
    psnr = {k: metrics_lib.psnr(v, test_hr) for k, v in outputs.items()}
    ssim = {k: metrics_lib.ssim(v, test_hr) for k, v in outputs.items()}
    scores = {
        "psnr": {k: float(np.mean(v)) for k, v in psnr.items()},
        "ssim": {k: float(np.mean(v)) for k, v in ssim.items()},
    }
    clean = None
    if phantom_seed is not None:
        clean = clean_phantom_images(test_source, indices, seed=phantom_seed)
    if clean is not None:
        clean = images_lib.area_resize(clean, hr_size)
        with_noisy = {**outputs, "hr_noisy": test_hr}  # the noisy HR image itself: noise's own distance
        scores["psnr_clean"] = {k: float(np.mean(metrics_lib.psnr(v, clean))) for k, v in with_noisy.items()}
        scores["ssim_clean"] = {k: float(np.mean(metrics_lib.ssim(v, clean))) for k, v in with_noisy.items()}

    rows = []
    for i in range(min(4, len(test_hr))):
        row = {"LR": test_lr[i]}
        for k, title in (("bicubic", "bicubic"), ("srresnet", "SRResNet"), ("srgan", "SRGAN")):
            if k in outputs:
                row[title] = outputs[k][i]
                row[f"{title}:caption"] = f"{psnr[k][i]:.1f} dB / {ssim[k][i]:.3f}"
        row["HR"] = test_hr[i]
        if clean is not None:
            row["HR noise-free"] = clean[i]
        rows.append(row)
    if parallel.is_primary():  # every process scored the images (collectives); one writes the figure
        report.sr_comparison(
            rows,
            workdir / "sr_comparison.png",
            title=f"×{cfg.scale} super-resolution, {lr_size}² -> {hr_size}² (PSNR / SSIM against the noisy HR)",
        )
    return {**scores, "eval_images": int(len(test_hr))}


@images_lib.cpu_friendly_random
def train_srgan(
    cfg, train_source, test_source, workdir, *, seed: int, hr_size: int, phantom_seed: int | None = None
) -> dict:
    """SRResNet pre-training (MSE), then SRGAN; PSNR/SSIM against bicubic on test images.

    Args:
      cfg: ``scale`` (2 or 4), ``num_blocks``, ``features``, ``pretrain_steps`` and
        ``gan_steps`` (0 = SRResNet only; or ``pretrain_epochs`` / ``gan_epochs``,
        converted to steps up front), ``batch_size``, ``learning_rate`` (Adam, β1 0.9),
        ``adversarial_weight`` (1e-3), ``content_loss`` (``feature_matching`` |
        ``mse``); optional ``pretrain_learning_rate`` (default ``learning_rate``),
        ``eval_images`` (default 200), ``checkpoint_every_steps``, ``d_features`` /
        ``d_dense_features`` / ``d_pool_size`` (:func:`srgan_models`), ``data_parallel``.
      train_source, test_source: random-access records (counts ``[H, W, 1]``).
      workdir: the run's folder; rerunning resumes.
      seed: initialisation and batch order.
      hr_size: HR side; LR is ``hr_size // scale``.
      phantom_seed: the seed the phantom data set was built with: test images are then
        also scored against their noise-free truth (None: only against the noisy HR).

    Returns:
      ``{'psnr': {'bicubic', 'srresnet', 'srgan'}, 'ssim': {...}, 'psnr_clean': {...,
      'hr_noisy'}, 'ssim_clean': {...}, 'eval_images', 'hr_size', 'lr_size', 'scale',
      'pretrain': {...}, 'gan': {...}, 'seconds'}`` (PSNR in dB on [0, 1] images;
      ``srgan`` absent without a GAN phase; ``*_clean`` only for phantom data).
    """
    cfg = settings.complete(cfg, settings.SRGAN)
    workdir = pathlib.Path(workdir)
    if (workdir / DONE_FILE).exists():
        return json.loads((workdir / DONE_FILE).read_text())
    if hr_size % cfg.scale:
        raise ValueError(f"hr_size {hr_size} is not a multiple of scale {cfg.scale}")
    started = time.perf_counter()
    run_files.claim_workdir(
        workdir, {"config": cfg, "seed": seed, "kind": "srgan", "hr_size": int(hr_size)}, what="a GAN run"
    )
    lr_size = hr_size // cfg.scale
    hr, _ = images_lib.real_images(train_source, hr_size)
    lr = images_lib.area_resize(hr, lr_size)
    arrays = {"lr": images_lib.to_tanh(lr), "hr": images_lib.to_tanh(hr)}
    mesh = budget.data_mesh(cfg, cfg.batch_size)
    steps_per_epoch = len(hr) // cfg.batch_size
    pre_steps = budget.steps_of(cfg, "pretrain", steps_per_epoch)
    gan_steps_total = budget.steps_of(cfg, "gan", steps_per_epoch)
    every = cfg.checkpoint_every_steps
    key = jax.random.key(seed)  # unused by the SR steps (no noise), kept with the checkpoints

    g, d, g_state = _generator_state(cfg, init_key(seed, 0), lr_size)

    # -- phase 1: SRResNet on pixel MSE
    pre_dir = workdir / "pretrain"
    if (pre_dir / DONE_FILE).exists():
        pre_summary = json.loads((pre_dir / DONE_FILE).read_text())
        g_state = budget.restore_latest(pre_dir / "checkpoints", g_state)
    else:
        pre_step = gan_steps.make_srresnet_pretrain_step(g, mesh)
        g_state, pre_summary = budget.train(
            pre_dir,
            name="srresnet",
            state=g_state,
            step=lambda s, batch, _key: pre_step(s, batch),
            arrays=arrays,
            batch_size=cfg.batch_size,
            steps=pre_steps,
            seed=seed,
            key=key,
            metric_keys=PRETRAIN_METRICS,
            mesh=mesh,
            checkpoint_every_steps=every,
        )
        run_files.write_json(pre_dir / DONE_FILE, pre_summary)
    # A copy: the SRGAN steps donate (overwrite) the generator's buffers.
    srresnet_vars = jax.tree.map(jnp.copy, variables_of(g_state))

    # -- phase 2: SRGAN
    gan_summary, srgan_vars = None, None
    if gan_steps_total > 0:
        gan_dir = workdir / "gan"
        state = _gan_state(g, d, g_state, cfg, init_key(seed, 1), lr_size)
        if (gan_dir / DONE_FILE).exists():
            gan_summary = json.loads((gan_dir / DONE_FILE).read_text())
            state = budget.restore_latest(gan_dir / "checkpoints", state)
        else:
            gan_step = gan_steps.make_srgan_step(
                g,
                d,
                mesh,
                content=cfg.content_loss,
                adversarial_weight=cfg.adversarial_weight,
            )
            state, gan_summary = budget.train(
                gan_dir,
                name="srgan",
                state=state,
                step=lambda s, batch, _key: gan_step(s, batch),
                arrays=arrays,
                batch_size=cfg.batch_size,
                steps=gan_steps_total,
                seed=seed + 1,
                key=key,
                metric_keys=GAN_METRICS,
                mesh=mesh,
                checkpoint_every_steps=every,
            )
            run_files.write_json(gan_dir / DONE_FILE, gan_summary)
        srgan_vars = variables_of(state.generator)

    scores = _evaluate(
        g,
        srresnet_vars,
        srgan_vars,
        test_source,
        cfg,
        hr_size=hr_size,
        lr_size=lr_size,
        seed=seed,
        phantom_seed=phantom_seed,
        workdir=workdir,
    )
    summary = {
        **scores,
        "hr_size": int(hr_size),
        "lr_size": int(lr_size),
        "scale": int(cfg.scale),
        "pretrain": pre_summary,
        "gan": gan_summary,
        "seconds": time.perf_counter() - started,
    }
    run_files.write_json(workdir / DONE_FILE, summary)
    return summary


def load_sr_generator(srgan_dir, cfg=None):
    """``(SRResNet, variables)`` of a trained SRGAN run: the SRGAN generator, or the
    pre-trained SRResNet when the run had no GAN phase. ``cfg`` defaults to ``config.json``."""
    srgan_dir = pathlib.Path(srgan_dir)
    saved = json.loads((srgan_dir / CONFIG_FILE).read_text()) if (srgan_dir / CONFIG_FILE).exists() else None
    if cfg is None:
        if saved is None:
            raise FileNotFoundError(f"{srgan_dir} is not an SRGAN run directory (no {CONFIG_FILE}); train it first")
        cfg = ml_collections.ConfigDict(saved["config"])
    cfg = settings.complete(cfg, settings.SRGAN)
    if saved is None or "hr_size" not in saved:
        raise FileNotFoundError(f"{srgan_dir / CONFIG_FILE} is missing or lacks hr_size; retrain the SRGAN")
    lr_size = saved["hr_size"] // cfg.scale
    g, d = srgan_models(cfg)

    def generator_state(key):
        return _generator_state(cfg, key, lr_size)[2]

    if (srgan_dir / "gan" / "checkpoints" / "latest").is_dir():
        template = budget.abstract(lambda key: _gan_state(g, d, generator_state(key), cfg, key, lr_size))
        return g, variables_of(budget.restore_latest(srgan_dir / "gan" / "checkpoints", template).generator)
    template = budget.abstract(generator_state)
    return g, variables_of(budget.restore_latest(srgan_dir / "pretrain" / "checkpoints", template))
