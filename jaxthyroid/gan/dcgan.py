"""The class-conditional DCGAN: training (through the one loop), restoring, sampling.

One generator makes every finding set (12 ids of ``findings.DEFAULT``, single and
cross), trained on real images at ``image_size`` (DESIGN §1, point 1).
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import parallel, report, run_files, xla_options
from jaxthyroid.config import ConfigError
from jaxthyroid.gan import budget, settings
from jaxthyroid.gan import images as images_lib
from jaxthyroid.models import backend, dcgan
from jaxthyroid.train import gan_steps
from jaxthyroid.train.state import init_key, variables_of

DONE_FILE = "done.json"
CONFIG_FILE = "config.json"
METRICS = ("d_loss", "g_loss", "real_score", "fake_score")


def dcgan_models(cfg, taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT):
    """Conditional ``(Generator, Discriminator)`` of a DCGAN config, one class per finding set.

    Optional keys: ``ema_decay`` (> 0: sample from a moving average of G's parameters,
    :func:`sampling_variables`), ``lr_decay_fraction`` (Adam's rate falls linearly to 0
    over this last share of the steps), ``label_std`` and ``conditional_norm`` (G's conditioning strength,
    :class:`jaxthyroid.models.dcgan.Generator`), ``aux_weight`` (> 0: D gets an AC-GAN
    classifier head, :func:`jaxthyroid.train.gan_steps.make_dcgan_step`),
    ``fast_upsample`` and ``conv_im2col`` (deprecated: the backend policy decides, see
    :func:`jaxthyroid.models.backend.ops_from_levers`).
    """
    cfg = settings.complete(cfg, settings.DCGAN)
    g = dcgan.Generator(
        channels=1,
        image_size=cfg.image_size,
        nz=cfg.nz,
        ngf=cfg.ngf,
        num_classes=taxonomy.num_sets,
        label_std=cfg.label_std,
        conditional_norm=cfg.conditional_norm,
        ops=backend.ops_from_levers(fast_upsample=cfg.fast_upsample, conv_im2col=cfg.conv_im2col),
    )
    d = dcgan.Discriminator(
        image_size=cfg.image_size,
        ndf=cfg.ndf,
        num_classes=taxonomy.num_sets,
        aux_classifier=taxonomy.num_sets if cfg.aux_weight > 0 else 0,
        ops=backend.ops_from_levers(conv_im2col=cfg.conv_im2col),
    )
    return g, d


def _template(cfg, key, steps: int = 1):
    g, d = dcgan_models(cfg)
    tx = lambda: gan_steps.dcgan_optimizer(cfg.learning_rate, steps=steps, decay_fraction=cfg.lr_decay_fraction)  # noqa: E731
    return g, d, gan_steps.create_dcgan_state(g, d, key, g_tx=tx(), d_tx=tx(), average=cfg.ema_decay > 0)


# Re-estimating G's BatchNorm statistics for the averaged parameters: this many batches of
# this many samples (finding sets uniform) through G in train mode; with BatchNorm momentum
# 0.9 the statistics then average the last ~10 batches, and the initial ones weigh 0.9^64.
RECALIBRATION_BATCHES = 64
RECALIBRATION_BATCH_SIZE = 128


@functools.lru_cache(maxsize=8)
def _recalibrate_fn(generator):
    def run(params, batch_stats, key):
        def one(stats, key):
            z_key, id_key = jax.random.split(key)
            z = jax.random.normal(z_key, (RECALIBRATION_BATCH_SIZE, generator.nz), jnp.float32)
            ids = jax.random.randint(id_key, (RECALIBRATION_BATCH_SIZE,), 0, max(generator.num_classes, 1))
            labels = (ids,) if generator.num_classes else ()
            _, updates = generator.apply(
                {"params": params, "batch_stats": stats}, z, *labels, train=True, mutable=["batch_stats"]
            )
            return updates["batch_stats"], None

        stats, _ = jax.lax.scan(one, batch_stats, jax.random.split(key, RECALIBRATION_BATCHES))
        return stats

    return xla_options.jit(run)


def sampling_variables(generator, state: gan_steps.GANState) -> dict:
    """The variables G samples with: its trained ones, or, when the run keeps a moving
    average of G's parameters, that average with BatchNorm statistics re-estimated for it
    (the trained G's running statistics belong to other weights). Deterministic."""
    if not isinstance(state, gan_steps.AveragedGANState):
        return variables_of(state.generator)
    key = jax.random.key(0)
    stats = _recalibrate_fn(generator)(state.generator_average, state.generator.batch_stats, key)
    return {"params": state.generator_average, "batch_stats": stats}


@functools.lru_cache(maxsize=8)  # models are hashable dataclasses: one compilation per model
def _sample_fn(generator):
    """Jitted ``(variables, z [B, nz], finding_set [B]) -> images [B, S, S, 1]`` in [-1, 1],
    BatchNorm in inference mode (running statistics)."""
    return xla_options.jit(lambda variables, z, ids: generator.apply(variables, z, ids, train=False))


def dcgan_images(generator, variables, ids: np.ndarray, key) -> np.ndarray:
    """Generated images in [0, 1], float32 ``[len(ids), S, S, 1]``, one per finding-set id."""
    sample = _sample_fn(generator)
    z = np.asarray(jax.random.normal(key, (len(ids), generator.nz), jnp.float32))
    batch = min(images_lib.GENERATE_BATCH, len(ids))
    out = images_lib.in_batches(lambda z, i: sample(variables, z, i), z, np.asarray(ids, np.int32), batch_size=batch)
    return images_lib.to_unit(out)


@images_lib.cpu_friendly_random
def train_dcgan(cfg, source, workdir, *, seed: int) -> dict:
    """Trains the class-conditional DCGAN on ``source``'s images; returns a JSON-able summary.

    Args:
      cfg: ``image_size`` (power of two ≥ 8), ``nz``, ``ngf``, ``ndf``, ``steps`` (or
        ``epochs``, converted to steps up front), ``batch_size``, ``learning_rate``
        (Adam, β1 0.5); optional ``sample_every_steps`` (between sample grids; default
        a third of the run), ``checkpoint_every_steps``, ``label_std``,
        ``conditional_norm``, ``fast_upsample``, ``data_parallel`` (default True: shard
        over all devices when the batch splits).
      source: random-access records (``image`` uint16 ``[H, W, 1]`` counts,
        ``finding_set`` int); a list of dicts works.
      workdir: the run's folder (see :mod:`jaxthyroid.gan`); rerunning resumes.
      seed: initialisation, batch order and noise.

    Returns:
      ``{'steps', 'epochs', 'batch_size', 'images_seen', 'final_d_loss', 'final_g_loss',
      'final_real_score', 'final_fake_score', 'images_per_s', 'seconds', 'image_size', ...}``.
    """
    cfg = settings.complete(cfg, settings.DCGAN)
    workdir = pathlib.Path(workdir)
    if (workdir / DONE_FILE).exists():
        return json.loads((workdir / DONE_FILE).read_text())
    run_files.claim_workdir(workdir, {"config": cfg, "seed": seed, "kind": "dcgan"}, what="a GAN run")
    images, ids = images_lib.real_images(source, cfg.image_size)
    images = images_lib.to_tanh(images)
    steps = budget.steps_of(cfg, "", len(images) // cfg.batch_size)
    if steps <= 0:
        raise ConfigError("the DCGAN config needs steps (or epochs) > 0")

    _, step_key, sample_key = jax.random.split(jax.random.key(seed), 3)
    generator, discriminator, state = _template(cfg, init_key(seed), steps)
    mesh = budget.data_mesh(cfg, cfg.batch_size)
    aux_weight = float(cfg.aux_weight)
    step = gan_steps.make_dcgan_step(
        generator, discriminator, mesh, conditional=True, aux_weight=aux_weight, ema_decay=float(cfg.ema_decay)
    )

    num_sets = findings_lib.DEFAULT.num_sets
    per_row = 6
    grid_ids = np.repeat(np.arange(num_sets, dtype=np.int32), per_row)
    every = int(cfg.sample_every_steps or max(1, steps // 3))
    next_grid = [every]

    def after_epoch(epoch, state, record):
        # A grid at the first epoch end past each multiple of `every` steps, and at the end.
        if record["step"] < next_grid[0] and record["step"] < steps:
            return
        next_grid[0] = (record["step"] // every + 1) * every
        samples = dcgan_images(generator, sampling_variables(generator, state), grid_ids, sample_key)
        path = workdir / f"samples_step{record['step']}.png"
        if parallel.is_primary():  # every process samples (a collective on the mesh); one writes
            report.contact_sheet(images_lib.by_set(samples, grid_ids), path, per_row=per_row)

    _, summary = budget.train(
        workdir,
        name="dcgan",
        state=state,
        step=step,
        arrays={"image": images, "finding_set": ids},
        batch_size=cfg.batch_size,
        steps=steps,
        seed=seed,
        key=step_key,
        metric_keys=METRICS + (("aux_loss",) if aux_weight > 0 else ()),
        mesh=mesh,
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        on_epoch_end=after_epoch,
    )
    summary["image_size"] = int(cfg.image_size)
    run_files.write_json(workdir / DONE_FILE, summary)
    return summary


def saved_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The config a GAN run was trained with (its ``config.json``)."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a GAN run directory (no {CONFIG_FILE}); train it first")
    return ml_collections.ConfigDict(json.loads(path.read_text())["config"])


def load_dcgan_generator(dcgan_dir, cfg=None):
    """``(generator, variables)`` of a trained DCGAN (latest checkpoint;
    :func:`sampling_variables`). ``cfg`` defaults to the run's ``config.json``."""
    dcgan_dir = pathlib.Path(dcgan_dir)
    cfg = settings.complete(cfg if cfg is not None else saved_config(dcgan_dir), settings.DCGAN)
    generator, _ = dcgan_models(cfg)
    template = budget.abstract(lambda key: _template(cfg, key)[2])
    state = budget.restore_latest(dcgan_dir / "checkpoints", template)
    return generator, sampling_variables(generator, state)
