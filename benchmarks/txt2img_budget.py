"""The text-to-image training budget: step time x steps of CLIP and of the U-Net, today's preset against the presets
before issue 13 and of issue 13, timed side by side in one run.

  python benchmarks/txt2img_budget.py                 # experiments/txt2img_digits.py, all local devices
  python benchmarks/txt2img_budget.py --rounds=5 --steps=20

Every preset is the default config of `--config` with `OTHER_PRESETS`' overrides on top ("now": none). For each preset it times the real lifted train steps: CLIP's (`trainers/clip.py`, on its
real captioned training batches) and the U-Net's (`trainers/diffusion.py`, on random images with a random stand-in of
CLIP's outputs: speed does not depend on the values). Rounds alternate the presets so that this machine's drift
falls on both; the median round counts. Training cost = CLIP step x CLIP steps + U-Net step x U-Net steps (what a
run from nothing spends in train steps; compiles, data and evaluation excluded). Quality of each preset comes from
its full run (docs/text_to_image.md), not from here.
"""
import statistics
import time

import jax
import numpy as np
from absl import app, flags, logging

from diffusion_jax import profiling
from diffusion_jax import datasets
from diffusion_jax.config import load_config
from diffusion_jax.distributed import split_cpu
from diffusion_jax.sweep.points import check_point
from diffusion_jax.trainers import clip, diffusion, txt2img

_CONFIG = flags.DEFINE_string("config", "experiments/txt2img_digits.py", "config file[:preset]")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", -1, "CPU devices (-1: one per core; 1: one device, every core)")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "alternating timing rounds")
_STEPS = flags.DEFINE_integer("steps", 15, "timed steps per model per round")
_DTYPE = flags.DEFINE_enum("dtype", "", ["", "float32", "bfloat16"], "U-Net compute dtype ('' = the config's)")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "accelerator's dense bf16 TFLOP/s per chip for MFU (0: by device "
                           "kind)")

# The keys issue 13 changed in experiments/txt2img_digits.py (and config.unet_model), at their values before it, and
# issue 13's preset (half the cost, 93.4 / 83.0 % all correct), which issue 27 brought back to 64 x 7,500.
OTHER_PRESETS = {
    "before issue 13": {"clip.train.num_steps": 2000, "train.num_steps": 7500, "train.batch_size": 64,
                        "model.attention": "flax"},
    "issue 13": {"clip.train.num_steps": 1000, "train.num_steps": 7000, "train.batch_size": 32},
}


def _steps(config):
    """[(name, lifted step, device state, device batches, global batch size, FLOPs per example)] of CLIP and U-Net."""
    tokenizer = clip.build_tokenizer(config.clip)
    ct = clip.ClipTask(config.clip, tokenizer)
    data = {k: v for k, v in ct.data("train", model_images=False).items() if k in ("image", "ids", "mask")}
    clip_step = ct.dp.lift(clip.make_train_step(ct.model, ct.tx, config.clip.train.ema_decay,
                                                config.clip.train.loss),
                           ("replicated", "sharded"), ("replicated", "replicated"), donate_argnums=(0,))
    clip_batches = [ct.dp.shard_batch(ct.train_batch(data, s)) for s in range(2)]
    b, rng = config.train.batch_size, np.random.default_rng(0)
    null = jax.tree.map(lambda a: a[0], txt2img.stand_in_condition(config.clip.model, 1, rng))
    task = diffusion.DiffusionTask(config, image_shape=datasets.get(config.data.dataset).image_shape, null_cond=null)
    unet_batches = [task.dp.shard_batch({
        "image": rng.uniform(-1, 1, (b,) + task.image_shape).astype(np.float32),
        "cond": txt2img.stand_in_condition(config.clip.model, b, rng)}) for _ in range(2)]
    out = []
    for name, step, init, batches, size in (
            ("CLIP", clip_step, ct.init_state, clip_batches, config.clip.train.batch_size),
            ("U-Net", task.train_step(), task.init_state, unet_batches, b)):
        state = task.dp.replicate(jax.device_get(jax.jit(init)()))
        compiled = step.lower(state, batches[0]).compile()
        flops = profiling.flops_per_example(compiled, size, task.dp.num_devices)
        state, metrics = compiled(state, batches[0])
        jax.block_until_ready(metrics)
        out.append([name, compiled, state, batches, size, flops])
    return out


def _time(entry, n: int) -> float:
    _, compiled, state, batches, _, _ = entry
    start = time.perf_counter()
    for s in range(n):
        state, metrics = compiled(state, batches[s % len(batches)])
    jax.block_until_ready(metrics)
    entry[2] = state
    return (time.perf_counter() - start) / n


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    now = load_config(_CONFIG.value)
    if _DTYPE.value:
        now.model.dtype = _DTYPE.value
    presets = {name: check_point(now, overrides, name) for name, overrides in OTHER_PRESETS.items()}
    presets["now"] = now
    split_cpu(_CPU_DEVICES.value, min(c.train.batch_size for c in presets.values()))
    for c in presets.values():
        txt2img.validate_config(c)
    steps = {name: _steps(c) for name, c in presets.items()}
    times = {(p, e[0]): [] for p, entries in steps.items() for e in entries}
    for _ in range(_ROUNDS.value):
        for p, entries in steps.items():
            for entry in entries:
                times[(p, entry[0])].append(_time(entry, _STEPS.value))
    devices = jax.devices()
    print(f"{_CONFIG.value}: {len(devices)} x {devices[0].device_kind}, U-Net dtype {now.model.dtype}, "
          f"{_ROUNDS.value} alternating rounds of {_STEPS.value} steps each, medians\n")
    print("| preset | model | batch | ms per step | steps | step time x steps | throughput |")
    print("|---|---|---|---|---|---|---|")
    cost = {}
    for p, c in presets.items():
        cost[p] = 0.0
        for name, _, _, _, size, flops in steps[p]:
            seconds = statistics.median(times[(p, name)])
            n = c.clip.train.num_steps if name == "CLIP" else c.train.num_steps
            cost[p] += seconds * n
            print(f"| {p} | {name} | {size} | {1e3 * seconds:.1f} | {n:,} | {seconds * n / 60:.1f} min | "
                  f"{size / seconds:.0f} images/s, {profiling.utilisation(flops, size / seconds, devices, _PEAK.value)} |")
        print(f"| {p} | **CLIP + U-Net** | | | | **{cost[p] / 60:.1f} min** | |")
    print()
    for other in OTHER_PRESETS:
        print(f"training cost now / {other} = {cost['now'] / 60:.1f} / {cost[other] / 60:.1f} min "
              f"= {cost['now'] / cost[other]:.3f}")


if __name__ == "__main__":
    app.run(main)
