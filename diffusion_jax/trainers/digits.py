"""The digits task end to end: train a class-conditional U-Net, draw digits, evaluate them. Used by main.py and Colab.

Everything a run makes lives in its workdir:
  checkpoints/            orbax train states (resume from the latest good one)
  metrics.jsonl, tensorboard/
  samples/step_*.png      grids drawn during training
  samples/samples.npz     images (uint8 N x 32 x 32 x 1) and labels (int N); samples.png beside it, one row a digit
  samples/samples.json    how they were drawn: sampler, steps, sampling seconds and images/s (eval.json copies these)
  classifier/             the evaluation classifier (trained on real training digits only)
  eval.json               accuracy per class, Fréchet distance and its real-vs-real floor
"""
import json
import os
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax import config as config_lib
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.data import mnist, pipeline
from diffusion_jax.diffusion import schedules
from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.evaluation.digits import classifier_heldout_accuracy, evaluate_digit_samples
from diffusion_jax.images import save_grid
from diffusion_jax.parallel import DataParallel
from diffusion_jax.trainers import diffusion, loop
from diffusion_jax.trainers.state import TrainState, make_optimizer

IMAGE_SHAPE = (32, 32, 1)


class Digits:
    """The model, schedule, optimizer and data-parallel plumbing that one digits config describes."""

    def __init__(self, config: ml_collections.ConfigDict):
        config_lib.validate_digits_config(config)
        self.config = config
        self.dp = DataParallel(config.train.parallel)
        self.model = diffusion.build_unet(config.model, num_classes=mnist.NUM_CLASSES, out_channels=IMAGE_SHAPE[-1])
        self.schedule = schedules.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
        t = config.train
        self.tx = make_optimizer(learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, num_steps=t.num_steps,
                                 weight_decay=t.weight_decay, grad_clip=t.grad_clip)

    def init_state(self) -> TrainState:
        """A fresh train state (parameters from `seed`; initialised on a 2-example batch, which is cheap)."""
        x = np.zeros((2,) + IMAGE_SHAPE, np.float32)
        params = self.model.init(jax.random.key(self.config.seed), x, np.zeros(2, np.int32), np.zeros(2, np.int32))
        return TrainState.create(params, self.tx)

    def sampler(self, batch_size: Optional[int] = None) -> diffusion.Sampler:
        """The configured sampler, drawing `batch_size` (default `sample.batch_size`) images per compiled call."""
        s = self.config.sample
        return diffusion.Sampler(self.dp, self.model, self.schedule, IMAGE_SHAPE, sampler=s.sampler, steps=s.steps,
                                 eta=s.eta, prediction=self.config.diffusion.prediction,
                                 batch_size=batch_size or s.batch_size)

    def train_data(self) -> dict:
        c = self.config.data
        images, labels = mnist.load_mnist(c.source, "train", tfds_data_dir=c.tfds_data_dir or None)
        return {"image": mnist.to_model_images(images), "cond": labels}


def _sample_path(config, workdir: str) -> str:
    return config.sample.output or os.path.join(workdir, "samples", "samples.npz")


def _info_path(sample_path: str) -> str:
    """The JSON beside a samples npz that says how it was drawn (`samples.npz` -> `samples.json`)."""
    return sample_path[:-4] + ".json"


