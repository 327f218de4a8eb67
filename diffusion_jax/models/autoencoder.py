"""A KL-regularised convolutional autoencoder in the shape of Stable Diffusion's AutoencoderKL (Rombach et al. 2022,
appendix G), small: the first stage of latent diffusion.

Encoder: conv in, per level `num_res_blocks` residual blocks (GroupNorm-SiLU-conv, no time embedding) then a
stride-2 downsample (not after the last level), a middle block (two residual blocks; SD's middle attention is off by
default, `mid_attention`: it costs more than it buys at these sizes on a CPU), GroupNorm-SiLU, conv to 2 * latent_channels (the mean and
log-variance of a diagonal Gaussian posterior), then SD's 1x1 "quant_conv". The decoder mirrors it: 1x1
"post_quant_conv", conv in, middle block, per level (deepest first) `num_res_blocks + 1` residual blocks then a
nearest-neighbour x2 upsample + conv, GroupNorm-SiLU, conv out. Downsampling factor f = 2 ** (len(channels) - 1).

Every field is explicit (the module never reads a config) and the module is pure: the sampling noise is an input.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import AttentionBlock, Downsample, Upsample, group_norm

Dtype = Any
LOGVAR_RANGE = (-30.0, 20.0)  # SD's DiagonalGaussianDistribution clamps the log-variance to this range


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual connection (a 1x1 conv where the width changes); no embedding."""

    channels: int
    norm_groups: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(nn.silu(group_norm(x.shape[-1], self.norm_groups,
                                                                                 self.dtype)(x)))
        h = nn.silu(group_norm(self.channels, self.norm_groups, self.dtype)(h))
        # Zero-initialised last conv: each block starts as the identity (as layers.ResBlock), which trains faster.
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), dtype=self.dtype)(x)
        return x + h


def middle(h, channels: int, norm_groups: int, attention: bool, dtype: Dtype):
    """The middle block, called inside an encoder's or decoder's compact body: two residual blocks, with SD's
    single-head self-attention between them when `attention`."""
    h = ResBlock(channels, norm_groups, dtype)(h)
    if attention:
        h = AttentionBlock(num_heads=1, norm_groups=norm_groups, dtype=dtype)(h)
    return ResBlock(channels, norm_groups, dtype)(h)


class Encoder(nn.Module):
    """Images [B, H, W, C] -> moments [B, H/f, W/f, 2 * latent_channels] (mean, then log-variance)."""

    channels: Sequence[int]
    latent_channels: int
    num_res_blocks: int = 1
    norm_groups: int = 8
    dtype: Dtype = jnp.float32
    mid_attention: bool = False

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.channels[0], (3, 3), dtype=self.dtype)(x.astype(self.dtype))
        for level, ch in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                h = ResBlock(ch, self.norm_groups, self.dtype)(h)
            if level < len(self.channels) - 1:
                h = Downsample(ch, self.dtype)(h)
        h = middle(h, self.channels[-1], self.norm_groups, self.mid_attention, self.dtype)
        h = nn.silu(group_norm(h.shape[-1], self.norm_groups, self.dtype)(h))
        h = nn.Conv(2 * self.latent_channels, (3, 3), dtype=self.dtype)(h)
        return nn.Conv(2 * self.latent_channels, (1, 1), dtype=self.dtype, name="quant_conv")(h)


class Decoder(nn.Module):
    """Latents [B, h, w, latent_channels] -> images [B, h*f, w*f, out_channels] (unbounded; trained towards [-1, 1])."""

    channels: Sequence[int]
    out_channels: int = 3
    num_res_blocks: int = 1
    norm_groups: int = 8
    dtype: Dtype = jnp.float32
    mid_attention: bool = False
    upsample_keeps_width: bool = False

    @nn.compact
    def __call__(self, z):
        z = nn.Conv(z.shape[-1], (1, 1), dtype=self.dtype, name="post_quant_conv")(z.astype(self.dtype))
        h = nn.Conv(self.channels[-1], (3, 3), dtype=self.dtype)(z)
        h = middle(h, self.channels[-1], self.norm_groups, self.mid_attention, self.dtype)
        for level in reversed(range(len(self.channels))):
            for _ in range(self.num_res_blocks + 1):  # SD's decoder has one block more per level than its encoder
                h = ResBlock(self.channels[level], self.norm_groups, self.dtype)(h)
            if level > 0:
                h = Upsample(self.channels[level - (0 if self.upsample_keeps_width else 1)], self.dtype)(h)
        h = nn.silu(group_norm(h.shape[-1], self.norm_groups, self.dtype)(h))
        return nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h).astype(jnp.float32)


def kl_divergence(mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example: 0.5 * sum(mean^2 + var - 1 - logvar) over all latent axes
    (SD's DiagonalGaussianDistribution.kl). float32 [B]."""
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    return 0.5 * jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=tuple(range(1, mean.ndim)))


class AutoencoderKL(nn.Module):
    """The KL autoencoder: `encode` -> (mean, logvar) of the posterior, `decode` latents -> images.

    `channels`: one width per level; len(channels) - 1 stride-2 downsamplings, so the latent of an H x W image is
    H/f x W/f x latent_channels with f = 2 ** (len(channels) - 1). `dtype` is the compute dtype; parameters,
    moments and outputs are float32.
    """

    channels: Sequence[int] = (32, 64, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    norm_groups: int = 8
    out_channels: int = 3
    dtype: Dtype = jnp.float32
    mid_attention: bool = False  # SD: True
    upsample_keeps_width: bool = False  # SD: True (the next level's first block narrows), else the upsample does

    @property
    def factor(self) -> int:
        """The spatial downsampling factor f."""
        return 2 ** (len(self.channels) - 1)

    def setup(self):
        self.encoder = Encoder(tuple(self.channels), self.latent_channels, self.num_res_blocks, self.norm_groups,
                               self.dtype, mid_attention=self.mid_attention)
        self.decoder = Decoder(tuple(self.channels), self.out_channels, self.num_res_blocks, self.norm_groups,
                               self.dtype, mid_attention=self.mid_attention,
                               upsample_keeps_width=self.upsample_keeps_width)

    def encode(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Images [B, H, W, C] in [-1, 1] -> posterior (mean, logvar), float32 [B, H/f, W/f, latent_channels] each;
        logvar clipped to `LOGVAR_RANGE`."""
        moments = self.encoder(x).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jnp.ndarray) -> jnp.ndarray:
        """Latents [B, h, w, latent_channels] (unscaled: the posterior's space) -> float32 images [B, h*f, w*f, C]."""
        return self.decoder(z)

    def __call__(self, x: jnp.ndarray, eps: Optional[jnp.ndarray] = None) -> dict:
        """Reconstruction through a posterior sample z = mean + exp(logvar / 2) * eps (eps ~ N(0, I) given by the
        caller, shaped like the latents), or through the mean when `eps` is None.

        Returns {'reconstruction': [B, H, W, C], 'mean', 'logvar', 'z'} (all float32)."""
        mean, logvar = self.encode(x)
        z = mean if eps is None else mean + jnp.exp(0.5 * logvar) * eps.astype(jnp.float32)
        return {"reconstruction": self.decode(z), "mean": mean, "logvar": logvar, "z": z}
