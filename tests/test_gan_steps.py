"""GAN losses and train steps: values, learning on tiny models, 8 devices == 1 device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerance import fp_tolerance, max_abs, network_tolerance

from jaxthyroid.models import dcgan, srgan
from jaxthyroid.parallel import make_mesh
from jaxthyroid.train import gan_losses, gan_steps


def key(seed: int) -> jax.Array:
    """An RBG key: XLA:CPU compiles threefry-based initialisers ~10× slower."""
    return jax.random.key(seed, impl="rbg")


def images(seed: int, shape) -> jax.Array:
    return jnp.tanh(jax.random.normal(key(seed), shape))


# -- losses ---------------------------------------------------------------------------
def test_adversarial_losses_at_chance_and_confident():
    zeros = jnp.zeros(4)
    # closed form: means of 4 float32 softplus(0) = log 2 (a few roundings each)
    tol = fp_tolerance(reduction_size=8, depth=2)
    np.testing.assert_allclose(gan_losses.discriminator_loss(real_logit=zeros, fake_logit=zeros), 2 * np.log(2), **tol)
    np.testing.assert_allclose(gan_losses.generator_loss(fake_logit=zeros), np.log(2), **tol)
    confident = gan_losses.discriminator_loss(real_logit=jnp.full(4, 20.0), fake_logit=jnp.full(4, -20.0))
    assert float(confident) < 1e-6  # 2·softplus(-20) ≈ 4e-9: a bound on the value, not a rounding tolerance
    assert float(gan_losses.generator_loss(fake_logit=jnp.full(4, -20.0))) > 19.0


def test_content_losses():
    sr, hr = jnp.zeros((2, 4, 4, 1)), jnp.ones((2, 4, 4, 1))
    assert float(gan_losses.content_loss("mse")(sr=sr, hr=hr)) == 1.0
    doubled = gan_losses.content_loss("classifier", feature_fn=lambda x: [2 * x, x])
    np.testing.assert_allclose(doubled(sr=sr, hr=hr), (4.0 + 1.0) / 2)  # exact in float32 (small integers / 2)
    matching = gan_losses.content_loss("feature_matching")
    assert float(matching(sr=sr, hr=hr, sr_features=[sr], hr_features=[hr])) == 1.0
    with pytest.raises(ValueError, match="feature_fn"):
        gan_losses.content_loss("vgg19")
    with pytest.raises(ValueError, match="unknown content loss"):
        gan_losses.content_loss("perceptual")
    # Gradients reach only the fake features.
    grad_real = jax.grad(lambda r: gan_losses.feature_distance(real_features=r, fake_features=sr))(hr)
    assert float(jnp.abs(grad_real).sum()) == 0.0


# -- DCGAN ----------------------------------------------------------------------------
def test_discriminator_learns_fixed_fakes():
    """Training D alone on a fixed real and a fixed fake batch lowers its loss."""
    discriminator = dcgan.TinyDiscriminator(image_size=16)
    real, fake = images(0, (8, 16, 16, 1)), 0.5 * images(1, (8, 16, 16, 1))
    state = gan_steps.create_state(discriminator, key(2), optax.adam(1e-3, b1=0.5), real[:1])

    @jax.jit
    def update(state):
        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            real_logit, upd = discriminator.apply(variables, real, train=True, mutable=["batch_stats"])
            fake_logit, upd = discriminator.apply({"params": params, **upd}, fake, train=True, mutable=["batch_stats"])
            return gan_losses.discriminator_loss(real_logit=real_logit, fake_logit=fake_logit), upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, batch_stats=stats), loss

    losses = []
    for _ in range(8):
        state, loss = update(state)
        losses.append(float(loss))
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.75 * losses[0], losses


def test_dcgan_step_eight_devices_equals_one():
    """One conditional D+G step on 8 devices (global-batch BN) equals the 1-device step."""
    # 16² keeps compile time down and still has BatchNorm in both G and D.
    generator = dcgan.TinyGenerator(image_size=16, num_classes=dcgan.NUM_FINDING_SETS)
    discriminator = dcgan.TinyDiscriminator(image_size=16, num_classes=dcgan.NUM_FINDING_SETS)
    batch = {"image": images(0, (16, 16, 16, 1)), "finding_set": jnp.arange(16, dtype=jnp.int32) % 12}

    # SGD, not Adam: Adam's first step is ~lr·sign(g), which amplifies float noise
    # in near-zero gradients; SGD compares the gradients themselves.
    start = gan_steps.create_dcgan_state(generator, discriminator, key(1), g_tx=optax.sgd(0.1), d_tx=optax.sgd(0.1))

    def run(mesh):
        step = gan_steps.make_dcgan_step(generator, discriminator, mesh, conditional=True)
        return step(jax.tree.map(jnp.copy, start), batch, key(2))  # copy: the step donates its state

    state_1, metrics_1 = run(None)
    state_8, metrics_8 = run(make_mesh(8))
    assert int(state_8.step) == 1 and np.isfinite(float(metrics_8["d_loss"]))
    # D and G steps backpropagate through both networks; BatchNorm statistics and weight
    # gradients sum over 16 images × 16×16 pixels, on 8 devices in another order.
    nets = (start.generator.params, start.discriminator.params)
    for name in metrics_1:
        tol = network_tolerance(nets, backward=True, positions=16 * 16 * 16, scale=max_abs(metrics_1[name]))
        np.testing.assert_allclose(metrics_8[name], metrics_1[name], **tol, err_msg=name)
    for part in ("generator", "discriminator"):
        one, eight = getattr(state_1, part), getattr(state_8, part)
        for a, b in zip(
            jax.tree.leaves((one.params, one.batch_stats)), jax.tree.leaves((eight.params, eight.batch_stats))
        ):
            tol = network_tolerance(nets, backward=True, positions=16 * 16 * 16, scale=max_abs(a))
            np.testing.assert_allclose(b, a, **tol, err_msg=part)
    # The step moved the parameters (so the comparison above was not vacuous).
    assert (
        float(jnp.abs(start.generator.params["up0"]["kernel"] - state_1.generator.params["up0"]["kernel"]).max()) > 1e-6
    )


def test_dcgan_step_unconditional_runs_and_updates_both():
    generator, discriminator = dcgan.TinyGenerator(image_size=8), dcgan.TinyDiscriminator(image_size=8)
    state = gan_steps.create_dcgan_state(generator, discriminator, key(3))
    step = gan_steps.make_dcgan_step(generator, discriminator)
    batch = {"image": images(4, (8, 8, 8, 1))}
    for _ in range(3):
        state, metrics = step(state, batch, key(5))
    assert int(state.generator.step) == 3 and int(state.discriminator.step) == 3
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert 0.0 < float(metrics["real_score"]) < 1.0


def test_dcgan_step_auxiliary_classifier():
    """AC-GAN: D's class head learns the finding set of real images; the option checks its parts."""
    generator = dcgan.TinyGenerator(image_size=8, num_classes=4)
    discriminator = dcgan.TinyDiscriminator(image_size=8, num_classes=4, aux_classifier=4)
    fast = optax.adam(3e-3, b1=0.5)  # a larger step than DCGAN's 2e-4: learning shows within 30 steps
    state = gan_steps.create_dcgan_state(generator, discriminator, key(3), g_tx=fast, d_tx=fast)
    step = gan_steps.make_dcgan_step(generator, discriminator, conditional=True, aux_weight=1.0, donate=False)
    labels = jnp.arange(8, dtype=jnp.int32) % 4
    # Class-dependent brightness: a head on pooled features can tell the classes apart.
    batch = {
        "image": jnp.tanh(labels[:, None, None, None] - 1.5 + 0.1 * images(4, (8, 8, 8, 1))),
        "finding_set": labels,
    }
    first = None
    for _ in range(30):
        state, metrics = step(state, batch, key(5))
        first = first if first is not None else float(metrics["aux_loss"])
    assert all(np.isfinite(float(v)) for v in metrics.values())
    # Chance is log(4) = 1.386; the head must learn well below where it started.
    assert float(metrics["aux_loss"]) < 0.85 * first
    with pytest.raises(ValueError, match="aux_classifier"):
        gan_steps.make_dcgan_step(
            generator, dcgan.TinyDiscriminator(image_size=8, num_classes=4), aux_weight=1.0, conditional=True
        )


