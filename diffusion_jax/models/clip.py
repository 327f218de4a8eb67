"""A small dual-tower CLIP (Radford et al. 2021) for 32x32 images and word-level captions.

An image tower (ConvNet) and a text tower (pre-LN transformer) are projected linearly into one shared space of
width `embed_dim` and L2-normalised; a learnable temperature turns their cosine similarities into logits for the
symmetric contrastive loss (Radford et al. 2021, fig. 3). The text tower's per-token outputs also serve as the
cross-attention context of a text-to-image U-Net (`AttentionBlock(context=tokens, context_mask=mask)`).

As everywhere in `diffusion_jax.models`, `dtype` is the compute dtype (float32 or bfloat16); parameters stay
float32 and every returned array is float32.
"""
import math
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import group_norm

Dtype = Any


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """Scales each row of x [..., D] (in float32) to unit L2 norm, so dot products are cosine similarities.

    `eps` keeps an all-zero row (e.g. an empty caption's pooled vector) finite instead of NaN.
    """
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def _check_text(ids: jnp.ndarray, mask: jnp.ndarray, max_length: int) -> None:
    """Raises a ValueError naming `ids` or `mask` when their shapes cannot be a batch of captions."""
    if ids.ndim != 2:
        raise ValueError(f"ids must be int token ids of shape [batch, length], got shape {ids.shape}")
    if mask.shape != ids.shape:
        raise ValueError(f"mask shape {mask.shape} must equal ids shape {ids.shape}")
    if ids.shape[1] > max_length:
        raise ValueError(f"ids length {ids.shape[1]} exceeds the text tower's max_length={max_length}")


POOLS = ("mean", "flatten")


class ImageTower(nn.Module):
    """A cheap ConvNet: 3x3 stem, then one stride-2 stage per further entry of `channels`, global average pool.

    Each stage is conv (stride 2) -> GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU. For 32x32 inputs and
    channels (32, 64, 128) the last stage runs at 8x8. The pooled features go through a final Dense to width
    `features`.

    With `factorize_color`, the ConvNet sees only the intensity (max over the RGB channels), and the colour enters
    through the intensity-weighted mean RGB of the image, mapped by a small MLP and added to the pooled features.
    A digit's shape then looks the same in every colour, so shape features learnt from green 0s also serve red 0s:
    the inductive bias behind compositional generalisation to (digit, colour) pairs never seen in training.

    Attributes:
      channels: widths of the stem and of each stage (the stem uses channels[0] at full resolution).
      features: width of the output features.
      factorize_color: shape from intensity, colour from the mean ink colour (see above).
      norm_groups: GroupNorm groups (reduced to a divisor of the channel count where needed).
      stem_stride: stride of the stem (2 halves the resolution the stages run at: 64x64 scenes at 32x32's cost).
      pool: 'mean' (global average: where a thing is does not matter) or 'flatten' (the last feature map flattened
        into the Dense: where things are, and so their relation, reaches the embedding).
      dtype: compute dtype; the output is float32.
    """

    channels: Sequence[int] = (32, 64, 128)
    features: int = 128
    norm_groups: int = 8
    factorize_color: bool = False
    stem_stride: int = 1
    pool: str = "mean"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        """Maps images float [B, H, W, C] (values in [-1, 1]) to features float32 [B, features]."""
        if images.ndim != 4:
            raise ValueError(f"images must have shape [batch, height, width, channels], got shape {images.shape}")
        if not self.channels:
            raise ValueError("ImageTower.channels must name at least one width (the stem's)")

        def conv_norm_act(h, ch, stride):
            h = nn.Conv(ch, (3, 3), strides=(stride, stride), dtype=self.dtype)(h)
            return nn.silu(group_norm(ch, self.norm_groups, self.dtype)(h))

        x = images.astype(jnp.float32)
        if self.factorize_color:
            pixels = (x + 1.0) / 2.0  # [0, 1]
            intensity = jnp.max(pixels, axis=-1, keepdims=True)
            color = jnp.sum(pixels * intensity, axis=(1, 2)) / jnp.maximum(jnp.sum(intensity, axis=(1, 2)), 1e-6)
            x = intensity * 2.0 - 1.0
        if self.pool not in POOLS:
            raise ValueError(f"ImageTower.pool={self.pool!r} is not one of {POOLS}")
        h = conv_norm_act(x.astype(self.dtype), self.channels[0], self.stem_stride)
        for ch in self.channels[1:]:
            h = conv_norm_act(h, ch, 2)
            h = conv_norm_act(h, ch, 1)
        h = jnp.mean(h, axis=(1, 2)) if self.pool == "mean" else h.reshape(h.shape[0], -1)
        h = nn.Dense(self.features, dtype=self.dtype)(h)
        if self.factorize_color:
            c = nn.silu(nn.Dense(self.features, dtype=self.dtype)(color.astype(self.dtype)))
            h = h + nn.Dense(self.features, dtype=self.dtype)(c)
        return h.astype(jnp.float32)


