"""A Stable Diffusion U-Net (diffusers' UNet2DConditionModel, saved as safetensors) loaded into this project's UNet
predicts what diffusers predicts (issue 25, items 1 and 4, the U-Net).

Tiny random models, every parameter random, in the two SD styles: SD 1.x (8-style: one head count for all levels,
1x1-conv projections, epsilon) and SD 2.x (per-level heads, linear projections); both with 3 levels, attention at
the first two, as SD's last level has none. Tolerance 1e-5 max abs; the reference's float64 floor is printed.
"""
import json
import os
import re

import diffusers
import jax
import numpy as np
import pytest
import torch

from diffusion_jax.pretrained import PretrainedError, unet as unet_loader
from tests.parity import floors, save_random

TOL = 1e-5
STYLES = {"sd1": dict(attention_head_dim=2, use_linear_projection=False),
          "sd2": dict(attention_head_dim=(2, 4, 4), use_linear_projection=True)}


def build(folder: str, style: str, **overrides):
    config = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32),
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=2,
                  norm_num_groups=8, cross_attention_dim=24, **STYLES[style])
    config.update(overrides)
    return save_random(diffusers.UNet2DConditionModel(**config), folder, "unet")


@pytest.mark.parametrize("style", sorted(STYLES))
def test_prediction_equals_diffusers(tmp_path, style):
    model = build(str(tmp_path), style)
    unet, params, in_channels = unet_loader.load(str(tmp_path))
    assert in_channels == 4 and unet.attention_levels == (True, True, False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 4)).astype(np.float32)
    t = np.array([999, 7], np.int32)
    context = rng.normal(size=(2, 77, 24)).astype(np.float32)
    cond = {"tokens": context, "mask": np.ones((2, 77), bool), "pooled": np.zeros((2, 24), np.float32)}
    ours = jax.jit(unet.apply)(params, x, t, cond)

    def run(dtype):
        with torch.no_grad():
            out = model.to(dtype)(torch.tensor(x.transpose(0, 3, 1, 2), dtype=dtype), torch.tensor(t),
                                  encoder_hidden_states=torch.tensor(context, dtype=dtype)).sample
        return out.permute(0, 2, 3, 1).numpy()

    error, floor = floors(run, ours)
    print(f"{style}: |ours - float64| {error:.2e}, |diffusers float32 - float64| {floor:.2e}")
    assert ours.shape == x.shape and error <= TOL


def test_unsupported_options_are_named(tmp_path):
    build(str(tmp_path), "sd1")
    path = os.path.join(tmp_path, "unet", "config.json")
    with open(path) as f:
        config = json.load(f)
    for key, value in (("addition_embed_type", "text_time"), ("transformer_layers_per_block", 2),
                       ("class_embed_type", "timestep"), ("up_block_types", ["UpBlock2D"] * 3)):
        with open(path, "w") as f:
            json.dump({**config, key: value}, f)
        with pytest.raises(PretrainedError, match=re.escape(f"unet/config.json: {key}={value!r} is not supported")):
            unet_loader.load(str(tmp_path))


def test_chunked_attention_equals_the_whole():
    """SD's first level attends over 4,096 (SD 1.5) or 9,216 (SD 2.x) tokens: computed one (batch, head) pair and a
    block of queries at a time (the last block padded) it is the same function."""
    import jax
    import jax.numpy as jnp

    from diffusion_jax.models.layers import chunked_attention

    q, k, v = (jax.random.normal(jax.random.key(i), (2, n, 3, 8)) for i, n in enumerate((70, 50, 50)))
    whole = chunked_attention(q, k, v, chunk=4096)
    for chunk in (16, 35, 69):
        np.testing.assert_allclose(chunked_attention(q, k, v, chunk), whole, rtol=1e-5, atol=1e-6)
    reference = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8), axis=-1)
    np.testing.assert_allclose(whole, jnp.einsum("bhqk,bkhd->bqhd", reference, v), rtol=1e-5, atol=1e-6)
