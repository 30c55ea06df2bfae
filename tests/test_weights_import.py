"""torchvision ResNet weights -> our ResNets: names, layouts, the collapsed stem, parity with torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from tolerance import max_abs, network_tolerance

from jaxthyroid import cli
from jaxthyroid.models import registry, torchvision_import

KEY = jax.random.key(0)
# torchvision's parameter counts (1000 classes, RGB); test_models checks ours equal them.
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}


def _torchvision_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of torchvision's ``arch`` (written from torchvision's ``ResNet``
    class, independently of the module under test), ``num_batches_tracked`` included."""
    layers, bottleneck = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}[arch]
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix, c):
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{field}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes, expansion = 64, 4 if bottleneck else 1
    for s, n in enumerate(layers, start=1):
        planes = 64 * 2 ** (s - 1)
        for b in range(n):
            p = f"layer{s}.{b}"
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for k, (o, i, ks) in enumerate(convs, start=1):
                shapes[f"{p}.conv{k}.weight"] = (o, i, ks, ks)
                bn(f"{p}.bn{k}", o)
            stride = 2 if s > 1 and b == 0 else 1
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, 512 * expansion)
    shapes["fc.bias"] = (1000,)
    return shapes


def _random_state(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in _torchvision_shapes(arch).items():
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(7, np.int64)
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            state[name] = rng.normal(size=shape).astype(np.float32)
    return state


def _our_shapes(arch: str, channels: int, num_classes: int = 1000, cross: bool = False):
    model = registry.get_model(arch, num_classes=num_classes, cross=cross)
    x = jnp.zeros((1, 32, 32, channels))
    return model, jax.eval_shape(lambda k: model.init(k, x, train=False), KEY)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("channels", [3, 1])
def test_every_tensor_maps_to_our_model_and_none_is_left_over(arch, channels):
    state = _random_state(arch)
    variables = torchvision_import.torchvision_to_flax(state, arch, in_channels=channels, keep_head=True)
    _, shapes = _our_shapes(arch, channels)
    ours = {p: tuple(v.shape) for p, v in traverse_util.flatten_dict(shapes).items()}
    got = {p: v.shape for p, v in traverse_util.flatten_dict(variables).items()}
    assert got == ours  # every param and batch stat mapped, same shapes, nothing extra
    # Every torchvision tensor but the counters went somewhere: as many values as ours.
    n_torch = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    collapsed = 64 * 2 * 7 * 7 if channels == 1 else 0  # the stem's RGB kernel summed to one channel
    assert sum(int(np.prod(s)) for s in got.values()) == n_torch - collapsed
    if channels == 3:
        params = sum(np.prod(s) for p, s in ours.items() if p[0] == "params")
        assert params == TORCHVISION_PARAMS[arch]
    # Layouts: conv OIHW -> HWIO, the stem summed over RGB, BN stats into batch_stats.
    stem = state["conv1.weight"].transpose(2, 3, 1, 0)
    want_stem = stem if channels == 3 else stem.sum(axis=2, keepdims=True)
    np.testing.assert_array_equal(variables["params"]["conv_init"]["kernel"], want_stem)
    np.testing.assert_array_equal(
        variables["params"]["stage2_block1"]["conv2"]["kernel"], state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["stage3_block1"]["downsample_bn"]["var"], state["layer3.0.downsample.1.running_var"]
    )
    np.testing.assert_array_equal(variables["params"]["bn_init"]["scale"], state["bn1.weight"])
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], state["fc.weight"].T)


def test_head_is_dropped_and_wrong_names_are_refused():
    state = _random_state("resnet18")
    variables = torchvision_import.torchvision_to_flax(state, "resnet18")
    assert "head" not in variables["params"]
    with pytest.raises(torchvision_import.WeightsError, match="check --arch"):
        torchvision_import.torchvision_to_flax(state, "resnet34")
    with pytest.raises(torchvision_import.WeightsError, match="unexpected"):
        torchvision_import.torchvision_to_flax({**state, "layer1.0.extra.weight": state["fc.bias"]}, "resnet18")


