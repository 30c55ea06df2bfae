"""GAN train steps (DCGAN, SRResNet pre-training, SRGAN), jitted and data-parallel.

Like the classifier step, the per-device code runs under ``jax.shard_map`` over the
mesh axis ``data`` (DESIGN §5) with explicit ``lax.pmean`` of losses and metrics.
Gradients are *not* pmean'd: each loss is pmean'd before differentiation, and with
``check_vma`` autodiff of replicated parameters already sums over the axis, which
then gives exactly the global-batch gradient. BatchNorm uses global batch statistics:
the step clones the models with ``axis_name='data'``, so a sharded step equals the
single-device step on the same global batch.

GAN state is one pytree (:class:`GANState`) of two :class:`TrainState` s. Real and
fake batches go through the BatchNorm discriminator separately (two calls, as in the
PyTorch DCGAN example), never concatenated: concatenation would mix real and fake
statistics in BN and let D tell them apart by batch statistics.

Each D+G step runs G forward once: ``jax.vjp`` keeps G's backward pass, the fakes
(without gradient) train D, then the G loss is differentiated with respect to the
fakes only through the *updated* D and pulled back through G's vjp — the same work
as PyTorch's ``fake.detach()`` recipe, without D weight gradients in the G update.
D's BatchNorm running statistics are updated only by the D update (they are used
only in eval mode, which GAN training never runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from jaxthyroid import xla_options
from jaxthyroid.parallel import DATA_AXIS
from jaxthyroid.train import state as state_lib
from jaxthyroid.train.gan_losses import FeatureFn, content_loss, discriminator_loss, generator_loss, mse_loss
from jaxthyroid.train.state import TrainState

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class GANState:
    """Generator and discriminator train states (params, batch stats, optimiser state)."""

    generator: TrainState
    discriminator: TrainState

    @property
    def step(self) -> jax.Array:
        return self.generator.step


@flax.struct.dataclass
class AveragedGANState(GANState):
    """A :class:`GANState` that also keeps an exponential moving average of G's
    parameters (:func:`make_dcgan_step`'s ``ema_decay``). A class of its own, so runs
    without an average keep the checkpoint layout they always had."""

    generator_average: Any


# -- optimisers -------------------------------------------------------------------
def dcgan_optimizer(
    learning_rate: float = 2e-4, *, steps: int = 0, decay_fraction: float = 0.0
) -> optax.GradientTransformation:
    """Adam(2e-4, β1=0.5), Radford et al.; with ``decay_fraction > 0`` the rate stays
    constant, then falls linearly to 0 over the last ``decay_fraction`` of ``steps``."""
    if decay_fraction <= 0:
        return optax.adam(learning_rate, b1=0.5)
    if not decay_fraction <= 1 or steps <= 0:
        raise ValueError(f"decay_fraction must be in (0, 1] with steps > 0, got {decay_fraction}, steps={steps}")
    flat = int(round(steps * (1.0 - decay_fraction)))
    schedule = optax.join_schedules(
        [optax.constant_schedule(learning_rate), optax.linear_schedule(learning_rate, 0.0, max(steps - flat, 1))],
        [flat],
    )
    return optax.adam(schedule, b1=0.5)


def srgan_optimizer(learning_rate: float = 1e-4) -> optax.GradientTransformation:
    """Adam(1e-4, β1=0.9), Ledig et al."""
    return optax.adam(learning_rate, b1=0.9)


# -- initialisation ---------------------------------------------------------------
def create_state(model: nn.Module, key: jax.Array, tx: optax.GradientTransformation, *inputs: jax.Array) -> TrainState:
    """Initialises ``model`` on example ``inputs`` (batch 1 suffices), jitted
    (:func:`jaxthyroid.train.state.init_state`)."""
    return state_lib.init_state(model, key, tx, *inputs)


def create_dcgan_state(
    generator: nn.Module,
    discriminator: nn.Module,
    key: jax.Array,
    *,
    g_tx: optax.GradientTransformation | None = None,
    d_tx: optax.GradientTransformation | None = None,
    average: bool = False,
) -> GANState:
    """DCGAN state; image shape and conditioning come from the generator's fields.
    ``average``: keep a moving average of G's parameters (starts at G's initial ones)."""
    g_key, d_key = jax.random.split(key)
    label = (jnp.zeros((1,), jnp.int32),) if generator.num_classes else ()
    image = jnp.zeros((1, generator.image_size, generator.image_size, generator.channels), jnp.float32)
    g_state = create_state(generator, g_key, g_tx or dcgan_optimizer(), jnp.zeros((1, generator.nz)), *label)
    d_state = create_state(discriminator, d_key, d_tx or dcgan_optimizer(), image, *label)
    if average:
        return AveragedGANState(
            generator=g_state, discriminator=d_state, generator_average=jax.tree.map(jnp.copy, g_state.params)
        )
    return GANState(generator=g_state, discriminator=d_state)


def average_decay(decay: float, step: jax.Array) -> jax.Array:
    """The moving average's decay after ``step`` updates: ``min(decay, (1 + t) / (10 + t))``,
    so the first steps' random weights do not linger in a short run (the num_updates rule
    of TensorFlow's ExponentialMovingAverage)."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def create_srgan_state(
    generator: nn.Module,
    discriminator: nn.Module,
    key: jax.Array,
    *,
    lr_shape: tuple[int, ...],
    generator_state: TrainState | None = None,
    g_tx: optax.GradientTransformation | None = None,
    d_tx: optax.GradientTransformation | None = None,
) -> GANState:
    """SRGAN state. ``lr_shape`` = ``(h, w, C)``; pass a pre-trained SRResNet as ``generator_state``."""
    g_key, d_key = jax.random.split(key)
    h, w, c = lr_shape
    if generator_state is None:
        generator_state = create_state(generator, g_key, g_tx or srgan_optimizer(), jnp.zeros((1, h, w, c)))
    elif g_tx is not None:  # a fresh optimiser: its step count starts again at 0
        generator_state = generator_state.replace(
            step=jnp.zeros_like(generator_state.step), tx=g_tx, opt_state=g_tx.init(generator_state.params)
        )
    hr = jnp.zeros((1, h * generator.scale, w * generator.scale, c))
    return GANState(
        generator=generator_state, discriminator=create_state(discriminator, d_key, d_tx or srgan_optimizer(), hr)
    )


