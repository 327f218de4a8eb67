"""Issue 26, the comparison: {U-Net, DiT, MMDiT} x {VP (v), rectified flow} on two-digit latent scenes at the scenes
preset's training wall time (the U-Net's 9,000 steps, about 42 minutes of train steps here), all on one autoencoder
and one CLIP (trained first, below), scored by the scene checker (all correct seen / held-out and
per attribute, eval.json) at the preset's sampling (UniPC for VP, Euler for flow, 10 steps, guidance 5).

  # the shared CLIP and autoencoder first, each in its own run (resumable; the preset's nested configs):
  python -m diffusion_jax.main --config=experiments/clip_scenes.py --workdir=runs/sweeps/backbones_scenes_frozen/clip \
      --config.train.hard_negatives=True --config.train.digit_negatives=True
  python -m diffusion_jax.main --config=experiments/autoencoder_scenes.py \
      --workdir=runs/sweeps/backbones_scenes_frozen/autoencoder
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_scenes.py --root=runs/sweeps/backbones_scenes

(A U-Net run never trains further a CLIP or autoencoder outside its workdir, so the sweep needs them finished.)

Equal wall time: each variant's steps = 9,000 x the U-Net's step time / its own, from `python
benchmarks/backbones.py --config=experiments/txt2img_scenes.py` (2026-12-07, batch 64, 2 CPU devices, stand-in text
condition; s/step: unet 0.2798, flow 0.2862, dit 0.3050, dit+flow 0.3178, mmdit 0.3370, mmdit+flow 0.3419). About
50 minutes a point with its evaluation; the runner resumes an interrupted point from its checkpoint.
"""
MODES = ("train",)  # train.final_eval: evaluate after training
METRIC = "default_seen_all_accuracy"
METRICS = ("default_seen_all_accuracy", "default_heldout_all_accuracy", "default_seen_digit_accuracy",
           "default_heldout_digit_accuracy", "default_seen_color_accuracy", "default_seen_relation_accuracy")
FROZEN = "runs/sweeps/backbones_scenes_frozen"  # the shared autoencoder and CLIP (relative to where it is started)
# Run in this order (the most informative first, should a session end mid-sweep): the baseline, SD3's recipe, ...
STEPS = {"unet+vp": 9000, "mmdit+flow": 7365, "dit+flow": 7925, "unet+flow": 8798, "dit+vp": 8255, "mmdit+vp": 7472}
# The measured seconds a step those came from (the docstring's run): the plot's wall-time axis.
SECONDS_PER_STEP = {"unet+vp": 0.2798, "unet+flow": 0.2862, "dit+vp": 0.3050, "dit+flow": 0.3178,
                    "mmdit+vp": 0.3370, "mmdit+flow": 0.3419}


def get_sweep():
    """(base config, points): one point a variant, at its equal-wall-time steps, on the shared frozen models."""
    # Every checkpoint kept (one a 1,000 steps), so that experiments/sweeps/backbones_scenes_curve.py can score them
    # afterwards: the plot of all correct against training wall time.
    shared = {"clip.workdir": f"{FROZEN}/clip", "autoencoder.workdir": f"{FROZEN}/autoencoder",
              "train.max_to_keep": 10}
    return "experiments/txt2img_scenes.py", [{"preset": v, "train.num_steps": n, **shared} for v, n in STEPS.items()]
