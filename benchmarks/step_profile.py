"""Where the training step's milliseconds go: XLA op times from the JAX profiler, grouped by what each op does.

  python benchmarks/step_profile.py                                        # the digits preset
  python benchmarks/step_profile.py --config=experiments/txt2img_digits.py # the text-to-image U-Net
  python benchmarks/step_profile.py --config=experiments/digits.py --config.model.dtype=bfloat16

It compiles the real lifted train step of `trainers/diffusion.py` for the config (random weights and data; the
text-to-image condition is a random stand-in for CLIP's outputs with their shapes), runs `--steps` steps under the
profiler and prints, per kind of op (`diffusion_jax/profiling.py:op_kind`): milliseconds per step per device and
the share of the op time. Wall time per step is printed beside the op time: the difference is the host and waits.
The `--top` slowest single ops follow, with their JAX names.
"""
import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import profiling
from diffusion_jax import datasets
from diffusion_jax.distributed import split_cpu
from diffusion_jax.trainers import diffusion, digits, txt2img

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/digits.py", "config file[:preset] (digits or "
                                          "txt2img); --config.KEY=VALUE overrides, as in diffusion_jax.main")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", -1, "CPU devices (-1: one per core; 1: one device, every core)")
_STEPS = flags.DEFINE_integer("steps", 10, "profiled train steps (after one untraced)")
_TOP = flags.DEFINE_integer("top", 12, "slowest single ops to list")


def _task(config) -> tuple[diffusion.DiffusionTask, dict]:
    """The diffusion task of the config and one random global batch for it."""
    b = config.train.batch_size
    rng = np.random.default_rng(0)
    if config.task == "digits":
        digits.validate_config(config)
        task = digits.make_task(config)
        cond = (np.arange(b) % 10).astype(np.int32)
    else:
        txt2img.validate_config(config)
        if config.diffusion.space == "latent":
            raise SystemExit("latent space: profile the pixel preset, or see benchmarks/scenes_speed.py")
        null = jax.tree.map(lambda a: a[0], txt2img.stand_in_condition(config.clip.model, 1, rng))
        task = diffusion.DiffusionTask(config, image_shape=datasets.get(config.data.dataset).image_shape, null_cond=null)
        cond = txt2img.stand_in_condition(config.clip.model, b, rng)
    images = rng.uniform(-1, 1, (b,) + task.image_shape).astype(np.float32)
    return task, {"image": images, "cond": cond}


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    split_cpu(_CPU_DEVICES.value, config.train.batch_size)  # before JAX starts its backend
    task, batch = _task(config)
    dp = task.dp
    state = dp.replicate(jax.device_get(jax.jit(task.init_state)()))
    batches = [dp.shard_batch(batch)]
    compiled = task.train_step().lower(state, batches[0]).compile()
    result = profiling.profile(compiled, (state, batches[0]), num_calls=_STEPS.value, num_devices=dp.num_devices,
                               carry=lambda args, out: (out[0], args[1]))
    print(f"{config_flags.get_config_filename(flags.FLAGS['config'])}: {dp.num_devices} x {jax.devices()[0].device_kind}, batch "
          f"{config.train.batch_size}, dtype {config.model.dtype}, {_STEPS.value} profiled steps\n")
    print(profiling.format_profile(result))
    instructions, kernels = profiling.parse_hlo(compiled.as_text())
    print(f"\nslowest {_TOP.value} ops (ms per step, summed over devices):")
    for op, seconds in sorted(result["ops"].items(), key=lambda kv: -kv[1])[:_TOP.value]:
        opcode, name, shape = instructions.get(op, ("?", "", ()))
        print(f"  {1e3 * seconds:7.2f}  {profiling.op_kind(opcode, name, shape, kernels):34s} {op} {list(shape)} "
              f"{name.split('/', 1)[-1][-90:]}")


if __name__ == "__main__":
    app.run(main)
