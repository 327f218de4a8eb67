"""Tests of the two-digit scenes benchmark: layout and colour spec, held-out pairs, captions, negatives, TFDS."""

import itertools

import numpy as np
import pytest

from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import mnist
from diffusion_jax.data import scenes as sc


@pytest.fixture(scope='module')
def train():
    return sc.make_dataset('train', seed=0, num_examples=3000)


@pytest.fixture(scope='module')
def test_full():
    return sc.make_dataset('test', seed=0)


def _scene(data, i):
    return tuple(map(int, data['digits'][i])), tuple(map(int, data['colors'][i])), int(data['relation'][i])


def _digit_index(split):
    """Maps the bytes of every source digit image of a split to its label."""
    images, labels = mnist.load_mnist('bundled', split)
    return {image.tobytes(): int(label) for image, label in zip(images, labels)}


def test_constants_match_spec():
    assert sc.RELATIONS == ('left of', 'right of', 'above', 'below')
    assert sc.CANVAS_SIZE == 64 and sc.DIGIT_SIZE == 28
    assert sc.HARD_NEGATIVE_KINDS == ('swap_colors', 'swap_digits', 'flip_relation')
    assert str(sc.TwoDigitScenes.VERSION) == '1.0.0'
    assert sc.is_heldout_scene((3, 7), ('yellow', 'red')) and sc.is_heldout_scene((3, 7), (0, 1))
    assert not sc.is_heldout_scene((3, 7), ('red', 'blue'))


def test_arrays_format(test_full):
    data = test_full
    n = 500  # One scene per bundled test digit.
    assert data['image'].dtype == np.uint8 and data['image'].shape == (n, 64, 64, 3)
    assert data['captions'].dtype == object and data['captions'].shape == (n, 2)
    assert all(type(text) is str for text in data['captions'].ravel())
    assert data['digits'].shape == data['colors'].shape == (n, 2)
    assert data['boxes'].shape == (n, 2, 2) and data['relation'].shape == data['heldout'].shape == (n,)
    for key in ('digits', 'colors', 'boxes', 'relation'):
        assert data[key].dtype == np.int32, key
    assert data['heldout'].dtype == bool
    assert set(np.unique(data['relation'])) == {0, 1, 2, 3}


def test_deterministic_per_seed_prefix_and_caption_count():
    first = sc.make_dataset('train', seed=5, num_examples=40)
    again = sc.make_dataset('train', seed=5, num_examples=40)
    other = sc.make_dataset('train', seed=6, num_examples=40)
    prefix = sc.make_dataset('train', seed=5, num_examples=10)
    many = sc.make_dataset('train', seed=5, num_examples=40, captions_per_image=8)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        np.testing.assert_array_equal(first[key][:10], prefix[key])
        if key != 'captions':
            np.testing.assert_array_equal(first[key], many[key])
    assert not np.array_equal(first['image'], other['image'])
    np.testing.assert_array_equal(many['captions'][:, :2], first['captions'])
    assert all(len(set(row)) == 8 for row in many['captions'])  # 2 forms x 2 x 2 numeral/word choices.
    with pytest.raises(ValueError, match='captions_per_image'):
        sc.make_dataset('train', seed=0, num_examples=2, captions_per_image=9)


def test_colours_differ_and_train_never_shows_heldout_pairs(train):
    assert (train['colors'][:, 0] != train['colors'][:, 1]).all()
    pairs = {(int(d), cd.COLORS[c]) for d, c in zip(train['digits'].ravel(), train['colors'].ravel())}
    assert not pairs & set(cd.HELDOUT_PAIRS)
    assert len(pairs) == 50  # Every seen pair shows up.
    assert not train['heldout'].any()


def test_test_split_alternates_heldout_and_seen_scenes(test_full):
    data = test_full
    assert (data['colors'][:, 0] != data['colors'][:, 1]).all()
    flags = np.array([sc.is_heldout_scene(d, c) for d, c in zip(data['digits'], data['colors'])])
    np.testing.assert_array_equal(data['heldout'], flags)
    np.testing.assert_array_equal(flags, np.arange(500) % 2 == 0)
    per_object = data['colors'] == data['digits'] % 6  # [N, 2]: which objects show their held-out pair.
    held = per_object[::2]
    assert held[:, 0].any() and held[:, 1].any() and (held[:, 0] & held[:, 1]).any() and (~held[:, 0]).any()
    heldout_pairs = {(int(d), cd.COLORS[c]) for d, c in zip(data['digits'][per_object], data['colors'][per_object])}
    assert heldout_pairs == set(cd.HELDOUT_PAIRS)


