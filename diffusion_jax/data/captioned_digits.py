"""Captioned digits: coloured MNIST digits placed on a 32x32 canvas, with captions, for the CLIP phase.

The benchmark (fixed spec, do not change it without bumping ``CaptionedDigits.VERSION``):

* One real MNIST digit per image, on a black 32x32 RGB uint8 canvas. 'train' images use the training digits of
  `load_mnist`, 'test' (the eval split) uses its held-out 'test' digits.
* Colours (`COLORS`): red, green, blue, yellow, cyan, magenta; pixel = round(intensity / 255 * colour).
* Layouts (`LAYOUTS`): ``'center'`` is the 28x28 digit with its top-left corner at (row 2, col 2); the four
  quadrant layouts put the digit, resized to 16x16 with PIL's antialiasing LANCZOS filter, in that quadrant.
* Held-out (digit, colour) pairs (`HELDOUT_PAIRS`, digit d with colour ``COLORS[d % 6]``) never appear in 'train';
  in 'test' every even-indexed example is a held-out pair and every odd-indexed one a seen pair (`heldout_combo`),
  so a compositional-generalisation score can compare the two halves.
* Captions come from several templates and synonyms (`TEMPLATES`, `POSITION_PHRASES`, `SIZE_WORDS`, numeral or
  word); the canonical template ``"a {color} {digit} {position}"`` (`canonical_caption`) is one of them and
  ``canonical_only=True`` uses only it.

Sizes: by default 'train' has two examples per training digit (9,000 with the bundled source), each digit shown
with two different (colour, layout) combinations, and 'test' one example per test digit (500 bundled).

The same data can be written as a TFDS dataset (`CaptionedDigits`, `prepare_tfds`) in the array_record format and
read back without TensorFlow (`load_tfds`, through ``tfds.data_source``).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from diffusion_jax.data import mnist

CANVAS_SIZE = 32
QUADRANT_SIZE = 16

COLORS = ('red', 'green', 'blue', 'yellow', 'cyan', 'magenta')
COLOR_RGB = {
    'red': (255, 0, 0),
    'green': (0, 255, 0),
    'blue': (0, 0, 255),
    'yellow': (255, 255, 0),
    'cyan': (0, 255, 255),
    'magenta': (255, 0, 255),
}
LAYOUTS = ('center', 'top left', 'top right', 'bottom left', 'bottom right')
# Top-left corner (row, col) of each layout on the canvas.
_LAYOUT_ORIGIN = {
    'center': (2, 2),
    'top left': (0, 0),
    'top right': (0, 16),
    'bottom left': (16, 0),
    'bottom right': (16, 16),
}

# Digit d is never shown in colour COLORS[d % 6] during training.
HELDOUT_PAIRS = tuple((digit, COLORS[digit % len(COLORS)]) for digit in range(mnist.NUM_CLASSES))

DIGIT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')

# The first phrase of each layout is the canonical one.
POSITION_PHRASES = {
    'center': ('in the center', 'in the middle', 'at the center'),
    'top left': ('in the top left', 'in the top-left corner', 'in the upper left'),
    'top right': ('in the top right', 'in the top-right corner', 'in the upper right'),
    'bottom left': ('in the bottom left', 'in the bottom-left corner', 'in the lower left'),
    'bottom right': ('in the bottom right', 'in the bottom-right corner', 'in the lower right'),
}
# Optional size words: the centred digit is large, the quadrant digits are small ('' = no size word).
SIZE_WORDS = {
    'center': ('', 'large ', 'big '),
    'quadrant': ('', 'small ', 'tiny '),
}

CANONICAL_TEMPLATE = 'a {color} {digit} {position}'
# TEMPLATES[0] is the canonical template; it always uses the canonical position phrase and no size word.
TEMPLATES = (
    CANONICAL_TEMPLATE,
    'a {size}{color} {digit} {position}',
    'a {size}{color} digit {digit} {position}',
    'the {size}digit {digit} in {color}, {position}',
    '{color} number {digit} {position}',
    'a photo of a {size}{color} {digit} {position}',
    '{position}, a {size}{color} {digit}',
    'the {size}number {digit} drawn in {color} {position}',
)

SPLITS = ('train', 'test')
_TRAIN_COPIES = 2  # Default 'train' size: each training digit twice, with different (colour, layout).
_NUM_COMBOS = len(COLORS) * len(LAYOUTS)


def _color_name(color: int | str) -> str:
    """Returns the colour name for a name or an index into `COLORS` (ValueError naming a bad one)."""
    if isinstance(color, (int, np.integer)) and not isinstance(color, bool):
        if not 0 <= int(color) < len(COLORS):
            raise ValueError(f'color index {color} out of range; COLORS has {len(COLORS)} entries {COLORS}.')
        return COLORS[int(color)]
    if color not in COLOR_RGB:
        raise ValueError(f'Unknown color {color!r}; choose one of {COLORS} or an index into them.')
    return color


def _layout_name(layout: int | str) -> str:
    """Returns the layout name for a name or an index into `LAYOUTS` (ValueError naming a bad one)."""
    if isinstance(layout, (int, np.integer)) and not isinstance(layout, bool):
        if not 0 <= int(layout) < len(LAYOUTS):
            raise ValueError(f'layout index {layout} out of range; LAYOUTS has {len(LAYOUTS)} entries {LAYOUTS}.')
        return LAYOUTS[int(layout)]
    if layout not in _LAYOUT_ORIGIN:
        raise ValueError(f'Unknown layout {layout!r}; choose one of {LAYOUTS} or an index into them.')
    return layout


def _digit_value(digit: int) -> int:
    """Checks a digit label 0..9 and returns it as int."""
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= int(digit) <= 9:
        raise ValueError(f'digit must be an integer 0..9, got {digit!r}.')
    return int(digit)


def is_heldout(digit: int, color: int | str) -> bool:
    """Whether (digit, colour) is one of the `HELDOUT_PAIRS` kept out of training (digit d with COLORS[d % 6])."""
    return COLORS.index(_color_name(color)) == _digit_value(digit) % len(COLORS)


def render(digit_image: np.ndarray, color: int | str, layout: int | str) -> np.ndarray:
    """Draws one 28x28 uint8 MNIST digit in a colour and layout on a black canvas: uint8 [32, 32, 3].

    ``'center'`` pastes the digit at its native size with its top-left corner at (2, 2), as `mnist.to_model_images`
    pads; a quadrant layout first resizes it to 16x16 with PIL's LANCZOS filter (antialiased, so thin strokes
    survive) and fills that quadrant. Each pixel is round(intensity / 255 * colour) per channel.

    Args:
        digit_image: uint8 [28, 28] digit (white on black, as MNIST stores it).
        color: a name from `COLORS` or an index into it.
        layout: a name from `LAYOUTS` or an index into it.
    """
    image = np.asarray(digit_image)
    if image.dtype != np.uint8 or image.shape != (mnist.IMAGE_SIZE, mnist.IMAGE_SIZE):
        raise ValueError(f'render expects digit_image uint8 of shape (28, 28), '
                         f'got dtype {image.dtype} shape {image.shape}.')
    color_name, layout_name = _color_name(color), _layout_name(layout)
    if layout_name != 'center':
        image = np.asarray(Image.fromarray(image).resize((QUADRANT_SIZE, QUADRANT_SIZE), Image.Resampling.LANCZOS))
    rgb = np.asarray(COLOR_RGB[color_name], dtype=np.float64)
    colored = np.rint(image[..., None].astype(np.float64) / 255.0 * rgb).astype(np.uint8)
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8)
    row, col = _LAYOUT_ORIGIN[layout_name]
    canvas[row:row + image.shape[0], col:col + image.shape[1]] = colored
    return canvas


def _digit_text(digit: int, numeral: bool) -> str:
    """The digit written as a numeral ('7') or a word ('seven')."""
    return str(digit) if numeral else DIGIT_WORDS[digit]


def canonical_caption(digit: int, color: int | str, layout: int | str, numeral: bool = True) -> str:
    """The canonical caption ``"a {color} {digit} {position}"``, e.g. "a red 3 in the top left".

    The zero-shot classifier and the text-to-image benchmark prompt with this form; ``numeral=False`` writes the
    digit as a word ("a cyan seven in the center").
    """
    layout_name = _layout_name(layout)
    return CANONICAL_TEMPLATE.format(color=_color_name(color), digit=_digit_text(_digit_value(digit), numeral),
                                     position=POSITION_PHRASES[layout_name][0])


def caption(digit: int, color: int | str, layout: int | str, *, template: int, numeral: bool = True,
            position_variant: int = 0, size_variant: int = 0) -> str:
    """One caption from ``TEMPLATES[template]`` with the chosen synonyms (template 0 is `canonical_caption`).

    Args:
        digit, color, layout: what the image shows.
        template: index into `TEMPLATES`.
        numeral: digit as '3' (True) or 'three' (False).
        position_variant: index into ``POSITION_PHRASES[layout]`` (ignored by the canonical template).
        size_variant: index into the size words of the layout (``SIZE_WORDS['center']`` or ``['quadrant']``;
            0 = none; ignored by templates without a size word).
    """
    if not 0 <= template < len(TEMPLATES):
        raise ValueError(f'template index {template} out of range; there are {len(TEMPLATES)} TEMPLATES.')
    layout_name = _layout_name(layout)
    if template == 0:
        return canonical_caption(digit, color, layout_name, numeral)
    positions = POSITION_PHRASES[layout_name]
    sizes = SIZE_WORDS['center' if layout_name == 'center' else 'quadrant']
    if not 0 <= position_variant < len(positions):
        raise ValueError(f'position_variant {position_variant} out of range for layout {layout_name!r} '
                         f'({len(positions)} phrases).')
    if not 0 <= size_variant < len(sizes):
        raise ValueError(f'size_variant {size_variant} out of range ({len(sizes)} size words).')
    return TEMPLATES[template].format(color=_color_name(color), digit=_digit_text(_digit_value(digit), numeral),
                                      position=positions[position_variant], size=sizes[size_variant])


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translates each image [N, H, W, C] by its own random (dy, dx) in [-max_shift, max_shift], filling with 0.

    Training augmentation for the image tower: the digits are few (4,500 bundled training digits), and small
    translations are the classic label-preserving augmentation for MNIST. A shift of 2 keeps every layout
    recognisable (a quadrant digit stays within its quadrant, give or take its blank margin). Pure in `rng`.
    """
    if max_shift < 0:
        raise ValueError(f'max_shift must be >= 0, got {max_shift}')
    if max_shift == 0:
        return images
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None, :]  # [N, H]
    cols = dx[:, None] + np.arange(w)[None, :]  # [N, W]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _default_size(split: str, num_source: int) -> int:
    """Default number of examples: two per training digit for 'train', one per test digit for 'test'."""
    return num_source * (_TRAIN_COPIES if split == 'train' else 1)


