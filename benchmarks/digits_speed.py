"""Speed of the digits model: training images/s, sampling images/s, FLOPs per image (XLA cost analysis), FLOP/s.

  python benchmarks/digits_speed.py                          # default preset, float32, all local devices
  python benchmarks/digits_speed.py --dtype=bfloat16 --num_samples=1000 --train_steps=20
  python benchmarks/digits_speed.py --dtype=bfloat16 --batch_size=1024     # on a GPU/TPU: MFU vs its bf16 peak

It times the real code paths (the lifted train step and the lifted lax.scan sampler of `diffusion_jax.trainers`),
after one warm-up call each (reported separately: compile, plus for sampling one full chunk of images). FLOPs come
from XLA's cost analysis of the compiled single-device programs; achieved FLOP/s = FLOPs per image x images/s.

The same train step is timed three ways, side by side: on pre-built device batches (the step alone); through the real
`trainers.loop.train_loop` (batches built from the step on the host, metrics fetched at log steps only, the next batch
prefetched while a step runs); and through a loop that fetches each step's metrics before building the next batch
(what `train_loop` did before issue 14). The ratios say what the host side of the loop costs.

For scale it measures the peak the same devices reach on a large float32 matmul (one per device, in parallel) and
prints the train step's achieved FLOP/s as a fraction of it. On a GPU or TPU it also prints model FLOP utilisation
(MFU) of training and sampling against the chip's dense bfloat16 peak (`profiling.BF16_PEAK_TFLOPS` by device kind,
or `--peak_tflops`); run it there with `--dtype=bfloat16` and a batch that fills the chip. `--samplers` times other samplers beside the config's
(1,000 guided images each, same model), with the ratio of images/s to the first; their quality at each step count
comes from the samplers sweep (experiments/sweeps/digits_samplers.py), not from this untrained model.
"""
import dataclasses
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from diffusion_jax import profiling
from diffusion_jax.config import load_config
from diffusion_jax.data import pipeline
from diffusion_jax.distributed import split_cpu
from diffusion_jax.trainers import diffusion, digits, loop
from diffusion_jax.trainers.digits import IMAGE_SHAPE

_CONFIG = flags.DEFINE_string("config", "experiments/digits.py", "config file[:preset]")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", -1, "CPU devices, as python -m diffusion_jax.main --cpu_devices "
                                   "(-1: one per core; 1: one device using every core)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "model compute dtype")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20, "timed train steps (each of the three ways)")
_BATCH = flags.DEFINE_integer("batch_size", 0, "train batch size (0 = the config's)")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "images to draw")
_SAMPLERS = flags.DEFINE_list("samplers", ["ddim:50", "unipc:10", "dpmpp_2m:10", "unipc:5"],
                              "sampler:steps pairs timed side by side, images/s relative to the first (ddim:50 was "
                              "the default before issue 13)")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "accelerator's dense bf16 TFLOP/s per chip for MFU (0: look up "
                            "the device kind in profiling.BF16_PEAK_TFLOPS)")
_MATMUL = 2048  # matmul peak: (2048 x 2048) @ (2048 x 2048) float32 on each device


_LOG_EVERY = 10


