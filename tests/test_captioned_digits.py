"""Tests of the captioned-digits benchmark: rendering spec, captions, held-out pairs, determinism, TFDS round trip."""

import re

import numpy as np
import pytest
from PIL import Image

from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import mnist


@pytest.fixture(scope='module')
def digit():
    """A real training digit (a 3) whose pixels span many intensities."""
    images, labels = mnist.load_mnist('bundled', 'train')
    return images[np.flatnonzero(labels == 3)[0]]


@pytest.fixture(scope='module')
def train_full():
    return cd.make_dataset('train', seed=0)


@pytest.fixture(scope='module')
def test_full():
    return cd.make_dataset('test', seed=0)


def test_constants_match_spec():
    assert cd.COLORS == ('red', 'green', 'blue', 'yellow', 'cyan', 'magenta')
    assert cd.LAYOUTS == ('center', 'top left', 'top right', 'bottom left', 'bottom right')
    assert cd.HELDOUT_PAIRS == ((0, 'red'), (1, 'green'), (2, 'blue'), (3, 'yellow'), (4, 'cyan'),
                                (5, 'magenta'), (6, 'red'), (7, 'green'), (8, 'blue'), (9, 'yellow'))
    assert cd.is_heldout(6, 'red') and cd.is_heldout(9, 3) and not cd.is_heldout(6, 'green')


def test_render_center_placement_and_colour_formula(digit):
    assert len(np.unique(digit)) > 20  # Intermediate intensities exercise the formula.
    for name, rgb in cd.COLOR_RGB.items():
        canvas = cd.render(digit, name, 'center')
        assert canvas.dtype == np.uint8 and canvas.shape == (32, 32, 3)
        expected = np.rint(digit[..., None] / 255.0 * np.array(rgb)).astype(np.uint8)
        np.testing.assert_array_equal(canvas[2:30, 2:30], expected)
        outside = canvas.copy()
        outside[2:30, 2:30] = 0
        assert not outside.any()
    assert not cd.render(np.zeros((28, 28), np.uint8), 'magenta', 'center').any()
    red = cd.render(digit, 0, 0)  # Indices work like names.
    np.testing.assert_array_equal(red[2:30, 2:30, 0], digit)
    assert not red[..., 1:].any()
    yellow = cd.render(digit, 'yellow', 'center')
    np.testing.assert_array_equal(yellow[2:30, 2:30, 0], digit)
    np.testing.assert_array_equal(yellow[2:30, 2:30, 1], digit)
    assert not yellow[..., 2].any()


@pytest.mark.parametrize('layout, rows, cols', [
    ('top left', slice(0, 16), slice(0, 16)),
    ('top right', slice(0, 16), slice(16, 32)),
    ('bottom left', slice(16, 32), slice(0, 16)),
    ('bottom right', slice(16, 32), slice(16, 32)),
])
def test_render_quadrants(digit, layout, rows, cols):
    small = np.asarray(Image.fromarray(digit).resize((16, 16), Image.Resampling.LANCZOS))
    canvas = cd.render(digit, 'cyan', layout)
    np.testing.assert_array_equal(canvas[rows, cols, 1], small)
    np.testing.assert_array_equal(canvas[rows, cols, 2], small)
    assert small.sum() > 0.5 * digit.sum() * (16 / 28) ** 2  # The resize kept the stroke mass.
    outside = canvas.copy()
    outside[rows, cols, 1:] = 0
    assert not outside.any()


def test_render_rejects_bad_input(digit):
    with pytest.raises(ValueError, match='purple'):
        cd.render(digit, 'purple', 'center')
    with pytest.raises(ValueError, match='middle left'):
        cd.render(digit, 'red', 'middle left')
    with pytest.raises(ValueError, match='digit_image'):
        cd.render(digit.astype(np.float32), 'red', 'center')


def test_canonical_captions():
    assert cd.canonical_caption(3, 'red', 'top left') == 'a red 3 in the top left'
    assert cd.canonical_caption(7, 'cyan', 'center', numeral=False) == 'a cyan seven in the center'
    assert cd.canonical_caption(0, 5, 4) == 'a magenta 0 in the bottom right'
    assert cd.caption(3, 'red', 'top left', template=0, numeral=True) == 'a red 3 in the top left'
    with pytest.raises(ValueError, match='digit'):
        cd.canonical_caption(10, 'red', 'center')


def test_train_never_shows_heldout_pairs_and_eval_has_both(train_full, test_full):
    assert len(train_full['digit']) == 9000 and len(test_full['digit']) == 500  # 2 x 4,500 and 1 x 500.
    heldout = set(cd.HELDOUT_PAIRS)
    train_pairs = {(int(d), cd.COLORS[c]) for d, c in zip(train_full['digit'], train_full['color'])}
    assert not train_pairs & heldout
    assert len(train_pairs) == 50  # Every other (digit, colour) pair is seen.
    assert not train_full['heldout_combo'].any()
    flags = np.array([(int(d), cd.COLORS[c]) in heldout for d, c in zip(test_full['digit'], test_full['color'])])
    np.testing.assert_array_equal(test_full['heldout_combo'], flags)
    assert 0.4 < flags.mean() < 0.6
    assert {(int(d), cd.COLORS[c]) for d, c in zip(test_full['digit'][flags], test_full['color'][flags])} == heldout
    assert set(np.unique(test_full['layout'])) == set(range(5)) == set(np.unique(train_full['layout']))


