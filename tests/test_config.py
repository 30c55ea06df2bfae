import pathlib

import ml_collections
import pytest

from jaxthyroid import config as config_lib
from jaxthyroid.config import ConfigError, apply_overrides, load_config


def _config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.lr = 0.1
    c.name = "resnet18"
    c.flag = False
    c.sizes = (1, 2)
    c.opt = ml_collections.ConfigDict({"momentum": 0.9, "nesterov": True})
    return c


def test_overrides_are_typed():
    c = apply_overrides(
        _config(), ["seed=3", "lr=1", "name=vgg16_bn", "flag=true", "sizes=[3,4]", "--config.opt.momentum=0.5"]
    )
    assert (c.seed, c.lr, c.name, c.flag, c.sizes, c.opt.momentum) == (3, 1.0, "vgg16_bn", True, (3, 4), 0.5)
    assert isinstance(c.lr, float)
    assert _config().seed == 0  # the original is untouched


def test_unknown_key_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match="unknown config key 'opt.momentun'.*opt.momentum"):
        apply_overrides(_config(), ["opt.momentun=0.1"])
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(_config(), ["seed=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(_config(), ["seed"])


def test_load_config_file(tmp_path):
    f = tmp_path / "exp.py"
    f.write_text("import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1})\n")
    assert load_config(str(f), ["a=2"]).a == 2
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing"))


def test_names_resolve_through_the_configs_package_from_any_directory(tmp_path, monkeypatch):
    import jaxthyroid.configs

    monkeypatch.chdir(tmp_path)  # no experiments/ here
    path = config_lib.resolve_config_path("cross_training_quick")
    assert path.parent == config_lib.config_dir() == pathlib.Path(jaxthyroid.configs.__file__).parent
    assert config_lib.load_config("cross_training_quick").model.name
    with pytest.raises(config_lib.ConfigError, match="cross_training_quick"):  # lists the known names
        config_lib.resolve_config_path("no_such_config")
    # a path to a file elsewhere still works
    (tmp_path / "mine.py").write_text(
        "import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1})\n"
    )
    assert config_lib.load_config(str(tmp_path / "mine.py"), ["a=2"]).a == 2
