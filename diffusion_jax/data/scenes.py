"""Two-digit scenes: two coloured MNIST digits in a spatial relation on a 64x64 canvas, with captions.

A binding benchmark for the CLIP and text-to-image phases (fixed spec, do not change it without bumping
``TwoDigitScenes.VERSION``):

* Two real MNIST digits (28x28, not resized) on a black 64x64 RGB uint8 canvas, from the same split of
  `mnist.load_mnist` as `captioned_digits`: 'train' uses its training digits, 'test' its held-out 'test' digits.
  The two digit images are always different images (their labels may be equal).
* Each object has a different colour of `captioned_digits.COLORS`; pixel = round(intensity / 255 * colour), drawn
  by `captioned_digits.render` itself.
* `RELATIONS`: for "A left of B", A's box has its left column uniform in 0..4 and B's in 32..36, and each box's
  top row is uniform in 0..36 (independently); "right of" is the mirror (A in 32..36, B in 0..4); "above" and
  "below" are the same with rows and columns swapped. So the boxes never overlap. Object 0 is always A.
* Captions: ``"a red 3 left of a blue seven"`` (`canonical_caption`; each digit a numeral or a word). Caption 0 of a
  scene is this direct form, caption 1 the equivalent reversed form ("a blue seven right of a red 3", `reverse`),
  and further captions alternate the two forms with other numeral/word choices (at most 8, all distinct).
* Held-out (digit, colour) pairs are those of `captioned_digits.HELDOUT_PAIRS` (`is_heldout`): they never appear on
  any object in 'train'. In 'test', even-indexed scenes are held-out scenes (one random object has its held-out
  colour, the other any other colour, held-out or not) and odd-indexed scenes are seen (no held-out pair), see
  `is_heldout_scene`.
* `hard_negatives` gives, per scene, captions of the scene with colours swapped, digits swapped and the relation
  flipped, for a CLIP binding test; `parse_prompt` reads prompts back (same colour twice is an error).

Sizes: by default one scene per source digit (4,500 'train' and 500 'test' with the bundled source); a smaller
``num_examples`` gives a prefix of the default-size split. `TwoDigitScenes` / `prepare_tfds` write the same data as
a TFDS array_record dataset, which `load_tfds` reads back through ``tfds.data_source`` without TensorFlow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import mnist

CANVAS_SIZE = 64
DIGIT_SIZE = mnist.IMAGE_SIZE  # 28: digits are pasted at native size.
_NEAR_MAX = CANVAS_SIZE // 2 - DIGIT_SIZE  # 4: the near box starts in 0..4, the far one in 32..36.
_FREE_MAX = CANVAS_SIZE - DIGIT_SIZE  # 36: the other coordinate of each box is uniform in 0..36.

RELATIONS = ('left of', 'right of', 'above', 'below')
_FLIP = (1, 0, 3, 2)  # left of <-> right of, above <-> below.
HARD_NEGATIVE_KINDS = ('swap_colors', 'swap_digits', 'flip_relation')
MAX_CAPTIONS = 8  # 2 forms x 2 x 2 numeral/word choices.
SPLITS = cd.SPLITS

Scene = tuple[tuple[int, int], tuple[int, int], int]  # (digits, colour indices, relation index).


def _relation_index(relation: int | str) -> int:
    """Returns the index into `RELATIONS` of a relation name or index (ValueError naming a bad one)."""
    if isinstance(relation, (int, np.integer)) and not isinstance(relation, bool) and 0 <= relation < len(RELATIONS):
        return int(relation)
    if relation in RELATIONS:
        return RELATIONS.index(relation)
    raise ValueError(f'Unknown relation {relation!r}; choose one of {RELATIONS} or an index into them.')


def _scene(digits: Sequence[int], colors: Sequence[int | str], relation: int | str) -> Scene:
    """Checks a scene description and returns it as ints: ((d0, d1), (c0, c1), relation)."""
    if len(digits) != 2 or len(colors) != 2:
        raise ValueError(f'A scene has two objects, got digits {digits!r} and colors {colors!r}.')
    d0, d1 = (cd._digit_value(d) for d in digits)
    c0, c1 = (cd.COLORS.index(cd._color_name(c)) for c in colors)
    return (d0, d1), (c0, c1), _relation_index(relation)


def is_heldout_scene(digits: Sequence[int], colors: Sequence[int | str]) -> bool:
    """Whether any object of the scene shows a held-out (digit, colour) pair (`captioned_digits.is_heldout`)."""
    return any(cd.is_heldout(d, c) for d, c in zip(digits, colors, strict=True))


def reverse(digits: Sequence[int], colors: Sequence[int | str], relation: int | str) -> Scene:
    """The same scene described from the other object: "A left of B" -> "B right of A"."""
    (d0, d1), (c0, c1), rel = _scene(digits, colors, relation)
    return (d1, d0), (c1, c0), _FLIP[rel]


def normalize(digits: Sequence[int], colors: Sequence[int | str], relation: int | str) -> Scene:
    """One description per scene: the form whose relation is 'left of' or 'above' (reversing if needed)."""
    scene = _scene(digits, colors, relation)
    return reverse(*scene) if RELATIONS[scene[2]] in ('right of', 'below') else scene


def canonical_caption(digits: Sequence[int], colors: Sequence[int | str], relation: int | str,
                      numeral: bool | Sequence[bool] = True) -> str:
    """``"a {color} {digit} {relation} a {color} {digit}"``, e.g. "a red 3 left of a blue seven".

    ``numeral`` writes the digits as numerals (True) or words (False), one bool for both or one per object.
    """
    (d0, d1), (c0, c1), rel = _scene(digits, colors, relation)
    n0, n1 = (numeral, numeral) if isinstance(numeral, (bool, np.bool_)) else numeral
    return (f'a {cd.COLORS[c0]} {cd._digit_text(d0, bool(n0))} {RELATIONS[rel]} '
            f'a {cd.COLORS[c1]} {cd._digit_text(d1, bool(n1))}')


def hard_negatives(digits: Sequence[int], colors: Sequence[int | str], relation: int | str,
                   numeral: bool | tuple[bool, bool] = True) -> dict[str, str | None]:
    """Canonical captions of scenes that differ from the given one only in binding, by kind (`HARD_NEGATIVE_KINDS`).

    ``'swap_colors'``: each digit takes the other's colour (positions kept). ``'swap_digits'``: the digits trade
    places, each position keeping its colour; None when both digits are equal (that would be the same scene).
    ``'flip_relation'``: left of <-> right of, above <-> below. The two colours must differ (ValueError otherwise,
    as in every scene of this dataset), so these two always describe a different scene. A negative may show a
    held-out pair even when the scene does not. ``numeral``: as for `canonical_caption` (per position).
    """
    (d0, d1), (c0, c1), rel = _scene(digits, colors, relation)
    if c0 == c1:
        raise ValueError(f'hard_negatives needs two different colours, got {cd.COLORS[c0]} twice.')
    return {
        'swap_colors': canonical_caption((d0, d1), (c1, c0), rel, numeral),
        'swap_digits': None if d0 == d1 else canonical_caption((d1, d0), (c0, c1), rel, numeral),
        'flip_relation': canonical_caption((d0, d1), (c0, c1), _FLIP[rel], numeral),
    }


_DIGIT_TOKEN = re.compile(r'\b(?:\d+|' + '|'.join(cd.DIGIT_WORDS) + r')\b')
_COLOR_TOKEN = re.compile(r'\b(?:' + '|'.join(cd.COLORS) + r')\b')
_RELATION_TOKEN = re.compile(r'\b(?:is\s+)?(?:to\s+the\s+)?(left of|right of)\b|\b(?:is\s+)?(above|below)\b')


def parse_prompt(text: str) -> Scene:
    """Reads a prompt "a <colour> <digit> <relation> a <colour> <digit>" into (digits, colour indices, relation).

    Case, repeated spaces and a final period do not matter; the article is optional; digits are numerals or words;
    "to the left of" and "is above" are accepted too. Raises ValueError, with a one-line message naming the prompt,
    for one object, more than two objects (counted as the larger of the numbers of digit and of colour words), an
    unknown relation, an unknown colour or digit, and the same colour on both objects (no scene of this dataset
    has that, so such a prompt would be out of distribution).
    """
    where = f'prompt {text!r}'
    clean = ' '.join(str(text).lower().split()).rstrip('.')
    relations = list(_RELATION_TOKEN.finditer(clean))
    num_objects = max(len(_DIGIT_TOKEN.findall(clean)), len(_COLOR_TOKEN.findall(clean)))
    if num_objects > 2 or len(relations) > 1:
        raise ValueError(f'{where} describes {max(num_objects, len(relations) + 1)} objects; a scene has exactly two.')
    if not relations and num_objects != 1:
        raise ValueError(f'{where} has an unknown relation; use one of {RELATIONS}.' if num_objects else
                         f'{where} is not of the form "a <colour> <digit> <relation> a <colour> <digit>".')
    parts = (clean[:relations[0].start()].strip(), clean[relations[0].end():].strip()) if relations else ('',)
    if not all(parts):
        raise ValueError(f'{where} describes one object; a scene needs two, joined by one of {RELATIONS}.')
    digits, colors = [], []
    for part in parts:
        words = re.sub(r'^(?:a|an|the)\s+', '', part).split()
        if len(words) != 2:
            raise ValueError(f'{where}: cannot read object {part!r} as "a <colour> <digit>".')
        color, digit = words
        if color not in cd.COLORS:
            raise ValueError(f'{where}: unknown colour {color!r}; choose one of {cd.COLORS}.')
        if digit in cd.DIGIT_WORDS:
            digit = str(cd.DIGIT_WORDS.index(digit))
        if not re.fullmatch(r'[0-9]', digit):
            raise ValueError(f'{where}: unknown digit {digit!r}; use 0..9 or {cd.DIGIT_WORDS}.')
        digits.append(int(digit))
        colors.append(cd.COLORS.index(color))
    if colors[0] == colors[1]:
        raise ValueError(f'{where}: both objects are {cd.COLORS[colors[0]]}; the two objects of a scene always '
                         f'have different colours.')
    relation = relations[0].group(1) or relations[0].group(2)
    return (digits[0], digits[1]), (colors[0], colors[1]), RELATIONS.index(relation)


def caption_numerals(text: str) -> tuple[bool, bool]:
    """Which objects of a two-object caption are written as numerals ("a red 3 ..." True, "a red three ..." False),
    in the caption's order: with `parse_prompt`, all that `canonical_caption` needs to write another scene in the
    same form. ValueError naming the caption unless it has exactly two digits."""
    digits = _DIGIT_TOKEN.findall(' '.join(str(text).lower().split()))
    if len(digits) != 2:
        raise ValueError(f'caption {text!r} has {len(digits)} digits; a scene caption has two.')
    return digits[0].isdigit(), digits[1].isdigit()


def render_scene(digit_images: np.ndarray, colors: Sequence[int | str], boxes: np.ndarray) -> np.ndarray:
    """Draws two uint8 [28, 28] digits in their colours with top-left corners ``boxes`` [2, 2] (row, col).

    Returns uint8 [64, 64, 3]; each digit is coloured by `captioned_digits.render` (its 'center' layout puts the
    digit at (2, 2) of a 32x32 canvas, from which it is cut out), so the pixel formula is the same.
    """
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8)
    for image, color, (row, col) in zip(digit_images, colors, np.asarray(boxes), strict=True):
        if not (0 <= row <= _FREE_MAX and 0 <= col <= _FREE_MAX):
            raise ValueError(f'box corner ({row}, {col}) puts a 28x28 digit outside the {CANVAS_SIZE}x'
                             f'{CANVAS_SIZE} canvas.')
        canvas[row:row + DIGIT_SIZE, col:col + DIGIT_SIZE] = cd.render(image, color, 'center')[2:30, 2:30]
    return canvas


def _pick(allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row of a bool mask [N, K], an index drawn uniformly among its True entries."""
    counts = allowed.sum(axis=1)
    k = np.floor(rng.random(len(allowed)) * counts).astype(np.int64)
    return np.argmax(np.cumsum(allowed, axis=1) > k[:, None], axis=1)


