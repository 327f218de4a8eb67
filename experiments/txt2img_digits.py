"""Text to image on captioned digits: a U-Net told the frozen CLIP text embedding of the caption (phase 4).

One command from nothing to a text-to-image model (trains CLIP first in WORKDIR/clip when it holds no checkpoint):

  python -m diffusion_jax.main --config=experiments/txt2img_digits.py --workdir=runs/txt2img

Then draw from prompts:

  python -m diffusion_jax.main --config=experiments/txt2img_digits.py --workdir=runs/txt2img --mode=sample \\
      --config.sample.prompts="a red 3 in the top left;a blue seven in the center" --config.sample.num_per_prompt=8

Presets: `:tiny` (seconds: tests, CI, notebooks); `+dit`, `+mmdit` (a diffusion transformer instead of the U-Net) and
`+flow` (rectified flow instead of VP diffusion) combine with it, e.g. `:tiny+mmdit+flow`. `config.clip` is the CLIP config (experiments/clip_digits.py, same
preset) plus `clip.workdir`, so `--config.clip.train.num_steps=...` tunes the CLIP that is trained when needed.
"""
import os

import ml_collections

from diffusion_jax.config import (apply_variants, diffusion_group, load_config, sample_group, shrink_to_tiny,
                                  split_preset, train_group, unet_model)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """The default config; `preset` ('tiny') shrinks it (and its CLIP) for tests; '+dit', '+mmdit', '+flow' change
    the recipe."""
    preset, variants = split_preset(preset, ("", "tiny"), "experiments/txt2img_digits.py")
    c = ml_collections.ConfigDict()
    c.task = "txt2img"
    c.seed = 0

    # The frozen text encoder: the CLIP preset of the same name, trained in `clip.workdir` if it has no checkpoint.
    clip_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_digits.py")
    c.clip = load_config(clip_file + (f":{preset}" if preset else ""))
    c.clip.workdir = ""  # "" = WORKDIR/clip (the CLIP preset's 2,000 steps)

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "captioned_digits"  # captioned_digits | scenes (experiments/txt2img_scenes.py)
    c.data.source = "bundled"  # MNIST digits under the captioned-digits spec (see data/captioned_digits.py)
    c.data.tfds_data_dir = ""  # TFDS data_dir for source=tfds ("" = TFDS default)
    c.data.train_copies = 5  # captioned examples per training digit, each a different (colour, layout)

    c.model = unet_model(
        attention_resolutions=(8, 4),  # self- then cross-attention to the caption tokens at these sizes
    )
    c.diffusion = diffusion_group()
    # Batch 64 x 7,500 steps on the 2,000-step CLIP: 98.2 / 95.0 % all correct at guidance 3; half the cost (CLIP
    # 1,000 steps, batch 32 x 7,000) scored 93.4 / 83.0 %, batch 32 x 14,000 95.0 / 90.0 % (docs/text_to_image.md).
    c.train = train_group(
        num_steps=7500,
        batch_size=64,
        ema_decay=0.999,
        checkpoint_every=1000,
        sample_every=2000,  # a grid for a few fixed prompts during training (0 = never)
        final_eval=True,  # after training: evaluate (eval.*)
    )
    c.sample = sample_group(
        prompts="",  # ';'-separated prompts
        prompts_file="",  # one prompt a line
        num_per_prompt=4,
        checkpoint_workdir="",  # sample/eval the U-Net of another run's workdir ("" = this run's)
    )

    c.eval = ml_collections.ConfigDict()
    c.eval.num_per_prompt = 2  # images per canonical prompt (300 prompts: every digit x colour x position)
    c.eval.guidance_scales = (1.0, 2.0, 4.0, 7.0)  # the guidance sweep (sample.guidance is always included)
    c.eval.classifier_steps = 1500  # the attribute checker's digit classifier (trained on real digits only)

    apply_variants(c, variants, patch_size=4, tiny=preset == "tiny")  # transformers: 8x8 tokens, as the U-Net's grid
    if preset == "tiny":
        shrink_to_tiny(c)
        c.data.train_copies = 1
        c.clip.train.num_steps = 30
        c.clip.train.final_eval = False
        c.sample.num_per_prompt = 2
        c.eval.num_per_prompt = 1
        c.eval.guidance_scales = (1.0, 4.0)
    return c
