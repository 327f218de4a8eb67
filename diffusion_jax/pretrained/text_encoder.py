"""A Stable Diffusion folder's `text_encoder/` (transformers' CLIPTextModel) as this project's `TextTower`.

The config's fields become TextTower options (causal attention over all 77 positions, the folder's activation,
LayerNorm epsilon and end-token rule, pooled at the end token) and the tensors its parameters:

  text_model.embeddings.token_embedding / position_embedding   -> Embed_0/embedding, pos_embedding
  text_model.encoder.layers.i.layer_norm1 / layer_norm2         -> TextBlock_i/LayerNorm_0 / LayerNorm_1
  text_model.encoder.layers.i.self_attn.{q,k,v,out}_proj        -> TextBlock_i/MultiHeadDotProductAttention_0/
                                                                   {query,key,value,out} (heads split out)
  text_model.encoder.layers.i.mlp.fc1 / fc2                     -> TextBlock_i/Dense_0 / Dense_1
  text_model.final_layer_norm                                   -> LayerNorm_0

(the `text_model.` prefix is optional: transformers 5 saves without it; the `position_ids` buffer is dropped).
"""
import os
import re
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.clip import TextTower
from diffusion_jax.pretrained.folder import (assign, component_dir, heads_in, heads_out, linear,
                                             option, read_config, read_weights, same)

DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                eos_token_id=49407)  # CLIPTextConfig's defaults, for keys a config.json leaves out
LEGACY_EOS = 2  # configs from before transformers PR 24773 (SD 1.x): the end token is the row of the largest id


def tower_of(config: dict, where: str, dtype: Any = jnp.float32) -> TextTower:
    """The TextTower a CLIPTextModel config describes; a PretrainedError names an option it cannot express."""
    c = {**DEFAULTS, **config}
    option(c, "architectures", lambda a: a is None or list(a) == ["CLIPTextModel"], where)
    option(c, "hidden_act", ("quick_gelu", "gelu"), where)
    width, heads = c["hidden_size"], c["num_attention_heads"]
    option(c, "num_attention_heads", lambda h: isinstance(h, int) and h > 0 and width % h == 0, where)
    option(c, "intermediate_size", lambda n: isinstance(n, int) and n % width == 0, where)
    eos = c["eos_token_id"]
    return TextTower(vocab_size=c["vocab_size"], max_length=c["max_position_embeddings"], width=width,
                     num_layers=c["num_hidden_layers"], num_heads=heads, mlp_ratio=c["intermediate_size"] // width,
                     activation=c["hidden_act"], norm_eps=c["layer_norm_eps"], causal=True, key_mask=False,
                     pool="eos", eos_id=None if eos == LEGACY_EOS else eos, dtype=dtype)


def _rename(num_heads: int):
    block = {"layer_norm1": "LayerNorm_0", "layer_norm2": "LayerNorm_1", "mlp.fc1": "Dense_0", "mlp.fc2": "Dense_1",
             "self_attn.q_proj": "MultiHeadDotProductAttention_0/query",
             "self_attn.k_proj": "MultiHeadDotProductAttention_0/key",
             "self_attn.v_proj": "MultiHeadDotProductAttention_0/value",
             "self_attn.out_proj": "MultiHeadDotProductAttention_0/out"}

    def rename(name: str):
        short = name[len("text_model."):] if name.startswith("text_model.") else name
        if short == "embeddings.position_ids":
            return None
        if short == "embeddings.token_embedding.weight":
            return "params/Embed_0/embedding", same
        if short == "embeddings.position_embedding.weight":
            return "params/pos_embedding", same
        if short in ("final_layer_norm.weight", "final_layer_norm.bias"):
            return "params/LayerNorm_0/" + ("scale" if short.endswith("weight") else "bias"), same
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", short)
        if match and match[2] in block:
            layer, part, kind = match[1], block[match[2]], match[3]
            if part.startswith("LayerNorm"):
                return f"params/TextBlock_{layer}/{part}/{'scale' if kind == 'weight' else 'bias'}", same
            if part.endswith("/out"):
                return f"params/TextBlock_{layer}/{part}/{'kernel' if kind == 'weight' else 'bias'}", \
                    heads_out(num_heads) if kind == "weight" else same
            if part.startswith("MultiHead"):
                return f"params/TextBlock_{layer}/{part}/{'kernel' if kind == 'weight' else 'bias'}", \
                    heads_in(num_heads)
            return f"params/TextBlock_{layer}/{part}/{'kernel' if kind == 'weight' else 'bias'}", \
                linear if kind == "weight" else same
        return "", same  # unexpected
    return rename


def load(folder: str, dtype: Any = jnp.float32) -> Tuple[TextTower, Any]:
    """(tower, params) from a folder's `text_encoder/` (or a text encoder folder itself); parameters float32."""
    path = folder if os.path.isfile(os.path.join(folder, "config.json")) else component_dir(folder, "text_encoder")
    where = os.path.join(path, "config.json")
    tower = tower_of(read_config(path), where, dtype)
    ids = np.zeros((1, tower.max_length), np.int32)
    abstract = jax.eval_shape(tower.init, jax.random.key(0), ids, ids == 0)
    return tower, assign(abstract, read_weights(path), _rename(tower.num_heads), where=path)
