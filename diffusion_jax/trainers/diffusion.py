"""Noise-prediction diffusion training and sampling under a condition: a class label (phases 1, 2) or a text (4).

`make_train_step` is the one per-device train step (lifted by `DataParallel`); `make_sampler` the one per-device
sampler (a `lax.scan` chain with classifier-free guidance). Both are pure; files and logs live in the task modules.

The condition is any pytree whose leaves have a leading batch axis: int labels [B] for digits, the frozen CLIP
text tower's outputs {'tokens': [B, L, W], 'mask': [B, L], 'pooled': [B, D]} for text. `null_cond` is ONE example's
"no condition" (the null class, or the empty caption's embeddings): classifier-free guidance drops to it in training
and guides away from it in sampling. One code path serves both conditionings.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from diffusion_jax.diffusion import losses, samplers, schedules
from diffusion_jax.models.unet import UNet
from diffusion_jax.parallel import AXIS, DataParallel
from diffusion_jax.trainers.state import TrainState, apply_gradients

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_unet(model_config, *, num_classes: Optional[int], out_channels: int, text: bool = False) -> UNet:
    """The U-Net described by the `model` config group (explicit fields: the model never reads the config)."""
    return UNet(channels=tuple(model_config.channels), num_res_blocks=model_config.num_res_blocks,
                attention_resolutions=tuple(model_config.attention_resolutions), num_classes=num_classes, text=text,
                out_channels=out_channels, patch_size=model_config.patch_size, dropout=model_config.dropout,
                num_heads=model_config.num_heads, norm_groups=model_config.norm_groups,
                dtype=_DTYPES[model_config.dtype])


def example_keys(key: jax.Array, batch_size: int) -> jax.Array:
    """One key per example of this device's batch, folded from the example's index in the GLOBAL batch.

    The device index enters through the global index, so the randomness of an example does not depend on how the
    global batch is split: 1 device and 8 devices draw the same noise for the same example.
    """
    start = lax.axis_index(AXIS) * batch_size
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(batch_size))


def _broadcast(null_cond: Any, batch_size: int) -> Any:
    """One example's null condition, repeated along a new leading batch axis."""
    return jax.tree.map(lambda n: jnp.broadcast_to(n, (batch_size,) + jnp.shape(n)), null_cond)


def drop_condition(cond: Any, null_cond: Any, drop: jax.Array) -> Any:
    """Replaces example i's condition by the null condition where drop[i] (classifier-free guidance training)."""
    def pick(c, n):
        d = drop.reshape(drop.shape + (1,) * (c.ndim - 1))
        return jnp.where(d, jnp.asarray(n, c.dtype), c)
    return jax.tree.map(pick, cond, null_cond)