def _draw_choices(split: str, labels: np.ndarray, num_examples: int, rng: np.random.Generator) -> dict:
    """Draws, for every example, its source digit row, colour, layout and caption choices (no rendering).

    'train': pass p = i // M over the M source digits goes through a fresh permutation of them; each digit walks
    through its own random order of its 25 allowed (colour, layout) combinations, one per pass, so the uses of a
    digit never repeat a combination (hence at most 25 passes). 'test': the digits likewise go through one
    permutation per pass; example i shows its digit's held-out colour when i is even and one of the 5 other colours
    (uniform) when i is odd; the layout is uniform.
    """
    num_source = len(labels)
    passes = -(-num_examples // num_source)
    rows = np.concatenate([rng.permutation(num_source) for _ in range(passes)])[:num_examples]
    digits = labels[rows].astype(np.int32)
    heldout_color = digits % len(COLORS)
    index = np.arange(num_examples)
    if split == 'train':
        max_passes = _NUM_COMBOS - len(LAYOUTS)
        if passes > max_passes:
            raise ValueError(f'num_examples={num_examples} needs {passes} uses of each of the {num_source} '
                             f'training digits, but a digit has only {max_passes} distinct allowed (colour, layout) '
                             f'combinations; use at most {max_passes * num_source}.')
        # Per digit, a random order of its 25 allowed combos; combo k -> (colour skip-index k // 5, layout k % 5).
        combo_order = rng.permuted(np.tile(np.arange(max_passes), (num_source, 1)), axis=1)
        combo = combo_order[rows, index // num_source]
        color_skip, layouts = combo // len(LAYOUTS), combo % len(LAYOUTS)
        colors = (heldout_color + 1 + color_skip) % len(COLORS)  # One of the 5 colours other than the held-out one.
    else:
        offsets = rng.integers(1, len(COLORS), size=num_examples)
        colors = np.where(index % 2 == 0, heldout_color, (heldout_color + offsets) % len(COLORS))
        layouts = rng.integers(0, len(LAYOUTS), size=num_examples)
    return {
        'row': rows,
        'digit': digits,
        'color': colors.astype(np.int32),
        'layout': layouts.astype(np.int32),
        'template': rng.integers(0, len(TEMPLATES), size=num_examples),
        'numeral': rng.random(num_examples) < 0.5,
        'position_variant': rng.integers(0, 3, size=num_examples),
        'size_variant': rng.integers(0, 3, size=num_examples),
    }


def make_dataset(split: str, *, seed: int, source: str = 'bundled', tfds_data_dir: str | None = None,
                 num_examples: int | None = None, canonical_only: bool = False) -> dict[str, np.ndarray]:
    """Builds one split of captioned digits in memory, deterministically for a seed.

    Every example draws (from ``np.random.default_rng(seed)``) its digit image, colour, layout and caption template
    and synonyms; 'train' never shows a held-out (digit, colour) pair, 'test' alternates held-out and seen pairs
    (see `_draw_choices`). ``canonical_only`` changes only the captions (same images for the same seed). A
    ``num_examples`` below the default size gives a prefix of the default-size split.

    Args:
        split: 'train' (from MNIST training digits) or 'test' (from held-out MNIST test digits).
        seed: the seed of all random choices.
        source, tfds_data_dir: where the MNIST digits come from (see `mnist.load_mnist`).
        num_examples: how many examples (default: 2 per source digit for 'train', 1 for 'test'; 'train' allows
            at most 25 per source digit).
        canonical_only: use only the canonical caption (digit as numeral or word, drawn at random).

    Returns:
        dict of numpy arrays: ``image`` uint8 [N, 32, 32, 3], ``caption`` object [N] of str, ``digit`` int32,
        ``color`` int32 (index into `COLORS`), ``layout`` int32 (index into `LAYOUTS`), ``heldout_combo`` bool.
    """
    if split not in SPLITS:
        raise ValueError(f'Unknown split {split!r}; choose one of {SPLITS}.')
    digit_images, labels = mnist.load_mnist(source, split, tfds_data_dir=tfds_data_dir)
    if num_examples is None:
        num_examples = _default_size(split, len(labels))
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f'num_examples must be a positive integer or None, got {num_examples!r}.')
    # Draw for at least the default size and slice, so a smaller num_examples is a prefix of the full split.
    num_drawn = max(int(num_examples), _default_size(split, len(labels)))
    choices = _draw_choices(split, labels, num_drawn, np.random.default_rng(seed))
    choices = {key: values[:num_examples] for key, values in choices.items()}

    images = np.stack([render(digit_images[r], c, l)
                       for r, c, l in zip(choices['row'], choices['color'], choices['layout'])])
    captions = np.empty(num_examples, dtype=object)
    for i in range(num_examples):
        args = (int(choices['digit'][i]), int(choices['color'][i]), int(choices['layout'][i]))
        numeral = bool(choices['numeral'][i])
        if canonical_only:
            captions[i] = canonical_caption(*args, numeral=numeral)
        else:
            captions[i] = caption(*args, template=int(choices['template'][i]), numeral=numeral,
                                  position_variant=int(choices['position_variant'][i]),
                                  size_variant=int(choices['size_variant'][i]))
    return {
        'image': images,
        'caption': captions,
        'digit': choices['digit'],
        'color': choices['color'],
        'layout': choices['layout'],
        'heldout_combo': choices['color'] == choices['digit'] % len(COLORS),
    }


class CaptionedDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS builder writing `make_dataset`'s 'train' and 'test' splits, prepared offline from local MNIST digits.

    Prepare with ``download_and_prepare(file_format='array_record')`` (see `prepare_tfds`); read with
    ``tfds.data_source`` (no TensorFlow needed, `load_tfds`). Captions are a ``Text`` feature: it encodes and
    decodes without TensorFlow and reads back as UTF-8 bytes. Shuffling is disabled so records keep
    `make_dataset`'s order. The generation settings (seed, source, num_examples) are saved in
    ``info.metadata``.
    """

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}

    def __init__(self, *, seed: int = 0, source: str = 'bundled', tfds_data_dir: str | None = None,
                 num_examples: int | None = None, **kwargs):
        """Args: seed, source, tfds_data_dir, num_examples as for `make_dataset`; the rest goes to TFDS."""
        self._seed = seed
        self._source = source
        self._mnist_data_dir = tfds_data_dir
        self._num_examples = num_examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description='Coloured MNIST digits on a 32x32 canvas with captions; held-out (digit, colour) pairs.',
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Tensor(shape=(CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8),
                'caption': tfds.features.Text(),
                'digit': tfds.features.Scalar(dtype=np.int32),
                'color': tfds.features.Scalar(dtype=np.int32),
                'layout': tfds.features.Scalar(dtype=np.int32),
                'heldout_combo': tfds.features.Scalar(dtype=np.bool_),
            }),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded: the digits are local.
        self.info.metadata.update(seed=self._seed, source=self._source, num_examples=self._num_examples)
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        data = make_dataset(split, seed=self._seed, source=self._source, tfds_data_dir=self._mnist_data_dir,
                            num_examples=self._num_examples)
        for i in range(len(data['digit'])):
            yield i, {key: values[i] for key, values in data.items()}


def prepare_tfds(data_dir: str | os.PathLike, *, seed: int = 0, source: str = 'bundled',
                 tfds_data_dir: str | None = None, num_examples: int | None = None) -> CaptionedDigits:
    """Writes the dataset as array_record into ``data_dir`` offline and returns its builder.

    Already prepared with the same settings: does nothing. Prepared with other settings: raises ValueError
    rather than silently serving different data (delete ``<data_dir>/captioned_digits`` to rebuild).
    """
    builder = CaptionedDigits(data_dir=os.fspath(data_dir), seed=seed, source=source, tfds_data_dir=tfds_data_dir,
                              num_examples=num_examples)
    return prepare_once(builder, {'seed': seed, 'source': source, 'num_examples': num_examples})


def prepare_once(builder: tfds.core.DatasetBuilder, wanted: dict) -> tfds.core.DatasetBuilder:
    """Prepares ``builder`` as array_record unless it is prepared already with the settings ``wanted`` (saved in its
    ``info.metadata``); prepared with other settings: ValueError, never silently serving different data."""
    if builder.is_prepared():
        found = {key: builder.info.metadata.get(key) for key in wanted}
        if found != wanted:
            raise ValueError(f'{builder.name} in {os.fspath(builder.data_dir)!r} was prepared with {found}, '
                             f'not {wanted}; delete that folder or choose another data_dir.')
        return builder
    builder.download_and_prepare(file_format='array_record')
    return builder


def load_tfds(split: str, data_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads one prepared split with ``tfds.data_source`` (no TensorFlow) into `make_dataset`'s format."""
    if split not in SPLITS:
        raise ValueError(f'Unknown split {split!r}; choose one of {SPLITS}.')
    builder = tfds.builder('captioned_digits', data_dir=os.fspath(data_dir))
    if not builder.is_prepared():
        raise FileNotFoundError(f'captioned_digits is not prepared in data_dir {os.fspath(data_dir)!r}; '
                                f'run prepare_tfds({os.fspath(data_dir)!r}) first.')
    records = tfds.data_source('captioned_digits', split=split, data_dir=os.fspath(data_dir), download=False)
    count = len(records)
    out = {
        'image': np.empty((count, CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8),
        'caption': np.empty(count, dtype=object),
        'digit': np.empty(count, dtype=np.int32),
        'color': np.empty(count, dtype=np.int32),
        'layout': np.empty(count, dtype=np.int32),
        'heldout_combo': np.empty(count, dtype=bool),
    }
    for i in range(count):
        example = records[i]
        for key, values in out.items():
            value = example[key]
            values[i] = value.decode('utf-8') if key == 'caption' else value
    return out