@pytest.mark.parametrize('relation', range(4))
def test_boxes_follow_the_relation_and_never_overlap(train, relation):
    boxes = train['boxes'][train['relation'] == relation]  # [M, 2 objects, (row, col)]
    axis = 1 if sc.RELATIONS[relation] in ('left of', 'right of') else 0
    near, far = set(range(5)), set(range(32, 37))
    a_range, b_range = (far, near) if sc.RELATIONS[relation] in ('right of', 'below') else (near, far)
    assert set(boxes[:, 0, axis]) == a_range and set(boxes[:, 1, axis]) == b_range
    assert set(boxes[:, 0, 1 - axis]) == set(boxes[:, 1, 1 - axis]) == set(range(37))
    assert len(boxes) > 500
    rows_apart = np.abs(boxes[:, 0, 0] - boxes[:, 1, 0]) >= 28
    cols_apart = np.abs(boxes[:, 0, 1] - boxes[:, 1, 1]) >= 28
    assert (rows_apart | cols_apart).all()


@pytest.mark.parametrize('split', ['train', 'test'])
def test_pixels_are_coloured_source_digits_in_their_boxes(train, test_full, split):
    data = train if split == 'train' else test_full
    own, other = _digit_index(split), _digit_index('test' if split == 'train' else 'train')
    for i in range(60):
        image = data['image'][i]
        rest, crops = image.copy(), set()
        for k in range(2):
            row, col = data['boxes'][i, k]
            crop = image[row:row + 28, col:col + 28]
            rgb = np.array(cd.COLOR_RGB[cd.COLORS[data['colors'][i, k]]])
            intensity = crop[..., int(np.argmax(rgb))]
            assert own.get(intensity.tobytes()) == data['digits'][i, k]  # A real digit of this split, right label.
            assert intensity.tobytes() not in other
            crops.add(intensity.tobytes())
            np.testing.assert_array_equal(crop, np.rint(intensity[..., None] / 255.0 * rgb).astype(np.uint8))
            rest[row:row + 28, col:col + 28] = 0
        assert not rest.any()  # Black outside the boxes.
        assert len(crops) == 2  # Two different digit images.


def test_render_scene_uses_the_colour_formula():
    digits = np.stack([np.arange(28 * 28).reshape(28, 28) % 256, np.full((28, 28), 200)]).astype(np.uint8)
    canvas = sc.render_scene(digits, ('yellow', 4), np.array([[0, 0], [36, 36]]))
    np.testing.assert_array_equal(canvas[:28, :28], np.rint(digits[0][..., None] / 255.0 * [255, 255, 0]))
    np.testing.assert_array_equal(canvas[36:, 36:], np.rint(digits[1][..., None] / 255.0 * [0, 255, 255]))
    assert canvas[28:36].sum() == canvas[:, 28:36].sum() == 0
    with pytest.raises(ValueError, match='outside'):
        sc.render_scene(digits, ('red', 'blue'), np.array([[0, 0], [37, 0]]))


def test_canonical_and_reversed_captions():
    scene = ((3, 7), ('red', 'blue'), 'left of')
    assert sc.canonical_caption(*scene, numeral=(True, False)) == 'a red 3 left of a blue seven'
    assert sc.canonical_caption(*sc.reverse(*scene), numeral=(False, True)) == 'a blue seven right of a red 3'
    assert sc.reverse((1, 2), (3, 4), 'below') == ((2, 1), (4, 3), 2)
    assert sc.normalize((1, 2), (3, 4), 'below') == ((2, 1), (4, 3), 2) == sc.normalize((2, 1), (4, 3), 'above')
    with pytest.raises(ValueError, match='near'):
        sc.canonical_caption((1, 2), (0, 1), 'near')


