"""A Stable Diffusion U-Net (diffusers' UNet2DConditionModel, saved as safetensors) loaded into this project's UNet
predicts what diffusers predicts (issue 25, items 1 and 4, the U-Net).

Tiny random models, every parameter random, in the two SD styles: SD 1.x (8-style: one head count for all levels,
1x1-conv projections, epsilon) and SD 2.x (per-level heads, linear projections); both with 3 levels, attention at
the first two, as SD's last level has none. Tolerance 1e-5 max abs; the reference's float64 floor is printed.
"""
import functools
import json
import os
import re

import diffusers
import jax
import numpy as np
import pytest
import torch

from diffusion_jax.models import layers
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

    @functools.cache  # the Winograd check below compares with the same two reference runs
    def run(dtype):
        with torch.no_grad():
            out = model.to(dtype)(torch.tensor(x.transpose(0, 3, 1, 2), dtype=dtype), torch.tensor(t),
                                  encoder_hidden_states=torch.tensor(context, dtype=dtype)).sample
        return out.permute(0, 2, 3, 1).numpy()

    error, floor = floors(run, ours)
    print(f"{style}: |ours - float64| {error:.2e}, |diffusers float32 - float64| {floor:.2e}")
    assert ours.shape == x.shape and error <= TOL
    # The pipeline's CPU path: every 3x3 convolution here (maps 16, 8, 4) by Winograd, kernels transformed once.
    fast = unet.clone(winograd=16)
    prepared = {**params, **jax.jit(lambda p: layers.winograd_variables(fast, p, x, t, cond))(params)}
    assert len(jax.tree.leaves(prepared["winograd"])) == 2 + 2 * 2 * 3 + 3 * 2 * 3 + 2 * 2 + 2  # in/out, res, up
    winograd, _ = floors(run, jax.jit(fast.apply)(prepared, x, t, cond))
    print(f"{style} by Winograd F(2x2, 3x3): |ours - float64| {winograd:.2e}")
    assert winograd <= TOL


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


def test_winograd_convolution_equals_the_direct_one():
    """F(2x2, 3x3) is the same convolution as XLA's (odd sizes padded and cropped back); as `nn.Conv`'s convolution
    it keeps the parameters and applies only where it should (3x3, stride 1, SAME, maps at most `winograd` a side)."""
    import flax.linen as nn
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 5)) / np.sqrt(27), jnp.float32)
    for h, w in ((1, 1), (2, 2), (3, 5), (7, 7), (6, 4)):
        x = jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32)
        direct = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(layers.winograd_conv(x, layers.winograd_kernel(kernel)), direct, atol=2e-6)

    x = jnp.asarray(rng.normal(size=(1, 8, 8, 3)), jnp.float32)
    plain = nn.Conv(5, (3, 3))
    params = plain.init(jax.random.key(0), x)
    for module, size, used in ((layers.conv(5, winograd=4), 8, False), (layers.conv(5, winograd=8), 8, True),
                               (nn.Conv(5, (3, 3), strides=2, conv_general_dilated_cls=lambda: layers.WinogradConv(8)),
                                8, False)):
        assert jax.tree.structure(module.init(jax.random.key(0), x)) == jax.tree.structure(params)
        out, state = module.apply(params, x[:, :size, :size], mutable=["winograd"])
        assert bool(state) == used
        np.testing.assert_allclose(out, plain.clone(strides=module.strides).apply(params, x), atol=2e-6)
