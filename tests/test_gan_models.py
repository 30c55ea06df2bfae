"""DCGAN / SRGAN models: parameter counts, fast upsampling == reference layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerance import fp_tolerance, max_abs

from jaxthyroid.models import backend, dcgan, srgan
from jaxthyroid.models.upsample import ProjectConvTranspose, SubPixelConvTranspose, pixel_shuffle


def key(seed: int) -> jax.Array:
    """An RBG key: XLA:CPU compiles threefry-based initialisers ~10× slower (30 s vs 3 s here)."""
    return jax.random.key(seed, impl="rbg")


def init(model, *inputs, seed=1, **kwargs):
    """Jitted ``model.init`` (eager init compiles op by op, far slower on a busy CPU)."""
    return jax.jit(lambda k: model.init(k, *inputs, **kwargs))(key(seed))


def num_params(model, *inputs, **kwargs) -> int:
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, train=False, **kwargs))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("channels, g_count, d_count", [(1, 3_574_656, 2_763_520), (3, 3_576_704, 2_765_568)])
def test_dcgan_parameter_counts(channels, g_count, d_count):
    assert num_params(dcgan.Generator(channels=channels), jnp.zeros((1, 100))) == g_count
    no_sub_pixel = backend.default_ops().replace(sub_pixel=False)
    assert num_params(dcgan.Generator(channels=channels, ops=no_sub_pixel), jnp.zeros((1, 100))) == g_count
    assert num_params(dcgan.Discriminator(), jnp.zeros((1, 64, 64, channels))) == d_count


@pytest.mark.parametrize("channels, count", [(1, 1_528_724), (3, 1_549_462)])
def test_srresnet_x4_parameter_count(channels, count):
    assert num_params(srgan.SRResNetX4(channels=channels), jnp.zeros((1, 24, 24, channels))) == count


def test_srgan_discriminator_parameter_count():
    assert num_params(srgan.SRDiscriminator(), jnp.zeros((1, 96, 96, 3))) == 23_565_505
    # Adaptive pooling to 6×6 keeps the 96² layout at any input size.
    assert num_params(srgan.SRDiscriminator(pool_size=6), jnp.zeros((1, 128, 128, 3))) == 23_565_505


def test_srresnet_shapes_and_prelu_init():
    x = jnp.zeros((2, 8, 8, 1))
    for model, side in ((srgan.TinySRResNet(), 16), (srgan.TinySRResNet(scale=4), 32)):
        out = jax.eval_shape(lambda m=model: m.init_with_output(jax.random.key(0), x, train=False))[0]
        assert out.shape == (2, side, side, 1)
    variables = init(srgan.TinySRResNet(), x, train=False)
    slopes = [
        v for path, v in jax.tree_util.tree_leaves_with_path(variables["params"]) if "negative_slope" in str(path)
    ]
    assert slopes and all(float(s) == 0.25 for s in slopes)


@pytest.mark.parametrize(
    "im2col,shared",
    [(False, False), (True, False), (True, True)],
    ids=["xla-conv", "im2col-per-phase", "im2col-shared-patches"],
)
def test_sub_pixel_conv_transpose_matches_conv_transpose(im2col, shared):
    x = jax.random.normal(key(0), (2, 5, 6, 3))
    fast = SubPixelConvTranspose(4, im2col=im2col, shared_patches_min_size=1 if shared else 8)
    # PyTorch ConvTranspose2d(k=4, s=2, p=1) as lax padding k-1-p = 2 on each side.
    reference = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False)
    params = init(fast, x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, jax.eval_shape(reference.init, key(1), x))
    cotangent = jax.random.normal(key(2), (2, 10, 12, 4))

    def loss(module, params, x):
        return jnp.sum(module.apply(params, x) * cotangent)

    y_fast, y_ref = jax.jit(lambda p, x: (fast.apply(p, x), reference.apply(p, x)))(params, x)
    assert y_fast.shape == (2, 10, 12, 4)
    # one 4×4×3 transposed conv: sums of 48 products (the zero-dilated reference's count)
    np.testing.assert_allclose(y_fast, y_ref, **fp_tolerance(reduction_size=48, scale=max_abs(y_ref)))
    g_fast, g_ref = jax.jit(
        lambda p, x: [jax.grad(lambda p, x, m=m: loss(m, p, x), argnums=(0, 1))(p, x) for m in (fast, reference)]
    )(params, x)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):  # kernel grad: sum over 2×10×12 outputs
        np.testing.assert_allclose(a, b, **fp_tolerance(reduction_size=240, scale=max_abs(b)))


def test_project_conv_transpose_matches_conv_transpose():
    z = jax.random.normal(key(0), (3, 7))
    fast = ProjectConvTranspose(5)
    reference = nn.ConvTranspose(5, (4, 4), padding="VALID", use_bias=False)
    params = init(fast, z)
    y_fast, y_ref = jax.jit(lambda p, z: (fast.apply(p, z), reference.apply(p, z[:, None, None, :])))(params, z)
    np.testing.assert_allclose(
        y_fast, y_ref, **fp_tolerance(reduction_size=7, scale=max_abs(y_ref))
    )  # 1×1 input: 7 terms


def test_generator_fast_upsample_equals_conv_transpose():
    z = jax.random.normal(key(0), (2, 16))
    fast = dcgan.TinyGenerator(ops=backend.default_ops().replace(sub_pixel=True))
    slow = dcgan.TinyGenerator(ops=backend.default_ops().replace(sub_pixel=False))
    variables = init(fast, z, train=False)
    y, y_slow = jax.jit(lambda v, z: (fast.apply(v, z, train=False), slow.apply(v, z, train=False)))(variables, z)
    assert y.shape == (2, 32, 32, 1) and float(jnp.max(jnp.abs(y))) <= 1.0
    # TinyGenerator: 4 layers, the widest a 4×4×32 transposed conv (512 terms); tanh output in [-1, 1]
    np.testing.assert_allclose(y, y_slow, **fp_tolerance(reduction_size=512, depth=4))


def reference_pixel_shuffle(x: np.ndarray, r: int) -> np.ndarray:
    """torch.nn.functional.pixel_shuffle on NCHW, written out: out[n,c,h*r+i,w*r+j] = in[n,c*r*r+i*r+j,h,w]."""
    nchw = x.transpose(0, 3, 1, 2)
    n, crr, h, w = nchw.shape
    c = crr // (r * r)
    out = np.zeros((n, c, h * r, w * r), x.dtype)
    for ci in range(c):
        for i in range(r):
            for j in range(r):
                out[:, ci, i::r, j::r] = nchw[:, ci * r * r + i * r + j]
    return out.transpose(0, 2, 3, 1)


def test_pixel_shuffle_matches_torch_semantics():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 8)).astype(np.float32)
    y = np.asarray(pixel_shuffle(jnp.asarray(x), 2))
    assert y.shape == (2, 6, 8, 2)
    np.testing.assert_array_equal(y, reference_pixel_shuffle(x, 2))
    try:
        import torch
    except ImportError:
        return
    expected = torch.nn.functional.pixel_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(y, expected.numpy())


def test_conditional_generator_depends_on_finding_set():
    generator = dcgan.TinyGenerator(num_classes=dcgan.NUM_FINDING_SETS)
    z = jnp.tile(jax.random.normal(key(0), (1, 16)), (2, 1))
    labels = jnp.array([0, 11], jnp.int32)  # normal vs hot_nodule+cold_nodule
    variables = init(generator, z, labels, train=False)
    images = jax.jit(lambda v: generator.apply(v, z, labels, train=False))(variables)
    assert images.shape == (2, 32, 32, 1)
    # At init (eval-mode BN, N(0, 0.02) weights) images are ~1e-5: compare relatively.
    assert float(jnp.max(jnp.abs(images[0] - images[1]))) > 0.1 * float(jnp.max(jnp.abs(images)))
    discriminator = dcgan.TinyDiscriminator(num_classes=dcgan.NUM_FINDING_SETS)
    d_vars = init(discriminator, images, labels, train=False)
    same_image = jnp.tile(images[:1], (2, 1, 1, 1))
    logits = jax.jit(lambda v: discriminator.apply(v, same_image, labels, train=False))(d_vars)
    assert logits.shape == (2,)
    assert abs(float(logits[0] - logits[1])) > 0.1 * float(jnp.max(jnp.abs(logits)))  # projection term


def test_conditional_norm_starts_as_the_plain_generator_and_label_std_scales_the_embedding():
    z = jax.random.normal(key(0), (4, 16))
    labels = jnp.array([0, 3, 7, 11], jnp.int32)
    cbn = dcgan.TinyGenerator(num_classes=dcgan.NUM_FINDING_SETS, conditional_norm=True)
    plain = dcgan.TinyGenerator(num_classes=dcgan.NUM_FINDING_SETS)
    variables = init(cbn, z, labels, train=False)
    gains = {k: v for k, v in variables["params"].items() if k.startswith("Embed_")}
    assert len(gains) == 3 and all(float(jnp.abs(g["embedding"]).max()) == 0.0 for g in gains.values())
    # Without the (zero) per-class gains the parameters are a plain generator's, with the same output.
    plain_vars = {**variables, "params": {k: v for k, v in variables["params"].items() if k not in gains}}
    a = jax.jit(lambda v: cbn.apply(v, z, labels, train=True, mutable=["batch_stats"])[0])(variables)
    b = jax.jit(lambda v: plain.apply(v, z, labels, train=True, mutable=["batch_stats"])[0])(plain_vars)
    np.testing.assert_array_equal(a, b)
    # A non-zero gain makes the output depend on it.
    bumped = jax.tree.map(lambda x: x, variables)
    bumped["params"]["Embed_0"] = {"embedding": jnp.ones_like(gains["Embed_0"]["embedding"])}
    c = jax.jit(lambda v: cbn.apply(v, z, labels, train=True, mutable=["batch_stats"])[0])(bumped)
    assert float(jnp.abs(c - a).max()) > 0
    # label_std sets the embedding's scale (flax's default is ~N(0, 1/embed_dim)).
    for std in (None, 1.0):
        emb = init(dcgan.TinyGenerator(num_classes=12, embed_dim=64, label_std=std), z, labels, train=False)
        measured = float(jnp.std(emb["params"]["label_embed"]["embedding"]))
        expected = std if std is not None else 1 / np.sqrt(64)
        assert abs(measured - expected) < 0.25 * expected  # 768 draws: sampling error ~3 %


def test_discriminator_features():
    x = jnp.zeros((2, 32, 32, 1))
    d = dcgan.TinyDiscriminator()
    variables = init(d, x, train=False)
    logits, features = jax.jit(lambda v: d.apply(v, x, train=False, return_features=True))(variables)
    assert logits.shape == (2,) and [f.shape[1] for f in features] == [16, 8, 4]


def test_srresnet_bicubic_skip_starts_at_bicubic_with_the_same_parameters():
    from jaxthyroid.models import srgan as srgan_lib

    lr = jax.random.uniform(jax.random.key(1, impl="rbg"), (2, 8, 8, 1))
    plain = srgan_lib.SRResNet(scale=2, num_blocks=1, features=8)
    skip = srgan_lib.SRResNet(scale=2, num_blocks=1, features=8, bicubic_skip=True)
    count = lambda m: sum(
        x.size
        for x in jax.tree.leaves(
            jax.eval_shape(lambda: m.init(jax.random.key(0, impl="rbg"), lr, train=False))["params"]
        )
    )
    assert count(plain) == count(skip)
    variables = jax.jit(lambda k: skip.init(k, lr, train=False))(jax.random.key(0, impl="rbg"))
    out = skip.apply(variables, lr, train=False)
    # the residual branch starts at exactly 0; bicubic ×2 is 4 taps per axis (16 terms) of values in [0, 1]
    np.testing.assert_allclose(out, jax.image.resize(lr, (2, 16, 16, 1), "bicubic"), **fp_tolerance(reduction_size=16))


@pytest.mark.parametrize("name", ["generator", "discriminator", "srresnet", "sr_discriminator"])
def test_im2col_convs_change_nothing(name):
    """Every conv as im2col (``Ops.im2col="all"``) gives the same parameters, outputs and gradients."""
    z, img = jax.random.normal(key(0), (2, 16)), jax.random.normal(key(1), (2, 32, 32, 1))
    model, x = {
        "generator": (dcgan.TinyGenerator(num_classes=12), z),
        "discriminator": (dcgan.TinyDiscriminator(num_classes=12), img),
        "srresnet": (srgan.TinySRResNet(), img[:, :8, :8]),
        # 32², not 16²: at 16² the last blocks are 1×1, and a batch-2 BatchNorm of one pixel
        # divides by |x1 - x2| (condition number unbounded; 250 eps apart seen on one CPU).
        "sr_discriminator": (srgan.TinySRDiscriminator(), img),
    }[name]
    ids = jnp.array([0, 7])
    extra = (ids,) if name in ("generator", "discriminator") else ()
    assert model.ops is None  # the default: jaxthyroid.models.backend's policy
    cpu = backend.default_ops("cpu")
    model, reference = model.clone(ops=cpu.replace(im2col="all")), model.clone(ops=cpu.replace(im2col="none"))
    variables = init(reference, x, *extra, train=False)
    assert jax.tree.structure(jax.eval_shape(lambda: model.init(key(1), x, *extra, train=False))) == jax.tree.structure(
        variables
    )

    def loss(m, params):
        out, _ = m.apply({**variables, "params": params}, x, *extra, train=True, mutable=["batch_stats"])
        return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))), out

    ((l_fast, _), g_fast), ((l_ref, out), g_ref) = jax.jit(
        lambda p: [jax.value_and_grad(lambda q, m=m: loss(m, q), has_aux=True)(p) for m in (model, reference)]
    )(variables["params"])
    # Rounding through <= 10 layers whose longest sums are 3×3×64 = 576 products (forward)
    # and a weight gradient's B×H×W = 2×32×32 = 2048 (backward); the loss sums out·cos,
    # terms of total magnitude sum|out|.
    np.testing.assert_allclose(
        l_fast, l_ref, **fp_tolerance(reduction_size=576, depth=10, scale=float(jnp.sum(jnp.abs(out))))
    )
    # The biases of convs before a BatchNorm have a true gradient of 0 (pure rounding
    # noise), so every gradient is compared at the scale of the model's largest one.
    tol = fp_tolerance(reduction_size=2048, depth=2 * 10, scale=max_abs(g_ref))
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol["atol"])