def test_dcgan_optimizer_linear_decay_tail():
    """Constant rate, then linearly to 0 over the last share of the steps. With a constant
    gradient Adam's bias-corrected step is exactly the rate (m/√v = 1, up to ε)."""
    tx = gan_steps.dcgan_optimizer(1.0, steps=10, decay_fraction=0.5)
    params = jnp.zeros(())
    state = tx.init(params)
    sizes = []
    for _ in range(10):
        updates, state = tx.update(jnp.ones(()), state, params)
        sizes.append(-float(updates))
    # Adam's bias correction 1 − 0.999^t in float32 cancels: relative error ~ ε32 / (1 − β2) ≈ 1.2e-4.
    rtol = 2 * np.finfo(np.float32).eps / (1 - 0.999)
    np.testing.assert_allclose(sizes, [1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2], rtol=rtol)
    constant = gan_steps.dcgan_optimizer(1.0)
    updates, _ = constant.update(jnp.ones(()), constant.init(params), params)
    np.testing.assert_allclose(-float(updates), 1.0, rtol=rtol)
    with pytest.raises(ValueError, match="decay_fraction"):
        gan_steps.dcgan_optimizer(1.0, steps=0, decay_fraction=0.5)


def test_dcgan_step_keeps_a_moving_average_of_the_generator():
    """generator_average ← d·average + (1 − d)·params after each G update, d = min(decay, (1+t)/(10+t))."""
    generator, discriminator = dcgan.TinyGenerator(image_size=8), dcgan.TinyDiscriminator(image_size=8)
    state = gan_steps.create_dcgan_state(generator, discriminator, key(3), average=True)
    start = jax.tree.map(np.asarray, state.generator.params)
    for leaf_a, leaf_p in zip(jax.tree.leaves(state.generator_average), jax.tree.leaves(start)):
        np.testing.assert_array_equal(leaf_a, leaf_p)  # starts at G's initial parameters
    step = gan_steps.make_dcgan_step(generator, discriminator, ema_decay=0.9, donate=False)
    batch = {"image": images(4, (8, 8, 8, 1))}
    expected = start
    for t in (1, 2, 3):
        state, _ = step(state, batch, key(5))
        decay = min(0.9, (1 + t) / (10 + t))
        params = jax.tree.map(np.asarray, state.generator.params)
        expected = jax.tree.map(lambda a, p, d=decay: d * a + (1 - d) * p, expected, params)
        for got, want in zip(jax.tree.leaves(state.generator_average), jax.tree.leaves(expected)):
            # one multiply-add per step in float32 on values of order 0.02-1
            np.testing.assert_allclose(got, want, rtol=4 * t * np.finfo(np.float32).eps, atol=1e-7)
    moved = max(float(np.abs(a - p).max()) for a, p in zip(jax.tree.leaves(expected), jax.tree.leaves(params)))
    assert moved > 1e-6  # the average lags the parameters: the check above is not params == params
    with pytest.raises(ValueError, match="average=True"):
        plain = gan_steps.create_dcgan_state(generator, discriminator, key(3))
        gan_steps.make_dcgan_step(generator, discriminator, ema_decay=0.9)(plain, batch, key(5))
    with pytest.raises(ValueError, match="ema_decay"):
        gan_steps.make_dcgan_step(generator, discriminator, ema_decay=1.5)