def _draw(split: str, labels: np.ndarray, num_examples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draws every scene's two source rows, colours, relation, boxes and caption choices (no rendering)."""
    n, num_colors, index = num_examples, len(cd.COLORS), np.arange(num_examples)
    row_a = rng.integers(0, len(labels), n)
    rows = np.stack([row_a, (row_a + rng.integers(1, len(labels), n)) % len(labels)], axis=1)  # Two images.
    digits = labels[rows].astype(np.int32)
    heldout_color = digits % num_colors
    palette = np.arange(num_colors)
    seen = palette[None, None, :] != heldout_color[..., None]  # [N, 2, K]: colours allowed outside held-out scenes.
    # The first object drawn is A in seen scenes, a random object in held-out ones (it gets its held-out colour).
    heldout_scene = (index % 2 == 0) if split == 'test' else np.zeros(n, bool)
    first = np.where(heldout_scene, rng.integers(0, 2, n), 0)
    second = 1 - first
    first_allowed = np.where(heldout_scene[:, None], palette[None] == heldout_color[index, first][:, None],
                             seen[index, first])
    first_color = _pick(first_allowed, rng)
    second_allowed = (np.where(heldout_scene[:, None], True, seen[index, second])
                      & (palette[None] != first_color[:, None]))
    colors = np.empty((n, 2), np.int32)
    colors[index, first], colors[index, second] = first_color, _pick(second_allowed, rng)

    relation = rng.integers(0, len(RELATIONS), n)
    axis = np.where(relation < 2, 1, 0)  # The relation's axis: columns for left/right, rows for above/below.
    a_far = (relation == 1) | (relation == 3)  # "A right of B" / "A below B": A is the far box.
    far = np.stack([a_far, ~a_far], axis=1)
    boxes = np.empty((n, 2, 2), np.int32)
    boxes[index, :, axis] = rng.integers(0, _NEAR_MAX + 1, (n, 2)) + far * (CANVAS_SIZE // 2)
    boxes[index, :, 1 - axis] = rng.integers(0, _FREE_MAX + 1, (n, 2))
    return {'rows': rows, 'digits': digits, 'colors': colors, 'relation': relation.astype(np.int32),
            'boxes': boxes, 'numerals': rng.permuted(np.tile(np.arange(4), (n, 1)), axis=1)}


def make_dataset(split: str, *, seed: int, source: str = 'bundled', tfds_data_dir: str | None = None,
                 num_examples: int | None = None, captions_per_image: int = 2) -> dict[str, np.ndarray]:
    """Builds one split of two-digit scenes in memory, deterministically for a seed (module docstring: the spec).

    Args:
        split: 'train' (MNIST training digits, no held-out pair) or 'test' (held-out test digits, alternating
            held-out and seen scenes).
        seed: the seed of all random choices (``np.random.default_rng(seed)``).
        source, tfds_data_dir: where the MNIST digits come from (see `mnist.load_mnist`).
        num_examples: number of scenes (default: one per source digit); a smaller one gives a prefix.
        captions_per_image: 1..8 distinct captions per scene: direct form, reversed form, direct, ... (changes
            only the captions: the scenes are the same for the same seed).

    Returns:
        dict of numpy arrays: ``image`` uint8 [N, 64, 64, 3], ``captions`` object [N, captions_per_image] of str,
        ``digits`` int32 [N, 2], ``colors`` int32 [N, 2] (indices into `COLORS`), ``boxes`` int32 [N, 2, 2]
        (top-left (row, col) of each 28x28 box), ``relation`` int32 [N] (index into `RELATIONS`: object 0 is in
        that relation to object 1), ``heldout`` bool [N] (`is_heldout_scene`).
    """
    if split not in SPLITS:
        raise ValueError(f'Unknown split {split!r}; choose one of {SPLITS}.')
    if isinstance(captions_per_image, bool) or not 1 <= captions_per_image <= MAX_CAPTIONS:
        raise ValueError(f'captions_per_image must be 1..{MAX_CAPTIONS}, got {captions_per_image!r}.')
    digit_images, labels = mnist.load_mnist(source, split, tfds_data_dir=tfds_data_dir)
    if num_examples is None:
        num_examples = len(labels)
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f'num_examples must be a positive integer or None, got {num_examples!r}.')
    draws = _draw(split, labels, max(int(num_examples), len(labels)), np.random.default_rng(seed))
    draws = {key: values[:num_examples] for key, values in draws.items()}

    images = np.stack([render_scene(digit_images[r], c, b)
                       for r, c, b in zip(draws['rows'], draws['colors'], draws['boxes'], strict=True)])
    captions = np.empty((num_examples, captions_per_image), dtype=object)
    for i in range(num_examples):
        scene = (draws['digits'][i], draws['colors'][i], draws['relation'][i])
        for j in range(captions_per_image):
            pattern = draws['numerals'][i, j // 2]  # Bit k set: object k written as a word.
            numeral = (not pattern & 1, not pattern & 2)
            captions[i, j] = (canonical_caption(*scene, numeral) if j % 2 == 0
                              else canonical_caption(*reverse(*scene), numeral[::-1]))
    return {
        'image': images,
        'captions': captions,
        'digits': draws['digits'],
        'colors': draws['colors'],
        'boxes': draws['boxes'],
        'relation': draws['relation'],
        'heldout': (draws['colors'] == draws['digits'] % len(cd.COLORS)).any(axis=1),
    }


class TwoDigitScenes(tfds.core.GeneratorBasedBuilder):
    """TFDS builder writing `make_dataset`'s 'train' and 'test' splits, prepared offline from local MNIST digits.

    As `captioned_digits.CaptionedDigits`: array_record only (`prepare_tfds`), read with ``tfds.data_source``
    (`load_tfds`), no shuffling (records keep `make_dataset`'s order), settings saved in ``info.metadata``.
    """

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}

    def __init__(self, *, seed: int = 0, source: str = 'bundled', tfds_data_dir: str | None = None,
                 num_examples: int | None = None, captions_per_image: int = 2, **kwargs):
        """Args: seed, source, tfds_data_dir, num_examples, captions_per_image as for `make_dataset`."""
        self._settings = {'seed': seed, 'source': source, 'num_examples': num_examples,
                          'captions_per_image': captions_per_image}
        self._mnist_data_dir = tfds_data_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description='Two coloured MNIST digits in a spatial relation on a 64x64 canvas, with captions.',
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Tensor(shape=(CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8),
                'captions': tfds.features.Sequence(tfds.features.Text()),
                'digits': tfds.features.Tensor(shape=(2,), dtype=np.int32),
                'colors': tfds.features.Tensor(shape=(2,), dtype=np.int32),
                'boxes': tfds.features.Tensor(shape=(2, 2), dtype=np.int32),
                'relation': tfds.features.Scalar(dtype=np.int32),
                'heldout': tfds.features.Scalar(dtype=np.bool_),
            }),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded: the digits are local.
        self.info.metadata.update(self._settings)
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        data = make_dataset(split, tfds_data_dir=self._mnist_data_dir, **self._settings)
        for i in range(len(data['relation'])):
            yield i, {key: list(values[i]) if key == 'captions' else values[i] for key, values in data.items()}


