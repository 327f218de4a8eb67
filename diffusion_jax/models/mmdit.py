"""A multimodal diffusion transformer (MMDiT; Esser et al. 2024, "Scaling Rectified Flow Transformers for
High-Resolution Image Synthesis", sec. 4 and fig. 2: Stable Diffusion 3's backbone).

Image patch tokens (as in DiT) and text tokens (the text encoder's tokens, projected to the width) run as two
streams, each with its own weights: adaLN-Zero modulation from the conditioning vector c (timestep embedding + pooled
text embedding), LayerNorm, q/k/v and out projections, MLP. The streams meet in one joint attention over the
concatenated sequence [image; text], so image and text tokens attend to each other; padded text tokens are masked out
as keys. A class-conditional MMDiT (no text tokens) has one stream: each block is then a DiT block. The
conditioning contract: `models/conditioning.py`.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.dit import Mlp, Transformer, adaln, attention, modulate

Dtype = Any


class JointBlock(nn.Module):
    """One MMDiT block over the image tokens x [B, N, D] and the text tokens txt [B, L, D] (or None), mask [B, L].

    `last`: the text stream's output is unused after the last block, so there it only supplies keys and values
    (adaLN shift and scale, no out projection or MLP; as SD3's last block) and None is returned for it.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    last: bool = False

    @nn.compact
    def __call__(self, x, c, txt=None, mask=None, *, train: bool = False):
        streams = {"image": x} if txt is None else {"image": x, "text": txt}
        width = x.shape[-1]
        head = width // self.num_heads
        mods, qkv = {}, []
        for name, h in streams.items():
            pre_only = name == "text" and self.last
            mods[name] = adaln(c, 2 if pre_only else 6, self.dtype, name=f"{name}_adaLN")
            h = modulate(h, *mods[name][:2], self.dtype)
            qkv.append([nn.DenseGeneral((self.num_heads, head), dtype=self.dtype, name=f"{name}_{kind}")(h)
                        for kind in ("query", "key", "value")])
        q, k, v = (jnp.concatenate(parts, axis=1) for parts in zip(*qkv))
        if txt is not None:  # every image token is a key; text tokens only where mask is True
            mask = jnp.concatenate([jnp.ones(x.shape[:2], bool), mask], axis=1)
        out = attention(q, k, v, mask)
        outs = {"image": out[:, :x.shape[1]], "text": out[:, x.shape[1]:]}

        results = []
        for name, h in streams.items():
            if name == "text" and self.last:
                results.append(None)
                continue
            _, _, gate1, shift2, scale2, gate2 = mods[name]
            h = h + gate1 * nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name=f"{name}_out")(outs[name])
            mlp = Mlp(int(self.mlp_ratio * width), self.dropout, self.dtype, name=f"{name}_mlp")
            results.append(h + gate2 * mlp(modulate(h, shift2, scale2, self.dtype), train))
        return results[0], (results[1] if txt is not None else None)


class MMDiT(Transformer):
    """MMDiT (fields: `Transformer`): `depth` joint blocks over the image and text streams."""

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        """Predicts the target [B, H, W, out_channels] for x [B, H, W, C] at timesteps t [B] given `cond`."""
        c, h = self.embed(x, t, cond)
        txt = mask = None
        if self.text:
            txt = nn.Dense(self.width, dtype=self.dtype, name="context_embed")(cond["tokens"].astype(self.dtype))
            mask = cond["mask"].astype(bool)
        for i in range(self.depth):
            block = JointBlock(self.num_heads, self.mlp_ratio, self.dropout, self.dtype, last=i == self.depth - 1)
            h, txt = block(h, c, txt, mask, train=train)
        return self.output(h, c, x)
