"""The shared training loop: resume, steps, non-finite guard, metrics, checkpoints, periodic hooks.

Every task (digits, CLIP, text-to-image) brings a lifted train step and a batch function; this loop owns the side
effects: the checkpoint directory in the workdir, `metrics.jsonl`, TensorBoard events and the progress bar.

Multi-process runs (see `diffusion_jax.distributed`): every process runs this loop with the same arguments. Each
computes the same global batch from the step and `DataParallel.shard_batch` keeps only its own share, so the global
batch is the sum of the per-process batches. Checkpoints are saved and restored by all processes together (orbax
coordinates them; only process 0 writes the files of the replicated host state and the step metadata). Only
process 0 writes `metrics.jsonl`, TensorBoard events and the progress bar; hooks run on every process (they may run
collectives such as sampling) and must write files on process 0 only.
"""
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import tqdm
from absl import logging

from diffusion_jax import distributed
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.parallel import DataParallel


def _import_summary_writer():
    """tensorboardX's SummaryWriter, imported without torch. tensorboardX's writer imports torch whenever it is
    installed, only to accept torch tensors (this package passes numpy); that loaded torch, a test-only extra here,
    into every training process of an install that has it, at about 2 s a process. Marking torch as missing for
    the duration of that one import makes tensorboardX take its no-torch path; a process that already imported torch
    is left as it is."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


SummaryWriter = _import_summary_writer()


class MetricsWriter:
    """Appends scalar metrics to `workdir/metrics.jsonl` and to TensorBoard event files in `workdir/tensorboard`.

    A run that resumes from step `start_step` first drops the rows after it (written before a kill, by steps that
    are now run again), so the file holds each step once, as an uninterrupted run writes it.
    """

    def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard")) if enabled else None
        if enabled and os.path.exists(self.path):
            with open(self.path) as f:
                lines = f.read().splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= start_step]
            if len(kept) < len(lines):
                with open(self.path + ".tmp", "w") as f:
                    f.write("".join(line + "\n" for line in kept))
                os.replace(self.path + ".tmp", self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in metrics.items():
            self._tb.add_scalar(k, float(v), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def restore_or_init(checkpointer: Checkpointer, init_state: Callable[[], Any]) -> tuple[int, Any]:
    """Returns (step, host state): the latest good checkpoint if there is one, else a fresh `init_state()`.

    The abstract state comes from `jax.eval_shape`, so a mismatched checkpoint is refused (with the leaves named)
    before anything is computed or written.
    """
    abstract = jax.eval_shape(init_state)
    restored = checkpointer.restore(abstract)
    if restored is not None:
        step, state = restored
        logging.info("resumed from checkpoint step %d in %s", step, checkpointer.directory)
        return step, state
    return 0, jax.jit(init_state)()


def fetch_metrics(window: list) -> list[dict]:
    """The device metrics of the steps since the last fetch, as host floats: the loop's one device-to-host sync.

    Called at log and checkpoint steps only, so between them the host never waits for the device. A metric is a
    replicated scalar: a 0-d array under shard_map, one equal value per device ([devices]) under pmap, whose first
    entry is taken after the one transfer of the whole window.
    """
    return [{k: float(np.asarray(v).reshape(-1)[0]) for k, v in m.items()} for m in jax.device_get(window)]


def _check_finite(first_step: int, metrics: list[dict], workdir: str, last_saved: Optional[int]) -> None:
    """Raises FloatingPointError naming the first step (of the window starting at `first_step`) with a
    non-finite loss; the checkpoint of a non-finite state is never written."""
    for i, m in enumerate(metrics):
        loss = m["loss"]
        if not math.isfinite(loss):
            kept = (f"the last good checkpoint (step {last_saved}) is kept" if last_saved
                    else "no checkpoint was written")
            raise FloatingPointError(
                f"non-finite loss ({loss}) at training step {first_step + i} in {workdir}; training stopped and "
                f"{kept}. Lower train.learning_rate or check the data.")


def train_loop(*, workdir: str, dp: DataParallel, init_state: Callable[[], Any], train_step: Callable,
               get_batch: Callable[[int], dict], num_steps: int, log_every: int, checkpoint_every: int,
               max_to_keep: int = 3, hooks: tuple[tuple[int, Callable[[int, Any], None]], ...] = (),
               progress: bool = True, description: str = "train") -> Any:
    """Trains until step `num_steps`, resuming from `workdir/checkpoints`; returns the final host state.

    Args:
      train_step: lifted `(device_state, device_batch) -> (device_state, metrics)`; metrics are replicated scalars.
      get_batch: the GLOBAL host batch for a step, a pure function of the step (exact resume after a kill, and every
        process of a multi-process run computes the same batch; `dp.shard_batch` keeps this process's share).
      hooks: (every, fn) pairs; fn(step, device_state) runs after every `every` steps (e.g. sample grids).

    The host never waits for the device between log steps: metrics stay on the device until `fetch_metrics` at a
    log or checkpoint step (where a non-finite loss is caught, naming its step, before anything is saved), and the
    next batch is built and sent while the device runs the current step (JAX dispatches asynchronously).
    """
    os.makedirs(workdir, exist_ok=True)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep)
    step, host_state = restore_or_init(checkpointer, init_state)
    if step >= num_steps:
        checkpointer.close()
        return host_state
    state = dp.replicate(host_state)
    primary = distributed.is_primary()
    writer = MetricsWriter(workdir, enabled=primary, start_step=step)
    bar = tqdm.tqdm(total=num_steps, initial=step, desc=description, disable=not (progress and primary),
                    dynamic_ncols=True, mininterval=1.0)
    last_saved = checkpointer.latest_step()
    pending, logged, t_window = [], [], time.time()  # device metrics not fetched yet; host metrics not logged yet
    batch = dp.shard_batch(get_batch(step))
    try:
        while step < num_steps:
            state, metrics = train_step(state, batch)
            step += 1
            pending.append(metrics)
            if step < num_steps:  # prefetch: built on the host while the device runs the step just dispatched
                batch = dp.shard_batch(get_batch(step))
            log_now = step % log_every == 0 or step == num_steps
            save_now = step % checkpoint_every == 0 or step == num_steps
            if log_now or save_now:
                fetched = fetch_metrics(pending)
                _check_finite(step - len(pending) + 1, fetched, workdir, last_saved)
                logged += fetched
                pending = []
            if log_now:
                elapsed = time.time() - t_window
                means = {k: float(np.mean([m[k] for m in logged])) for k in logged[0]}
                means["steps_per_sec"] = len(logged) / max(elapsed, 1e-9)
                writer.write(step, means)
                bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
                logged, t_window = [], time.time()
            bar.update(1)
            if save_now:
                checkpointer.save(step, dp.unreplicate(state))
                last_saved = step
            for every, hook in hooks:
                if every and step % every == 0 and step != num_steps:
                    hook(step, state)
    finally:
        bar.close()
        writer.close()
        checkpointer.close()
    return dp.unreplicate(state)
