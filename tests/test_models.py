"""Classifier models: torchvision parameter counts, the cross term, the graft, fast layers."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerance import fp_tolerance, max_abs, network_tolerance

from jaxthyroid.models import backend, layers, resnet
from jaxthyroid.models.registry import MODEL_NAMES, get_model

KEY = jax.random.key(0)


def _param_count(model, channels, size=64):
    shapes = jax.eval_shape(
        lambda k: model.init({"params": k, "dropout": k}, jnp.zeros((1, size, size, channels)), train=False), KEY
    )
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize(
    "name, want",
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("vgg16_bn", 138_365_992),
        ("alexnet", 61_100_840),
        ("densenet121", 7_978_856),
    ],
)
def test_param_counts_equal_torchvision(name, want):
    assert _param_count(get_model(name, num_classes=1000), channels=3) == want


def test_resnet18_one_channel_five_classes():
    assert _param_count(get_model("resnet18", num_classes=5), channels=1) == 11_172_805


@pytest.mark.parametrize("name", ["resnet_tiny", "vgg_tiny", "densenet_tiny", "alexnet"])
@pytest.mark.parametrize("size", [32, 48])
def test_output_shapes(name, size):
    model = get_model(name, num_classes=6)
    x = jnp.zeros((2, size, size, 1))
    out, _ = jax.eval_shape(lambda k: model.init_with_output({"params": k, "dropout": k}, x, train=True), KEY)
    assert out.shape == (2, 6) and out.dtype == jnp.float32


def test_small_stem_keeps_full_resolution_into_stage1():
    """The CIFAR-style stem: a 3×3/1 conv and no max-pool, so stage 1 runs at the input size."""
    x = jnp.zeros((2, 32, 32, 1))

    def stage1_shape(stem):
        model = get_model("resnet_tiny", num_classes=6, stem=stem)
        _, state = jax.eval_shape(lambda k: model.init_with_output(k, x, train=False, capture_intermediates=True), KEY)
        return state["intermediates"]["stage1_block1"]["__call__"][0].shape

    assert stage1_shape("small") == (2, 32, 32, 8)
    assert stage1_shape("imagenet") == (2, 8, 8, 8)
    params = jax.eval_shape(
        lambda k: get_model("resnet_tiny", num_classes=6, stem="small").init(k, x, train=False), KEY
    )
    assert params["params"]["conv_init"]["kernel"].shape == (3, 3, 1, 8)
    with pytest.raises(ValueError, match="stem"):
        jax.eval_shape(lambda k: get_model("resnet_tiny", num_classes=6, stem="big").init(k, x, train=False), KEY)


def test_registry_unknown_name_lists_known():
    with pytest.raises(ValueError, match="resnet18"):
        get_model("resnet19", num_classes=6)
    assert "densenet121" in MODEL_NAMES


# Tests compile few programs: XLA:CPU compiles of a whole init (threefry for every
# parameter) take tens of seconds on the shared 2-core machine. Real Flax init is
# done once per cross source (with the cheap 'rbg' key), other variables are
# filled from numpy on shapes from eval_shape.
RBG_KEY = jax.random.key(0, impl="rbg")


def _images(n=4, size=32):
    return jnp.asarray(np.random.default_rng(1).uniform(size=(n, size, size, 1)), jnp.float32)


def _tiny(cross, source="adapter", **kw):
    return get_model("resnet_tiny", num_classes=6, cross=cross, cross_source=source, **kw)


def _shapes(model, x):
    return jax.eval_shape(lambda: model.init({"params": KEY, "dropout": KEY}, x, train=False))


def _random_variables(model, x, seed=0):
    """Variables shaped like ``model``'s, filled with random (plausible) values."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if name == "scale":
            return jnp.asarray(1 + 0.1 * noise)
        if name == "var":
            return jnp.asarray(1 + 0.1 * np.abs(noise))
        return jnp.asarray((0.05 if name == "mean" else 0.1) * noise)

    return jax.tree_util.tree_map_with_path(fill, _shapes(model, x))


def _backbone(variables):
    """Drops every ``cross_term`` entry (the plain model's tree)."""
    strip = lambda tree: {k: _backbone(v) if isinstance(v, dict) else v for k, v in tree.items() if k != "cross_term"}
    return strip(variables)


@pytest.fixture(scope="module", params=["adapter", "image"])
def fresh_cross(request):
    model = _tiny(True, request.param)
    return model, jax.jit(lambda k: model.init(k, _images(), train=False))(RBG_KEY)


