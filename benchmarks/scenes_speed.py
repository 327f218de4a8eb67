"""Latent vs pixel diffusion on 64x64 scenes: the U-Net train step of each preset, side by side in one run.

  python benchmarks/scenes_speed.py                   # default (latent) and pixel presets, all local devices
  python benchmarks/scenes_speed.py --train_steps=10 --cpu_devices=1
  python benchmarks/scenes_speed.py --dtype=bfloat16           # on a GPU/TPU: MFU against the chip's bf16 peak

Both presets of experiments/txt2img_scenes.py through the real code path (`DiffusionTask.train_step`, the lifted
per-device step) on pre-built device batches of random inputs of each space's shape (latents 16x16x4, pixels
64x64x3) and a random text condition of CLIP's shapes; weights are random (speed does not depend on them). Also
times what the latent space adds: encoding the training images once, and decoding each sample.
"""
import time

import jax
import numpy as np
from absl import app, flags

from diffusion_jax import profiling
from diffusion_jax.config import load_config
from diffusion_jax.distributed import split_cpu
from diffusion_jax.trainers import autoencoder, diffusion, txt2img

_CONFIG = flags.DEFINE_string("config", "experiments/txt2img_scenes.py", "config file (its '' and 'pixel' presets)")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", -1, "CPU devices, as python -m diffusion_jax.main --cpu_devices "
                                   "(-1: one per core; 1: one device using every core)")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20, "timed train steps per preset")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "alternating rounds (latent, pixel, latent, pixel, ...): the best counts")
_DTYPE = flags.DEFINE_enum("dtype", "", ["", "float32", "bfloat16"], "U-Net compute dtype ('' = the config's)")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "accelerator's dense bf16 TFLOP/s per chip for MFU (0: by device "
                           "kind)")


def _timer(config, shape, rng):
    """(task, a function timing `n` train steps in seconds per step, after one compile, FLOPs per example)."""
    null = jax.tree.map(lambda a: a[0], txt2img.stand_in_condition(config.clip.model, 1, rng))
    task = diffusion.DiffusionTask(config, image_shape=shape, null_cond=null)
    b = config.train.batch_size
    batches = [task.dp.shard_batch({"image": rng.normal(size=(b,) + tuple(shape)).astype(np.float32),
                                    "cond": txt2img.stand_in_condition(config.clip.model, b, rng)}) for _ in range(4)]
    state = [task.dp.replicate(jax.device_get(jax.jit(task.init_state)()))]
    step = task.train_step().lower(state[0], batches[0]).compile()
    state[0], metrics = step(state[0], batches[0])
    jax.block_until_ready(metrics)

    def time_steps(n: int) -> float:
        start = time.time()
        for s in range(n):
            state[0], m = step(state[0], batches[s % len(batches)])
        jax.block_until_ready(m)
        return (time.time() - start) / n
    return task, time_steps, profiling.flops_per_example(step, b, task.dp.num_devices)


def main(argv):
    del argv
    latent, pixel = load_config(_CONFIG.value), load_config(_CONFIG.value + ":pixel")
    for c in (latent, pixel):
        c.model.dtype = _DTYPE.value or c.model.dtype
    split_cpu(_CPU_DEVICES.value, latent.train.batch_size)  # before JAX starts its backend
    rng = np.random.default_rng(0)
    ae = autoencoder.AutoencoderTask(latent.autoencoder)  # random weights: speed does not depend on them
    codec = autoencoder.Codec(ae.model, jax.jit(ae.init_state)().params, scale=1.0, step=0)
    timers = {"latent": _timer(latent, codec.latent_shape, rng), "pixel": _timer(pixel, (64, 64, 3), rng)}
    best = {name: float("inf") for name in timers}
    for _ in range(_ROUNDS.value):  # alternate, so a drift of this machine's speed hits both
        for name, (_, time_steps, _) in timers.items():
            best[name] = min(best[name], time_steps(_TRAIN_STEPS.value))
    b = latent.train.batch_size
    task = timers["latent"][0]
    print(f"devices: {task.dp.num_devices} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"train batch {b}, best of {_ROUNDS.value} rounds of {_TRAIN_STEPS.value} steps")
    for name, (t, _, flops) in timers.items():
        params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(t.init_state).params))
        print(f"{name:>6} U-Net train step, input {'x'.join(map(str, t.image_shape))} on {t.config.model.patch_size}x"
              f"{t.config.model.patch_size} patches ({params / 1e6:.2f} M params, {t.config.model.dtype}): "
              f"{best[name] * 1e3:7.1f} ms/step, {b / best[name]:7.1f} images/s, "
              f"{profiling.utilisation(flops, b / best[name], jax.devices(), _PEAK.value)}")
    print(f"latent step is {best['pixel'] / best['latent']:.2f}x faster than the pixel step (same run)")
    images = rng.uniform(-1, 1, size=(500, 64, 64, 3)).astype(np.float32)
    codec.encode(images)  # compile
    start = time.time()
    latents = codec.encode(images)
    encode_s = (time.time() - start) / len(images)
    codec.decode(latents)
    start = time.time()
    codec.decode(latents)
    decode_s = (time.time() - start) / len(images)
    n = latent.data.train_copies * 4500
    print(f"latent space adds: encoding the {n} training scenes once {encode_s * n:.1f} s "
          f"({encode_s * 1e3:.2f} ms/image); decoding {decode_s * 1e3:.2f} ms per sampled image")


if __name__ == "__main__":
    app.run(main)
