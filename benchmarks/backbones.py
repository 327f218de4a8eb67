"""Train-step time of every backbone x objective on one task, side by side, and the step counts that give each the
U-Net preset's training wall time (what issue 26's equal-wall-time comparison trains).

  python benchmarks/backbones.py                                        # experiments/digits.py
  python benchmarks/backbones.py --config=experiments/txt2img_scenes.py # latent scenes (stand-in text condition)

For each preset variant ('' = the U-Net, '+dit', '+mmdit', each with and without '+flow') it builds the task of
`--config` with that variant, compiles its real lifted train step and times it on fixed random batches (labels, or a
random stand-in of CLIP's outputs for text to image: speed does not depend on the values). Rounds alternate the
variants so that this machine's drift falls on all of them; the median round counts. Equal wall time: steps =
the U-Net preset's `train.num_steps` x its step time / the variant's step time.
"""
import statistics
import time

import jax
import numpy as np
from absl import app, flags, logging

from diffusion_jax import datasets
from diffusion_jax.config import load_config
from diffusion_jax.distributed import split_cpu
from diffusion_jax.trainers import diffusion, digits, txt2img

_CONFIG = flags.DEFINE_string("config", "experiments/digits.py", "config file (its default preset is the U-Net)")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", -1, "CPU devices (-1: one per core; 1: one device, every core)")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "alternating timing rounds")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps per variant per round")
VARIANTS = ("", "flow", "dit", "dit+flow", "mmdit", "mmdit+flow")


def _entry(config):
    """[compiled step, device state, device batches] of one config's diffusion task, and its parameter count."""
    rng = np.random.default_rng(0)
    b = config.train.batch_size
    if config.task == "digits":
        task = digits.make_task(config)
        cond = lambda: rng.integers(0, 10, b).astype(np.int32)  # noqa: E731
    else:
        null = jax.tree.map(lambda a: a[0], txt2img.stand_in_condition(config.clip.model, 1, rng))
        shape = datasets.get(config.data.dataset).image_shape
        if config.diffusion.space == "latent":  # the autoencoder's latents: 1/f of the side, its latent channels
            f = 2 ** (len(config.autoencoder.model.channels) - 1)
            shape = (shape[0] // f, shape[1] // f, config.autoencoder.model.latent_channels)
        task = diffusion.DiffusionTask(config, image_shape=shape, null_cond=null, clip_x0=False)
        cond = lambda: txt2img.stand_in_condition(config.clip.model, b, rng)  # noqa: E731
    batches = [task.dp.shard_batch({"image": rng.uniform(-1, 1, (b,) + task.image_shape).astype(np.float32),
                                    "cond": cond()}) for _ in range(2)]
    state = task.dp.replicate(jax.device_get(jax.jit(task.init_state)()))
    compiled = task.train_step().lower(state, batches[0]).compile()
    state, metrics = compiled(state, batches[0])
    jax.block_until_ready(metrics)
    params = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(task.dp.unreplicate(state).params))
    return [compiled, state, batches], params


def _time(entry, n: int) -> float:
    compiled, state, batches = entry
    start = time.perf_counter()
    for s in range(n):
        state, metrics = compiled(state, batches[s % len(batches)])
    jax.block_until_ready(metrics)
    entry[1] = state
    return (time.perf_counter() - start) / n


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    base = load_config(_CONFIG.value)
    split_cpu(_CPU_DEVICES.value, base.train.batch_size)
    configs = {v: load_config(f"{_CONFIG.value}:{v}" if v else _CONFIG.value) for v in VARIANTS}
    entries, params = {}, {}
    for v, config in configs.items():
        entries[v], params[v] = _entry(config)
    times = {v: [] for v in VARIANTS}
    for _ in range(_ROUNDS.value):
        for v in VARIANTS:
            times[v].append(_time(entries[v], _STEPS.value))
    unet = statistics.median(times[""])
    budget = base.train.num_steps * unet
    print(f"{_CONFIG.value}: batch {base.train.batch_size}, {jax.device_count()} device(s), median of "
          f"{_ROUNDS.value} rounds x {_STEPS.value} steps; U-Net preset {base.train.num_steps} steps = "
          f"{budget / 60:.1f} min of train steps")
    print(f"  {'variant':<12} {'params':>10} {'s/step':>8} {'x U-Net':>8} {'steps at equal time':>20}")
    for v in VARIANTS:
        s = statistics.median(times[v])
        print(f"  {v or 'unet':<12} {params[v]:>10,} {s:>8.4f} {s / unet:>8.2f} {round(budget / s):>20}")


if __name__ == "__main__":
    app.run(main)