def test_fresh_cross_model_equals_plain(fresh_cross):
    cross, cross_vars = fresh_cross
    plain, x = _tiny(False), _images()
    assert "cross_term" in cross_vars["params"]["stage2_block1"]
    assert not np.any(cross_vars["params"]["stage1_block1"]["cross_term"]["expand"]["kernel"])
    plain_vars = _backbone(cross_vars)  # must be a valid plain tree: same paths

    @jax.jit
    def logits(plain_vars, cross_vars):
        out = []
        for train in (False, True):
            out.append(plain.apply(plain_vars, x, train=train, mutable=["batch_stats"])[0])
            out.append(cross.apply(cross_vars, x, train=train, mutable=["batch_stats"])[0])
        return out

    want_eval, got_eval, want_train, got_train = logits(plain_vars, cross_vars)
    # zero cross terms add exactly 0; two programs may round differently (forward bound)
    for got, want in ((got_eval, want_eval), (got_train, want_train)):
        np.testing.assert_allclose(got, want, **network_tolerance(cross_vars["params"], scale=max_abs(want)))


def test_graft_keeps_trained_plain_outputs_and_cross_term_matters(fresh_cross):
    cross, cross_vars = fresh_cross
    plain, x = _tiny(False), _images()
    trained = _random_variables(plain, x, seed=2)  # a "trained" plain model
    grafted = resnet.graft_plain_into_cross(trained, cross_vars)
    # A trained cross term changes the outputs (so the equality can fail).
    touched = jax.tree.map(lambda v: v, grafted)
    expand = touched["params"]["stage2_block1"]["cross_term"]["expand"]
    expand["kernel"] = expand["kernel"] + 0.5

    @jax.jit
    def logits(trained, grafted, touched):
        return (
            plain.apply(trained, x, train=False),
            cross.apply(grafted, x, train=False),
            cross.apply(touched, x, train=False),
        )

    want, got, changed = logits(trained, grafted, touched)
    np.testing.assert_allclose(got, want, **network_tolerance(grafted["params"], scale=max_abs(want)))
    assert np.abs(changed - want).max() > 1e-3


def test_graft_rejects_mismatched_models():
    x = _images()
    plain_vars = _shapes(get_model("resnet_tiny", num_classes=5), x)
    cross_vars = _shapes(_tiny(True), x)
    with pytest.raises(ValueError, match="head"):
        resnet.graft_plain_into_cross(plain_vars, cross_vars)


def test_param_labels_select_cross_term():
    labels = jax.tree.leaves(resnet.param_labels(_shapes(_tiny(True), _images())["params"]))
    assert set(labels) == {"cross_term", "backbone"}
    assert labels.count("cross_term") == 2 * 3 * 2  # 2 blocks x 3 convs x (kernel, bias)


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _value_and_grads(fn, x, w):
    loss = lambda *a: jnp.sum(fn(*a) * w)
    # jit: one compilation instead of one per eager op (keeps the suite fast).
    return jax.jit(lambda *a: (fn(*a), jax.grad(loss, argnums=tuple(range(len(a))))(*a)))(*x)


def test_fast_maxpool_equals_nn_max_pool():
    x = _normal((2, 17, 16, 3), 4)
    ref = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    w = _normal((2, 9, 8, 3), 5)
    y_ref, (g_ref,) = _value_and_grads(ref, (x,), w)
    y, (g,) = _value_and_grads(layers.max_pool_slices, (x,), w)
    np.testing.assert_array_equal(y, y_ref)  # a maximum rounds nothing
    # each input is in <= 4 windows (3×3, stride 2): its gradient sums <= 4 cotangents
    np.testing.assert_allclose(g, g_ref, **fp_tolerance(reduction_size=4, scale=max_abs(g_ref)))


def test_im2col_stem_equals_conv():
    x = _normal((2, 20, 20, 1), 6)
    kernel = 0.1 * _normal((7, 7, 1, 16), 7)
    pad = ((3, 3), (3, 3))
    ref = nn.Conv(16, (7, 7), (2, 2), padding=pad, use_bias=False)
    fast = layers.Im2colConv(16, (7, 7), (2, 2), padding=pad)
    f_ref = lambda x, k: ref.apply({"params": {"kernel": k}}, x)
    f_fast = lambda x, k: fast.apply({"params": {"kernel": k}}, x)
    w = _normal((2, 10, 10, 16), 8)
    y_ref, g_ref = _value_and_grads(f_ref, (x, kernel), w)
    y, g = _value_and_grads(f_fast, (x, kernel), w)
    np.testing.assert_allclose(y, y_ref, **fp_tolerance(reduction_size=7 * 7, scale=max_abs(y_ref)))
    for a, b in zip(g, g_ref):  # d/dx sums <= 7·7·16 products, d/dkernel 2·10·10
        np.testing.assert_allclose(a, b, **fp_tolerance(reduction_size=7 * 7 * 16, scale=max_abs(b)))


