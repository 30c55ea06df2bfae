"""GAN augmentation: a class-conditional DCGAN makes scintigrams, an SRGAN raises their resolution.

The paper's augmentation (DESIGN §1, points 1–2), composed from the models
(:mod:`jaxthyroid.models.dcgan`, :mod:`jaxthyroid.models.srgan`) and their steps
(:mod:`jaxthyroid.train.gan_steps`):

1. :func:`train_dcgan` — a DCGAN conditioned on the finding set (12 ids of
   ``findings.DEFAULT``, single and cross) on real images at ``image_size``.
2. :func:`train_srgan` — an SRResNet pre-trained on pixel MSE, then trained as
   SRGAN (content + 1e-3 adversarial) to map ``hr_size / scale`` images to ``hr_size``;
   scored by PSNR/SSIM against bicubic upsampling on held-out images.
3. :func:`generate` — ``per_set`` images per finding set from the DCGAN, raised by
   the SRGAN generator to ``image_size · scale``; :func:`augment` writes them as the
   TFDS ``thyroid_synthetic`` set.
4. :func:`generation_quality` — how a classifier trained on real images only sees
   the generated images: agreement with the conditioned finding set, and the
   Fréchet distance in its feature space.

Images everywhere: real counts are normalised per image to [0, 1] (99.5th
percentile, :func:`jaxthyroid.data.transforms.normalize_counts`, as the classifier's
pipeline does) at the source size, then area-averaged to the working size; the GANs
see them as ``2x - 1`` in [-1, 1] (tanh range). LR images for the SRGAN are the HR
images area-averaged by ``scale``, which is also how a DCGAN image at
``hr_size / scale`` relates to a real one at ``hr_size``.

Work directories (every training resumes from its latest checkpoint after a kill;
a finished one — ``done.json`` — returns its summary at once)::

  DCGAN   config.json, checkpoints/latest/<step>/, metrics.jsonl, tb/,
          samples_epoch<k>.png (one row per finding set), done.json
  SRGAN   config.json, pretrain/{checkpoints, metrics.jsonl, done.json},
          gan/{checkpoints, metrics.jsonl, done.json}, sr_comparison.png, done.json

Checkpoints are written at the end of every epoch, so a killed run repeats at most
the epoch it was in (the batches of an epoch are a fixed function of seed and epoch).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import metrics as metrics_lib
from jaxthyroid import parallel, report, xla_options
from jaxthyroid.data import transforms
from jaxthyroid.models import dcgan, srgan
from jaxthyroid.train import gan_steps
from jaxthyroid.train.checkpoint import CheckpointError, Checkpoints
from jaxthyroid.train.logging import MetricsLogger, progress_bar
from jaxthyroid.train.state import init_key, variables_of

DONE_FILE = "done.json"
CONFIG_FILE = "config.json"
_GENERATE_BATCH = 64


def _cpu_friendly_random(fn):
    """Runs ``fn`` with the classic (non-partitionable) threefry layout on CPU.

    XLA:CPU compiles partitionable threefry (jax's default) slowly: measured here,
    ``jax.random.normal`` of 2,048 values took 3–6 s to compile against 0.5 s, and
    the jitted init of a tiny DCGAN generator 14 s of CPU against 2.5 s. The classic
    layout draws other, equally good streams (so a seed gives other numbers on CPU
    than on an accelerator); its only drawback, unsharded random generation, does
    not matter here (initialisation and a ``[batch, nz]`` noise draw).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if jax.default_backend() != "cpu":
            return fn(*args, **kwargs)
        with jax.threefry_partitionable(False):
            return fn(*args, **kwargs)

    return wrapper


def _abstract(make_state):
    """Shapes, dtypes and (one-device) shardings of ``make_state(key)``, nothing computed:
    a template to restore a checkpoint into without compiling an init."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(make_state, jax.random.key(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


# ----------------------------------------------------------------------------- images
def area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W, C]`` -> ``[N, size, size, C]`` by area averaging.

    An integer shrink factor averages ``f×f`` blocks exactly; any other size (or an
    enlargement) uses antialiased linear resampling, which is the area average's
    continuous counterpart.
    """
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    if h % size == 0 and w % size == 0 and h // size == w // size:
        f = h // size
        return images.reshape(n, size, f, size, f, c).mean(axis=(2, 4))
    return np.asarray(jax.image.resize(images, (n, size, size, c), "linear", antialias=True))


def real_images(source, size: int, *, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Records of a random-access source -> ``(images, finding_set)``.

    ``images``: float32 ``[N, size, size, 1]`` in [0, 1], each normalised by its own
    99.5th percentile at the source size, then area-averaged to ``size``;
    ``finding_set``: int32 ``[N]``. ``limit`` takes a seeded random subset.
    """
    n = len(source)
    if n == 0:
        raise ValueError("the source has no records")
    order = np.arange(n)
    if limit is not None and limit < n:
        order = np.sort(np.random.default_rng(seed).permutation(n)[:limit])
    counts, ids = [], []
    for i in order:
        record = source[int(i)]
        counts.append(np.asarray(record["image"]))
        ids.append(int(record["finding_set"]))
    counts = np.stack(counts)
    if counts.ndim != 4 or counts.shape[-1] != 1:
        raise ValueError(f"source images must be [H, W, 1] counts, got records stacked to {counts.shape}")
    unit = transforms.normalize_counts(counts.astype(np.float32))
    return area_resize(unit, size), np.asarray(ids, np.int32)


def _in_batches(fn, *arrays, batch_size: int = _GENERATE_BATCH):
    """``fn`` over fixed-size batches of the leading axis (the last one padded by
    repeating its final row, so one compiled shape serves any N); outputs concatenated
    and trimmed to N. ``fn`` returns an array or a tuple of arrays."""
    n = len(arrays[0])
    outs = []
    for s in range(0, n, batch_size):
        chunk = [np.asarray(a[s : s + batch_size]) for a in arrays]
        k = len(chunk[0])
        if k < batch_size:
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - k, axis=0)]) for c in chunk]
        out = fn(*chunk)
        out = out if isinstance(out, tuple) else (out,)
        outs.append([np.asarray(o)[:k] for o in out])
    result = tuple(np.concatenate(parts) for parts in zip(*outs))
    return result if len(result) > 1 else result[0]


def _to_tanh(x):
    return x * 2.0 - 1.0


def _to_unit(x):
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- run bookkeeping
def _write_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=report.json_default))
    os.replace(tmp, path)  # atomic: a half-written marker never says "done"


def _as_dict(cfg) -> dict:
    return json.loads(json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg), default=str))


def _claim_workdir(workdir: pathlib.Path, cfg, extra: dict) -> None:
    """Writes ``config.json``; a workdir holding a run of another config is an error
    (resuming it would mix two trainings)."""
    workdir.mkdir(parents=True, exist_ok=True)
    wanted = {"config": _as_dict(cfg), **extra}
    path = workdir / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if old != wanted:
            keys = sorted(
                k
                for k in set(old.get("config", {})) | set(wanted["config"])
                if old.get("config", {}).get(k) != wanted["config"].get(k)
            )
            keys += sorted(k for k in extra if old.get(k) != extra[k])
            raise ValueError(
                f"{workdir} holds a GAN run with another config (differs in "
                f"{', '.join(keys) or 'layout'}); use another workdir or delete it"
            )
        return
    _write_json(path, wanted)


def _mesh(cfg, batch_size: int):
    """The ``data`` mesh over all devices when the batch splits evenly, else None."""
    n = jax.device_count()
    if not cfg.get("data_parallel", True) or n == 1 or batch_size % n:
        return None
    return parallel.make_mesh(n)


def _place(state, mesh):
    return state if mesh is None else jax.device_put(state, parallel.replicated(mesh))


def _batches(n: int, batch_size: int, seed: int, epoch: int):
    """Index batches of one epoch (last partial batch dropped); fixed by seed and epoch,
    so a resumed epoch sees the batches it would have seen."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for b in range(n // batch_size):
        yield order[b * batch_size : (b + 1) * batch_size]


class _EpochLoop:
    """Epochs of one training with per-epoch checkpoints, logs and resume.

    ``run(state, step_batch)`` calls ``step_batch(state, indices) -> (state, metrics)``
    for every batch and returns the final state and a summary.
    """

    def __init__(
        self, workdir: pathlib.Path, *, name: str, epochs: int, n: int, batch_size: int, seed: int, after_epoch=None
    ):
        self.workdir, self.name, self.epochs = workdir, name, int(epochs)
        self.n, self.batch_size, self.seed = n, int(batch_size), seed
        self.after_epoch = after_epoch
        self.steps_per_epoch = n // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{name}: {n} training images is less than one batch of {batch_size}; "
                "lower batch_size or use more images"
            )

    def run(self, state, step_batch):
        ckpts = Checkpoints(self.workdir / "checkpoints", keep=2)
        logger = MetricsLogger(self.workdir, phase=self.name)
        try:
            return self._run(state, step_batch, ckpts, logger)
        finally:
            ckpts.close()
            logger.close()

    def _run(self, state, step_batch, ckpts, logger):
        start_epoch = 0
        if ckpts.latest_step() is not None:
            state, _, loop = ckpts.restore(state)
            start_epoch = int(loop["epoch"])
            logger.truncate_after(int(ckpts.latest_step()))
        last = {}
        timed_images, timed_seconds = 0, 0.0
        started = time.perf_counter()
        for epoch in range(start_epoch, self.epochs):
            bar = progress_bar(self.steps_per_epoch, desc=f"{self.name} epoch {epoch + 1}/{self.epochs}")
            sums: dict[str, jax.Array] = {}
            t_epoch = None
            for b, idx in enumerate(_batches(self.n, self.batch_size, self.seed, epoch)):
                state, m = step_batch(state, idx)
                sums = m if not sums else jax.tree.map(jnp.add, sums, m)
                if b == 0:  # the first step of a process compiles: keep it out of the throughput
                    jax.block_until_ready(m)
                    t_epoch = time.perf_counter()
                bar.update()
            jax.block_until_ready(sums)
            bar.close()
            if self.steps_per_epoch > 1:
                timed_images += (self.steps_per_epoch - 1) * self.batch_size
                timed_seconds += time.perf_counter() - t_epoch
            last = {k: float(v) / self.steps_per_epoch for k, v in sums.items()}
            step = int((epoch + 1) * self.steps_per_epoch)
            bad = [k for k, v in last.items() if not np.isfinite(v)]
            if bad:
                good = ckpts.latest_step()
                raise FloatingPointError(
                    f"{self.name}: {', '.join(bad)} became NaN/Inf in epoch {epoch + 1}; the last good "
                    f"checkpoint (step {good}) is in {self.workdir / 'checkpoints'}. Lower learning_rate "
                    "and delete the workdir (or keep it to resume from that step)."
                )
            logger.write("train", step=step, epoch=epoch + 1, **last)
            ckpts.save(step, state, data={"epoch": epoch + 1}, loop={"epoch": epoch + 1})
            if self.after_epoch is not None:
                self.after_epoch(state, epoch + 1)
        summary = {
            "epochs": self.epochs,
            "steps": self.epochs * self.steps_per_epoch,
            "batch_size": self.batch_size,
            "train_images": self.n,
            **{f"final_{k}": v for k, v in last.items()},
            "images_per_s": timed_images / timed_seconds if timed_seconds > 0 else float("nan"),
            "seconds": time.perf_counter() - started,
            "resumed_from_epoch": start_epoch,
        }
        return state, summary


# ----------------------------------------------------------------------------- DCGAN
def dcgan_models(cfg, taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT):
    """Conditional ``(Generator, Discriminator)`` of a DCGAN config, one class per finding set
    (optional keys ``fast_upsample``, default True, and ``conv_im2col``, default None:
    im2col convs on the CPU backend only)."""
    g = dcgan.Generator(
        channels=1,
        image_size=cfg.image_size,
        nz=cfg.nz,
        ngf=cfg.ngf,
        num_classes=taxonomy.num_sets,
        fast_upsample=cfg.get("fast_upsample", True),
        conv_im2col=cfg.get("conv_im2col", None),
    )
    d = dcgan.Discriminator(
        image_size=cfg.image_size, ndf=cfg.ndf, num_classes=taxonomy.num_sets, conv_im2col=cfg.get("conv_im2col", None)
    )
    return g, d


def _dcgan_template(cfg, key):
    g, d = dcgan_models(cfg)
    tx = lambda: gan_steps.dcgan_optimizer(cfg.learning_rate)  # noqa: E731
    return g, d, gan_steps.create_dcgan_state(g, d, key, g_tx=tx(), d_tx=tx())


@functools.lru_cache(maxsize=8)  # models are hashable dataclasses: one compilation per model
def _sample_fn(generator):
    """Jitted ``(variables, z [B, nz], finding_set [B]) -> images [B, S, S, 1]`` in [-1, 1],
    BatchNorm in inference mode (running statistics)."""
    return xla_options.jit(lambda variables, z, ids: generator.apply(variables, z, ids, train=False))


def _dcgan_images(generator, variables, ids: np.ndarray, key) -> np.ndarray:
    """Generated images in [0, 1], float32 ``[len(ids), S, S, 1]``, one per finding-set id."""
    sample = _sample_fn(generator)
    z = np.asarray(jax.random.normal(key, (len(ids), generator.nz), jnp.float32))
    batch = min(_GENERATE_BATCH, len(ids))
    out = _in_batches(lambda z, i: sample(variables, z, i), z, np.asarray(ids, np.int32), batch_size=batch)
    return _to_unit(out)


def _by_set(images: np.ndarray, ids: np.ndarray, taxonomy=findings_lib.DEFAULT) -> dict:
    return {taxonomy.folder_name(s): images[ids == s] for s in range(taxonomy.num_sets)}


@_cpu_friendly_random
def train_dcgan(cfg, source, workdir, *, seed: int) -> dict:
    """Trains the class-conditional DCGAN on ``source``'s images; returns a JSON-able summary.

    Args:
      cfg: ``image_size`` (power of two ≥ 8), ``nz``, ``ngf``, ``ndf``, ``epochs``,
        ``batch_size``, ``learning_rate`` (Adam, β1 0.5); optional ``sample_every``
        (epochs between sample grids; default a third of the run), ``fast_upsample``,
        ``data_parallel`` (default True: shard over all devices when the batch splits).
      source: random-access records (``image`` uint16 ``[H, W, 1]`` counts,
        ``finding_set`` int); a list of dicts works.
      workdir: the run's folder (see the module docstring); rerunning resumes.
      seed: initialisation, batch order and noise.

    Returns:
      ``{'final_d_loss', 'final_g_loss', 'final_real_score', 'final_fake_score',
      'epochs', 'steps', 'images_per_s', 'seconds', ...}``.
    """
    workdir = pathlib.Path(workdir)
    if (workdir / DONE_FILE).exists():
        return json.loads((workdir / DONE_FILE).read_text())
    _claim_workdir(workdir, cfg, {"seed": seed, "kind": "dcgan"})
    images, ids = real_images(source, cfg.image_size)
    images = _to_tanh(images)

    _, step_key, sample_key = jax.random.split(jax.random.key(seed), 3)
    generator, discriminator, state = _dcgan_template(cfg, init_key(seed))
    mesh = _mesh(cfg, cfg.batch_size)
    state = _place(state, mesh)
    step = gan_steps.make_dcgan_step(generator, discriminator, mesh, conditional=True)

    def step_batch(state, idx):
        batch = {"image": images[idx], "finding_set": ids[idx]}
        if mesh is not None:
            batch = parallel.shard_batch(batch, mesh)
        return step(state, batch, step_key)

    num_sets = findings_lib.DEFAULT.num_sets
    per_row = 6
    grid_ids = np.repeat(np.arange(num_sets, dtype=np.int32), per_row)
    every = int(cfg.get("sample_every", 0) or max(1, cfg.epochs // 3))

    def after_epoch(state, epoch):
        if epoch % every and epoch != cfg.epochs:
            return
        g = state.generator
        samples = _dcgan_images(generator, {"params": g.params, "batch_stats": g.batch_stats}, grid_ids, sample_key)
        report.contact_sheet(_by_set(samples, grid_ids), workdir / f"samples_epoch{epoch}.png", per_row=per_row)

    loop = _EpochLoop(
        workdir,
        name="dcgan",
        epochs=cfg.epochs,
        n=len(images),
        batch_size=cfg.batch_size,
        seed=seed,
        after_epoch=after_epoch,
    )
    _, summary = loop.run(state, step_batch)
    summary["image_size"] = int(cfg.image_size)
    _write_json(workdir / DONE_FILE, summary)
    return summary


def load_dcgan_generator(dcgan_dir, cfg=None):
    """``(generator, variables)`` of a trained DCGAN (latest checkpoint). ``cfg``
    defaults to the run's ``config.json``."""
    dcgan_dir = pathlib.Path(dcgan_dir)
    cfg = cfg if cfg is not None else _saved_config(dcgan_dir)
    generator, _ = dcgan_models(cfg)
    state = _restore(dcgan_dir / "checkpoints", _abstract(lambda key: _dcgan_template(cfg, key)[2]))
    return generator, {"params": state.generator.params, "batch_stats": state.generator.batch_stats}


def _saved_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    path = workdir / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a GAN run directory (no {CONFIG_FILE}); train it first")
    return ml_collections.ConfigDict(json.loads(path.read_text())["config"])


def _restore(directory: pathlib.Path, template):
    ckpts = Checkpoints(directory, keep=2)
    try:
        if ckpts.latest_step() is None:
            raise CheckpointError(f"no checkpoint in {directory}: train that GAN first")
        return ckpts.restore(template)[0]
    finally:
        ckpts.close()


# ----------------------------------------------------------------------------- SRGAN
def srgan_models(cfg):
    """``(SRResNet, SRDiscriminator)`` of an SRGAN config. Optional keys size the
    discriminator: ``d_features`` (64), ``d_dense_features`` (1024), ``d_pool_size``
    (None = the paper's flatten; an int average-pools to that grid first);
    ``conv_im2col`` (None = im2col convs on the CPU backend only) goes to both."""
    g = srgan.SRResNet(
        channels=1,
        scale=cfg.scale,
        num_blocks=cfg.num_blocks,
        features=cfg.features,
        bicubic_skip=cfg.get("bicubic_skip", False),
        conv_im2col=cfg.get("conv_im2col", None),
    )
    d = srgan.SRDiscriminator(
        features=cfg.get("d_features", 64),
        dense_features=cfg.get("d_dense_features", 1024),
        pool_size=cfg.get("d_pool_size", None),
        conv_im2col=cfg.get("conv_im2col", None),
    )
    return g, d


@functools.lru_cache(maxsize=8)
def _sr_fn(generator):
    return xla_options.jit(lambda variables, lr: generator.apply(variables, lr, train=False))


def super_resolve(generator, variables, lr_unit: np.ndarray) -> np.ndarray:
    """LR images in [0, 1] ``[N, h, w, 1]`` -> SR images in [0, 1] ``[N, h·s, w·s, 1]``
    (generator in inference mode, batches of 64)."""
    fn = _sr_fn(generator)
    batch = min(_GENERATE_BATCH, len(lr_unit))
    return _to_unit(_in_batches(lambda x: fn(variables, _to_tanh(x)), lr_unit, batch_size=batch))


def bicubic(lr_unit: np.ndarray, size: int) -> np.ndarray:
    """Bicubic upsampling of ``[N, h, w, 1]`` in [0, 1] to ``size``, clipped to [0, 1]."""
    n, _, _, c = lr_unit.shape
    return np.clip(np.asarray(jax.image.resize(jnp.asarray(lr_unit), (n, size, size, c), "cubic")), 0.0, 1.0)


def _srgan_states(cfg, key, lr_size: int):
    g, d = srgan_models(cfg)
    lr = cfg.get("pretrain_learning_rate", None) or cfg.learning_rate
    g_state = gan_steps.create_state(g, key, gan_steps.srgan_optimizer(lr), jnp.zeros((1, lr_size, lr_size, 1)))
    return g, d, g_state


def _gan_template(g, d, g_state, cfg, key, lr_size):
    return gan_steps.create_srgan_state(
        g,
        d,
        key,
        lr_shape=(lr_size, lr_size, 1),
        generator_state=g_state,
        g_tx=gan_steps.srgan_optimizer(cfg.learning_rate),
        d_tx=gan_steps.srgan_optimizer(cfg.learning_rate),
    )


@_cpu_friendly_random
def train_srgan(cfg, train_source, test_source, workdir, *, seed: int, hr_size: int) -> dict:
    """SRResNet pre-training (MSE), then SRGAN; PSNR/SSIM against bicubic on test images.

    Args:
      cfg: ``scale`` (2 or 4), ``num_blocks``, ``features``, ``pretrain_epochs``,
        ``gan_epochs`` (0 = SRResNet only), ``batch_size``, ``learning_rate`` (Adam,
        β1 0.9), ``adversarial_weight`` (1e-3), ``content_loss`` (``feature_matching``
        | ``mse``); optional ``pretrain_learning_rate`` (the MSE phase's; default
        ``learning_rate``), ``eval_images`` (test images scored, default 200),
        ``d_features`` / ``d_dense_features`` / ``d_pool_size`` (:func:`srgan_models`),
        ``data_parallel``.
      train_source, test_source: random-access records (counts ``[H, W, 1]``).
      workdir: the run's folder; rerunning resumes.
      seed: initialisation and batch order.
      hr_size: HR side; LR is ``hr_size // scale``.

    Returns:
      ``{'psnr': {'bicubic', 'srresnet', 'srgan'}, 'ssim': {...}, 'eval_images',
      'hr_size', 'lr_size', 'scale', 'pretrain': {...}, 'gan': {...}, 'seconds'}``
      (PSNR in dB, both on [0, 1] images; ``srgan`` absent when ``gan_epochs`` is 0).
    """
    workdir = pathlib.Path(workdir)
    if (workdir / DONE_FILE).exists():
        return json.loads((workdir / DONE_FILE).read_text())
    if hr_size % cfg.scale:
        raise ValueError(f"hr_size {hr_size} is not a multiple of scale {cfg.scale}")
    started = time.perf_counter()
    _claim_workdir(workdir, cfg, {"seed": seed, "kind": "srgan", "hr_size": int(hr_size)})
    lr_size = hr_size // cfg.scale
    hr, _ = real_images(train_source, hr_size)
    lr = area_resize(hr, lr_size)
    hr, lr = _to_tanh(hr), _to_tanh(lr)
    mesh = _mesh(cfg, cfg.batch_size)

    g_key, d_key = init_key(seed, 0), init_key(seed, 1)
    g, d, g_state = _srgan_states(cfg, g_key, lr_size)

    def batch_of(idx):
        batch = {"lr": lr[idx], "hr": hr[idx]}
        return parallel.shard_batch(batch, mesh) if mesh is not None else batch

    # -- phase 1: SRResNet on pixel MSE
    pre_dir = workdir / "pretrain"
    if (pre_dir / DONE_FILE).exists():
        pre_summary = json.loads((pre_dir / DONE_FILE).read_text())
        g_state = _restore(pre_dir / "checkpoints", g_state)
    else:
        pre_step = gan_steps.make_srresnet_pretrain_step(g, mesh)
        loop = _EpochLoop(
            pre_dir, name="srresnet", epochs=cfg.pretrain_epochs, n=len(hr), batch_size=cfg.batch_size, seed=seed
        )
        g_state, pre_summary = loop.run(_place(g_state, mesh), lambda s, idx: pre_step(s, batch_of(idx)))
        _write_json(pre_dir / DONE_FILE, pre_summary)
    # A copy: the SRGAN steps donate (overwrite) the generator's buffers.
    srresnet_vars = jax.tree.map(jnp.copy, variables_of(g_state))

    # -- phase 2: SRGAN
    gan_summary, srgan_vars = None, None
    if cfg.gan_epochs > 0:
        gan_dir = workdir / "gan"
        state = _gan_template(g, d, g_state, cfg, d_key, lr_size)
        gan_step = gan_steps.make_srgan_step(
            g,
            d,
            mesh,
            content=cfg.get("content_loss", "feature_matching"),
            adversarial_weight=cfg.get("adversarial_weight", 1e-3),
        )
        if (gan_dir / DONE_FILE).exists():
            gan_summary = json.loads((gan_dir / DONE_FILE).read_text())
            state = _restore(gan_dir / "checkpoints", state)
        else:
            loop = _EpochLoop(
                gan_dir, name="srgan", epochs=cfg.gan_epochs, n=len(hr), batch_size=cfg.batch_size, seed=seed + 1
            )
            state, gan_summary = loop.run(_place(state, mesh), lambda s, idx: gan_step(s, batch_of(idx)))
            _write_json(gan_dir / DONE_FILE, gan_summary)
        srgan_vars = variables_of(state.generator)

    # -- evaluation on held-out images
    test_hr, _ = real_images(test_source, hr_size, limit=int(cfg.get("eval_images", 200)), seed=seed)
    test_lr = area_resize(test_hr, lr_size)
    outputs = {"bicubic": bicubic(test_lr, hr_size), "srresnet": super_resolve(g, srresnet_vars, test_lr)}
    if srgan_vars is not None:
        outputs["srgan"] = super_resolve(g, srgan_vars, test_lr)
    psnr = {k: metrics_lib.psnr(v, test_hr) for k, v in outputs.items()}
    ssim = {k: metrics_lib.ssim(v, test_hr) for k, v in outputs.items()}

    rows = []
    for i in range(min(4, len(test_hr))):
        row = {"LR": test_lr[i]}
        for k, title in (("bicubic", "bicubic"), ("srresnet", "SRResNet"), ("srgan", "SRGAN")):
            if k in outputs:
                row[title] = outputs[k][i]
                row[f"{title}:caption"] = f"{psnr[k][i]:.1f} dB / {ssim[k][i]:.3f}"
        row["HR"] = test_hr[i]
        rows.append(row)
    report.sr_comparison(
        rows,
        workdir / "sr_comparison.png",
        title=f"×{cfg.scale} super-resolution, {lr_size}² -> {hr_size}² (PSNR / SSIM)",
    )

    summary = {
        "psnr": {k: float(np.mean(v)) for k, v in psnr.items()},
        "ssim": {k: float(np.mean(v)) for k, v in ssim.items()},
        "eval_images": int(len(test_hr)),
        "hr_size": int(hr_size),
        "lr_size": int(lr_size),
        "scale": int(cfg.scale),
        "pretrain": pre_summary,
        "gan": gan_summary,
        "seconds": time.perf_counter() - started,
    }
    _write_json(workdir / DONE_FILE, summary)
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
    if saved is None or "hr_size" not in saved:
        raise FileNotFoundError(f"{srgan_dir / CONFIG_FILE} is missing or lacks hr_size; retrain the SRGAN")
    lr_size = saved["hr_size"] // cfg.scale
    g, d = srgan_models(cfg)

    def generator_state(key):
        return _srgan_states(cfg, key, lr_size)[2]

    if cfg.gan_epochs > 0 and (srgan_dir / "gan" / "checkpoints").is_dir():
        template = _abstract(lambda key: _gan_template(g, d, generator_state(key), cfg, key, lr_size))
        return g, variables_of(_restore(srgan_dir / "gan" / "checkpoints", template).generator)
    return g, variables_of(_restore(srgan_dir / "pretrain" / "checkpoints", _abstract(generator_state)))


# ----------------------------------------------------------------------------- generation
@_cpu_friendly_random
def generate(
    dcgan_dir, srgan_dir, gan_cfg, *, per_set: int, seed: int, samples_path=None
) -> tuple[np.ndarray, np.ndarray]:
    """``per_set`` generated images for every finding set, super-resolved.

    Restores the DCGAN generator (``dcgan_dir``) and the SRGAN generator
    (``srgan_dir``); ``gan_cfg`` has ``.dcgan`` and ``.srgan`` sub-configs (None:
    read each run's ``config.json``). Writes a grid at ``samples_path`` (one
    labelled row per finding set) when given.

    Returns:
      ``(images, finding_set_ids)``: float32 ``[12·per_set, S, S, 1]`` in [0, 1] with
      ``S = image_size · scale``, and int32 ``[12·per_set]`` (ids of ``findings.DEFAULT``).
    """
    if per_set < 1:
        raise ValueError(f"per_set must be >= 1, got {per_set}")
    dcgan_cfg = gan_cfg.dcgan if gan_cfg is not None else None
    srgan_cfg = gan_cfg.srgan if gan_cfg is not None else None
    generator, g_vars = load_dcgan_generator(dcgan_dir, dcgan_cfg)
    sr, sr_vars = load_sr_generator(srgan_dir, srgan_cfg)
    taxonomy = findings_lib.DEFAULT
    ids = np.repeat(np.arange(taxonomy.num_sets, dtype=np.int32), per_set)
    low = _dcgan_images(generator, g_vars, ids, jax.random.key(seed))
    images = super_resolve(sr, sr_vars, low).astype(np.float32)
    if samples_path is not None:
        report.contact_sheet(_by_set(images, ids, taxonomy), samples_path, per_row=min(per_set, 8))
    return images, ids


def augment(
    run_dcgan_dir, run_srgan_dir, gan_cfg, *, per_set: int, data_dir, name: str, seed: int, overwrite: bool = False
) -> str:
    """Generates ``per_set`` images per finding set and writes them as the TFDS set
    ``<data_dir>/thyroid_synthetic/<name>/1.0.0`` (returned), with a sample grid
    ``<data_dir>/thyroid_synthetic/<name>_samples.png``."""
    from jaxthyroid.data import synthetic_builder  # lazy: TFDS

    samples = pathlib.Path(data_dir) / synthetic_builder.NAME / f"{name}_samples.png"
    images, ids = generate(run_dcgan_dir, run_srgan_dir, gan_cfg, per_set=per_set, seed=seed, samples_path=samples)
    return synthetic_builder.build_synthetic(
        data_dir, name, images, ids, input_range="unit", overwrite=overwrite, origin=f"dcgan+srgan/{name}"
    )


def augment_command(args) -> None:
    """``jaxthyroid augment``: generated images as a synthetic TFDS set (prints its folder).

    ``args``: ``gan_dir`` (holding ``dcgan/`` and ``srgan/``, e.g. a reproduce run's
    ``seed0/gan``) or ``dcgan_dir`` + ``srgan_dir``; ``per_set``, ``data_dir``,
    ``name``, ``seed``, ``overwrite``.
    """
    gan_dir = getattr(args, "gan_dir", None)
    dcgan_dir = getattr(args, "dcgan_dir", None) or (os.path.join(gan_dir, "dcgan") if gan_dir else None)
    srgan_dir = getattr(args, "srgan_dir", None) or (os.path.join(gan_dir, "srgan") if gan_dir else None)
    if not dcgan_dir or not srgan_dir:
        raise ValueError("give --gan-dir (holding dcgan/ and srgan/) or both --dcgan-dir and --srgan-dir")
    path = augment(
        dcgan_dir,
        srgan_dir,
        None,
        per_set=args.per_set,
        data_dir=args.data_dir,
        name=args.name,
        seed=args.seed,
        overwrite=getattr(args, "overwrite", False),
    )
    print(path)


# ----------------------------------------------------------------------------- quality
@functools.lru_cache(maxsize=8)
def classifier_features_fn(model):
    """Jitted ``(variables, images [B, H, W, 1]) -> (logits [B, F], features [B, D])``.

    ``features`` are the penultimate activations: the input of the model's final
    Dense layer named ``head`` (the globally pooled last stage in our ResNets and
    baselines), captured with ``nn.intercept_methods``. A model without a ``head``
    submodule gets its logits as features (``feature_space`` in
    :func:`generation_quality` says which).
    """
    import flax.linen as nn

    def apply(variables, images):
        captured = {}

        def interceptor(next_fun, args, kwargs, context):
            if context.module.name == "head" and context.method_name == "__call__":
                captured["features"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            logits = model.apply(variables, images, train=False)
        logits = logits.astype(jnp.float32)
        features = captured.get("features", logits)
        return logits, features.reshape(features.shape[0], -1).astype(jnp.float32)

    return xla_options.jit(apply)


def _feature_space(model, variables, sample: np.ndarray) -> str:
    """``'head_input'`` when the model has a ``head`` layer to capture, else ``'logits'``
    (traced abstractly, nothing computed)."""
    import flax.linen as nn

    seen = []

    def probe(variables, x):
        def interceptor(next_fun, args, kwargs, context):
            seen.append(context.module.name)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            return model.apply(variables, x, train=False)

    jax.eval_shape(probe, variables, jnp.asarray(sample[:1]))
    return "head_input" if "head" in seen else "logits"


def _classify(fn, variables, images: np.ndarray, batch_size: int = _GENERATE_BATCH):
    """``(logits [N, F], features [N, D])`` in fixed-size batches (one compilation)."""
    return _in_batches(lambda x: fn(variables, x), images, batch_size=batch_size)


@_cpu_friendly_random
def generation_quality(
    model,
    state,
    synthetic_images,
    synthetic_ids,
    real_train_source,
    real_test_source,
    *,
    taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT,
    max_real_images: int = 1000,
) -> dict:
    """How a classifier trained on real images only sees generated images.

    Args:
      model: the flax classifier (``apply(variables, x, train=False) -> logits [B, F]``).
      state: its TrainState (``params``, ``batch_stats``) or a variables dict.
      synthetic_images: float ``[N, S, S, 1]`` in [0, 1] (renormalised per image by the
        99.5th percentile here, as the data pipeline does with stored synthetic counts).
      synthetic_ids: int ``[N]`` finding-set ids the images were generated for.
      real_train_source, real_test_source: random-access records of real images
        (at most ``max_real_images`` of each, a seeded subset).
      taxonomy: the label space of the ids and of the classifier's outputs.

    Returns:
      ``agreement`` — share of generated images whose predicted finding set
      (``findings.predict`` then ``taxonomy.set_id_of_multi_hot``) is the conditioned
      one; ``agreement_per_set`` (folder name -> share); ``real_test_agreement`` (the
      same on real test images: the classifier's own exact-match accuracy, the
      ceiling to compare with); ``frechet_generated_vs_real`` (real test vs generated)
      and ``frechet_real_vs_real`` (real train vs real test, the floor), both in the
      classifier's ``feature_space`` (``head_input``: penultimate, or ``logits``).
    """
    variables = variables_of(state)
    synthetic_images = np.asarray(synthetic_images, np.float32)
    synthetic_ids = np.asarray(synthetic_ids).astype(np.int64)
    size = synthetic_images.shape[1]
    gen = transforms.normalize_counts(synthetic_images)
    train_x, _ = real_images(real_train_source, size, limit=max_real_images)
    test_x, test_ids = real_images(real_test_source, size, limit=max_real_images)

    fn = classifier_features_fn(model)
    gen_logits, gen_feats = _classify(fn, variables, gen)
    test_logits, test_feats = _classify(fn, variables, test_x)
    _, train_feats = _classify(fn, variables, train_x)
    space = _feature_space(model, variables, gen)

    def predicted_sets(logits):
        return taxonomy.set_id_of_multi_hot(findings_lib.predict(1.0 / (1.0 + np.exp(-logits.astype(np.float64)))))

    gen_pred = predicted_sets(gen_logits)
    hits = gen_pred == synthetic_ids
    per_set = {
        taxonomy.folder_name(s): float(hits[synthetic_ids == s].mean())
        for s in range(taxonomy.num_sets)
        if np.any(synthetic_ids == s)
    }
    return {
        "agreement": float(hits.mean()),
        "agreement_per_set": per_set,
        "real_test_agreement": float(np.mean(predicted_sets(test_logits) == test_ids)),
        "frechet_generated_vs_real": metrics_lib.frechet_distance(test_feats, gen_feats),
        "frechet_real_vs_real": metrics_lib.frechet_distance(train_feats, test_feats),
        "feature_space": space,
        "feature_dim": int(gen_feats.shape[1]),
        "images": {"generated": int(len(gen)), "real_train": int(len(train_x)), "real_test": int(len(test_x))},
    }
