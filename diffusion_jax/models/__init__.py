"""The denoising backbones by `model.name`: 'unet' (models/unet.py), 'dit' (models/dit.py), 'mmdit' (models/mmdit.py).

Each follows the one conditioning contract of `models/conditioning.py` (labels or the text dict in, a prediction of
the input's shape out) and is built from its `model` config group by `build`, with explicit fields: the modules
never read a config. `validate` checks a group's keys for the image size it will see (ConfigError naming the key).
"""
from typing import Any, Optional

import jax.numpy as jnp

from diffusion_jax import config as config_lib
from diffusion_jax.config import ConfigError

MODELS = ("unet", "dit", "mmdit")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_TRANSFORMER_KEYS = ("patch_size", "width", "depth", "num_heads", "mlp_ratio", "dropout")


def name_of(model_config) -> str:
    """`model.name`; a group written before the registry (no name) is the U-Net."""
    return model_config.get("name", "unet")


def build(model_config, *, num_classes: Optional[int], out_channels: int, text: bool = False) -> Any:
    """The backbone of the `model` config group: a class-conditional one (`num_classes` labels plus the null class)
    or a text-conditional one (`text`), predicting `out_channels` channels."""
    m, name = model_config, name_of(model_config)
    dtype = DTYPES[m.dtype]
    if name == "unet":
        from diffusion_jax.models.unet import UNet
        return UNet(channels=tuple(m.channels), num_res_blocks=m.num_res_blocks,
                    attention_resolutions=tuple(m.attention_resolutions), num_classes=num_classes, text=text,
                    out_channels=out_channels, patch_size=m.patch_size, dropout=m.dropout, num_heads=m.num_heads,
                    norm_groups=m.norm_groups, dtype=dtype, attention=m.get("attention", "deferred"))
    if name == "dit":
        from diffusion_jax.models.dit import DiT as cls
    elif name == "mmdit":
        from diffusion_jax.models.mmdit import MMDiT as cls
    else:
        raise ConfigError(f"config.model.name={name!r} is not one of {MODELS}")
    return cls(**{k: m[k] for k in _TRANSFORMER_KEYS}, num_classes=num_classes, text=text,
               out_channels=out_channels, dtype=dtype)


def validate(config, image_size: int) -> None:
    """Checks `config.model` for a backbone that sees `image_size` x `image_size` inputs (pixels or latents)."""
    check = config_lib
    if "name" in config.model:
        check.check_choice(config, "model.name", MODELS)
    check.check_choice(config, "model.dtype", tuple(DTYPES))
    check.check_number(config, "model.dropout", minimum=0.0, maximum=1.0)
    for key in ("model.patch_size", "model.num_heads"):
        check.check_number(config, key)
    m = config.model
    if name_of(m) == "unet":
        _validate_unet(config, image_size)
        return
    for key in ("model.width", "model.depth"):
        check.check_number(config, key)
    check.check_number(config, "model.mlp_ratio", minimum=1e-12)
    if m.width % m.num_heads:
        raise ConfigError(f"config.model.width={m.width} is not divisible by config.model.num_heads={m.num_heads}")
    if image_size % m.patch_size:
        raise ConfigError(f"config.model.patch_size={m.patch_size} does not divide the {image_size}x{image_size} "
                          f"{'latents' if config.diffusion.get('space') == 'latent' else 'images'}")


def _validate_unet(config, image_size: int) -> None:
    from diffusion_jax.models.layers import ATTENTION_IMPLEMENTATIONS
    check, m = config_lib, config.model
    if "attention" in m:
        check.check_choice(config, "model.attention", ATTENTION_IMPLEMENTATIONS)
    for key in ("model.num_res_blocks", "model.norm_groups"):
        check.check_number(config, key)
    if not m.channels or any(int(ch) < 1 for ch in m.channels):
        raise ConfigError(f"config.model.channels={tuple(m.channels)!r} must be positive widths")
    levels = len(m.channels)
    if image_size % (m.patch_size * 2 ** (levels - 1)):
        raise ConfigError(f"config.model.patch_size={m.patch_size} with {levels} "
                          f"levels does not divide the {image_size}x{image_size} images evenly")
    sizes = [image_size // m.patch_size // 2 ** level for level in range(levels)]
    unknown = [r for r in m.attention_resolutions if r not in sizes]
    if unknown:  # a size no level has would silently drop the attention
        raise ConfigError(f"config.model.attention_resolutions={tuple(m.attention_resolutions)!r}: "
                          f"{unknown} is not the size of a U-Net level; the levels run at {sizes} (the "
                          f"{image_size}x{image_size} input / patch {m.patch_size} / 2 per level)")