# -- data parallelism ----------------------------------------------------------------
def _data_parallel(per_device: Callable, mesh, num_replicated: int, num_sharded: int, donate: bool) -> Callable:
    """jit(per_device), under shard_map over ``data`` when ``mesh`` is given.

    The first ``num_replicated`` arguments (state) are replicated, the next
    ``num_sharded`` (batch arrays) split along their leading axis; outputs
    (state, metrics) are replicated.
    """
    if mesh is not None:
        in_specs = (P(),) * num_replicated + (P(DATA_AXIS),) * num_sharded
        per_device = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()))
    return xla_options.jit(per_device, donate_argnums=(0,) if donate else ())


def _pmean(x, axis_name):
    return jax.lax.pmean(x, axis_name) if axis_name else x


def _mutable_apply(model: nn.Module, params, batch_stats, *args, **kwargs):
    """``model.apply`` in train mode returning ``(output, new batch_stats)``."""
    out, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, *args, train=True, mutable=["batch_stats"], **kwargs
    )
    return out, updates["batch_stats"]


# -- DCGAN --------------------------------------------------------------------------
def make_dcgan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    mesh=None,
    *,
    conditional: bool = False,
    aux_weight: float = 0.0,
    ema_decay: float = 0.0,
    donate: bool = True,
) -> Callable[[GANState, dict, jax.Array], tuple[GANState, Metrics]]:
    """One D update then one G update.

    Returns jitted ``step(state, batch, key) -> (state, metrics)`` where ``batch`` =
    ``{'image': f32 [B, S, S, C] in [-1, 1], 'finding_set': int32 [B]}``
    (``finding_set`` only when ``conditional``; fakes then get the real batch's
    labels). ``key`` is folded with the step number, so one base key serves a run.
    z ~ N(0, 1) ``[B, nz]`` is drawn for the whole global batch before sharding,
    so the result does not depend on the device count. Metrics: ``d_loss``,
    ``g_loss``, ``real_score`` (mean D(x)), ``fake_score`` (mean D(G(z)) before the
    D update).

    ``aux_weight > 0`` (conditional, D with ``aux_classifier``): AC-GAN's auxiliary
    cross-entropy of the finding set, weighted, added to D's loss on real images and
    to G's loss on its fakes (D never learns to classify fakes, so G cannot win by
    making D's classifier worse); metric ``aux_loss`` (D's, on real images).

    ``ema_decay > 0`` (an :class:`AveragedGANState`, ``average=True``): after the G update,
    ``generator_average ← d·average + (1 − d)·params`` with ``d`` =
    :func:`average_decay` (Yazici et al. 2019: an averaged generator's samples are
    closer to the data than the last iterate's).
    """
    axis = DATA_AXIS if mesh is not None else None
    G = generator.clone(axis_name=axis)
    D = discriminator.clone(axis_name=axis)
    aux = aux_weight > 0
    if aux and not (conditional and discriminator.aux_classifier):
        raise ValueError("aux_weight > 0 needs conditional=True and a Discriminator with aux_classifier")

    def per_device(state: GANState, image, z, finding_set):
        g, d = state.generator, state.discriminator
        label = (finding_set,) if conditional else ()

        fake, g_vjp, g_batch_stats = jax.vjp(
            lambda p: _mutable_apply(G, p, g.batch_stats, z, *label), g.params, has_aux=True
        )

        def d_out(params, stats, x):
            if not aux:
                logit, stats = _mutable_apply(D, params, stats, x, *label)
                return logit, jnp.zeros(()), stats
            (logit, class_logits), stats = _mutable_apply(D, params, stats, x, *label, return_class_logits=True)
            ce = optax.softmax_cross_entropy_with_integer_labels(class_logits, finding_set).mean()
            return logit, ce, stats

        def d_loss_fn(params):
            real_logit, real_ce, stats = d_out(params, d.batch_stats, image)
            fake_logit, _, stats = d_out(params, stats, jax.lax.stop_gradient(fake))
            loss = discriminator_loss(real_logit=real_logit, fake_logit=fake_logit) + aux_weight * real_ce
            return _pmean(loss, axis), (stats, real_logit, fake_logit, _pmean(real_ce, axis))

        (d_loss, (d_stats, real_logit, fake_logit, aux_loss)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            d.params
        )
        d = d.apply_gradients(grads=d_grads, batch_stats=d_stats)

        def g_loss_fn(fake):
            logit, fake_ce, _ = d_out(d.params, d.batch_stats, fake)
            return _pmean(generator_loss(fake_logit=logit) + aux_weight * fake_ce, axis)

        g_loss, fake_grad = jax.value_and_grad(g_loss_fn)(fake)
        (g_grads,) = g_vjp(fake_grad)
        g = g.apply_gradients(grads=g_grads, batch_stats=g_batch_stats)
        new_state = state.replace(generator=g, discriminator=d)
        if ema_decay > 0:
            if not isinstance(state, AveragedGANState):
                raise ValueError("ema_decay > 0 needs a state made with create_dcgan_state(..., average=True)")
            decay = average_decay(ema_decay, g.step)
            average = jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p, state.generator_average, g.params)
            new_state = new_state.replace(generator_average=average)

        metrics = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "real_score": _pmean(jnp.mean(jax.nn.sigmoid(real_logit)), axis),
            "fake_score": _pmean(jnp.mean(jax.nn.sigmoid(fake_logit)), axis),
        }
        if aux:
            metrics["aux_loss"] = aux_loss
        return new_state, metrics

    if ema_decay > 0 and not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
    sharded = _data_parallel(per_device, mesh, 1, 3, donate)

    def step(state: GANState, batch: dict, key: jax.Array):
        image = batch["image"]
        key = jax.random.fold_in(key, state.generator.step)
        z = jax.random.normal(key, (image.shape[0], generator.nz), image.dtype)
        finding_set = batch["finding_set"] if conditional else jnp.zeros((image.shape[0],), jnp.int32)
        return sharded(state, image, z, finding_set)

    return step


