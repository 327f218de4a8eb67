"""A Stable Diffusion folder's `unet/` (diffusers' UNet2DConditionModel, SD 1.x / 2.x) as this project's `UNet`.

The config becomes UNet options (attention per level from the block types, SD's SpatialTransformer, heads per
level, GroupNorm groups and epsilon, PyTorch's downsample padding, no pooled text and no token mask); anything a
config asks for that the UNet does not do (SDXL's `addition_embed_type`, class embeddings, deeper transformers, ...)
is a named error. The table pairs diffusers' module paths with the Flax ones by walking the U-Net in its own
creation order (residual blocks, transformers, down/upsamplers each counted separately).
"""
import os
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.unet import UNet
from diffusion_jax.pretrained.folder import (PretrainedError, assign, component_dir, option, read_config,
                                             read_weights, renamer)

DOWN, UP = ("CrossAttnDownBlock2D", "DownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")
# Keys that must hold the value SD 1.x / 2.x use (absent = diffusers' default, which is that value).
FIXED = {"act_fn": ("silu",), "center_input_sample": (False,), "time_embedding_type": ("positional",),
         "class_embed_type": (None,), "addition_embed_type": (None,), "encoder_hid_dim": (None,),
         "time_cond_proj_dim": (None,), "only_cross_attention": (False,), "dual_cross_attention": (False,),
         "resnet_time_scale_shift": ("default",), "conv_in_kernel": (3,), "conv_out_kernel": (3,),
         "mid_block_type": ("UNetMidBlock2DCrossAttn",), "attention_type": ("default",), "downsample_padding": (1,),
         "mid_block_scale_factor": (1, 1.0), "flip_sin_to_cos": (True,), "freq_shift": (0,),
         "transformer_layers_per_block": (1, None), "num_class_embeds": (None,), "timestep_post_act": (None,),
         "time_embedding_act_fn": (None,), "projection_class_embeddings_input_dim": (None,),
         "cross_attention_norm": (None,), "reverse_transformer_layers_per_block": (None,)}


def module_of(config: dict, where: str, dtype: Any = jnp.float32) -> Tuple[UNet, int]:
    """(UNet, input channels) a UNet2DConditionModel config describes; a PretrainedError names an option it
    cannot express."""
    for key, values in FIXED.items():
        option(config, key, values, where, values[0])
    channels = tuple(option(config, "block_out_channels", lambda c: isinstance(c, (list, tuple)) and len(c) > 0,
                            where, (320, 640, 1280, 1280)))
    levels = len(channels)
    down = option(config, "down_block_types", lambda t: len(t) == levels and all(b in DOWN for b in t), where,
                  ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",))
    attention = tuple(b == DOWN[0] for b in down)
    option(config, "up_block_types", lambda t: list(t) == [UP[0] if a else UP[1] for a in reversed(attention)],
           where, tuple(UP[0] if a else UP[1] for a in reversed(attention)))
    groups = option(config, "norm_num_groups", lambda g: isinstance(g, int) and all(c % g == 0 for c in channels),
                    where, 32)
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)  # see diffusers' note: the
    heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * levels  # "head dim" is the head count
    if len(heads) != levels or any(c % h for c, h in zip(channels, heads)):
        raise PretrainedError(f"{where}: attention_head_dim / num_attention_heads={heads!r} must give one head "
                              f"count per level that divides its width {channels}")
    option(config, "layers_per_block", lambda n: isinstance(n, int) and n > 0, where, 2)
    in_channels = config.get("in_channels", 4)
    return UNet(channels=channels, num_res_blocks=config.get("layers_per_block", 2), num_classes=None, text=True,
                out_channels=config.get("out_channels", 4), num_heads=heads, norm_groups=groups, dtype=dtype,
                attention_levels=attention, attention_block="transformer", norm_eps=config.get("norm_eps", 1e-5),
                text_pooled=False, text_mask=False, symmetric_downsample=True, diffusers_time=True), in_channels


