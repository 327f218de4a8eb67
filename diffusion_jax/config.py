"""Configs: load an experiment file (`path.py:preset`), the checks every task's validator is built from, and the
config groups the experiment files share.

This module imports nothing of the package: each task's validator lives beside its trainer
(`trainers/digits.py`, `trainers/txt2img.py`, `trainers/clip.py`) and knows the choices its modules offer.
"""
import importlib.util
import math
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
    """ConfigError unless config.<key> is a finite number (not a bool) in [minimum, maximum]."""
    value = get(config, key)
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not minimum <= value <= maximum):
        bound = f">= {minimum}" if maximum == float("inf") else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"config.{key}={value!r} must be a number {bound}")


def check_data_source(config, sources: Sequence[str]) -> None:
    """config.data.source is one of `sources`, and config.data.tfds_data_dir (if the group has it) is set only for
    the 'tfds' source, where it is read (elsewhere it would be silently ignored)."""
    check_choice(config, "data.source", sources)
    data_dir = config.data.get("tfds_data_dir", "")
    if not isinstance(data_dir, str):
        raise ConfigError(f"config.data.tfds_data_dir={data_dir!r} must be a directory path (a string)")
    if data_dir and config.data.source != "tfds":
        raise ConfigError(f"config.data.tfds_data_dir={data_dir!r} is read by config.data.source='tfds' only, but "
                          f"the source is {config.data.source!r}")


def check_batch_divides(config, key: str, num_devices: int) -> None:
    """ConfigError unless the global batch config.<key> splits evenly over `num_devices` devices (every process's
    devices): checked before any work, not at the first step."""
    value = get(config, key)
    if value % num_devices:
        raise ConfigError(f"config.{key}={value} cannot be split evenly over the {num_devices} devices: choose a "
                          f"multiple of {num_devices}")


def nested(name: str, check, config, *args) -> None:
    """Runs `check(config.<name>, *args)`, naming its keys config.<name>.<key> in a ConfigError (nested configs such
    as text to image's `clip` and `autoencoder` groups)."""
    try:
        check(config[name], *args)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config.", f"config.{name}.", 1)) from None


def check_npz_path(config, key: str) -> None:
    """ConfigError unless config.<key> is empty or ends in .npz."""
    value = get(config, key)
    if value and not str(value).endswith(".npz"):
        raise ConfigError(f"config.{key}={value!r} must end in .npz")


# The groups the experiment files share: each builder holds the values they have in common (and the comments that
# explain them); an experiment passes only what is special about it, so its file reads as what it does differently.

def _group(layout: dict, overrides: dict) -> ml_collections.ConfigDict:
    """`layout` with `overrides` applied: a layout key keeps its place, a key the layout lacks is added at the end."""
    return ml_collections.ConfigDict({**layout, **overrides})


def unet_model(**overrides) -> ml_collections.ConfigDict:
    """The `model` group of the U-Net diffusion experiments (models/unet.py); `overrides` replace or add keys."""
    return _group(dict(
        name="unet",  # unet | dit | mmdit (models/__init__.py; the transformers' groups: transformer_model)
        channels=(64, 128),
        num_res_blocks=1,
        attention_resolutions=(4,),  # in U-Net feature-map pixels (after patchify); the middle always attends
        # Space-to-depth first: 4x4 patches, so the U-Net runs on an 8x8 grid of 16-channel pixels: on a CPU, wide
        # low-resolution convolutions run faster per FLOP than narrow high-resolution ones (docs/digits.md).
        patch_size=4,
        dropout=0.0,
        num_heads=4,
        norm_groups=8,
        dtype="float32",  # float32 | bfloat16 (compute dtype; params and schedule stay float32)
        # deferred (softmax normalised after the value product) | flax (Flax's MultiHeadDotProductAttention): the same
        # function and parameters, so either loads the other's checkpoints (speed: docs/training_speed.md)
        attention="deferred",
    ), overrides)


def transformer_model(name: str = "dit", **overrides) -> ml_collections.ConfigDict:
    """The `model` group of a diffusion transformer: 'dit' (models/dit.py: Peebles & Xie 2023) or 'mmdit'
    (models/mmdit.py: SD3's two-stream joint attention); `overrides` replace or add keys."""
    return _group(dict(
        name=name,
        patch_size=2,  # patchify: (H / p) * (W / p) tokens
        width=128,
        depth=4,
        num_heads=4,
        mlp_ratio=4.0,
        dropout=0.0,
        dtype="float32",
    ), overrides)