def test_eval_uses_heldout_test_digits(test_full):
    test_images, _ = mnist.load_mnist('bundled', 'test')
    train_images, _ = mnist.load_mnist('bundled', 'train')
    centred = test_full['layout'] == 0
    index = np.flatnonzero(centred)[0]
    colour = np.array(cd.COLOR_RGB[cd.COLORS[test_full['color'][index]]])
    gray = test_full['image'][index, 2:30, 2:30, int(np.argmax(colour))]
    assert (test_images == gray).all(axis=(1, 2)).any()
    assert not (train_images == gray).all(axis=(1, 2)).any()


def test_arrays_format_and_consistency(test_full):
    data = test_full
    assert data['image'].dtype == np.uint8 and data['image'].shape == (500, 32, 32, 3)
    assert data['digit'].dtype == data['color'].dtype == data['layout'].dtype == np.int32
    assert data['heldout_combo'].dtype == bool
    assert all(type(text) is str for text in data['caption'])
    for i in range(40):
        text = data['caption'][i]
        digit = int(data['digit'][i])
        assert cd.COLORS[data['color'][i]] in text
        assert re.search(rf'\b({digit}|{cd.DIGIT_WORDS[digit]})\b', text), text


def test_deterministic_per_seed_and_prefix():
    first = cd.make_dataset('train', seed=5, num_examples=64)
    again = cd.make_dataset('train', seed=5, num_examples=64)
    other = cd.make_dataset('train', seed=6, num_examples=64)
    prefix = cd.make_dataset('train', seed=5, num_examples=16)
    canonical = cd.make_dataset('train', seed=5, num_examples=64, canonical_only=True)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        np.testing.assert_array_equal(first[key][:16], prefix[key])
        if key != 'caption':
            np.testing.assert_array_equal(first[key], canonical[key])
    assert not np.array_equal(first['image'], other['image'])
    assert list(first['caption']) != list(canonical['caption'])
    for i, text in enumerate(canonical['caption']):
        args = (int(canonical['digit'][i]), int(canonical['color'][i]), int(canonical['layout'][i]))
        assert text in (cd.canonical_caption(*args), cd.canonical_caption(*args, numeral=False))


def test_caption_vocabulary_variety(train_full):
    captions = list(train_full['caption'])
    assert len(set(captions)) > 1000
    text = ' '.join(captions)
    for phrase in ('in the center', 'in the middle', 'in the top left', 'top-left corner', 'small', 'tiny',
                   'large', 'big', ' 7 ', 'seven'):
        assert phrase in text, phrase
    layouts = train_full['layout']
    has_small = np.array([bool(re.search(r'\b(small|tiny)\b', c)) for c in captions])
    has_large = np.array([bool(re.search(r'\b(large|big)\b', c)) for c in captions])
    assert has_small.any() and has_large.any()
    assert (layouts[has_small] != 0).all() and (layouts[has_large] == 0).all()
    canonical = [c == cd.canonical_caption(int(d), int(k), int(l), numeral=c.split()[2].isdigit())
                 for c, d, k, l in zip(captions, train_full['digit'], train_full['color'], layouts)]
    assert 0.05 < np.mean(canonical) < 0.3


def test_tfds_builder_offline_round_trip(tmp_path):
    builder = cd.prepare_tfds(tmp_path, seed=2, num_examples=12)
    assert isinstance(builder, cd.CaptionedDigits)
    assert str(builder.info.version) == '1.0.0'
    for split in ('train', 'test'):
        loaded = cd.load_tfds(split, tmp_path)
        expected = cd.make_dataset(split, seed=2, num_examples=12)
        assert loaded.keys() == expected.keys()
        for key in expected:
            assert loaded[key].dtype == expected[key].dtype, key
            np.testing.assert_array_equal(loaded[key], expected[key])
    cd.prepare_tfds(tmp_path, seed=2, num_examples=12)  # Same settings: reuses the data.
    with pytest.raises(ValueError, match='seed'):
        cd.prepare_tfds(tmp_path, seed=3, num_examples=12)
    with pytest.raises(FileNotFoundError, match='prepare_tfds'):
        cd.load_tfds('train', tmp_path / 'empty')


def test_random_shift_translates_each_image_and_fills_with_zero():
    images = np.arange(3 * 6 * 6 * 2, dtype=np.uint8).reshape(3, 6, 6, 2) + 1
    shifted = cd.random_shift(images, 2, np.random.default_rng(0))
    assert shifted.shape == images.shape and shifted.dtype == images.dtype
    for original, moved in zip(images, shifted):
        # Some translation (dy, dx) in [-2, 2]^2 maps the original onto the shifted image, with zeros brought in.
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = np.zeros_like(original)
                src = original[max(0, -dy):6 - max(0, dy), max(0, -dx):6 - max(0, dx)]
                expected[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
                matches.append(np.array_equal(expected, moved))
        assert sum(matches) == 1
    np.testing.assert_array_equal(cd.random_shift(images, 2, np.random.default_rng(0)), shifted)  # pure in rng
    assert cd.random_shift(images, 0, np.random.default_rng(0)) is images
    with pytest.raises(ValueError, match="max_shift"):
        cd.random_shift(images, -1, np.random.default_rng(0))