def _resnet(torch_path: str, flax_path: str) -> dict:
    names = {"norm1": "GroupNorm_0", "conv1": "Conv_0", "time_emb_proj": "Dense_0", "norm2": "GroupNorm_1",
             "conv2": "Conv_1", "conv_shortcut": "Conv_2"}
    kinds = {"norm1": "norm", "norm2": "norm", "time_emb_proj": "dense"}
    return {f"{torch_path}.{t}": (f"{flax_path}/{f}", kinds.get(t, "conv")) for t, f in names.items()}


def _transformer(torch_path: str, flax_path: str) -> dict:
    block = f"{torch_path}.transformer_blocks.0"
    rows = {f"{torch_path}.norm": (f"{flax_path}/norm", "norm"),
            f"{torch_path}.proj_in": (f"{flax_path}/proj_in", "dense"),
            f"{torch_path}.proj_out": (f"{flax_path}/proj_out", "dense"),
            f"{block}.ff.net.0.proj": (f"{flax_path}/ff_proj", "dense"),
            f"{block}.ff.net.2": (f"{flax_path}/ff_out", "dense")}
    for i in (1, 2, 3):
        rows[f"{block}.norm{i}"] = (f"{flax_path}/norm{i}", "norm")
    for attn in ("attn1", "attn2"):
        for part, name in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out.0", "to_out_0")):
            rows[f"{block}.{attn}.{part}"] = (f"{flax_path}/{attn}/{name}", "dense")
    return rows


def table(unet: UNet) -> dict:
    """{diffusers module path: (Flax module path, kind)} for this U-Net (renamer's table), in creation order."""
    levels, n = len(unet.channels), unet.num_res_blocks
    rows = {"conv_in": ("Conv_0", "conv"), "time_embedding.linear_1": ("Dense_0", "dense"),
            "time_embedding.linear_2": ("Dense_1", "dense"), "conv_norm_out": ("GroupNorm_0", "norm"),
            "conv_out": ("Conv_1", "conv")}
    count = {"ResBlock": 0, "SpatialTransformer": 0}

    def add(kind, torch_path):
        make = _resnet if kind == "ResBlock" else _transformer
        rows.update(make(torch_path, f"{kind}_{count[kind]}"))
        count[kind] += 1

    for level in range(levels):
        for j in range(n):
            add("ResBlock", f"down_blocks.{level}.resnets.{j}")
            if unet.attention_levels[level]:
                add("SpatialTransformer", f"down_blocks.{level}.attentions.{j}")
        if level < levels - 1:
            rows[f"down_blocks.{level}.downsamplers.0.conv"] = (f"Downsample_{level}/Conv_0", "conv")
    add("ResBlock", "mid_block.resnets.0")
    add("SpatialTransformer", "mid_block.attentions.0")
    add("ResBlock", "mid_block.resnets.1")
    for up in range(levels):
        level = levels - 1 - up
        for j in range(n + 1):
            add("ResBlock", f"up_blocks.{up}.resnets.{j}")
            if unet.attention_levels[level]:
                add("SpatialTransformer", f"up_blocks.{up}.attentions.{j}")
        if level > 0:
            rows[f"up_blocks.{up}.upsamplers.0.conv"] = (f"Upsample_{up}/Conv_0", "conv")
    return rows


def load(folder: str, dtype: Any = jnp.float32) -> Tuple[UNet, Any, int]:
    """(unet, params, in_channels) from a folder's `unet/` (or a U-Net folder itself)."""
    path = folder if os.path.isfile(os.path.join(folder, "config.json")) else component_dir(folder, "unet")
    config = read_config(path)
    where = os.path.join(path, "config.json")
    unet, in_channels = module_of(config, where, dtype)
    width = option(config, "cross_attention_dim", lambda d: isinstance(d, int) and d > 0, where, 1280)
    size = 2 ** (len(unet.channels) - 1)
    x = np.zeros((1, size, size, in_channels), np.float32)
    cond = {"tokens": np.zeros((1, 1, width), np.float32), "mask": np.ones((1, 1), bool),
            "pooled": np.zeros((1, width), np.float32)}
    abstract = jax.eval_shape(unet.init, jax.random.key(0), x, np.zeros((1,), np.int32), cond)
    return unet, assign(abstract, read_weights(path), renamer(table(unet)), where=path), in_channels
