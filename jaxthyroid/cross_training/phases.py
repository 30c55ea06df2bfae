"""What a phase is made of: its model, optimiser, budget in steps, rounds and initial
weights, each read from the config (a bad value is a ConfigError naming the key)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxthyroid import parallel, xla_options
from jaxthyroid.config import ConfigError
from jaxthyroid.models import registry, resnet
from jaxthyroid.train import optim
from jaxthyroid.train import state as state_lib

PHASES = ("phase1", "phase2", "plain")
PHASE_MODELS = ("plain", "cross")
# Phase 1 of a cross model keeps its cross terms at zero: this group comes first.
FREEZE_CROSS_TERMS = (resnet.CROSS_TERM, optim.FROZEN)


def build_model(cfg, *, cross: bool, num_classes: int):
    """The configured ResNet, plain or cross-residual (same parameter paths outside
    ``cross_term``)."""
    if cfg.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype must be 'float32' or 'bfloat16', not {cfg.model.dtype!r}")
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    overrides = {}
    if cfg.model.name.startswith("resnet"):  # width and stem are ResNet fields
        if cfg.model.num_filters:  # 0: the architecture's own width
            overrides["num_filters"] = int(cfg.model.num_filters)
        overrides["stem"] = cfg.model.stem
    try:
        return registry.get_model(
            cfg.model.name,
            num_classes=num_classes,
            in_channels=1,
            dtype=dtype,
            cross=cross,
            cross_source=cfg.model.cross_source,
            conv_im2col=cfg.model.conv_im2col,
            **overrides,
        )
    except ValueError as e:  # unknown name / no cross form: a config problem
        raise ConfigError(f"model: {e}") from None


def phase_is_cross(cfg, name: str) -> bool:
    """Whether phase ``name`` trains the cross-residual model (``<phase>.model``)."""
    model = cfg[name].model
    if model not in PHASE_MODELS:
        raise ConfigError(f"{name}.model must be one of {', '.join(PHASE_MODELS)}, not {model!r}")
    return model == "cross"


def phase_enabled(cfg, name: str) -> bool:
    """Whether phase ``name`` runs (``<phase>.enabled``; phase 2 needs phase 1)."""
    enabled = bool(cfg[name].enabled)
    if name == "phase2" and enabled and not phase_enabled(cfg, "phase1"):
        raise ConfigError("phase2.enabled needs phase1.enabled: phase 2 starts from phase 1's weights")
    return enabled


def phase_param_groups(cfg, name: str) -> list:
    """The phase's param groups; a cross model in phase 1 gets ``cross_term`` frozen first."""
    groups = [tuple(g) for g in (cfg[name].param_groups or ())]
    if name == "phase1" and phase_is_cross(cfg, name):
        groups = [FREEZE_CROSS_TERMS, *groups]
    return groups


def warmup_steps(cfg, name: str, total_steps: int) -> int:
    """The phase's warm-up: ``warmup_fraction`` of its steps (rounded)."""
    fraction = float(cfg[name].warmup_fraction)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{name}.warmup_fraction must be in [0, 1), not {fraction}")
    return int(round(fraction * total_steps))


def make_tx(cfg, name: str, total_steps: int, *, for_restore: bool = False):
    """The phase's optimiser. ``for_restore``: same state structure, constant schedule
    (a template to restore a checkpoint into; the schedule holds no state)."""
    p = cfg[name]
    total = max(int(total_steps), 1)
    fields = dict(
        optimizer=p.optimizer,
        learning_rate=p.learning_rate,
        momentum=p.momentum,
        weight_decay=p.weight_decay,
        schedule="constant" if for_restore else p.schedule,
        warmup_steps=warmup_steps(cfg, name, total),
        total_steps=total,
        param_groups=phase_param_groups(cfg, name),
    )
    try:
        return optim.make_optimizer(fields)
    except ValueError as e:  # bad schedule / optimiser / group: a config problem
        raise ConfigError(f"{name}: {e}") from None


def phase_train_on(cfg, name: str) -> str:
    """The phase's ``train_on``: 'all' images or the 'single'-feature ones."""
    train_on = cfg[name].train_on
    if train_on not in ("all", "single"):
        raise ConfigError(f"{name}.train_on must be 'single' or 'all', not {train_on!r}")
    return train_on


