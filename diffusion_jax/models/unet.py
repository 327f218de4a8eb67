"""A conditional U-Net noise predictor (Ronneberger et al. 2015; Ho et al. 2020, appendix B).

The network maps (noisy image x_t, timestep t, condition) to a prediction of the noise (or of v). The condition is
either a class label (label `num_classes` is the extra "null" class of classifier-free guidance, Ho & Salimans 2022)
or a text, given as a frozen text encoder's outputs {'tokens': [B, L, W], 'mask': [B, L], 'pooled': [B, D]}: as in
Stable Diffusion (Rombach et al. 2022, sec. 3.3) the image features cross-attend to the tokens (padding masked out)
after every self-attention, and, as in Imagen (Saharia et al. 2022), the pooled embedding is added to the timestep
embedding.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models import conditioning
from diffusion_jax.models.layers import (AttentionBlock, Downsample, ResBlock, SpatialTransformer, Upsample, conv,
                                         group_norm, timestep_embedding)


class UNet(nn.Module):
    """U-Net with one level per entry of `channels` and self-attention at the resolutions in `attention_resolutions`.

    Attributes:
      channels: feature width of each resolution level, highest resolution first (e.g. (32, 64, 128)).
      num_res_blocks: residual blocks per level on the way down (one more on the way up, for the skip).
      attention_resolutions: spatial sizes (e.g. (8,)) at which self-attention follows each residual block.
      num_classes: number of real classes; None for a model without labels. Label == num_classes means "no label".
      text: condition on a text encoder's outputs (a dict, see the module docstring) instead of a label.
      out_channels: channels of the prediction (the image channels).
      patch_size: space-to-depth factor applied first (and undone last): patch_size=2 runs the whole U-Net at half
        the resolution with 4x the input channels, about 4x fewer FLOPs for the same widths (as DiT's patchify).
      dropout, num_heads, norm_groups: block hyper-parameters (num_heads: one for all levels, or one per level).
      dtype: compute dtype (float32 or bfloat16); the output is float32.
    """

    channels: Sequence[int] = (32, 64, 128)
    num_res_blocks: int = 1
    attention_resolutions: Sequence[int] = (8,)
    num_classes: Optional[int] = 10
    text: bool = False
    out_channels: int = 1
    patch_size: int = 1
    dropout: float = 0.0
    num_heads: int = 4
    norm_groups: int = 8
    dtype: Any = jnp.float32
    attention: str = "deferred"  # layers.ATTENTION_IMPLEMENTATIONS: the same function, computed two ways
    # Stable Diffusion's U-Net, by configuration (pretrained/unet.py sets these from a diffusers config; the defaults
    # are this project's own U-Net, unchanged):
    attention_levels: Optional[Sequence[bool]] = None  # attention per level (SD's block types), not per size
    attention_block: str = "project"  # "project": AttentionBlock self (+ cross); "transformer": SpatialTransformer
    norm_eps: float = 1e-6  # the residual blocks' and the output's GroupNorm (SD: 1e-5)
    text_pooled: bool = True  # add a projection of the pooled text to the timestep embedding (SD: no)
    text_mask: bool = True  # hide padded tokens from the cross-attention (SD: every one of the 77 is attended)
    symmetric_downsample: bool = False  # PyTorch's padding=1 in the stride-2 convolutions (SD: yes)
    diffusers_time: bool = False  # the timestep frequencies as diffusers computes them (layers.timestep_embedding)
    winograd: int = 0  # 3x3 convolutions on maps at most this size a side by Winograd's F(2x2, 3x3) (layers.conv)

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        """Predicts the target for x [B, H, W, C] at timesteps t [B] given the condition `cond`: labels [B] (int)
        for a class-conditional model, a text dict for `text=True` (the contract: `models/conditioning.py`)."""
        conditioning.check(cond, num_classes=self.num_classes, text=self.text, model="UNet")
        levels = len(self.channels)
        heads = tuple(self.num_heads) if isinstance(self.num_heads, Sequence) else (self.num_heads,) * levels
        if len(heads) != levels or (self.attention_levels is not None and len(self.attention_levels) != levels):
            raise ValueError(f"UNet: num_heads={self.num_heads!r} and attention_levels={self.attention_levels!r} "
                             f"need one entry per level ({levels})")
        if self.attention_block not in ("project", "transformer"):
            raise ValueError(f"UNet: attention_block={self.attention_block!r} is not 'project' or 'transformer'")
        emb_dim = 4 * self.channels[0]
        emb = timestep_embedding(t, self.channels[0], diffusers=self.diffusers_time)
        emb = nn.Dense(emb_dim, dtype=self.dtype)(emb)
        emb = nn.Dense(emb_dim, dtype=self.dtype)(nn.silu(emb))
        context = context_mask = None
        if self.num_classes is not None:
            emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=self.dtype)(cond)
        elif self.text:
            if self.text_pooled:
                emb = emb + nn.Dense(emb_dim, dtype=self.dtype)(cond["pooled"].astype(self.dtype))
            context = cond["tokens"]
            context_mask = cond["mask"].astype(bool) if self.text_mask else None

        block = lambda ch: ResBlock(ch, self.dropout, self.norm_groups, self.dtype, self.norm_eps,  # noqa: E731
                                    self.winograd)

        def attend(level):
            """Self-attention, then (text models) cross-attention to the text tokens."""
            if self.attention_block == "transformer":
                transformer = SpatialTransformer(heads[level], self.norm_groups, self.dtype)
                return lambda h: transformer(h, context)
            self_attention = AttentionBlock(heads[level], self.norm_groups, self.dtype, self.attention)
            if context is None:
                return self_attention
            cross_attention = AttentionBlock(heads[level], self.norm_groups, self.dtype, self.attention)
            return lambda h: cross_attention(self_attention(h), context, context_mask)

        def attends(level, h):
            if self.attention_levels is not None:
                return bool(self.attention_levels[level])
            return h.shape[1] in self.attention_resolutions

        p = self.patch_size
        b, height, width, c = x.shape
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by patch_size={p}")
        x = x.reshape(b, height // p, p, width // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, height // p, width // p, p * p * c)
        h = conv(self.channels[0], self.winograd, dtype=self.dtype)(x.astype(self.dtype))
        skips = [h]
        for level, ch in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                h = block(ch)(h, emb, train)
                if attends(level, h):
                    h = attend(level)(h)
                skips.append(h)
            if level < len(self.channels) - 1:
                h = Downsample(ch, self.dtype, self.symmetric_downsample)(h)
                skips.append(h)

        h = block(self.channels[-1])(h, emb, train)
        h = attend(levels - 1)(h)
        h = block(self.channels[-1])(h, emb, train)

        for level, ch in reversed(list(enumerate(self.channels))):
            for _ in range(self.num_res_blocks + 1):
                h = block(ch)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
                if attends(level, h):
                    h = attend(level)(h)
            if level > 0:
                h = Upsample(ch, self.dtype, self.winograd)(h)

        h = nn.silu(group_norm(h.shape[-1], self.norm_groups, self.dtype, self.norm_eps)(h))
        h = conv(p * p * self.out_channels, self.winograd, dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
        h = h.reshape(b, height // p, width // p, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(b, height, width, self.out_channels).astype(jnp.float32)
