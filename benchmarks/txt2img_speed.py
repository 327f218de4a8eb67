"""Text-to-image speed: should the frozen CLIP text embeddings be cached per caption or computed in the step?

  python benchmarks/txt2img_speed.py                 # default preset, all local devices
  python benchmarks/txt2img_speed.py --train_steps=10 --num_samples=300
  python benchmarks/txt2img_speed.py --dtype=bfloat16        # on a GPU/TPU: MFU against the chip's bf16 peak

Times, on the real code paths (the lifted per-device train step of `trainers/diffusion.py`):
  cached   batches carry each caption's text-tower outputs, computed once before training (what txt2img does);
  in-step  batches carry token ids; the frozen text tower runs inside the step (under stop_gradient) first.
It also reports the one-off cost of caching every training caption, and guided sampling images/s. Weights are random
(speed does not depend on them), so no trained CLIP is needed.
"""
import time

import jax
import numpy as np
from absl import app, flags

from diffusion_jax import profiling
from diffusion_jax.config import load_config
from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import pipeline
from diffusion_jax.distributed import split_cpu
from diffusion_jax.models.clip import CLIP
from diffusion_jax.parallel import DataParallel
from diffusion_jax.text.tokenizer import Tokenizer
from diffusion_jax.trainers import diffusion
from diffusion_jax.trainers.state import TrainState, make_optimizer
from diffusion_jax.trainers.txt2img import IMAGE_SHAPE

_CONFIG = flags.DEFINE_string("config", "experiments/txt2img_digits.py", "config file[:preset]")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", -1, "CPU devices, as python -m diffusion_jax.main --cpu_devices "
                                   "(-1: one per core; 1: one device using every core)")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20, "timed train steps per variant")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 300, "images to draw (0 = skip sampling)")
_DTYPE = flags.DEFINE_enum("dtype", "", ["", "float32", "bfloat16"], "U-Net compute dtype ('' = the config's)")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "accelerator's dense bf16 TFLOP/s per chip for MFU (0: by device "
                           "kind)")


def _time_steps(step, state, batches, n):
    """(seconds per step, the compiled step) after one compile and one untimed step."""
    step = step.lower(state, batches[0]).compile()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    start = time.time()
    for s in range(n):
        state, metrics = step(state, batches[s % len(batches)])
    jax.block_until_ready(metrics)
    return (time.time() - start) / n, step