# -- SRResNet / SRGAN ----------------------------------------------------------------
def psnr(mse: jax.Array, peak_to_peak: float = 2.0) -> jax.Array:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) from their MSE."""
    return 10.0 * jnp.log10(peak_to_peak**2 / mse)


def make_srresnet_pretrain_step(
    generator: nn.Module, mesh=None, *, donate: bool = True
) -> Callable[[TrainState, dict], tuple[TrainState, Metrics]]:
    """MSE pre-training of the SRResNet: jitted ``step(state, batch) -> (state, metrics)``.

    ``state`` is the generator's :class:`TrainState`; ``batch`` = ``{'lr': [B, h, w, C],
    'hr': [B, h·s, w·s, C]}``, both in [-1, 1]. Metrics: ``mse``, ``psnr``.
    """
    axis = DATA_AXIS if mesh is not None else None
    G = generator.clone(axis_name=axis)

    def per_device(state: TrainState, lr, hr):
        def loss_fn(params):
            sr, stats = _mutable_apply(G, params, state.batch_stats, lr)
            return _pmean(mse_loss(sr=sr, hr=hr), axis), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=stats)
        return state, {"mse": loss, "psnr": psnr(loss)}

    sharded = _data_parallel(per_device, mesh, 1, 2, donate)
    return lambda state, batch: sharded(state, batch["lr"], batch["hr"])


def make_srgan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    mesh=None,
    *,
    content: str = "feature_matching",
    feature_fn: FeatureFn | None = None,
    adversarial_weight: float = 1e-3,
    donate: bool = True,
) -> Callable[[GANState, dict], tuple[GANState, Metrics]]:
    """SRGAN: one D update, then one G update on ``content + adversarial_weight · L_G``.

    Returns jitted ``step(state, batch) -> (state, metrics)``; ``batch`` =
    ``{'lr': [B, h, w, C], 'hr': [B, h·s, w·s, C]}``. ``content`` / ``feature_fn``:
    see :func:`jaxthyroid.train.gan_losses.content_loss`; for ``'feature_matching'``
    the features are the discriminator's (``return_features=True``), of ``hr`` and
    ``sr`` under the updated D. Metrics: ``d_loss``, ``g_loss`` (total),
    ``content``, ``adversarial``, ``mse``, ``psnr``.
    """
    axis = DATA_AXIS if mesh is not None else None
    G = generator.clone(axis_name=axis)
    D = discriminator.clone(axis_name=axis)
    content_fn = content_loss(content, feature_fn=feature_fn)
    use_d_features = content == "feature_matching"

    def per_device(state: GANState, lr, hr):
        g, d = state.generator, state.discriminator
        sr, g_vjp, g_batch_stats = jax.vjp(lambda p: _mutable_apply(G, p, g.batch_stats, lr), g.params, has_aux=True)

        def d_loss_fn(params):
            real_logit, stats = _mutable_apply(D, params, d.batch_stats, hr)
            fake_logit, stats = _mutable_apply(D, params, stats, jax.lax.stop_gradient(sr))
            return _pmean(discriminator_loss(real_logit=real_logit, fake_logit=fake_logit), axis), stats

        (d_loss, d_stats), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d.params)
        d = d.apply_gradients(grads=d_grads, batch_stats=d_stats)

        hr_features = None
        if use_d_features:
            (_, hr_features), _ = _mutable_apply(D, d.params, d.batch_stats, hr, return_features=True)
            hr_features = jax.lax.stop_gradient(hr_features)

        def g_loss_fn(sr):
            (logit, sr_features), _ = _mutable_apply(D, d.params, d.batch_stats, sr, return_features=True)
            adversarial = generator_loss(fake_logit=logit)
            content_term = content_fn(sr=sr, hr=hr, sr_features=sr_features, hr_features=hr_features)
            total = _pmean(content_term + adversarial_weight * adversarial, axis)
            return total, (_pmean(content_term, axis), _pmean(adversarial, axis))

        (g_loss, (content_term, adversarial)), sr_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(sr)
        (g_grads,) = g_vjp(sr_grad)
        g = g.apply_gradients(grads=g_grads, batch_stats=g_batch_stats)

        mse = _pmean(mse_loss(sr=sr, hr=hr), axis)
        metrics = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "content": content_term,
            "adversarial": adversarial,
            "mse": mse,
            "psnr": psnr(mse),
        }
        return GANState(generator=g, discriminator=d), metrics

    sharded = _data_parallel(per_device, mesh, 1, 2, donate)
    return lambda state, batch: sharded(state, batch["lr"], batch["hr"])
