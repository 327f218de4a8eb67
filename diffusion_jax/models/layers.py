"""U-Net building blocks: timestep embedding, residual blocks, attention, resampling.

Every module is pure Flax linen: parameters in, arrays out. `dtype` is the compute dtype (float32 or bfloat16);
parameters stay float32.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Dtype = Any


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

    @nn.compact
    def __call__(self, x, context: Optional[jnp.ndarray] = None, context_mask: Optional[jnp.ndarray] = None):
        b, h, w, c = x.shape
        q = group_norm(c, self.norm_groups, self.dtype)(x).reshape(b, h * w, c)
        kv = q if context is None else context.astype(self.dtype)
        mask = None if context_mask is None else context_mask[:, None, None, :]
        out = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, out_kernel_init=nn.initializers.zeros
        )(q, kv, mask=mask)
        return x + out.reshape(b, h, w, c)


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