def diffusion_group(**overrides) -> ml_collections.ConfigDict:
    """The `diffusion` group (the process: noise schedule, prediction target, loss) of the diffusion experiments."""
    return _group(dict(
        # vp (DDPM's variance-preserving diffusion: schedule, prediction, loss_weighting below) | flow (rectified
        # flow, x_t = (1 - t) x0 + t eps, velocity target: time_sampling, logit_mean/std, shift); diffusion/process.py
        process="vp",
        space="pixel",  # text to image: pixel | latent (the U-Net denoises the latents of config.autoencoder)
        schedule="cosine",  # linear | cosine
        num_steps=1000,  # training timesteps T
        # v (Salimans & Ho 2022) learns the high-noise regime far faster than eps in a short CPU run (docs/digits.md,
        # docs/sweeps.md); eps stays one flag away.
        prediction="v",  # eps | v
        # probability the condition is dropped (a label replaced by the null class, a caption by the empty caption):
        # classifier-free guidance training
        cond_dropout=0.1,
        loss_weighting="none",  # none (L_simple) | min_snr (Min-SNR-gamma, Hang et al. 2023)
        snr_gamma=5.0,  # gamma of min_snr
        time_sampling="logit_normal",  # flow: logit_normal (SD3's default) | uniform
        logit_mean=0.0,  # flow: t = sigmoid(n), n ~ N(logit_mean, logit_std^2)
        logit_std=1.0,
        shift=1.0,  # flow: t -> shift t / (1 + (shift - 1) t) in training and sampling (SD3); 1 = none
    ), overrides)


def train_group(num_steps: int, ema_decay: float, **overrides) -> ml_collections.ConfigDict:
    """The `train` group (optimiser, then the training loop) of every task; `overrides` replace or add keys."""
    return _group(dict(
        num_steps=num_steps,
        batch_size=64,  # global batch, split over all local devices
        learning_rate=2e-3,
        warmup_steps=100,
        weight_decay=0.0,
        grad_clip=1.0,
        ema_decay=ema_decay,
        parallel="shard_map",  # shard_map | pmap
        log_every=50,
        checkpoint_every=500,
        max_to_keep=3,
        progress=True,
    ), overrides)


def sample_group(**overrides) -> ml_collections.ConfigDict:
    """The `sample` group of the image generators: the sampler, what to draw (the task's keys), where to write it."""
    return _group(dict(
        sampler="unipc",  # ddim | ddpm | dpmpp_2m (DPM-Solver++ 2M) | unipc (UniPC bh2); docs/sweeps.md
        steps=10,
        eta=0.0,
        guidance=3.0,
        # (lo, hi): guidance applies at timesteps t in [lo T, hi T] (0 clean, 1 pure noise), the conditional
        # prediction elsewhere (Kynkaenniemi et al. 2024); (0, 1) guides every step
        guidance_interval=(0.0, 1.0),
        output="",  # .npz path; "" = WORKDIR/samples/samples.npz (a PNG grid is written beside it)
        batch_size=500,
        seed=1,
        use_ema=True,
        checkpoint_step=0,  # with --mode=sample / eval: the kept checkpoint of this step (0: the newest good one)
    ), overrides)


BACKBONES, PROCESSES = ("unet", "dit", "mmdit"), ("vp", "flow")  # the preset variants; unet and vp: the defaults
VARIANTS = BACKBONES + PROCESSES


def split_preset(preset: str, presets: Sequence[str], path: str) -> tuple[str, list]:
    """'tiny+dit+flow' -> ('tiny', ['dit', 'flow']): an experiment's own preset (one of `presets`, '' for none)
    followed by `VARIANTS`, at most one backbone and one process; ValueError naming the file otherwise."""
    base, *variants = str(preset).split("+")
    if base in VARIANTS:
        base, variants = "", [base] + variants
    bad = [v for v in variants if v not in VARIANTS] + ([base] if base not in presets else [])
    if (bad or sum(v in BACKBONES for v in variants) > 1 or sum(v in PROCESSES for v in variants) > 1):
        raise ValueError(f"unknown preset {preset!r} for {path}: write PRESET[+VARIANT...] with PRESET one of "
                         f"{tuple(p for p in presets if p)} (or none) and at most one backbone {BACKBONES} and one "
                         f"process {PROCESSES}")
    return base, variants


def apply_variants(config: ml_collections.ConfigDict, variants: Sequence[str], *, patch_size: int,
                   tiny: bool = False) -> None:
    """The recipe's variants, in place: 'dit' / 'mmdit' replace the U-Net by that transformer on `patch_size`
    patches (tiny: width 16, one block); 'flow' trains by rectified flow and samples with Euler steps; 'unet' and
    'vp' name the defaults (so a sweep's points can name every combination)."""
    for variant in variants:
        if variant in ("dit", "mmdit"):
            config.model = transformer_model(variant, patch_size=patch_size,
                                             **(dict(width=16, depth=1, num_heads=2) if tiny else {}))
        elif variant == "flow":
            config.diffusion.process = "flow"
            config.sample.sampler = "euler"


def shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
    """The `tiny` preset's shrinking shared by the U-Net diffusion experiments (seconds: tests, CI, notebooks), in
    place; each experiment then shrinks its own keys."""
    if config.model.name == "unet":
        config.model.update(channels=(16, 32), norm_groups=4)
    config.diffusion.num_steps = 100
    config.train.update(num_steps=20, batch_size=16, learning_rate=3e-3, warmup_steps=5, log_every=5,
                        checkpoint_every=10, sample_every=10, progress=False)
    config.sample.update(steps=5, batch_size=20)
    config.eval.classifier_steps = 30