def test_captions_parse_back_to_the_scene(train):
    data = sc.make_dataset('test', seed=3, num_examples=40, captions_per_image=8)
    for i in range(40):
        scene = _scene(data, i)
        direct, reverse = data['captions'][i, :2]
        assert sc.parse_prompt(direct) == scene
        assert sc.parse_prompt(reverse) == sc.reverse(*scene)
        assert {sc.normalize(*sc.parse_prompt(text)) for text in data['captions'][i]} == {sc.normalize(*scene)}
    words = ' '.join(train['captions'].ravel())
    assert ' 7 ' in words and ' seven ' in words  # Both numerals and words are used.


def test_hard_negatives_differ_from_the_truth_by_the_named_change():
    for digits, colors, relation in itertools.product([(3, 7), (4, 4)], [(0, 2), (5, 1)], range(4)):
        truth = sc.normalize(digits, colors, relation)
        negatives = sc.hard_negatives(digits, colors, relation)
        assert tuple(negatives) == sc.HARD_NEGATIVE_KINDS
        expected = {
            'swap_colors': (digits, colors[::-1], relation),
            'swap_digits': None if digits[0] == digits[1] else (digits[::-1], colors, relation),
            'flip_relation': (digits, colors, (1, 0, 3, 2)[relation]),
        }
        for kind, text in negatives.items():
            if expected[kind] is None:
                assert text is None
                continue
            parsed = sc.parse_prompt(text)
            assert parsed == expected[kind], kind
            assert sc.normalize(*parsed) != truth, kind
    assert sc.hard_negatives((3, 7), ('red', 'blue'), 'left of') == {
        'swap_colors': 'a blue 3 left of a red 7',
        'swap_digits': 'a red 7 left of a blue 3',
        'flip_relation': 'a red 3 right of a blue 7',
    }
    with pytest.raises(ValueError, match='different colours'):
        sc.hard_negatives((3, 7), ('red', 0), 'left of')  # Swapping equal colours would change nothing.


@pytest.mark.parametrize('prompt, message', [
    ('a red 3', 'one object'),
    ('a red 3 left of', 'one object'),
    ('a red 3 left of a blue 7 above a green 1', '3 objects'),
    ('a red 3 and a blue 7 left of a green 1', '3 objects'),
    ('a red 3 next to a blue 7', 'unknown relation'),
    ('a purple 3 left of a blue 7', "unknown colour 'purple'"),
    ('a red twelve left of a blue 7', "unknown digit 'twelve'"),
    ('a red 3 above a red 7', 'both objects are red'),
    ('hello', 'not of the form'),
])
def test_parse_prompt_errors_name_the_prompt(prompt, message):
    with pytest.raises(ValueError) as error:
        sc.parse_prompt(prompt)
    text = str(error.value)
    assert repr(prompt) in text and message in text and '\n' not in text


def test_parse_prompt_accepts_variants():
    assert sc.parse_prompt('A Red three is to the left of the blue 7.') == ((3, 7), (0, 2), 0)
    assert sc.parse_prompt('cyan  0 below magenta nine') == ((0, 9), (4, 5), 3)


def test_tfds_builder_offline_round_trip(tmp_path):
    builder = sc.prepare_tfds(tmp_path, seed=2, num_examples=6, captions_per_image=3)
    assert isinstance(builder, sc.TwoDigitScenes)
    for split in ('train', 'test'):
        loaded = sc.load_tfds(split, tmp_path)
        expected = sc.make_dataset(split, seed=2, num_examples=6, captions_per_image=3)
        assert loaded.keys() == expected.keys()
        for key in expected:
            assert loaded[key].dtype == expected[key].dtype, key
            np.testing.assert_array_equal(loaded[key], expected[key])
    sc.prepare_tfds(tmp_path, seed=2, num_examples=6, captions_per_image=3)  # Same settings: reuses the data.
    with pytest.raises(ValueError, match='captions_per_image'):
        sc.prepare_tfds(tmp_path, seed=2, num_examples=6)
    with pytest.raises(FileNotFoundError, match='prepare_tfds'):
        sc.load_tfds('train', tmp_path / 'empty')