ACTIVATIONS = {  # the MLP's activation: this project's default, SD 2.x's text encoder (exact erf), SD 1.x's (OpenAI)
    "gelu_tanh": nn.gelu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}
POOLINGS = ("mean", "eos")


class TextBlock(nn.Module):
    """Pre-LN transformer block (as in GPT-2 / CLIP's text encoder): x + Attn(LN(x)), then x + MLP(LN(x)).

    `mask` is the attention mask, broadcastable to [B, heads, L, L] (True = may attend): the tower's key-padding
    mask (no real token ever reads a padding token; padded queries still attend to the real tokens, their outputs
    are discarded by the tower), a causal mask, or both.
    """

    width: int
    num_heads: int
    mlp_ratio: int = 4
    activation: str = "gelu_tanh"  # ACTIVATIONS
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        """x [B, L, width], mask bool broadcastable to [B, heads, L, L] -> [B, L, width]."""
        h = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype)(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype)(h, h, mask=mask)
        x = x + h
        h = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype)(x)
        h = nn.Dense(self.mlp_ratio * self.width, dtype=self.dtype)(h)
        h = nn.Dense(self.width, dtype=self.dtype)(ACTIVATIONS[self.activation](h))
        return x + h


class TextTower(nn.Module):
    """Token + learned positional embedding, `num_layers` pre-LN blocks, final LayerNorm.

    Two families, by configuration:

    - **This project's caption encoder** (the defaults): bidirectional attention with a key-padding mask; pooled is
      the masked mean of the final token embeddings over the real tokens (bos, words, eos), since every token
      already sees the whole caption and the mean gives every word a direct gradient path on small data. Padded
      positions never influence the real tokens nor `pooled`, whatever their ids, and their rows of `tokens` are
      zero.
    - **CLIP's text transformer as Stable Diffusion uses it** (`causal=True, key_mask=False, pool="eos"`, the
      folder's activation, `norm_eps=1e-5`, `mlp_ratio`): causal attention over all positions, padding included;
      `tokens` are all `L` final hidden states (SD's cross-attention context) and `pooled` is the row of the end
      token (the first `eos_id`; `eos_id=None` is transformers' rule for the legacy configs: the row of the
      largest id). `skip_layers=k` (clip skip) stops `k` blocks early, then applies the final LayerNorm.

    Attributes:
      vocab_size: number of token ids (pad id 0 included).
      max_length: longest caption (size of the positional embedding table).
      width: embedding width.
      num_layers, num_heads: transformer depth and heads (width must be divisible by num_heads).
      mlp_ratio, activation, norm_eps: the blocks' MLP width (x width), activation (ACTIVATIONS), LayerNorm epsilon.
      causal, key_mask: causal attention; hide padded keys (mask False).
      pool, eos_id: POOLINGS, and the end token's id for "eos".
      dtype: compute dtype; the outputs are float32.
    """

    vocab_size: int
    max_length: int = 16
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    activation: str = "gelu_tanh"
    norm_eps: float = 1e-6
    causal: bool = False
    key_mask: bool = True
    pool: str = "mean"
    eos_id: Any = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jnp.ndarray, mask: jnp.ndarray, skip_layers: int = 0
                 ) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """ids int [B, L], mask bool [B, L] -> (pooled float32 [B, width], tokens float32 [B, L, width])."""
        _check_text(ids, mask, self.max_length)
        if self.width % self.num_heads:
            raise ValueError(f"TextTower width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.activation not in ACTIVATIONS or self.pool not in POOLINGS:
            raise ValueError(f"TextTower activation={self.activation!r} (one of {sorted(ACTIVATIONS)}), "
                             f"pool={self.pool!r} (one of {POOLINGS})")
        if not 0 <= skip_layers < self.num_layers:
            raise ValueError(f"skip_layers={skip_layers} must be in [0, num_layers={self.num_layers})")
        mask = mask.astype(bool)
        length = ids.shape[1]
        attention = mask[:, None, None, :] if self.key_mask else jnp.ones((1, 1, 1, length), bool)
        if self.causal:
            attention = attention & jnp.tril(jnp.ones((length, length), bool))[None, None]
        pos = self.param("pos_embedding", nn.initializers.normal(0.01), (self.max_length, self.width))
        x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype)(ids) + pos[None, :length].astype(self.dtype)
        blocks = [TextBlock(self.width, self.num_heads, self.mlp_ratio, self.activation, self.norm_eps,
                            dtype=self.dtype) for _ in range(self.num_layers)]
        final_norm = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype)
        for block in blocks[:self.num_layers - skip_layers]:
            x = block(x, attention)
        x = final_norm(x).astype(jnp.float32)
        if self.pool == "eos":
            end = jnp.argmax(ids if self.eos_id is None else ids == self.eos_id, axis=1)
            return jnp.take_along_axis(x, end[:, None, None], axis=1)[:, 0], x
        weights = mask.astype(jnp.float32)[..., None]
        tokens = x * weights
        pooled = jnp.sum(tokens, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return pooled, tokens


def clamp_logit_scale(params: Any, logit_scale_max: float) -> Any:
    """`params` of a `CLIP` with `logit_scale` clamped to [0, log(logit_scale_max)] (a scale in [1, max]): applied
    after each optimizer update (`trainers/state.py:apply_gradients`'s `constrain`), as CLIP does."""
    inner = dict(params["params"])
    inner["logit_scale"] = jnp.clip(inner["logit_scale"], 0.0, math.log(logit_scale_max))
    return {**params, "params": inner}


class CLIP(nn.Module):
    """Dual-tower CLIP with a shared embedding space and a clamped learnable temperature (Radford et al. 2021).

    Submodules are made in `setup` (the towers themselves use `nn.compact`), so each encoder can be applied alone:
    `model.apply(params, images, method=CLIP.encode_image)` or
    `model.apply(params, ids, mask, method=CLIP.encode_text)`.

    The temperature is the parameter `logit_scale`, stored as a log (init log(1/0.07) as in CLIP); the scale is
    `exp(logit_scale)`. Training keeps it at most `logit_scale_max` (100, so the logits cannot explode on small data)
    by clamping the parameter after each update (`clamp_logit_scale`), as CLIP and open_clip do: a clamp inside the
    forward pass would zero its gradient at the cap, and a temperature that reached it could never come back.
    Contrastive logits are `exp(logit_scale) * image_emb @ text_emb.T`.

    Attributes:
      vocab_size, max_length: text vocabulary size and longest caption.
      embed_dim: width of the shared image-text space.
      image_channels: ImageTower stage widths (its features have width embed_dim before the projection).
      text_width, text_layers, text_heads: TextTower size.
      norm_groups: GroupNorm groups of the image tower.
      factorize_color: the image tower's shape/colour factorisation (see ImageTower).
      image_stem_stride, image_pool: the image tower's stem stride and pooling (see ImageTower).
      logit_scale_init, logit_scale_max: initial log-temperature and the cap on exp(logit_scale).
      dtype: compute dtype (float32 or bfloat16); all outputs are float32.
    """

    vocab_size: int
    max_length: int = 16
    embed_dim: int = 128
    image_channels: Sequence[int] = (32, 64, 128)
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    norm_groups: int = 8
    factorize_color: bool = False
    image_stem_stride: int = 1
    image_pool: str = "mean"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0
    logit_bias_init: float = -10.0  # SigLIP's bias b (Zhai et al. 2023); unused by the InfoNCE loss
    dtype: Dtype = jnp.float32

    def setup(self):
        self.image_tower = ImageTower(self.image_channels, self.embed_dim, self.norm_groups, self.factorize_color,
                                      self.image_stem_stride, self.image_pool, self.dtype)
        self.text_tower = TextTower(vocab_size=self.vocab_size, max_length=self.max_length, width=self.text_width,
                                    num_layers=self.text_layers, num_heads=self.text_heads, dtype=self.dtype)
        self.image_proj = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
        self.text_proj = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), ())
        self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), ())

    def encode_image(self, images: jnp.ndarray) -> jnp.ndarray:
        """Images float [B, H, W, 3] in [-1, 1] -> unit-norm embeddings float32 [B, embed_dim]."""
        return l2_normalize(self.image_proj(self.image_tower(images).astype(self.dtype)))

    def encode_text(self, ids: jnp.ndarray, mask: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """ids int32 [B, L], mask bool [B, L] (True = real token) -> (pooled, tokens).

        pooled: unit-norm float32 [B, embed_dim] in the shared space; tokens: the text tower's per-token outputs
        float32 [B, L, text_width] (zero at padded positions), the context for a cross-attending U-Net.
        """
        pooled, tokens = self.text_tower(ids, mask)
        return l2_normalize(self.text_proj(pooled.astype(self.dtype))), tokens

    def temperature(self) -> jnp.ndarray:
        """The logit scale float32 scalar exp(logit_scale) (training keeps it <= logit_scale_max: see the class)."""
        return jnp.exp(self.logit_scale).astype(jnp.float32)

    def bias(self) -> jnp.ndarray:
        """The learnable logit bias of the sigmoid (SigLIP) loss, float32 scalar."""
        return jnp.asarray(self.logit_bias, jnp.float32)

    def __call__(self, images: jnp.ndarray, ids: jnp.ndarray, mask: jnp.ndarray):
        """Returns (image_emb [B, D], text_emb [B, D], logit_scale scalar), all float32; embeddings unit-norm."""
        text_emb, _ = self.encode_text(ids, mask)
        return self.encode_image(images), text_emb, self.temperature()
