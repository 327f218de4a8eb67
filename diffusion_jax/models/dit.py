"""A diffusion transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image is cut into p x p patches, each linearly embedded to one token plus a fixed 2-D sinusoidal position
embedding. Every transformer block is conditioned by adaLN-Zero (sec. 3.2): its residual branches are shifted, scaled
and gated by a zero-initialised regression from the conditioning vector c (timestep embedding + label embedding, or
+ pooled text embedding), so each block starts as the identity and a fresh model predicts exactly 0. A text model
also cross-attends to the text tokens (padding masked out) after each self-attention, as PixArt-alpha (Chen et al.
2023) does. The conditioning contract: `models/conditioning.py`. The helpers here are shared with `models/mmdit.py`.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models import conditioning
from diffusion_jax.models.layers import MultiHeadAttention, timestep_embedding

Dtype = Any
zeros = nn.initializers.zeros


def check_sizes(x, patch_size: int, width: int, num_heads: int, model: str) -> None:
    """ValueError when the image does not split into patches or the width into heads."""
    if x.shape[1] % patch_size or x.shape[2] % patch_size:
        raise ValueError(f"{model}: image size {x.shape[1]}x{x.shape[2]} is not divisible by patch_size={patch_size}")
    if width % num_heads:
        raise ValueError(f"{model}: width={width} is not divisible by num_heads={num_heads}")


def position_embedding(height: int, width: int, dim: int) -> np.ndarray:
    """Fixed 2-D sinusoidal position embedding [height * width, dim] (as MAE, He et al. 2022, which DiT uses): half
    the channels encode the row, half the column; zero-padded when dim is not a multiple of 4."""
    quarter = dim // 4
    freqs = 1.0 / 10_000.0 ** (np.arange(quarter) / max(quarter, 1))
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    angles = [np.outer(pos.ravel(), freqs) for pos in (rows, cols)]
    emb = np.concatenate([f(a) for a in angles for f in (np.sin, np.cos)], axis=1)
    return np.pad(emb, ((0, 0), (0, dim - emb.shape[1]))).astype(np.float32)


def patchify(x, p: int):
    """[B, H, W, C] -> [B, (H/p) * (W/p), p * p * C], patches in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x, p: int, h: int, w: int):
    """The inverse of `patchify`: [B, (H/p) * (W/p), p * p * C] -> [B, H, W, C]."""
    b, c = x.shape[0], x.shape[-1] // (p * p)
    x = x.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v for q [B, Q, heads, d], k and v [B, K, heads, d]; mask [B, K] (True = attend)
    drops keys. The softmax runs in float32 whatever the compute dtype."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)


def adaln(c, n: int, dtype: Dtype, name: Optional[str] = None):
    """n modulation vectors [B, 1, D] (shift, scale, gate, ...) from a zero-initialised Dense of silu(c)."""
    out = nn.Dense(n * c.shape[-1], dtype=dtype, kernel_init=zeros, name=name)(nn.silu(c))
    return jnp.split(out[:, None, :], n, axis=-1)


def modulate(x, shift, scale, dtype: Dtype):
    """adaLN: a LayerNorm without affine parameters, then x * (1 + scale) + shift."""
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype)(x) * (1 + scale) + shift


class Embedder(nn.Module):
    """The conditioning vector c [B, width]: an MLP of the timestep embedding, plus a label embedding (label
    `num_classes` is the null class) or a projection of the pooled text embedding."""

    width: int
    num_classes: Optional[int]
    text: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t, cond):
        c = nn.Dense(self.width, dtype=self.dtype)(timestep_embedding(t, self.width))
        c = nn.Dense(self.width, dtype=self.dtype)(nn.silu(c))
        if self.num_classes is not None:
            return c + nn.Embed(self.num_classes + 1, self.width, dtype=self.dtype)(cond)
        if self.text:
            return c + nn.Dense(self.width, dtype=self.dtype)(cond["pooled"].astype(self.dtype))
        return c