def _write_samples(path: str, images: np.ndarray, labels: np.ndarray, digits: list[int], info: dict) -> None:
    """Writes the npz, the PNG grid beside it (one row per digit) and `info` as JSON beside it; never overwrites an
    existing result silently (the previous npz and its JSON are moved aside under the same time stamp)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images_u8 = mnist.to_uint8_images(images)
    tmp = path + ".tmp.npz"
    np.savez(tmp, images=images_u8, labels=labels.astype(np.int64))
    info_path = _info_path(path)
    if os.path.exists(path):  # keep the previous result: a new sampling run must not destroy the last one
        stamp = time.strftime("-%Y%m%d-%H%M%S")
        os.replace(path, path[:-4] + stamp + ".npz")
        if os.path.exists(info_path):
            os.replace(info_path, path[:-4] + stamp + ".json")
    elif os.path.exists(info_path):  # a JSON without its npz describes nothing that exists any more
        os.remove(info_path)
    os.replace(tmp, path)
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(info_path + ".tmp", info_path)
    rows = [np.flatnonzero(labels == d) for d in digits]
    save_grid(path[:-4] + ".png", images_u8, rows, row_titles=[str(d) for d in digits])


def train(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Trains (or resumes) in `workdir`; then samples and evaluates if `train.final_sample`. Returns the host state."""
    task = Digits(config)
    data = task.train_data()
    t = config.train
    train_step = task.dp.lift(
        diffusion.make_train_step(task.model, task.schedule, task.tx, seed=config.seed,
                                  prediction=config.diffusion.prediction, cond_dropout=config.diffusion.cond_dropout,
                                  loss_weighting=config.diffusion.loss_weighting, snr_gamma=config.diffusion.snr_gamma,
                                  ema_decay=t.ema_decay),
        ("replicated", "sharded"), ("replicated", "replicated"), donate_argnums=(0,))
    grid_labels = np.repeat(np.arange(mnist.NUM_CLASSES), 4)
    grid_sampler = task.sampler(batch_size=len(grid_labels)) if t.sample_every else None

    def sample_grid(step: int, device_state) -> None:
        images = grid_sampler(device_state.ema_params, grid_labels, seed=config.sample.seed, guidance=config.sample.guidance)
        rows = [np.flatnonzero(grid_labels == d) for d in range(mnist.NUM_CLASSES)]
        if jax.process_index() == 0:
            save_grid(os.path.join(workdir, "samples", f"step_{step:06d}.png"), mnist.to_uint8_images(images), rows)

    state = loop.train_loop(
        workdir=workdir, dp=task.dp, init_state=task.init_state, train_step=train_step,
        get_batch=lambda step: pipeline.get_batch(data, t.batch_size, config.seed, step), num_steps=t.num_steps,
        log_every=t.log_every, checkpoint_every=t.checkpoint_every, max_to_keep=t.max_to_keep,
        hooks=((t.sample_every, sample_grid),), progress=t.progress, description="digits")
    if t.final_sample:
        sample(config, workdir, state=state, task=task)
        evaluate(config, workdir)
    return state


def _load_state(task: Digits, workdir: str) -> tuple[int, TrainState]:
    """(step, state) of the latest good checkpoint of `sample.checkpoint_workdir` ("" = this run's `workdir`).

    Sampling from another run's checkpoint lets many sampling runs (e.g. a sweep over DDIM steps) share one trained
    model; the config must describe the same model, or the restore names the mismatched leaves.
    """
    source = task.config.sample.get("checkpoint_workdir", "") or workdir
    key = (f"config.sample.checkpoint_workdir={source!r}" if task.config.sample.get("checkpoint_workdir", "")
           else "the run's own --workdir; set config.sample.checkpoint_workdir to sample another run's model")
    ckpt_dir = os.path.join(source, "checkpoints")
    hint = f"no checkpoint in {ckpt_dir} ({key}): train first with --mode=train --workdir={source}"
    if not os.path.isdir(ckpt_dir):  # checked first: opening a Checkpointer would create the folder
        raise FileNotFoundError(hint)
    with Checkpointer(ckpt_dir, max_to_keep=task.config.train.max_to_keep) as checkpointer:
        restored = checkpointer.restore(jax.eval_shape(task.init_state))
    if restored is None:
        raise FileNotFoundError(hint)
    return restored