def prepare_tfds(data_dir: str | os.PathLike, *, seed: int = 0, source: str = 'bundled',
                 tfds_data_dir: str | None = None, num_examples: int | None = None,
                 captions_per_image: int = 2) -> TwoDigitScenes:
    """Writes the dataset as array_record into ``data_dir`` offline and returns its builder.

    Already prepared with the same settings: does nothing. Prepared with other settings: raises ValueError
    rather than silently serving different data (delete ``<data_dir>/two_digit_scenes`` to rebuild).
    """
    wanted = {'seed': seed, 'source': source, 'num_examples': num_examples, 'captions_per_image': captions_per_image}
    return cd.prepare_once(TwoDigitScenes(data_dir=os.fspath(data_dir), tfds_data_dir=tfds_data_dir, **wanted), wanted)


def load_tfds(split: str, data_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads one prepared split with ``tfds.data_source`` (no TensorFlow) into `make_dataset`'s format."""
    if split not in SPLITS:
        raise ValueError(f'Unknown split {split!r}; choose one of {SPLITS}.')
    builder = tfds.builder('two_digit_scenes', data_dir=os.fspath(data_dir))
    if not builder.is_prepared():
        raise FileNotFoundError(f'two_digit_scenes is not prepared in data_dir {os.fspath(data_dir)!r}; '
                                f'run prepare_tfds({os.fspath(data_dir)!r}) first.')
    records = tfds.data_source('two_digit_scenes', split=split, data_dir=os.fspath(data_dir), download=False)
    examples = [records[i] for i in range(len(records))]
    out = {}
    for key in ('image', 'captions', 'digits', 'colors', 'boxes', 'relation', 'heldout'):
        values = np.stack([np.asarray(example[key]) for example in examples])
        out[key] = (np.vectorize(bytes.decode, otypes=[object])(values) if key == 'captions'
                    else values.astype(builder.info.features[key].np_dtype))  # Scalars come back as int64.
    return out