def main(argv):
    del argv
    c = load_config(_CONFIG.value)
    c.model.dtype = _DTYPE.value or c.model.dtype
    split_cpu(_CPU_DEVICES.value, c.train.batch_size)  # before JAX starts its backend
    dp = DataParallel(c.train.parallel)
    b = c.train.batch_size
    raw = cd.make_dataset("train", seed=0, num_examples=c.data.train_copies * 4500)
    tokenizer = Tokenizer.build(list(raw["caption"]), max_length=c.clip.model.max_length)
    m = c.clip.model
    clip_model = CLIP(vocab_size=tokenizer.vocab_size, max_length=m.max_length, embed_dim=m.embed_dim,
                      image_channels=tuple(m.image_channels), text_width=m.text_width, text_layers=m.text_layers,
                      text_heads=m.text_heads, norm_groups=m.norm_groups)
    ids, mask = tokenizer.encode(list(raw["caption"]))
    clip_params = jax.jit(clip_model.init)(jax.random.key(0), np.zeros((2,) + IMAGE_SHAPE, np.float32), ids[:2],
                                           mask[:2])
    encode = jax.jit(lambda p, i, k: clip_model.apply(p, i, k, method=CLIP.encode_text))
    encode(clip_params, ids[:500], mask[:500])[0].block_until_ready()
    start = time.time()
    pooled, tokens = [], []
    for s in range(0, len(ids), 500):
        p, t = encode(clip_params, ids[s:s + 500], mask[s:s + 500])
        pooled.append(np.asarray(p))
        tokens.append(np.asarray(t))
    cache_seconds = time.time() - start
    cond_all = {"tokens": np.concatenate(tokens), "mask": mask, "pooled": np.concatenate(pooled)}
    null = jax.tree.map(lambda a: a[0], cond_all)

    model = diffusion.build_model(c.model, num_classes=None, out_channels=3, text=True)
    process = diffusion.process_lib.VP(diffusion.schedules.make_schedule(c.diffusion.schedule, c.diffusion.num_steps),
                                       prediction="v")
    tx = make_optimizer(learning_rate=1e-3, warmup_steps=10, num_steps=1000, weight_decay=0.0, grad_clip=1.0)
    per_device = diffusion.make_train_step(model, process, tx, seed=0, cond_dropout=0.1, ema_decay=0.999,
                                           null_cond=null)

    def in_step(state, batch):
        pooled, tokens = encode_inner(batch["ids"], batch["mask"])
        cond = {"tokens": tokens, "mask": batch["mask"], "pooled": pooled}
        return per_device(state, {"image": batch["image"], "cond": jax.lax.stop_gradient(cond)})

    encode_inner = lambda i, k: clip_model.apply(clip_params, i, k, method=CLIP.encode_text)  # noqa: E731
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((2,) + IMAGE_SHAPE, np.float32), np.zeros(2, np.int32),
                                 jax.tree.map(lambda a: a[:2], cond_all))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(4 * b,) + IMAGE_SHAPE).astype(np.float32)
    cached_data = {"image": images, **jax.tree.map(lambda a: a[:4 * b], cond_all)}
    cached = [dp.shard_batch({"image": x["image"], "cond": {k: x[k] for k in ("tokens", "mask", "pooled")}})
              for x in (pipeline.get_batch(cached_data, b, 0, s) for s in range(4))]
    raw_batches = [dp.shard_batch(pipeline.get_batch({"image": images, "ids": ids[:4 * b], "mask": mask[:4 * b]},
                                                     b, 0, s)) for s in range(4)]
    results = {}
    for name, fn, batches in (("cached", per_device, cached), ("in-step", in_step, raw_batches)):
        step = dp.lift(fn, ("replicated", "sharded"), ("replicated", "replicated"), donate_argnums=(0,))
        state = dp.replicate(jax.device_get(TrainState.create(params, tx)))  # host copy: params and EMA are separate buffers (both donated)
        results[name] = _time_steps(step, state, batches, _TRAIN_STEPS.value)
    print(f"devices: {dp.num_devices} x {jax.devices()[0].device_kind} ({jax.default_backend()}), train batch {b}, "
          f"U-Net {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f} M params")
    print(f"caching the text condition of {len(ids)} captions (once, before training): {cache_seconds:.1f} s")
    for name, (seconds, compiled) in results.items():
        used = profiling.utilisation(profiling.flops_per_example(compiled, b, dp.num_devices), b / seconds,
                                     dp.devices, _PEAK.value)
        print(f"train step, text condition {name:>8}: {seconds * 1e3:7.1f} ms/step, {b / seconds:7.1f} images/s, "
              f"{used} ({c.model.dtype})")
    if _NUM_SAMPLES.value:
        s = c.sample
        sampler = diffusion.Sampler(dp, model, process, IMAGE_SHAPE, sampler=s.sampler, steps=s.steps, eta=s.eta,
                                    batch_size=_NUM_SAMPLES.value, null_cond=null)
        cond = jax.tree.map(lambda a: a[:_NUM_SAMPLES.value], cond_all)
        p = dp.replicate(params)
        sampler(p, cond, seed=0, guidance=3.0)
        start = time.time()
        sampler(p, cond, seed=1, guidance=3.0)
        seconds = time.time() - start
        print(f"sampling {_NUM_SAMPLES.value} images ({s.sampler} {s.steps} steps, guided): {seconds:.1f} s, "
              f"{_NUM_SAMPLES.value / seconds:.1f} images/s")


if __name__ == "__main__":
    app.run(main)
