"""A Stable Diffusion folder's `vae/` (diffusers' AutoencoderKL) as this project's `models.autoencoder.AutoencoderKL`
(with SD's middle attention and width-keeping upsamples), and its `scaling_factor`.

The table pairs diffusers' module paths with the Flax ones by walking both in the same order: per level the
encoder's `layers_per_block` residual blocks and a downsampler, the middle block (resnet, attention, resnet), and
the decoder's `layers_per_block + 1` blocks and an upsampler per level, deepest first.
"""
import os
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.pretrained.folder import (assign, attention_rows, component_dir, option, read_config,
                                             read_weights, renamer)

SCALING_FACTOR = 0.18215  # diffusers' AutoencoderKL default (SD 1.x / 2.x)


def module_of(config: dict, where: str, dtype: Any = jnp.float32) -> Tuple[AutoencoderKL, float]:
    """(AutoencoderKL, scaling_factor) an AutoencoderKL config describes; a PretrainedError names what it cannot."""
    channels = tuple(config.get("block_out_channels", (64,)))
    groups = option(config, "norm_num_groups", lambda g: isinstance(g, int) and all(c % g == 0 for c in channels),
                    where, 32)
    option(config, "_class_name", ("AutoencoderKL", None), where)
    option(config, "down_block_types", lambda t: all(b == "DownEncoderBlock2D" for b in t), where, ())
    option(config, "up_block_types", lambda t: all(b == "UpDecoderBlock2D" for b in t), where, ())
    option(config, "act_fn", ("silu",), where, "silu")
    option(config, "use_quant_conv", (True,), where, True)
    option(config, "use_post_quant_conv", (True,), where, True)
    option(config, "shift_factor", (None,), where)
    option(config, "latents_mean", (None,), where)
    in_channels = config.get("in_channels", 3)
    option(config, "out_channels", (in_channels,), where, 3)
    scaling = option(config, "scaling_factor", lambda v: isinstance(v, (int, float)) and v > 0, where,
                     SCALING_FACTOR)
    module = AutoencoderKL(channels=channels, latent_channels=config.get("latent_channels", 4),
                           num_res_blocks=config.get("layers_per_block", 1), norm_groups=groups,
                           out_channels=in_channels, dtype=dtype,
                           mid_attention=config.get("mid_block_add_attention", True), upsample_keeps_width=True)
    return module, float(scaling)


def _resnet(torch_path: str, flax_path: str) -> dict:
    names = {"norm1": "GroupNorm_0", "conv1": "Conv_0", "norm2": "GroupNorm_1", "conv2": "Conv_1",
             "conv_shortcut": "Conv_2"}
    return {f"{torch_path}.{t}": (f"{flax_path}/{f}", "norm" if t.startswith("norm") else "conv")
            for t, f in names.items()}


def _middle(side: str, first: int, attention: bool) -> dict:
    rows = {**_resnet(f"{side}.mid_block.resnets.0", f"{side}/ResBlock_{first}"),
            **_resnet(f"{side}.mid_block.resnets.1", f"{side}/ResBlock_{first + 1}")}
    if attention:
        path = f"{side}/AttentionBlock_0"
        rows[f"{side}.mid_block.attentions.0.group_norm"] = (f"{path}/GroupNorm_0", "norm")
        for names in (("to_q", "to_k", "to_v", "to_out.0"), ("query", "key", "value", "proj_attn")):  # new, legacy
            rows.update(attention_rows(f"{side}.mid_block.attentions.0", f"{path}/MultiHeadDotProductAttention_0", 1,
                                       names))
    return rows


def table(module: AutoencoderKL) -> dict:
    """{diffusers module path: (Flax module path, kind)} for this autoencoder (renamer's table)."""
    levels, n = len(module.channels), module.num_res_blocks
    rows = {"encoder.conv_in": ("encoder/Conv_0", "conv"), "encoder.conv_norm_out": ("encoder/GroupNorm_0", "norm"),
            "encoder.conv_out": ("encoder/Conv_1", "conv"), "quant_conv": ("encoder/quant_conv", "conv"),
            "post_quant_conv": ("decoder/post_quant_conv", "conv"), "decoder.conv_in": ("decoder/Conv_0", "conv"),
            "decoder.conv_norm_out": ("decoder/GroupNorm_0", "norm"), "decoder.conv_out": ("decoder/Conv_1", "conv")}
    k = 0
    for level in range(levels):
        for j in range(n):
            rows.update(_resnet(f"encoder.down_blocks.{level}.resnets.{j}", f"encoder/ResBlock_{k}"))
            k += 1
        if level < levels - 1:
            rows[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = (f"encoder/Downsample_{level}/Conv_0", "conv")
    rows.update(_middle("encoder", k, module.mid_attention))
    rows.update(_middle("decoder", 0, module.mid_attention))
    k = 2
    for up in range(levels):  # deepest level first
        for j in range(n + 1):
            rows.update(_resnet(f"decoder.up_blocks.{up}.resnets.{j}", f"decoder/ResBlock_{k}"))
            k += 1
        if up < levels - 1:
            rows[f"decoder.up_blocks.{up}.upsamplers.0.conv"] = (f"decoder/Upsample_{up}/Conv_0", "conv")
    return rows


def load(folder: str, dtype: Any = jnp.float32) -> Tuple[AutoencoderKL, Any, float]:
    """(autoencoder, params, scaling_factor) from a folder's `vae/` (or an autoencoder folder itself)."""
    path = folder if os.path.isfile(os.path.join(folder, "config.json")) else component_dir(folder, "vae")
    module, scaling = module_of(read_config(path), os.path.join(path, "config.json"), dtype)
    image = np.zeros((1, 8 * module.factor, 8 * module.factor, module.out_channels), np.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), image)
    return module, assign(abstract, read_weights(path), renamer(table(module)), where=path), scaling
