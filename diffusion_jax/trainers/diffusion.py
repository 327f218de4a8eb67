"""Diffusion training and sampling under a condition: a class label (phases 1, 2) or a text (4).

`make_train_step` is the one per-device train step (lifted by `DataParallel`); `make_sampler` the one per-device
sampler (a `lax.scan` chain with classifier-free guidance). Both are pure and take the objective as one object
(`diffusion/process.py`: VP diffusion with eps/v targets, or rectified flow) and any backbone of the registry
(`models/__init__.py`: U-Net, DiT, MMDiT, chosen by `model.name`). `DiffusionTask` is the one task built on them
(backbone, process, optimizer, lifted step, cached samplers, state loader, training through the shared loop); the
task modules (`digits.py`, `txt2img.py`) only bring the data, the condition and their evaluation.

The condition is any pytree whose leaves have a leading batch axis: int labels [B] for digits, the frozen CLIP
text tower's outputs {'tokens': [B, L, W], 'mask': [B, L], 'pooled': [B, D]} for text. `null_cond` is ONE example's
"no condition" (the null class, or the empty caption's embeddings): classifier-free guidance drops to it in training
and guides away from it in sampling. One code path serves both conditionings.
"""
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from diffusion_jax import config as config_lib
from diffusion_jax import distributed
from diffusion_jax.config import ConfigError
from diffusion_jax.data import mnist, pipeline
from diffusion_jax.diffusion import process as process_lib
from diffusion_jax.diffusion import samplers, schedules
from diffusion_jax.images import save_grid
from diffusion_jax import models
from diffusion_jax.parallel import AXIS, MODES
from diffusion_jax.trainers.state import TrainState, apply_gradients
from diffusion_jax.trainers.task import Task

Process = Any  # process_lib.VP | process_lib.Flow


def build_model(model_config, *, num_classes: Optional[int], out_channels: int, text: bool = False) -> Any:
    """The backbone the `model` config group describes (`model.name`, default 'unet'; `models.build`)."""
    return models.build(model_config, num_classes=num_classes, out_channels=out_channels, text=text)


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


