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
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax import config as config_lib
from diffusion_jax import distributed
from diffusion_jax.config import ConfigError
from diffusion_jax.data import mnist, pipeline
from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.evaluation.digits import classifier_heldout_accuracy, evaluate_digit_samples
from diffusion_jax.images import info_path_of, write_samples
from diffusion_jax.trainers import diffusion
from diffusion_jax.trainers.state import TrainState

IMAGE_SHAPE = (32, 32, 1)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the digits task reads; raises ConfigError naming the first bad key."""
    diffusion.validate_diffusion_config(config, image_size=IMAGE_SHAPE[0], positive=("sample.num_per_class",))
    config_lib.check_npz_path(config, "eval.samples")
    parse_labels(config.sample.labels)


def parse_labels(text: str, key: str = "sample.labels") -> list[int]:
    """'3,9' -> [3, 9]; '' -> all digits. A label outside 0-9 or a non-integer is a ConfigError naming it."""
    if not str(text).strip():
        return list(range(mnist.NUM_CLASSES))
    labels = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            label = int(part)
        except ValueError:
            raise ConfigError(f"config.{key}: {part!r} is not a digit label; use comma-separated integers 0-9") from None
        if not 0 <= label < mnist.NUM_CLASSES:
            raise ConfigError(f"config.{key}: label {label} is outside 0-{mnist.NUM_CLASSES - 1}")
        labels.append(label)
    return labels


def make_task(config: ml_collections.ConfigDict) -> diffusion.DiffusionTask:
    """The diffusion task of a (validated) digits config: the condition is the label, the null class is 10."""
    return diffusion.DiffusionTask(config, image_shape=IMAGE_SHAPE, num_classes=mnist.NUM_CLASSES)


def train_data(config: ml_collections.ConfigDict) -> dict:
    """The training digits as model inputs: {'image': [N,32,32,1] in [-1, 1], 'cond': labels [N]}."""
    c = config.data
    images, labels = mnist.load_mnist(c.source, "train", tfds_data_dir=c.tfds_data_dir or None)
    return {"image": mnist.to_model_images(images), "cond": labels}


def _sample_path(config, workdir: str) -> str:
    return config.sample.output or os.path.join(workdir, "samples", "samples.npz")


def train(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Trains (or resumes) in `workdir`; then samples and evaluates if `train.final_sample`. Returns the host state."""
    validate_config(config)
    config_lib.check_batch_divides(config, "train.batch_size", jax.device_count())
    if config.train.final_sample:
        classifier_lib.check_cache(os.path.join(workdir, "classifier"), seed=config.seed,
                                   steps=config.eval.classifier_steps)
    task = make_task(config)
    data = train_data(config)
    t = config.train
    grid_labels = np.repeat(np.arange(mnist.NUM_CLASSES, dtype=np.int32), 4)
    state = task.train(workdir, lambda step: pipeline.get_batch(data, t.batch_size, config.seed, step),
                       grid_cond=grid_labels, grid_rows=[np.flatnonzero(grid_labels == d) for d in range(10)],
                       description="digits")
    if t.final_sample:
        _sample(config, workdir, task, state)
        _evaluate(config, workdir)
    return state


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Draws `sample.num_per_class` digits for each label in `sample.labels` from the latest checkpoint of
    `sample.checkpoint_workdir` (default: `workdir`); writes npz + PNG + JSON (sampling time, images/s); returns the
    npz path."""
    validate_config(config)
    task = make_task(config)
    _, state = task.load_for_sampling(workdir, "the digit model")
    return _sample(config, workdir, task, state)


def _sample(config: ml_collections.ConfigDict, workdir: str, task: diffusion.DiffusionTask, state: TrainState) -> str:
    s = config.sample
    digits = parse_labels(s.labels)
    labels = np.repeat(np.asarray(digits, np.int32), s.num_per_class)
    params = task.params_for_sampling(state)
    start = time.time()
    images = task.sampler_for(len(labels))(params, labels, seed=s.seed, guidance=s.guidance)  # as api.Digits draws
    seconds = time.time() - start
    path = _sample_path(config, workdir)
    # Wall-clock of the whole sampling call, including its one XLA compile (the steps run in a lax.scan, so the
    # compile barely depends on their number). Padding up to a full sample.batch_size chunk is drawn, not counted.
    info = {"sampling_seconds": seconds, "images_per_second": len(labels) / seconds, "num_images": len(labels),
            "sampler": s.sampler, "steps": s.steps, "eta": s.eta, "guidance": s.guidance,
            "guidance_interval": list(s.guidance_interval), "batch_size": s.batch_size,
            "num_devices": task.dp.num_devices, "use_ema": s.use_ema, "train_step": int(np.asarray(state.step)),
            "checkpoint_workdir": os.path.abspath(s.checkpoint_workdir or workdir)}
    if distributed.is_primary():
        write_samples(path, mnist.to_uint8_images(images), {"labels": labels.astype(np.int64)}, info,
                      [np.flatnonzero(labels == d) for d in digits], row_titles=[str(d) for d in digits])
    logging.info("drew %d digits (%s, %d steps, guidance %.2f) in %.1f s -> %s", len(labels), s.sampler, s.steps,
                 s.guidance, seconds, path)
    print(f"sampled {len(labels)} digits in {seconds:.1f} s ({len(labels) / seconds:.1f} images/s) -> {path}")
    return path


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Scores the samples at `eval.samples` (default `sample.output`) with the project's digit classifier.

    Reports the fraction classified as the requested digit (overall and per class) and the Fréchet distance in the
    classifier's feature space to the held-out real digits, beside the real-vs-real floor at the same sample count.
    """
    validate_config(config)
    classifier_lib.check_cache(os.path.join(workdir, "classifier"), seed=config.seed,
                               steps=config.eval.classifier_steps)
    return _evaluate(config, workdir)


def _evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
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
    if os.path.exists(info_path_of(path)):  # written by sample() beside the npz: how long drawing these digits took
        with open(info_path_of(path)) as f:
            info = json.load(f)
        for key in ("sampling_seconds", "images_per_second"):
            if key in info:
                result[key] = info[key]
    if distributed.is_primary():
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    per_class = " ".join(f"{d}:{a:.2f}" for d, a in result["per_class_accuracy"].items())
    print(f"eval: accuracy {result['accuracy']:.4f} ({result['num_samples']} samples; classifier held-out accuracy "
          f"{result['classifier_heldout_accuracy']:.4f})\n  per class {per_class}\n"
          f"  Frechet distance {result['fd']:.3f} (real-vs-real floor {result['fd_floor']:.3f})")
    return result
