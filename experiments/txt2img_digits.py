"""Text to image on captioned digits: a U-Net told the frozen CLIP text embedding of the caption (phase 4).

One command from nothing to a text-to-image model (trains CLIP first in WORKDIR/clip when it holds no checkpoint):

  python -m diffusion_jax.main --config=experiments/txt2img_digits.py --workdir=runs/txt2img

Then draw from prompts:

  python -m diffusion_jax.main --config=experiments/txt2img_digits.py --workdir=runs/txt2img --mode=sample \\
      --config.sample.prompts="a red 3 in the top left;a blue seven in the center" --config.sample.num_per_prompt=8

Presets: `:tiny` (seconds: tests, CI, notebooks). `config.clip` is the CLIP config (experiments/clip_digits.py, same
preset) plus `clip.workdir`, so `--config.clip.train.num_steps=...` tunes the CLIP that is trained when needed.
"""
import os

import ml_collections

from diffusion_jax.config import load_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """The default config; `preset` ('tiny') shrinks it (and its CLIP) for tests."""
    if preset not in ("", "tiny"):
        raise ValueError(f"unknown preset {preset!r} for experiments/txt2img_digits.py; available: 'tiny'")
    c = ml_collections.ConfigDict()
    c.task = "txt2img"
    c.seed = 0

    # The frozen text encoder: the CLIP preset of the same name, trained in `clip.workdir` if it has no checkpoint.
    clip_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_digits.py")
    c.clip = load_config(clip_file + (f":{preset}" if preset else ""))
    c.clip.workdir = ""  # "" = WORKDIR/clip

    c.data = ml_collections.ConfigDict()
    c.data.source = "bundled"  # MNIST digits under the captioned-digits spec (see data/captioned_digits.py)
    c.data.train_copies = 5  # captioned examples per training digit, each a different (colour, layout)

    c.model = ml_collections.ConfigDict()
    c.model.channels = (64, 128)
    c.model.num_res_blocks = 1
    c.model.attention_resolutions = (8, 4)  # self- then cross-attention to the caption tokens at these sizes
    c.model.patch_size = 4
    c.model.dropout = 0.0
    c.model.num_heads = 4
    c.model.norm_groups = 8
    c.model.dtype = "float32"

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "cosine"
    c.diffusion.num_steps = 1000
    c.diffusion.prediction = "v"
    c.diffusion.cond_dropout = 0.1  # probability a caption is replaced by the empty caption (guidance training)
    c.diffusion.loss_weighting = "none"  # none (L_simple) | min_snr (Min-SNR-gamma, Hang et al. 2023)
    c.diffusion.snr_gamma = 5.0  # gamma of min_snr

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 7500
    c.train.batch_size = 64
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.999
    c.train.parallel = "shard_map"
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.max_to_keep = 3
    c.train.sample_every = 2000  # a grid for a few fixed prompts during training (0 = never)
    c.train.progress = True
    c.train.final_eval = True  # after training: evaluate (eval.*)

    c.sample = ml_collections.ConfigDict()
    c.sample.sampler = "ddim"  # ddim | ddpm
    c.sample.steps = 50
    c.sample.eta = 0.0
    c.sample.guidance = 3.0
    c.sample.prompts = ""  # ';'-separated prompts
    c.sample.prompts_file = ""  # one prompt a line
    c.sample.num_per_prompt = 4
    c.sample.output = ""  # .npz path; "" = WORKDIR/samples/samples.npz (a PNG grid is written beside it)
    c.sample.batch_size = 500
    c.sample.seed = 1
    c.sample.use_ema = True

    c.eval = ml_collections.ConfigDict()
    c.eval.num_per_prompt = 2  # images per canonical prompt (300 prompts: every digit x colour x position)
    c.eval.guidance_scales = (1.0, 2.0, 4.0, 7.0)  # the guidance sweep (sample.guidance is always included)
    c.eval.classifier_steps = 1500  # the attribute checker's digit classifier (trained on real digits only)

    if preset == "tiny":
        c.data.train_copies = 1
        c.model.channels = (16, 32)
        c.model.norm_groups = 4
        c.diffusion.num_steps = 100
        c.train.num_steps = 20
        c.train.batch_size = 16
        c.train.learning_rate = 3e-3
        c.train.warmup_steps = 5
        c.train.log_every = 5
        c.train.checkpoint_every = 10
        c.train.sample_every = 10
        c.train.progress = False
        c.clip.train.num_steps = 30
        c.clip.train.final_eval = False
        c.sample.steps = 5
        c.sample.num_per_prompt = 2
        c.sample.batch_size = 20
        c.eval.num_per_prompt = 1
        c.eval.guidance_scales = (1.0, 4.0)
        c.eval.classifier_steps = 30
    return c