def make_train_step(model: Any, process: Process, tx: optax.GradientTransformation, *, seed: int,
                    cond_dropout: float, ema_decay: float, null_cond: Any = None) -> Callable:
    """Per-device `(state, batch) -> (state, metrics)` for batch {'image': [b,H,W,C] f32, 'cond': pytree [b, ...]}.

    Noise generator: a noise level t per example from the `process` (VP: t ~ U{0..T-1}; flow: t in (0, 1)),
    ε ~ N(0, I), x_t = process.noisy(x0, t, ε); the condition is replaced by `null_cond` (default: the null class
    `model.num_classes`) with probability `cond_dropout` (classifier-free guidance training). Loss: the process's MSE
    between the prediction and its target (VP: eps or v, optionally Min-SNR weighted; flow: the velocity ε - x0).
    Gradients and metrics are averaged over the device axis. Keys: (seed, step, example) for the noise, (seed, step,
    device) for dropout.
    """
    if null_cond is None:
        null_cond = np.int32(model.num_classes)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        x0 = batch["image"]
        b = x0.shape[0]
        step_key = jax.random.fold_in(jax.random.key(seed), state.step)
        keys = example_keys(jax.random.fold_in(step_key, 0), b)

        def draw(k):
            kt, kn, kd = jax.random.split(k, 3)
            return (process.draw_time(kt), jax.random.normal(kn, x0.shape[1:]),
                    jax.random.bernoulli(kd, cond_dropout))

        with jax.named_scope("noise"):  # scopes name the ops for profiling.profile; they change no numbers
            t, noise, drop = jax.vmap(draw)(keys)
            cond = drop_condition(batch["cond"], null_cond, drop)
            x_t = process.noisy(x0, t, noise)
            target = process.target(x0, t, noise)
        dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, 1), lax.axis_index(AXIS))

        def loss_fn(params):
            pred = model.apply(params, x_t, process.model_time(t), cond, train=True, rngs={"dropout": dropout_key})
            return process.loss(pred, target, t)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = lax.pmean(grads, AXIS)
        with jax.named_scope("optimizer"):
            new_state = apply_gradients(state, grads, tx, ema_decay)
        metrics = {"loss": lax.pmean(loss, AXIS), "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    return train_step


def make_sampler(model: Any, process: Process, image_shape, *, sampler: str, steps: int, eta: float,
                 clip_x0: bool = True, null_cond: Any = None,
                 guidance_interval: Sequence[float] = (0.0, 1.0)) -> Callable:
    """Per-device `(params, cond [b, ...], keys [b], guidance) -> images [b,H,W,C]` with classifier-free guidance.

    `null_cond` is one example's null condition (default: the null class). The guidance scale is a traced argument:
    changing it does not recompile. The step count is static, as is `guidance_interval` (lo, hi): guidance applies
    where the noise level is in [lo, hi] of its range (VP: t in [lo T, hi T]; flow: t in [lo, hi]), the conditional
    prediction elsewhere (`samplers.classifier_free_guidance`); (0, 1), every step, is the same program as before the
    knob existed. The `process` runs its own samplers (`process.sample`).
    """
    if null_cond is None:
        null_cond = np.int32(model.num_classes)
    image_shape = tuple(image_shape)
    interval = process_lib.guidance_interval(process, guidance_interval)

    def draw(params, cond, keys, guidance):
        apply = lambda x, t, c: model.apply(params, x, t, c)  # noqa: E731
        null = _broadcast(null_cond, keys.shape[0])
        model_fn = samplers.classifier_free_guidance(apply, cond, null, guidance, interval)
        return process.sample(sampler, model_fn, keys, image_shape, steps=steps, eta=eta, clip_x0=clip_x0)

    return draw


class Sampler:
    """Draws images for given conditions on all local devices, in fixed-size chunks, deterministically per seed.

    Example i of a call gets the key fold_in(key(seed), i), so a sample depends only on (seed, i, condition,
    guidance), not on the device count or chunk size.
    """

    def __init__(self, dp, model: Any, process: Process, image_shape, *, sampler: str, steps: int, eta: float,
                 batch_size: int, null_cond: Any = None, clip_x0: bool = True,
                 guidance_interval: Sequence[float] = (0.0, 1.0)):
        per_device = make_sampler(model, process, image_shape, sampler=sampler, steps=steps, eta=eta,
                                  null_cond=null_cond, clip_x0=clip_x0, guidance_interval=guidance_interval)
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


def validate_diffusion_config(config, *, image_size: int, positive: Sequence[str] = ()) -> None:
    """Checks the keys every diffusion task reads (`DiffusionTask`), plus the task's own `positive` integer keys."""
    check = config_lib
    check.check_data_source(config, mnist.SOURCES)
    check.check_choice(config, "diffusion.process", process_lib.PROCESSES)
    flow = config.diffusion.process == "flow"
    check.check_choice(config, "train.parallel", MODES)
    for key in ("train.num_steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
                "train.max_to_keep", "sample.steps", "sample.batch_size", "eval.classifier_steps", *positive):
        check.check_number(config, key)
    for key in ("train.learning_rate", "train.grad_clip"):
        check.check_number(config, key, minimum=1e-12)
    for key in ("train.warmup_steps", "train.weight_decay", "train.sample_every", "sample.eta", "sample.guidance"):
        check.check_number(config, key, minimum=0)
    for key in ("diffusion.cond_dropout", "train.ema_decay"):
        check.check_number(config, key, minimum=0.0, maximum=1.0)
    if flow:
        check.check_choice(config, "diffusion.time_sampling", process_lib.TIME_SAMPLINGS)
        check.check_number(config, "diffusion.logit_mean", minimum=-float("inf"))
        check.check_number(config, "diffusion.logit_std", minimum=1e-12)
        check.check_number(config, "diffusion.shift", minimum=1e-12)
        if config.diffusion.get("loss_weighting", "none") != "none":
            raise ConfigError(f"config.diffusion.loss_weighting={config.diffusion.loss_weighting!r} weights the VP "
                              "process's timesteps; config.diffusion.process='flow' takes 'none'")
    else:
        check.check_choice(config, "diffusion.schedule", schedules.SCHEDULES)
        check.check_choice(config, "diffusion.prediction", schedules.PREDICTIONS)
        check.check_choice(config, "diffusion.loss_weighting", schedules.LOSS_WEIGHTINGS)
        check.check_number(config, "diffusion.num_steps")
        check.check_number(config, "diffusion.snr_gamma", minimum=1e-12)
        if config.sample.steps > config.diffusion.num_steps:
            raise ConfigError(f"config.sample.steps={config.sample.steps} exceeds the training timesteps "
                              f"config.diffusion.num_steps={config.diffusion.num_steps}")
    usable = samplers.FLOW_SAMPLERS if flow else tuple(samplers.SAMPLERS)
    if config.sample.sampler not in usable:
        other = config.sample.sampler in samplers.FLOW_SAMPLERS + tuple(samplers.SAMPLERS)
        raise ConfigError(f"config.sample.sampler={config.sample.sampler!r} does not apply to config.diffusion."
                          f"process={config.diffusion.process!r}; use one of {usable}" if other else
                          f"config.sample.sampler={config.sample.sampler!r} is not one of {usable}")
    models.validate(config, image_size)
    interval = tuple(config.sample.guidance_interval)
    if (len(interval) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
            or not 0.0 <= interval[0] < interval[1] <= 1.0):
        raise ConfigError(f"config.sample.guidance_interval={interval!r} must be (lo, hi) with 0 <= lo < hi <= 1: the "
                          "part of the timesteps (0 clean, 1 pure noise) where guidance applies")
    if config.sample.eta and config.sample.sampler != "ddim":
        raise ConfigError(f"config.sample.eta={config.sample.eta} is read by config.sample.sampler='ddim' only, but "
                          f"the sampler is {config.sample.sampler!r}; set eta to 0")
    check.check_npz_path(config, "sample.output")


class DiffusionTask(Task):
    """The backbone, process, optimizer and data-parallel plumbing one diffusion config describes, under a condition.

    The condition is the parameter that tells the tasks apart: `null_cond` is ONE example's "no condition", and its
    structure, shapes and dtypes are those of every example's condition. Digits pass the null class (`num_classes`
    labels, `null_cond` defaulting to the label `num_classes`); text to image passes the empty caption's frozen text
    embeddings (`num_classes=None`). The constructor does no I/O: data, CLIP and checkpoints are loaded by the
    callers, once, and passed in as arrays. The config must have been validated (`validate_diffusion_config`).

    `clip_x0`: the samplers clip each predicted clean image to [-1, 1], right for pixels; latents (whose scaled
    values spread past +-1, as in Stable Diffusion) pass False.
    """

    def __init__(self, config, *, image_shape: Sequence[int], num_classes: Optional[int] = None,
                 null_cond: Any = None, clip_x0: bool = True):
        if null_cond is None and num_classes is None:
            raise ValueError("DiffusionTask needs num_classes (label condition) or null_cond (any other condition)")
        super().__init__(config)
        self.image_shape = tuple(image_shape)
        self.null_cond = np.int32(num_classes) if null_cond is None else null_cond
        self.model = build_model(config.model, num_classes=num_classes, out_channels=self.image_shape[-1],
                                 text=num_classes is None)
        self.process = process_lib.make_process(config.diffusion)
        self.clip_x0 = clip_x0
        self._samplers: dict[int, Sampler] = {}

    def init_params(self) -> Any:
        """Parameters from `seed`, initialised on a 2-example batch (cheap)."""
        x = np.zeros((2,) + self.image_shape, np.float32)
        cond = jax.tree.map(lambda n: np.broadcast_to(np.asarray(n), (2,) + np.shape(n)), self.null_cond)
        return self.model.init(jax.random.key(self.config.seed), x, np.zeros(2, np.int32), cond)

    def make_train_step(self) -> Callable:
        c = self.config
        return make_train_step(self.model, self.process, self.tx, seed=c.seed, cond_dropout=c.diffusion.cond_dropout,
                               ema_decay=c.train.ema_decay, null_cond=self.null_cond)

    def sampler(self, batch_size: Optional[int] = None) -> "Sampler":
        """The configured sampler drawing `batch_size` (default `sample.batch_size`) images per compiled call.

        Cached by chunk size: asking again (any call site) reuses the compiled program instead of building a new jit.
        """
        s = self.config.sample
        chunk = -(-(batch_size or s.batch_size) // self.dp.num_devices) * self.dp.num_devices
        if chunk not in self._samplers:
            self._samplers[chunk] = Sampler(self.dp, self.model, self.process, self.image_shape, sampler=s.sampler,
                                            steps=s.steps, eta=s.eta, batch_size=chunk, null_cond=self.null_cond,
                                            clip_x0=self.clip_x0, guidance_interval=tuple(s.guidance_interval))
        return self._samplers[chunk]

    def sampler_for(self, n: int) -> "Sampler":
        """The sampler for drawing `n` images: chunks of the next power of two >= n, at most `sample.batch_size`, so
        calls with varying counts compile once per bucket, not once per count."""
        return self.sampler(pipeline.bucket_size(n, self.config.sample.batch_size))

    def load_for_sampling(self, workdir: str, what: str) -> tuple[int, TrainState]:
        """(step, state) of the newest good checkpoint of `sample.checkpoint_workdir` ("" = this run's `workdir`), or
        of step `sample.checkpoint_step` when that is not 0 (e.g. to score a run's kept checkpoints).

        Sampling another run's checkpoint lets many sampling runs (e.g. a sweep over samplers and steps) share one
        trained model; the config must describe the same model, or the restore names the mismatched leaves. `what`
        names the model in the error when there is no checkpoint.
        """
        other = self.config.sample.checkpoint_workdir
        source = other or workdir
        key = (f"config.sample.checkpoint_workdir={source!r}" if other
               else "the run's own --workdir; set config.sample.checkpoint_workdir to sample another run's model")
        step = self.config.sample.get("checkpoint_step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"config.sample.checkpoint_step={step!r}: the step of a kept checkpoint, or 0 for the "
                              "newest good one")
        if step:
            key += f"; config.sample.checkpoint_step={step}"
        return self.load_state(source, f"({what}; {key}): train first with --mode=train --workdir={source}",
                               step=step or None)

    def train(self, workdir: str, get_batch: Callable[[int], dict], *, grid_cond: Any = None,
              grid_rows: Sequence[np.ndarray] = (), grid_titles: Optional[Sequence[str]] = None,
              description: str = "train", to_images: Callable[[np.ndarray], np.ndarray] = mnist.to_uint8_images
              ) -> TrainState:
        """Trains (or resumes) in `workdir` through the shared loop; returns the final host state.

        `get_batch(step)` is the global host batch {'image': [B,H,W,C] in [-1, 1], 'cond': pytree [B, ...]}. Every
        `train.sample_every` steps the EMA model draws `grid_cond` into `workdir/samples/step_*.png` (rows as in
        `save_grid`), made images by `to_images` (latent space: the decoder, then uint8).
        """
        t = self.config.train
        hooks = ()
        if t.sample_every and grid_cond is not None:
            sampler = self.sampler(len(jax.tree.leaves(grid_cond)[0]))

            def sample_grid(step: int, device_state) -> None:
                images = sampler(device_state.ema_params, grid_cond, seed=self.config.sample.seed,
                                 guidance=self.config.sample.guidance)
                if distributed.is_primary():
                    save_grid(os.path.join(workdir, "samples", f"step_{step:06d}.png"),
                              to_images(images), grid_rows, row_titles=grid_titles)
            hooks = ((t.sample_every, sample_grid),)
        return self.train_loop(workdir, get_batch, description=description, hooks=hooks)

    def params_for_sampling(self, state: TrainState) -> Any:
        """The weights sampling uses (EMA if `sample.use_ema`), placed on the devices."""
        return self.dp.replicate(state.ema_params if self.config.sample.use_ema else state.params)
