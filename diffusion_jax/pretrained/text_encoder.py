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
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.clip import TextTower
from diffusion_jax.pretrained.folder import (assign, attention_rows, component_dir, option, read_config,
                                             read_weights, renamer)

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


def table(tower: TextTower) -> dict:
    """{CLIPTextModel module path: (TextTower module path, kind)} (renamer's table)."""
    rows = {"embeddings.token_embedding": ("Embed_0", "embed"), "final_layer_norm": ("LayerNorm_0", "norm")}
    for i in range(tower.num_layers):
        torch_path, flax_path = f"encoder.layers.{i}", f"TextBlock_{i}"
        rows.update({f"{torch_path}.layer_norm1": (f"{flax_path}/LayerNorm_0", "norm"),
                     f"{torch_path}.layer_norm2": (f"{flax_path}/LayerNorm_1", "norm"),
                     f"{torch_path}.mlp.fc1": (f"{flax_path}/Dense_0", "dense"),
                     f"{torch_path}.mlp.fc2": (f"{flax_path}/Dense_1", "dense"),
                     **attention_rows(f"{torch_path}.self_attn", f"{flax_path}/MultiHeadDotProductAttention_0",
                                      tower.num_heads, ("q_proj", "k_proj", "v_proj", "out_proj"))})
    return rows


def _rename(tower: TextTower):
    rename = renamer(table(tower), drop=("embeddings.position_ids",), prefix="text_model.")

    def with_positions(name: str):  # the positional table is a bare parameter, not a module's
        short = name[len("text_model."):] if name.startswith("text_model.") else name
        return ("params/pos_embedding", lambda w: w) if short == "embeddings.position_embedding.weight" \
            else rename(name)
    return with_positions


def load(folder: str, dtype: Any = jnp.float32) -> Tuple[TextTower, Any]:
    """(tower, params) from a folder's `text_encoder/` (or a text encoder folder itself); parameters float32."""
    path = folder if os.path.isfile(os.path.join(folder, "config.json")) else component_dir(folder, "text_encoder")
    where = os.path.join(path, "config.json")
    tower = tower_of(read_config(path), where, dtype)
    ids = np.zeros((1, tower.max_length), np.int32)
    abstract = jax.eval_shape(tower.init, jax.random.key(0), ids, ids == 0)
    return tower, assign(abstract, read_weights(path), _rename(tower), where=path)
