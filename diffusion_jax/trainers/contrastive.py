"""Contrastive image-text losses over the GLOBAL batch: InfoNCE (CLIP) and pairwise sigmoid (SigLIP).

Both losses are written for one device's share of the batch, as every per-device function in this project is (see
`diffusion_jax.parallel`). With `axis_name=None` they are the plain single-device losses. With `axis_name` set
(inside a function lifted by `DataParallel.lift`), each device all-gathers the embeddings of every device along that
axis, so its local examples are contrasted against the negatives of the whole global batch, and it returns ITS SHARE
of the global loss: the value to `lax.pmean` over the axis. After that pmean the loss, and the `lax.pmean` of the
per-device gradients, equal the single-device loss and gradient over the whole global batch.

Why the gradients come out right: `lax.all_gather` transposes to a `psum_scatter`, so the cotangent that device d's
loss sends to device e's gathered embeddings flows back to device e. Each device's `jax.grad` therefore holds the
derivative of the SUM of all devices' losses with respect to its own copy of the parameters, and the `lax.pmean` of
those over devices is the derivative of the mean loss (tests/test_contrastive.py checks this in both lifts).

Conventions: embeddings are [per-device batch, dim] and should already be L2-normalised (the losses use plain dot
products, which are then cosine similarities); `logit_scale` is the MULTIPLIER t of the logits (CLIP's exp of the
learnable log-temperature, already exponentiated and clamped by the caller), not its logarithm. Everything is
computed in float32 whatever the input dtype.
"""
from typing import Hashable

import jax
import jax.numpy as jnp


def _check_embeddings(image_emb: jax.Array, text_emb: jax.Array) -> None:
    if image_emb.ndim != 2:
        raise ValueError(f"image_emb must be [batch, dim], got shape {image_emb.shape}")
    if text_emb.ndim != 2:
        raise ValueError(f"text_emb must be [batch, dim], got shape {text_emb.shape}")
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb {image_emb.shape} and text_emb {text_emb.shape} must have the same shape "
                         "(one text per image, same embedding dim)")


def _check_scalar(name: str, value) -> jax.Array:
    value = jnp.asarray(value, jnp.float32)
    if value.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
    return value


def _gather(x: jax.Array, axis_name: Hashable | None) -> tuple[jax.Array, jax.Array]:
    """Returns (global embeddings, global index of this device's first example)."""
    if axis_name is None:
        return x, jnp.asarray(0, jnp.int32)
    everyone = jax.lax.all_gather(x, axis_name, tiled=True)
    return everyone, jax.lax.axis_index(axis_name) * x.shape[0]


def infonce_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale, *,
                 axis_name: Hashable | None = None, negative_text_emb: jax.Array | None = None) -> jax.Array:
    """Symmetric InfoNCE loss of CLIP (Radford et al. 2021, Fig. 3 pseudocode) over the global batch.

    logits_ij = t * <x_i, y_j> for image i and text j of the global batch of B pairs; the loss is
    (1/2B) * sum_i [CE(row i of logits, label i) + CE(column i of logits, label i)],
    i.e. the mean of the image->text and text->image cross-entropies, the positive of each example being its own pair.

    With `axis_name`, this device holds b = B / devices pairs; it gathers both embeddings from all devices and computes
    only its own rows: its b images against all B texts, and its b texts against all B images, the positive of local
    example i being global index `axis_index * b + i`. It returns the mean over its 2b cross-entropies, which is this
    device's share: `lax.pmean(loss, axis_name)` is the global loss above. Without `axis_name`, the plain loss.

    Args:
      image_emb, text_emb: [b, d] L2-normalised embeddings of this device's pairs (row i of each belong together).
      logit_scale: scalar multiplier t (already exponentiated and clamped), not its logarithm.
      axis_name: the device axis (`diffusion_jax.parallel.AXIS`) when called inside a lifted per-device function.
      negative_text_emb: optional [n, d] hard-negative texts of this device (NegCLIP, Yuksekgonul et al. 2023: the
        caption with its attributes swapped), gathered like the texts and appended to the keys of the image->text
        cross-entropy only: every image must outscore them too; the text->image direction is unchanged.
    Returns:
      scalar float32: the per-device mean, to be `lax.pmean`ed by the caller when `axis_name` is set.
    """
    _check_embeddings(image_emb, text_emb)
    scale = _check_scalar("logit_scale", logit_scale)
    img = image_emb.astype(jnp.float32)
    txt = text_emb.astype(jnp.float32)
    all_img, offset = _gather(img, axis_name)
    all_txt, _ = _gather(txt, axis_name)
    labels = offset + jnp.arange(img.shape[0])
    text_keys = all_txt
    if negative_text_emb is not None:
        if negative_text_emb.ndim != 2 or negative_text_emb.shape[1] != txt.shape[1]:
            raise ValueError(f"negative_text_emb must be [n, {txt.shape[1]}], got shape {negative_text_emb.shape}")
        text_keys = jnp.concatenate([all_txt, _gather(negative_text_emb.astype(jnp.float32), axis_name)[0]])

    def cross_entropy(queries, keys):
        logits = scale * queries @ keys.T                              # [b, B (+ negatives)]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]  # [b]

    return 0.5 * (jnp.mean(cross_entropy(img, text_keys)) + jnp.mean(cross_entropy(txt, all_img)))


def sigmoid_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale, logit_bias, *,
                 axis_name: Hashable | None = None) -> jax.Array:
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, Eq. 1 / Algorithm 1) over the global batch.

    L = -(1/B) * sum_i sum_j log sigmoid(z_ij * (t * <x_i, y_j> + b)), z_ij = +1 if i == j else -1,
    summed over all B x B image-text pairs of the global batch and normalised by the global batch size B, as in the
    paper. Each pair is counted once (the loss is already symmetric in images and texts).

    With `axis_name`, this device gathers the texts of all devices and sums the terms of its own b image rows (its
    images against all B texts, positives at global index `axis_index * b + i`), divided by b: that is this device's
    share, and `lax.pmean(loss, axis_name)` = (1/devices) * sum_d S_d / b = (1/B) * sum over all pairs, the global
    loss above. Without `axis_name`, the plain loss.

    Args:
      image_emb, text_emb: [b, d] L2-normalised embeddings of this device's pairs (row i of each belong together).
      logit_scale: scalar multiplier t (already exponentiated; the paper initialises log t = log 10).
      logit_bias: scalar bias b (the paper initialises it to -10).
      axis_name: the device axis (`diffusion_jax.parallel.AXIS`) when called inside a lifted per-device function.
    Returns:
      scalar float32: the per-device share, to be `lax.pmean`ed by the caller when `axis_name` is set.
    """
    _check_embeddings(image_emb, text_emb)
    scale = _check_scalar("logit_scale", logit_scale)
    bias = _check_scalar("logit_bias", logit_bias)
    img = image_emb.astype(jnp.float32)
    txt = text_emb.astype(jnp.float32)
    all_txt, offset = _gather(txt, axis_name)
    b = img.shape[0]
    logits = scale * img @ all_txt.T + bias                             # [b, B]
    positive = (offset + jnp.arange(b))[:, None] == jnp.arange(all_txt.shape[0])[None, :]
    z = jnp.where(positive, 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / b
