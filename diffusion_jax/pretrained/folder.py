"""Reading a diffusers folder: `model_index.json`, each component's `config.json` and safetensors, and the one
checked step that turns a component's renamed tensors into Flax parameters.

Every error is a `PretrainedError` whose one line names the file and the key (a folder without `model_index.json`,
a component without its config or weights, a tensor missing, unexpected or of the wrong shape, an option this
project does not implement), raised before any parameter is returned: nothing is ever half-loaded.
"""
import os
from typing import Any, Callable, Dict, Mapping, Optional

import jax
import numpy as np

from diffusion_jax.text import clip_bpe

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")  # diffusers' name, transformers' name


class PretrainedError(ValueError):
    """A pretrained folder that cannot be loaded: names the file and the key."""


def read_json(path: str) -> dict:
    return clip_bpe.read_json(path, PretrainedError)


def component_dir(folder: str, component: str) -> str:
    """`folder/component`, checked against `model_index.json` when the folder has one (a whole pipeline)."""
    index = os.path.join(folder, "model_index.json")
    if os.path.isfile(index) and component not in read_json(index):
        raise PretrainedError(f"{index}: no '{component}' component")
    path = os.path.join(folder, component)
    if not os.path.isdir(path):
        raise PretrainedError(f"{path}: missing (the '{component}' component's folder)")
    return path


def read_config(path: str) -> dict:
    """A component's config.json."""
    return read_json(os.path.join(path, "config.json"))


def read_weights(path: str) -> Dict[str, np.ndarray]:
    """A component's tensors by their PyTorch names, as float32 NumPy arrays (safetensors' NumPy API; no torch).
    Reads a single file or the shards a `*.safetensors.index.json` lists."""
    from safetensors.numpy import load_file  # imported here: only loading a pretrained folder needs it

    files = [os.path.join(path, name) for name in WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
    for name in WEIGHT_FILES:
        index = os.path.join(path, name + ".index.json")
        if not files and os.path.isfile(index):
            shards = read_json(index).get("weight_map")
            if not isinstance(shards, dict):
                raise PretrainedError(f"{index}: no 'weight_map'")
            files = [os.path.join(path, shard) for shard in sorted(set(shards.values()))]
    if not files:
        raise PretrainedError(f"{path}: no weights ({' or '.join(WEIGHT_FILES)}, or a sharded index)")
    tensors = {}
    for file in files:
        try:
            loaded = load_file(file)
        except Exception as e:  # safetensors raises its own types for truncated or foreign files
            raise PretrainedError(f"{file}: not a readable safetensors file ({e})") from None
        tensors.update({k: np.asarray(v, np.float32) for k, v in loaded.items()})
    return tensors


def option(config: Mapping, key: str, supported, where: str, default: Any = None) -> Any:
    """`config[key]` (or `default` when absent), refused with a named error unless `supported(value)` holds or it
    is in the collection `supported`."""
    value = config.get(key, default)
    ok = supported(value) if callable(supported) else value in supported
    if not ok:
        raise PretrainedError(f"{where}: {key}={value!r} is not supported here")
    return value


def assign(abstract: Any, tensors: Mapping[str, np.ndarray], rename: Callable[[str], Optional[tuple]],
           where: str) -> Any:
    """Flax parameters shaped as `abstract` (a `jax.eval_shape` of the module's init) from `tensors`.

    `rename(torch_name)` gives `(flax_path, convert)` (the path as a '/'-joined string, "" for a name it does not
    know; `convert` the array op that maps layouts) or None for a buffer to drop. Every tensor must land on a parameter of the same shape and every
    parameter must be filled; otherwise a PretrainedError names the first offending key.
    """
    expected = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
                for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    values = {}
    for name in sorted(tensors):
        target = rename(name)
        if target is None:
            continue
        path, convert = target
        if path not in expected:
            known = f" (it maps to {path}, which the model lacks)" if path else ""
            raise PretrainedError(f"{where}: unexpected tensor {name!r}{known}")
        value = convert(tensors[name])
        if value.shape != expected[path].shape:
            raise PretrainedError(f"{where}: tensor {name!r} has shape {tensors[name].shape}, which maps to "
                                  f"{value.shape}; parameter {path} needs {expected[path].shape}")
        values[path] = value
    missing = sorted(set(expected) - set(values))
    if missing:
        raise PretrainedError(f"{where}: {len(missing)} parameter(s) without a tensor, first {missing[0]}")
    leaves = [values["/".join(str(getattr(k, "key", k)) for k in path)]
              for path, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]]
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


# ------------------------------------------------------------------------------------- names and layouts
# A component's table maps each PyTorch module path to (Flax module path, kind); the kind says how its `weight` and
# `bias` become Flax parameters: (parameter name, array op).
def _linear(w: np.ndarray) -> np.ndarray:
    """nn.Linear [out, in] (or a 1x1 conv [out, in, 1, 1], SD 1.x's proj_in/out) -> Dense kernel [in, out]."""
    return (w[:, :, 0, 0] if w.ndim == 4 else w).T


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _kind(kind) -> dict:
    """{torch leaf: (flax leaf, op)} for a module kind: "conv", "dense", "norm", "embed", or ("heads_in", H) /
    ("heads_out", H) for attention projections split into H heads (Flax's DenseGeneral layout)."""
    if kind == "conv":  # nn.Conv2d [out, in, kh, kw] -> Conv kernel [kh, kw, in, out]
        return {"weight": ("kernel", lambda w: w.transpose(2, 3, 1, 0)), "bias": ("bias", _same)}
    if kind == "dense":
        return {"weight": ("kernel", _linear), "bias": ("bias", _same)}
    if kind == "norm":
        return {"weight": ("scale", _same), "bias": ("bias", _same)}
    if kind == "embed":
        return {"weight": ("embedding", _same)}
    name, heads = kind
    if name == "heads_in":  # [heads * d, in] -> [in, heads, d]; bias [heads * d] -> [heads, d]
        return {"weight": ("kernel", lambda w: _linear(w).reshape(-1, heads, w.shape[0] // heads)),
                "bias": ("bias", lambda b: b.reshape(heads, -1))}
    # heads_out: [out, heads * d] -> [heads, d, out]
    return {"weight": ("kernel", lambda w: _linear(w).reshape(heads, -1, w.shape[0])), "bias": ("bias", _same)}


def renamer(table: Mapping[str, tuple], drop: tuple = (), prefix: str = "") -> Callable[[str], Optional[tuple]]:
    """`rename` for `assign` from a table {torch module path: (flax module path, kind)}. Names in `drop` (buffers)
    give None; an optional leading `prefix` is ignored (the Hub's `text_model.`)."""
    def rename(name: str):
        short = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if short in drop:
            return None
        module, _, leaf = short.rpartition(".")
        if module not in table or leaf not in _kind(table[module][1]):
            return "", _same
        path, kind = table[module]
        flax_leaf, op = _kind(kind)[leaf]
        return f"params/{path}/{flax_leaf}", op
    return rename


def attention_rows(torch_path: str, flax_path: str, heads: int, names=("to_q", "to_k", "to_v", "to_out.0")) -> dict:
    """Table rows of an attention layer with Flax's MultiHeadDotProductAttention parameters at `flax_path`."""
    q, k, v, out = names
    return {f"{torch_path}.{q}": (f"{flax_path}/query", ("heads_in", heads)),
            f"{torch_path}.{k}": (f"{flax_path}/key", ("heads_in", heads)),
            f"{torch_path}.{v}": (f"{flax_path}/value", ("heads_in", heads)),
            f"{torch_path}.{out}": (f"{flax_path}/out", ("heads_out", heads))}