class Mlp(nn.Module):
    """Dense-GELU-dropout-Dense with hidden width `hidden`."""

    hidden: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(x))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(x.shape[-1], dtype=self.dtype)(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention. Its out projection is not zero-initialised: behind a zero adaLN-Zero gate, a zero
    projection too would leave both with zero gradients for ever."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda name: nn.DenseGeneral(  # noqa: E731
            (self.num_heads, x.shape[-1] // self.num_heads), dtype=self.dtype, name=name)
        out = attention(dense("query")(x), dense("key")(x), dense("value")(x))
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=self.dtype, name="out")(out)


class FinalLayer(nn.Module):
    """adaLN (shift, scale), then a zero-initialised projection of each token to `features` (p * p * channels)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c):
        h = modulate(x, *adaln(c, 2, self.dtype), self.dtype)
        return nn.Dense(self.features, dtype=self.dtype, kernel_init=zeros)(h)


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, then (text models) cross-attention to the tokens, then an adaLN-Zero MLP."""

    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c, context=None, context_mask=None, *, train: bool = False):
        shift1, scale1, gate1, shift2, scale2, gate2 = adaln(c, 6, self.dtype)
        x = x + gate1 * SelfAttention(self.num_heads, self.dtype)(modulate(x, shift1, scale1, self.dtype))
        if context is not None:  # ungated: its zero-initialised out projection starts it at 0
            h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
            x = x + MultiHeadAttention(self.num_heads, self.dtype, name="cross_attention")(h, context, context_mask)
        h = modulate(x, shift2, scale2, self.dtype)
        return x + gate2 * Mlp(int(self.mlp_ratio * x.shape[-1]), self.dropout, self.dtype)(h, train)


class Transformer(nn.Module):
    """The fields and the input side the two diffusion transformers share (`DiT`, `models/mmdit.py`'s `MMDiT`).

    A model on p x p patches: `depth` blocks of width `width` with `num_heads` heads and MLP width mlp_ratio * width.
    num_classes: real classes (label num_classes = null); None for a text model (`text=True`) or no condition.
    out_channels: channels of the prediction. dtype: compute dtype (float32 or bfloat16); the output is float32.
    """

    patch_size: int = 2
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: Optional[int] = 10
    text: bool = False
    out_channels: int = 1
    dropout: float = 0.0
    dtype: Any = jnp.float32

    def embed(self, x, t, cond):
        """Checks the inputs (the conditioning contract, the sizes) and returns (c [B, width], the patch tokens
        [B, N, width] with their position embedding). Called from the subclass's compact `__call__`."""
        name = type(self).__name__
        conditioning.check(cond, num_classes=self.num_classes, text=self.text, model=name)
        check_sizes(x, self.patch_size, self.width, self.num_heads, name)
        p, (_, height, width, _) = self.patch_size, x.shape
        c = Embedder(self.width, self.num_classes, self.text, self.dtype)(t, cond)
        h = nn.Dense(self.width, dtype=self.dtype, name="patch_embed")(patchify(x.astype(self.dtype), p))
        return c, h + jnp.asarray(position_embedding(height // p, width // p, self.width), self.dtype)

    def output(self, h, c, x):
        """The final layer, unpatchified to x's size with `out_channels` channels, float32."""
        p = self.patch_size
        h = FinalLayer(p * p * self.out_channels, self.dtype)(h, c)
        return unpatchify(h, p, x.shape[1], x.shape[2]).astype(jnp.float32)


class DiT(Transformer):
    """DiT (fields: `Transformer`): adaLN-Zero blocks, text tokens by cross-attention."""

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        """Predicts the target [B, H, W, out_channels] for x [B, H, W, C] at timesteps t [B] given `cond`."""
        c, h = self.embed(x, t, cond)
        context, mask = (cond["tokens"].astype(self.dtype), cond["mask"].astype(bool)) if self.text else (None, None)
        for _ in range(self.depth):
            h = DiTBlock(self.num_heads, self.mlp_ratio, self.dropout, self.dtype)(h, c, context, mask, train=train)
        return self.output(h, c, x)
