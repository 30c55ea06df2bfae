"""Experiment configs: Python files with ``get_config()`` and command-line overrides.

A config file returns an ``ml_collections.ConfigDict``. Overrides are strings
``key.sub=value`` (the CLI's ``--config.key.sub=value``); the value is parsed as a
Python literal where possible and converted to the type of the existing field. An
unknown key is an error naming the closest known keys, never a silent default.
"""

from __future__ import annotations

import ast
import difflib
import importlib.resources
import importlib.util
import pathlib
from collections.abc import Iterable

import ml_collections

# The experiment configs: ``experiments/configs`` in the source tree, installed as the
# package ``jaxthyroid.configs`` (setup.py), so a name resolves from any directory.
CONFIG_PACKAGE = "jaxthyroid.configs"
# A source checkout used without installing (``PYTHONPATH=.``): the same files.
SOURCE_CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs"


def config_dir() -> pathlib.Path:
    """The directory of the named configs: the installed package's, else the checkout's."""
    try:
        return pathlib.Path(str(importlib.resources.files(CONFIG_PACKAGE)))
    except ModuleNotFoundError:
        return SOURCE_CONFIG_DIR


class ConfigError(ValueError):
    """A config file that cannot be loaded or an override that does not apply."""


def resolve_config_path(name_or_path: str) -> pathlib.Path:
    """A config file path, or the name of one in ``experiments/configs``
    (``"cross_training_quick"``; installed as ``jaxthyroid.configs``)."""
    p = pathlib.Path(name_or_path)
    if p.suffix == ".py" and p.exists():
        return p
    directory = config_dir()
    cand = directory / f"{name_or_path}.py"
    if "/" not in name_or_path and not name_or_path.startswith("_") and cand.exists():
        return cand
    known = sorted(f.stem for f in directory.glob("*.py") if not f.stem.startswith("_"))
    raise ConfigError(
        f"config {name_or_path!r} not found: give a .py file with get_config() "
        f"or one of {', '.join(known) or '(none found)'}"
    )


def load_config(name_or_path: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``get_config()`` from a file and applies ``key=value`` overrides."""
    path = resolve_config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"_jaxthyroid_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file: say which
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config() function")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    return apply_overrides(config, overrides)


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys += _all_keys(v, prefix + k + ".")
    return keys


def _parse_value(text: str, current):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, (bool, int)):
            raise ConfigError(f"expected a boolean, got {text!r}")
        return bool(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, str) and not isinstance(value, str):
        return text
    if type(current) is not type(value) and not (
        isinstance(current, (list, tuple)) and isinstance(value, (list, tuple))
    ):
        raise ConfigError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Applies ``a.b=value`` strings; raises ConfigError on an unknown key or bad type."""
    config = ml_collections.ConfigDict(config)  # a copy
    for item in overrides:
        item = item.removeprefix("--").removeprefix("config.")
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.split(".")
        node = config
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                close = difflib.get_close_matches(key, _all_keys(config), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown config key {key!r}{hint}")
            if i < len(parts) - 1:
                node = node[part]
        try:
            value = _parse_value(text, node[parts[-1]])
        except ConfigError as e:
            raise ConfigError(f"config key {key!r}: {e}") from None
        with node.unlocked():
            node[parts[-1]] = value
    return config


def to_dict(config: ml_collections.ConfigDict) -> dict:
    return config.to_dict()