def test_safetensors_file_round_trips_through_the_command_into_a_cross_model(tmp_path, capsys):
    st = pytest.importorskip("safetensors.numpy")
    state = _random_state("resnet18", seed=1)
    src, out = tmp_path / "resnet18.safetensors", tmp_path / "w" / "resnet18.msgpack"
    st.save_file(state, str(src))
    assert cli.main(["weights", "import", str(src), "--arch", "resnet18", "--out", str(out)]) == 0
    assert "resnet18" in capsys.readouterr().out
    blob = torchvision_import.load(out)
    assert (blob["arch"], blob["in_channels"]) == ("resnet18", 1)
    # A cross model of 6 findings: the backbone comes from the file; head and cross terms stay.
    _, shapes = _our_shapes("resnet18", 1, num_classes=6, cross=True)
    fresh = jax.tree.map(lambda s: np.full(s.shape, 0.25, s.dtype), shapes)
    loaded = torchvision_import.load_pretrained(fresh, out)
    flat_fresh, flat_loaded = (traverse_util.flatten_dict(v) for v in (fresh, loaded))
    assert flat_loaded.keys() == flat_fresh.keys()
    kept = [p for p in flat_fresh if "cross_term" in p or p[1] == "head"]
    assert any("cross_term" in p for p in kept)
    for p in kept:
        np.testing.assert_array_equal(flat_loaded[p], flat_fresh[p])
    np.testing.assert_array_equal(
        loaded["params"]["stage4_block2"]["conv1"]["kernel"], state["layer4.1.conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(loaded["batch_stats"]["bn_init"]["mean"], state["bn1.running_mean"])
    # Another depth, or the small stem, is a clear error.
    _, other = _our_shapes("resnet50", 1, num_classes=6)
    with pytest.raises(torchvision_import.WeightsError, match="not in the imported resnet18"):
        torchvision_import.load_pretrained(jax.tree.map(lambda s: np.zeros(s.shape), other), out)
    small = registry.get_model("resnet18", num_classes=6, stem="small")
    small_shapes = jax.eval_shape(lambda k: small.init(k, jnp.zeros((1, 32, 32, 1)), train=False), KEY)
    with pytest.raises(torchvision_import.WeightsError, match="stem='imagenet'"):
        torchvision_import.load_pretrained(jax.tree.map(lambda s: np.zeros(s.shape), small_shapes), out)


# -- parity with torchvision's own forward pass (needs torch; skipped without it) ---------


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_imported_logits_equal_torchvision(arch):
    torch = pytest.importorskip("torch", reason="parity with torchvision needs torch (pip install torch)")
    torchvision = pytest.importorskip("torchvision", reason="parity needs torchvision's ResNet")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    assert set(net.state_dict()) == set(_torchvision_shapes(arch))  # the test's own name table
    with torch.no_grad():  # BatchNorm away from the identity, so a mix-up of its tensors shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    grey = np.random.default_rng(0).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    rgb = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    model = registry.get_model(arch, num_classes=1000)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for x, torch_input in ((rgb, rgb), (grey, np.repeat(grey, 3, axis=-1))):
        channels = x.shape[-1]
        with torch.no_grad():
            want = net(torch.from_numpy(torch_input.transpose(0, 3, 1, 2).copy())).numpy()
        variables = torchvision_import.torchvision_to_flax(state, arch, in_channels=channels, keep_head=True)
        got = np.asarray(forward(variables, x))
        # Two summation orders of the same network (torch's and XLA's): rounding bound
        # from its depth and largest fan-in, at the logits' scale.
        np.testing.assert_allclose(got, want, **network_tolerance(variables["params"], scale=max_abs(want)))


def test_pth_state_dict_reads_like_safetensors(tmp_path):
    torch = pytest.importorskip("torch", reason="reading .pth needs torch")
    state = _random_state("resnet18", seed=2)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}, path)  # a wrapped checkpoint
    read = torchvision_import.read_state_dict(path)
    assert read.keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(read[k], v)
