"""A Stable Diffusion autoencoder (diffusers' AutoencoderKL, saved as safetensors) loaded into this project's
AutoencoderKL encodes and decodes as diffusers does (issue 25, items 1 and 4, the autoencoder).

A tiny random model, every parameter random, with SD's middle attention; both the current attention names and the
legacy ones (query/key/value/proj_attn) that older SD files use. Tolerance 1e-5 max abs (the issue's per-module
target); the reference's float32-vs-float64 difference is printed beside ours.
"""
import json
import os

import diffusers
import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from diffusion_jax.pretrained import PretrainedError, autoencoder
from tests.parity import floors, save_random

TOL = 1e-5


def build(folder: str, **overrides):
    config = dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, latent_channels=4,
                  scaling_factor=0.3)
    config.update(overrides)
    return save_random(diffusers.AutoencoderKL(**config), folder, "vae")


@pytest.mark.parametrize("names", ["current", "legacy"])
def test_encode_decode_equal_diffusers(tmp_path, names):
    model = build(str(tmp_path))
    if names == "legacy":  # SD 1.x's original files name the middle attention query/key/value/proj_attn
        path = os.path.join(tmp_path, "vae", "diffusion_pytorch_model.safetensors")
        legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        tensors = {}
        for k, v in load_file(path).items():
            for new, old in legacy.items():
                k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
            tensors[k] = v
        save_file(tensors, path)
    module, params, scaling = autoencoder.load(str(tmp_path))
    assert scaling == 0.3 and module.mid_attention and module.upsample_keeps_width
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    mean, logvar = jax.jit(lambda p, x: module.apply(p, x, method=module.encode))(params, images)

    def encode(dtype):
        with torch.no_grad():
            dist = model.to(dtype).encode(torch.tensor(images.transpose(0, 3, 1, 2), dtype=dtype)).latent_dist
        return torch.cat([dist.mean, dist.logvar], 1).permute(0, 2, 3, 1).numpy()

    error, floor = floors(encode, np.concatenate([mean, logvar], -1))
    print(f"encode: |ours - float64| {error:.2e}, |diffusers float32 - float64| {floor:.2e}")
    assert error <= TOL
    z = rng.normal(size=(2, 16, 16, 4)).astype(np.float32)
    decoded = jax.jit(lambda p, z: module.apply(p, z, method=module.decode))(params, z)

    def decode(dtype):
        with torch.no_grad():
            return model.to(dtype).decode(torch.tensor(z.transpose(0, 3, 1, 2), dtype=dtype)).sample \
                .permute(0, 2, 3, 1).numpy()

    error, floor = floors(decode, decoded)
    print(f"decode: |ours - float64| {error:.2e}, |diffusers float32 - float64| {floor:.2e}")
    assert decoded.shape == (2, 32, 32, 3) and error <= TOL


def test_unsupported_options_and_bad_folders_are_named(tmp_path):
    build(str(tmp_path))
    config_path = os.path.join(tmp_path, "vae", "config.json")
    with open(config_path) as f:
        config = json.load(f)
    for key, value in (("shift_factor", 0.1159), ("act_fn", "gelu"), ("use_quant_conv", False),
                       ("norm_num_groups", 5)):
        with open(config_path, "w") as f:
            json.dump({**config, key: value}, f)
        with pytest.raises(PretrainedError, match=f"vae/config.json: {key}={value!r} is not supported"):
            autoencoder.load(str(tmp_path))
    with open(config_path, "w") as f:
        json.dump(config, f)
    path = os.path.join(tmp_path, "vae", "diffusion_pytorch_model.safetensors")
    tensors = load_file(path)
    save_file({k: v for k, v in tensors.items() if "mid_block.attentions" not in k}, path)
    with pytest.raises(PretrainedError, match="parameter.s. without a tensor, first params/decoder/AttentionBlock_0"):
        autoencoder.load(str(tmp_path))
