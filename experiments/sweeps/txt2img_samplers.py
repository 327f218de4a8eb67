"""Samplers x steps vs text-to-image quality and sampling time, without retraining (issue 13, item 2): DDIM,
DPM-Solver++(2M) and UniPC at 5, 10, 20 and 50 steps, each point evaluating the one model the README's
text-to-image command trained in runs/txt2img at the default guidance (600 images: 2 per canonical prompt).

  python -m diffusion_jax.main --config=experiments/txt2img_digits.py --workdir=runs/txt2img   # once, if not done
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/txt2img_samplers.py --root=runs/sweeps/txt2img_samplers

Each point reads the U-Net from `sample.checkpoint_workdir` and the frozen CLIP from `clip.workdir` (both the trained
run's), and trains its own attribute checker (same seed, so the same checker at every point). Sampling seconds are
the wall-clock of the one guided sampling call, its XLA compile included.
"""
import os

from diffusion_jax.sweep import product, require_trained, with_overrides

MODES = ("eval",)
METRIC = "default_seen_all_accuracy"
METRICS = ("default_seen_all_accuracy", "default_heldout_all_accuracy", "default_clip_score",
           "default_sampling_seconds")
TRAINED_WORKDIR = "runs/txt2img"  # the README's text-to-image run (relative to the directory the sweep starts in)
README_COMMAND = f"python -m diffusion_jax.main --config=experiments/txt2img_digits.py --workdir={TRAINED_WORKDIR}"


def get_sweep():
    """(base config, points): every sampler at every step count, all evaluating the trained model at guidance 3."""
    require_trained(TRAINED_WORKDIR, README_COMMAND, "the text-to-image samplers sweep")
    points = product({"sample.sampler": ["ddim", "dpmpp_2m", "unipc"], "sample.steps": [5, 10, 20, 50]})
    return "experiments/txt2img_digits.py", with_overrides(points, {
        "sample.checkpoint_workdir": TRAINED_WORKDIR, "clip.workdir": os.path.join(TRAINED_WORKDIR, "clip"),
        "eval.guidance_scales": (), "train.final_eval": False})