def make_train_step(model: UNet, schedule: schedules.Schedule, tx: optax.GradientTransformation, *, seed: int,
                    prediction: str, cond_dropout: float, ema_decay: float, null_cond: Any = None,
                    loss_weighting: str = "none", snr_gamma: float = 5.0) -> Callable:
    """Per-device `(state, batch) -> (state, metrics)` for batch {'image': [b,H,W,C] f32, 'cond': pytree [b, ...]}.

    Noise generator: t ~ U{0..T-1}, ε ~ N(0, I), x_t = q_sample(x0, t, ε); the condition is replaced by `null_cond`
    (default: the null class `model.num_classes`) with probability `cond_dropout` (classifier-free guidance
    training). Loss: MSE between the prediction and the eps (or v) target, weighted per example by
    `schedules.loss_weight` (`loss_weighting`: none | min_snr, with `snr_gamma`). Gradients and metrics are averaged
    over the device axis. Keys: (seed, step, example) for the noise, (seed, step, device) for dropout.
    """
    if null_cond is None:
        null_cond = np.int32(model.num_classes)
    schedules.check_loss_weighting(loss_weighting)
    num_t = schedule.num_steps

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        x0 = batch["image"]
        b = x0.shape[0]
        step_key = jax.random.fold_in(jax.random.key(seed), state.step)
        keys = example_keys(jax.random.fold_in(step_key, 0), b)

        def draw(k):
            kt, kn, kd = jax.random.split(k, 3)
            return (jax.random.randint(kt, (), 0, num_t), jax.random.normal(kn, x0.shape[1:]),
                    jax.random.bernoulli(kd, cond_dropout))

        t, noise, drop = jax.vmap(draw)(keys)
        cond = drop_condition(batch["cond"], null_cond, drop)
        x_t = schedules.q_sample(schedule, x0, t, noise)
        target = schedules.prediction_target(schedule, x0, t, noise, prediction)
        dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, 1), lax.axis_index(AXIS))
        weights = schedules.loss_weight(schedule, t, prediction, loss_weighting, snr_gamma)

        def loss_fn(params):
            pred = model.apply(params, x_t, t, cond, train=True, rngs={"dropout": dropout_key})
            if loss_weighting == "none":  # the plain mean: bitwise the loss of runs made before weighting existed
                return losses.noise_mse(pred, target)
            return losses.weighted_noise_mse(pred, target, weights)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = lax.pmean(grads, AXIS)
        new_state = apply_gradients(state, grads, tx, ema_decay)
        metrics = {"loss": lax.pmean(loss, AXIS), "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    return train_step


def make_sampler(model: UNet, schedule: schedules.Schedule, image_shape, *, sampler: str, steps: int, eta: float,
                 prediction: str, clip_x0: bool = True, null_cond: Any = None) -> Callable:
    """Per-device `(params, cond [b, ...], keys [b], guidance) -> images [b,H,W,C]` with classifier-free guidance.

    `null_cond` is one example's null condition (default: the null class). The guidance scale is a traced argument:
    changing it does not recompile. The step count is static.
    """
    if null_cond is None:
        null_cond = np.int32(model.num_classes)
    image_shape = tuple(image_shape)

    def draw(params, cond, keys, guidance):
        apply = lambda x, t, c: model.apply(params, x, t, c)  # noqa: E731
        null = _broadcast(null_cond, keys.shape[0])
        model_fn = samplers.classifier_free_guidance(apply, cond, null, guidance)
        return samplers.sample(sampler, model_fn, schedule, keys, image_shape, steps=steps, eta=eta,
                               prediction=prediction, clip_x0=clip_x0)

    return draw


class Sampler:
    """Draws images for given conditions on all local devices, in fixed-size chunks, deterministically per seed.

    Example i of a call gets the key fold_in(key(seed), i), so a sample depends only on (seed, i, condition,
    guidance), not on the device count or chunk size.
    """

    def __init__(self, dp: DataParallel, model: UNet, schedule: schedules.Schedule, image_shape, *, sampler: str,
                 steps: int, eta: float, prediction: str, batch_size: int, null_cond: Any = None):
        per_device = make_sampler(model, schedule, image_shape, sampler=sampler, steps=steps, eta=eta,
                                  prediction=prediction, null_cond=null_cond)
        self.dp = dp
        self.chunk = -(-batch_size // dp.num_devices) * dp.num_devices
        self._draw = dp.lift(per_device, ("replicated", "sharded", "sharded", "replicated"), "sharded")

    def __call__(self, params, cond: Any, *, seed: int, guidance: float) -> np.ndarray:
        """`params` as placed by `dp.replicate`; `cond` labels [N] or a pytree of [N, ...] arrays; returns float32
        images in [-1, 1], one per condition."""
        cond = jax.tree.map(np.asarray, cond)
        if not isinstance(cond, dict):
            cond = np.asarray(cond, np.int32)
        n = len(jax.tree.leaves(cond)[0])
        chunk = self.chunk  # always full chunks: one compiled program whatever the number of conditions
        total = -(-n // chunk) * chunk
        padded = jax.tree.map(lambda a: np.concatenate([a, np.zeros((total - n,) + a.shape[1:], a.dtype)]), cond)
        key = jax.random.key(seed)
        all_keys = np.asarray(jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))))
        g = self.dp.replicate(np.float32(guidance))
        out = []
        for start in range(0, total, chunk):
            batch = self.dp.shard_batch({"cond": jax.tree.map(lambda a: a[start:start + chunk], padded),
                                         "key": all_keys[start:start + chunk]})
            out.append(self.dp.gather_batch(self._draw(params, batch["cond"], batch["key"], g)))
        return np.concatenate(out)[:n]