def sample(config: ml_collections.ConfigDict, workdir: str, *, state: Optional[TrainState] = None,
           task: Optional[Digits] = None) -> str:
    """Draws `sample.num_per_class` digits for each label in `sample.labels`; writes npz + PNG + JSON (sampling time,
    images/s); returns the npz path. Without `state`, loads the latest checkpoint of `sample.checkpoint_workdir`
    (default: `workdir`)."""
    task = task or Digits(config)
    if state is None:
        _, state = _load_state(task, workdir)
    s = config.sample
    digits = config_lib.parse_labels(s.labels)
    labels = np.repeat(np.asarray(digits, np.int32), s.num_per_class)
    params = task.dp.replicate(state.ema_params if s.use_ema else state.params)
    start = time.time()
    images = task.sampler()(params, labels, seed=s.seed, guidance=s.guidance)
    seconds = time.time() - start
    path = _sample_path(config, workdir)
    # Wall-clock of the whole sampling call, including its one XLA compile (the steps run in a lax.scan, so the
    # compile barely depends on their number). Padding up to a full sample.batch_size chunk is drawn, not counted.
    info = {"sampling_seconds": seconds, "images_per_second": len(labels) / seconds, "num_images": len(labels),
            "sampler": s.sampler, "steps": s.steps, "eta": s.eta, "guidance": s.guidance, "batch_size": s.batch_size,
            "num_devices": task.dp.num_devices, "use_ema": s.use_ema, "train_step": int(np.asarray(state.step)),
            "checkpoint_workdir": os.path.abspath(s.get("checkpoint_workdir", "") or workdir)}
    if jax.process_index() == 0:
        _write_samples(path, images, labels, digits, info)
    logging.info("drew %d digits (%s, %d steps, guidance %.2f) in %.1f s -> %s", len(labels), s.sampler, s.steps,
                 s.guidance, seconds, path)
    print(f"sampled {len(labels)} digits in {seconds:.1f} s ({len(labels) / seconds:.1f} images/s) -> {path}")
    return path


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Scores the samples at `eval.samples` (default `sample.output`) with the project's digit classifier.

    Reports the fraction classified as the requested digit (overall and per class) and the Fréchet distance in the
    classifier's feature space to the held-out real digits, beside the real-vs-real floor at the same sample count.
    """
    config_lib.validate_digits_config(config)
    path = config.eval.samples or _sample_path(config, workdir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no samples at {path} (config.eval.samples / config.sample.output): run "
                                "--mode=sample first")
    with np.load(path) as f:
        if "images" not in f or "labels" not in f:
            raise ValueError(f"{path} must hold 'images' and 'labels' arrays (got {sorted(f.files)})")
        images, labels = f["images"], f["labels"]
    c = config.data
    train_images, train_labels = mnist.load_mnist(c.source, "train", tfds_data_dir=c.tfds_data_dir or None)
    test_images, test_labels = mnist.load_mnist(c.source, "test", tfds_data_dir=c.tfds_data_dir or None)
    train_x, test_x = mnist.to_model_images(train_images), mnist.to_model_images(test_images)
    start = time.time()
    params = classifier_lib.load_or_train_classifier(
        os.path.join(workdir, "classifier"), train_x, train_labels, seed=config.seed, heldout_images=test_x,
        heldout_labels=test_labels, steps=config.eval.classifier_steps)
    classifier_seconds = time.time() - start
    samples = images.astype(np.float32) / 127.5 - 1.0
    reference = train_x[np.random.default_rng(config.seed).permutation(len(train_x))[:len(samples)]]
    if len(reference) < len(samples):
        reference = train_x[np.random.default_rng(config.seed).integers(0, len(train_x), len(samples))]
    result = evaluate_digit_samples(params, samples, labels, test_x, reference)
    result["classifier_heldout_accuracy"] = classifier_heldout_accuracy(params, test_x, test_labels)
    result["classifier_seconds"] = classifier_seconds
    result["samples"] = os.path.abspath(path)
    if os.path.exists(_info_path(path)):  # written by sample() beside the npz: how long drawing these digits took
        with open(_info_path(path)) as f:
            info = json.load(f)
        for key in ("sampling_seconds", "images_per_second"):
            if key in info:
                result[key] = info[key]
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    per_class = " ".join(f"{d}:{a:.2f}" for d, a in result["per_class_accuracy"].items())
    print(f"eval: accuracy {result['accuracy']:.4f} ({result['num_samples']} samples; classifier held-out accuracy "
          f"{result['classifier_heldout_accuracy']:.4f})\n  per class {per_class}\n"
          f"  Frechet distance {result['fd']:.3f} (real-vs-real floor {result['fd_floor']:.3f})")
    return result
