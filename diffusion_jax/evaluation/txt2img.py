"""Does an image show what its caption asks for? Attribute checks for captioned-digit images (phase 4 evaluation).

Each check reads one attribute of a uint8 image [32, 32, 3] the way the captioned-digits spec draws it
(`data/captioned_digits.py`), independently of the models under test:

- layout, from the pixels: a quadrant digit's ink stays inside its 16x16 quadrant; a centred digit's crosses the
  canvas's middle lines.
- colour, from the pixels: the mean colour of the bright ink pixels, scaled to its largest channel, is matched to
  the nearest of the six spec colours.
- digit, with the project's digit classifier (trained on real MNIST digits only) on the digit's region: the whole
  canvas for a centred digit (it sits where `mnist.to_model_images` puts digits), the quadrant resized to 28x28 and
  padded the same way for a quadrant digit.

`check_real_ceiling` runs the same checks on real captioned images: their accuracy is the checker's own ceiling.
"""
from typing import Any

import numpy as np
from PIL import Image

from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import mnist
from diffusion_jax.evaluation import classifier as classifier_lib

INK = 0.3  # pixels brighter than this fraction of full scale (max over channels) are ink
TOLERANCE = 1  # pixels a quadrant digit's ink may cross the canvas's middle lines
_COLOR_TABLE = np.asarray([cd.COLOR_RGB[c] for c in cd.COLORS], np.float64) / 255.0


def _check_uint8(images: Any) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"images must be uint8 [N, 32, 32, 3], got {images.dtype} {images.shape}")
    return images


def layouts(images: Any) -> np.ndarray:
    """Layout index (into `cd.LAYOUTS`) of each uint8 image [N, 32, 32, 3], from where its ink is.

    A quadrant digit is drawn inside one 16x16 quadrant; a centred one (28x28 at (2, 2), its ink ~20 pixels tall
    around the canvas centre) crosses the middle lines. So: ink whose bounding box fits in one quadrant (give or take
    `TOLERANCE` pixels across the middle) is that quadrant's digit, anything else is centred. A blank image counts as
    centred.
    """
    images = _check_uint8(images)
    ink = images.max(axis=-1).astype(np.float64) / 255.0 > INK
    out = np.full(len(images), cd.LAYOUTS.index("center"))
    for i, m in enumerate(ink):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if not len(rows):
            continue
        top = rows[-1] < 16 + TOLERANCE
        bottom = rows[0] >= 16 - TOLERANCE
        left = cols[-1] < 16 + TOLERANCE
        right = cols[0] >= 16 - TOLERANCE
        if (top or bottom) and (left or right):
            out[i] = cd.LAYOUTS.index(("top " if top else "bottom ") + ("left" if left else "right"))
    return out


def colors(images: Any) -> np.ndarray:
    """Colour index (into `cd.COLORS`) of each uint8 image: nearest spec colour to the mean bright-ink colour."""
    images = _check_uint8(images).astype(np.float64) / 255.0
    gray = images.max(axis=-1)
    bright = gray > 0.5 * np.maximum(gray.max(axis=(1, 2), keepdims=True), 1e-9)
    mean = (images * bright[..., None]).sum(axis=(1, 2)) / np.maximum(bright.sum(axis=(1, 2))[:, None], 1)
    mean = mean / np.maximum(mean.max(axis=-1, keepdims=True), 1e-9)
    return np.argmin(((mean[:, None, :] - _COLOR_TABLE[None]) ** 2).sum(-1), axis=1)


def digit_crops(images: Any, layout: np.ndarray) -> np.ndarray:
    """The digit region of each image as a classifier input float32 [N, 32, 32, 1] in [-1, 1].

    Centred digits: the grey canvas itself. Quadrant digits: the 16x16 quadrant resized to 28x28 (bilinear), then
    padded as `mnist.to_model_images` pads.
    """
    images = _check_uint8(images)
    gray = images.max(axis=-1)
    digits = np.empty((len(images), mnist.IMAGE_SIZE, mnist.IMAGE_SIZE), np.uint8)
    for i, (g, l) in enumerate(zip(gray, np.asarray(layout))):
        name = cd.LAYOUTS[int(l)]
        if name == "center":
            digits[i] = g[2:30, 2:30]
        else:
            r, c = (0 if name.startswith("top") else 16), (0 if name.endswith("left") else 16)
            crop = Image.fromarray(np.ascontiguousarray(g[r:r + 16, c:c + 16]))
            digits[i] = np.asarray(crop.resize((mnist.IMAGE_SIZE, mnist.IMAGE_SIZE), Image.Resampling.BILINEAR))
    return mnist.to_model_images(digits)


def check_attributes(classifier_params: Any, images: Any) -> dict:
    """{'digit', 'color', 'layout'}: int [N] each, read from uint8 images [N, 32, 32, 3]."""
    layout = layouts(images)
    logits, _ = classifier_lib.classify(classifier_params, digit_crops(images, layout))
    return {"digit": np.argmax(logits, axis=-1), "color": colors(images), "layout": layout}


def attribute_scores(found: dict, digit: Any, color: Any, layout: Any, heldout: Any) -> dict:
    """Accuracy of each attribute and of all three together, for seen and held-out (digit, colour) combinations."""
    want = {"digit": np.asarray(digit), "color": np.asarray(color), "layout": np.asarray(layout)}
    correct = {k: found[k] == want[k] for k in want}
    correct["all"] = correct["digit"] & correct["color"] & correct["layout"]
    heldout = np.asarray(heldout, bool)
    out = {}
    for name, subset in (("seen", ~heldout), ("heldout", heldout)):
        for k, ok in correct.items():
            out[f"{name}_{k}_accuracy"] = float(ok[subset].mean()) if subset.any() else float("nan")
        out[f"{name}_count"] = int(subset.sum())
    return out


def diversity(images: Any, groups: Any) -> float:
    """Mean pairwise RMS distance (pixels scaled to [0, 1]) between images of the same group (e.g. prompt).

    0 means every prompt always gives the same image; distinct real digits of one class are typically 0.2-0.3 apart.
    """
    images = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
    groups = np.asarray(groups)
    distances = []
    for g in np.unique(groups):
        x = images[groups == g]
        for i in range(len(x)):
            for j in range(i + 1, len(x)):
                distances.append(np.sqrt(np.mean((x[i] - x[j]) ** 2)))
    return float(np.mean(distances)) if distances else float("nan")


def check_real_ceiling(classifier_params: Any, data: dict) -> dict:
    """The checker's accuracy on real captioned images (a `cd.make_dataset` split): the best a generator can score."""
    found = check_attributes(classifier_params, data["image"])
    return attribute_scores(found, data["digit"], data["color"], data["layout"], data["heldout_combo"])