@pytest.mark.parametrize(
    "kernel_size,strides,pad,bias",
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1)), False),
        ((3, 3), (2, 2), ((1, 1), (1, 1)), True),
        ((1, 1), (2, 2), ((0, 0), (0, 0)), False),
    ],
)
def test_im2col_conv_equals_conv(kernel_size, strides, pad, bias):
    """The ResNet body's convs (3×3, strided 3×3, strided 1×1 shortcut), with bias too."""
    x = _normal((2, 6, 5, 8), 9)
    kernel = 0.1 * _normal(kernel_size + (8, 12), 10)
    params = {"kernel": kernel, **({"bias": _normal((12,), 11)} if bias else {})}
    ref = nn.Conv(12, kernel_size, strides, padding=pad, use_bias=bias)
    fast = layers.Im2colConv(12, kernel_size, strides, padding=pad, use_bias=bias)
    assert jax.tree.map(jnp.shape, fast.init(KEY, x)["params"]) == jax.tree.map(jnp.shape, params)
    f_ref = lambda x, p: ref.apply({"params": p}, x)
    f_fast = lambda x, p: fast.apply({"params": p}, x)
    out_shape = jax.eval_shape(f_ref, x, params).shape
    w = _normal(out_shape, 12)
    y_ref, g_ref = _value_and_grads(f_ref, (x, params), w)
    y, g = _value_and_grads(f_fast, (x, params), w)
    fan_in = math.prod(kernel_size) * 8
    np.testing.assert_allclose(y, y_ref, **fp_tolerance(reduction_size=fan_in + 1, scale=max_abs(y_ref)))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):  # d/dx: <= kh·kw·12 terms; d/dkernel: 2·6·5
        np.testing.assert_allclose(a, b, **fp_tolerance(reduction_size=math.prod(kernel_size) * 12, scale=max_abs(b)))


def test_im2col_where_it_pays():
    """The CPU policy's conv rule: im2col for few input channels or outputs under 4×4."""
    cpu = backend.default_ops("cpu")
    pays = lambda c, h, w: cpu.conv_uses_im2col(c, (3, 3), (1, 1), (h, w))
    assert pays(1, 64, 64) and pays(512, 2, 2)
    assert not pays(64, 32, 32) and not pays(512, 4, 4)
    assert cpu.replace(im2col="all").conv_uses_im2col(64, (3, 3), (1, 1), (32, 32))
    assert not cpu.replace(im2col="none").conv_uses_im2col(1, (3, 3), (1, 1), (2, 2))
    on_cpu = jax.default_backend() == "cpu"
    assert backend.default_ops().conv_uses_im2col(512, (3, 3), (1, 1), (2, 2)) == on_cpu
    assert not backend.default_ops().conv_uses_im2col(64, (3, 3), (1, 1), (32, 32))


