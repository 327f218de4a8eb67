"""One process of tests/test_multihost.py: tiny digits training through the real `train_loop`, then sampling.

    python tests/multihost_worker.py --out DIR --run WORKDIR:STEPS[:PRESET] [--run ...]
        [--coordinator_address 127.0.0.1:PORT --num_processes 2 --process_id I]

Each `--run` trains (or resumes) in WORKDIR up to STEPS steps the model of experiments/digits.py:PRESET (default
'tiny'; e.g. 'tiny+dit+flow'), one compiled step a preset, and writes the returned host state's parameters to
DIR/run<k>_process<i>.npz; then 6 digits are drawn with the EMA parameters of the first run (two sampler chunks) into
DIR/samples_process<i>.npz. The optimizer is plain SGD: Adam turns the reduction-order
noise of near-zero gradients into full-size updates (see tests/test_parallel.py), SGD keeps runs comparable.
The device count comes from XLA_FLAGS, set by the caller.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BATCH_SIZE = 8


def _flat(tree) -> dict:
    import jax
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    parser.add_argument("--run", action="append", required=True, help="WORKDIR:STEPS[:PRESET]")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.time()

    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from diffusion_jax import distributed
    distributed.maybe_initialize(args.coordinator_address, args.num_processes, args.process_id)

    import numpy as np
    import optax

    from diffusion_jax.config import load_config
    from diffusion_jax.data import pipeline
    from diffusion_jax.parallel import DataParallel
    from diffusion_jax.trainers import diffusion, digits, loop

    built = {}

    def build(preset: str):
        """(config, task, lifted step) of a preset, built once."""
        if preset not in built:
            config = load_config(os.path.join(ROOT, f"experiments/digits.py:{preset}"))
            config.train.batch_size = BATCH_SIZE
            task = digits.make_task(config)
            task.tx = optax.sgd(0.05)
            c = config
            step = task.dp.lift(diffusion.make_train_step(task.model, task.process, task.tx, seed=c.seed,
                                                          cond_dropout=c.diffusion.cond_dropout,
                                                          ema_decay=c.train.ema_decay),
                                ("replicated", "sharded"), ("replicated", "replicated"), donate_argnums=(0,))
            built[preset] = config, task, step
        return built[preset]

    config, task, _ = build("tiny")
    c = config
    data = digits.train_data(config)
    me = jax.process_index()
    info = {"process_index": me, "process_count": jax.process_count(), "devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "dp_devices": task.dp.num_devices}
    try:
        DataParallel("pmap")
        info["pmap_error"] = None
    except ValueError as e:
        info["pmap_error"] = str(e)

    info["setup_seconds"] = time.time() - start
    first = None
    for k, run in enumerate(args.run):
        t0 = time.time()
        workdir, steps, *preset = run.split(":")
        _, run_task, step = build(preset[0] if preset else "tiny")
        state = loop.train_loop(workdir=workdir, dp=task.dp, init_state=run_task.init_state, train_step=step,
                                get_batch=lambda s: pipeline.get_batch(data, BATCH_SIZE, c.seed, s),
                                num_steps=int(steps), log_every=1, checkpoint_every=int(steps), progress=False)
        np.savez(os.path.join(args.out, f"run{k}_process{me}.npz"), step=np.asarray(state.step),
                 **{"params" + key: np.asarray(v) for key, v in _flat(state.params).items()},
                 **{"ema" + key: np.asarray(v) for key, v in _flat(state.ema_params).items()})
        first = (run_task, state) if first is None else first
        info[f"run{k}_seconds"] = time.time() - t0
    t0 = time.time()
    first_task, first_state = first
    sampler = diffusion.Sampler(task.dp, first_task.model, first_task.process, digits.IMAGE_SHAPE, sampler="ddim",
                                steps=2, eta=0.5, batch_size=4)
    images = sampler(task.dp.replicate(first_state.ema_params), np.arange(6, dtype=np.int32), seed=3, guidance=2.0)
    np.savez(os.path.join(args.out, f"samples_process{me}.npz"), images=images)
    info["sample_seconds"] = time.time() - t0
    info["seconds"] = time.time() - start
    print("WORKER " + json.dumps(info), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
