"""CLIP on two-digit scenes (issue 12 item 4): the CLIP of experiments/clip_digits.py on 64x64 scenes of two
coloured digits in a relation ("a red 3 left of a blue seven"), with the binding test in its evaluation.

  python -m diffusion_jax.main --config=experiments/clip_scenes.py --workdir=runs/clip_scenes
  python -m diffusion_jax.main --config=experiments/clip_scenes.py --workdir=runs/clip_scenes_neg \\
      --config.train.hard_negatives=True --config.train.digit_negatives=True
  # hard_negatives: NegCLIP's binding negatives of each caption in the batch; digit_negatives: two more, each with
  # one digit replaced (both on in the text-to-image preset's CLIP)

Presets: `:tiny` (seconds, tests).
"""
import os

import ml_collections

from diffusion_jax.config import load_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """The CLIP digits config (same preset) moved to scenes; `preset` 'tiny' shrinks it for tests."""
    if preset not in ("", "tiny"):
        raise ValueError(f"unknown preset {preset!r} for experiments/clip_scenes.py; available: 'tiny'")
    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_digits.py")
    c = load_config(base + (f":{preset}" if preset else ""))
    c.data.dataset = "scenes"
    c.data.captions_per_image = 4  # direct and reversed forms, numerals and words
    c.data.train_copies = 2  # scenes per training digit
    c.data.num_examples = 0  # > 0: exactly this many training scenes instead (the tiny preset)
    # A scene's colours must stay on their digits: the ConvNet sees RGB (the intensity/mean-colour factorisation
    # of the single-digit CLIP would mix the two objects' colours), and the flattened last feature map keeps where
    # each object is, which the relation needs.
    c.model.factorize_color = False
    c.model.pool = "flatten"
    c.model.stem_stride = 2  # the stages run at 32x32 and below: the single-digit tower's cost
    if preset == "tiny":
        c.data.num_examples = 512
        c.data.captions_per_image = 2
    return c
