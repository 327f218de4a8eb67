"""Configs: load an experiment file (`path.py:preset`), the checks every task's validator is built from, and the
config groups the experiment files share.

This module imports nothing of the package: each task's validator lives beside its trainer
(`trainers/digits.py`, `trainers/txt2img.py`, `trainers/clip.py`) and knows the choices its modules offer.
"""
import importlib.util
import os
from typing import Sequence

import ml_collections


class ConfigError(ValueError):
    """A config value is invalid; the message names the key."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `experiments/NAME.py[:preset]` as `--config=` does, for notebooks, sweeps and tests."""
    path, _, preset = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def get(config, key: str):
    """`config.a.b` for key 'a.b'; a missing key is a ConfigError naming it."""
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(f"config.{key} is missing (no {part!r})") from None
    return node


def check_choice(config, key: str, choices: Sequence[str]) -> None:
    """ConfigError unless config.<key> is one of `choices`."""
    value = get(config, key)
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r} is not one of {tuple(choices)}")


def check_number(config, key: str, minimum: float = 1, maximum: float = float("inf")) -> None:
    """ConfigError unless config.<key> is a number (not a bool) in [minimum, maximum]."""
    value = get(config, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not minimum <= value <= maximum:
        bound = f">= {minimum}" if maximum == float("inf") else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"config.{key}={value!r} must be a number {bound}")


def check_npz_path(config, key: str) -> None:
    """ConfigError unless config.<key> is empty or ends in .npz."""
    value = get(config, key)
    if value and not str(value).endswith(".npz"):
        raise ConfigError(f"config.{key}={value!r} must end in .npz")