# -- SRResNet / SRGAN ---------------------------------------------------------------------
def sr_batch(seed: int, batch: int = 4):
    hr = images(seed, (batch, 16, 16, 1))
    lr = hr.reshape(batch, 8, 2, 8, 2, 1).mean(axis=(2, 4))  # 2× box downsampling
    return {"lr": lr, "hr": hr}


def test_srresnet_pretrain_mse_decreases():
    generator = srgan.TinySRResNet(num_blocks=1)
    batch = sr_batch(0)
    state = gan_steps.create_state(generator, key(1), optax.adam(1e-3), batch["lr"][:1])
    step = gan_steps.make_srresnet_pretrain_step(generator)
    mse = []
    for _ in range(20):
        state, metrics = step(state, batch)
        mse.append(float(metrics["mse"]))
    assert mse[-1] < 0.5 * mse[0], mse
    # the step's float32 log10 of its own mse vs float64 here: a few roundings
    np.testing.assert_allclose(metrics["psnr"], 10 * np.log10(4 / mse[-1]), **fp_tolerance(depth=3))


def test_srgan_step_feature_matching():
    generator, discriminator = srgan.TinySRResNet(num_blocks=1), srgan.TinySRDiscriminator()
    batch = sr_batch(2)
    state = gan_steps.create_srgan_state(generator, discriminator, key(3), lr_shape=(8, 8, 1))
    before = jax.tree.map(jnp.copy, state.generator.params)  # the step donates its state
    step = gan_steps.make_srgan_step(generator, discriminator)
    state, metrics = step(state, batch)
    assert int(state.generator.step) == 1 and int(state.discriminator.step) == 1
    np.testing.assert_allclose(  # one product and one sum in float32, in the step and here
        metrics["g_loss"], metrics["content"] + 1e-3 * metrics["adversarial"], **fp_tolerance(depth=2)
    )
    assert float(metrics["content"]) > 0.0 and np.isfinite(float(metrics["d_loss"]))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), before, state.generator.params)
    assert max(jax.tree.leaves(moved)) > 0.0
