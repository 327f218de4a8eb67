"""What every training task (diffusion, CLIP, autoencoder) shares, written once: the devices, the optimizer of the
`train` group, a fresh state, the lifted train step, training through the one loop, and the restore.

A task brings `init_params()` (from `config.seed`) and `make_train_step()` (the pure per-device step); the rest is
here. No I/O happens at construction: data and checkpoints are loaded by the callers.
"""
import os
from typing import Any, Callable, Optional, Sequence

import jax

from diffusion_jax.checkpoint import restore_latest
from diffusion_jax.parallel import DataParallel
from diffusion_jax.trainers import loop
from diffusion_jax.trainers.state import TrainState, make_optimizer


def optimizer_of(train_config) -> Any:
    """The optimizer the `train` config group describes (`state.make_optimizer`)."""
    t = train_config
    return make_optimizer(learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, num_steps=t.num_steps,
                          weight_decay=t.weight_decay, grad_clip=t.grad_clip)


class Task:
    """Config, data-parallel plumbing and optimizer of one (validated) config; subclasses add the model."""

    def __init__(self, config):
        self.config = config
        self.dp = DataParallel(config.train.parallel)
        self.tx = optimizer_of(config.train)
        self._train_step: Optional[Callable] = None

    def init_params(self) -> Any:
        """The model's initial parameters (from `config.seed`)."""
        raise NotImplementedError

    def make_train_step(self) -> Callable:
        """The pure per-device `(state, batch) -> (state, metrics)`."""
        raise NotImplementedError

    def init_state(self) -> TrainState:
        """A fresh train state: the initial parameters, their EMA and the optimizer state."""
        return TrainState.create(self.init_params(), self.tx)

    def train_step(self) -> Callable:
        """The lifted `(device_state, device_batch) -> (device_state, metrics)`, built (and compiled) once."""
        if self._train_step is None:
            self._train_step = self.dp.lift(self.make_train_step(), ("replicated", "sharded"),
                                            ("replicated", "replicated"), donate_argnums=(0,))
        return self._train_step

    def train_loop(self, workdir: str, get_batch: Callable[[int], dict], *, description: str,
                   hooks: Sequence = ()) -> TrainState:
        """Trains (or resumes) in `workdir` through the shared loop (`loop.train_loop`) with the `train` group's
        steps, logging and checkpointing; `get_batch(step)` is the global host batch. Returns the host state."""
        t = self.config.train
        return loop.train_loop(workdir=workdir, dp=self.dp, init_state=self.init_state, train_step=self.train_step(),
                               get_batch=get_batch, num_steps=t.num_steps, log_every=t.log_every,
                               checkpoint_every=t.checkpoint_every, max_to_keep=t.max_to_keep, hooks=hooks,
                               progress=t.progress, description=description)

    def load_state(self, workdir: str, hint: str, step: Optional[int] = None) -> tuple[int, TrainState]:
        """(step, state) of the newest good checkpoint in `workdir/checkpoints` (or of `step`); FileNotFoundError
        naming the folder and `hint` (what to run first) when there is none. A checkpoint of another model is
        refused, leaves named."""
        return restore_latest(os.path.join(workdir, "checkpoints"), jax.eval_shape(self.init_state), hint=hint,
                              step=step)
