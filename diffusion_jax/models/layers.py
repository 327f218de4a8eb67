"""U-Net building blocks: timestep embedding, residual blocks, attention, resampling.

Every module is pure Flax linen: parameters in, arrays out. `dtype` is the compute dtype (float32 or bfloat16);
parameters stay float32.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
ATTENTION_IMPLEMENTATIONS = ("deferred", "flax")


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, appendix B).

    Returns float32 [B, dim]: cos/sin pairs of t at geometrically spaced frequencies from 1 to 1/max_period.
    """
    if dim % 2:
        raise ValueError(f"timestep embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = np.exp(-np.log(max_period) * np.arange(half, dtype=np.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def group_norm(channels: int, groups: int, dtype: Dtype) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= `groups` that divides `channels`."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(num_groups=g, dtype=dtype)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, conditioned by adding a projection of the embedding (DDPM's residual block)."""

    channels: int
    dropout: float = 0.0
    norm_groups: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        h = nn.silu(group_norm(x.shape[-1], self.norm_groups, self.dtype)(x))
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(h)
        h = h + nn.Dense(self.channels, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(group_norm(self.channels, self.norm_groups, self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        # Zero-initialised last conv: each block starts as the identity, which keeps early training stable.
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), dtype=self.dtype)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the spatial positions of a feature map, with a residual connection.

    `context` (tokens [B, L, D]) with `context_mask` ([B, L], True = real token) switches the block to
    cross-attention: queries from the image, keys/values from the context. Unused by the class-conditional model.
    """

    num_heads: int = 4
    norm_groups: int = 8
    dtype: Dtype = jnp.float32
    implementation: str = "deferred"  # deferred (MultiHeadAttention) | flax (nn.MultiHeadDotProductAttention)

    @nn.compact
    def __call__(self, x, context: Optional[jnp.ndarray] = None, context_mask: Optional[jnp.ndarray] = None):
        b, h, w, c = x.shape
        q = group_norm(c, self.norm_groups, self.dtype)(x).reshape(b, h * w, c)
        kv = q if context is None else context.astype(self.dtype)
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"unknown attention implementation {self.implementation!r}: use one of "
                             f"{ATTENTION_IMPLEMENTATIONS}")
        if self.implementation == "flax":  # the same function and parameters, Flax's way
            mask = None if context_mask is None else context_mask[:, None, None, :]
            out = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                                  out_kernel_init=nn.initializers.zeros)(q, kv, mask=mask)
        else:  # named as Flax's module: the parameter trees are identical, so either loads the other's checkpoints
            out = MultiHeadAttention(self.num_heads, self.dtype, name="MultiHeadDotProductAttention_0")(
                q, kv, context_mask)
        return x + out.reshape(b, h, w, c)


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention with the parameters of Flax's `nn.MultiHeadDotProductAttention` (query, key,
    value [D, heads, D/heads] and a zero-initialised out projection), computed with the softmax normalisation
    deferred past the value product: out = (exp(s - max s) @ v) / sum exp(s - max s). That is the same function,
    but the division touches [B, Q, heads, D/heads] instead of the [B, heads, Q, K] weights, whose divide was the
    largest single attention op in a first profile (benchmarks/step_profile.py). The whole step is no faster for it on
    a CPU (docs/training_speed.md)."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, mask: Optional[jnp.ndarray] = None):
        c = x.shape[-1]
        if c % self.num_heads:
            raise ValueError(f"attention width {c} is not divisible by num_heads={self.num_heads}")
        head = c // self.num_heads
        dense = lambda name: nn.DenseGeneral((self.num_heads, head), dtype=self.dtype, name=name)  # noqa: E731
        q = dense("query")(x) / np.sqrt(head).astype(self.dtype)
        k, v = dense("key")(context), dense("value")(context)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        if mask is not None:  # [B, K], True = attend
            logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
        weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
        total = weights.sum(axis=-1).transpose(0, 2, 1)[..., None]  # [B, Q, heads, 1]
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v) / total
        return nn.DenseGeneral(c, axis=(-2, -1), dtype=self.dtype, kernel_init=nn.initializers.zeros, name="out")(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: halves the resolution."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Conv(self.channels, (3, 3), strides=(2, 2), dtype=self.dtype)(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return nn.Conv(self.channels, (3, 3), dtype=self.dtype)(x)
