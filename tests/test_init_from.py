"""model.init_from: a training starts from weights written by `jaxthyroid weights import`.

A random torchvision-named ResNet-18 state dict at 1/8 width (stages 8..64) is written
as safetensors, imported, and trained for 2 steps at learning rate 0 in the cross model:
every backbone parameter of the result is the imported one, bit for bit; the cross
terms are as a fresh cross model initialises them (their last conv at zero).
"""

import pathlib

import numpy as np
import pytest
from flax import traverse_util

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")
st = pytest.importorskip("safetensors.numpy")

from jaxthyroid import config as config_lib  # noqa: E402
from jaxthyroid import cross_training  # noqa: E402
from jaxthyroid.config import ConfigError  # noqa: E402
from jaxthyroid.models import torchvision_import  # noqa: E402
from jaxthyroid.train import state as state_lib  # noqa: E402

WIDTH = 8  # torchvision's is 64

# 48 train images in batches of 16 (a multiple of conftest's 8 devices); only the
# control trains, as the cross model, for 2 steps that change no parameter.
TINY = [
    "model.name=resnet18",
    f"model.num_filters={WIDTH}",
    "model.stem=imagenet",
    "data.n_train=48",
    "data.n_val=16",
    "data.n_test=16",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "phase1.enabled=False",
    "phase2.enabled=False",
    "plain.model=cross",
    "plain.steps=2",
    "plain.learning_rate=0.0",
    "plain.weight_decay=0.0",
    "plain.warmup_fraction=0.0",
    "eval_every_steps=2",
    "checkpoint_every_steps=0",
    "log_every=1",
]


def _resnet18_state(width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors under torchvision's ResNet-18 names and layouts (OIHW), RGB stem,
    every width scaled by ``width / 64`` (written from torchvision's class, not from the
    module under test)."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}

    def bn(prefix, c):
        state[f"{prefix}.weight"] = rng.normal(size=c).astype(np.float32)
        state[f"{prefix}.bias"] = rng.normal(size=c).astype(np.float32)
        state[f"{prefix}.running_mean"] = rng.normal(size=c).astype(np.float32)
        state[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        state[f"{prefix}.num_batches_tracked"] = np.array(3, np.int64)

    state["conv1.weight"] = (0.1 * rng.normal(size=(width, 3, 7, 7))).astype(np.float32)
    bn("bn1", width)
    inplanes = width
    for s in range(1, 5):
        planes = width * 2 ** (s - 1)
        for b in range(2):
            p = f"layer{s}.{b}"
            state[f"{p}.conv1.weight"] = (0.1 * rng.normal(size=(planes, inplanes, 3, 3))).astype(np.float32)
            bn(f"{p}.bn1", planes)
            state[f"{p}.conv2.weight"] = (0.1 * rng.normal(size=(planes, planes, 3, 3))).astype(np.float32)
            bn(f"{p}.bn2", planes)
            if b == 0 and s > 1:
                state[f"{p}.downsample.0.weight"] = (0.1 * rng.normal(size=(planes, inplanes, 1, 1))).astype(np.float32)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    state["fc.weight"] = rng.normal(size=(1000, inplanes)).astype(np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    return state


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("init_from")
    src, out = base / "resnet18.safetensors", base / "resnet18_w8.msgpack"
    st.save_file(_resnet18_state(WIDTH), str(src))
    torchvision_import.import_file(src, "resnet18", out, in_channels=1)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("init_from_data")


def _config(workdir, data_dir, *extra):
    return config_lib.load_config(
        "cross_training_quick", [*TINY, f"workdir={workdir}", f"data.data_dir={data_dir}", *extra]
    )


def test_training_starts_from_the_imported_weights(imported, data_dir, tmp_path):
    cfg = _config(tmp_path / "run", data_dir, f"model.init_from={imported}")
    cross_training.run(cfg)
    _, _, model, variables = cross_training.load_run(tmp_path / "run", "plain")
    weights = traverse_util.flatten_dict(torchvision_import.load(imported)["variables"])
    ours = traverse_util.flatten_dict({k: dict(v) for k, v in variables.items()})

    backbone = [p for p in ours if "cross_term" not in p and p[1] != "head"]
    assert sorted(backbone) == sorted(weights)  # every imported tensor, and only those, in the backbone
    # Parameters (learning rate 0: as they started); the BatchNorm statistics moved with the batches.
    for path in [p for p in backbone if p[0] == "params"]:
        np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(weights[path]), err_msg="/".join(path))

    # The cross terms (and head) as a fresh cross model of the same init key has them.
    fresh = cross_training.init_variables(
        model, state_lib.init_key(cfg.seed, cross_training.PHASES.index("plain")), cfg.data.size
    )
    fresh = traverse_util.flatten_dict({k: dict(v) for k, v in fresh.items()})
    cross = [p for p in ours if "cross_term" in p]
    assert cross and all(p not in weights for p in cross)
    for path in cross + [p for p in ours if p[1] == "head"]:
        np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(fresh[path]), err_msg="/".join(path))
    expand = [p for p in cross if "expand" in p and p[0] == "params"]
    assert expand and all(not np.any(np.asarray(ours[p])) for p in expand)  # zero: x_i starts at 0


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.num_filters=16", "does not fit the configured model"),  # another width
        ("model.name=resnet34", "holds resnet18 weights"),  # another depth
        ("model.stem=small", "does not fit the configured model"),  # another stem (its conv is 3×3)
    ],
)
def test_weights_that_do_not_fit_are_refused_before_training(imported, data_dir, tmp_path, override, words):
    cfg = _config(tmp_path / "run", data_dir, f"model.init_from={imported}", override)
    with pytest.raises(ConfigError, match="model.init_from") as e:
        cross_training.run(cfg)
    assert words in str(e.value)
    assert not (tmp_path / "run" / "plain").exists()  # nothing trained


def test_a_missing_weights_file_is_a_config_error(tmp_path):
    cfg = _config(tmp_path / "run", tmp_path / "data", f"model.init_from={tmp_path / 'nope.msgpack'}")
    with pytest.raises(ConfigError, match="weights import"):
        cross_training.validate(cfg)
