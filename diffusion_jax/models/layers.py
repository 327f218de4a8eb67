"""U-Net building blocks: timestep embedding, residual blocks, attention, resampling.

Every module is pure Flax linen: parameters in, arrays out. `dtype` is the compute dtype (float32 or bfloat16);
parameters stay float32.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
ATTENTION_IMPLEMENTATIONS = ("deferred", "flax")


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10_000.0, *, diffusers: bool = False,
                       flip_sin_to_cos: bool = True, freq_shift: float = 0.0) -> jnp.ndarray:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, appendix B).

    Returns float32 [B, dim]: cos/sin pairs of t at geometrically spaced frequencies from 1 to 1/max_period.
    `diffusers=True` computes the frequencies exp(-ln(max_period) i / (half - freq_shift)) in float32 as diffusers'
    `Timesteps` does (this project's own models round a float64 computation: up to 1 ulp apart, which at t ~ 1000
    moves an argument by ~1e-4 rad) and takes its `flip_sin_to_cos` ([cos, sin], SD) and `freq_shift` options.
    """
    if dim % 2:
        raise ValueError(f"timestep embedding dim must be even, got {dim}")
    half = dim // 2
    if diffusers:
        exponent = np.float32(-np.log(max_period)) * jnp.arange(half, dtype=jnp.float32)
        freqs = jnp.exp(exponent / jnp.float32(half - freq_shift))
    else:
        freqs = np.exp(-np.log(max_period) * np.arange(half, dtype=np.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    pair = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
    return jnp.concatenate(pair, axis=-1)


def group_norm(channels: int, groups: int, dtype: Dtype, epsilon: float = 1e-6, name: Optional[str] = None
               ) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= `groups` that divides `channels`."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(num_groups=g, epsilon=epsilon, dtype=dtype, name=name)


# Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"):
# a 3x3 convolution computed on 4x4 input tiles at stride 2 as Y = A^T [(G g G^T) * (B^T d B)] A, 16 products per
# 2x2 outputs instead of 36; the elementwise product over channels becomes 16 matmuls [tiles, C] @ [C, K].
_WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
_WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


def winograd_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
    """G g G^T for every (in, out) pair: a 3x3 kernel [3, 3, C, K] (HWIO) -> [16, C, K], one matmul."""
    c, k = kernel.shape[2:]
    transform = jnp.asarray(np.kron(_WINOGRAD_G, _WINOGRAD_G), kernel.dtype)  # [16, 9]: (r, s) x (i, j)
    return (transform @ kernel.reshape(9, c * k)).reshape(16, c, k)


def _combine(coefficients, terms):
    """sum_i c_i terms_i for coefficients in {-1, 0, 1}, with no multiplications."""
    out = None
    for c, t in zip(coefficients, terms):
        if c:
            out = (t if c > 0 else -t) if out is None else (out + t if c > 0 else out - t)
    return out


def winograd_conv(x: jnp.ndarray, u: jnp.ndarray) -> jnp.ndarray:
    """3x3 convolution, stride 1, one pixel of zero padding (SAME), by F(2x2, 3x3): x [B, H, W, C] and a
    `winograd_kernel` u [16, C, K] -> [B, H, W, K]. Odd sizes are padded to even and cropped back."""
    b, h, w, c = x.shape
    th, tw = -(-h // 2), -(-w // 2)
    x = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    rows = [x[:, i:i + 2 * th:2] for i in range(4)]  # row i of every tile: [B, th, W + 2, C]
    rows = [_combine(coefficients, rows) for coefficients in _WINOGRAD_BT]
    tiles = []
    for row in rows:
        columns = [row[:, :, j:j + 2 * tw:2] for j in range(4)]  # [B, th, tw, C]
        tiles += [_combine(coefficients, columns) for coefficients in _WINOGRAD_BT]
    m = jnp.einsum("pnc,pck->pnk", jnp.stack(tiles).reshape(16, b * th * tw, c), u)
    m = m.reshape(4, 4, b, th, tw, u.shape[-1])
    rows = [_combine(coefficients, list(m)) for coefficients in _WINOGRAD_AT]  # 2 x [4, B, th, tw, K]
    out = [[_combine(coefficients, list(row)) for coefficients in _WINOGRAD_AT] for row in rows]
    y = jnp.stack([jnp.stack(row, axis=3) for row in out], axis=2)  # [B, th, 2, tw, 2, K]
    return y.reshape(b, 2 * th, 2 * tw, -1)[:, :h, :w]


class WinogradConv(nn.Module):
    """`lax.conv_general_dilated` as `nn.Conv` calls it, by `winograd_conv` where that applies (3x3 kernel, stride
    1, SAME or one-pixel padding, no dilation or groups, feature maps at most `max_size` pixels a side); otherwise
    the direct convolution. F(2x2, 3x3) does 4/9 of the products, and on small maps of many channels its transforms
    cost little beside them: with the kernels transformed, 2-3.6x faster than XLA:CPU's direct convolution on SD's
    8x8 to 16x16 levels, 1.5-1.8x at 32x32, slower at 64x64 (docs/stable_diffusion.md).

    The transformed kernel (16/9 of the kernel's size) is computed from the kernel on every call, unless the
    "winograd" collection holds it: `winograd_variables` computes the collection once, so that a sampling loop
    reads it instead of transforming every kernel at every step. Nothing is added to the parameters."""

    max_size: int

    @nn.compact
    def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, precision=None):
        ones = (1,) * (lhs.ndim - 2)
        applies = (lhs.ndim == 4 and rhs.shape[:2] == (3, 3) and tuple(window_strides) == ones
                   and tuple(lhs_dilation or ones) == ones and tuple(rhs_dilation or ones) == ones
                   and feature_group_count == 1 and max(lhs.shape[1:3]) <= self.max_size
                   and (padding == "SAME" or tuple(map(tuple, padding)) == ((1, 1), (1, 1))))
        if not applies:
            return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                                dimension_numbers, feature_group_count, precision=precision)
        if self.has_variable("winograd", "kernel"):
            u = self.get_variable("winograd", "kernel")
        else:
            u = winograd_kernel(rhs)
            if self.is_mutable_collection("winograd") and not self.is_initializing():
                self.put_variable("winograd", "kernel", u)
        return winograd_conv(lhs, u.astype(lhs.dtype))


def conv(features: int, winograd: int = 0, **kwargs) -> nn.Conv:
    """`nn.Conv(features, (3, 3), **kwargs)`, by `WinogradConv` on maps at most `winograd` pixels a side (0: never,
    exactly `nn.Conv`). The parameters are the same either way."""
    cls = functools.partial(WinogradConv, winograd) if winograd else None
    return nn.Conv(features, (3, 3), conv_general_dilated_cls=cls, **kwargs)


def winograd_variables(module: nn.Module, variables, *args, **kwargs):
    """The "winograd" collection of `module` applied to `args`: every transformed kernel its `WinogradConv`s use,
    to pass beside the parameters (`{**variables, **winograd}`) to later calls on inputs of the same shapes. Under
    `jax.jit` only the kernel transforms are computed (the forward pass's result is unused)."""
    _, state = module.apply(variables, *args, mutable=["winograd"], **kwargs)
    return state


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, conditioned by adding a projection of the embedding (DDPM's residual block)."""

    channels: int
    dropout: float = 0.0
    norm_groups: int = 8
    dtype: Dtype = jnp.float32
    norm_eps: float = 1e-6  # SD: 1e-5
    winograd: int = 0  # `conv`: 3x3 convolutions on maps at most this size by Winograd's F(2x2, 3x3)

    @nn.compact
    def __call__(self, x, emb, train: bool):
        h = nn.silu(group_norm(x.shape[-1], self.norm_groups, self.dtype, self.norm_eps)(x))
        h = conv(self.channels, self.winograd, dtype=self.dtype)(h)
        h = h + nn.Dense(self.channels, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(group_norm(self.channels, self.norm_groups, self.dtype, self.norm_eps)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        # Zero-initialised last conv: each block starts as the identity, which keeps early training stable.
        h = conv(self.channels, self.winograd, dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
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
    """Stride-2 3x3 convolution: halves the resolution. `symmetric` pads one pixel on every side as PyTorch's
    `padding=1` (SD's U-Net); the default, Flax's SAME, pads (0, 1) on even sizes: output j reads rows 2j..2j+2,
    not 2j-1..2j+1."""

    channels: int
    dtype: Dtype = jnp.float32
    symmetric: bool = False

    @nn.compact
    def __call__(self, x):
        padding = ((1, 1), (1, 1)) if self.symmetric else "SAME"
        return nn.Conv(self.channels, (3, 3), strides=(2, 2), padding=padding, dtype=self.dtype)(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    channels: int
    dtype: Dtype = jnp.float32
    winograd: int = 0  # `conv`

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return conv(self.channels, self.winograd, dtype=self.dtype)(x)


def chunked_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, chunk: int = 512) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d)) v for q [B, Q, H, d], k and v [B, K, H, d] -> [B, Q, H, d].

    Above `chunk` queries it runs one (batch, head) pair and `chunk` queries at a time (two nested `lax.map`s) over
    all the keys, so the largest score array is [chunk, K] (8 MB at SD 1.5's 4,096 tokens, 19 MB at SD 2.x's 9,216)
    instead of [B, H, Q, K] (1.07 GB at SD 1.5's 64x64 latents, batch 2, 8 heads). On this CPU, at SD 1.5's 4,096
    tokens, that ran 3x faster than the whole array and 1.7x faster than query x key blocks with an online softmax
    (0.34 vs 1.08 and 0.57 s; torch's fused kernel 0.31 s), and at its 1,024 tokens 2x faster than the whole array
    (0.037 vs 0.072 s): each block is two plain matmuls on contiguous [tokens, d] operands.
    Logits and softmax are float32 whatever the compute dtype (diffusers' `upcast_attention`)."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    b, n, h, d = q.shape
    if n <= chunk:
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    pad = -n % chunk
    groups = lambda a: a.transpose(0, 2, 1, 3).reshape(b * h, a.shape[1], d)  # noqa: E731  [B*H, tokens, d]
    q_blocks = groups(jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))).reshape(b * h, -1, chunk, d)

    def attend_group(args):  # [blocks, chunk, d], [K, d], [K, d] -> [blocks, chunk, d]
        q_group, k_group, v_group = args

        def attend(q_block):
            logits = jnp.matmul(q_block, k_group.T, preferred_element_type=jnp.float32) * scale
            return jnp.matmul(jax.nn.softmax(logits, axis=-1).astype(v.dtype), v_group)
        return jax.lax.map(attend, q_group)

    out = jax.lax.map(attend_group, (q_blocks, groups(k), groups(v)))  # [B*H, blocks, chunk, d]
    return out.reshape(b, h, n + pad, d)[:, :, :n].transpose(0, 2, 1, 3)


class Attention(nn.Module):
    """SD's attention layer (diffusers' `Attention` as its U-Net uses it): to_q / to_k / to_v without bias, to_out
    with bias, `num_heads` heads of width C / num_heads; keys and values from `context` (cross) or `x` (self)."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        b, n, c = x.shape
        context = x if context is None else context
        split = lambda a: a.reshape(a.shape[0], a.shape[1], self.num_heads, c // self.num_heads)  # noqa: E731
        q = split(nn.Dense(c, use_bias=False, dtype=self.dtype, name="to_q")(x))
        k = split(nn.Dense(c, use_bias=False, dtype=self.dtype, name="to_k")(context))
        v = split(nn.Dense(c, use_bias=False, dtype=self.dtype, name="to_v")(context))
        return nn.Dense(c, dtype=self.dtype, name="to_out_0")(chunked_attention(q, k, v).reshape(b, n, c))


class SpatialTransformer(nn.Module):
    """SD's attention block (diffusers' Transformer2DModel with one BasicTransformerBlock): GroupNorm (eps 1e-6),
    proj_in, then x + SelfAttn(LN(x)), x + CrossAttn(LN(x), context), x + GEGLU-FF(LN(x)) (LayerNorm eps 1e-5,
    feed-forward 4x wide, exact GELU on the gate), proj_out, plus the input. proj_in/out are Dense layers: SD 2.x's
    linear projections, and SD 1.x's 1x1 convolutions, which are the same map on the channels (only the order of the
    reshape differs, and it commutes with a per-pixel linear map). Parameter names follow diffusers'."""

    num_heads: int
    norm_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        b, h, w, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"SpatialTransformer: width {c} is not divisible by num_heads={self.num_heads}")
        y = group_norm(c, self.norm_groups, self.dtype, 1e-6, name="norm")(x).reshape(b, h * w, c)
        y = nn.Dense(c, dtype=self.dtype, name="proj_in")(y)
        norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
        y = y + Attention(self.num_heads, self.dtype, name="attn1")(norm("norm1")(y))
        y = y + Attention(self.num_heads, self.dtype, name="attn2")(norm("norm2")(y), context.astype(self.dtype))
        hidden, gate = jnp.split(nn.Dense(8 * c, dtype=self.dtype, name="ff_proj")(norm("norm3")(y)), 2, axis=-1)
        y = y + nn.Dense(c, dtype=self.dtype, name="ff_out")(hidden * nn.gelu(gate, approximate=False))
        return x + nn.Dense(c, dtype=self.dtype, name="proj_out")(y).reshape(b, h, w, c)
