"""Training losses for diffusion models."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def noise_mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over all elements, as a float32 scalar (Ho et al. 2020, eq. 14, L_simple).

    Both inputs are cast to float32 first, so a bf16 model output does not lose
    precision in the loss. Shapes must match exactly: silent broadcasting of e.g.
    [B, H, W, C] against [B] would compute a wrong loss without any error.
    """
    if pred.shape != target.shape:
        raise ValueError(f"noise_mse: pred shape {pred.shape} != target shape {target.shape}.")
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.square(diff))


def weighted_noise_mse(pred: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """`noise_mse` with a per-example weight [B]: mean over examples of weight * (per-example MSE).

    With all weights 1 this equals `noise_mse`.
    """
    if pred.shape != target.shape:
        raise ValueError(f"weighted_noise_mse: pred shape {pred.shape} != target shape {target.shape}.")
    if weights.shape != pred.shape[:1]:
        raise ValueError(f"weighted_noise_mse: weights shape {weights.shape} != batch shape {pred.shape[:1]}.")
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    per_example = jnp.mean(jnp.square(diff).reshape(diff.shape[0], -1), axis=1)
    return jnp.mean(weights.astype(jnp.float32) * per_example)