def _loop_speeds(dp, step, state, batch_size: int, num_steps: int) -> tuple[float, float]:
    """Images/s of `step` through `loop.train_loop`, and through a loop that syncs on every step's metrics.

    Both build each batch on the host from 5,000 examples (the bundled MNIST's size) with `pipeline.get_batch`. The
    train_loop figure is the mean of its logged windows after the first (which holds the compile); its final
    checkpoint is written after the last window is timed.
    """
    rng = np.random.default_rng(1)
    data = {"image": rng.uniform(-1, 1, (5000,) + IMAGE_SHAPE).astype(np.float32),
            "cond": (np.arange(5000) % 10).astype(np.int32)}
    get_batch = lambda s: pipeline.get_batch(data, batch_size, 0, s)  # noqa: E731
    steps = _LOG_EVERY * (1 + -(-num_steps // _LOG_EVERY))
    with tempfile.TemporaryDirectory() as workdir:
        loop.train_loop(workdir=workdir, dp=dp, init_state=lambda: state, train_step=step, get_batch=get_batch,
                        num_steps=steps, log_every=_LOG_EVERY, checkpoint_every=10 * steps, progress=False)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rates = [json.loads(line)["steps_per_sec"] for line in f][1:]
    loop_ips = float(np.mean(rates)) * batch_size
    dstate = dp.replicate(state)
    dstate, metrics = step(dstate, dp.shard_batch(get_batch(0)))  # compiled already: one step to settle
    start = time.time()
    for s in range(1, steps - _LOG_EVERY + 1):
        dstate, metrics = step(dstate, dp.shard_batch(get_batch(s)))
        float(jax.device_get(metrics["loss"]))  # the host waits for this step before it builds the next batch
    synced_ips = (steps - _LOG_EVERY) * batch_size / (time.time() - start)
    return loop_ips, synced_ips


def _matmul_peak(dp) -> float:
    """GFLOP/s of all `dp` devices, each multiplying two 2048 x 2048 float32 matrices (the best of 5 timed rounds)."""
    step = dp.lift(lambda a, b: a @ b, ("sharded", "sharded"), "sharded")
    x = dp.shard_batch(np.random.default_rng(0).standard_normal((dp.num_devices * _MATMUL, _MATMUL), np.float32))
    jax.block_until_ready(step(x, x))
    best = float("inf")
    for _ in range(5):
        start = time.time()
        jax.block_until_ready(step(x, x))
        best = min(best, time.time() - start)
    return 2 * _MATMUL ** 3 * dp.num_devices / best / 1e9


def _sampler_speeds(config, params, specs) -> list[tuple[str, float]]:
    """Images/s of each "sampler:steps" in `specs` drawing `--num_samples` guided digits, after a warm-up call."""
    labels = np.arange(_NUM_SAMPLES.value) % 10
    speeds = []
    for spec in specs:
        name, steps = spec.split(":")
        c = config.copy_and_resolve_references()
        c.sample.sampler, c.sample.steps = name, int(steps)
        digits.validate_config(c)
        sampler = digits.make_task(c).sampler()
        sampler(params, labels[:1], seed=0, guidance=3.0)
        start = time.time()
        sampler(params, labels, seed=0, guidance=3.0)
        speeds.append((spec, _NUM_SAMPLES.value / (time.time() - start)))
    return speeds


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint file at INFO
        logging.set_verbosity(logging.WARNING)
    config = load_config(_CONFIG.value)
    split_cpu(_CPU_DEVICES.value, (_BATCH.value or config.train.batch_size))  # before JAX starts its backend
    config.model.dtype = _DTYPE.value
    if _BATCH.value:
        config.train.batch_size = _BATCH.value
    digits.validate_config(config)
    task = digits.make_task(config)
    dp, batch_size = task.dp, config.train.batch_size
    print(f"devices: {dp.num_devices} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"dtype {_DTYPE.value}, train batch {batch_size}")

    state = jax.device_get(jax.jit(task.init_state)())  # on the host: donated device copies must not alias it
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    x = jnp.zeros((batch_size,) + IMAGE_SHAPE)
    t = jnp.zeros(batch_size, jnp.int32)
    fwd_flops = profiling.compiled_flops(lambda p, x, t: task.model.apply(p, x, t, t), state.params, x, t)
    fwd_flops /= batch_size
    eps = dataclasses.replace(task.process, prediction="eps")
    per_device = diffusion.make_train_step(task.model, eps, task.tx, seed=0, cond_dropout=0.1, ema_decay=0.999)
    one = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    single = jax.shard_map(per_device, mesh=one, in_specs=(jax.P(), jax.P("batch")), out_specs=(jax.P(), jax.P()),
                           check_vma=False)
    batch = {"image": np.zeros((batch_size,) + IMAGE_SHAPE, np.float32), "cond": np.zeros(batch_size, np.int32)}
    train_flops = profiling.compiled_flops(single, state, batch) / batch_size

    step = dp.lift(per_device, ("replicated", "sharded"), ("replicated", "replicated"), donate_argnums=(0,))
    data = {"image": np.random.default_rng(0).uniform(-1, 1, (4 * batch_size,) + IMAGE_SHAPE).astype(np.float32),
            "cond": np.arange(4 * batch_size, dtype=np.int32) % 10}
    batches = [dp.shard_batch(pipeline.get_batch(data, batch_size, 0, s)) for s in range(4)]
    dstate = dp.replicate(state)
    start = time.time()
    dstate, metrics = step(dstate, batches[0])
    jax.block_until_ready(metrics)
    compile_train = time.time() - start
    start = time.time()
    for s in range(_TRAIN_STEPS.value):
        dstate, metrics = step(dstate, batches[s % 4])
    jax.block_until_ready(metrics)
    train_ips = _TRAIN_STEPS.value * batch_size / (time.time() - start)
    loop_ips, synced_ips = _loop_speeds(dp, step, state, batch_size, _TRAIN_STEPS.value)

    sampler = task.sampler()
    params = dstate.ema_params
    labels = np.arange(_NUM_SAMPLES.value) % 10
    start = time.time()
    sampler(params, labels[:1], seed=0, guidance=3.0)
    warmup_sample = time.time() - start  # compile + one full chunk (sample.batch_size images)
    start = time.time()
    images = sampler(params, labels, seed=0, guidance=3.0)
    sample_ips = len(images) / (time.time() - start)
    sample_flops = fwd_flops * 2 * config.sample.steps  # guided: conditional + unconditional call per step

    peak = _matmul_peak(dp)
    speeds = _sampler_speeds(config, params, _SAMPLERS.value) if _SAMPLERS.value else []

    print(f"model: {n_params / 1e6:.2f} M params; forward {fwd_flops / 1e6:.1f} MFLOP/image; "
          f"train step {train_flops / 1e6:.1f} MFLOP/image")
    used = lambda flops, ips: profiling.utilisation(flops, ips, dp.devices, _PEAK.value)  # noqa: E731
    print(f"train:  {train_ips:8.1f} images/s  ({used(train_flops, train_ips)}; compile {compile_train:.1f} s)")
    print(f"matmul peak: {peak:7.1f} GFLOP/s ({_MATMUL}^3 float32 on each of {dp.num_devices} devices); "
          f"train step at {train_flops * train_ips / 1e9 / peak:.0%} of it")
    print(f"train through the loop: {loop_ips:8.1f} images/s = {loop_ips / train_ips:.2f} x pre-built batches "
          f"(train_loop: batches from pipeline.get_batch, metrics fetched every {_LOG_EVERY} steps)")
    print(f"train, fetch every step: {synced_ips:8.1f} images/s = {synced_ips / train_ips:.2f} x pre-built batches "
          f"(the loop before issue 14); loop / fetch-every-step = {loop_ips / synced_ips:.2f}")
    print(f"sample: {sample_ips:8.1f} images/s  ({used(sample_flops, sample_ips)}; "
          f"{_NUM_SAMPLES.value} images, {config.sample.sampler} {config.sample.steps} steps, guided; "
          f"warm-up call {warmup_sample:.1f} s = compile + one chunk of {config.sample.batch_size})")
    for spec, ips in speeds:
        print(f"sample {spec:>12}: {ips:8.1f} images/s = {ips / speeds[0][1]:5.2f} x {speeds[0][0]} "
              f"({_NUM_SAMPLES.value} images, guided)")


if __name__ == "__main__":
    app.run(main)