def steps_from_epochs(epochs: float, images: int, batch_size: int) -> int:
    """``epochs`` passes over ``images`` in batches of ``batch_size``, in whole steps
    (at least one)."""
    return max(1, int(round(epochs * (images // batch_size))))


def phase_steps(cfg, name: str, real_images: int | None = None) -> int:
    """The phase's budget in optimiser steps: ``<phase>.steps``, or, when
    ``<phase>.epochs > 0`` (which then replaces ``steps``), that many passes over the
    phase's ``real_images``."""
    p = cfg[name]
    if p.epochs:
        if real_images is None:
            raise ConfigError(f"{name}.epochs={p.epochs} needs the data set to count its steps; give {name}.steps")
        if real_images < cfg.data.batch_size:
            raise ConfigError(
                f"{name}: {real_images} training images is less than one batch of "
                f"{cfg.data.batch_size}; lower data.batch_size or raise data.n_train"
            )
        return steps_from_epochs(p.epochs, real_images, cfg.data.batch_size)
    if p.steps <= 0:
        raise ConfigError(f"{name}: set {name}.steps (optimiser steps) or {name}.epochs to a positive number")
    return int(p.steps)


def rounds(total_steps: int, eval_every_steps: int) -> tuple[int, int]:
    """``(number of rounds, steps per round)``: an evaluation every ``eval_every_steps``
    steps or so; the last round may be shorter, so the rounds sum to ``total_steps``."""
    every = max(1, min(int(eval_every_steps), total_steps)) if eval_every_steps else total_steps
    n = -(-total_steps // every)
    return n, -(-total_steps // n)


def _sample(size: int) -> jax.Array:
    """The init input: one ``[1, size, size, 1]`` image."""
    return jnp.zeros((1, size, size, 1), jnp.float32)


def init_variables(model, key, size: int, mesh=None) -> dict:
    """``{'params', 'batch_stats'}`` of a fresh model for ``[1, size, size, 1]`` images."""
    return state_lib.init_variables(model, key, _sample(size), mesh=mesh)


def pretrained(cfg, variables: dict) -> dict:
    """``variables`` (a fresh model's, or their ``jax.eval_shape``) with the backbone
    replaced by the weights of ``model.init_from`` (a file written by ``jaxthyroid
    weights import``); the head and every ``cross_term`` entry stay as initialised
    (so a cross model starts as the imported plain one). Imported tensors come back as
    NumPy arrays in the model's dtypes.

    Raises ConfigError naming ``model.init_from`` when the file is missing or was
    imported for another architecture, depth, width, stem or channel count.
    """
    from jaxthyroid.models import torchvision_import

    path = cfg.model.init_from
    try:
        blob = torchvision_import.load(path)
    except (FileNotFoundError, torchvision_import.WeightsError) as e:
        raise ConfigError(f"model.init_from: {e}") from None
    if blob["arch"] != cfg.model.name:
        raise ConfigError(
            f"model.init_from={path} holds {blob['arch']} weights, but model.name is {cfg.model.name!r}: "
            f"set model.name={blob['arch']} or import weights for {cfg.model.name}"
        )
    if int(blob["in_channels"]) != 1:
        raise ConfigError(
            f"model.init_from={path} was imported with {blob['in_channels']} input channels; scintigrams have one: "
            "import it again with --channels 1"
        )
    try:
        return torchvision_import.load_pretrained(variables, blob)
    except torchvision_import.WeightsError as e:
        raise ConfigError(f"model.init_from={path} does not fit the configured model: {e}") from None


def abstract_state(model, tx, size: int, mesh=None):
    """The TrainState's shapes, dtypes and (replicated) shardings, nothing allocated:
    a template to restore a checkpoint into."""
    sharding = parallel.replicated(parallel.mesh_or_single(mesh))
    shapes = jax.eval_shape(lambda key: state_lib.init_state(model, key, tx, _sample(size)), jax.random.key(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def graft(phase1_variables: dict, cross_model, *, size: int, key) -> dict:
    """The phase-1 weights in the cross model (cross terms at zero): fresh arrays,
    so donating them in phase 2 leaves the phase-1 state intact."""
    template = init_variables(cross_model, key, size)
    grafted = resnet.graft_plain_into_cross(phase1_variables, template)
    return jax.tree.map(jnp.array, grafted)


def logits_fn(model):
    """Jitted inference ``(variables, images [B, H, W, 1]) -> logits [B, F]`` (float32)."""
    return xla_options.jit(lambda variables, images: model.apply(variables, images, train=False).astype(jnp.float32))
