"""Configs: load an experiment file (`path.py:preset`), and check keys and values before anything is computed."""
import importlib.util
import os
from typing import Sequence

import ml_collections

from diffusion_jax.data.mnist import NUM_CLASSES, SOURCES
from diffusion_jax.diffusion.samplers import SAMPLERS
from diffusion_jax.diffusion.schedules import LOSS_WEIGHTINGS, PREDICTIONS, SCHEDULES
from diffusion_jax.parallel import MODES


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


def _choice(config, key: str, choices: Sequence[str]) -> None:
    value = _get(config, key)
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r} is not one of {tuple(choices)}")


def _positive(config, key: str, minimum: float = 1) -> None:
    value = _get(config, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"config.{key}={value!r} must be a number >= {minimum}")


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def parse_labels(text: str, key: str = "sample.labels") -> list[int]:
    """'3,9' -> [3, 9]; '' -> all digits. A label outside 0-9 or a non-integer is a ConfigError naming it."""
    if not str(text).strip():
        return list(range(NUM_CLASSES))
    labels = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            label = int(part)
        except ValueError:
            raise ConfigError(f"config.{key}: {part!r} is not a digit label; use comma-separated integers 0-9") from None
        if not 0 <= label < NUM_CLASSES:
            raise ConfigError(f"config.{key}: label {label} is outside 0-{NUM_CLASSES - 1}")
        labels.append(label)
    return labels


def validate_diffusion_config(config: ml_collections.ConfigDict, positive: Sequence[str] = ()) -> None:
    """Checks the keys every diffusion task (digits, text to image) reads, plus the `positive` integer keys."""
    _choice(config, "data.source", SOURCES)
    _choice(config, "diffusion.schedule", SCHEDULES)
    _choice(config, "diffusion.prediction", PREDICTIONS)
    _choice(config, "diffusion.loss_weighting", LOSS_WEIGHTINGS)
    _choice(config, "sample.sampler", SAMPLERS)
    _choice(config, "train.parallel", MODES)
    _choice(config, "model.dtype", ("float32", "bfloat16"))
    for key in ("diffusion.num_steps", "train.num_steps", "train.batch_size", "train.log_every",
                "train.checkpoint_every", "train.max_to_keep", "sample.steps", "sample.batch_size",
                "model.num_res_blocks", "model.patch_size", "model.num_heads", "model.norm_groups",
                "eval.classifier_steps", *positive):
        _positive(config, key)
    for key in ("train.learning_rate", "train.grad_clip", "diffusion.snr_gamma"):
        _positive(config, key, minimum=1e-12)
    for key in ("train.warmup_steps", "train.weight_decay", "train.sample_every", "sample.eta", "sample.guidance"):
        _positive(config, key, minimum=0)
    for key in ("diffusion.cond_dropout", "model.dropout", "train.ema_decay"):
        if not 0.0 <= _get(config, key) <= 1.0:
            raise ConfigError(f"config.{key}={_get(config, key)!r} must be in [0, 1]")
    if not config.model.channels or any(int(ch) < 1 for ch in config.model.channels):
        raise ConfigError(f"config.model.channels={tuple(config.model.channels)!r} must be positive widths")
    if config.sample.steps > config.diffusion.num_steps:
        raise ConfigError(f"config.sample.steps={config.sample.steps} exceeds the training timesteps "
                          f"config.diffusion.num_steps={config.diffusion.num_steps}")
    if 32 % (config.model.patch_size * 2 ** (len(config.model.channels) - 1)):
        raise ConfigError(f"config.model.patch_size={config.model.patch_size} with {len(config.model.channels)} "
                          "levels does not divide the 32x32 images evenly")
    if config.sample.output and not str(config.sample.output).endswith(".npz"):
        raise ConfigError(f"config.sample.output={config.sample.output!r} must end in .npz")


def validate_digits_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the digits task reads; raises ConfigError naming the first bad key."""
    validate_diffusion_config(config, positive=("sample.num_per_class",))
    if config.eval.samples and not str(config.eval.samples).endswith(".npz"):
        raise ConfigError(f"config.eval.samples={config.eval.samples!r} must end in .npz")
    parse_labels(config.sample.labels)
