"""A small CNN digit classifier, trained in the project on real training digits only.

It judges generated digits two ways: its logits say which digit a sample looks like (class accuracy of a
class-conditioned model), and its penultimate layer gives the features for a Fréchet distance
(`diffusion_jax.evaluation.fid`), a digit-sized stand-in for the Inception features of FID.
It must never see generated samples during training, or it would grade the model on its own mistakes.

Images are float32 [N, 32, 32, 1] in [-1, 1]: 28x28 MNIST padded by 2 background pixels.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import distributed
from diffusion_jax.data import mnist

IMAGE_SHAPE = (32, 32, 1)
NUM_CLASSES = 10
PARAMS_FILENAME = "classifier.msgpack"
INFO_FILENAME = "classifier.json"

# Defaults: accurate enough on held-out real digits to grade samples, and trained in seconds on a CPU (docs/digits.md).
DEFAULT_STEPS = 1500
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
MAX_SHIFT = 2  # pixels of random translation used as augmentation


class DigitClassifier(nn.Module):
    """conv 32 /2 -> conv 64 /2 -> dense `feature_dim` (the features) -> 10 logits.

    Both 3x3 convolutions have stride 2 instead of being followed by max pooling: on a CPU the backward pass
    of XLA's max pool (select-and-scatter) makes a training step many times slower, and the strided network
    is already accurate enough (docs/digits.md).
    """

    channels: tuple[int, ...] = (32, 64)
    feature_dim: int = 128
    dropout_rate: float = 0.25

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Returns `(logits [N, 10], features [N, feature_dim])`; features is the penultimate layer.

        With `train=True` dropout is applied to the features before the logits layer (it needs a
        'dropout' rng); the returned features are always the ones before dropout.
        """
        for channels in self.channels:
            x = nn.relu(nn.Conv(channels, (3, 3), strides=(2, 2))(x))
        x = x.reshape((x.shape[0], -1))
        features = nn.relu(nn.Dense(self.feature_dim)(x))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        logits = nn.Dense(NUM_CLASSES)(h)
        return logits, features


def check_images(images: Any, name: str = "images", check_range: bool = True) -> np.ndarray:
    """Returns `images` as float32 numpy [N, 32, 32, 1]; ValueError naming `name` for another shape or NaN/inf.

    With `check_range` (for real digits) values outside [-1, 1] are refused too, which catches 0..255
    pixels passed by mistake; generated samples are clipped by the caller instead.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N>0, 32, 32, 1] (values in [-1, 1]), got {images.shape}")
    images = images.astype(np.float32, copy=False)
    if not np.all(np.isfinite(images)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if check_range and (images.min() < -1.0 - 1e-4 or images.max() > 1.0 + 1e-4):
        raise ValueError(f"{name} must be in [-1, 1] (0 -> -1, 255 -> 1), got values in "
                         f"[{images.min():g}, {images.max():g}]")
    return images


def check_labels(labels: Any, num: int, name: str = "labels") -> np.ndarray:
    """Returns `labels` as int32 [num] digits 0..9; ValueError naming `name` and the bad values otherwise."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num:
        raise ValueError(f"{name} must have shape [{num}] (one label per image), got {labels.shape}")
    valid = np.isin(labels, np.arange(NUM_CLASSES))
    if not np.all(valid):
        bad = np.unique(labels[~valid])
        raise ValueError(f"{name} must be digits 0..9, found {bad[:5].tolist()}")
    return labels.astype(np.int32)


@jax.jit
def _init(key: jax.Array) -> Any:
    return DigitClassifier().init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))["params"]


def init_params(seed: int = 0) -> Any:
    """Initial `DigitClassifier` parameters; also the template for loading saved ones."""
    return _init(jax.random.key(seed))