@pytest.mark.parametrize("side", [3, 8])  # 2×2 output (im2col) and 8×8 (XLA's conv)
def test_auto_conv_equals_conv(side):
    x = _normal((2, side, side, 8), 16)
    params = {"kernel": 0.1 * _normal((3, 3, 8, 12), 17), "bias": _normal((12,), 18)}
    pad = ((1, 1), (1, 1))
    ref = nn.Conv(12, (3, 3), (2, 2), padding=pad)
    auto = backend.default_ops("cpu").conv(12, (3, 3), (2, 2), padding=pad, use_bias=True)
    y_ref = ref.apply({"params": params}, x)
    np.testing.assert_allclose(
        auto.apply({"params": params}, x), y_ref, **fp_tolerance(reduction_size=3 * 3 * 8 + 1, scale=max_abs(y_ref))
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_patch_matmul_has_the_gradients_of_a_matmul(dtype):
    """The custom VJP only reorders the weight gradient's contraction."""
    patches = _normal((3, 4, 5, 12), 13).astype(dtype)
    kernel = _normal((12, 7), 14).astype(dtype)
    w = _normal((3, 4, 5, 7), 15).astype(dtype)
    ref = jax.value_and_grad(lambda p, k: jnp.sum((p @ k) * w).astype(jnp.float32), argnums=(0, 1))
    got = jax.value_and_grad(lambda p, k: jnp.sum(layers.patch_matmul(p, k) * w).astype(jnp.float32), argnums=(0, 1))
    (v_ref, g_ref), (v, g) = ref(patches, kernel), got(patches, kernel)
    np.testing.assert_array_equal(v, v_ref)  # the same forward matmul on the same operands
    for a, b in zip(g, g_ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        # d/dkernel sums 3·4·5 = 60 products in another order. XLA's CPU dot accumulates
        # bfloat16 products in float32, so in bfloat16 only the final rounding differs.
        n = 60 if dtype == jnp.float32 else 1
        tol = fp_tolerance(dtype, reduction_size=n, scale=max_abs(np.asarray(b, np.float32)))
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)


@pytest.mark.parametrize("source", [None, "adapter", "image"])
def test_resnet_levers_change_nothing_but_speed(source):
    x = _images(2)
    cross = dict(cross=source is not None, source=source or "adapter")
    default = _tiny(False)
    assert default.ops is None  # jaxthyroid.models.backend's policy
    cpu = backend.default_ops("cpu")
    fast = _tiny(**cross, ops=cpu.replace(sliced_max_pool=True, im2col="all"))  # every conv as a matmul
    ref = _tiny(**cross, ops=cpu.replace(sliced_max_pool=False, im2col="none"))
    variables = _random_variables(ref, x)
    assert jax.tree.structure(_shapes(fast, x)) == jax.tree.structure(variables)

    def loss(model, params):
        out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out * jnp.arange(6.0))

    l_ref, g_ref = jax.jit(jax.value_and_grad(lambda p: loss(ref, p)))(variables["params"])
    l, g = jax.jit(jax.value_and_grad(lambda p: loss(fast, p)))(variables["params"])
    model_out = jax.jit(lambda p: ref.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])[0])
    terms = float(jnp.sum(jnp.abs(model_out(variables["params"]) * jnp.arange(6.0))))  # the loss's terms
    np.testing.assert_allclose(l, l_ref, **network_tolerance(variables["params"], scale=terms))
    # weight gradients also sum over batch × the stem's 16×16 outputs; compared at the
    # scale of the largest gradient (conv biases before a BatchNorm have true gradient 0)
    tol = network_tolerance(variables["params"], backward=True, positions=2 * 16 * 16, scale=max_abs(g_ref))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol["atol"])


def test_bfloat16_compute_keeps_float32_params():
    x = _images(2)
    model = _tiny(True, dtype=jnp.bfloat16)
    shapes = _shapes(model, x)
    assert {p.dtype for p in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    variables = _random_variables(model, x)
    out, _ = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("size_in, size_out", [(13, 6), (1, 7), (4, 7), (14, 7)])
def test_adaptive_avg_pool_matches_torch(size_in, size_out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, size_in, size_in + 1, 3)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), (size_out, size_out)
    ).permute(0, 2, 3, 1)
    got = layers.adaptive_avg_pool(jnp.asarray(x), (size_out, size_out))
    window = (size_in // size_out + 2) ** 2  # an adaptive window's pixels (upper bound)
    np.testing.assert_allclose(got, want.numpy(), **fp_tolerance(reduction_size=window, scale=max_abs(want.numpy())))


def test_dropout_only_in_training():
    model = get_model("vgg_tiny", num_classes=6)
    x = _images(2)
    variables = _random_variables(model, x)

    @jax.jit
    def logits(k1, k2):
        run = lambda k: model.apply(variables, x, train=True, rngs={"dropout": k}, mutable=["batch_stats"])[0]
        return run(k1), run(k2), model.apply(variables, x, train=False)

    a, b, det = logits(jax.random.key(1), jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(det, jax.jit(lambda: model.apply(variables, x, train=False))())


@pytest.mark.parametrize("name", ["vgg_tiny", "densenet_tiny", "alexnet"])
def test_baseline_im2col_convs_change_nothing(name):
    size = 64 if name == "alexnet" else 16
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, size, size, 1)), jnp.float32)
    cpu = backend.default_ops("cpu")
    fast = get_model(name, num_classes=6, in_channels=1, ops=cpu.replace(im2col="all"))
    ref = get_model(name, num_classes=6, in_channels=1, ops=cpu.replace(im2col="none"))
    variables = jax.jit(lambda k: ref.init({"params": k, "dropout": k}, x, train=False))(RBG_KEY)
    assert jax.tree.structure(
        jax.eval_shape(lambda: fast.init({"params": KEY, "dropout": KEY}, x, train=False))
    ) == jax.tree.structure(variables)
    y_ref = jax.jit(lambda v: ref.apply(v, x, train=False))(variables)
    y = jax.jit(lambda v: fast.apply(v, x, train=False))(variables)
    np.testing.assert_allclose(y, y_ref, **network_tolerance(variables["params"], scale=max_abs(y_ref)))
