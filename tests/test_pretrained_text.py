"""A Stable Diffusion text encoder (transformers' CLIPTextModel, saved as safetensors) loaded into this project's
TextTower gives the same hidden states (issue 25, items 1 and 4, the text tower).

Tiny random models, every parameter random (LayerNorms included), in the two SD styles: SD 1.x (quick_gelu, the
legacy end-token rule, pads with the end token) and SD 2.x (exact gelu, pads with "!" = id 0). The reference also
runs in float64: its float32 error is the noise floor the 1e-5 tolerance sits above (printed).
"""
import json
import os

import numpy as np
import pytest

import torch  # the parity extra (README's test command): pip install -e ".[test,parity]"
import transformers

from diffusion_jax.pretrained import PretrainedError, text_encoder
from diffusion_jax.text.clip_bpe import ClipTokenizer
from tests.parity import randomize

TOL = 1e-5
STYLES = {"sd1": dict(hidden_act="quick_gelu", eos_token_id=2, pad="<|endoftext|>"),
          "sd2": dict(hidden_act="gelu", eos_token_id=None, pad="!")}
PROMPTS = ["", "a photo of an astronaut riding a horse", "A red 3, top-left!", "cat " * 90, "don't stop"]


def build(folder, tokenizer, style):
    s = STYLES[style]
    eos = s["eos_token_id"] or tokenizer.eos_id
    config = transformers.CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=s["hidden_act"], layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_id, eos_token_id=eos, pad_token_id=tokenizer.pad_id)
    torch.manual_seed(0)
    model = transformers.CLIPTextModel(config).eval()
    randomize(model)
    model.save_pretrained(os.path.join(folder, "text_encoder"))
    if style == "sd1":  # as the Hub's SD 1.x files are: the `text_model.` prefix (transformers 4) and a stale buffer
        from safetensors.numpy import load_file, save_file
        path = os.path.join(folder, "text_encoder", "model.safetensors")
        tensors = {"text_model." + k: v for k, v in load_file(path).items()}
        save_file({**tensors, "text_model.embeddings.position_ids": np.arange(77)[None]}, path)
    tokenizer.save(os.path.join(folder, "tokenizer"))
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"]}, f)
    return model


def reference(model, ids, skip: int, dtype):
    """transformers' outputs: all hidden states (clip skip as diffusers applies it) and the pooled end token."""
    model = model.to(dtype)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), output_hidden_states=True)
        hidden = out.last_hidden_state if skip == 0 else \
            model.final_layer_norm(out.hidden_states[-(skip + 1)])
    model.float()
    return hidden.double().numpy(), out.pooler_output.double().numpy()


@pytest.mark.parametrize("style", sorted(STYLES))
def test_hidden_states_equal_transformers(bpe_file, tmp_path, style):
    tokenizer = ClipTokenizer.from_bpe_file(bpe_file, num_merges=200, pad_token=STYLES[style]["pad"])
    model = build(str(tmp_path), tokenizer, style)
    tower, params = text_encoder.load(str(tmp_path))
    assert tower.activation == STYLES[style]["hidden_act"] and tower.causal and not tower.key_mask
    with pytest.warns(UserWarning, match="cut to 75"):
        ids = ClipTokenizer.load(str(tmp_path)).encode(PROMPTS)
    for skip in (0, 1):
        pooled, tokens = tower.apply(params, ids, np.ones_like(ids, bool), skip_layers=skip)
        want32, pooled32 = reference(model, ids, skip, torch.float32)
        want64, pooled64 = reference(model, ids, skip, torch.float64)
        floor = np.abs(want32 - want64).max()
        error = np.abs(np.asarray(tokens) - want64).max()
        print(f"{style} clip_skip={skip}: |ours - float64| {error:.2e}, |torch float32 - float64| {floor:.2e}")
        assert tokens.shape == (len(PROMPTS), 77, 32)
        assert error <= TOL and np.abs(np.asarray(tokens) - want32).max() <= TOL
        if skip == 0:
            assert np.abs(np.asarray(pooled) - pooled64).max() <= TOL


def test_bad_folders_are_named(bpe_file, tmp_path):
    from safetensors.numpy import load_file, save_file

    tokenizer = ClipTokenizer.from_bpe_file(bpe_file, num_merges=20)
    build(str(tmp_path), tokenizer, "sd1")
    path = os.path.join(tmp_path, "text_encoder")
    weights = os.path.join(path, "model.safetensors")
    good = load_file(weights)
    name = "text_model.encoder.layers.1.mlp.fc1.weight"  # sd1: the Hub's prefixed names

    def write(tensors):
        save_file(tensors, weights)

    write({k: v for k, v in good.items() if k != name})
    with pytest.raises(PretrainedError, match=r"text_encoder: 1 parameter\(s\) without a tensor, first "
                                              r"params/TextBlock_1/Dense_0/kernel"):
        text_encoder.load(str(tmp_path))
    write({**good, "text_model.text_projection.weight": good[name]})
    with pytest.raises(PretrainedError, match="unexpected tensor 'text_model.text_projection.weight'"):
        text_encoder.load(str(tmp_path))
    write({**good, name: good[name][:, :8]})
    with pytest.raises(PretrainedError, match=r"tensor 'text_model.encoder.layers.1.mlp.fc1.weight' has shape "
                                              r"\(128, 8\).*needs \(32, 128\)"):
        text_encoder.load(str(tmp_path))
    write(good)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**config, "hidden_act": "relu"}, f)
    with pytest.raises(PretrainedError, match=r"text_encoder/config.json: hidden_act='relu' is not supported"):
        text_encoder.load(str(tmp_path))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    os.remove(weights)
    with pytest.raises(PretrainedError, match="text_encoder: no weights"):
        text_encoder.load(str(tmp_path))
    with open(os.path.join(tmp_path, "model_index.json"), "w") as f:
        json.dump({"unet": ["diffusers", "UNet2DConditionModel"]}, f)
    with pytest.raises(PretrainedError, match="model_index.json: no 'text_encoder' component"):
        text_encoder.load(str(tmp_path))
    os.remove(os.path.join(tmp_path, "model_index.json"))
    with pytest.raises(PretrainedError, match="text_encoder/config.json: missing"):
        os.remove(os.path.join(path, "config.json"))
        text_encoder.load(str(tmp_path))