def _random_shift(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    """Translates each image by an independent integer offset in [-max_shift, max_shift] on both axes.

    The border is filled with the background value -1, so digits are moved, not wrapped around.
    """
    if max_shift == 0:
        return images
    n, h, w, _ = images.shape
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = jnp.pad(images, pad, constant_values=-1.0)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


@functools.partial(jax.jit, static_argnames=("batch_size", "max_shift"))
def _train_step(params, opt_state, data_x, data_y, key, step, num_steps, peak_lr, *, batch_size, max_shift):
    """One Adam step, with a cosine-decayed learning rate, on a batch drawn from the device-resident data.

    The batch (drawn with replacement), its shifts and the dropout mask all come from `fold_in(key, step)`.
    Step, step count and learning rate are traced and the function lives at module level, so every
    step and every `train_classifier` call with the same shapes reuse one compilation.
    """
    batch_key, shift_key, dropout_key = jax.random.split(jax.random.fold_in(key, step), 3)
    index = jax.random.randint(batch_key, (batch_size,), 0, data_x.shape[0])
    x = _random_shift(shift_key, data_x[index], max_shift)
    y = data_y[index]

    def loss_fn(p):
        logits, _ = DigitClassifier().apply({"params": p}, x, train=True, rngs={"dropout": dropout_key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    directions, opt_state = optax.scale_by_adam().update(grads, opt_state, params)
    lr = peak_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * step / num_steps))
    params = jax.tree.map(lambda p, d: p - lr * d, params, directions)
    return params, opt_state, loss


def train_classifier(
    images: Any,
    labels: Any,
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    max_shift: int = MAX_SHIFT,
) -> Any:
    """Trains a `DigitClassifier` on real digits with Adam and softmax cross-entropy; returns its params.

    The learning rate decays from `learning_rate` to 0 along a half cosine over `steps`.

    Each step draws a batch (with replacement), its ±`max_shift` px random shifts and its dropout mask
    from `fold_in(key(seed), step)`, so the result depends only on the data, `seed` and the settings.
    The data stays on the device and the step is jitted once for fixed shapes: no retracing per step.
    """
    images = check_images(images)
    labels = check_labels(labels, images.shape[0])
    if steps < 0 or batch_size <= 0 or max_shift < 0:
        raise ValueError(f"need steps >= 0, batch_size > 0, max_shift >= 0; got steps={steps}, "
                         f"batch_size={batch_size}, max_shift={max_shift}")
    init_key, train_key = jax.random.split(jax.random.key(seed))
    params = _init(init_key)
    opt_state = optax.scale_by_adam().init(params)
    data_x, data_y = jnp.asarray(images), jnp.asarray(labels)
    num_steps, peak_lr = jnp.asarray(max(steps, 1), jnp.float32), jnp.asarray(learning_rate, jnp.float32)
    for step in range(steps):
        params, opt_state, _ = _train_step(params, opt_state, data_x, data_y, train_key,
                                           jnp.asarray(step, jnp.int32), num_steps, peak_lr,
                                           batch_size=int(batch_size), max_shift=int(max_shift))
    return jax.device_get(params)


@jax.jit
def _apply(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return DigitClassifier().apply({"params": params}, images, train=False)


def classify(params: Any, images: Any, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(logits [N, 10], features [N, 128])` as numpy for `images`, in batches of `batch_size`.

    Every batch, the last included, is padded to `batch_size` images, so the network is compiled once
    per batch size whatever N is. Uses the default `DigitClassifier` architecture.
    """
    images = check_images(images)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    num = images.shape[0]
    logits, features = [], []
    for start in range(0, num, batch_size):
        batch = images[start:start + batch_size]
        real = batch.shape[0]
        if real < batch_size:
            batch = np.concatenate([batch, np.full((batch_size - real, *IMAGE_SHAPE), -1.0, np.float32)])
        batch_logits, batch_features = _apply(params, batch)
        logits.append(np.asarray(batch_logits)[:real])
        features.append(np.asarray(batch_features)[:real])
    return np.concatenate(logits), np.concatenate(features)


def accuracy(params: Any, images: Any, labels: Any) -> float:
    """Fraction of `images` whose predicted digit equals `labels`."""
    images = check_images(images)
    labels = check_labels(labels, images.shape[0])
    logits, _ = classify(params, images)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _atomic_write(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file, so an interrupted write leaves no torn file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_classifier(path: str) -> Any:
    """Loads parameters saved by `load_or_train_classifier` from `path` (a `.msgpack` file).

    Raises ValueError naming the file if it cannot be read or does not hold `DigitClassifier` parameters;
    the file is never deleted.
    """
    template = init_params(0)
    try:
        with open(path, "rb") as f:
            params = flax.serialization.from_bytes(template, f.read())
    except Exception as e:  # msgpack and flax raise many different types for damaged files
        raise ClassifierCacheError(f"cannot read classifier parameters from {path}: {type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:200]}") from None
    for (key_path, want), got in zip(jax.tree_util.tree_leaves_with_path(template), jax.tree.leaves(params)):
        if np.shape(got) != np.shape(want):
            name = jax.tree_util.keystr(key_path)
            raise ClassifierCacheError(f"classifier parameters in {path} have {name} of shape {np.shape(got)}, "
                                       f"expected {np.shape(want)}")
    return params


class ClassifierCacheError(ValueError):
    """A cached classifier cannot be used: trained with other settings, or unreadable. The message names the file
    and the config keys that differ; the cache is left in place."""


# The config keys that set each cached setting (for messages): the run's seed, eval.classifier_steps, the data source.
_SETTING_KEYS = {"seed": "seed", "steps": "eval.classifier_steps", "num_train": "data.source"}


def _cached_settings(directory: str) -> dict | None:
    """The settings a classifier cached in `directory` was trained with; None when there is no cache (or no info
    file beside it); ClassifierCacheError naming the file when the info cannot be read."""
    info_path = os.path.join(directory, INFO_FILENAME)
    if not (os.path.exists(os.path.join(directory, PARAMS_FILENAME)) and os.path.exists(info_path)):
        return None
    try:
        with open(info_path) as f:
            cached = json.load(f)["settings"]
        if not isinstance(cached, dict):
            raise TypeError(f"'settings' is a {type(cached).__name__}, not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClassifierCacheError(f"cannot read classifier info {info_path}: {type(e).__name__}: {e}") from None
    return cached


def _check_settings(directory: str, settings: dict) -> None:
    """ClassifierCacheError naming the file and config keys if `directory` caches a classifier trained otherwise."""
    cached = _cached_settings(directory)
    if cached is None:
        return
    differ = {k: (cached.get(k), v) for k, v in settings.items() if k in cached and cached[k] != v}
    if differ:
        keys = ", ".join(f"config.{_SETTING_KEYS[k]}" if k in _SETTING_KEYS else k for k in differ)
        raise ClassifierCacheError(
            f"the classifier cached in {os.path.join(directory, PARAMS_FILENAME)} was trained with other settings "
            f"(cached, requested): {differ} ({keys}); use the run's settings, another --workdir, or move the "
            f"folder {directory} aside")


def check_cache(directory: str, *, seed: int, steps: int) -> None:
    """Before any work: ClassifierCacheError naming the keys if `directory` caches a classifier of another seed or
    step count than the config asks for (the rest of its settings are checked when it is loaded)."""
    _check_settings(directory, {"seed": int(seed), "steps": int(steps)})


def load_or_train_classifier(
    directory: str,
    images: Any,
    labels: Any,
    *,
    seed: int = 0,
    heldout_images: Any = None,
    heldout_labels: Any = None,
    **train_kwargs: Any,
) -> Any:
    """Returns the classifier cached in `directory`, training and caching it first if there is none.

    The parameters go to `directory/classifier.msgpack` (flax.serialization) and a small
    `classifier.json` records the training settings, the time it took and, when `heldout_images` and
    `heldout_labels` are given, the held-out accuracy. A cached classifier trained with other settings
    (seed, steps, batch size, number of training digits) raises ClassifierCacheError rather than being
    silently reused; an unreadable cache raises it naming the file, which is left in place. Only process 0 writes
    the cache (every process of a multi-process run trains the same classifier from the same seed).
    `train_kwargs` go to `train_classifier` (steps, batch_size, learning_rate, max_shift).
    """
    unknown = set(train_kwargs) - {"steps", "batch_size", "learning_rate", "max_shift"}
    if unknown:
        raise TypeError(f"load_or_train_classifier got unknown training arguments {sorted(unknown)}")
    if (heldout_images is None) != (heldout_labels is None):
        raise ValueError("pass both heldout_images and heldout_labels, or neither")
    params_path = os.path.join(directory, PARAMS_FILENAME)
    info_path = os.path.join(directory, INFO_FILENAME)
    settings = {
        "seed": int(seed),
        "steps": int(train_kwargs.get("steps", DEFAULT_STEPS)),
        "batch_size": int(train_kwargs.get("batch_size", DEFAULT_BATCH_SIZE)),
        "learning_rate": float(train_kwargs.get("learning_rate", DEFAULT_LEARNING_RATE)),
        "max_shift": int(train_kwargs.get("max_shift", MAX_SHIFT)),
        "num_train": int(np.shape(images)[0]),
    }
    if os.path.exists(params_path):
        _check_settings(directory, settings)
        return load_classifier(params_path)

    start = time.perf_counter()
    params = train_classifier(images, labels, seed=seed, **train_kwargs)
    info: dict[str, Any] = {"settings": settings, "train_seconds": round(time.perf_counter() - start, 2)}
    if heldout_images is not None:
        info["heldout_accuracy"] = accuracy(params, heldout_images, heldout_labels)
        info["num_heldout"] = int(np.shape(heldout_images)[0])
    if distributed.is_primary():
        os.makedirs(directory, exist_ok=True)
        _atomic_write(params_path, flax.serialization.to_bytes(params))
        _atomic_write(info_path, json.dumps(info, indent=2).encode())
    return params


def load_or_train_on_source(directory: str, data_config, *, seed: int, steps: int) -> Any:
    """`load_or_train_classifier` on the real training digits of a config's `data` group (its MNIST source and
    TFDS data dir, `mnist.source_args`), held-out accuracy on its 'test' digits: the digit classifier of the
    attribute checkers (text to image, scenes)."""
    train_x, train_y = mnist.load_mnist(split="train", **mnist.source_args(data_config))
    test_x, test_y = mnist.load_mnist(split="test", **mnist.source_args(data_config))
    return load_or_train_classifier(directory, mnist.to_model_images(train_x), train_y, seed=seed,
                                    heldout_images=mnist.to_model_images(test_x), heldout_labels=test_y, steps=steps)
